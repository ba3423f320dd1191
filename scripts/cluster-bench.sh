#!/usr/bin/env bash
# What a second node costs: fan-out through Redis against fan-out on one
# node, measured in one run on this machine. The script starts its own
# redis-server on a free port and its own Cinder nodes (1 shard each, fresh
# processes for every measurement), and stops exactly those on exit.
#
# Topologies, run alternately in every round (baseline, cross, split, …):
#   baseline  one node alone (no cluster), subscribers and publisher on it
#   cross     nodes A and B over Redis: publisher on A, every subscriber on B
#   split     nodes A and B over Redis: publisher on A, subscribers half on A,
#             half on B
# each at two loads, as docs/benchmarks.md measures fan-out:
#   max       1,000 subscribers, 64 B, --rate max --batch 16 --window 64
#   fixed     1,000 subscribers, 64 B, FIXED_RATE msg/s (default 50), one
#             message per request: one write per delivery, a load a single
#             1-shard node sustains on this 2-core machine with the load
#             generator beside it
# and, once per round, how many broadcasts/s one Redis carries between two
# nodes with Cinder's envelope (one subscriber on each node, publishing on
# A at the maximum rate; what arrives on B went through Redis).
#
# CPU per delivery on a receiving node = that process's user + sys time
# (/proc/PID/stat) over a window, divided by the deliveries its own
# subscribers got in that window. Redis CPU is read the same way.
# Figures per run are the median of its windows; the table gives the median
# over rounds.
#
# Usage: scripts/cluster-bench.sh [rounds, default 3] [seconds per window, default 4] [windows, default 3]
# Env: FIXED_RATE (50), CLUSTER_BENCH_OUT (docs/cluster-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
SECS="${2:-4}"
RUNS="${3:-3}"
FIXED_RATE="${FIXED_RATE:-50}"
OUT="${CLUSTER_BENCH_OUT:-docs/cluster-bench}"
CONNS=1000

cargo build --release -p cinder -p cinder-load
SERVER=target/release/cinder
LOAD=target/release/cinder-load
# shellcheck source=lib/cluster-nodes.sh
source scripts/lib/cluster-nodes.sh

# Long-poll stays on, as by default, so every node needs the same secret.
CONFIG="$WORK/node.toml"
cat > "$CONFIG" <<'TOML'
[socket.longpoll]
secret = "cluster-bench-shared-secret-0123456789"
TOML

load_args() {
  case "$1" in
    max) echo "--conns $CONNS --payload-bytes 64 --rate max --batch 16 --window 64" ;;
    fixed) echo "--conns $CONNS --payload-bytes 64 --rate $FIXED_RATE --batch 1" ;;
    redis) echo "--conns 2 --payload-bytes 64 --rate max --batch 64 --window 1024" ;;
  esac
}

# measure ROUND TOPOLOGY LOAD: fresh nodes, one cinder-load run, stop.
measure() {
  local round="$1" topo="$2" load="$3" a_port b_port a_pid b_pid
  local json="$OUT/raw/$round-$topo-$load.json"
  local args=()
  if [ "$topo" = baseline ]; then
    start_node solo 0
    args=(--url "$(ws "$NODE_PORT")" --publish "$(api "$NODE_PORT")"
      --server-pid "$NODE_PID" --watch-pid "node=$NODE_PID" --watch-pid "redis=$REDIS_PID")
  else
    start_node a 1; a_port="$NODE_PORT"; a_pid="$NODE_PID"
    start_node b 1; b_port="$NODE_PORT"; b_pid="$NODE_PID"
    wait_nodes "$a_port" 2
    wait_nodes "$b_port" 2
    args=(--publish "$(api "$a_port")" --server-pid "$b_pid"
      --watch-pid "a=$a_pid" --watch-pid "b=$b_pid" --watch-pid "redis=$REDIS_PID"
      --publish-after 1s)
    case "$topo" in
      cross) args+=(--url "$(ws "$b_port")") ;;
      split | redis) args+=(--url "$(ws "$a_port")" --url "$(ws "$b_port")") ;;
    esac
  fi
  echo "== round $round $topo $load: cinder-load fanout ${args[*]} $(load_args "$load")" | tee -a "$LOG"
  local rc=0
  # shellcheck disable=SC2046
  "$LOAD" fanout "${args[@]}" $(load_args "$load") --duration "${SECS}s" --runs "$RUNS" \
    --quiet --json "$json" >>"$LOG" 2>&1 || rc=$?
  [ "$rc" = 0 ] || echo "   cinder-load exited $rc (see $LOG)" | tee -a "$LOG"
  stop_nodes
}

# What else is using the machine: the figures are only as quiet as it is.
busy() {
  echo "$1: $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg); busiest processes:"
  ps -eo pcpu=,comm= --sort=-pcpu | head -4 | sed 's/^/   /'
}
busy "start" | tee -a "$LOG"
START=$(date +%s)
for round in $(seq "$ROUNDS"); do
  for topo in baseline cross split; do
    for load in max fixed; do
      measure "$round" "$topo" "$load"
    done
  done
  measure "$round" redis redis
done
echo "measured in $(( $(date +%s) - START )) s" | tee -a "$LOG"
busy "end" | tee -a "$LOG"

python3 - "$OUT" "$ROUNDS" "$FIXED_RATE" "$(nproc)" "$SECS" "$RUNS" "$(git rev-parse --short HEAD)" <<'PY' | tee "$OUT/summary.txt"
import json, os, statistics, sys
out, rounds, fixed_rate, cores = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
secs, runs, commit = sys.argv[5], sys.argv[6], sys.argv[7]
med = statistics.median

def load(round_, topo, load_):
    path = f"{out}/raw/{round_}-{topo}-{load_}.json"
    return json.load(open(path)) if os.path.exists(path) else None

def cpu(w, name):
    for p in w.get("watched", []):
        if p["name"] == name:
            return p["cpu_ms"]
    return None

def node_received(w, i):
    nodes = w.get("by_node", [])
    return nodes[i]["received"] if i < len(nodes) else w["received"]

def per_run(report, topo):
    """Median over a run's windows of each figure."""
    ws = report["windows"]
    f = {
        "deliveries_per_sec": med([w["deliveries_per_sec"] for w in ws]),
        "publish_rate": med([w["publish_rate"] for w in ws]),
        "p50_ms": med([w["latency"]["p50_us"] for w in ws]) / 1000,
        "p99_ms": med([w["latency"]["p99_us"] for w in ws]) / 1000,
        "lost": report["totals"]["lost"],
        "duplicates": report["totals"]["duplicates"],
    }
    # CPU µs per delivery on each receiving node: its CPU / its deliveries.
    def us_per(cpu_ms, n):
        return cpu_ms * 1000 / n if cpu_ms is not None and n else None
    if topo == "baseline":
        rx = [("node", 0)]
    elif topo == "cross":
        rx = [("b", 0)]
    else:
        rx = [("a", 0), ("b", 1)]
    for name, i in rx:
        f[f"cpu_us_{name}"] = med([us_per(cpu(w, name), node_received(w, i)) for w in ws])
    f["rx_cpu_us"] = med([
        us_per(sum(cpu(w, n) for n, _ in rx), w["received"]) for w in ws])
    # Every Cinder process (the publishing node too) over all deliveries.
    nodes = ["node"] if topo == "baseline" else ["a", "b"]
    f["all_cpu_us"] = med([
        us_per(sum(cpu(w, n) for n in nodes), w["received"]) for w in ws])
    f["redis_cpu_pct"] = med([
        cpu(w, "redis") / (w["seconds"] * 1000) * 100 for w in ws])
    f["redis_us_per_msg"] = med([
        cpu(w, "redis") * 1000 / w["published"] if w["published"] else 0 for w in ws])
    if topo == "redis":
        f["via_redis_per_sec"] = med([w["by_node"][1]["deliveries_per_sec"] for w in ws])
    return f

summary = {}
for topo, loads in (("baseline", ("max", "fixed")), ("cross", ("max", "fixed")),
                    ("split", ("max", "fixed")), ("redis", ("redis",))):
    for l in loads:
        got = [per_run(r, topo) for r in (load(i, topo, l) for i in range(1, rounds + 1)) if r]
        if not got:
            continue
        summary[f"{topo}-{l}"] = {
            "rounds": got,
            "median": {k: med([r[k] for r in got if r[k] is not None])
                       if any(r[k] is not None for r in got) else None for k in got[0]},
        }
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)

def fmt(v, spec):
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return format("n/a", ">" + width) if v is None else format(v, spec)

print(f"cluster bench: {rounds} rounds of {runs} windows of {secs} s, medians over rounds; "
      f"commit {commit} (plus working tree); {cores} cores shared by the nodes, Redis and the load generator")
print(f"{'run':<16}{'msgs/s':>9}{'deliv/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
      f"{'rx µs/dlv':>11}{'A µs/dlv':>10}{'B µs/dlv':>10}{'all µs/dlv':>11}{'redis %':>9}{'redis µs/msg':>13}{'lost':>6}")
for name, s in summary.items():
    if name == "redis-redis":
        continue
    m = s["median"]
    a = m.get("cpu_us_a") if name.startswith("split") else None
    b = m.get("cpu_us_b") if not name.startswith("baseline") else None
    lost = sum(r["lost"] for r in s["rounds"])
    print(f"{name:<16}{m['publish_rate']:>9,.0f}{m['deliveries_per_sec']:>11,.0f}"
          f"{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}{fmt(m['rx_cpu_us'], '>11.3f')}"
          f"{fmt(a, '>10.3f')}{fmt(b, '>10.3f')}{fmt(m['all_cpu_us'], '>11.3f')}{m['redis_cpu_pct']:>9.1f}"
          f"{m['redis_us_per_msg']:>13.2f}{lost:>6}")
if "redis-redis" in summary:
    m = summary["redis-redis"]["median"]
    lost = sum(r["lost"] for r in summary["redis-redis"]["rounds"])
    print(f"Redis capacity: {m['via_redis_per_sec']:,.0f} broadcasts/s arrived on B through Redis "
          f"(published {m['publish_rate']:,.0f} msg/s on A; Redis CPU {m['redis_cpu_pct']:.0f} % of a core, "
          f"{m['redis_us_per_msg']:.2f} µs per broadcast; lost {lost})")
base, cross = summary.get("baseline-fixed"), summary.get("cross-fixed")
if base and cross:
    bm, cm = base["median"], cross["median"]
    added = cm["p50_ms"] - bm["p50_ms"]
    print(f"at {fixed_rate} msg/s: p50 cross − baseline = {cm['p50_ms']:.3f} − {bm['p50_ms']:.3f} = "
          f"{added:+.3f} ms (target < 1 ms: "
          f"{'met' if added < 1 else 'MISSED'})")
    if bm["rx_cpu_us"] and cm["rx_cpu_us"]:
        ratio = cm["rx_cpu_us"] / bm["rx_cpu_us"]
        print(f"at {fixed_rate} msg/s: CPU per delivery on the receiving node, cross / baseline = "
              f"{cm['rx_cpu_us']:.3f} / {bm['rx_cpu_us']:.3f} = {ratio:.2f}x (target within 1.2x: "
              f"{'met' if ratio <= 1.2 else 'MISSED'})")
bmax, cmax = summary.get("baseline-max"), summary.get("cross-max")
if bmax and cmax and bmax["median"]["rx_cpu_us"] and cmax["median"]["rx_cpu_us"]:
    r = cmax["median"]["rx_cpu_us"] / bmax["median"]["rx_cpu_us"]
    print(f"at max rate: CPU per delivery on the receiving node, cross / baseline = {r:.2f}x")
PY
echo "raw results in $OUT/raw, log in $LOG, summary in $OUT/summary.txt and $OUT/summary.json"
