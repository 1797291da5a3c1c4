#!/usr/bin/env bash
# Installs what the test suite needs and builds the offline images.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "checking the Docker engine"
if ! docker info >/dev/null 2>&1; then
  echo "the Docker engine is not reachable (is the daemon running?)" >&2
  exit 1
fi

step "Redis test image (offline build from the host's redis-server)"
if [ -z "${SLUICE_TEST_REDIS_IMAGE:-}" ]; then
  deploy/images/redis.sh sluice-redis:7
else
  echo "using SLUICE_TEST_REDIS_IMAGE=$SLUICE_TEST_REDIS_IMAGE"
fi

# redis-server/redis-cli on the host are also used by some tests directly.
source deploy/images/lib.sh
ensure_pkg redis-cli redis-tools
