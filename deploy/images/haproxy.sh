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
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# The backends' names resolve only inside the stack; `init-addr none` lets
# the check pass here. The TLS bind needs a certificate to load: a
# throwaway one (the stack's own is written at start, see compose.yaml).
ensure_pkg openssl openssl
check_cert="$root/check.pem"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=check \
  -keyout "$check_cert" -out "$check_cert.crt" 2>/dev/null
cat "$check_cert.crt" >> "$check_cert"
SLUICE_TLS_CERT="$check_cert" haproxy -c -q -f "$cfg"
rm -f "$check_cert" "$check_cert.crt"
rootfs_base "$root"
rootfs_add_binary "$root" "$(command -v haproxy)" haproxy
install -D -m 0644 "$cfg" "$root/usr/local/etc/haproxy/haproxy.cfg"
image_import "$root" "$tag" \
  "ENV PATH=$IMAGE_PATH" \
  'EXPOSE 8080 8443 8404' \
  'USER 65534:65534' \
  'LABEL org.opencontainers.image.title=sluice-haproxy' \
  'CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'
