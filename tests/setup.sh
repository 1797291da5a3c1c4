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
# A vanished client host is simulated in a network namespace (unshare -n,
# util-linux) by dropping its packets with iptables.
ensure_pkg iptables iptables

step "headless Chromium and chromedriver (dashboard browser test)"
ensure_pkg chromium chromium
ensure_pkg chromedriver chromium-driver

step "Python packages (tests/python: producer over FCALL, k8s manifest validator, third-party SSE/WebSocket clients)"
py=${SLUICE_PYTHON:-python3}
if "$py" -c 'import redis, msgpack, kubernetes_validate, sseclient, httpx, httpx_sse, websockets, requests' >/dev/null 2>&1; then
  echo "redis, msgpack, kubernetes-validate and the client libraries are installed"
else
  "$py" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    'redis>=5,<9' 'msgpack>=1,<2' 'kubernetes-validate>=1.30' \
    'sseclient-py>=1.8,<2' 'requests>=2.28,<3' 'httpx>=0.27,<1' 'httpx-sse>=0.4,<0.5' \
    'websockets>=13,<18'
fi

step "compose stack images (release build on the host, then offline images)"
ensure_pkg docker-compose docker-compose
deploy/images/build-all.sh
