#!/usr/bin/env bash
# Runs every fuzz target (or those in FUZZ_TARGETS) for FUZZ_SECONDS (default 60), or until FUZZ_RUNS
# executions if that comes first, on its checked-in seeds (fuzz/corpus/TARGET) plus what earlier runs found
# (target/fuzz-corpus/TARGET, where new inputs go), and prints one line per target: executions, time,
# coverage (edges) and crashes. Exits non-zero on the first crash, naming the input that caused it
# (fuzz/artifacts/TARGET/), which then belongs in a regression unit test.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-60}
read -r -a targets <<<"${FUZZ_TARGETS:-grpc_framing start_request request_headers client_identity values spool history}"
runs=${FUZZ_RUNS:+-runs=$FUZZ_RUNS}
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "error: fuzzing needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 1
fi
if ! command -v cargo-fuzz >/dev/null; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
cargo +nightly fuzz build
for target in "${targets[@]}"; do
    found=../target/fuzz-corpus/$target
    mkdir -p "$found"
    log=$(mktemp)
    begun=$SECONDS
    # shellcheck disable=SC2086 # $runs is one option or none
    if ! cargo +nightly fuzz run "$target" "$found" "corpus/$target" -- -max_total_time="$seconds" $runs >"$log" 2>&1; then
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" >&2 || tail -20 "$log" >&2
        rm -f "$log"
        echo "fuzz: $target: CRASH (see above)" >&2
        exit 1
    fi
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
    executions=$(echo "$done_line" | sed -E 's/^#([0-9]+).*/\1/')
    cov=$(echo "$done_line" | sed -E 's/.* cov: ([0-9]+).*/\1/')
    echo "fuzz: $target: $executions executions in $((SECONDS - begun)) s, coverage $cov edges, 0 crashes"
    rm -f "$log"
done
