# Sourced by the benchmark scripts that run Cinder nodes over Redis
# (cluster-bench.sh, history-bench.sh): a work directory, a redis-server of
# the script's own on a free port, starting and watching 1-shard nodes, and
# the bookkeeping that stops exactly the processes the script started.
#
# Needs OUT set. Sets LOG, WORK, REDIS_PORT, REDIS_PID, REDIS_URL and
# NODE_PIDS, and defines free_port, start_node (which needs SERVER and
# CONFIG), wait_nodes, ws, api, stop_nodes and cleanup (run on exit).

command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"

mkdir -p "$OUT/raw"
rm -f "$OUT"/raw/*.json
LOG="$OUT/run.log"
: > "$LOG"
WORK="$(mktemp -d)"

# A free loopback TCP port (never Redis's usual 6379, a shared service here).
free_port() {
  local port
  while :; do
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    [ "$port" != 6379 ] && { echo "$port"; return; }
  done
}

# Every process this script started, by PID; only these are ever stopped.
REDIS_PID=""
NODE_PIDS=()
stop_nodes() {
  local pid
  for pid in "${NODE_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${NODE_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  NODE_PIDS=()
}
cleanup() {
  stop_nodes
  if [ -n "$REDIS_PID" ]; then
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
REDIS_PID=$!
for _ in $(seq 50); do
  redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
  sleep 0.1
done
redis-cli -p "$REDIS_PORT" ping | grep -q PONG || { echo "redis-server did not start" >&2; exit 1; }
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

# start_node NAME CLUSTER(0|1): starts a 1-shard node on a free port; sets
# NODE_PORT and NODE_PID.
start_node() {
  local name="$1" cluster="$2"
  NODE_PORT="$(free_port)"
  local extra=()
  [ "$cluster" = 1 ] && extra=(--cluster-redis "$REDIS_URL" --node-name "$name")
  "$SERVER" serve --bind "127.0.0.1:$NODE_PORT" --shards 1 --log-level warn \
    --config "$CONFIG" "${extra[@]}" &
  NODE_PID=$!
  NODE_PIDS+=("$NODE_PID")
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$NODE_PORT/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "node $name did not start" >&2
  exit 1
}

# Waits until the node on port $1 hears $2 nodes.
wait_nodes() {
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$1/healthz" | grep -q "\"nodes\":$2" && return 0
    sleep 0.1
  done
  echo "the nodes did not see each other" >&2
  exit 1
}

ws() { echo "ws://127.0.0.1:$1/socket/websocket"; }
api() { echo "http://127.0.0.1:$1/api/broadcast"; }
