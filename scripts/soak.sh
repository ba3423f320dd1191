#!/usr/bin/env bash
# Soak test: Cinder under mixed load for MINUTES minutes, read every minute.
#
# 1. Measures the maximum publish rate on the soak's topology (2,000
#    subscribers on 10 topics, HTTP publish in batches of 16) with a short
#    `cinder-load fanout --rate max`, on a fresh server — unless RATE is given.
# 2. Starts a fresh server (2 shards, a presence route and a broadcast
#    route) and runs `cinder-load soak` against it at 50 % of that maximum:
#    healthy subscribers checked for loss, churning clients (connect, join,
#    leave, disconnect; half on presence topics), long-poll clients, slow
#    consumers and abusive connections. One line a minute: server RSS, open
#    fds, connections, CPU, deliveries/s, p50/p99 latency, lost, duplicates…
# 3. Starts a fresh server beside the soaked one and measures the maximum
#    on each, alternately (SOAK_COMPARE_ROUNDS, 5): the same load on a
#    server 30 minutes old and on a new one, at the same time.
#
# Results in $SOAK_OUT (default docs/soak): soak.svg (chart), soak.json
# (every minute and the summary), soak.log (the table), max.json/max.log
# (the maximum measured first), compare/ (the soaked and fresh servers'
# windows), soak.toml (the server config).
# Exit status: cinder-load's (0 ok, 3 if a healthy subscriber lost a
# message, 1 if the run could not be done), or 1 if the server died.
#
# Usage: scripts/soak.sh [MINUTES, default 30] [RATE msg/s, default 50 % of the measured max]
# Environment: SOAK_OUT, SOAK_PORT (4500), SOAK_CONNS (2000), SOAK_TOPICS (10),
#   SOAK_SHARDS (2), SOAK_WARMUP (5 minutes; less for short runs),
#   SOAK_NO_BUILD=1 to use the binaries already in target/release,
#   SOAK_EXTRA="--slow-per-minute 0 …" for more `cinder-load soak` options,
#   SOAK_SERVER_CPUS / SOAK_LOAD_CPUS: CPU lists (taskset -c) for the server
#   and for the load generator, so they do not take each other's cores
#   (e.g. 0 and 1 on a 2-core machine, with SOAK_SHARDS=1). The maximum
#   is then measured with the same pinning.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-30}"
RATE="${2:-${SOAK_RATE:-}}"
OUT="${SOAK_OUT:-docs/soak}"
PORT="${SOAK_PORT:-4500}"
CONNS="${SOAK_CONNS:-2000}"
TOPICS="${SOAK_TOPICS:-10}"
SHARDS="${SOAK_SHARDS:-2}"
SERVER_CPUS="${SOAK_SERVER_CPUS:-}"
LOAD_CPUS="${SOAK_LOAD_CPUS:-}"
# Command prefixes that pin (taskset execs, so $! stays the server's PID).
SERVER_PIN=(); LOAD_PIN=()
[[ -n "$SERVER_CPUS" ]] && SERVER_PIN=(taskset -c "$SERVER_CPUS")
[[ -n "$LOAD_CPUS" ]] && LOAD_PIN=(taskset -c "$LOAD_CPUS")
if (( MINUTES > 10 )); then DEFAULT_WARMUP=5; else DEFAULT_WARMUP=$(( MINUTES / 2 )); fi
WARMUP="${SOAK_WARMUP:-$DEFAULT_WARMUP}"
WORK=target/soak
mkdir -p "$OUT" "$WORK"

if [[ -z "${SOAK_NO_BUILD:-}" ]]; then
  cargo build --release -p cinder -p cinder-load
fi
# Private copies: a rebuild while the soak runs must not swap the binaries.
cp target/release/cinder "$WORK/cinder"
cp target/release/cinder-load "$WORK/cinder-load"
SERVER="$WORK/cinder"
LOAD="$WORK/cinder-load"
WS="ws://127.0.0.1:$PORT/socket/websocket"
API="http://127.0.0.1:$PORT/api/broadcast"

CONFIG="$OUT/soak.toml"
cat > "$CONFIG" <<'TOML'
# scripts/soak.sh: the server's defaults, plus a presence route (churning
# clients join `presence:N`) and a broadcast route (`soak:N`, published to
# through the HTTP API; client events are rebroadcast).
[[channel]]
pattern = "presence:*"
join = "public"
presence = true

[[channel]]
pattern = "soak:*"
join = "public"
client_events = "broadcast"
TOML

SERVER_PID=""
start_server() {
  if curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz"; then
    echo "soak: something already answers on port $PORT (set SOAK_PORT)" >&2
    exit 1
  fi
  "${SERVER_PIN[@]}" "$SERVER" serve --bind "127.0.0.1:$PORT" --shards "$SHARDS" --config "$CONFIG" \
    --log-level warn 2>>"$WORK/server.log" &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/healthz" && return 0
    sleep 0.1
  done
  echo "soak: the server did not start (see $WORK/server.log)" >&2
  exit 1
}

# stop_server: SIGTERM, then wait; returns 1 if the server had already died.
stop_server() {
  [[ -n "$SERVER_PID" ]] || return 0
  local alive=0
  kill -0 "$SERVER_PID" 2>/dev/null && alive=1
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  (( alive )) || { echo "soak: the server had died before the end (see $WORK/server.log)" >&2; return 1; }
}
FRESH_PID="" # the fresh server the soaked one is compared with, at the end
trap 'stop_server || true; [[ -n "$FRESH_PID" ]] && kill -TERM "$FRESH_PID" 2>/dev/null; true' EXIT

# fanout_max PORT PID RUNS JSON: the maximum-rate load of the soak's
# topology against the server on PORT, RUNS windows of 10 s; the report to
# JSON, the table to stdout.
fanout_max() {
  "${LOAD_PIN[@]}" "$LOAD" fanout --url "ws://127.0.0.1:$1/socket/websocket" \
    --publish "http://127.0.0.1:$1/api/broadcast" --conns "$CONNS" --topics "$TOPICS" \
    --topic-prefix soak --rate max --batch 16 --duration 10s --runs "$3" \
    --server-pid "$2" --quiet --json "$4"
}

{
  echo "soak: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
       "($(git status --porcelain -- src loadtest 2>/dev/null | wc -l | tr -d ' ') files modified)," \
       "server binary sha256 $(sha256sum "$SERVER" | cut -c1-16), $(nproc) cores, $SHARDS shards," \
       "server on CPUs ${SERVER_CPUS:-any}, load generator on CPUs ${LOAD_CPUS:-any}"
} | tee "$OUT/soak.log"

if [[ -z "$RATE" ]]; then
  echo "soak: measuring the maximum publish rate ($CONNS subscribers, $TOPICS topics, batch 16)" | tee -a "$OUT/soak.log"
  start_server
  fanout_max "$PORT" "$SERVER_PID" 3 "$OUT/max.json" | tee "$OUT/max.log"
  stop_server
  MAX=$(jq '.median.publish_rate' "$OUT/max.json")
  RATE=$(jq -n "$MAX * 0.5 | floor")
  echo "soak: maximum $(jq -n "$MAX | floor") msg/s; the soak publishes 50 %: $RATE msg/s" | tee -a "$OUT/soak.log"
fi

start_server
echo "soak: $MINUTES minutes at $RATE msg/s against pid $SERVER_PID (warm-up $WARMUP minutes)" | tee -a "$OUT/soak.log"
set +e
"${LOAD_PIN[@]}" "$LOAD" soak --url "$WS" --publish "$API" --conns "$CONNS" --topics "$TOPICS" \
  --rate "$RATE" --minutes "$MINUTES" --warmup "$WARMUP" --server-pid "$SERVER_PID" \
  --json "$OUT/soak.json" --svg "$OUT/soak.svg" ${SOAK_EXTRA:-} | tee -a "$OUT/soak.log"
STATUS=${PIPESTATUS[0]}
set -e
# The soaked server against a fresh one, measured at the same time: a
# server whose state degraded over the run (tables, timers, fragmentation)
# delivers less, or spends more CPU per delivery, than a fresh one. The
# measurement before the run is not the comparison (a shared machine's
# capacity moves over half an hour), and one measurement of each is not
# either (back to back they differ by up to 10 %): a fresh server is started
# beside the soaked one, on the next port and the same CPUs, and the two
# are measured alternately, COMPARE_ROUNDS times each; the medians are
# compared. Not with a given RATE.
COMPARE_ROUNDS="${SOAK_COMPARE_ROUNDS:-5}"
FRESH_PORT=$((PORT + 1))
window() { # window PORT PID NAME: one maximum-rate window into $OUT/compare/NAME.{json,log}
  fanout_max "$1" "$2" 1 "$OUT/compare/$3.json" > "$OUT/compare/$3.log"
}
if [[ -z "${2:-${SOAK_RATE:-}}" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "soak: the soaked server (pid $SERVER_PID) against a fresh one, alternately, $COMPARE_ROUNDS rounds" | tee -a "$OUT/soak.log"
  rm -rf "$OUT/compare"; mkdir -p "$OUT/compare"
  "${SERVER_PIN[@]}" "$SERVER" serve --bind "127.0.0.1:$FRESH_PORT" --shards "$SHARDS" --config "$CONFIG" \
    --log-level warn 2>>"$WORK/server.log" &
  FRESH_PID=$!
  sleep 5 # the soak's connections close; the fresh server starts
  COMPARED=1
  for round in $(seq "$COMPARE_ROUNDS"); do
    window "$PORT" "$SERVER_PID" "soaked-$round" && window "$FRESH_PORT" "$FRESH_PID" "fresh-$round" \
      || { COMPARED=0; break; }
  done
  kill -TERM "$FRESH_PID" 2>/dev/null; wait "$FRESH_PID" 2>/dev/null || true; FRESH_PID=""
  if (( COMPARED )); then
    jq -n -r --slurpfile soaked <(cat "$OUT"/compare/soaked-*.json) \
      --slurpfile fresh <(cat "$OUT"/compare/fresh-*.json) '
      def median(f): map(.median | f) | sort | .[length / 2 | floor] as $hi
        | if length % 2 == 1 then $hi else ($hi + .[length / 2 - 1]) / 2 end;
      def r(d): . * d | round / d;
      [$soaked, $fresh] | map([median(.publish_rate), median(.server_cpu_per_delivery_us), median(.p99_us)])
      | .[0] as [$sr, $sc, $sp] | .[1] as [$fr, $fc, $fp]
      | "soak: soaked / fresh server, medians of \($soaked | length) alternating windows: "
        + "\($sr | floor) / \($fr | floor) msg/s (ratio \($sr / $fr | r(1000))), "
        + "server CPU per delivery \($sc | r(1000)) / \($fc | r(1000)) µs (ratio \($sc / $fc | r(1000))), "
        + "p99 \($sp / 1000 | r(10)) / \($fp / 1000 | r(10)) ms"' \
      | tee -a "$OUT/soak.log"
  else
    echo "soak: the comparison after the soak failed (see $OUT/compare/)" | tee -a "$OUT/soak.log"
    STATUS=1
  fi
fi
stop_server || STATUS=1
echo "soak: exit status $STATUS; results in $OUT (soak.svg, soak.json, soak.log)" | tee -a "$OUT/soak.log"
exit "$STATUS"
