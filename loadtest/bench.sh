#!/usr/bin/env bash
# longlink vs Mosquitto, side by side, on this machine's loopback.
#
#   bash loadtest/bench.sh
#
# Installs Mosquitto from Debian's package when missing, builds the release binaries,
# and runs, each against a fresh server process (so that the memory figures start from
# a clean heap):
#   idle       N connections held: memory per connection, connect rate, handshake latency
#              (longlink plain, longlink TLS, Mosquitto)
#   broadcast  one message to all N (longlink: one broadcast push; MQTT: one
#              PUBLISH to a topic every device subscribes to)
#   push       PUSH_RATE pushes/s for PUSH_SECS with N connected (longlink unary and
#              --stream; Mosquitto: one topic per device)
#   tls        full (--no-resume) and resumed TLS handshakes per second, longlink
# JSON results (--json) and SVG plots (--plot) go to $RESULTS, a summary is printed at
# the end, and every server this script started is stopped when it exits.
#
# Tunables (environment): BENCH_N (19000), BENCH_RUNS (2), BENCH_RATE (2000 connections/s
# offered for idle/broadcast/push ramps), BENCH_TLS_FULL_RATE (20000 offered: meant to
# saturate the server's full handshakes), BENCH_TLS_RESUMED_RATE (5000: each client
# worker resumes with tickets from its own earlier handshakes, so an offered rate far
# above the server's makes every early handshake a full one for want of a ticket and
# measures nothing about resumption), BENCH_HOLD_SECS (10), PUSH_RATE
# (10000), PUSH_SECS (10), BENCH_MAX_SECS (180, per load-generator run), BENCH_RESULTS
# (results directory; default a fresh one under /tmp), BENCH_ONLY (space-separated
# scenario names to run, e.g. "idle-plain push-unary"), and the listen addresses below.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release

N=${BENCH_N:-19000}
RUNS=${BENCH_RUNS:-2}
RATE=${BENCH_RATE:-2000}
TLS_FULL_RATE=${BENCH_TLS_FULL_RATE:-20000}
TLS_RESUMED_RATE=${BENCH_TLS_RESUMED_RATE:-5000}
HOLD=${BENCH_HOLD_SECS:-10}
PUSH_RATE=${PUSH_RATE:-10000}
PUSH_SECS=${PUSH_SECS:-10}
MAX_SECS=${BENCH_MAX_SECS:-180}
ONLY=${BENCH_ONLY:-}

LL_TCP=${BENCH_LONGLINK_TCP:-127.0.0.1:47100}
LL_TLS=${BENCH_LONGLINK_TLS:-127.0.0.1:47443}
LL_API=${BENCH_LONGLINK_API:-127.0.0.1:47101}
LL_ADMIN=${BENCH_LONGLINK_ADMIN:-127.0.0.1:47102}
MQ_PORT=${BENCH_MOSQUITTO_PORT:-48830}
MQ_ADDR=127.0.0.1:$MQ_PORT

RESULTS=${BENCH_RESULTS:-$(mktemp -d)}
mkdir -p "$RESULTS"
WORK=$(mktemp -d)

log() { printf '\n== %s  %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- servers ------------------------------------------------------------------------

SERVER_PID=""
SERVER_KIND=""
DATA=""

stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "warning: $SERVER_KIND (pid $SERVER_PID) ignored SIGTERM for 10 s; SIGKILL" >&2
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    SERVER_KIND=""
}

cleanup() {
    local rc=$?
    stop_server
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_of() { echo "${1##*:}"; }

# The listen ports sit inside the kernel's ephemeral range (32768-60999), and other
# processes on this machine make many short-lived loopback connections: a client socket
# that happened to get one of these ports as its own (or its TIME-WAIT remnant, up to
# 60 s) makes the bind fail with "Address already in use". A server's own accepted
# sockets in TIME-WAIT do not (longlink sets SO_REUSEADDR), so rather than wait for the
# ports to look free, start_* retry the start for up to BIND_RETRY_SECS.
BIND_RETRY_SECS=${BENCH_BIND_RETRY_SECS:-90}

wait_listening() { # addr pid
    local port
    port=$(port_of "$1")
    for _ in $(seq 1 100); do
        kill -0 "$2" 2>/dev/null || return 1
        if [[ -n $(ss -Hltn "( sport = :$port )" 2>/dev/null) ]]; then return 0; fi
        sleep 0.1
    done
    return 1
}

start_longlink() { # name
    stop_server
    local dir=$WORK/longlink-$1 started=$SECONDS
    while :; do
        rm -rf "$dir"
        mkdir -p "$dir"
        (
            cd "$dir"
            ulimit -n "$(ulimit -Hn)"
            export LONGLINK_DEVICE__TCP_ADDR=$LL_TCP LONGLINK_DEVICE__TLS_ADDR=$LL_TLS \
                LONGLINK_ROUTER__ADDR=$LL_API LONGLINK_ADMIN__ADDR=$LL_ADMIN \
                LONGLINK_LOG__FILTER=info LONGLINK_DRAIN__GRACE_SECS=5
            exec "$BIN/longlink" serve >"$RESULTS/$1.server.log" 2>&1
        ) &
        SERVER_PID=$!
        SERVER_KIND=longlink
        DATA=$dir/longlink-data
        if wait_listening "$LL_TLS" "$SERVER_PID" && wait_listening "$LL_API" "$SERVER_PID"; then
            return 0
        fi
        stop_server
        if grep -q "Address already in use" "$RESULTS/$1.server.log" &&
            ((SECONDS - started < BIND_RETRY_SECS)); then
            echo "note: $(grep -m1 'Address already in use' "$RESULTS/$1.server.log"); retrying" >&2
            sleep 3
            continue
        fi
        echo "error: longlink did not start; its log:" >&2
        tail -20 "$RESULTS/$1.server.log" >&2
        return 1
    done
}

start_mosquitto() { # name
    stop_server
    local conf=$WORK/mosquitto.conf
    cat >"$conf" <<EOF
listener $MQ_PORT 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
log_dest stdout
log_type error
log_type warning
EOF
    local started=$SECONDS
    while :; do
        (
            # Mosquitto holds one descriptor per connection: raise its soft limit to the hard one.
            ulimit -n "$(ulimit -Hn)"
            exec mosquitto -c "$conf" >"$RESULTS/$1.server.log" 2>&1
        ) &
        SERVER_PID=$!
        SERVER_KIND=mosquitto
        if wait_listening "$MQ_ADDR" "$SERVER_PID"; then
            return 0
        fi
        stop_server
        if grep -q "Address already in use" "$RESULTS/$1.server.log" &&
            ((SECONDS - started < BIND_RETRY_SECS)); then
            echo "note: mosquitto: port $MQ_PORT in use; retrying" >&2
            sleep 3
            continue
        fi
        echo "error: mosquitto did not start; its log:" >&2
        tail -20 "$RESULTS/$1.server.log" >&2
        return 1
    done
}

# --- load generator -----------------------------------------------------------------

FAILED=()

# run NAME SCENARIO ARGS...: one load-generator run against the server started last.
run() {
    local name=$1 scenario=$2
    shift 2
    log "$name: longlink-loadtest $scenario $*"
    local rc=0
    "$BIN/longlink-loadtest" "$scenario" --max-secs "$MAX_SECS" \
        --json "$RESULTS/$name.json" --plot "$RESULTS/$name.svg" "$@" \
        2>&1 | tee "$RESULTS/$name.txt" || rc=$?
    if ((rc != 0)); then
        echo "warning: $name exited with status $rc (counts did not add up, or it failed)" >&2
        FAILED+=("$name:$rc")
    fi
    if [[ -n $SERVER_PID ]] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "warning: the $SERVER_KIND server died during $name" >&2
        FAILED+=("$name:server-died")
        SERVER_PID=""
    fi
}

wanted() { [[ -z $ONLY || " $ONLY " == *" $1 "* ]]; }

LL=(--addr "$LL_TCP" --api "$LL_API")
MQ=(--protocol mqtt --addr "$MQ_ADDR")

one_round() { # round number
    local r=$1 s
    s=(--n "$N" --rate "$RATE")

    if wanted idle-plain; then
        start_longlink "idle-plain.r$r"
        run "idle-plain.r$r" idle "${s[@]}" "${LL[@]}" --data-dir "$DATA" --hold-secs "$HOLD" \
            --server-pid "$SERVER_PID"
    fi
    if wanted idle-tls; then
        start_longlink "idle-tls.r$r"
        run "idle-tls.r$r" idle "${s[@]}" --tls --addr "$LL_TLS" --api "$LL_API" \
            --data-dir "$DATA" --hold-secs "$HOLD" --server-pid "$SERVER_PID"
    fi
    if wanted idle-mqtt; then
        start_mosquitto "idle-mqtt.r$r"
        run "idle-mqtt.r$r" idle "${s[@]}" "${MQ[@]}" --hold-secs "$HOLD" \
            --server-pid "$SERVER_PID"
    fi
    if wanted broadcast-longlink; then
        start_longlink "broadcast-longlink.r$r"
        run "broadcast-longlink.r$r" broadcast "${s[@]}" "${LL[@]}" --data-dir "$DATA"
    fi
    if wanted broadcast-mqtt; then
        start_mosquitto "broadcast-mqtt.r$r"
        run "broadcast-mqtt.r$r" broadcast "${s[@]}" "${MQ[@]}"
    fi
    if wanted push-unary; then
        start_longlink "push-unary.r$r"
        run "push-unary.r$r" push "${s[@]}" "${LL[@]}" --data-dir "$DATA" \
            --push-rate "$PUSH_RATE" --secs "$PUSH_SECS"
    fi
    if wanted push-stream; then
        start_longlink "push-stream.r$r"
        run "push-stream.r$r" push "${s[@]}" "${LL[@]}" --data-dir "$DATA" \
            --push-rate "$PUSH_RATE" --secs "$PUSH_SECS" --stream
    fi
    if wanted push-mqtt; then
        start_mosquitto "push-mqtt.r$r"
        run "push-mqtt.r$r" push "${s[@]}" "${MQ[@]}" --push-rate "$PUSH_RATE" \
            --secs "$PUSH_SECS"
    fi
    if wanted tls-full; then
        start_longlink "tls-full.r$r"
        # Offered far past capacity: refused devices retry with backoff, as apps do.
        run "tls-full.r$r" idle --n "$N" --rate "$TLS_FULL_RATE" --tls --no-resume \
            --addr "$LL_TLS" --api "$LL_API" --data-dir "$DATA" --hold-secs 1 --retries 20
    fi
    if wanted tls-resumed; then
        start_longlink "tls-resumed.r$r"
        run "tls-resumed.r$r" idle --n "$N" --rate "$TLS_RESUMED_RATE" --tls \
            --addr "$LL_TLS" --api "$LL_API" --data-dir "$DATA" --hold-secs 1
    fi
    stop_server
}

# --- main ---------------------------------------------------------------------------

if ! command -v mosquitto >/dev/null 2>&1; then
    log "installing mosquitto (Debian package)"
    apt-get update -qq && apt-get install -y -qq mosquitto
    # The package's own service is not wanted: this script starts its own broker.
    if command -v systemctl >/dev/null 2>&1; then systemctl stop mosquitto 2>/dev/null || true; fi
fi

log "building release binaries into $TARGET"
(cd "$ROOT" && cargo build --release -p longlink -p longlink-loadtest)

{
    echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit:      $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "nproc:       $(nproc)"
    echo "memory:      $(free -g | awk '/^Mem:/ {print $2 " GiB total"}')"
    echo "kernel:      $(uname -r)"
    echo "nofile:      soft $(ulimit -Sn), hard $(ulimit -Hn)"
    echo "tcp_wmem:    $(sysctl -n net.ipv4.tcp_wmem | tr '\t' ' ')"
    echo "tcp_rmem:    $(sysctl -n net.ipv4.tcp_rmem | tr '\t' ' ')"
    echo "somaxconn:   $(sysctl -n net.core.somaxconn)"
    echo "ports:       $(sysctl -n net.ipv4.ip_local_port_range | tr '\t' ' ')"
    echo "mosquitto:   $(mosquitto -h 2>/dev/null | head -1 || true)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "N=$N runs=$RUNS rate=$RATE tls_rates=full $TLS_FULL_RATE, resumed $TLS_RESUMED_RATE hold=$HOLD push=$PUSH_RATE/s x ${PUSH_SECS}s"
} | tee "$RESULTS/machine.txt"

for r in $(seq 1 "$RUNS"); do
    log "round $r of $RUNS"
    one_round "$r"
done
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS/machine.txt"

# --- summary ------------------------------------------------------------------------

python3 - "$RESULTS" "$RUNS" <<'PY' | tee "$RESULTS/summary.txt"
import json, os, statistics, sys

results, runs = sys.argv[1], int(sys.argv[2])

def load(name):
    out = []
    for r in range(1, runs + 1):
        path = os.path.join(results, f"{name}.r{r}.json")
        if os.path.exists(path):
            with open(path) as f:
                out.append(json.load(f))
    return out

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def fmt(values, unit="", scale=1.0, digits=0):
    vals = [v / scale for v in values if v is not None]
    if not vals:
        return "n/a"
    each = ", ".join(f"{v:,.{digits}f}" for v in vals)
    return f"{statistics.median(vals):,.{digits}f}{unit} (runs: {each})"

def conn(d):
    c = d["connections"]
    return f'{c["connected"]}/{d["n"]} connected, {c["failed"]} failed, {c["refused"]} refused, {c["lost"]} lost'

print("\n=== summary (medians over runs; every run listed) ===")
for name in ["idle-plain", "idle-tls", "idle-mqtt"]:
    ds = load(name)
    if not ds:
        continue
    print(f"\n{name}:")
    for d in ds:
        print("  ", conn(d), "(deadline hit)" if d.get("deadline_hit") else "")
    print("  server RSS per connection:  ", fmt([d["memory"]["server_rss_per_connection"] for d in ds], " B"))
    print("  kernel TCP buffers per conn:", fmt([d["memory"]["tcp_buffers_per_connection"] for d in ds], " B"), "(both ends)")
    print("  kernel socket slabs per conn:", fmt([d["memory"]["socket_slabs_per_connection"] for d in ds], " B"), "(both ends)")
    print("  connect rate:               ", fmt([d["connections"]["connect_rate_per_sec"] for d in ds], "/s"))
    print("  handshake p50:              ", fmt([d["latency"]["handshake"]["p50_us"] for d in ds], " ms", 1000, 2))
    print("  handshake p99:              ", fmt([d["latency"]["handshake"]["p99_us"] for d in ds], " ms", 1000, 2))

for name in ["broadcast-longlink", "broadcast-mqtt", "push-unary", "push-stream", "push-mqtt"]:
    ds = load(name)
    if not ds:
        continue
    print(f"\n{name}:")
    for d in ds:
        m = d.get("messages") or {}
        print("  ", conn(d), "(deadline hit)" if d.get("deadline_hit") else "")
        print("     messages:", json.dumps(m))
    lat = lambda k: [(d["latency"].get("delivery") or {}).get(k) for d in ds]
    print("  delivery p50:  ", fmt(lat("p50_us"), " ms", 1000, 2))
    print("  delivery p99:  ", fmt(lat("p99_us"), " ms", 1000, 2))
    print("  delivery p99.9:", fmt(lat("p999_us"), " ms", 1000, 2))
    print("  delivery max:  ", fmt(lat("max_us"), " ms", 1000, 2))

for name in ["tls-full", "tls-resumed"]:
    ds = load(name)
    if not ds:
        continue
    print(f"\n{name}:")
    for d in ds:
        print("  ", conn(d), json.dumps(d.get("tls_handshakes")))
    print("  full/s:    ", fmt([(d.get("tls_handshakes") or {}).get("full_per_sec") for d in ds], "/s"))
    print("  resumed/s: ", fmt([(d.get("tls_handshakes") or {}).get("resumed_per_sec") for d in ds], "/s"))
    print("  connect rate:", fmt([d["connections"]["connect_rate_per_sec"] for d in ds], "/s"))
    print("  handshake p99:", fmt([d["latency"]["handshake"]["p99_us"] for d in ds], " ms", 1000, 2))
PY

echo
echo "results: $RESULTS"
if ((${#FAILED[@]})); then
    echo "runs that did not add up: ${FAILED[*]}" >&2
    exit 1
fi
