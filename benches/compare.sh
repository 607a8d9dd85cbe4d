#!/usr/bin/env bash
# Side by side: hubmesh (3 nodes, `hubmesh dev --nodes 3`, release build, driven by `hubmesh bench`) against
# Socket.IO 4.8 with @socket.io/redis-adapter (3 Node processes + one local redis-server, driven by
# benches/socketio/load.js), on loopback, with the same scenarios:
#   fanout  1000 clients in one group/room over 3 servers, one publisher, 64-byte payloads, at 50k and 200k
#           deliveries/s for SECONDS
#   echo    10 clients, one round trip outstanding each, at 1000/s and as fast as possible
#   idle    10000 connections (handshake done, one group joined) held SECONDS, server RSS per connection, on fresh
#           servers
#   rooms   ROOMS_GROUPS groups (10000) of ROOMS_SIZE members (10) over 3 servers, every member sending to its own
#           group/room, ROOMS_RATE deliveries/s (100000) for SECONDS, on fresh servers
# Prints one table (medians over RUNS runs) and keeps every JSON line under $OUT.
#
#   benches/compare.sh                 # RUNS=1 SECONDS_PER_RUN=10
#   RUNS=3 benches/compare.sh
#   SKIP_BUILD=1 IDLE_CLIENTS=2000 benches/compare.sh
#   SCENARIOS=rooms ROOMS_GROUPS=1000 ROOMS_RATE=20000 benches/compare.sh   # only some of: fanout echo idle rooms
#
# Needs node/npm and root for `apt-get install redis-server` when redis-server is missing. Every step runs under
# `timeout`; every process started here is stopped on exit (trap). Not part of CI.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-1}
SECS=${SECONDS_PER_RUN:-10}
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
ROOMS_GROUPS=${ROOMS_GROUPS:-10000}
ROOMS_SIZE=${ROOMS_SIZE:-10}
ROOMS_RATE=${ROOMS_RATE:-100000}
SCENARIOS=${SCENARIOS:-fanout echo idle rooms}
BASE=${BASE_PORT:-17400}      # hubmesh: BASE+1..3 (gossip BASE+2001.., links BASE+2101..)
SIO_BASE=${SIO_BASE_PORT:-17500}  # socket.io: SIO_BASE+1..3
REDIS_PORT=${REDIS_PORT:-17579}
OUT=${OUT:-$(mktemp -d /tmp/hubmesh-compare.XXXXXX)}
mkdir -p "$OUT"
HUBMESH=${HUBMESH:-${CARGO_TARGET_DIR:-$ROOT/target}/release/hubmesh}
SIO="$ROOT/benches/socketio"
STEP_LIMIT=$((SECS * 2 + 120))

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT INT TERM

log() { echo "[compare] $*" >&2; }

wait_port() { # port
  local i
  for i in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "port $1 did not open"
  return 1
}

stop_started() { cleanup; sleep 1; }

# ---- prerequisites
if ! command -v redis-server >/dev/null; then
  log "installing redis-server (apt-get)"
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y redis-server >&2
fi
command -v node >/dev/null || { log "node is required"; exit 1; }
if [ ! -d "$SIO/node_modules/socket.io" ]; then
  log "npm ci in $SIO"
  (cd "$SIO" && timeout 600 npm ci --no-audit --no-fund >&2)
fi
if [ -z "${SKIP_BUILD:-}" ]; then
  log "cargo build --release"
  (cd "$ROOT" && timeout 1800 cargo build --release >&2)
fi
ulimit -n 250000 2>/dev/null || ulimit -n 20000 2>/dev/null || true
wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }

H_URLS=(--url "http://127.0.0.1:$((BASE + 1))" --url "http://127.0.0.1:$((BASE + 2))" --url "http://127.0.0.1:$((BASE + 3))")
S_URLS="http://127.0.0.1:$((SIO_BASE + 1)),http://127.0.0.1:$((SIO_BASE + 2)),http://127.0.0.1:$((SIO_BASE + 3))"

start_hubmesh() {
  "$HUBMESH" dev --nodes 3 --base-port "$BASE" >"$OUT/hubmesh-dev.log" 2>&1 &
  PIDS+=($!)
  wait_port $((BASE + 1)) && wait_port $((BASE + 2)) && wait_port $((BASE + 3))
  sleep 2 # membership
}

SIO_PIDS=""
REDIS_PID=""
start_socketio() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$OUT/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  wait_port "$REDIS_PORT"
  SIO_PIDS=""
  local i
  for i in 1 2 3; do
    node "$SIO/server.js" $((SIO_BASE + i)) "$REDIS_PORT" >"$OUT/socketio-$i.log" 2>&1 &
    PIDS+=($!)
    SIO_PIDS="$SIO_PIDS${SIO_PIDS:+,}$!"
  done
  for i in 1 2 3; do wait_port $((SIO_BASE + i)); done
  sleep 1
}

hb() { # label, hubmesh bench args...
  local label=$1
  shift
  log "hubmesh $label: hubmesh bench $*"
  timeout "$STEP_LIMIT" "$HUBMESH" bench "$@" "${H_URLS[@]}" --pids-from-dev 2>>"$OUT/hubmesh-bench.log" |
    sed "s/^{/{\"label\":\"$label\",\"implementation\":\"hubmesh\",/" >>"$OUT/results.jsonl" || log "hubmesh $label failed"
}

sb() { # label, load.js args...
  local label=$1
  shift
  log "socket.io $label: node load.js $*"
  timeout "$STEP_LIMIT" node "$SIO/load.js" "$@" --urls "$S_URLS" --pids "$SIO_PIDS" --redis-pid "$REDIS_PID" \
    2>>"$OUT/socketio-load.log" |
    sed "s/^{/{\"label\":\"$label\",/" >>"$OUT/results.jsonl" || log "socket.io $label failed"
}

log "results in $OUT"
ROOMS_ARGS=(--groups "$ROOMS_GROUPS" --group-size "$ROOMS_SIZE" --rate "$ROOMS_RATE" --seconds "$SECS")
for run in $(seq 1 "$RUNS"); do
  log "run $run of $RUNS"
  if wants fanout || wants echo; then
    start_hubmesh
    if wants fanout; then
      hb fanout50k fanout --clients 1000 --rate 50000 --seconds "$SECS"
      hb fanout200k fanout --clients 1000 --rate 200000 --seconds "$SECS"
    fi
    if wants echo; then
      hb echo1k echo --clients 10 --rate 1000 --seconds "$SECS"
      hb echomax echo --clients 10 --seconds "$SECS"
    fi
    stop_started
  fi
  if wants idle; then
    start_hubmesh
    hb idle idle --clients "$IDLE_CLIENTS" --seconds "$SECS"
    stop_started
  fi
  if wants rooms; then
    start_hubmesh
    hb rooms rooms "${ROOMS_ARGS[@]}"
    stop_started
  fi

  if wants fanout || wants echo; then
    start_socketio
    if wants fanout; then
      sb fanout50k fanout --clients 1000 --rate 50000 --seconds "$SECS"
      sb fanout200k fanout --clients 1000 --rate 200000 --seconds "$SECS"
    fi
    if wants echo; then
      sb echo1k echo --clients 10 --rate 1000 --seconds "$SECS"
      sb echomax echo --clients 10 --rate 0 --seconds "$SECS"
    fi
    stop_started
  fi
  if wants idle; then
    start_socketio
    sb idle idle --clients "$IDLE_CLIENTS" --seconds "$SECS"
    stop_started
  fi
  if wants rooms; then
    start_socketio
    sb rooms rooms "${ROOMS_ARGS[@]}"
    stop_started
  fi
done

node "$SIO/table.js" "$OUT/results.jsonl"
log "JSON lines: $OUT/results.jsonl"
