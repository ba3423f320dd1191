#!/usr/bin/env bash
# Measures every figure of docs/benchmarks.md in one run, on this machine:
# the write ceiling, fan-out at 1k and 10k subscribers (64 B and 1 KiB),
# latency at fractions of the maximum rate and at 100k deliveries/s, chat,
# connect rate, idle memory at 1k and 15k connections, presence join storms,
# and the shard sweep.
#
# Each scenario gets a fresh release-built server on its own port, so RSS and
# CPU readings belong to that scenario alone. Results: one JSON file per
# scenario and the printed tables in $OUT/run.log.
#
# Usage: scripts/benchmarks.sh [seconds per window, default 5] [windows, default 3]
# (results go to $BENCH_OUT, default target/bench-results)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-5}"
RUNS="${2:-3}"
OUT="${BENCH_OUT:-target/bench-results}"
PORT=4200
mkdir -p "$OUT"
: > "$OUT/run.log"

cargo build --release -p cinder -p cinder-load
SERVER=target/release/cinder
LOAD=target/release/cinder-load
WS="ws://127.0.0.1:$PORT/socket/websocket"
API="http://127.0.0.1:$PORT/api/broadcast"
SERVER_PID=""

start_server() {
  "$SERVER" serve --bind "127.0.0.1:$PORT" --shards "${1:-2}" --log-level warn ${2:+--config "$2"} &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "server did not start" >&2
  exit 1
}

stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}
trap stop_server EXIT

# run NAME ARGS...: runs cinder-load, keeps its table and JSON.
run() {
  local name="$1"; shift
  echo "== $name: cinder-load $*" | tee -a "$OUT/run.log"
  "$LOAD" "$@" --json "$OUT/$name.json" | tee -a "$OUT/run.log"
}

# The machine's ceiling, same sizes as the fan-out runs.
for conns in 1000 10000; do
  for bytes in 64 1024; do
    run "ceiling-$conns-$bytes" ceiling --conns "$conns" --payload-bytes "$bytes" \
      --duration "${SECS}s" --runs "$RUNS" --quiet
  done
done
run ceiling-1000-64-coalesce8 ceiling --conns 1000 --payload-bytes 64 --coalesce 8 \
  --duration "${SECS}s" --runs "$RUNS" --quiet

# Fan-out at the maximum rate. Batches of 16 let several messages per
# subscriber coalesce into one write; batch 1 is the one-write-per-delivery case.
for conns in 1000 10000; do
  for bytes in 64 1024; do
    start_server 2
    run "fanout-$conns-$bytes" fanout --url "$WS" --publish "$API" --conns "$conns" \
      --payload-bytes "$bytes" --rate max --batch 16 --window 64 --duration "${SECS}s" \
      --runs "$RUNS" --server-pid "$SERVER_PID" --quiet
    stop_server
  done
done

# One write per delivery, then latency at 25/50/90% of that maximum.
start_server 2
run fanout-1000-64-batch1 fanout --url "$WS" --publish "$API" --conns 1000 --payload-bytes 64 \
  --rate max --batch 1 --duration "${SECS}s" --runs "$RUNS" --latency-at 25,50,90 \
  --server-pid "$SERVER_PID" --quiet
stop_server

# 100k deliveries/s: 1k subscribers × 100 messages/s.
start_server 2
run fanout-1000-100hz fanout --url "$WS" --publish "$API" --conns 1000 --payload-bytes 64 \
  --rate 100 --duration "${SECS}s" --runs "$RUNS" --server-pid "$SERVER_PID" --quiet
stop_server

# Chat: 1000 clients in 50 rooms of 20, 5 pushes/s each (100k deliveries/s).
start_server 2
run chat-1000 chat --url "$WS" --conns 1000 --topics 50 --rate 5 --payload-bytes 64 \
  --duration "${SECS}s" --runs "$RUNS" --server-pid "$SERVER_PID" --quiet
stop_server

# Connect + join storm.
start_server 2
run connect-10000 connect --url "$WS" --conns 10000 --src-ips 127.0.0.2-127.0.0.9 \
  --server-pid "$SERVER_PID" --quiet
stop_server

# Idle memory per joined connection.
for conns in 1000 15000; do
  start_server 2
  run "idle-$conns" idle --url "$WS" --conns "$conns" --topics 100 --src-ips 127.0.0.2-127.0.0.9 \
    --hold 5s --server-pid "$SERVER_PID" --quiet
  stop_server
done

# Presence join storm: 1k and 5k clients into one presence-enabled room.
PRESENCE_CONFIG="$OUT/presence.toml"
cat > "$PRESENCE_CONFIG" <<'TOML'
[[channel]]
pattern = "presence:*"
join = "public"
presence = true
TOML
for conns in 1000 5000; do
  start_server 2 "$PRESENCE_CONFIG"
  run "presence-$conns" presence --url "$WS" --conns "$conns" --topics 1 --topic-prefix presence \
    --src-ips 127.0.0.2-127.0.0.9 --server-pid "$SERVER_PID" --quiet
  stop_server
done

# Shard sweep (the sweep starts its own servers).
echo "== sweep" | tee -a "$OUT/run.log"
"$LOAD" sweep --shards 1,2 --port $((PORT + 1)) --svg docs/sweep.svg --json "$OUT/sweep.json" \
  fanout --conns 1000 --payload-bytes 64 --rate max --batch 16 --publish "http://127.0.0.1/api/broadcast" \
  --duration "${SECS}s" --runs "$RUNS" --quiet | tee -a "$OUT/run.log"

echo "results in $OUT (tables: $OUT/run.log)"
