#!/usr/bin/env bash
# Interop test: drives a real runnel server with gRPC's Node implementation (@grpc/grpc-js, pinned in
# package-lock.json), independent of the grpcio suite in tests/interop/.
# Usage: tests/interop_node/run.sh BINARY
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 BINARY" >&2
    exit 2
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="$1"
if [[ "$BIN" != /* ]]; then
    BIN="$(pwd)/$BIN"
fi
if [[ ! -x "$BIN" ]]; then
    echo "interop-node: binary not found or not executable: $BIN" >&2
    exit 1
fi
for tool in node npm; do
    if ! command -v "$tool" >/dev/null; then
        echo "interop-node: $tool not found: install Node.js 18 or later and npm (make deps: apt-get install nodejs npm)" >&2
        exit 1
    fi
done

cd "$HERE"
# npm writes node_modules/.package-lock.json on every install: older than the lock means the lock changed since.
if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
    echo "interop-node: installing the pinned packages (npm ci)" >&2
    npm ci --no-audit --no-fund --silent
fi

# The test's files (PKI, server log, state dir) go under a directory of this run's, removed even when the run
# is cut short. Jobs run as unprivileged users and must pass through it to their working directories: 0711.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/runnel-interop-node.XXXXXX")"
chmod 0711 "$WORK"
trap 'rm -rf "$WORK"' EXIT

# Each test has its own timeout; this bounds the whole run. `timeout` signals its whole process group, so the
# server the test started gets the SIGTERM too and stops its jobs.
LIMIT=100
status=0
RUNNEL_BIN="$BIN" TMPDIR="$WORK" timeout --kill-after=10 "$LIMIT" \
    node --test --test-reporter=spec interop.test.js || status=$?
if [[ $status -eq 124 || $status -eq 137 ]]; then
    echo "interop-node: the suite did not finish within $LIMIT s" >&2
fi
exit "$status"
