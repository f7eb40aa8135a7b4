#!/usr/bin/env bash
# The delivery timeline's cost on the push path: the `push` scenario against a fresh
# server per run, with the timeline on and off, RUNS times each, alternating.
#
#   CARGO_TARGET_DIR=... bash loadtest/timeline.sh
#
# Prints one line per run: mode, delivery latency p50/p99/p99.9 (ms), messages sent and
# received, achieved push rate, and the server's CPU time (user + system, seconds) over
# the whole run (ramp included). Tunables: RUNS (3), N (2000 devices), PUSH_RATE (5000/s),
# PUSH_SECS (10), BASE_PORT (21200, below the ephemeral range; each run uses its own four
# ports above it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
RUNS=${RUNS:-3}
N=${N:-2000}
PUSH_RATE=${PUSH_RATE:-5000}
PUSH_SECS=${PUSH_SECS:-10}
BASE_PORT=${BASE_PORT:-21200}
TICKS=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() {
  local mode=$1 port=$2 enabled=true
  [ "$mode" = off ] && enabled=false
  local work; work=$(mktemp -d)
  (cd "$work" && LONGLINK_DEVICE__TCP_ADDR=127.0.0.1:$port LONGLINK_DEVICE__TLS_ADDR="" \
    LONGLINK_ROUTER__ADDR=127.0.0.1:$((port + 1)) LONGLINK_ADMIN__ADDR=127.0.0.1:$((port + 2)) \
    LONGLINK_TIMELINE__ENABLED=$enabled LONGLINK_LOG__FILTER=warn \
    exec "$BIN/longlink" serve > serve.out 2> serve.err) &
  local pid=$!
  for _ in $(seq 100); do grep -q "router API" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "$mode: the server did not start:" >&2; cat "$work/serve.err" >&2; exit 1
  fi
  local before; before=$(cpu_ticks "$pid")
  "$BIN/longlink-loadtest" push --addr "127.0.0.1:$port" --api "127.0.0.1:$((port + 1))" \
    --data-dir "$work/longlink-data" --n "$N" --rate 1000 --push-rate "$PUSH_RATE" \
    --secs "$PUSH_SECS" --max-secs 120 --json "$work/out.json" > "$work/loadtest.out" 2>&1 || true
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"; echo "$mode: the server exited during the run (status $?)" >&2
    return 1
  fi
  local after; after=$(cpu_ticks "$pid")
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$work/out.json" "$mode" "$(( after - before ))" "$TICKS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
d, m = r["latency"]["delivery"], r["messages"]
cpu = int(sys.argv[3]) / int(sys.argv[4])
print(f"{sys.argv[2]:>3}  p50 {d['p50_us']/1000:.2f}  p99 {d['p99_us']/1000:.2f}  "
      f"p99.9 {d['p999_us']/1000:.2f} ms  sent {m['sent']} received {m['received']}  "
      f"{m['achieved_rate_per_sec']:.0f}/s  server cpu {cpu:.2f} s")
PY
  rm -rf "$work"
}

port=$BASE_PORT
for i in $(seq "$RUNS"); do
  for mode in on off; do
    run "$mode" "$port" || { port=$((port + 4)); run "$mode" "$port"; }
    port=$((port + 4))
  done
done
