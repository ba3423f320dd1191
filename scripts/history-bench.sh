#!/usr/bin/env bash
# What topic history costs, and how fast clients recover with it, measured
# in one run on this machine. The script starts its own Cinder nodes (1 shard
# each, fresh processes for every measurement) on free ports and its own
# redis-server for the two-node runs, and stops exactly those on exit.
#
# Runs, alternating in every round (the order flips every other round):
#   fanout-1-hist     one node: fan-out to a history topic (`hist:*`, history 100)
#   fanout-1-plain    one node: the same fan-out to a plain topic
#   fanout-2-hist     nodes A and B over Redis: publisher on A, subscribers
#                     half on A, half on B; history topic
#   fanout-2-plain    the same on a plain topic
#   recover-1         `cinder-load recover` on one node: RECOVER_CONNS clients
#                     over 10 history topics leave, RECOVER_MESSAGES messages
#                     per topic are published, all rejoin with `since`
#   recover-2         the same over A and B: every client rejoins on the other
#                     node than the one it first joined
#   fixed-1-*, fixed-2-*  the same four fan-outs at cluster-bench.sh's `fixed`
#                     load: FIXED_RATE msg/s, one message per request
# The fan-outs use cluster-bench.sh's `max` load: 1,000 subscribers, 64 B
# payloads, --rate max --batch 16 --window 64. At the maximum rate a history
# topic's lower throughput in a cluster (each broadcast waits for its round
# trip through Redis) also means smaller write batches per connection; the
# fixed load compares the two topics at the same rate and batch size.
#
# CPU per delivery = user + sys time of every Cinder process (/proc/PID/stat)
# over a window, divided by the deliveries of that window. A run's figures are
# the median of its windows; the table gives the median over rounds.
#
# Usage: scripts/history-bench.sh [rounds, default 3] [seconds per window, default 4]
# Env: HISTORY_BENCH_WINDOWS (3), RECOVER_CONNS (10000), RECOVER_MESSAGES (100),
#      RECOVER_REJOIN_AFTER (two nodes: pause between the last publish and the
#      storm, default 0s), RUN_TIMEOUT (seconds one cinder-load run may take,
#      default 300), HISTORY_BENCH_OUT (docs/history-bench), FIXED_RATE (50),
#      ONLY (a space-separated list of runs to do, e.g. "fanout-2-hist fanout-2-plain")
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
SECS="${2:-4}"
RUNS="${HISTORY_BENCH_WINDOWS:-3}"
RECOVER_CONNS="${RECOVER_CONNS:-10000}"
RECOVER_MESSAGES="${RECOVER_MESSAGES:-100}"
RECOVER_REJOIN_AFTER="${RECOVER_REJOIN_AFTER:-0s}"
RUN_TIMEOUT="${RUN_TIMEOUT:-300}"
OUT="${HISTORY_BENCH_OUT:-docs/history-bench}"
CONNS=1000
FIXED_RATE="${FIXED_RATE:-50}"
HISTORY=$((RECOVER_MESSAGES > 100 ? RECOVER_MESSAGES : 100))

cargo build --release -p cinder -p cinder-load
SERVER=target/release/cinder
LOAD=target/release/cinder-load
# shellcheck source=lib/cluster-nodes.sh
source scripts/lib/cluster-nodes.sh

# History on `hist:*`, none on everything else. Long-poll stays on, as by
# default, so every node needs the same secret.
CONFIG="$WORK/node.toml"
cat > "$CONFIG" <<TOML
[socket.longpoll]
secret = "history-bench-shared-secret-0123456789"

[[channel]]
pattern = "hist:*"
join = "public"
client_events = "broadcast"
history = $HISTORY
history_ttl_ms = 300000

[[channel]]
pattern = "*"
join = "public"
client_events = "broadcast"
TOML

# measure ROUND NAME: fresh nodes, one cinder-load run (bounded by
# RUN_TIMEOUT), stop them.
measure() {
  local round="$1" name="$2" a_port a_pid b_port b_pid
  local json="$OUT/raw/$round-$name.json"
  local nodes="${name#*-}"
  nodes="${nodes%%-*}"
  local args=()
  if [ "$nodes" = 1 ]; then
    start_node solo 0
    a_port="$NODE_PORT"; a_pid="$NODE_PID"
    args=(--url "$(ws "$a_port")" --publish "$(api "$a_port")"
      --server-pid "$a_pid" --watch-pid "a=$a_pid")
  else
    start_node a 1; a_port="$NODE_PORT"; a_pid="$NODE_PID"
    start_node b 1; b_port="$NODE_PORT"; b_pid="$NODE_PID"
    wait_nodes "$a_port" 2
    wait_nodes "$b_port" 2
    args=(--url "$(ws "$a_port")" --url "$(ws "$b_port")" --publish "$(api "$a_port")"
      --server-pid "$b_pid" --watch-pid "a=$a_pid" --watch-pid "b=$b_pid"
      --watch-pid "redis=$REDIS_PID")
  fi
  case "$name" in
    fanout-* | fixed-*)
      local prefix=plain:bench
      [ "${name##*-}" = hist ] && prefix=hist:bench
      local load=(--rate max --batch 16 --window 64)
      [ "${name%%-*}" = fixed ] && load=(--rate "$FIXED_RATE" --batch 1)
      args=(fanout "${args[@]}" --conns "$CONNS" --topic-prefix "$prefix" --payload-bytes 64
        "${load[@]}" --duration "${SECS}s" --runs "$RUNS")
      [ "$nodes" = 2 ] && args+=(--publish-after 1s)
      ;;
    recover-*)
      args=(recover "${args[@]}" --conns "$RECOVER_CONNS" --topics 10 --topic-prefix hist:bench
        --messages "$RECOVER_MESSAGES" --src-ips 127.0.0.2-127.0.0.17)
      [ "$nodes" = 2 ] && args+=(--rejoin-after "$RECOVER_REJOIN_AFTER")
      ;;
  esac
  echo "== round $round $name: cinder-load ${args[*]}" | tee -a "$LOG"
  local rc=0
  timeout --signal=TERM --kill-after=10 "$RUN_TIMEOUT" \
    "$LOAD" "${args[@]}" --quiet --json "$json" >>"$LOG" 2>&1 || rc=$?
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
  if [ $((round % 2)) = 1 ]; then
    order=(fanout-1-hist fanout-1-plain fanout-2-hist fanout-2-plain
      fixed-1-hist fixed-1-plain fixed-2-hist fixed-2-plain recover-1 recover-2)
  else
    order=(fanout-1-plain fanout-1-hist fanout-2-plain fanout-2-hist
      fixed-1-plain fixed-1-hist fixed-2-plain fixed-2-hist recover-2 recover-1)
  fi
  for name in "${order[@]}"; do
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then
      continue
    fi
    measure "$round" "$name"
  done
done
echo "measured in $(( $(date +%s) - START )) s" | tee -a "$LOG"
busy "end" | tee -a "$LOG"

python3 - "$OUT" "$ROUNDS" "$SECS" "$RUNS" "$(nproc)" "$(git rev-parse --short HEAD)" \
  "$RECOVER_CONNS" "$RECOVER_MESSAGES" "$FIXED_RATE" <<'PY' | tee "$OUT/summary.md"
import json, os, statistics, sys
out, rounds, secs, runs, cores, commit = sys.argv[1], int(sys.argv[2]), *sys.argv[3:7]
conns, messages, fixed_rate = sys.argv[7], sys.argv[8], sys.argv[9]

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def load(round_, name):
    path = f"{out}/raw/{round_}-{name}.json"
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None

def cpu(window, names):
    got = {p["name"]: p["cpu_ms"] for p in window.get("watched", [])}
    if any(got.get(n) is None for n in names):
        return None
    return sum(got[n] for n in names)

def fanout_run(report, nodes):
    names = ["a"] if nodes == 1 else ["a", "b"]
    ws = report["windows"]
    def us_per(w):
        c = cpu(w, names)
        return c * 1000 / w["received"] if c is not None and w["received"] else None
    return {
        "deliveries_per_sec": med([w["deliveries_per_sec"] for w in ws]),
        "cpu_us_per_delivery": med([us_per(w) for w in ws]),
        "p99_ms": med([w["latency"]["p99_us"] / 1000 for w in ws]),
        "lost": report["totals"]["lost"],
        "duplicates": report["totals"]["duplicates"],
    }

def recover_run(report, nodes):
    r = report["recover"]
    return {
        "recoveries_per_sec": r["recoveries_per_sec"],
        "recovered": r["recovered"],
        "rejoining": r["rejoining"],
        "p50_ms": r["latency"]["p50_us"] / 1000,
        "p90_ms": r["latency"]["p90_us"] / 1000,
        "p99_ms": r["latency"]["p99_us"] / 1000,
        "max_ms": r["latency"]["max_us"] / 1000,
        "not_recovered": r["not_recovered"],
        "gaps": r["clients_with_gaps"],
        "missing": r["missing"],
        "duplicates": r["duplicates"],
        "out_of_order": r["out_of_order"] + r["before_reply"],
        "cpu_us_per_recovery": (cpu(r, ["a", "b"] if nodes == 2 else ["a"]) * 1000 / r["recovered"])
                               if r["recovered"] and cpu(r, ["a", "b"] if nodes == 2 else ["a"]) is not None
                               else None,
    }

summary = {}
for name in ("fanout-1-hist", "fanout-1-plain", "fanout-2-hist", "fanout-2-plain",
             "fixed-1-hist", "fixed-1-plain", "fixed-2-hist", "fixed-2-plain",
             "recover-1", "recover-2"):
    reports = [load(i, name) for i in range(1, rounds + 1)]
    if not name.startswith("recover"):
        got = [fanout_run(r, int(name.split("-")[1])) for r in reports if r]
    else:
        got = [recover_run(r, int(name.split("-")[1])) for r in reports if r and r.get("recover")]
    if got:
        summary[name] = {"rounds": got,
                         "median": {k: med([g[k] for g in got]) for k in got[0]}}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)

def f(v, spec):
    return "n/a" if v is None else format(v, spec)

print(f"History bench: {rounds} round(s), fan-out windows {runs} × {secs} s, medians over rounds; "
      f"commit {commit} (plus working tree); {cores} cores shared by the nodes, Redis and the load generator.")
print()
for kind, title in (("fanout", "1,000 subscribers, 64 B, max rate"),
                    ("fixed", f"1,000 subscribers, 64 B, {fixed_rate} msg/s, one per request")):
    print(f"| fan-out ({title}) | deliveries/s | server CPU µs/delivery | p99 ms | lost | dup |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for suffix, label in (("1-hist", "one node, history topic"), ("1-plain", "one node, plain topic"),
                          ("2-hist", "two nodes, history topic"), ("2-plain", "two nodes, plain topic")):
        s = summary.get(f"{kind}-{suffix}")
        if not s:
            print(f"| {label} | n/a | n/a | n/a | n/a | n/a |")
            continue
        m = s["median"]
        lost = sum(r["lost"] for r in s["rounds"])
        dup = sum(r["duplicates"] for r in s["rounds"])
        print(f"| {label} | {f(m['deliveries_per_sec'], ',.0f')} | {f(m['cpu_us_per_delivery'], '.3f')} "
              f"| {f(m['p99_ms'], '.2f')} | {lost} | {dup} |")
    print()
    for nodes, label in (("1", "one node"), ("2", "two nodes")):
        h, p = summary.get(f"{kind}-{nodes}-hist"), summary.get(f"{kind}-{nodes}-plain")
        if h and p and h["median"]["cpu_us_per_delivery"] and p["median"]["cpu_us_per_delivery"]:
            hc, pc = h["median"]["cpu_us_per_delivery"], p["median"]["cpu_us_per_delivery"]
            ratio = [rh["cpu_us_per_delivery"] / rp["cpu_us_per_delivery"]
                     for rh, rp in zip(h["rounds"], p["rounds"])
                     if rh["cpu_us_per_delivery"] and rp["cpu_us_per_delivery"]]
            print(f"- {kind}, {label}: CPU per delivery history / plain = {hc:.3f} / {pc:.3f} = {hc / pc:.2f}x "
                  f"(per round: {', '.join(f'{r:.2f}x' for r in ratio)})")
    print()
print(f"| recover storm ({conns} clients × {messages} messages, 10 topics) | recoveries/s | "
      "join → last replayed p50 / p90 / p99 / max ms | recovered | recovered=false | gaps | dup | out of order | server CPU µs/recovery |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, label in (("recover-1", "one node"), ("recover-2", "two nodes, rejoin on the other")):
    s = summary.get(name)
    if not s:
        print(f"| {label} | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")
        continue
    m, rs = s["median"], s["rounds"]
    print(f"| {label} | {f(m['recoveries_per_sec'], ',.0f')} | {m['p50_ms']:.1f} / {m['p90_ms']:.1f} / "
          f"{m['p99_ms']:.1f} / {m['max_ms']:.1f} | {f(m['recovered'], '.0f')} of {f(m['rejoining'], '.0f')} "
          f"| {sum(r['not_recovered'] for r in rs)} | {sum(r['gaps'] for r in rs)} "
          f"| {sum(r['duplicates'] for r in rs)} | {sum(r['out_of_order'] for r in rs)} "
          f"| {f(m['cpu_us_per_recovery'], '.1f')} |")
PY
echo "raw results in $OUT/raw, log in $LOG, summary in $OUT/summary.md and $OUT/summary.json"
