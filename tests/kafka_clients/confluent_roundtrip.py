"""confluent-kafka (librdkafka) against Keel's Kafka listener: create a topic, produce idempotently,
consume as a group with manual commits, resume from the committed offsets, look offsets up by time.

Runs with PyPI's confluent-kafka (the venv of .ci/kafka-clients-venv, a current librdkafka) and with
Debian's python3-confluent-kafka 1.7.0 on librdkafka 2.0.2 (/usr/bin/python3): it uses no API newer
than 1.7.0 except behind a `hasattr` guard, and says `skipped:` when it skips one.

    python3 confluent_roundtrip.py --bootstrap 127.0.0.1:9092 --topic t --group g

Steps, each ending in one `checked:` line (or more):
1. AdminClient.create_topics makes the topic (a new name); list_topics lists it with a leader for
   every partition and the broker at a bootstrap address; creating it again is refused with
   TOPIC_ALREADY_EXISTS.
2. An idempotent acks=all Producer sends --records keyed records; every delivery report succeeds,
   and each partition's offsets are 0, 1, 2, ... in produce order, a key always on one partition.
3. A Consumer of --group (auto.offset.reset=earliest, enable.auto.commit=false) reads all of them,
   each once, in offset order per partition, commits synchronously, and committed() reads the
   offsets back; then it closes (leaving the group).
4. --more records are produced after a timestamp T (one partition after another, so each gets some);
   a second Consumer of the same group resumes at the committed offsets: it gets exactly those.
5. offsets_for_times(T) is each partition's first record of the second batch; offsets_for_times(0)
   is 0; the watermarks are 0 and the record count.
6. (confluent-kafka 1.9 and newer) AdminClient.list_consumer_groups lists the group.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402
import confluent_kafka  # noqa: E402
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

# Distinct keys of the first batch: fewer than its records, so keys repeat and their placement shows.
KEYS_N = 37
# One librdkafka call (flush, a metadata or offsets request) at most this long.
CALL_TIMEOUT_S = 30.0


def produce_all(producer, topic, records, deadline):
    """Sends to `topic` `records` [(key, value, partition or None)] with a delivery report each; waits, until
    `deadline`, for every report. Returns the reports in produce order: (key, value, partition, offset)."""
    reports = [None] * len(records)
    errors = []

    def reporter(index):
        def on_delivery(error, message):
            if error is not None:
                errors.append("record %d (%r): %s" % (index, records[index][1], error))
            else:
                reports[index] = (message.key(), message.value(), message.partition(), message.offset())

        return on_delivery

    for index, (key, value, partition) in enumerate(records):
        kwargs = {"key": key, "value": value, "on_delivery": reporter(index)}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                h.check(time.monotonic() < deadline, "the producer's queue stayed full until the deadline")
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(max(0.0, deadline - time.monotonic()))
    h.check(left == 0, "flush left %d of %d records undelivered" % (left, len(records)))
    h.check(not errors, "%d delivery report(s) failed, first: %s" % (len(errors), errors[:1]))
    missing = [index for index, report in enumerate(reports) if report is None]
    h.check(not missing, "no delivery report for %d record(s), first index %s" % (len(missing), missing[:1]))
    return reports


def check_offsets_in_produce_order(reports, first_offsets, what):
    """Each partition's offsets, in produce order, are first, first+1, ...; returns the counts."""
    next_offset = dict(first_offsets)
    for key, value, partition, offset in reports:
        expected = next_offset.get(partition, 0)
        h.check(offset == expected, "%s: %r got partition %d offset %d, expected %d" % (what, value, partition,
                                                                                       offset, expected))
        next_offset[partition] = expected + 1
    return {p: next_offset[p] - first_offsets.get(p, 0) for p in next_offset}


def consume_exactly(consumer, expected, deadline, what):
    """Polls `consumer` until it has every record of `expected` {(partition, offset): (key, value)};
    fails on an error, a record not expected, a duplicate or an offset going backwards."""
    seen = {}
    last_offset = {}
    while len(seen) < len(expected):
        h.check(time.monotonic() < deadline,
                "%s: got %d of %d records before the deadline" % (what, len(seen), len(expected)))
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error() is not None:
            h.check(message.error().code() == KafkaError._PARTITION_EOF,
                    "%s: consumer error %s" % (what, message.error()))
            continue
        at = (message.partition(), message.offset())
        h.check(at in expected, "%s: unexpected record %r at partition %d offset %d" % (what, message.value(), *at))
        h.check(at not in seen, "%s: partition %d offset %d delivered twice" % (what, *at))
        h.check(expected[at] == (message.key(), message.value()),
                "%s: at partition %d offset %d got %r, produced %r" % (what, at[0], at[1],
                                                                      (message.key(), message.value()), expected[at]))
        h.check(message.offset() > last_offset.get(message.partition(), -1),
                "%s: partition %d went back from offset %s to %d" % (what, at[0], last_offset.get(at[0]), at[1]))
        last_offset[message.partition()] = message.offset()
        seen[at] = message
    return seen


def wait_for_topic(admin, topic, partitions_n, bootstrap):
    def probe():
        metadata = admin.list_topics(timeout=CALL_TIMEOUT_S)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return False, "topic %s: %s" % (topic, "not listed" if found is None else found.error)
        leaders = {p: found.partitions[p].leader for p in found.partitions}
        if len(leaders) != partitions_n or any(leader < 0 for leader in leaders.values()):
            return False, "partitions and leaders %s" % leaders
        return True, metadata

    metadata = h.wait_until("topic %s with %d partitions, each with a leader" % (topic, partitions_n), probe, 60)
    brokers = sorted("%s:%d" % (b.host, b.port) for b in metadata.brokers.values())
    h.check(any(address in bootstrap.split(",") for address in brokers),
            "no listed broker at a bootstrap address: brokers %s, bootstrap %s" % (brokers, bootstrap))
    return brokers


def run(args):
    deadline = time.monotonic() + args.timeout_s
    h.say(h.confluent_client_line(confluent_kafka))
    bootstrap = {"bootstrap.servers": args.bootstrap}

    # 1. CreateTopics and Metadata.
    admin = AdminClient(dict(bootstrap))
    futures = admin.create_topics([NewTopic(args.topic, num_partitions=args.partitions, replication_factor=1)],
                                  request_timeout=CALL_TIMEOUT_S)
    futures[args.topic].result(timeout=CALL_TIMEOUT_S + 10)
    brokers = wait_for_topic(admin, args.topic, args.partitions, args.bootstrap)
    h.checked("AdminClient.create_topics made %s; list_topics lists it with %d partitions, each with a leader, "
              "and brokers %s" % (args.topic, args.partitions, brokers))
    again = admin.create_topics([NewTopic(args.topic, num_partitions=args.partitions, replication_factor=1)],
                                request_timeout=CALL_TIMEOUT_S)
    try:
        again[args.topic].result(timeout=CALL_TIMEOUT_S + 10)
        raise h.Failure("creating %s a second time succeeded" % args.topic)
    except KafkaException as error:
        code = error.args[0].code()
        h.check(code == KafkaError.TOPIC_ALREADY_EXISTS, "creating it again failed with %s, expected "
                "TOPIC_ALREADY_EXISTS" % error.args[0])
    h.checked("creating %s again is refused with TOPIC_ALREADY_EXISTS" % args.topic)

    # 2. An idempotent acks=all producer.
    producer = Producer(dict(bootstrap, **{"enable.idempotence": True, "acks": "all"}))
    first = [(b"key-%d" % (i % KEYS_N), b"first-%d" % i, None) for i in range(args.records)]
    reports = produce_all(producer, args.topic, first, deadline)
    counts = check_offsets_in_produce_order(reports, {}, "first batch")
    partition_of_key = {}
    for key, value, partition, offset in reports:
        h.check(partition_of_key.setdefault(key, partition) == partition,
                "key %r went to partitions %d and %d" % (key, partition_of_key[key], partition))
    h.checked("%d records acknowledged by an idempotent acks=all producer, each partition's offsets 0, 1, 2, ... "
              "in produce order (records per partition: %s), each key on one partition"
              % (args.records, dict(sorted(counts.items()))))

    # 3. A group member reads everything from the beginning, commits, leaves.
    consumer_config = dict(bootstrap, **{"group.id": args.group, "auto.offset.reset": "earliest",
                                         "enable.auto.commit": False})
    consumer = Consumer(dict(consumer_config))
    consumer.subscribe([args.topic])
    expected = {(partition, offset): (key, value) for key, value, partition, offset in reports}
    consume_exactly(consumer, expected, deadline, "first consumer")
    h.checked("a consumer of group %s read all %d records from the beginning: none missing, none twice, "
              "in offset order per partition" % (args.group, args.records))
    committed = consumer.commit(asynchronous=False)
    errors = [tp for tp in committed if tp.error is not None]
    h.check(not errors, "synchronous commit failed for %s" % errors)
    positions = {tp.partition: tp.offset for tp in committed if tp.topic == args.topic}
    h.check(positions == counts, "commit sent offsets %s, expected the log ends %s" % (positions, counts))
    read_back = consumer.committed([TopicPartition(args.topic, p) for p in counts], timeout=CALL_TIMEOUT_S)
    read_back = {tp.partition: tp.offset for tp in read_back}
    h.check(read_back == counts, "committed() read back %s, expected %s" % (read_back, counts))
    consumer.close()
    h.checked("a synchronous commit of %s, read back by committed(): %s" % (args.group, dict(sorted(counts.items()))))

    # 4. After T, more records, on every partition; a second member resumes at the committed offsets.
    time_between_ms = h.now_ms() + 1
    while h.now_ms() <= time_between_ms + 1:
        time.sleep(0.002)
    second = [(b"more-%d" % i, b"second-%d" % i, i % args.partitions) for i in range(args.more)]
    more_reports = produce_all(producer, args.topic, second, deadline)
    more_counts = check_offsets_in_produce_order(more_reports, counts, "second batch")
    h.check(sorted(more_counts) == list(range(args.partitions)), "second batch missed a partition: %s" % more_counts)
    resumed = Consumer(dict(consumer_config))
    resumed.subscribe([args.topic])
    expected_more = {(partition, offset): (key, value) for key, value, partition, offset in more_reports}
    got = consume_exactly(resumed, expected_more, deadline, "second consumer")
    h.checked("a second consumer of %s resumed at the committed offsets: it got exactly the %d records produced "
              "since" % (args.group, args.more))
    for message in got.values():
        kind, timestamp = message.timestamp()
        h.check(kind != confluent_kafka.TIMESTAMP_NOT_AVAILABLE and timestamp >= time_between_ms,
                "second-batch record %r has timestamp %s (type %d), before %d" % (message.value(), timestamp,
                                                                                 kind, time_between_ms))

    # 5. ListOffsets: by timestamp, earliest and latest.
    partitions = list(range(args.partitions))
    by_time = resumed.offsets_for_times([TopicPartition(args.topic, p, time_between_ms) for p in partitions],
                                        timeout=CALL_TIMEOUT_S)
    by_time = {tp.partition: tp.offset if tp.error is None else str(tp.error) for tp in by_time}
    first_of_second = {p: counts.get(p, 0) for p in partitions}
    h.check(by_time == first_of_second, "offsets_for_times(T) gave %s, expected each partition's first record of "
            "the second batch %s" % (by_time, first_of_second))
    from_zero = resumed.offsets_for_times([TopicPartition(args.topic, p, 0) for p in partitions],
                                          timeout=CALL_TIMEOUT_S)
    from_zero = {tp.partition: tp.offset if tp.error is None else str(tp.error) for tp in from_zero}
    h.check(from_zero == {p: 0 for p in partitions}, "offsets_for_times(0) gave %s, expected 0s" % from_zero)
    h.checked("offsets_for_times(T between the batches) is each partition's first record of the second batch "
              "%s; offsets_for_times(0) is 0" % dict(sorted(by_time.items())))
    for p in partitions:
        low, high = resumed.get_watermark_offsets(TopicPartition(args.topic, p), timeout=CALL_TIMEOUT_S)
        total = counts.get(p, 0) + more_counts.get(p, 0)
        h.check((low, high) == (0, total), "partition %d watermarks (%d, %d), expected (0, %d)" % (p, low, high, total))
    h.checked("watermarks (earliest, latest) of every partition are (0, its record count)")

    # 6. ListGroups, where the library has it.
    if hasattr(admin, "list_consumer_groups"):
        listed = admin.list_consumer_groups(request_timeout=CALL_TIMEOUT_S).result(timeout=CALL_TIMEOUT_S + 10)
        names = sorted(group.group_id for group in listed.valid)
        h.check(args.group in names, "list_consumer_groups lists %s, not %s (errors: %s)" % (names, args.group,
                                                                                            listed.errors))
        h.checked("AdminClient.list_consumer_groups lists %s" % args.group)
    else:
        h.say("skipped: list_consumer_groups (not in this confluent-kafka)")
    resumed.commit(asynchronous=False)
    resumed.close()


if __name__ == "__main__":
    arguments = h.parser(__doc__.splitlines()[0])
    arguments.add_argument("--topic", required=True, help="a topic that does not exist yet")
    arguments.add_argument("--group", required=True, help="a consumer group with no committed offsets")
    arguments.add_argument("--partitions", type=int, default=3)
    arguments.add_argument("--records", type=int, default=1000, help="records of the first batch")
    arguments.add_argument("--more", type=int, default=90, help="records of the second batch")
    h.main(run, arguments)
