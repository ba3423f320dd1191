#!/usr/bin/env bash
# Regenerates the flamegraphs in this folder: starts a release build of
# Cinder, drives it with cinder-load under the `fanout` and `chat` scenarios,
# samples the server with `perf record` (software clock, so it works on
# machines without hardware counters) and renders SVGs with inferno.
#
# Needs: perf (Debian: linux-perf) and inferno (`cargo install inferno`).
# Usage: flamegraphs/record.sh [seconds per scenario, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${1:-10}"
PORT=4190
OUT=flamegraphs

command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
command -v inferno-flamegraph >/dev/null || { echo "inferno not found (cargo install inferno)" >&2; exit 1; }

cargo build --release --bin cinder -p cinder -p cinder-load
SERVER=target/release/cinder
LOAD=target/release/cinder-load

record() {
  local name="$1"; shift
  "$SERVER" serve --bind "127.0.0.1:$PORT" --shards 2 --log-level warn &
  local server_pid=$!
  trap 'kill "$server_pid" 2>/dev/null || true' RETURN
  for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
    sleep 0.1
  done
  # Sample the server only while the scenario's measured window runs.
  perf record -F 999 -e cpu-clock -g -p "$server_pid" -o "/tmp/cinder-$name.perf.data" \
    -- sleep "$((SECONDS_PER_RUN + 3))" >/dev/null 2>&1 &
  local perf_pid=$!
  "$LOAD" "$@" --url "ws://127.0.0.1:$PORT/socket/websocket" --duration "${SECONDS_PER_RUN}s" --quiet
  wait "$perf_pid" || true
  kill -TERM "$server_pid"; wait "$server_pid" || true
  perf script -i "/tmp/cinder-$name.perf.data" 2>/dev/null \
    | inferno-collapse-perf \
    | inferno-flamegraph --title "cinder: $name" > "$OUT/$name.svg"
  echo "wrote $OUT/$name.svg"
}

record fanout fanout --conns 1000 --topics 1 --rate max --batch 16 \
  --publish "http://127.0.0.1:$PORT/api/broadcast" --payload-bytes 64
record chat chat --conns 1000 --topics 50 --rate 5 --payload-bytes 64
