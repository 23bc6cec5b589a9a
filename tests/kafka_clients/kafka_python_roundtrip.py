"""kafka-python 3 (pure Python, its own protocol code) against Keel's Kafka listener: topics made and
deleted by KafkaAdminClient, a default (idempotent) KafkaProducer, a KafkaConsumer from the beginning,
and a group of two consumers rebalancing a 4-partition topic.

    python kafka_python_roundtrip.py --bootstrap 127.0.0.1:9092 --topic t --group-topic gt --group g

Steps, each ending in one `checked:` line (or more):
1. KafkaAdminClient.create_topics makes --topic (2 partitions) and --group-topic (4), both new names;
   each partition gets a leader.
2. A KafkaProducer with default settings (which turn idempotence on; this checks they stayed on after
   the version negotiation) sends --records keyed records; every future succeeds, and each
   partition's offsets are 0, 1, 2, ... in send order.
3. A KafkaConsumer without a group, assigned every partition and sought to the beginning, reads them
   all, each once; beginning_offsets and end_offsets are 0 and the counts.
4. Member A of --group, alone, is assigned all 4 partitions of --group-topic and reads the records
   sent there before. Member B joins: both are polled until their assignments are non-empty,
   disjoint and cover all 4. DescribeGroups shows the group Stable with 2 members, ListGroups lists
   it. Records sent after the rebalance are each consumed exactly once across A and B, by the member
   that owns its partition, and no further rebalance happened meanwhile.
5. KafkaAdminClient.delete_topics deletes --topic: list_topics stops listing it.
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402
import kafka  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

GROUP_TOPIC_PARTITIONS_N = 4
# Records sent to the group topic before member B joins, and after the rebalance.
BEFORE_REBALANCE_N = 40
AFTER_REBALANCE_N = 200
# One request (a send's future, a flush, an admin call) at most this long.
CALL_TIMEOUT_S = 30.0
# How long the rebalance may take: B's JoinGroup waits for A to rejoin, which A learns from a
# heartbeat (every 3 s by default).
REBALANCE_WAIT_S = 60.0
# How long a member's thread may take to close its consumer (commit, LeaveGroup).
CLOSE_WAIT_S = 30.0


def send_all(producer, topic, records):
    """Sends `records` [(key, value, partition or None)]; returns (key, value, partition, offset) each,
    in send order, once every send succeeded."""
    futures = []
    for key, value, partition in records:
        futures.append(producer.send(topic, key=key, value=value, partition=partition))
    producer.flush(timeout=CALL_TIMEOUT_S)
    sent = []
    for (key, value, _), future in zip(records, futures):
        metadata = future.get(timeout=CALL_TIMEOUT_S)
        sent.append((key, value, metadata.partition, metadata.offset))
    return sent


def check_offsets_in_send_order(sent, what):
    next_offset = {}
    for key, value, partition, offset in sent:
        expected = next_offset.get(partition, 0)
        h.check(offset == expected, "%s: %r got partition %d offset %d, expected %d" % (what, value, partition,
                                                                                       offset, expected))
        next_offset[partition] = expected + 1
    return next_offset


class Member(threading.Thread):
    """One consumer of the group, polled in its own thread as an application would; what it reads and
    the assignment it holds are kept for the main thread to look at."""

    def __init__(self, name, bootstrap, topic, group):
        super().__init__(name=name, daemon=True)
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.lock = threading.Lock()
        self.records = []  # (partition, offset, value)
        self.assignment = frozenset()
        self.assignments_seen = []  # every distinct assignment, in order
        self.error = None
        self.stopping = threading.Event()
        self.closed = threading.Event()

    def run(self):
        consumer = None
        try:
            consumer = KafkaConsumer(self.topic, bootstrap_servers=self.bootstrap.split(","), group_id=self.group,
                                     client_id=self.name, auto_offset_reset="earliest")
            while not self.stopping.is_set():
                batches = consumer.poll(timeout_ms=200)
                with self.lock:
                    for tp, messages in batches.items():
                        self.records.extend((tp.partition, m.offset, m.value) for m in messages)
                    assignment = frozenset(tp.partition for tp in consumer.assignment())
                    if assignment != self.assignment:
                        self.assignments_seen.append(sorted(assignment))
                    self.assignment = assignment
            consumer.close()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            self.error = "%s: %s: %s" % (self.name, type(error).__name__, error)
        finally:
            self.closed.set()

    def snapshot(self):
        if self.error is not None:
            raise h.Failure(self.error)
        with self.lock:
            return list(self.records), self.assignment

    def stop(self):
        self.stopping.set()
        h.check(self.closed.wait(CLOSE_WAIT_S), "%s did not close within %.0f s" % (self.name, CLOSE_WAIT_S))
        if self.error is not None:
            raise h.Failure(self.error)


def run(args):
    h.say("client: kafka-python %s" % kafka.__version__)
    servers = args.bootstrap.split(",")
    all_partitions = frozenset(range(GROUP_TOPIC_PARTITIONS_N))

    # 1. CreateTopics.
    admin = KafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=int(CALL_TIMEOUT_S * 1000))
    admin.create_topics({args.topic: {"num_partitions": 2, "replication_factor": 1},
                         args.group_topic: {"num_partitions": GROUP_TOPIC_PARTITIONS_N, "replication_factor": 1}},
                        timeout_ms=int(CALL_TIMEOUT_S * 1000))
    admin.wait_for_topics([args.topic, args.group_topic], timeout_ms=60000)
    h.checked("KafkaAdminClient.create_topics made %s (2 partitions) and %s (%d); every partition has a leader"
              % (args.topic, args.group_topic, GROUP_TOPIC_PARTITIONS_N))

    # 2. A producer with default settings.
    producer = KafkaProducer(bootstrap_servers=servers)
    h.check(producer.config["enable_idempotence"] is True,
            "the default KafkaProducer turned idempotence off (api_version %s)" % (producer.config["api_version"],))
    sent = send_all(producer, args.topic, [(b"k%d" % (i % 11), b"kp-%d" % i, None) for i in range(args.records)])
    counts = check_offsets_in_send_order(sent, args.topic)
    h.checked("%d records acknowledged by the default (idempotent, acks=all) KafkaProducer, each partition's "
              "offsets 0, 1, 2, ... in send order (records per partition: %s)" % (args.records, dict(sorted(counts.items()))))

    # 3. A consumer without a group, from the beginning.
    consumer = KafkaConsumer(bootstrap_servers=servers, group_id=None, enable_auto_commit=False)
    partitions = [TopicPartition(args.topic, p) for p in sorted(consumer.partitions_for_topic(args.topic) or [])]
    h.check(len(partitions) == 2, "partitions_for_topic(%s) = %s, expected 2" % (args.topic, partitions))
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    expected = {(partition, offset): value for _, value, partition, offset in sent}
    seen = {}
    deadline = time.monotonic() + 60
    while len(seen) < len(expected):
        h.check(time.monotonic() < deadline, "read %d of %d records before the deadline" % (len(seen), len(expected)))
        for tp, messages in consumer.poll(timeout_ms=500).items():
            for message in messages:
                at = (tp.partition, message.offset)
                h.check(at not in seen, "partition %d offset %d read twice" % at)
                h.check(expected.get(at) == message.value, "at partition %d offset %d read %r, sent %r"
                        % (at[0], at[1], message.value, expected.get(at)))
                seen[at] = message.value
    h.checked("a KafkaConsumer from the beginning read all %d records, each once, as sent" % args.records)
    beginning = {tp.partition: offset for tp, offset in consumer.beginning_offsets(partitions).items()}
    end = {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    h.check(beginning == {0: 0, 1: 0}, "beginning_offsets %s, expected 0s" % beginning)
    h.check(end == {p: counts.get(p, 0) for p in (0, 1)}, "end_offsets %s, expected %s" % (end, counts))
    consumer.close()
    h.checked("beginning_offsets %s and end_offsets %s" % (beginning, end))

    # 4. A group of one, then of two.
    before = send_all(producer, args.group_topic,
                      [(b"b%d" % i, b"before-%d" % i, i % GROUP_TOPIC_PARTITIONS_N) for i in range(BEFORE_REBALANCE_N)])
    before_values = {value for _, value, _, _ in before}
    member_a = Member("member-a", args.bootstrap, args.group_topic, args.group)
    member_a.start()

    def a_alone():
        records, assignment = member_a.snapshot()
        read = {value for _, _, value in records}
        return assignment == all_partitions and before_values <= read, \
            "assignment %s, %d of %d earlier records read" % (sorted(assignment), len(read & before_values),
                                                            len(before_values))

    h.wait_until("member A alone to hold every partition and read the earlier records", a_alone, REBALANCE_WAIT_S)
    h.checked("member A of %s, alone, was assigned all %d partitions and read the %d records sent before"
              % (args.group, GROUP_TOPIC_PARTITIONS_N, BEFORE_REBALANCE_N))

    member_b = Member("member-b", args.bootstrap, args.group_topic, args.group)
    member_b.start()

    def split():
        _, of_a = member_a.snapshot()
        _, of_b = member_b.snapshot()
        done = bool(of_a) and bool(of_b) and not (of_a & of_b) and (of_a | of_b) == all_partitions
        return done, (sorted(of_a), sorted(of_b))

    split_a, split_b = h.wait_until("A and B to split the partitions", split, REBALANCE_WAIT_S)
    h.checked("after member B joined: A holds %s, B holds %s (non-empty, disjoint, all %d covered)"
              % (split_a, split_b, GROUP_TOPIC_PARTITIONS_N))

    described = admin.describe_groups([args.group])[args.group]
    h.check(described.get("error") is None, "DescribeGroups error: %s" % described.get("error"))
    state = described.get("group_state")
    members = described.get("members") or []
    h.check(state == "Stable" and len(members) == 2, "DescribeGroups: state %r with %d member(s): %s"
            % (state, len(members), described))
    listed = sorted(group.get("group_id") for group in admin.list_groups())
    h.check(args.group in listed, "ListGroups lists %s, not %s" % (listed, args.group))
    h.checked("DescribeGroups shows %s Stable with 2 members; ListGroups lists it" % args.group)

    after = send_all(producer, args.group_topic,
                     [(b"a%d" % i, b"after-%d" % i, i % GROUP_TOPIC_PARTITIONS_N) for i in range(AFTER_REBALANCE_N)])
    after_at = {value: partition for _, value, partition, _ in after}

    def all_after_read():
        read_a, _ = member_a.snapshot()
        read_b, _ = member_b.snapshot()
        read = {value for _, _, value in read_a + read_b if value in after_at}
        return len(read) == len(after_at), "%d of %d" % (len(read), len(after_at))

    h.wait_until("A and B to read the records sent after the rebalance", all_after_read, 60)
    # The members keep polling a little longer, so a duplicate delivered late would still be counted.
    time.sleep(1.0)
    read_a, final_a = member_a.snapshot()
    read_b, final_b = member_b.snapshot()
    h.check((sorted(final_a), sorted(final_b)) == (split_a, split_b),
            "the assignments moved after the split: A %s, B %s" % (sorted(final_a), sorted(final_b)))
    for name, read, owned in (("A", read_a, final_a), ("B", read_b, final_b)):
        for partition, offset, value in read:
            if value in after_at:
                h.check(partition in owned, "member %s read %r of partition %d, which it does not hold (%s)"
                        % (name, value, partition, sorted(owned)))
    after_read = [value for _, _, value in read_a + read_b if value in after_at]
    h.check(len(after_read) == len(after_at) and set(after_read) == set(after_at),
            "%d reads of %d distinct values for %d records sent after the rebalance"
            % (len(after_read), len(set(after_read)), len(after_at)))
    h.checked("the %d records sent after the rebalance were each consumed exactly once across A and B "
              "(A %d, B %d), each by the member holding its partition" % (
                  AFTER_REBALANCE_N, sum(1 for _, _, v in read_a if v in after_at),
                  sum(1 for _, _, v in read_b if v in after_at)))
    member_b.stop()
    member_a.stop()
    producer.close(timeout=CALL_TIMEOUT_S)

    # 5. DeleteTopics.
    admin.delete_topics([args.topic], timeout_ms=int(CALL_TIMEOUT_S * 1000))

    def gone():
        topics = admin.list_topics()
        return args.topic not in topics, sorted(topics)

    h.wait_until("%s to disappear from the metadata" % args.topic, gone, 60)
    h.checked("KafkaAdminClient.delete_topics deleted %s: list_topics no longer lists it" % args.topic)
    admin.close()


if __name__ == "__main__":
    arguments = h.parser(__doc__.splitlines()[0])
    arguments.add_argument("--topic", required=True, help="a topic that does not exist yet (deleted at the end)")
    arguments.add_argument("--group-topic", required=True, help="a topic that does not exist yet, for the group")
    arguments.add_argument("--group", required=True, help="a consumer group with no committed offsets")
    arguments.add_argument("--records", type=int, default=500)
    h.main(run, arguments)
