#!/usr/bin/env bash
# The test command: sets up what is missing, then runs formatting and lint
# checks and the whole test suite (unit, integration against real Redis in
# containers, system tests).
#   tests/run.sh            everything CI runs
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

tests/setup.sh

printf '\n==> cargo fmt --check\n'
cargo fmt --all -- --check

printf '\n==> no module imports from a module that imports it\n'
for crate in shared broker edge tests; do
  python3 .ci/import_cycles.py "$crate/src"
done

printf '\n==> cargo clippy (deny warnings)\n'
cargo clippy --workspace --all-targets -- -D warnings

# The binaries tests run as processes (tests/src/bins.rs builds them on
# first use with exactly this command): built here, so that build never
# runs beside timing-sensitive tests (the chaos reconnect storm starved
# while it did).
printf '\n==> cargo build --bins (the binaries tests run as processes)\n'
cargo build --bins -p sluice-edge -p sluice-broker

printf '\n==> cargo test --workspace\n'
cargo test --workspace -- --test-threads "${SLUICE_TEST_THREADS:-4}"

printf '\n==> all tests passed in %ss\n' "$(( $(date +%s) - start ))"
