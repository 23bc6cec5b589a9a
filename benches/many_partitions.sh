#!/usr/bin/env bash
# Issue 15 measurements (README, "Many partitions"): one release broker on this machine, the clients
# beside it. Usage: benches/many_partitions.sh partitions|restart|ratio|connections, from the repo
# after `cargo build --release`; data under $WORK (default: a new temporary directory, removed by
# nobody: the partitions run writes tens of GB, so delete it after). `restart` and `ratio` reuse the
# data `partitions` left in the same $WORK.
set -u
K=$(realpath "${KEEL:-target/release/keel}")
WORK=${WORK:-$(mktemp -d)}
cd "$WORK"
echo "data in $WORK" >&2
PORT=${PORT:-9600}
export KEEL_BROKER=127.0.0.1:$PORT
start() { # $1 = data dir, $2 = config
  ($K broker --listen 127.0.0.1:$PORT --data-dir "$1" ${2:+--config "$2"} > "$1.log" 2>&1 &)
  for _ in $(seq 100); do $K topic list >/dev/null 2>&1 && break; sleep 0.1; done
  pid=$(pgrep -f "keel broker --listen 127.0.0.1:$PORT")
}
stats() { echo "  rss $(grep VmRSS /proc/$pid/status | awk '{print $2/1024 " MiB"}') open files $(ls /proc/$pid/fd | wc -l)"; }
# Until the process exits (a zombie counts as exited: its reaping is not the broker's).
stop() { t=$(date +%s.%N); kill -TERM $pid; while kill -0 $pid 2>/dev/null && ! grep -q "^State:.*Z" /proc/$pid/status 2>/dev/null; do sleep 0.01; done; echo "  stop $(echo "$(date +%s.%N) - $t" | bc) s"; }
mode=$1
case $mode in
  partitions)
    rm -rf p.data p.data.log; start p.data
    t=$(date +%s.%N)
    for i in $(seq 0 9); do $K topic create s$i --partitions 1000 >/dev/null || echo "create s$i failed"; done
    $K topic create ten --partitions 10 >/dev/null
    echo "creates (10 x 1000 partitions): $(echo "$(date +%s.%N) - $t" | bc) s"; stats
    for run in 1 2 3; do
      echo "run $run"
      echo -n "  10 partitions:    "; $K bench produce --topic ten --partitions 10 --producers 4 --acks all --duration-s 10 | head -1
      echo -n "  1000 partitions:  "; $K bench produce --topic s0 --partitions 1000 --producers 4 --acks all --duration-s 10 | head -1
      echo "  10000 partitions (10 benches, one per 1000-partition topic, 1 producer each):"
      for i in $(seq 0 9); do $K --json bench produce --topic s$i --partitions 1000 --producers 1 --acks all --duration-s 10 > tenk.$i.json & done; wait
      python3 - <<'PY'
import json
runs=[json.load(open(f"tenk.{i}.json")) for i in range(10)]
print("    total %.0f msg/s; p50 %.1f-%.1f ms, p99 %.1f-%.1f ms, p999 %.1f-%.1f ms; errors %d" % (
  sum(r["msg_per_s"] for r in runs), min(r["p50_ms"] for r in runs), max(r["p50_ms"] for r in runs),
  min(r["p99_ms"] for r in runs), max(r["p99_ms"] for r in runs), min(r["p999_ms"] for r in runs), max(r["p999_ms"] for r in runs),
  sum(r["errors"] for r in runs)))
PY
      stats
    done
    grep -c "ERROR\|WARN" p.data.log | sed 's/^/  warn+error log lines: /'
    stop
    # Restart: time to the first acknowledged produce, with 10,010 partitions on disk.
    t=$(date +%s.%N); start p.data
    echo x | $K produce s7 --partition 123 >/dev/null && echo "restart to first acked produce: $(echo "$(date +%s.%N) - $t" | bc) s"; stats
    stop
    grep "broker stopped" p.data.log | tail -1 | cut -c1-250
    ;;
  restart)
    # The partitions run's data (10,010 partitions): every partition of s0..s9 produced to, then stop.
    start p.data; t=$(date +%s.%N)
    for i in $(seq 0 9); do $K bench produce --topic s$i --partitions 1000 --producers 1 --duration-s 3 >/dev/null & done; wait
    echo "all 10,000 partitions written: $(echo "$(date +%s.%N) - $t" | bc) s"; stats
    stop; grep -E "SIGTERM|broker stopped" p.data.log | cut -c1-200
    t=$(date +%s.%N); start p.data
    echo x | $K produce s7 --partition 123 >/dev/null && echo "restart to first acked produce: $(echo "$(date +%s.%N) - $t" | bc) s"; stats
    stop
    ;;
  ratio)
    # Same clients both ways: 10 bench processes, 1 producer each, 10 s; 10 topics of 1 partition
    # (10 partitions) against 10 topics of 1000 (10,000 partitions), alternating, 3 pairs.
    # CONFIG=file: broker config (e.g. connections_max = 1000, which leaves 18,744 partition files).
    # Reuses the partitions run's data when $WORK has it; else creates s0..s9 here (then the first
    # 10,000-partition run also creates every partition's files).
    start p.data ${CONFIG:-}
    for i in $(seq 0 9); do $K topic create one$i --partitions 1 >/dev/null 2>&1; done
    for i in $(seq 0 9); do $K topic create s$i --partitions 1000 >/dev/null 2>&1; done
    tenbench() { # $1 = topic prefix, $2 = partitions per topic
      for i in $(seq 0 9); do $K --json bench produce --topic $1$i --partitions $2 --producers 1 --acks all --duration-s 10 > r.$i.json & done; wait
      python3 -c "
import json
runs=[json.load(open(f'r.{i}.json')) for i in range(10)]
print('total %.0f msg/s; p50 %.1f-%.1f ms, p99 %.1f-%.1f ms, p999 %.1f-%.1f ms; errors %d' % (
  sum(r['msg_per_s'] for r in runs), min(r['p50_ms'] for r in runs), max(r['p50_ms'] for r in runs),
  min(r['p99_ms'] for r in runs), max(r['p99_ms'] for r in runs), min(r['p999_ms'] for r in runs), max(r['p999_ms'] for r in runs),
  sum(r['errors'] for r in runs)))"
    }
    for pair in 1 2 3; do
      echo -n "pair $pair, 10 partitions:     "; tenbench one 1
      echo -n "pair $pair, 10,000 partitions: "; tenbench s 1000
    done
    stats; stop
    ;;
  connections)
    rm -rf c.data c.data.log; printf 'connections_max = 10100\n' > c.toml; start c.data c.toml
    grep "file budget" c.data.log | cut -c1-200
    $K topic create conn --partitions 10 >/dev/null
    $K bench connections --topic conn --partitions 10 --idle 10000 --producers 4 --duration-s 10 --broker-pid $pid
    stop
    ;;
esac
