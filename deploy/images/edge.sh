#!/usr/bin/env bash
# Builds the edge image offline: the host-built release binary `sluice-edge`
# and the libraries it links in an empty root (no registry, no base image).
#   deploy/images/edge.sh [TAG]      (default sluice-edge:dev)
# With a registry, deploy/Dockerfile.edge builds the same image the usual way.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
tag=${1:-${SLUICE_EDGE_IMAGE:-sluice-edge:dev}}

release_binaries
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
rootfs_base "$root"
rootfs_add_binary "$root" "$SLUICE_TARGET_DIR/release/sluice-edge" sluice-edge
rootfs_strip "$root/usr/local/bin/sluice-edge"
image_import "$root" "$tag" \
  "ENV PATH=$IMAGE_PATH" \
  'ENV SLUICE_LISTEN=0.0.0.0:8080' \
  'EXPOSE 8080' \
  'USER 65534:65534' \
  'LABEL org.opencontainers.image.title=sluice-edge' \
  'ENTRYPOINT ["/usr/local/bin/sluice-edge"]'
