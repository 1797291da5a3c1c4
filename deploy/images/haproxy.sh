#!/usr/bin/env bash
# Builds the load balancer image offline: Debian's haproxy (installed on the
# host from the machine's own apt sources when missing) and its libraries in
# an empty root, with deploy/haproxy.cfg as the default configuration (the
# compose stack mounts the file over it, so edits need no rebuild).
#   deploy/images/haproxy.sh [TAG]   (default sluice-haproxy:dev)
# The layout follows the stock haproxy image (config in
# /usr/local/etc/haproxy/haproxy.cfg, command `haproxy -f ...`), so the
# compose file works with either.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
tag=${1:-${SLUICE_LB_IMAGE:-sluice-haproxy:dev}}
export PATH="$PATH:/usr/sbin:/sbin"

ensure_pkg haproxy haproxy
cfg="$here/../haproxy.cfg"
# The backends' names resolve only inside the stack; `init-addr none` lets
# the check pass here.
haproxy -c -q -f "$cfg"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
rootfs_base "$root"
rootfs_add_binary "$root" "$(command -v haproxy)" haproxy
install -D -m 0644 "$cfg" "$root/usr/local/etc/haproxy/haproxy.cfg"
image_import "$root" "$tag" \
  "ENV PATH=$IMAGE_PATH" \
  'EXPOSE 8080 8404' \
  'USER 65534:65534' \
  'LABEL org.opencontainers.image.title=sluice-haproxy' \
  'CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'
