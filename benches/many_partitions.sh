#!/usr/bin/env bash
# Issue 15 measurements (README, "Many partitions"): one release broker on this machine, the clients
# beside it. Usage: benches/many_partitions.sh partitions|idle|restart|reopen|reopen-big|ratio|connections, from the repo
# after `cargo build --release`; data under $WORK (default: a new temporary directory, removed by
# nobody: the partitions run writes tens of GB, so delete it after). `restart`, `reopen` and `ratio` reuse the
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
  for _ in $(seq 600); do $K topic list >/dev/null 2>&1 && break; sleep 0.1; done
  pid=$(pgrep -f "broker --listen 127.0.0.1:$PORT( |$)")
}
stats() { echo "  rss $(grep VmRSS /proc/$pid/status | awk '{print $2/1024 " MiB"}') open files $(ls /proc/$pid/fd | wc -l)"; }
# CPU the broker uses over 10 s with no client (heartbeats, the reconciler, timers), in % of one core.
cpu_ticks() { awk '{print $14 + $15}' /proc/$pid/stat; }
idle_cpu() { local a; a=$(cpu_ticks); sleep 10; echo "  idle cpu $(echo "scale=2; ($(cpu_ticks) - $a) * 100 / (10 * $(getconf CLK_TCK))" | bc)% of a core over 10 s"; }
# The process has exited: reaped, or a zombie with no thread left (its reaping is not the broker's;
# a group leader turns zombie while its other threads may still hold its files and locks).
gone() { ! kill -0 $pid 2>/dev/null || { grep -q "^State:.*Z" /proc/$pid/status 2>/dev/null && [ "$(ls /proc/$pid/task 2>/dev/null | wc -l)" -le 1 ]; }; }
stop() { t=$(date +%s.%N); kill -TERM $pid; until gone; do sleep 0.01; done; echo "  stop $(echo "$(date +%s.%N) - $t" | bc) s"; }
mode=$1
case $mode in
  partitions)
    rm -rf p.data p.data.log; start p.data
    t=$(date +%s.%N)
    for i in $(seq 0 9); do $K topic create s$i --partitions 1000 >/dev/null || echo "create s$i failed"; done
    $K topic create ten --partitions 10 >/dev/null
    echo "creates (10 x 1000 partitions): $(echo "$(date +%s.%N) - $t" | bc) s"; stats; idle_cpu
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
    idle_cpu
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
  idle)
    # What 10,010 idle partitions cost a broker with no client: CPU over 10 s, twice, after the
    # creates (heartbeats and the reconciler; ADR 0023). KEEL=path compares another build.
    rm -rf i.data i.data.log; start i.data
    for i in $(seq 0 9); do $K topic create s$i --partitions 1000 >/dev/null || echo "create s$i failed"; done
    $K topic create ten --partitions 10 >/dev/null
    stats; idle_cpu; idle_cpu
    stop; rm -rf i.data
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
  reopen)
    # Opening every partition after a restart: after SIGTERM (a clean-close record for each log of
    # at least clean_close_min_bytes, ADR 0025: not scanned) against after kill -9 (every log read
    # and CRC'd), alternating, 3 pairs; the stop line is each SIGTERM's.
    # Uses the data of a partitions or restart run in the same $WORK. `keel topic describe` asks
    # every replica for its status, which opens its log; the broker's "partition opened" lines say
    # how each was opened. (The logs are in the page cache both ways: after a real power loss the
    # scans would also wait for the disk.)
    describe_all() {
      t=$(date +%s.%N)
      for i in $(seq 0 9); do $K topic describe s$i >/dev/null & done; wait
      took=$(echo "$(date +%s.%N) - $t" | bc)
      python3 - "$took" <<'PY'
import re, sys
opened = [line for line in open("p.data.log") if "partition opened" in line and " partition=s" in line]
clean = sum("clean_close=true" in line for line in opened)
scanned = sum(int(m.group(1)) for line in opened for m in [re.search(r"scanned_bytes=(\d+)", line)] if m)
print("all of s0..s9 described in %s s; %d partitions opened, %d from clean-close records, %.0f MiB scanned"
      % (sys.argv[1], len(opened), clean, scanned / 2**20))
PY
    }
    kill9() { kill -9 $pid; until gone; do sleep 0.01; done; }
    # CONFIG=file: broker config (e.g. clean_close_min_bytes = 0: a record for every partition).
    start p.data ${CONFIG:-}; describe_all >/dev/null; stop >/dev/null # every partition opened, then stopped
    for pair in 1 2 3; do
      start p.data ${CONFIG:-}; echo -n "pair $pair, after SIGTERM: "; describe_all; kill9
      start p.data ${CONFIG:-}; echo -n "pair $pair, after kill -9: "; describe_all; stats; stop
    done
    ;;
  reopen-big)
    # One partition with a big log (20 s of one producer, a few GB): the time for its first request
    # after SIGTERM (clean-close record, no scan) against after kill -9 (the whole log scanned).
    rm -rf b.data b.data.log; start b.data
    $K topic create big --partitions 1 >/dev/null
    $K bench produce --topic big --partitions 1 --producers 1 --duration-s 20 | head -1; stop
    first() { # $1 = how the previous run ended
      start b.data; t=$(date +%s.%N); $K topic describe big >/dev/null
      echo "pair $pair, after $1: first request answered in $(echo "$(date +%s.%N) - $t" | bc) s;" \
        "$(grep -o 'scanned_bytes=[0-9]* clean_close=[a-z]*' b.data.log)"
    }
    for pair in 1 2 3; do
      first SIGTERM; kill -9 $pid; until gone; do sleep 0.01; done
      first "kill -9"; stop
    done
    du -sh b.data
    ;;
  connections)
    rm -rf c.data c.data.log; printf 'connections_max = 10100\n' > c.toml; start c.data c.toml
    grep "file budget" c.data.log | cut -c1-200
    $K topic create conn --partitions 10 >/dev/null
    $K bench connections --topic conn --partitions 10 --idle 10000 --producers 4 --duration-s 10 --broker-pid $pid
    stop
    ;;
esac
