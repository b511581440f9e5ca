#!/usr/bin/env bash
# The test command (README, CI): starts the local test stack (Helios FHIR Server and Azurite, see
# scripts/test-stack.sh), runs every test against it, and stops it again. Arguments go to `cargo test`.
# Set IOMT_TEST_FHIR_URL to run the FHIR tests against another FHIR R4 server instead of Helios.
set -euo pipefail
cd "$(dirname "$0")/.."

envfile="$(mktemp "${TMPDIR:-/tmp}/iomt-test-env.XXXXXX")"
trap 'scripts/test-stack.sh stop "$envfile"' EXIT
scripts/test-stack.sh start "$envfile"
set -a
# shellcheck disable=SC1090
source "$envfile"
set +a
cargo test --locked "$@"
