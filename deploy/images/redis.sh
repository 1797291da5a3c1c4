#!/usr/bin/env bash
# Builds the Redis image used by the tests and the compose stack, offline:
# the host's Debian redis-server (and redis-cli, for health checks) and
# their libraries in an empty root.
#   deploy/images/redis.sh [TAG]     (default sluice-redis:7)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
tag=${1:-${SLUICE_REDIS_IMAGE:-sluice-redis:7}}

ensure_pkg redis-server redis-server
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
rootfs_base "$root"
# Debian's /usr/bin/redis-server is a symlink to redis-check-rdb; the binary
# picks its role from its own name, so it must be copied *as* redis-server.
rootfs_add_binary "$root" "$(command -v redis-server)" redis-server
# redis-cli: `redis-cli ping` is the compose health check (as with redis:7).
ensure_pkg redis-cli redis-tools
rootfs_add_binary "$root" "$(command -v redis-cli)" redis-cli
image_import "$root" "$tag" \
  "ENV PATH=$IMAGE_PATH" \
  'WORKDIR /data' \
  'EXPOSE 6379' \
  'ENTRYPOINT ["/usr/local/bin/redis-server"]' \
  'CMD ["--bind", "0.0.0.0", "--protected-mode", "no", "--save", ""]'
