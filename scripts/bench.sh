#!/usr/bin/env bash
# Runs benchmarks: `scripts/bench.sh` runs all, `scripts/bench.sh persist` one. Benchmarks that
# need servers get the local test stack (scripts/test-stack.sh), started here and stopped after.
set -euo pipefail
cd "$(dirname "$0")/.."

envfile="$(mktemp "${TMPDIR:-/tmp}/iomt-bench-env.XXXXXX")"
trap 'scripts/test-stack.sh stop "$envfile"' EXIT
scripts/test-stack.sh start "$envfile"
set -a
# shellcheck disable=SC1090
source "$envfile"
set +a
if [[ $# -eq 0 ]]; then
    cargo bench --locked
else
    for bench in "$@"; do cargo bench --locked --bench "$bench"; done
fi
