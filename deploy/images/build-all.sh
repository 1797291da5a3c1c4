#!/usr/bin/env bash
# Builds every image of the compose stack offline, from the host:
#   sluice-redis:7       Debian's redis-server + redis-cli      (redis.sh)
#   sluice-edge:dev      target/release/sluice-edge             (edge.sh)
#   sluice:dev           target/release/sluice                  (sluice.sh)
#   sluice-haproxy:dev   Debian's haproxy + deploy/haproxy.cfg  (haproxy.sh)
# Idempotent: the release build is a cargo no-op when nothing changed, and an
# image whose root is unchanged is not imported again. Tags can be changed
# with SLUICE_REDIS_IMAGE, SLUICE_EDGE_IMAGE, SLUICE_CLI_IMAGE and
# SLUICE_LB_IMAGE (the compose file reads the same variables).
#   deploy/images/build-all.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
start=$(date +%s)

release_binaries
export SLUICE_SKIP_CARGO=1
"$here/redis.sh"
"$here/edge.sh"
"$here/sluice.sh"
"$here/haproxy.sh"
echo "images ready in $(( $(date +%s) - start ))s"
