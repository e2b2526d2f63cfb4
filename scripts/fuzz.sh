#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time and reports executions and
# crashes per target. Exits non-zero when any target crashed (or failed to build/run).
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
# Env:   FUZZ_TARGETS="tables structure envelope"  subset to run
#        FUZZ_SANITIZER=none|address               (default none: the fuzzed code is safe
#                                                   Rust; libFuzzer still catches panics,
#                                                   timeouts and OOM)
#
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. cargo-fuzz itself is installed from crates.io when missing.
set -euo pipefail

seconds="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-none}"
targets="${FUZZ_TARGETS:-tables structure envelope}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

declare -A max_len=([tables]=4096 [structure]=16384 [envelope]=4096)

echo "fuzz: building targets (sanitizer=$sanitizer)" >&2
cargo fuzz build -O --sanitizer "$sanitizer" >&2

failed=0
summary=()
for t in $targets; do
    corpus="fuzz/corpus/$t"
    artifacts="fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    before=$(find "$artifacts" -type f | wc -l)
    log="$(mktemp)"
    status=0
    cargo fuzz run -O --sanitizer "$sanitizer" "$t" "$corpus" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -max_len="${max_len[$t]:-4096}" -rss_limit_mb=2048 \
        -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    execs=$({ grep -h 'stat::number_of_executed_units' "$log" || true; } | awk '{s += $2} END {print s + 0}')
    after=$(find "$artifacts" -type f | wc -l)
    crashes=$((after - before))
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        # libFuzzer failed without writing an artifact (build/run error): count it
        crashes=1
    fi
    if [ "$crashes" -ne 0 ]; then
        failed=1
        echo "fuzz: $t FAILED (exit $status); last lines of its log:" >&2
        tail -n 40 "$log" >&2
        find "$artifacts" -type f -newer "$log" -printf 'fuzz:   artifact %p\n' >&2 || true
    fi
    rm -f "$log"
    summary+=("$(printf '%-10s %12s execs %3s crashes (%ss)' "$t" "$execs" "$crashes" "$seconds")")
done

echo "fuzz summary:"
printf '  %s\n' "${summary[@]}"
exit "$failed"
