#!/usr/bin/env bash
# Measures that what arrives on a Phoenix app's PubSub channel cannot hold up
# the fan-out to Cinder's subscribers: the same fan-out (1,000 subscribers,
# 100 messages/s through the HTTP API) against one server with
# [phoenix_pubsub] on a redis-server of its own, three times —
#   1. alone;
#   2. while the app's channel is flooded with Phoenix.Tracker gossip (the
#      real 2 KB heartbeat of tests/fixtures, ignored after reading its
#      envelope's first four elements);
#   3. while it is flooded with real channel broadcasts of the app (the
#      captured `Endpoint.broadcast`), each decoded and handed to every
#      shard, for a topic with no subscriber here.
# The flood is as fast as one pipelined connection can PUBLISH. Prints
# cinder-load's table for each and the bridge's counters at the end.
#
# Needs redis-server and python3. Usage:
#   scripts/bridge-isolation.sh [seconds per window, default 5] [windows, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-5}"
RUNS="${2:-3}"
PORT=4220
REDIS_PORT=4221
OUT="${BENCH_OUT:-target/bench-results}"
mkdir -p "$OUT"
cargo build --release -p cinder -p cinder-load
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
cat > "$TMP/cinder.toml" <<TOML
[server]
bind = "127.0.0.1:$PORT"
shards = 2
[phoenix_pubsub]
redis = "redis://127.0.0.1:$REDIS_PORT"
name = "Peer.PubSub"
node_name = "cinder-1"
[[channel]]
pattern = "*"
join = "public"
TOML
target/release/cinder serve --config "$TMP/cinder.toml" --log-level error &
SERVER_PID=$!
PIDS+=($SERVER_PID)
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" | grep -q '"phoenix_pubsub":{"redis":"up"' && break
  sleep 0.1
done

# flood FIXTURE: PUBLISHes the fixture's bytes on the app's channel, 64 per
# round trip, until killed; prints how many it sent when it stops.
cat > "$TMP/flood.py" <<'PY'
import signal, socket, sys
port, path = int(sys.argv[1]), sys.argv[2]
payload = open(path, "rb").read()
channel = b"phx:Elixir.Peer.PubSub.Adapter"
def bulk(b): return b"$%d\r\n%s\r\n" % (len(b), b)
command = b"*3\r\n" + bulk(b"PUBLISH") + bulk(channel) + bulk(payload)
batch = command * 64
sock = socket.create_connection(("127.0.0.1", port))
sent = 0
def stop(*_):
    print(f"flood: {sent} messages published", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    sock.sendall(batch)
    replies = 0
    while replies < 64:
        replies += sock.recv(65536).count(b"\r\n")
    sent += 64
PY

fanout() {
  target/release/cinder-load fanout --url "ws://127.0.0.1:$PORT/socket/websocket" \
    --publish "http://127.0.0.1:$PORT/api/broadcast" --conns 1000 --rate 100 \
    --duration "${SECS}s" --runs "$RUNS" --server-pid "$SERVER_PID" --quiet --json "$1"
}

flooded() {
  local fixture="$1" name="$2"
  python3 "$TMP/flood.py" "$REDIS_PORT" "tests/fixtures/phoenix-pubsub-redis/$fixture.bin" &
  local flood=$!
  PIDS+=($flood)
  sleep 1
  fanout "$OUT/bridge-isolation-$name.json"
  kill -TERM "$flood" 2>/dev/null || true
  wait "$flood" 2>/dev/null || true
}

echo "== fan-out alone"
fanout "$OUT/bridge-isolation-baseline.json"
echo "== fan-out while the app's channel is flooded with presence gossip"
flooded captured/tracker-heartbeat-2 gossip
echo "== fan-out while the app's channel is flooded with channel broadcasts"
flooded captured/http-broadcast broadcasts
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E "^cinder_(deliveries_total|phoenix_pubsub_[a-z_]*)[ {]" || true
