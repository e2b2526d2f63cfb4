#!/usr/bin/env bash
# Self-telemetry overhead benchmark (issue 7): the daemon's CPU at RATE value events/s and
# its /metrics latency with traces on versus off.
#
#   scripts/bench-telemetry.sh            # defaults: RATE=1000 DURATION=30 WARMUP=5 ROUNDS=2
#   RATE=1000 DURATION=60 ROUNDS=3 scripts/bench-telemetry.sh
#
# Setup (all on loopback, every process killed on exit):
#   - `loxone-exporter simulate --rate $RATE` as the Miniserver;
#   - rotel as the OTLP collector (metrics and traces, --exporter blackhole);
#   - the exporter, OTLP metrics export on (10 s interval) in both modes, scraped once per
#     second like Prometheus would; "off" = OTEL_TRACES_EXPORTER=none, "on" = the default
#     (traces to the metrics collector, parent-based sampling ratio 1.0).
# CPU = on-CPU time of the exporter's threads over DURATION s after WARMUP s, from
# /proc/PID/task/*/schedstat, as % of one core and in ms; also in clock ticks (utime+stime of
# /proc/PID/stat, which includes threads that exited in the window, 10 ms resolution) and the
# part spent on the self-telemetry threads (the SDK batch processor, which also drives the
# span export's I/O; binaries before telperf2 also had an `otel-export` runtime thread).
# The base CPU at 1k events/s is small (a few ms per second), so use DURATION=60 ROUNDS=3 or
# more and compare ms, not only %. Latency = wrk -t1 -c4 -d10s --latency on /metrics (each request is a
# traced scrape when traces are on). Modes alternate per round to spread machine noise.
# Needs a release build (built if missing), rotel and wrk from scripts/install-test-deps.sh
# (.test-env/env), python3 for free ports.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
RATE="${RATE:-1000}"
DURATION="${DURATION:-30}"
WARMUP="${WARMUP:-5}"
ROUNDS="${ROUNDS:-2}"
LAT_SECONDS="${LAT_SECONDS:-10}"
# extra variables for the "on" runs, e.g. ON_ENV="OTEL_TRACES_SAMPLER=always_off"
ON_ENV="${ON_ENV:-}"

if [[ -z "${LOXEXP_ROTEL:-}" && -f "$ROOT/.test-env/env" ]]; then
    # shellcheck disable=SC1091
    source "$ROOT/.test-env/env"
fi
ROTEL="${LOXEXP_ROTEL:?rotel not found: run scripts/install-test-deps.sh}"
WRK="${LOXEXP_WRK:-$(command -v wrk || true)}"
[[ -x "$WRK" ]] || { echo "wrk not found: run scripts/install-test-deps.sh" >&2; exit 1; }

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="${BIN:-$TARGET/release/loxone-exporter}"
if [[ ! -x "$BIN" ]]; then
    echo "building $BIN (release) ..." >&2
    cargo build --release --bin loxone-exporter >&2
fi

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on $1" >&2
    return 1
}
# CPU time of all the process's threads in ns (schedstat: ns resolution, unlike the
# 10 ms ticks of /proc/PID/stat)
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%d", s}'; }
# the same, only for the self-telemetry threads (the SDK's "OpenTelemetry.Traces.BatchProcessor",
# cut to 15 characters by the kernel; `otel-export` for older binaries)
telemetry_ns() {
    local t s=0 n
    for t in /proc/"$1"/task/*; do
        case "$(cat "$t/comm" 2>/dev/null)" in
        otel-export* | OpenTelemetry*) n=$(awk '{print $1}' "$t/schedstat" 2>/dev/null || echo 0); s=$((s + ${n:-0})) ;;
        esac
    done
    echo "$s"
}
# utime + stime in clock ticks, all threads including exited ones
cpu_ticks() { awk '{print $14 + $15}' /proc/"$1"/stat 2>/dev/null || echo 0; }
TICK_MS=$(( 1000 / $(getconf CLK_TCK) ))

GRPC=$(free_port); HTTP=$(free_port); SIM=$(free_port)
"$ROTEL" start --otlp-grpc-endpoint "127.0.0.1:$GRPC" --otlp-http-endpoint "127.0.0.1:$HTTP" \
    --debug-log traces --debug-log-verbosity basic --exporter blackhole >"$WORK/rotel.log" 2>&1 &
PIDS+=($!)
"$BIN" --log.level warning simulate --listen "127.0.0.1:$SIM" --rate "$RATE" --user bench --password bench-pass \
    >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
wait_port "$GRPC"; wait_port "$HTTP"; wait_port "$SIM"

declare -A CPU CPUMS TICKS TELMS LAT50 LAT99 RPS
run_mode() { # mode round
    local mode=$1 round=$2 port pid t0 t1 c0 c1 k0 k1 e0 e1
    port=$(free_port)
    local traces=none extra=()
    if [[ $mode == on ]]; then
        traces=otlp
        # shellcheck disable=SC2206
        extra=($ON_ENV)
    fi
    (cd "$WORK" && exec env -i PATH="$PATH" HOME="$WORK" \
        LOXONE_HOST=127.0.0.1 LOXONE_PORT="$SIM" LOXONE_USERNAME=bench LOXONE_PASSWORD=bench-pass \
        LOXONE_NAME=bench \
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$HTTP" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
        OTEL_METRIC_EXPORT_INTERVAL=10000 OTEL_EXPORTER_OTLP_TIMEOUT=5000 OTEL_TRACES_EXPORTER="$traces" "${extra[@]}" \
        "$BIN" --web.listen-address "127.0.0.1:$port" --log.level warning \
        >"$WORK/exporter-$mode-$round.log" 2>&1) &
    pid=$!
    PIDS+=("$pid") # ended by cleanup too if a step below fails
    wait_port "$port"
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/metrics" | grep -q '^loxone_control_value' && break
        sleep 0.1
    done
    sleep "$WARMUP"
    # a Prometheus-like scrape once per second during the CPU window
    ( while sleep 1; do curl -sf -o /dev/null "http://127.0.0.1:$port/metrics" || true; done ) &
    local scraper=$!
    PIDS+=("$scraper")
    c0=$(cpu_ns "$pid"); k0=$(cpu_ticks "$pid"); e0=$(telemetry_ns "$pid"); t0=$(date +%s.%N)
    sleep "$DURATION"
    c1=$(cpu_ns "$pid"); k1=$(cpu_ticks "$pid"); e1=$(telemetry_ns "$pid"); t1=$(date +%s.%N)
    kill "$scraper" 2>/dev/null; wait "$scraper" 2>/dev/null || true
    CPU[$mode,$round]=$(awk -v c="$((c1 - c0))" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", 100*c/1e9/(b-a)}')
    CPUMS[$mode,$round]=$(( (c1 - c0) / 1000000 ))
    TICKS[$mode,$round]=$(( k1 - k0 ))
    TELMS[$mode,$round]=$(( (e1 - e0) / 1000000 ))
    "$WRK" -t1 -c4 -d"${LAT_SECONDS}s" --latency "http://127.0.0.1:$port/metrics" >"$WORK/wrk-$mode-$round.txt"
    LAT50[$mode,$round]=$(awk '$1=="50%"{print $2}' "$WORK/wrk-$mode-$round.txt")
    LAT99[$mode,$round]=$(awk '$1=="99%"{print $2}' "$WORK/wrk-$mode-$round.txt")
    RPS[$mode,$round]=$(awk '/^Requests\/sec/{print $2}' "$WORK/wrk-$mode-$round.txt")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    printf 'round %s traces %-3s  cpu %6s %% = %5s ms (%4s ticks of %s ms; telemetry threads %4s ms)  /metrics p50 %8s  p99 %8s  %8s req/s  load %s\n' \
        "$round" "$mode" "${CPU[$mode,$round]}" "${CPUMS[$mode,$round]}" "${TICKS[$mode,$round]}" "$TICK_MS" "${TELMS[$mode,$round]}" \
        "${LAT50[$mode,$round]}" "${LAT99[$mode,$round]}" "${RPS[$mode,$round]}" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

echo "loxone-exporter self-telemetry benchmark: rate=$RATE ev/s, cpu window ${DURATION}s, $ROUNDS rounds, $(nproc) cores"
for round in $(seq "$ROUNDS"); do
    if (( round % 2 )); then run_mode off "$round"; run_mode on "$round"; else run_mode on "$round"; run_mode off "$round"; fi
done

spans=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/rotel.log" | grep -a 'Received traces' | grep -ao 'spans=[0-9]*' | awk -F= '{s+=$2} END{print s+0}')
echo "spans received by the collector (all 'on' runs): ${spans:-0}"
if [[ "${spans:-0}" == 0 ]]; then
    echo "WARNING: no spans arrived: is telemetry::init wired into main.rs?" >&2
fi
avg() { # mode [array name]
    local m=$1 s=0 v
    local -n arr=${2:-CPU}
    for r in $(seq "$ROUNDS"); do v=${arr[$m,$r]}; s=$(awk -v a="$s" -v b="$v" 'BEGIN{print a+b}'); done
    awk -v s="$s" -v n="$ROUNDS" 'BEGIN{printf "%.3f", s/n}'
}
off=$(avg off); on=$(avg on)
echo "mean cpu per ${DURATION}s window: off $(avg off CPUMS) ms ($(avg off TICKS) ticks)  on $(avg on CPUMS) ms ($(avg on TICKS) ticks, telemetry threads $(avg on TELMS) ms)"
echo "mean cpu: off ${off} %  on ${on} %  overhead $(awk -v a="$off" -v b="$on" 'BEGIN{ if (a>0) printf "%+.1f", 100*(b-a)/a; else print "n/a"}') % (target <= +5 %)"
