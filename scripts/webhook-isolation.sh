#!/usr/bin/env bash
# Measures that fan-out to ordinary subscribers is unaffected while backend
# hooks time out: the same fan-out run three times against one server, first
# alone, then while other clients keep joining a `join = "webhook"` topic whose
# backend answers only after 5 s (the hook deadline is 1 s, the queue small,
# so hooks time out and overflow the whole time), then while other clients
# keep joining and leaving a `lifecycle` topic with presence whose events —
# leave, disconnect, occupied/vacated, member added/removed — go to that same
# backend (every delivery times out and is retried with backoff; the events
# queue, small here, overflows and drops). The churn without lifecycle runs
# on a presence route too, so the two differ by the events alone.
#
# Needs python3 (the deliberately slow backend). Usage:
#   scripts/webhook-isolation.sh [seconds per window, default 5] [windows, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-5}"
RUNS="${2:-3}"
PORT=4210
BACKEND_PORT=4211
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

cat > "$TMP/slow_backend.py" <<'PY'
import sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class Slow(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(5)
        body = b"{}"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
PY
python3 "$TMP/slow_backend.py" "$BACKEND_PORT" 2>/dev/null &
PIDS+=($!)

cat > "$TMP/cinder.toml" <<TOML
[server]
bind = "127.0.0.1:$PORT"
shards = 2
[webhook]
url = "http://127.0.0.1:$BACKEND_PORT/hooks"
timeout_ms = 1000
workers = 4
queue_size = 64
events_queue = 2000
[[channel]]
pattern = "hook:*"
join = "webhook"
[[channel]]
pattern = "game:*"
join = "public"
lifecycle = true
presence = true
[[channel]]
pattern = "churn:*"
join = "public"
presence = true
[[channel]]
pattern = "bench:*"
join = "public"
TOML
target/release/cinder serve --config "$TMP/cinder.toml" --log-level error &
SERVER_PID=$!
PIDS+=($SERVER_PID)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

fanout() {
  target/release/cinder-load fanout --url "ws://127.0.0.1:$PORT/socket/websocket" \
    --publish "http://127.0.0.1:$PORT/api/broadcast" --conns 1000 --rate 100 \
    --duration "${SECS}s" --runs "$RUNS" --server-pid "$SERVER_PID" --quiet --json "$1"
}

echo "== fan-out alone"
fanout "$OUT/webhook-isolation-baseline.json"

# churn_run PREFIX NAME [ARGS…]: the fan-out, while other clients keep
# connecting to PREFIX topics, joining and going (300 at a time, ARGS added).
churn_run() {
  local prefix="$1" name="$2"
  shift 2
  (
    end=$((SECONDS + (SECS + 3) * RUNS + 15))
    while [ $SECONDS -lt $end ]; do
      target/release/cinder-load connect --url "ws://127.0.0.1:$PORT/socket/websocket" \
        --conns 300 --topic-prefix "$prefix" "$@" --quiet --json "$OUT/webhook-isolation-$name-clients.json" >/dev/null || true
    done
  ) &
  CHURN_LOOP=$!
  PIDS+=($CHURN_LOOP)
  sleep 2
  fanout "$OUT/webhook-isolation-$name.json"
  kill "$CHURN_LOOP" 2>/dev/null || true
  wait "$CHURN_LOOP" 2>/dev/null || true
}
echo "== fan-out while webhook joins time out"
churn_run hook stuck --setup-timeout 10s
echo "failed joins in the last hook round:"
grep -o '"backend [a-z]*": [0-9]*\|"join refused": [0-9]*' "$OUT/webhook-isolation-stuck-clients.json" || true

# The same client churn on a route without lifecycle: what the churn itself
# costs, so the next run shows what the undeliverable events add.
echo "== fan-out while clients churn on a route without lifecycle"
churn_run churn churn

echo "== fan-out while lifecycle events cannot be delivered"
churn_run game events
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E "^cinder_(deliveries_total|broadcasts_total|events_[a-z_]*)[ {]" || true
