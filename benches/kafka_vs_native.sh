#!/usr/bin/env bash
# Issue 13: msg/s through the Kafka listener against the native one, same broker, same run. One
# release broker on this machine (fsync always), a topic of 4 partitions, 1 KiB values, acks=all,
# idempotent producers, 10 s each, three alternating pairs:
#   native: `keel bench produce --producers 4` (Keel's Rust client, native protocol);
#   kafka:  4 processes of benches/kafka_producer.py (PyPI's confluent-kafka 2.16.1, i.e. librdkafka
#           2.16, from the venv .ci/kafka-clients-venv makes), one connection each, summed.
# Debian ships no rdkafka_performance binary, hence the Python loop (the issue's fallback). Usage,
# from the repo after `cargo build --release`: benches/kafka_vs_native.sh
set -eu
repo=$(pwd)
K=$(realpath "${KEEL:-target/release/keel}")
PY=$(bash .ci/kafka-clients-venv | tail -1)
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
PORT=${PORT:-9610}
KPORT=${KPORT:-9611}
export KEEL_BROKER=127.0.0.1:$PORT
echo "data in $WORK" >&2
$K broker --listen 127.0.0.1:$PORT --kafka-listen 127.0.0.1:$KPORT --data-dir "$WORK/data" > "$WORK/broker.log" 2>&1 &
broker=$!
trap 'kill -TERM $broker 2>/dev/null; wait $broker 2>/dev/null' EXIT
for _ in $(seq 100); do $K topic list >/dev/null 2>&1 && break; sleep 0.1; done
# The broker's CPU (user + system, in clock ticks) since it started: what each run cost the server,
# whatever the clients cost (they share this machine's cores).
cpu_ticks() { awk '{print $14 + $15}' /proc/$broker/stat; }
cpu_since() { echo "broker cpu $(echo "scale=2; ($(cpu_ticks) - $1) / $(getconf CLK_TCK)" | bc) s"; }
$K topic create native --partitions 4 >/dev/null
$K topic create kafka --partitions 4 >/dev/null
for run in 1 2 3; do
  echo "run $run"
  echo -n "  native (keel bench produce, 4 producers): "
  t=$(cpu_ticks)
  $K bench produce --topic native --partitions 4 --producers 4 --acks all --duration-s 10 | head -1
  echo "    $(cpu_since "$t")"
  echo -n "  kafka  (confluent-kafka, 4 processes):    "
  t=$(cpu_ticks)
  pids=()
  for i in 1 2 3 4; do
    "$PY" "$repo/benches/kafka_producer.py" --bootstrap 127.0.0.1:$KPORT --topic kafka --duration-s 10 > "$WORK/k.$i.json" &
    pids+=($!)
  done
  wait "${pids[@]}" || echo "  (a producer reported errors)"
  "$PY" - "$WORK"/k.*.json <<'PY'
import json, sys
runs = [json.load(open(f)) for f in sys.argv[1:]]
print(f"{sum(r['msg_per_s'] for r in runs)} msg/s, errors {sum(r['errors'] for r in runs)}, "
      f"p50 {max(r['p50_ms'] for r in runs)} ms, p99 {max(r['p99_ms'] for r in runs)} ms (worst of 4)")
PY
  echo "    $(cpu_since "$t")"
  rm -f "$WORK"/k.*.json
done
