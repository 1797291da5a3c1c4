#!/usr/bin/env bash
# Builds the image of the `sluice` CLI (producer, operator tool and the demo
# producer of the compose stack) offline, from the host-built release binary.
#   deploy/images/sluice.sh [TAG]    (default sluice:dev)
# With a registry, deploy/Dockerfile.sluice builds the same image.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
tag=${1:-${SLUICE_CLI_IMAGE:-sluice:dev}}

release_binaries
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
rootfs_base "$root"
rootfs_add_binary "$root" "$SLUICE_TARGET_DIR/release/sluice" sluice
rootfs_strip "$root/usr/local/bin/sluice"
image_import "$root" "$tag" \
  "ENV PATH=$IMAGE_PATH" \
  'USER 65534:65534' \
  'LABEL org.opencontainers.image.title=sluice' \
  'ENTRYPOINT ["/usr/local/bin/sluice"]' \
  'CMD ["--help"]'
