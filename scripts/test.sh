#!/usr/bin/env bash
# The test suite, as CI runs it: unit tests beside the code, property tests, and the integration
# binary (CLI contract, golden fixtures, sample templates). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked "$@"
