"""An idempotent acks=all confluent-kafka producer keeps sending while the Rust test kills the leader of
partition 0 with kill -9 and later restarts it; at the end, every acknowledged record must be in the
log exactly once, at the offset its delivery report gave, in produce order per partition.

    python confluent_failover.py --bootstrap A,B,C --topic t   (stdin: the handshake below)

The topic exists already (the test makes it with 3 replicas and min ISR 2). Records are numbered
0..--records-1, keyed by their number (so they spread over the partitions), sent at --rate a second.

Handshake with the test (stdout lines out, stdin lines in; every wait bounded by
--handshake-timeout-s, and sending pauses at a budget so the faults always land mid-run):
  out `leader=<id>`      once 20 records are acknowledged: the leader of partition 0 to kill.
                         Sending goes on, up to a third of the records, until
  in  `killed`           the leader was killed (its process reaped).
  out `new-leader=<id>`  a record sent after `killed` was acknowledged on partition 0, so another
                         broker leads it. Sending goes on, up to two thirds, until
  in  `restarted`        the killed broker runs again.
Then the rest is sent, the producer flushed, and every partition read from the beginning.

Checks (one `checked:` line each): no delivery failed (at most --max-failed); each acknowledged record
is in the log exactly once and at its acknowledged partition and offset; nothing was read that was not
sent, and nothing twice; each partition holds its records in send order; records were acknowledged
both between the kill and the restart and after the restart.
"""

import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402
import confluent_kafka  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition  # noqa: E402

# Acknowledged records before the leader is named (so the topic has been written through it).
ACKED_BEFORE_LEADER_N = 20
# One librdkafka call (a metadata or watermark request) at most this long.
CALL_TIMEOUT_S = 15.0
# How long a record may wait for its acknowledgement before librdkafka fails it: longer than a
# leader election and a restart, shorter than the script's own bound.
MESSAGE_TIMEOUT_MS = 120000


class Stdin:
    """Lines from the test on stdin, read without blocking."""

    def __init__(self):
        self.fd = sys.stdin.fileno()
        self.buffer = b""
        self.closed = False

    def lines(self):
        """The complete lines that arrived since the last call."""
        while not self.closed and select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 4096)
            if not chunk:
                self.closed = True
            self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n")
        return [line.strip().decode() for line in complete if line.strip()]


class Run:
    def __init__(self, args):
        self.args = args
        self.producer = Producer({
            "bootstrap.servers": args.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": MESSAGE_TIMEOUT_MS,
        })
        self.stdin = Stdin()
        self.sent_n = 0
        self.acked = {}  # number -> (partition, offset)
        self.failed = {}  # number -> error
        # When the next record may go: sending is paced, and a pause (a slow start, a wait at a
        # budget) is not made up for with a burst, so the faults land while records are in flight.
        self.next_send_at = time.monotonic()
        self.unacked_at_kill = None
        self.killed_leader = None
        self.first_after_kill = None  # the first number sent after `killed`
        self.first_after_restart = None

    def on_delivery(self, error, message):
        number = int(message.value())
        if error is not None:
            self.failed[number] = str(error)
        else:
            self.acked[number] = (message.partition(), message.offset())

    def leader_of_partition_0(self):
        metadata = self.producer.list_topics(self.args.topic, timeout=CALL_TIMEOUT_S)
        topic = metadata.topics.get(self.args.topic)
        h.check(topic is not None and topic.error is None and 0 in topic.partitions,
                "no partition 0 of %s in the metadata: %s" % (self.args.topic, topic and topic.error))
        return topic.partitions[0].leader

    def step(self, budget):
        """Sends the next record if its time came and `budget` allows; serves delivery reports."""
        now = time.monotonic()
        if self.sent_n < budget and now >= self.next_send_at:
            number = self.sent_n
            try:
                self.producer.produce(self.args.topic, key=b"%d" % number, value=b"%d" % number,
                                      on_delivery=self.on_delivery)
                self.sent_n += 1
                self.next_send_at = max(self.next_send_at, now) + 1.0 / self.args.rate
            except BufferError:
                pass  # the local queue is full: the poll below makes room
            self.producer.poll(0)
        else:
            self.producer.poll(0.005)

    def until(self, what, budget, done):
        """Steps until `done()` holds, at most --handshake-timeout-s."""
        deadline = time.monotonic() + self.args.handshake_timeout_s
        while not done():
            h.check(time.monotonic() < deadline, "timed out after %.0f s waiting for %s (%d sent, %d acked, %d failed)"
                    % (self.args.handshake_timeout_s, what, self.sent_n, len(self.acked), len(self.failed)))
            self.step(budget)

    def await_line(self, expected, budget):
        got = []

        def arrived():
            for line in self.stdin.lines():
                h.check(line == expected, "expected %r on stdin, got %r" % (expected, line))
                got.append(line)
            h.check(got or not self.stdin.closed, "stdin closed before %r" % expected)
            return bool(got)

        self.until("%r on stdin" % expected, budget, arrived)

    def run(self):
        records_n = self.args.records
        h.say(h.confluent_client_line(confluent_kafka))
        third = records_n // 3
        h.check(third > ACKED_BEFORE_LEADER_N, "--records %d is too few for the handshake" % records_n)

        self.until("%d acknowledgements" % ACKED_BEFORE_LEADER_N, third,
                   lambda: len(self.acked) >= ACKED_BEFORE_LEADER_N)
        self.killed_leader = self.leader_of_partition_0()
        h.check(self.killed_leader >= 0, "partition 0 has no leader")
        h.say("leader=%d" % self.killed_leader)
        self.await_line("killed", third)
        self.first_after_kill = self.sent_n
        self.unacked_at_kill = self.sent_n - len(self.acked) - len(self.failed)

        def acked_on_0_after_kill():
            return any(number >= self.first_after_kill and partition == 0
                       for number, (partition, _) in self.acked.items())

        self.until("a record sent after the kill to be acknowledged on partition 0", 2 * third,
                   acked_on_0_after_kill)
        new_leader = self.leader_of_partition_0()
        h.check(new_leader >= 0 and new_leader != self.killed_leader,
                "partition 0 acknowledged writes after its leader %d was killed, but the metadata names leader %d"
                % (self.killed_leader, new_leader))
        h.say("new-leader=%d" % new_leader)
        self.await_line("restarted", 2 * third)
        self.first_after_restart = self.sent_n
        self.until("every record to be sent", records_n, lambda: self.sent_n == records_n)
        left = self.producer.flush(MESSAGE_TIMEOUT_MS / 1000.0 + 10)
        h.check(left == 0, "flush left %d records without a delivery report" % left)
        self.check_deliveries()
        self.check_log()

    def check_deliveries(self):
        records_n = self.args.records
        h.check(len(self.acked) + len(self.failed) == records_n,
                "%d acked + %d failed != %d sent" % (len(self.acked), len(self.failed), records_n))
        first_failures = sorted(self.failed.items())[:3]
        h.check(len(self.failed) <= self.args.max_failed,
                "%d deliveries failed (at most %d allowed), first: %s" % (len(self.failed), self.args.max_failed,
                                                                          first_failures))
        between = sum(1 for n in self.acked if self.first_after_kill <= n < self.first_after_restart)
        after = sum(1 for n in self.acked if n >= self.first_after_restart)
        h.check(between > 0 and after > 0, "acknowledged between kill and restart: %d, after restart: %d"
                % (between, after))
        h.checked("%d of %d records acknowledged (%d failed): %d sent before leader %d was killed (%d of them not yet "
                  "acknowledged when the kill was reported), %d acknowledged between the kill and its restart, %d "
                  "after" % (len(self.acked), records_n, len(self.failed), self.first_after_kill, self.killed_leader,
                             self.unacked_at_kill, between, after))

    def check_log(self):
        topic = self.args.topic
        consumer = Consumer({"bootstrap.servers": self.args.bootstrap, "group.id": topic + "-failover-check",
                             "enable.auto.commit": False, "enable.partition.eof": True})
        metadata = consumer.list_topics(topic, timeout=CALL_TIMEOUT_S)
        partitions = sorted(metadata.topics[topic].partitions)
        ends = {}
        for p in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=CALL_TIMEOUT_S)
            ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        log = {p: [] for p in partitions}  # partition -> [(offset, number)]
        next_offset = {p: 0 for p in partitions}
        deadline = time.monotonic() + 60

        while any(next_offset[p] < ends[p] for p in partitions):
            h.check(time.monotonic() < deadline, "read up to %s of the log ends %s before the deadline"
                    % (next_offset, ends))
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                h.check(message.error().code() == KafkaError._PARTITION_EOF, "consumer error %s" % message.error())
                continue
            log[message.partition()].append((message.offset(), int(message.value())))
            next_offset[message.partition()] = message.offset() + 1
        consumer.close()

        where = {}
        for p, entries in log.items():
            for offset, number in entries:
                h.check(0 <= number < self.args.records, "partition %d offset %d holds %d, never sent" % (p, offset,
                                                                                                      number))
                h.check(number not in where, "%d is in the log twice: partition %d offset %d and %s"
                        % (number, p, offset, where.get(number)))
                where[number] = (p, offset)
        h.checked("read %d records to the log ends %s: none twice, none never sent" % (len(where), ends))
        lost = sorted(n for n in self.acked if n not in where)
        h.check(not lost, "%d acknowledged records are not in the log, first: %s" % (len(lost), lost[:5]))
        misplaced = sorted(n for n in self.acked if where[n] != self.acked[n])
        h.check(not misplaced, "%d acknowledged records are not where their delivery report put them, first: %s"
                % (len(misplaced), [(n, self.acked[n], where[n]) for n in misplaced[:3]]))
        h.checked("every one of the %d acknowledged records is in the log exactly once, at its acknowledged "
                  "partition and offset" % len(self.acked))
        for p, entries in log.items():
            numbers = [number for _, number in entries]
            h.check(numbers == sorted(numbers), "partition %d is not in send order: %s" % (p, numbers[:20]))
        h.checked("each partition holds its records in send order (records per partition: %s)"
                  % {p: len(entries) for p, entries in log.items()})


if __name__ == "__main__":
    arguments = h.parser(__doc__.splitlines()[0])
    arguments.add_argument("--topic", required=True, help="an existing, empty topic")
    arguments.add_argument("--records", type=int, default=3000)
    arguments.add_argument("--rate", type=float, default=1000.0, help="records sent a second")
    arguments.add_argument("--max-failed", type=int, default=0, help="delivery failures tolerated")
    arguments.add_argument("--handshake-timeout-s", type=float, default=90.0)
    h.main(lambda args: Run(args).run(), arguments)
