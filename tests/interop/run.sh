#!/usr/bin/env bash
# Interop test: drives a real runnel server with the reference gRPC implementation (grpcio, Python).
# Also runs the hostile HTTP/2 suite (Python's `h2`, frame by frame) from the same environment.
# Usage: tests/interop/run.sh BINARY [TEST_DIR]   (default tests/interop)
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 BINARY [TEST_DIR]" >&2
    exit 2
fi
TESTS="${2:-tests/interop}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN="$1"
if [[ "$BIN" != /* ]]; then
    BIN="$(pwd)/$BIN"
fi
if [[ ! -x "$BIN" ]]; then
    echo "interop: binary not found or not executable: $BIN" >&2
    exit 1
fi

VENV="$REPO/.venv"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "interop: creating virtualenv $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"

GEN="$HERE/generated"
rm -rf "$GEN"
mkdir -p "$GEN"
(cd "$REPO" && "$PY" -m grpc_tools.protoc -I proto \
    --python_out="$GEN" --grpc_python_out="$GEN" \
    proto/runnel/v1/runnel.proto proto/grpc/health/v1/health.proto)

cd "$REPO"
RUNNEL_BIN="$BIN" PYTHONPATH="$GEN${PYTHONPATH:+:$PYTHONPATH}" \
    "$PY" -m pytest -q -p no:cacheprovider "$TESTS"
