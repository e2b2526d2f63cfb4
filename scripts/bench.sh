#!/usr/bin/env bash
# Runs every benchmark of loxone-exporter and prints one summary table (also written to
# $CARGO_TARGET_DIR/bench-summary.md, default target/bench-summary.md):
#   1. builds the release binary (the end-to-end benchmarks run it as a separate process)
#   2. every criterion benchmark in benches/*.rs (render_metrics, otlp, ...)
#   3. the end-to-end benchmarks (benches/e2e.rs): event→/metrics latency at 10k events/s,
#      exporter RSS at 10k and 100k states, exporter CPU at 1k events/s
# Benchmarks are measurements, not tests: this script is never part of scripts/test.sh.
#
# Usage: scripts/bench.sh [e2e scenario ...]      scenarios: latency rss cpu (default all)
# Environment:
#   BENCH_CRITERION=0       skip the criterion benchmarks
#   BENCH_E2E=0             skip the end-to-end benchmarks
#   (a failed benchmark does not stop the others; the script then exits 1 at the end)
#   E2E_REPEAT=3            runs per end-to-end measurement (the spread is reported)
#   E2E_LAT_SAMPLES=1000    latency samples per run
#   E2E_LAT_PLACEMENT=both  latency runs with the exporter sharing the CPUs (shared), pinned
#                           apart from the simulator (split), or both
#   E2E_CPU_SECS=30         CPU measurement window (at least 20 s)
#   E2E_RSS_STATES=10000,100000
#   LOXEXP_ENV_FILE=.test-env/env   sourced when present (rotel for the OTLP export bench)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
target=$CARGO_TARGET_DIR
summary="$target/bench-summary.md"
e2e_md="$target/bench-e2e.md"
mkdir -p "$target"

step() { printf '\n==> %s\n' "$*" >&2; }

envfile="${LOXEXP_ENV_FILE:-$root/.test-env/env}"
if [ -f "$envfile" ]; then
  # shellcheck disable=SC1090
  source "$envfile"
fi

started=$(mktemp)
trap 'rm -f "$started"' EXIT
load_start=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')

step "cargo build --release"
cargo build --release
# `cargo bench` rebuilds the binary with dev-dependency features unified in (tokio test-util)
# and overwrites target/release/loxone-exporter: keep the shipped build for the e2e runs
mkdir -p "$target/bench-bin"
cp "$target/release/loxone-exporter" "$target/bench-bin/loxone-exporter"
export E2E_EXPORTER_BIN="$target/bench-bin/loxone-exporter"


criterion_benches=()
e2e_benches=()
for f in benches/*.rs; do
  name=$(basename "$f" .rs)
  case "$name" in
    e2e|e2e_*) e2e_benches+=("$name") ;;
    *) criterion_benches+=("$name") ;;
  esac
done
selected=()
if [ "${BENCH_CRITERION:-1}" != 0 ]; then
  for b in "${criterion_benches[@]}"; do selected+=(--bench "$b"); done
fi
if [ "${BENCH_E2E:-1}" != 0 ]; then
  rm -f "$e2e_md"
  for b in "${e2e_benches[@]}"; do selected+=(--bench "$b"); done
fi
export E2E_SCENARIOS="$*" E2E_OUT="$e2e_md"

# One cargo invocation for all of them: each invocation may rebuild the crate (build.rs
# stamps the build date), and a failing benchmark must not stop the others.
log="$target/bench-log.txt"
step "cargo bench --no-fail-fast ${selected[*]}"
set +e
cargo bench --no-fail-fast "${selected[@]}" 2>&1 | tee "$log"
bench_rc=${PIPESTATUS[0]}
set -e
# cargo names each failed target: "error: bench failed, to rerun pass `--bench otlp`" or,
# with several, "`--bench otlp`" in a list
mapfile -t failed < <(grep -o -- '--bench [A-Za-z0-9_]*`' "$log" | sed 's/^--bench //; s/`$//' | sort -u)
if [ "$bench_rc" != 0 ] && [ ${#failed[@]} -eq 0 ]; then
  failed=("cargo bench exit $bench_rc")
fi

# ---- summary ------------------------------------------------------------------------------
fmt_ns() { # nanoseconds → human units
  awk -v ns="$1" 'BEGIN {
    if (ns >= 1e9) printf "%.3f s", ns / 1e9;
    else if (ns >= 1e6) printf "%.3f ms", ns / 1e6;
    else if (ns >= 1e3) printf "%.2f µs", ns / 1e3;
    else printf "%.0f ns", ns }'
}
# targets of the issues, by criterion id
criterion_target() {
  case "$1" in
    render_metrics/snapshot_and_text/10000) echo "≤ 2 ms (issue 2)" ;;
    render_metrics/snapshot_and_text/100000) echo "≤ 25 ms (issue 2)" ;;
    otlp_convert_encode/10000) echo "≤ 3 ms (issue 5)" ;;
    otlp_convert_encode/100000) echo "≤ 30 ms (issue 5)" ;;
    otlp_export_rotel_10k/*) echo "≤ 20 ms (issue 5)" ;;
    otlp_export_sink_10k/*) echo "– (the exporter's share of the rotel rows)" ;;
    value_table/parse/1000) echo "≤ 50 µs = 20 M entries/s (issue 3)" ;;
    value_table/parse/100000) echo "≤ 5 ms = 20 M entries/s (issue 3)" ;;
    structure/parse/5MiB) echo "≤ 50 ms (issue 3)" ;;
    *) echo "–" ;;
  esac
}

{
  echo "# loxone-exporter benchmarks"
  echo
  echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //' || echo '?'))"
  echo "- load average at start: $load_start; at end: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
  echo "- command: scripts/bench.sh $*"
  if [ ${#failed[@]} -gt 0 ]; then
    echo "- FAILED (see the log above the summary): ${failed[*]}"
  fi
  echo
  if [ "${BENCH_CRITERION:-1}" != 0 ]; then
    echo "## criterion (median, 95 % confidence interval)"
    echo
    echo "| benchmark | median | interval | target |"
    echo "|---|---|---|---|"
    # only results written by this run
    find "$target/criterion" -path '*/new/benchmark.json' -newer "$started" 2>/dev/null | sort |
      while read -r bj; do
        dir=$(dirname "$bj")
        id=$(jq -r '.full_id' "$bj")
        read -r med lo hi < <(jq -r '[.median.point_estimate, .median.confidence_interval.lower_bound, .median.confidence_interval.upper_bound] | @tsv' "$dir/estimates.json")
        echo "| $id | $(fmt_ns "$med") | $(fmt_ns "$lo") – $(fmt_ns "$hi") | $(criterion_target "$id") |"
      done
    echo
    # what the collector spent, and the host's steal time, beside the rotel rows
    grep -E '^(grpc|http)[a-z_]*: (rotel used|steal) ' "$log" | sed 's/^/- /' || true
    echo
  fi
  if [ "${BENCH_E2E:-1}" != 0 ]; then
    echo "## end-to-end (release binary + simulator)"
    echo
    for b in "${e2e_benches[@]}"; do
      echo "### $b"
      echo
      if [ -f "$e2e_md" ]; then cat "$e2e_md"; else echo "($b wrote no results)"; fi
      echo
    done
  fi
} >"$summary"

step "summary ($summary)"
cat "$summary"
if [ ${#failed[@]} -gt 0 ]; then
  echo "benchmarks failed: ${failed[*]}" >&2
  exit 1
fi
