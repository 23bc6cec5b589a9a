"""A confluent-kafka (librdkafka) producer loop for benches/kafka_vs_native.sh: produces values of
--size bytes to --topic for --duration-s seconds with acks=all and idempotence on, and prints one
JSON line: records acknowledged, errors, msg/s and the p50/p99 of the delivery latency."""
import argparse
import json
import sys
import time

from confluent_kafka import Producer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--linger-ms", type=int, default=5)
    args = parser.parse_args()
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": args.linger_ms,
        "queue.buffering.max.messages": 20000,
    })
    value = b"x" * args.size
    latencies = []
    errors = [0]

    def delivered(err, _msg, sent=None):
        if err is not None:
            errors[0] += 1
        else:
            latencies.append(time.monotonic() - sent)

    start = time.monotonic()
    end = start + args.duration_s
    produced = 0
    while time.monotonic() < end:
        sent = time.monotonic()
        try:
            producer.produce(args.topic, value, callback=lambda err, msg, sent=sent: delivered(err, msg, sent))
            produced += 1
        except BufferError:
            producer.poll(0.005)
        if produced % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(30)
    elapsed = time.monotonic() - start
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2) if latencies else None
    print(json.dumps({
        "acked": len(latencies), "errors": errors[0], "unflushed": remaining, "elapsed_s": round(elapsed, 2),
        "msg_per_s": round(len(latencies) / elapsed), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
    }))
    return 0 if errors[0] == 0 and remaining == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
