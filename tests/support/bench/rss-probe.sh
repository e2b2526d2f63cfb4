#!/usr/bin/env bash
# RSS probe for profiling (not a test): runs `loxone-exporter simulate` with a structure file
# and the exporter against it, waits for the initial tables and 3 scrapes, prints the
# exporter's VmRSS / RssAnon / RssFile / VmHWM. Extra environment for the exporter only (e.g.
# MALLOC_ARENA_MAX=2) goes in EXPORTER_ENV. Optional WRAP runs the exporter under a tool
# (e.g. WRAP="valgrind --tool=massif --massif-out-file=/tmp/m.out"), then it waits longer.
#
#   tests/support/bench/rss-probe.sh BIN STRUCTURE.json [settle-seconds]
# Structure files: `cargo bench --bench e2e -- structure 10000 /tmp/s10k.json`.
set -euo pipefail
bin=${1:?exporter binary}; structure=${2:?structure file}; settle=${3:-5}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
sp=$(free_port); ep=$(free_port)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
"$bin" simulate --structure "$structure" --listen "127.0.0.1:$sp" --user bench --password pw \
    --rate "${RATE:-100}" >"$work/sim.log" 2>&1 &
pids+=($!)
cat >"$work/config.yml" <<YML
miniservers:
  - name: bench
    host: "127.0.0.1"
    port: $sp
    username: bench
    password: pw
listen_address: "127.0.0.1"
listen_port: $ep
YML
# shellcheck disable=SC2086
env ${EXPORTER_ENV:-} ${WRAP:-} "$bin" -c "$work/config.yml" >"$work/exp.log" 2>&1 &
epid=$!
pids+=($epid)
# the wrapped process may be a tool: the exporter is its child or itself
deadline=$((SECONDS + 600))
until curl -sf "http://127.0.0.1:$ep/metrics" 2>/dev/null | grep -q 'loxone_exporter_connected{miniserver="bench"} 1'; do
    [ $SECONDS -lt $deadline ] || { echo "exporter not ready" >&2; cat "$work/exp.log" >&2; exit 1; }
    sleep 0.5
done
sleep "$settle"
for _ in 1 2 3; do curl -sf "http://127.0.0.1:$ep/metrics" -o /dev/null; sleep 0.3; done
series=$(curl -sf "http://127.0.0.1:$ep/metrics" | grep -c '^loxone_control_value{')
kb() { awk -v f="$1:" '$1==f {print $2}' "/proc/$epid/status"; }
printf 'series %s VmRSS %.1f MB RssAnon %.1f MB RssFile %.1f MB VmHWM %.1f MB threads %s env [%s]\n' \
    "$series" "$(kb VmRSS)e-3" "$(kb RssAnon)e-3" "$(kb RssFile)e-3" "$(kb VmHWM)e-3" "$(kb Threads)" "${EXPORTER_ENV:-}"
if [ -n "${WRAP:-}" ]; then kill -INT "$epid"; wait "$epid" 2>/dev/null || true; fi
