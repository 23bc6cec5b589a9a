//! The queue workload: producer processes, a consumer, and the final reader, recording one history.
//!
//! In: a broker address, a topic with `partitions` partitions, a stop token. Out: a shared
//! [`History`] in the format of shared/HISTORY-FORMAT.md, and the invariant violations seen during
//! the run.
//!
//! - A *producer process* sends unique values `"<process>-<n>"` one at a time (Jepsen's processes
//!   have at most one operation outstanding) through a [`Producer`] shared by the processes of one
//!   client node, so lingering batches carry records of several processes. Each outcome is recorded
//!   as `ok` (with the acked offset), `fail` (definitely not written) or `info` (unknown).
//! - With [`Idempotence`] the node's producer is idempotent (`idempotent: true`, a short request
//!   timeout, a long delivery timeout) and a process may keep several sends outstanding: it records
//!   each invoke before it hands the record to the producer, so its invokes are in the order the
//!   producer got its records (the order the exactly-once checker holds the log to). Otherwise the
//!   producer is plain (`idempotent: false`).
//! - A *consumer* polls random partitions from its own positions and records every poll. Once caught
//!   up it polls at the tails, where records appear first (and where a broker that served records
//!   before they were durable would show them).
//! - The *final reader* runs after the heal: it polls every partition from offset 0 to its high
//!   watermark.
//!
//! # Invariants checked during the run (when the broker runs with fsync=always)
//! - A partition's high watermark never goes backwards, across restarts and power losses included:
//!   a fetch reports at least the highest high watermark of every fetch that completed before it was
//!   issued. (Fetches in flight at the same time may complete out of order.)
//! - A fetch issued after a send was acked at offset `o` reports a high watermark above `o`.
//! - One poll's offsets increase and start at or after the consumer's position.
//! - No operation hangs: every send and poll resolves within a bound of simulated time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use keel::batch::Record;
use keel::client::{delivered, Client, ClientConfig, ClientError, Producer, ProducerConfig, RecordMetadata};
use keel::compression::Compression;
use keel::protocol::{Acks, ErrorCode};
use keel::types::Offset as KeelOffset;
use keel_model::history::{EventKind, History, Offset, Op, Partition, PendingSend, PollReads, ProcessId, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::durable_acks::{durable_holders, ReplicaDisk};
use crate::lock;
use crate::trace::Trace;

/// Longest an operation may take before the harness calls it a hang (simulated time). Client
/// requests time out after a few seconds, so anything near this is a bug.
pub const OPERATION_MS_MAX: u64 = 60_000;
/// Bytes one fetch may return.
pub const FETCH_BYTES_MAX: u32 = 64 * 1024;

/// Client settings for the workload: short timeouts, so a dead, paused or partitioned broker turns
/// into `info` (or a failed poll) quickly instead of a hang.
pub fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(1_500),
        retries: 3,
        retry_backoff: Duration::from_millis(50),
        retry_backoff_max: Duration::from_millis(400),
        tls: None,
    }
}

/// What every workload task shares: the history, the invariants' state and the violations found.
pub struct Recorder {
    pub(crate) history: Mutex<History>,
    start: Instant,
    trace: Trace,
    /// Whether the durability invariants apply (fsync=always); with fsync=never a power loss may
    /// legitimately move the high watermark back.
    durable: bool,
    /// Per partition: highest acked offset.
    acked_max: Mutex<BTreeMap<u32, i64>>,
    /// Per partition: highest high watermark any completed fetch reported.
    high_watermark_max: Mutex<BTreeMap<u32, i64>>,
    violations: Mutex<Vec<String>>,
    /// Observations of a durability break that are expected with fsync=never (counted, not failed).
    expected_anomalies: Mutex<usize>,
    /// Sends that ended in an error, by the error's code (or the kind of client error).
    send_errors: Mutex<BTreeMap<String, u64>>,
    /// The durable-ack check, when the scenario keeps `fsync=always`: checked at every ack.
    durable_acks: Mutex<Option<DurableAcks>>,
}

/// The brokers' disks and the topic's `min_insync_replicas`: every `acks=all` acknowledgement must
/// find its record in the synced bytes of at least `min_isr` of them ([`durable_holders`]).
pub struct DurableAcks {
    pub disks: Vec<ReplicaDisk>,
    pub topic: String,
    pub min_isr: usize,
}

impl Recorder {
    pub fn new(start: Instant, trace: Trace, durable: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            history: Mutex::new(History::new()),
            start,
            trace,
            durable,
            acked_max: Mutex::default(),
            high_watermark_max: Mutex::default(),
            violations: Mutex::default(),
            expected_anomalies: Mutex::default(),
            send_errors: Mutex::default(),
            durable_acks: Mutex::default(),
        })
    }

    /// Turns on the durable-ack check (only meaningful with `fsync=always`).
    pub fn check_durable_acks(&self, check: DurableAcks) {
        *lock(&self.durable_acks) = Some(check);
    }

    /// The durable-ack check of one acknowledgement.
    fn ack_durable(&self, partition: u32, offset: i64, value: &str) {
        let guard = lock(&self.durable_acks);
        let Some(DurableAcks { disks, topic, min_isr }) = guard.as_ref() else { return };
        let holders = durable_holders(disks, topic, partition, offset, value.as_bytes());
        if holders < *min_isr {
            let message = format!(
                "{value} acked at {partition}/{offset} with acks=all is durable on {holders} broker(s), \
                 fewer than min_insync_replicas {min_isr}"
            );
            drop(guard);
            self.violation(message);
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn history(&self) -> History {
        lock(&self.history).clone()
    }

    pub fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }

    pub fn expected_anomalies(&self) -> usize {
        *lock(&self.expected_anomalies)
    }

    /// Sends that ended in an error (`fail` or `info`), by error code; client-side errors without a
    /// code (timeouts, connections) by their kind.
    pub fn send_errors(&self) -> BTreeMap<String, u64> {
        lock(&self.send_errors).clone()
    }

    fn send_error(&self, error: &ClientError) {
        let what = match error.code() {
            Some(code) => format!("{code:?}"),
            None if error.is_ambiguous() => "ambiguous (no code)".to_owned(),
            None => "client (no code)".to_owned(),
        };
        *lock(&self.send_errors).entry(what).or_default() += 1;
    }

    /// Records how a send ended: `ok` with its offset (checked: the partition it was sent to, and
    /// durable on enough replicas), `info` when its outcome is unknown, `fail` when it definitely
    /// was not written; `None` is a send that did not resolve within [`OPERATION_MS_MAX`] (a hang:
    /// a violation, recorded `info`). Returns whether the send resolved.
    pub(crate) fn send_resolved(
        &self,
        pending: PendingSend,
        partition: u32,
        outcome: Option<Result<RecordMetadata, ClientError>>,
    ) -> bool {
        let now_ns = self.now_ns();
        match outcome {
            Some(Ok(metadata)) => {
                let (process, value) = (pending.process(), pending.value().0.clone());
                if metadata.partition != partition || metadata.offset.0 < 0 {
                    self.violation(format!(
                        "process {process}: {value} sent to partition {partition} acked as {metadata:?}"
                    ));
                }
                self.acked(partition, metadata.offset.0);
                self.ack_durable(partition, metadata.offset.0, &value);
                lock(&self.history).send_ok(pending, now_ns, Offset(metadata.offset.0.max(0) as u64));
            }
            Some(Err(error)) if error.is_ambiguous() => {
                self.send_error(&error);
                lock(&self.history).send_info(pending, now_ns);
            }
            Some(Err(error)) => {
                self.send_error(&error);
                lock(&self.history).send_fail(pending, now_ns);
            }
            None => {
                let (process, value) = (pending.process(), pending.value().0.clone());
                self.violation(format!("process {process}: send of {value} hung for {OPERATION_MS_MAX} ms"));
                lock(&self.history).send_info(pending, now_ns);
                return false;
            }
        }
        true
    }

    /// Sends acked so far.
    pub fn sends_acked(&self) -> usize {
        let history = lock(&self.history);
        history
            .events()
            .iter()
            .filter(|event| event.kind == EventKind::Ok && matches!(event.op, Op::Send { .. }))
            .count()
    }

    pub fn acked_max(&self) -> BTreeMap<u32, i64> {
        lock(&self.acked_max).clone()
    }

    /// A durability invariant broke: a violation with fsync=always, an expected anomaly otherwise.
    pub(crate) fn durability_break(&self, message: String) {
        if self.durable {
            self.violation(message);
        } else {
            *lock(&self.expected_anomalies) += 1;
        }
    }

    /// Records `what` in the trace (not a violation).
    pub fn note(&self, what: String) {
        self.trace.record(self.now_ns(), what);
    }

    pub fn violation(&self, message: String) {
        self.trace.record(self.now_ns(), format!("violation {message}"));
        lock(&self.violations).push(message);
    }

    fn acked(&self, partition: u32, offset: i64) {
        let mut acked = lock(&self.acked_max);
        let entry = acked.entry(partition).or_insert(-1);
        *entry = (*entry).max(offset);
    }

    fn acked_max_of(&self, partition: u32) -> i64 {
        lock(&self.acked_max).get(&partition).copied().unwrap_or(-1)
    }

    fn high_watermark_max_of(&self, partition: u32) -> i64 {
        lock(&self.high_watermark_max).get(&partition).copied().unwrap_or(0)
    }

    fn seen(&self, partition: u32) -> Seen {
        Seen { acked_max: self.acked_max_of(partition), high_watermark_max: self.high_watermark_max_of(partition) }
    }

    /// Checks a fetch's high watermark against what was acked, and what other fetches reported, before
    /// the fetch started.
    fn observe_high_watermark(&self, partition: u32, high_watermark: i64, before_fetch: Seen, who: &str) {
        if high_watermark <= before_fetch.acked_max {
            self.durability_break(format!(
                "{who}: partition {partition} reports high watermark {high_watermark} although offset {} was \
                 acked before the fetch",
                before_fetch.acked_max
            ));
        }
        if high_watermark < before_fetch.high_watermark_max {
            self.durability_break(format!(
                "{who}: partition {partition} high watermark went back from {} to {high_watermark}",
                before_fetch.high_watermark_max
            ));
        }
        let mut seen = lock(&self.high_watermark_max);
        let max = seen.entry(partition).or_insert(0);
        *max = (*max).max(high_watermark);
    }
}

/// What the workload knew of a partition when a fetch started.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// The highest offset acked.
    acked_max: i64,
    /// The highest high watermark a completed fetch reported.
    high_watermark_max: i64,
}

pub(crate) fn value_of(bytes: Option<&Bytes>) -> Value {
    Value(bytes.map_or_else(String::new, |bytes| String::from_utf8_lossy(bytes).into_owned()))
}

/// How a node's producer is idempotent (the `idempotent_*` scenarios): `idempotent: true` with its
/// own short request timeout and long delivery timeout, and processes that keep several sends
/// outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idempotence {
    /// The producer client's request timeout: short, so that a slow answer makes a write ambiguous
    /// and the producer sends it again.
    pub request_timeout_ms: u64,
    /// How long the producer keeps sending a record again before it reports the outcome.
    pub delivery_timeout_ms: u64,
    /// The producer's `in_flight_max`.
    pub in_flight_max: usize,
    /// Sends one process keeps outstanding (invoked, not yet resolved).
    pub sends_outstanding_max: usize,
}

/// The client and producer settings of a producer node: acks=all, the node's linger; plain
/// (`idempotent: false`, the client settings of [`client_config`]) or as `idempotence` says. The
/// plain scenarios judge the plain producer's promises (an unknown outcome is never sent again);
/// the `idempotent_*` scenarios run the idempotent one.
pub fn producer_configs(linger: Duration, idempotence: Option<Idempotence>) -> (ClientConfig, ProducerConfig) {
    let plain = ProducerConfig { acks: Acks::All, linger, idempotent: false, ..ProducerConfig::default() };
    let Some(idempotence) = idempotence else { return (client_config(), plain) };
    let client =
        ClientConfig { request_timeout: Duration::from_millis(idempotence.request_timeout_ms), ..client_config() };
    let producer = ProducerConfig {
        idempotent: true,
        in_flight_max: idempotence.in_flight_max,
        delivery_timeout: Duration::from_millis(idempotence.delivery_timeout_ms),
        ..plain
    };
    (client, producer)
}

/// One client node's producer processes.
pub struct ProducerNode {
    pub addr: String,
    pub topic: String,
    pub partitions: u32,
    pub processes: Vec<ProcessId>,
    pub linger: Duration,
    /// Pause between one process's sends, drawn from `[0, think_ms_max]`.
    pub think_ms_max: u64,
    /// The producer's `batch_bytes_max`.
    pub batch_bytes_max: usize,
    /// The codec of the producer's batches.
    pub compression: Compression,
    /// Percent of sends that go to partition 0 (the rest spread evenly): how skewed the keys are.
    pub hot_partition_percent: u32,
    /// A compacted topic: each record's key is `k` + `queue_checker::compaction_key` of its value
    /// among this many.
    pub compaction_keys: Option<u64>,
    /// `None`: a plain producer, one send outstanding per process.
    pub idempotence: Option<Idempotence>,
    /// The node's RNG (each process gets its own, seeded from it).
    pub rng: StdRng,
}

impl ProducerNode {
    /// Runs every process until `stop`; returns when each has resolved its last send.
    pub async fn run(mut self, recorder: Arc<Recorder>, stop: CancellationToken) {
        let (client_config, config) = producer_configs(self.linger, self.idempotence);
        let config = ProducerConfig { batch_bytes_max: self.batch_bytes_max, compression: self.compression, ..config };
        let producer = Producer::new(Client::new(self.addr.clone(), client_config), config);
        let mut tasks = Vec::new();
        for process in self.processes.iter().copied() {
            let (producer, recorder, stop, topic) =
                (producer.clone(), recorder.clone(), stop.clone(), self.topic.clone());
            let shape = ProcessShape {
                process,
                topic,
                partitions: self.partitions,
                think_ms_max: self.think_ms_max,
                hot_partition_percent: self.hot_partition_percent,
                compaction_keys: self.compaction_keys,
                rng: StdRng::seed_from_u64(self.rng.random()),
            };
            let task = match self.idempotence {
                None => tokio::spawn(async move { run_producer_process(shape, producer, &recorder, &stop).await }),
                Some(idempotence) => tokio::spawn(run_pipelined_process(shape, producer, recorder, stop, idempotence)),
            };
            tasks.push(task);
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// One producer process: what it sends where, and its RNG.
struct ProcessShape {
    process: ProcessId,
    topic: String,
    partitions: u32,
    think_ms_max: u64,
    hot_partition_percent: u32,
    compaction_keys: Option<u64>,
    rng: StdRng,
}

/// The record a process sends for `value`: keyed on a compacted topic (`compaction_keys`).
fn record_for(value: &str, compaction_keys: Option<u64>) -> Record {
    let key =
        compaction_keys.map(|keys| Bytes::from(format!("k{}", keel_model::queue_checker::compaction_key(value, keys))));
    Record { key, ..Record::value(Bytes::from(value.to_owned())) }
}

/// The partition of a process's next send: partition 0 for `hot_percent` of them, the rest spread
/// evenly over every partition.
pub(crate) fn pick_partition(rng: &mut StdRng, partitions: u32, hot_percent: u32) -> u32 {
    if rng.random_range(0..100) < hot_percent {
        0
    } else {
        rng.random_range(0..partitions)
    }
}

async fn run_producer_process(shape: ProcessShape, producer: Producer, recorder: &Recorder, stop: &CancellationToken) {
    let ProcessShape { process, topic, partitions, think_ms_max, hot_partition_percent, compaction_keys, mut rng } =
        shape;
    let topic = topic.as_str();
    let mut sequence = 0u64;
    while !stop.is_cancelled() {
        let partition = pick_partition(&mut rng, partitions, hot_partition_percent);
        let value = format!("{}-{sequence}", process.0);
        sequence += 1;
        let pending = lock(&recorder.history).invoke_send(
            process,
            recorder.now_ns(),
            Partition::of_topic(topic, partition),
            value.as_str(),
        );
        let outcome = tokio::time::timeout(Duration::from_millis(OPERATION_MS_MAX), async {
            let delivery = producer.send(topic, Some(partition), record_for(&value, compaction_keys)).await;
            delivered(delivery).await
        })
        .await;
        if !recorder.send_resolved(pending, partition, outcome.ok()) {
            return;
        }
        think(&mut rng, think_ms_max).await;
    }
}

/// A producer process that keeps up to `sends_outstanding_max` sends outstanding: it records each
/// send's invoke and then hands the record to the producer, in that order, before the next send
/// (so its invokes are in the order the producer got its records), and a task of its own waits
/// for each delivery and records it. Returns when every send it invoked is resolved.
///
/// It also holds the idempotent producer to its promise that a send it reports unknown was lost to
/// a fault it could not ride out, not to the broker: a send that ends `SequenceLost` (the partition
/// answered `OutOfOrderSequence` or `UnknownProducerId` for a batch sent after every earlier one was
/// acknowledged, so the producer gave its sequence up) is a violation. With `fsync=always` and acks=all no fault
/// these scenarios inject loses a producer's acknowledged sequence; only a broker bug does (a dedup
/// window that forgot a retried batch, an older epoch's batch appended after a newer one's). Such a
/// send ends `info`, which the queue checker accepts, so it is caught here.
async fn run_pipelined_process(
    shape: ProcessShape,
    producer: Producer,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
    idempotence: Idempotence,
) {
    let ProcessShape { process, topic, partitions, think_ms_max, hot_partition_percent, compaction_keys, mut rng } =
        shape;
    let sends_outstanding_max = idempotence.sends_outstanding_max;
    let outstanding = Arc::new(tokio::sync::Semaphore::new(sends_outstanding_max));
    let mut sequence = 0u64;
    while !stop.is_cancelled() {
        let Ok(permit) = outstanding.clone().acquire_owned().await else { return };
        let partition = pick_partition(&mut rng, partitions, hot_partition_percent);
        let value = format!("{}-{sequence}", process.0);
        sequence += 1;
        let pending = lock(&recorder.history).invoke_send(
            process,
            recorder.now_ns(),
            Partition::of_topic(&topic, partition),
            value.as_str(),
        );
        let deadline = Instant::now() + Duration::from_millis(OPERATION_MS_MAX);
        let record = record_for(&value, compaction_keys);
        let delivery = tokio::time::timeout(
            Duration::from_millis(OPERATION_MS_MAX),
            producer.send(&topic, Some(partition), record),
        )
        .await;
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let outcome = match delivery {
                // `timeout_at` does not build under madsim.
                Ok(delivery) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::timeout(left, delivered(delivery)).await.ok()
                }
                Err(_) => None,
            };
            if let Some(Err(error @ ClientError::SequenceLost(_))) = &outcome {
                recorder.violation(format!("process {}: send of {value} to partition {partition}: {error}", process.0));
            }
            recorder.send_resolved(pending, partition, outcome);
            drop(permit);
        });
        think(&mut rng, think_ms_max).await;
    }
    // Every permit back: every send resolved.
    let _ = outstanding.acquire_many(sends_outstanding_max as u32).await;
}

/// A pause drawn from `[0, think_ms_max]` between two sends of a process.
pub(crate) async fn think(rng: &mut StdRng, think_ms_max: u64) {
    if think_ms_max > 0 {
        let think_ms = rng.random_range(0..=think_ms_max);
        if think_ms > 0 {
            tokio::time::sleep(Duration::from_millis(think_ms)).await;
        }
    }
}

/// One polling process: its client, its process id in the history, and its name in violations.
struct Poller<'a> {
    client: &'a Client,
    recorder: &'a Recorder,
    process: ProcessId,
    topic: &'a str,
    who: &'static str,
}

impl Poller<'_> {
    /// Polls one partition from `position` once, records the poll, and returns the next position.
    /// `None` when the poll hung (a violation has been recorded).
    async fn poll(&self, partition: u32, position: i64, max_wait: Duration) -> Option<PollResult> {
        let Poller { client, recorder, process, topic, who } = *self;
        let before_fetch = recorder.seen(partition);
        let pending = lock(&recorder.history).invoke_poll(process, recorder.now_ns());
        let fetched = tokio::time::timeout(
            Duration::from_millis(OPERATION_MS_MAX),
            client.fetch(topic, partition, KeelOffset(position), FETCH_BYTES_MAX, max_wait),
        )
        .await;
        let now_ns = recorder.now_ns();
        let fetched = match fetched {
            Err(_) => {
                recorder.violation(format!("{who}: fetch of partition {partition} at {position} hung"));
                lock(&recorder.history).poll_info(pending, now_ns);
                return None;
            }
            Ok(Err(error)) => {
                // A fetch moves no position and writes nothing, so a failed one is a definite `fail`.
                lock(&recorder.history).poll_fail(pending, now_ns);
                return Some(PollResult::Failed(error));
            }
            Ok(Ok(fetched)) => fetched,
        };
        let mut reads = Vec::with_capacity(fetched.records.len());
        let mut next = position;
        for record in &fetched.records {
            if record.offset.0 < next {
                recorder.violation(format!(
                    "{who}: fetch of partition {partition} at {position} returned offset {} after {}",
                    record.offset.0,
                    next - 1
                ));
            }
            if record.offset.0 >= fetched.high_watermark.0 {
                recorder.violation(format!(
                    "{who}: fetch of partition {partition} returned offset {} at or past its high watermark {}",
                    record.offset.0, fetched.high_watermark.0
                ));
            }
            next = next.max(record.offset.0 + 1);
            reads.push((Offset(record.offset.0.max(0) as u64), value_of(record.value.as_ref())));
        }
        // Past batches compaction emptied, which bring no records (ADR 0022).
        next = next.max(fetched.next_offset.0);
        let mut poll_reads = PollReads::new();
        poll_reads.insert(Partition::of_topic(topic, partition), reads);
        lock(&recorder.history).poll_ok(pending, now_ns, poll_reads);
        recorder.observe_high_watermark(partition, fetched.high_watermark.0, before_fetch, who);
        Some(PollResult::Read { next, high_watermark: fetched.high_watermark.0, log_start: fetched.log_start.0 })
    }
}

enum PollResult {
    Read { next: i64, high_watermark: i64, log_start: i64 },
    Failed(ClientError),
}

/// A consumer: polls random partitions from its own positions, each poll waiting up to a time drawn
/// from `[0, max_wait_max]` for records.
pub struct Consumer {
    pub addr: String,
    pub topic: String,
    pub partitions: u32,
    pub process: ProcessId,
    pub max_wait_max: Duration,
    pub rng: StdRng,
    /// The topic has retention: a position below the log start was deleted, not lost.
    pub retained: bool,
}

impl Consumer {
    /// Polls until `stop`.
    pub async fn run(self, recorder: Arc<Recorder>, stop: CancellationToken) {
        let Consumer { addr, topic, partitions, process, max_wait_max, mut rng, retained } = self;
        let client = Client::new(addr, client_config());
        let all: Vec<Partition> = (0..partitions).map(|partition| Partition::of_topic(&topic, partition)).collect();
        lock(&recorder.history).assign(process, recorder.now_ns(), all.clone());
        let mut positions = vec![0i64; partitions as usize];
        let poller = Poller { client: &client, recorder: &recorder, process, topic: &topic, who: "consumer" };
        while !stop.is_cancelled() {
            let partition = rng.random_range(0..partitions);
            let max_wait = Duration::from_millis(rng.random_range(0..=max_wait_max.as_millis() as u64));
            let position = positions[partition as usize];
            let result = poller.poll(partition, position, max_wait).await;
            match result {
                None => return,
                Some(PollResult::Read { next, .. }) => positions[partition as usize] = next,
                Some(PollResult::Failed(error)) if error.code() == Some(ErrorCode::OffsetOutOfRange) && retained => {
                    match log_start(&client, &topic, partition).await {
                        // Retention deleted the records there: go on from the log start (a new
                        // assignment, so the checker does not take the jump for a skip).
                        Some(start) if position < start => {
                            positions[partition as usize] = start;
                            lock(&recorder.history).assign(process, recorder.now_ns(), all.clone());
                        }
                        Some(_) => {
                            recorder.durability_break(format!(
                                "consumer: partition {partition} position {position}: {error}"
                            ));
                            positions = vec![0; partitions as usize];
                            lock(&recorder.history).assign(process, recorder.now_ns(), all.clone());
                        }
                        None => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                Some(PollResult::Failed(error)) if error.code() == Some(ErrorCode::OffsetOutOfRange) => {
                    // Only a log that lost records can put a position past its end.
                    recorder.durability_break(format!("consumer: partition {partition} position {position}: {error}"));
                    positions = vec![0; partitions as usize];
                    lock(&recorder.history).assign(process, recorder.now_ns(), all.clone());
                }
                Some(PollResult::Failed(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// The final reader: polls every partition from 0 (or, with retention, from its log start) to its
/// high watermark, within `bound`.
pub struct FinalReader {
    pub addr: String,
    pub topic: String,
    pub partitions: u32,
    pub process: ProcessId,
    pub bound: Duration,
    /// The topic has retention: the log may start past 0.
    pub retained: bool,
}

/// What the final read found: per partition its high watermark and its log start.
#[derive(Debug, Default)]
pub struct FinalRead {
    pub high_watermarks: BTreeMap<u32, i64>,
    /// The highest log start the read saw (retention may move it while the read goes on).
    pub log_starts: BTreeMap<u32, i64>,
}

impl FinalReader {
    /// Reads everything, or an error when the broker did not serve it within the bound.
    pub async fn run(self, recorder: Arc<Recorder>) -> Result<FinalRead, String> {
        let FinalReader { addr, topic, partitions, process, bound, retained } = self;
        let deadline = Instant::now() + bound;
        let client = Client::new(addr, client_config());
        let all: Vec<Partition> = (0..partitions).map(|partition| Partition::of_topic(&topic, partition)).collect();
        lock(&recorder.history).assign(process, recorder.now_ns(), all);
        let mut read = FinalRead::default();
        let poller = Poller { client: &client, recorder: &recorder, process, topic: &topic, who: "final reader" };
        for partition in 0..partitions {
            let (high_watermark, log_start) =
                poller.read_to_end(partition, deadline, bound, retained, partitions).await?;
            read.high_watermarks.insert(partition, high_watermark);
            read.log_starts.insert(partition, log_start);
        }
        Ok(read)
    }
}

/// The partition's log start, asked of its leader (`None` when that failed).
pub(crate) async fn log_start(client: &Client, topic: &str, partition: u32) -> Option<i64> {
    let earliest = client.list_offsets(topic, partition, keel::protocol::LIST_OFFSETS_EARLIEST).await.ok()?;
    Some(earliest.map_or(0, |(offset, _)| offset.0))
}

impl Poller<'_> {
    /// Reads `partition` to its high watermark, from 0 or (`retained`) from wherever its log starts;
    /// returns the high watermark and the log start.
    async fn read_to_end(
        &self,
        partition: u32,
        deadline: Instant,
        bound: Duration,
        retained: bool,
        partition_count: u32,
    ) -> Result<(i64, i64), String> {
        let (mut position, mut start) = (0i64, 0i64);
        loop {
            if Instant::now() >= deadline {
                return Err(format!("final read of partition {partition} stuck at offset {position} after {bound:?}"));
            }
            match self.poll(partition, position, Duration::ZERO).await {
                None => return Err(format!("final read of partition {partition} hung")),
                Some(PollResult::Read { next, high_watermark, log_start }) => {
                    if log_start > 0 && !retained {
                        return Err(format!("partition {partition} starts at {log_start}: records before it are gone"));
                    }
                    start = start.max(log_start);
                    position = next;
                    if position >= high_watermark {
                        return Ok((high_watermark, start));
                    }
                }
                Some(PollResult::Failed(error)) if retained && error.code() == Some(ErrorCode::OffsetOutOfRange) => {
                    match log_start(self.client, self.topic, partition).await {
                        Some(log_start) if position < log_start => {
                            // Retention moved the log start while the read went on: a new
                            // assignment, so the checker does not take the jump for a skip.
                            start = start.max(log_start);
                            position = log_start;
                            let all: Vec<Partition> =
                                (0..partition_count).map(|p| Partition::of_topic(self.topic, p)).collect();
                            lock(&self.recorder.history).assign(self.process, self.recorder.now_ns(), all);
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                Some(PollResult::Failed(error)) => {
                    self.recorder.note(format!("final read of partition {partition} at {position}: {error}"));
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
            }
        }
    }
}
