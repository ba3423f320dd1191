#!/usr/bin/env bash
# Fan-out of two server binaries measured alternately in one run, so a
# change to the hot path is judged against its predecessor on the same
# machine at the same time: fan-out at 1k and 10k subscribers (max rate,
# batches of 16) and one write per delivery (batch 1), each round running
# OLD then NEW (NEW then OLD in even rounds). Prints the medians over rounds and the ratios new/old.
#
#   scripts/compare-binaries.sh OLD_BIN NEW_BIN [ROUNDS] [SECONDS] [RUNS]
#
# Env: CONFIG (a config file for both servers), LOAD (a cinder-load binary
# to use instead of building one), PORT, BENCH_OUT.
#
# Build the old binary from the previous commit first, e.g.
#   git worktree add /tmp/prev HEAD~1 && (cd /tmp/prev && cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD="$1"; NEW="$2"; ROUNDS="${3:-3}"; SECS="${4:-3}"; RUNS="${5:-3}"
PORT="${PORT:-4300}"
OUT="${BENCH_OUT:-target/compare}"
mkdir -p "$OUT"
if [ -z "${LOAD:-}" ]; then
  cargo build --release -p cinder-load >/dev/null 2>&1
  LOAD=target/release/cinder-load
fi
# CONFIG=file.toml runs both binaries with that configuration (e.g. one with
# a history route, to measure what plain topics pay beside history topics).
CONFIG_ARGS=()
[ -n "${CONFIG:-}" ] && CONFIG_ARGS=(--config "$CONFIG")
ulimit -n "$(ulimit -Hn)"
WS="ws://127.0.0.1:$PORT/socket/websocket"
API="http://127.0.0.1:$PORT/api/broadcast"
SERVER_PID=""

start_server() {
  "$1" serve --bind "127.0.0.1:$PORT" --shards 2 --log-level warn "${CONFIG_ARGS[@]}" &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "server did not start" >&2
  exit 1
}
stop_server() {
  [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap stop_server EXIT

scenario_args() {
  case "$1" in
    fanout-1000) echo "--conns 1000 --payload-bytes 64 --rate max --batch 16 --window 64" ;;
    fanout-10000) echo "--conns 10000 --payload-bytes 64 --rate max --batch 16 --window 64" ;;
    batch1-1000) echo "--conns 1000 --payload-bytes 64 --rate max --batch 1" ;;
  esac
}

SCENARIOS="${SCENARIOS:-fanout-1000 fanout-10000 batch1-1000}"
for round in $(seq "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    # The second server of a pair measures a few % slower (the first one's
    # sockets are still closing): flip the order every other round.
    order="old new"; [ $((round % 2)) = 0 ] && order="new old"
    for which in $order; do
      bin="$OLD"; [ "$which" = new ] && bin="$NEW"
      start_server "$bin"
      # shellcheck disable=SC2046
      "$LOAD" fanout --url "$WS" --publish "$API" $(scenario_args "$scenario") \
        --duration "${SECS}s" --runs "$RUNS" --server-pid "$SERVER_PID" --quiet \
        --json "$OUT/$scenario-$which-$round.json" >/dev/null
      stop_server
    done
  done
done

python3 - "$OUT" "$ROUNDS" $SCENARIOS <<'PY'
import json, statistics, sys
out, rounds, scenarios = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def med(xs): return statistics.median(xs)
print(f"{'scenario':<14}{'old deliv/s':>14}{'new deliv/s':>14}{'ratio':>8}{'old µs/deliv':>14}{'new µs/deliv':>14}{'ratio':>8}")
for s in scenarios:
    row = {}
    for which in ("old", "new"):
        d, c = [], []
        for r in range(1, rounds + 1):
            m = json.load(open(f"{out}/{s}-{which}-{r}.json"))["median"]
            d.append(m["deliveries_per_sec"]); c.append(m["server_cpu_per_delivery_us"])
        row[which] = (med(d), med(c))
    (od, oc), (nd, nc) = row["old"], row["new"]
    print(f"{s:<14}{od:>14,.0f}{nd:>14,.0f}{nd/od:>8.3f}{oc:>14.3f}{nc:>14.3f}{nc/oc:>8.3f}")
PY
