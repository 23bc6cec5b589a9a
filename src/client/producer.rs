//! The batching producer.
//!
//! `send` hands a record to a background task and returns a [`Delivery`] future. The task keeps one
//! open batch per partition and closes it when it reaches `batch_bytes_max` or when it has waited
//! `linger`. Up to `in_flight_max` produce requests are outstanding (or being started) at once;
//! beyond that the task stops taking records, so `send` waits (backpressure). Before sending, the task
//! takes every record already queued, so with `linger` 0 nothing waits on purpose, yet records that
//! arrived while requests were in flight share the next batch instead of each becoming a request
//! (Kafka's sender behaves the same way).
//!
//! Partitioning: an explicit partition wins; otherwise a key picks `murmur2(key) % partitions`
//! (Kafka's default partitioner, so keys land where a Kafka client would put them); records without
//! a key stick to one randomly chosen partition until its batch is sent (Kafka's sticky partitioner).
//!
//! Routing: each batch goes to its partition's leader (the client's metadata cache, refreshed when
//! a leader moves), over that broker's connection.
//!
//! # Nothing waits inline
//! The task's loop never waits on the network itself: looking a topic up, finding a partition's
//! leader, connecting (with its timeout and backoff) and backing off before a retry all happen in
//! futures the loop polls beside its queue, so a dead broker delays only the batches bound for it.
//! Each partition is a *lane*: closed batches wait in it in order, and at most one of them is being
//! started (leader lookup, connect, handed to the connection, which keeps the order) at a time, so
//! a partition's requests reach the wire in the order its batches were closed. While a lane is busy
//! (starting, or holding a batch that waits to be retried) its open batch keeps collecting records
//! and closes only when full. At most [`BATCHES_WAITING_MAX`] closed batches wait across all lanes
//! before the task stops taking records (the bound that Kafka's `buffer.memory` is).
//!
//! # Idempotence (the default; ADR 0015)
//! The producer asks a broker for a producer id (`InitProducerId`) before its first batch. Each
//! partition's lane numbers its batches: every batch carries (producer id, epoch, base sequence),
//! sequences counting records from 0 per partition. At most [`IDEMPOTENT_IN_FLIGHT_MAX`] batches of
//! a partition got a sequence since its oldest batch of unknown outcome (the broker dedups the last
//! 5 of each producer, so a retry of that oldest is always recognised), and they reach the wire in
//! sequence order. A batch keeps its sequence across retries, so whatever failed in between
//! the broker appends it once, and a retry of an appended batch is answered with the original
//! offsets. What happens to a batch's answer:
//! - acknowledged (also a retry the broker recognised): its records get their offsets;
//! - refused without appending (`NotLeader`, `NotEnoughReplicas`, `Busy`, `StorageError`, ...), or
//!   of unknown outcome (a broken connection, `Timeout`, `*AfterAppend`, `DuplicatePending`): re-sent
//!   with the same sequence after a backoff, until `delivery_timeout` after the batch closed; only
//!   then is it reported, ambiguous if any attempt may have been appended;
//! - `OutOfOrderSequence` / `UnknownProducerId`: an earlier batch has not landed yet, so re-sent;
//!   for a batch sent when every earlier batch of its lane was already acknowledged it means the
//!   partition lost this producer's state (the oldest unanswered batch is not enough: an answer on
//!   one connection can overtake an earlier batch's acknowledgement on another);
//! - a definite failure (`CorruptBatch`, `MessageTooLarge`, `ProducerFenced`, `InvalidRecord`, ...):
//!   reported.
//!
//! A sequence that will never be appended (a definite failure, a batch given up, lost state) leaves
//! a hole the broker would refuse every later batch for: the lane then waits until every started
//! batch is answered, starts a new epoch (KIP-360, per partition) and numbers its waiting batches
//! again from 0. A waiting batch that may already have been appended is reported ambiguous at that
//! point instead of being numbered again, which could append it twice. Idempotence needs
//! `acks = all`; with other acks the producer is not idempotent.
//!
//! # Retries without idempotence
//! - A batch whose request definitely never left this process (no leader known, no connection) is
//!   retried with backoff, up to `retries` times. When a lane's batch used them all up without
//!   reaching the broker, the lane's later batches try once and fail fast, until one gets through.
//! - A batch refused without being appended is re-sent: `NotLeader`, `UnknownPartition`,
//!   `UnknownTopic` or `FencedLeaderEpoch` to the refreshed leader, at most [`ROUTE_ATTEMPTS_MAX`]
//!   sends; `NotEnoughReplicas` (the ISR is below `min_insync_replicas`, nothing was appended; Kafka
//!   retries it too) to the same leader with backoff, at most `retries` times. Either way only while
//!   no later batch of its partition has been sent meanwhile (otherwise the retry could land after a
//!   later batch, and acknowledged offsets would not follow send order); it then fails with the
//!   refusal, a definite failure. So with several batches of a partition in flight, only the latest
//!   refused one is retried.
//! - With `acks = none` nothing is waited for (Kafka's `acks=0`): a record's delivery resolves, with
//!   offset -1, once its request is on the connection; the broker's answer only frees the request
//!   slot, and its errors are not reported nor retried.
//! - A batch whose outcome is unknown is reported ambiguous and never retried: its connection broke
//!   in flight, or the broker answered `NotEnoughReplicasAfterAppend`, `NotLeaderAfterAppend`,
//!   `StorageIndeterminate` or `Timeout` (appended, perhaps lost; see
//!   [`crate::protocol::ErrorCode::is_indeterminate`]). Retrying could write it twice.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{is_misrouted, Client, ClientError, PendingResponse, ROUTE_ATTEMPTS_MAX};
use crate::batch::{encode_batch_compressed, ProducerFields, Record, BATCH_BYTES_MAX};
use crate::buggify::Point;
use crate::compression::Compression;
use crate::producer_state::add_sequence;
use crate::protocol::{Acks, Body, ErrorCode, ProduceRequest, ProduceResponse};
use crate::types::{Offset, ProducerEpoch, ProducerId, Sequence};

/// Records queued for the background task before `send` waits.
pub const PRODUCER_QUEUE_MAX: usize = 4096;
/// Closed batches waiting to be put on a connection, across all partitions, before the producer
/// stops taking records (batches of a partition whose leader cannot be reached wait here until they
/// fail).
pub const BATCHES_WAITING_MAX: usize = 256;

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    pub linger: Duration,
    pub batch_bytes_max: usize,
    pub in_flight_max: usize,
    /// Attempts after the first for batches that were definitely not sent, or that the leader
    /// refused with `NotEnoughReplicas`.
    pub retries: u32,
    pub retry_backoff: Duration,
    /// Idempotent (the default; ADR 0015): every batch carries the producer id, epoch and sequence,
    /// at most [`IDEMPOTENT_IN_FLIGHT_MAX`] batches per partition are in its window (see there), and
    /// a batch is re-sent after any failure that may be transient (a broken connection, a leader
    /// change, a timeout) until it gets a definite answer or `delivery_timeout` passes.
    pub idempotent: bool,
    /// With `idempotent`: how long after its batch closed a record may still be re-sent; then its
    /// outcome is reported (ambiguous if any attempt may have been appended).
    pub delivery_timeout: Duration,
    /// The codec every batch's records are compressed with (ADR 0018); `batch_bytes_max` bounds the
    /// uncompressed records.
    pub compression: Compression,
}

/// The window of an idempotent producer's partition: a new batch gets a sequence only while fewer
/// than this many batches got one since the oldest whose outcome is still unknown (acknowledged
/// ones in between included). The broker dedups the last `producer_state::PRODUCER_BATCHES_KEPT`
/// (5) batches of each producer, so a retry of any unresolved batch is always among them. Counting
/// only unanswered batches let batch n+5 start once n+1 was acknowledged while n waited to be
/// re-sent; with n..n+5 appended, n's retry had left the broker's window (`idempotent_partitions`
/// seed 20659: `OutOfOrderSequence` for the oldest batch, the sequence given up).
pub const IDEMPOTENT_IN_FLIGHT_MAX: usize = 5;

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes_max: 256 * 1024,
            in_flight_max: 16,
            retries: 5,
            retry_backoff: Duration::from_millis(100),
            idempotent: true,
            delivery_timeout: Duration::from_secs(120),
            compression: Compression::None,
        }
    }
}

/// Where a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    pub partition: u32,
    pub offset: Offset,
}

type DeliverySender = oneshot::Sender<Result<RecordMetadata, ClientError>>;

/// The outcome of one record: where it was written, or why not (see [`ClientError::is_ambiguous`]).
pub type Delivery = oneshot::Receiver<Result<RecordMetadata, ClientError>>;

/// Resolves a delivery; a producer that went away mid-flight makes the outcome unknown.
pub async fn delivered(delivery: Delivery) -> Result<RecordMetadata, ClientError> {
    delivery.await.unwrap_or_else(|_| Err(ClientError::Ambiguous("producer stopped before the answer came".into())))
}

enum Message {
    Send { topic: String, partition: Option<u32>, record: Record, delivery: DeliverySender },
    Flush { done: oneshot::Sender<()> },
}

#[derive(Clone)]
pub struct Producer {
    queue: mpsc::Sender<Message>,
    stats: Arc<Stats>,
}

/// Counters a producer keeps, for benchmarks and tests (how well records were batched).
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    records: AtomicU64,
}

/// What a producer has sent so far: produce requests put on a connection (re-sends included), and
/// the records in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStats {
    pub requests: u64,
    pub records: u64,
}

impl Producer {
    pub fn new(client: Arc<Client>, config: ProducerConfig) -> Producer {
        let (queue, receiver) = mpsc::channel(PRODUCER_QUEUE_MAX);
        let stats = Arc::new(Stats::default());
        let task = Task {
            stats: stats.clone(),
            client,
            config,
            topics: BTreeMap::new(),
            parked: BTreeMap::new(),
            parked_records: 0,
            lookups: FuturesUnordered::new(),
            open_batches: 0,
            waiting_batches: 0,
            starting: FuturesUnordered::new(),
            in_flight: FuturesUnordered::new(),
            flushes: Vec::new(),
            next_send_seq: 1,
            next_closed_seq: 1,
            producer: None,
            identity: FuturesUnordered::new(),
        };
        tokio::spawn(task.run(receiver));
        Producer { queue, stats }
    }

    pub fn stats(&self) -> ProducerStats {
        ProducerStats {
            requests: self.stats.requests.load(Ordering::Relaxed),
            records: self.stats.records.load(Ordering::Relaxed),
        }
    }

    /// Queues a record. Waits only when the producer is saturated.
    pub async fn send(&self, topic: &str, partition: Option<u32>, record: Record) -> Delivery {
        let (delivery, receiver) = oneshot::channel();
        let message = Message::Send { topic: topic.to_owned(), partition, record, delivery };
        // If the task is gone the dropped sender resolves the delivery as ambiguous-free failure.
        let _ = self.queue.send(message).await;
        receiver
    }

    /// Sends every open batch now and waits until all records sent before this call are answered.
    pub async fn flush(&self) {
        let (done, receiver) = oneshot::channel();
        if self.queue.send(Message::Flush { done }).await.is_ok() {
            let _ = receiver.await;
        }
    }
}

struct OpenBatch {
    records: Vec<Record>,
    deliveries: Vec<DeliverySender>,
    bytes: usize,
    deadline: Instant,
}

/// A closed batch on its way to its partition's leader.
struct ClosedBatch {
    /// With idempotence, `request.batch` is encoded when the batch is started with its sequence
    /// (again after its lane starts a new epoch).
    request: ProduceRequest,
    /// Set for an idempotent producer's batch.
    idem: Option<IdemBatch>,
    deliveries: Vec<DeliverySender>,
    /// Times it was put on a connection (refused sends included).
    sends: u32,
    /// Not started before this: the backoff after a refusal.
    not_before: Option<Instant>,
    /// Increases with every batch closed: lanes waiting for a request slot get one oldest first.
    closed_seq: u64,
}

/// What an idempotent producer keeps of a batch until its outcome is known.
struct IdemBatch {
    records: Vec<Record>,
    timestamp_ms: i64,
    compression: Compression,
    /// The (epoch, base sequence) its bytes carry; `None` until first started.
    assigned: Option<(ProducerEpoch, Sequence)>,
    /// Not re-sent after this (`delivery_timeout` after it closed): its outcome is reported.
    deadline: Instant,
    /// Some attempt may have been appended: an ambiguous answer, a connection lost in flight, or
    /// `DuplicatePending`. Such a batch is never given a new sequence (that could append it twice).
    maybe_appended: bool,
    /// The latest failure, reported if the batch is given up.
    last_error: Option<ClientError>,
    /// When last started, every earlier batch of its lane was resolved (acknowledged), so the
    /// partition had them all: only then does `OutOfOrderSequence` / `UnknownProducerId` for it mean
    /// the partition lost this producer's state. Sent while an earlier batch was still unresolved,
    /// such an answer may be about that batch, even if it was acknowledged before this answer came
    /// (answers on different connections come in any order: `idempotent_partitions` seed 98280204).
    sent_as_oldest: bool,
}

/// One partition's way out (see "Nothing waits inline" in the module docs).
#[derive(Default)]
struct Lane {
    open: Option<OpenBatch>,
    /// Closed batches not on a connection yet, in send order (a refused batch being retried first).
    waiting: VecDeque<ClosedBatch>,
    /// The lane's head batch is being started; the next one waits for it.
    starting: bool,
    /// The send sequence number of the partition's latest batch put on a connection.
    last_sent: u64,
    /// The lane's latest batch used up its retries without reaching the broker: later ones try once.
    unreachable: bool,
    /// Idempotent: this partition's producer epoch (`None`: the one `InitProducerId` gave).
    epoch: Option<ProducerEpoch>,
    /// Idempotent: the sequence the next batch started in this epoch gets.
    next_sequence: Sequence,
    /// Idempotent: batches started and not answered yet (at most [`IDEMPOTENT_IN_FLIGHT_MAX`]).
    unanswered: usize,
    /// Idempotent: a batch was lost to the broker's sequence (a definite failure, a given-up batch,
    /// or state the partition lost): once every started batch is answered, the lane starts a new
    /// epoch at sequence 0 (KIP-360) and its waiting batches get new sequences. `Some` says why.
    reset_pending: Option<ResetCause>,
    /// Idempotent: the `closed_seq` of every batch of the lane whose outcome is not known yet.
    outstanding: BTreeSet<u64>,
    /// Idempotent: the `closed_seq` of the batches given a sequence in this epoch, in sequence
    /// order, from the oldest whose outcome is not known (older ones are dropped as they resolve).
    /// A new batch gets a sequence only while it holds fewer than [`IDEMPOTENT_IN_FLIGHT_MAX`].
    window: VecDeque<u64>,
}

impl Lane {
    /// Nothing of this lane is waiting or being started: its open batch may close on its linger.
    fn is_idle(&self) -> bool {
        !self.starting && self.waiting.is_empty()
    }
}

struct TopicState {
    partitions: u32,
    /// Indexed by partition.
    lanes: Vec<Lane>,
    /// Where keyless records go until that partition's batch is sent.
    sticky: Option<u32>,
}

/// A record for a topic whose partition count is being looked up.
struct Parked {
    partition: Option<u32>,
    record: Record,
    delivery: DeliverySender,
}

/// A batch that was started: on its leader's connection, or definitely not sent.
struct Started {
    topic: String,
    partition: u32,
    batch: ClosedBatch,
    result: Result<(String, PendingResponse), ClientError>,
}

/// What an in-flight request's future hands back to the task.
enum Returned {
    /// Answered and reported (or not waited for).
    Done,
    /// Refused without being appended (not idempotent): perhaps to be re-sent.
    Refused(Refused),
    /// An idempotent batch's answer: the task decides (see "Idempotence" in the module docs).
    Idempotent(Answered),
}

struct Answered {
    topic: String,
    partition: u32,
    batch: ClosedBatch,
    result: Result<Body, ClientError>,
}

/// A batch its partition's leader refused without appending it: perhaps to be re-sent.
struct Refused {
    topic: String,
    partition: u32,
    batch: ClosedBatch,
    /// The send sequence number of the refused send (compared with the partition's latest).
    send_seq: u64,
    code: ErrorCode,
    /// The refusal, reported if the batch is not re-sent.
    error: ClientError,
}

type Lookup = (String, Result<u32, ClientError>);

struct Task {
    stats: Arc<Stats>,
    client: Arc<Client>,
    config: ProducerConfig,
    /// Per topic: partition count, lanes, sticky partition. One map lookup per record.
    topics: BTreeMap<String, TopicState>,
    /// Per topic being looked up: its records, in arrival order.
    parked: BTreeMap<String, Vec<Parked>>,
    parked_records: usize,
    lookups: FuturesUnordered<BoxFuture<'static, Lookup>>,
    /// Open batches across all lanes (to know when the task is idle).
    open_batches: usize,
    /// Closed batches across all lanes, not being started.
    waiting_batches: usize,
    starting: FuturesUnordered<BoxFuture<'static, Started>>,
    in_flight: FuturesUnordered<BoxFuture<'static, Returned>>,
    /// Idempotent: this producer's id, once `InitProducerId` answered, and its epoch.
    producer: Option<(ProducerId, ProducerEpoch)>,
    /// Idempotent: the `InitProducerId` request (retried until it succeeds), while one is needed.
    identity: FuturesUnordered<BoxFuture<'static, (ProducerId, ProducerEpoch)>>,
    flushes: Vec<oneshot::Sender<()>>,
    /// Increases with every produce request put on a connection.
    next_send_seq: u64,
    next_closed_seq: u64,
}

impl Task {
    async fn run(mut self, mut queue: mpsc::Receiver<Message>) {
        let mut queue_open = true;
        loop {
            // Records that arrived while the task was busy join the open batches before anything is
            // sent, as Kafka's accumulator does: with `linger` 0 a record waits for nothing, but
            // records queued meanwhile go out together, not as one request each.
            let mut drained = 0;
            while queue_open && self.takes_records() && drained < PRODUCER_QUEUE_MAX {
                drained += 1;
                match queue.try_recv() {
                    Ok(message) => self.handle(message),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => self.handle_closed(&mut queue_open),
                }
            }
            self.close_due();
            self.start_ready();
            if self.is_idle() {
                for done in self.flushes.drain(..) {
                    let _ = done.send(());
                }
                if !queue_open {
                    break;
                }
            }
            let deadline = self.next_deadline();
            let takes_records = self.takes_records();
            tokio::select! {
                biased;
                Some(started) = self.starting.next(), if !self.starting.is_empty() => self.on_started(started),
                Some(returned) = self.in_flight.next(), if !self.in_flight.is_empty() => match returned {
                    Returned::Done => {}
                    Returned::Refused(refused) => self.on_refused(refused),
                    Returned::Idempotent(answered) => self.on_answered(answered),
                },
                Some(producer) = self.identity.next(), if !self.identity.is_empty() => self.producer = Some(producer),
                Some((topic, result)) = self.lookups.next(), if !self.lookups.is_empty() => {
                    self.on_lookup(topic, result);
                }
                // Due batches are closed and started at the top of the loop.
                _ = crate::clock::sleep_until_opt(deadline), if deadline.is_some() => {}
                message = queue.recv(), if queue_open && takes_records => match message {
                    None => self.handle_closed(&mut queue_open),
                    Some(message) => self.handle(message),
                },
            }
        }
    }

    /// Whether another produce request may be started (at most `in_flight_max` are outstanding or
    /// being started).
    fn has_request_slot(&self) -> bool {
        self.in_flight.len() + self.starting.len() < self.config.in_flight_max
    }

    /// Whether the task takes more records from its queue (backpressure otherwise).
    fn takes_records(&self) -> bool {
        self.has_request_slot()
            && self.waiting_batches < BATCHES_WAITING_MAX
            && self.parked_records < PRODUCER_QUEUE_MAX
    }

    fn is_idle(&self) -> bool {
        self.open_batches == 0
            && self.waiting_batches == 0
            && self.parked.is_empty()
            && self.starting.is_empty()
            && self.in_flight.is_empty()
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Send { topic, partition, record, delivery } => self.add(topic, partition, record, delivery),
            Message::Flush { done } => {
                self.close_all();
                self.flushes.push(done);
            }
        }
    }

    /// Every `Producer` handle is gone: send what is open and stop once it is answered.
    fn handle_closed(&mut self, queue_open: &mut bool) {
        *queue_open = false;
        self.close_all();
    }

    /// Every lane: (topic, partition, lane).
    fn lanes(&self) -> impl Iterator<Item = (&String, u32, &Lane)> + '_ {
        self.topics.iter().flat_map(|(topic, state)| {
            state.lanes.iter().enumerate().map(move |(partition, lane)| (topic, partition as u32, lane))
        })
    }

    fn lane_mut(&mut self, topic: &str, partition: u32) -> Option<&mut Lane> {
        self.topics.get_mut(topic).and_then(|state| state.lanes.get_mut(partition as usize))
    }

    /// When the loop must wake up on its own: the next linger deadline of an idle lane, or the end
    /// of a retry's backoff. `None` without a request slot (then only an answer frees one).
    fn next_deadline(&self) -> Option<Instant> {
        if !self.has_request_slot() {
            return None;
        }
        let lane_deadline = |lane: &Lane| match lane.waiting.front() {
            _ if lane.starting => None,
            // An idempotent head may be held back (no producer id yet, a full window, a pending
            // reset): it is given up at its delivery deadline all the same.
            Some(head) => match (head.not_before, head.idem.as_ref().map(|idem| idem.deadline)) {
                (Some(at), Some(deadline)) => Some(at.min(deadline)),
                (at, deadline) => at.or(deadline),
            },
            None => lane.open.as_ref().map(|batch| batch.deadline),
        };
        self.lanes().filter_map(|(_, _, lane)| lane_deadline(lane)).min()
    }

    /// Closes the open batches of idle lanes whose linger has passed, oldest first, while request
    /// slots are free (each is started at once).
    fn close_due(&mut self) {
        if self.open_batches == 0 {
            return;
        }
        let now = Instant::now();
        let mut due: Vec<(Instant, String, u32)> = self
            .lanes()
            .filter(|(_, _, lane)| lane.is_idle())
            .filter_map(|(topic, partition, lane)| {
                let deadline = lane.open.as_ref()?.deadline;
                (deadline <= now).then(|| (deadline, topic.clone(), partition))
            })
            .collect();
        due.sort();
        for (_, topic, partition) in due {
            if !self.has_request_slot() {
                break;
            }
            self.close_batch(&topic, partition);
        }
    }

    fn close_all(&mut self) {
        let open: Vec<(String, u32)> = self
            .lanes()
            .filter(|(_, _, lane)| lane.open.is_some())
            .map(|(topic, partition, _)| (topic.clone(), partition))
            .collect();
        for (topic, partition) in open {
            self.close_batch(&topic, partition);
        }
    }

    /// Starts the head batch of every lane that has one due and nothing being started, oldest
    /// first, while request slots are free.
    fn start_ready(&mut self) {
        if self.waiting_batches == 0 {
            return;
        }
        let now = Instant::now();
        let mut ready: Vec<(u64, String, u32)> = self
            .lanes()
            .filter(|(_, _, lane)| !lane.starting)
            .filter_map(|(topic, partition, lane)| {
                let head = lane.waiting.front()?;
                head.not_before.is_none_or(|at| at <= now).then(|| (head.closed_seq, topic.clone(), partition))
            })
            .collect();
        ready.sort();
        for (_, topic, partition) in ready {
            if !self.has_request_slot() {
                break;
            }
            self.start_lane(&topic, partition);
        }
    }

    fn add(&mut self, topic: String, partition: Option<u32>, record: Record, delivery: DeliverySender) {
        if !self.topics.contains_key(&topic) {
            return self.park(topic, Parked { partition, record, delivery });
        }
        let size = record_size_estimate(&record);
        if size + 128 > self.config.batch_bytes_max.min(BATCH_BYTES_MAX) {
            let message =
                format!("record of ~{size} bytes exceeds the batch limit of {} bytes", self.config.batch_bytes_max);
            let _ = delivery.send(Err(ClientError::InvalidArgument(message)));
            return;
        }
        let state = self.topics.get_mut(&topic).expect("checked above");
        let count = state.partitions;
        let partition = match (partition, record.key.as_deref()) {
            (Some(partition), _) if partition >= count => {
                let message = format!("topic {topic:?} has {count} partitions; there is no partition {partition}");
                let _ = delivery.send(Err(ClientError::InvalidArgument(message)));
                return;
            }
            (Some(partition), _) => partition,
            (None, Some(key)) => (murmur2(key) & 0x7fff_ffff) % count,
            (None, None) => *state.sticky.get_or_insert_with(|| crate::random::rng().random_range(0..count)),
        };
        let full = state.lanes[partition as usize]
            .open
            .as_ref()
            .is_some_and(|batch| batch.bytes + size > self.config.batch_bytes_max);
        if full {
            self.close_batch(&topic, partition);
        }
        let linger = self.config.linger;
        let lane = self.lane_mut(&topic, partition).expect("checked above");
        let opened = lane.open.is_none();
        let batch = lane.open.get_or_insert_with(|| OpenBatch {
            records: Vec::new(),
            deliveries: Vec::new(),
            bytes: 0,
            deadline: Instant::now() + linger,
        });
        batch.records.push(record);
        batch.deliveries.push(delivery);
        batch.bytes += size;
        let now_full = batch.bytes >= self.config.batch_bytes_max || crate::buggify::buggify(Point::ShrinkBatch);
        self.open_batches += usize::from(opened);
        // A full batch closes now; any other waits for its linger (closed by `close_due`, which with
        // `linger` 0 runs as soon as the records queued meanwhile have joined it).
        if now_full {
            self.close_batch(&topic, partition);
        }
    }

    /// Holds a record of a topic not known yet; the first one starts the topic's lookup.
    fn park(&mut self, topic: String, parked: Parked) {
        self.parked_records += 1;
        let records = self.parked.entry(topic.clone()).or_default();
        if records.is_empty() {
            let client = self.client.clone();
            self.lookups.push(Box::pin(async move {
                let result = match client.topic(&topic).await {
                    Ok(info) if !info.partitions.is_empty() => Ok(info.partitions.len() as u32),
                    Ok(_) => Err(ClientError::Protocol(format!("topic {topic:?} has no partitions"))),
                    Err(error) => Err(error),
                };
                (topic, result)
            }));
        }
        records.push(parked);
    }

    /// A topic lookup finished: its parked records join their batches in arrival order, or fail.
    fn on_lookup(&mut self, topic: String, result: Result<u32, ClientError>) {
        let parked = self.parked.remove(&topic).unwrap_or_default();
        self.parked_records -= parked.len();
        match result {
            Ok(partitions) => {
                self.topics.entry(topic.clone()).or_insert_with(|| TopicState {
                    partitions,
                    lanes: (0..partitions).map(|_| Lane::default()).collect(),
                    sticky: None,
                });
                for Parked { partition, record, delivery } in parked {
                    self.add(topic.clone(), partition, record, delivery);
                }
            }
            Err(error) => {
                for Parked { delivery, .. } in parked {
                    let _ = delivery.send(Err(error.clone()));
                }
            }
        }
    }

    /// Encodes the open batch of a partition and puts it at the end of its lane; starts it if the
    /// lane and a request slot are free.
    fn close_batch(&mut self, topic: &str, partition: u32) {
        let Some(state) = self.topics.get_mut(topic) else { return };
        let Some(batch) = state.lanes[partition as usize].open.take() else { return };
        if state.sticky == Some(partition) {
            state.sticky = None;
        }
        self.open_batches -= 1;
        let timestamp_ms = wall_clock_ms();
        let closed_seq = self.next_closed_seq;
        self.next_closed_seq += 1;
        let mut request = ProduceRequest {
            topic: topic.to_owned(),
            partition,
            acks: self.config.acks as i32,
            batch: Bytes::new(),
            timeout_ms: self.client.config().request_timeout.as_millis() as u32,
        };
        let idem = if self.is_idempotent() {
            self.lane_mut(topic, partition).expect("exists above").outstanding.insert(closed_seq);
            Some(IdemBatch {
                records: batch.records,
                timestamp_ms,
                compression: self.config.compression,
                assigned: None,
                deadline: Instant::now() + self.config.delivery_timeout,
                maybe_appended: false,
                last_error: None,
                sent_as_oldest: false,
            })
        } else {
            request.batch =
                encode_batch_compressed(&batch.records, timestamp_ms, ProducerFields::NONE, self.config.compression);
            None
        };
        let closed =
            ClosedBatch { request, idem, deliveries: batch.deliveries, sends: 0, not_before: None, closed_seq };
        self.lane_mut(topic, partition).expect("exists above").waiting.push_back(closed);
        self.waiting_batches += 1;
        self.start_lane(topic, partition);
    }

    /// Idempotence is on (it needs `acks = all`: see [`ProducerConfig::idempotent`]).
    fn is_idempotent(&self) -> bool {
        self.config.idempotent && self.config.acks == Acks::All
    }

    /// Starts the lane's head batch (leader lookup, connect, hand to the connection) in a future of
    /// its own, if nothing of the lane is being started, the head is due and a request slot is free.
    fn start_lane(&mut self, topic: &str, partition: u32) {
        if !self.has_request_slot() {
            return;
        }
        if self.is_idempotent() && !self.idempotent_lane_may_start(topic, partition) {
            return;
        }
        let retries = self.config.retries;
        let producer = self.producer;
        let Some(lane) = self.lane_mut(topic, partition) else { return };
        let due = lane.waiting.front().is_some_and(|head| head.not_before.is_none_or(|at| at <= Instant::now()));
        if lane.starting || !due {
            return;
        }
        let mut batch = lane.waiting.pop_front().expect("checked above");
        lane.starting = true;
        if let (Some(idem), Some((producer_id, base_epoch))) = (batch.idem.as_mut(), producer) {
            if assign_sequence(lane, idem, &mut batch.request, producer_id, base_epoch) {
                lane.window.push_back(batch.closed_seq);
            }
            idem.sent_as_oldest = lane.outstanding.first() == Some(&batch.closed_seq);
            lane.unanswered += 1;
        }
        let retries = if lane.unreachable { 0 } else { retries };
        self.waiting_batches -= 1;
        let client = self.client.clone();
        let backoff = self.config.retry_backoff;
        let topic = topic.to_owned();
        self.starting.push(Box::pin(async move {
            let result = start_batch(&client, &topic, partition, &batch.request, retries, backoff).await;
            Started { topic, partition, batch, result }
        }));
    }

    /// A start finished: the batch is on the wire (its answer awaited in `in_flight`), or it
    /// definitely was not sent and fails.
    fn on_started(&mut self, started: Started) {
        let Started { topic, partition, mut batch, result } = started;
        let lane = self.topics.get_mut(&topic).and_then(|state| state.lanes.get_mut(partition as usize));
        let lane = lane.expect("a started batch's lane exists");
        lane.starting = false;
        let (addr, pending) = match result {
            Ok(started) => started,
            Err(error) if batch.idem.is_some() => {
                // Definitely not sent: re-sent until its delivery timeout.
                lane.unanswered -= 1;
                return self.retry_idempotent(&topic, partition, batch, error, false);
            }
            Err(error) => {
                lane.unreachable = matches!(error, ClientError::Connect { .. });
                return fail(batch.deliveries, &error);
            }
        };
        lane.unreachable = false;
        let send_seq = self.next_send_seq;
        self.next_send_seq += 1;
        lane.last_sent = send_seq;
        batch.sends += 1;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats.records.fetch_add(batch.deliveries.len() as u64, Ordering::Relaxed);
        let not_waited_for = self.config.acks == Acks::None;
        if not_waited_for {
            // Kafka's acks=0: the record counts as sent once it is on the connection; its offset is
            // unknown and the broker's answer, errors included, is not reported. The answer is still
            // awaited below, only to hold the request slot (backpressure).
            let offset = Offset(-1);
            for delivery in batch.deliveries.drain(..) {
                let _ = delivery.send(Ok(RecordMetadata { partition, offset }));
            }
        }
        let client = self.client.clone();
        self.in_flight.push(Box::pin(async move {
            let result = client.finish(&addr, pending, Duration::ZERO).await;
            if leader_may_have_moved(&result) {
                // The next send must look the leader up again, not aim at a broker that just gave up
                // leadership or went away (a rolling restart's next send failed to connect).
                client.forget_leaders(&topic);
            }
            if batch.idem.is_some() {
                return Returned::Idempotent(Answered { topic, partition, batch, result });
            }
            if not_waited_for {
                return Returned::Done;
            }
            answer(result, topic, partition, batch, send_seq).map_or(Returned::Done, Returned::Refused)
        }));
    }

    /// Puts a refused batch back at the head of its lane, to be re-sent after a backoff, if no later
    /// batch of its partition went out (or is going out) since and its budget allows; otherwise the
    /// refusal is its (definite) outcome.
    fn on_refused(&mut self, refused: Refused) {
        let Refused { topic, partition, mut batch, send_seq, code, error } = refused;
        let sends_max = if code == ErrorCode::NotEnoughReplicas {
            self.config.retries.saturating_add(1)
        } else {
            ROUTE_ATTEMPTS_MAX
        };
        let lane = self.topics.get(&topic).and_then(|state| state.lanes.get(partition as usize));
        let in_order = lane.is_some_and(|lane| lane.last_sent == send_seq && !lane.starting);
        if !in_order || batch.sends >= sends_max {
            return fail(batch.deliveries, &error);
        }
        if is_misrouted(code) {
            self.client.forget_leaders(&topic);
        }
        let backoff = self.config.retry_backoff * 2u32.saturating_pow(batch.sends.saturating_sub(1).min(5));
        batch.not_before = Some(Instant::now() + backoff.min(Duration::from_millis(RETRY_BACKOFF_MS_MAX)));
        tracing::debug!(topic, partition, ?code, sends = batch.sends, "produce refused; re-sending after a backoff");
        self.lane_mut(&topic, partition).expect("checked above").waiting.push_front(batch);
        self.waiting_batches += 1;
    }
}

// ---- idempotence (see "Idempotence" in the module docs) ------------------------------------------

impl Task {
    /// Whether an idempotent lane may start its head batch now: the producer id is known (asked for
    /// if not), no reset waits for answers (the reset is done here once they are all in), the window
    /// of unanswered batches has room. A head past its delivery deadline is given up here.
    fn idempotent_lane_may_start(&mut self, topic: &str, partition: u32) -> bool {
        self.give_up_expired_head(topic, partition);
        if self.producer.is_none() {
            self.request_identity();
            return false;
        }
        let Some(lane) = self.lane_mut(topic, partition) else { return false };
        if lane.reset_pending.is_some() {
            if lane.unanswered > 0 || lane.starting {
                return false;
            }
            self.reset_lane(topic, partition);
        }
        let Some(lane) = self.lane_mut(topic, partition) else { return false };
        if lane.unanswered >= IDEMPOTENT_IN_FLIGHT_MAX {
            return false;
        }
        // A batch that already has its sequence goes again whatever the window (it is in it); a
        // new one only while the window has room.
        while lane.window.front().is_some_and(|oldest| !lane.outstanding.contains(oldest)) {
            lane.window.pop_front();
        }
        let epoch = lane.epoch;
        let head_sequenced = lane.waiting.front().is_some_and(|batch| {
            batch.idem.as_ref().is_some_and(|idem| idem.assigned.is_some_and(|(assigned, _)| Some(assigned) == epoch))
        });
        head_sequenced || lane.window.len() < IDEMPOTENT_IN_FLIGHT_MAX
    }

    /// Asks for a producer id, once: the request is retried with backoff until a broker answers.
    fn request_identity(&mut self) {
        if !self.identity.is_empty() || self.producer.is_some() {
            return;
        }
        let client = self.client.clone();
        let mut backoff = self.config.retry_backoff;
        self.identity.push(Box::pin(async move {
            loop {
                match client.init_producer_id().await {
                    Ok(producer) => return producer,
                    Err(error) => {
                        tracing::warn!(%error, "InitProducerId failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(RETRY_BACKOFF_MS_MAX));
                    }
                }
            }
        }));
    }

    /// Gives up the lane's head batches whose delivery deadline passed while they waited.
    fn give_up_expired_head(&mut self, topic: &str, partition: u32) {
        let now = Instant::now();
        loop {
            let Some(lane) = self.lane_mut(topic, partition) else { return };
            let expired =
                lane.waiting.front().and_then(|head| head.idem.as_ref()).is_some_and(|idem| idem.deadline <= now);
            if !expired || lane.starting {
                return;
            }
            let batch = lane.waiting.pop_front().expect("checked above");
            self.waiting_batches -= 1;
            self.give_up(topic, partition, batch);
        }
    }

    /// An idempotent batch's answer: acknowledged, re-sent, or failed for good.
    fn on_answered(&mut self, answered: Answered) {
        let Answered { topic, partition, batch, result } = answered;
        if let Some(lane) = self.lane_mut(&topic, partition) {
            lane.unanswered -= 1;
        }
        let response = match result {
            Ok(Body::ProduceResponse(response)) => response,
            Ok(other) => {
                let error = ClientError::Protocol(format!("unexpected response {other:?}"));
                return self.retry_idempotent(&topic, partition, batch, error, true);
            }
            // A connection that failed before the request was written never sent it.
            Err(error @ ClientError::Connect { .. }) => {
                return self.retry_idempotent(&topic, partition, batch, error, false)
            }
            Err(error) => return self.retry_idempotent(&topic, partition, batch, error, true),
        };
        let Some(info) = response.error else {
            return self.resolve(&topic, partition, batch, Ok(Offset(response.base_offset)));
        };
        let code = info.error_code();
        let error = ClientError::Server { code, message: info.message };
        match idempotent_answer(code) {
            AnswerKind::Retry { maybe_appended } => {
                if is_misrouted(code) {
                    self.client.forget_leaders(&topic);
                }
                self.retry_idempotent(&topic, partition, batch, error, maybe_appended);
            }
            AnswerKind::SequenceLost => {
                // A gap is normal while an earlier batch is still on its way; for a batch sent when
                // every earlier one was acknowledged it means the partition lost this producer's
                // state: a new epoch (KIP-360). Being the oldest now is not enough: the earlier
                // batch may have been appended after the partition answered this one.
                let sent_as_oldest = batch.idem.as_ref().is_some_and(|idem| idem.sent_as_oldest);
                let lane = self.lane_mut(&topic, partition).expect("an answered batch's lane exists");
                if sent_as_oldest && lane.outstanding.first() == Some(&batch.closed_seq) {
                    tracing::warn!(topic, partition, ?code, "the partition lost this producer's sequence; new epoch");
                    lane.reset_for(ResetCause::SequenceLost);
                }
                self.retry_idempotent(&topic, partition, batch, error, false);
            }
            AnswerKind::Fail => {
                // Its sequence is never appended: later batches must move to a new epoch.
                self.lane_mut(&topic, partition)
                    .expect("an answered batch's lane exists")
                    .reset_for(ResetCause::GivenUp);
                self.resolve(&topic, partition, batch, Err(error));
            }
        }
    }

    /// Puts an idempotent batch back in its lane (in sequence order) to be re-sent after a backoff,
    /// or gives it up once its delivery deadline has passed.
    fn retry_idempotent(
        &mut self,
        topic: &str,
        partition: u32,
        mut batch: ClosedBatch,
        error: ClientError,
        maybe_appended: bool,
    ) {
        let idem = batch.idem.as_mut().expect("an idempotent batch");
        idem.maybe_appended |= maybe_appended;
        tracing::debug!(topic, partition, assigned = ?idem.assigned, %error, "idempotent produce answer");
        idem.last_error = Some(error);
        let now = Instant::now();
        if idem.deadline <= now {
            return self.give_up(topic, partition, batch);
        }
        let backoff = self.config.retry_backoff * 2u32.saturating_pow(batch.sends.saturating_sub(1).min(5));
        batch.not_before = Some(now + backoff.min(Duration::from_millis(RETRY_BACKOFF_MS_MAX)));
        tracing::debug!(topic, partition, sends = batch.sends, "idempotent produce not acknowledged; re-sending");
        let lane = self.lane_mut(topic, partition).expect("a retried batch's lane exists");
        let position = lane.waiting.partition_point(|waiting| waiting.closed_seq < batch.closed_seq);
        lane.waiting.insert(position, batch);
        self.waiting_batches += 1;
    }

    /// Reports a batch whose delivery timeout passed: ambiguous if an attempt may have been
    /// appended, else its latest failure. Its sequence is lost to the lane, which starts a new epoch.
    fn give_up(&mut self, topic: &str, partition: u32, batch: ClosedBatch) {
        let idem = batch.idem.as_ref().expect("an idempotent batch");
        let last = idem.last_error.as_ref().map_or_else(|| "never sent".to_owned(), ToString::to_string);
        let error = if idem.maybe_appended {
            ClientError::Ambiguous(format!("delivery timeout passed; the latest attempt: {last}"))
        } else {
            idem.last_error.clone().unwrap_or_else(|| ClientError::Ambiguous("delivery timeout passed".into()))
        };
        if let Some(lane) = self.lane_mut(topic, partition) {
            lane.reset_for(ResetCause::GivenUp);
        }
        self.resolve(topic, partition, batch, Err(error));
    }

    /// Answers a batch's deliveries and forgets it.
    fn resolve(&mut self, topic: &str, partition: u32, batch: ClosedBatch, outcome: Result<Offset, ClientError>) {
        if let Some(lane) = self.lane_mut(topic, partition) {
            lane.outstanding.remove(&batch.closed_seq);
        }
        for (index, delivery) in batch.deliveries.into_iter().enumerate() {
            let result =
                outcome.clone().map(|base| RecordMetadata { partition, offset: Offset(base.0 + index as i64) });
            let _ = delivery.send(result);
        }
    }

    /// Starts a new epoch in a lane whose started batches are all answered: sequences restart at 0
    /// and the waiting batches are numbered again when started. A waiting batch that may already
    /// have been appended is reported ambiguous instead (a new sequence could append it twice).
    fn reset_lane(&mut self, topic: &str, partition: u32) {
        let base_epoch = self.producer.map(|(_, epoch)| epoch);
        let lane = self.lane_mut(topic, partition).expect("a lane being reset exists");
        let epoch = lane.epoch.or(base_epoch).unwrap_or(ProducerEpoch(0));
        lane.epoch = Some(ProducerEpoch(epoch.0.saturating_add(1)));
        lane.next_sequence = Sequence(0);
        lane.window.clear();
        let cause = lane.reset_pending.take();
        let (keep, unsure): (Vec<ClosedBatch>, Vec<ClosedBatch>) = std::mem::take(&mut lane.waiting)
            .into_iter()
            .partition(|batch| !batch.idem.as_ref().is_some_and(|idem| idem.maybe_appended));
        lane.waiting = keep.into();
        tracing::info!(topic, partition, epoch = epoch.0 + 1, "idempotent lane starts a new producer epoch");
        self.waiting_batches -= unsure.len();
        for batch in unsure {
            let error = match cause {
                Some(ResetCause::SequenceLost) => ClientError::SequenceLost(
                    "it answered OutOfOrderSequence or UnknownProducerId for a batch sent after every earlier \
                     one was acknowledged; this batch may have been appended before that"
                        .into(),
                ),
                _ => ClientError::Ambiguous(
                    "an earlier batch to this partition was given up (delivery timeout or a definite failure); \
                     this one may have been appended and is not sent again in the new producer epoch"
                        .into(),
                ),
            };
            self.resolve(topic, partition, batch, Err(error));
        }
    }
}

/// Why an idempotent lane starts a new producer epoch; it decides what its maybe-appended batches
/// are reported as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ResetCause {
    /// The producer gave a batch up: its delivery timeout passed, or the broker refused it for good.
    GivenUp,
    /// The partition answered that it lost this producer's sequence (`OutOfOrderSequence` or
    /// `UnknownProducerId` for the lane's oldest batch).
    SequenceLost,
}

impl Lane {
    /// Asks for a new epoch once the lane's started batches are answered; a lost sequence outranks
    /// a given-up batch when both happened.
    fn reset_for(&mut self, cause: ResetCause) {
        self.reset_pending = self.reset_pending.max(Some(cause));
    }
}

/// What an idempotent producer does with a produce error (see the module docs).
enum AnswerKind {
    /// Re-send the same batch with the same sequence; `maybe_appended` when this attempt may have
    /// been appended.
    Retry { maybe_appended: bool },
    /// The broker's sequence for this producer does not continue where the batch starts.
    SequenceLost,
    /// A definite failure: report it.
    Fail,
}

fn idempotent_answer(code: ErrorCode) -> AnswerKind {
    match code {
        ErrorCode::OutOfOrderSequence | ErrorCode::UnknownProducerId => AnswerKind::SequenceLost,
        ErrorCode::DuplicatePending => AnswerKind::Retry { maybe_appended: true },
        code if code.is_indeterminate() => AnswerKind::Retry { maybe_appended: true },
        ErrorCode::NotLeader
        | ErrorCode::FencedLeaderEpoch
        | ErrorCode::UnknownLeaderEpoch
        | ErrorCode::LeaderNotReady
        | ErrorCode::NotEnoughReplicas
        | ErrorCode::Busy
        | ErrorCode::ShuttingDown
        | ErrorCode::StorageError
        | ErrorCode::DiskFull => AnswerKind::Retry { maybe_appended: false },
        _ => AnswerKind::Fail,
    }
}

/// Gives an idempotent batch its sequence in the lane's current epoch, if it has none in it yet,
/// and encodes its bytes with them; returns whether it got a new one.
fn assign_sequence(
    lane: &mut Lane,
    idem: &mut IdemBatch,
    request: &mut ProduceRequest,
    producer_id: ProducerId,
    base_epoch: ProducerEpoch,
) -> bool {
    let epoch = *lane.epoch.get_or_insert(base_epoch);
    if idem.assigned.is_some_and(|(assigned, _)| assigned == epoch) {
        return false;
    }
    let sequence = lane.next_sequence;
    lane.next_sequence = add_sequence(sequence, idem.records.len() as i32);
    idem.assigned = Some((epoch, sequence));
    let fields = ProducerFields { producer_id, producer_epoch: epoch, base_sequence: sequence };
    request.batch = encode_batch_compressed(&idem.records, idem.timestamp_ms, fields, idem.compression);
    true
}

/// Puts a produce request on its partition leader's connection (in order), retrying with backoff
/// while it definitely was not sent: no connection, or no leader known. Runs beside the producer's
/// loop, never inside it.
async fn start_batch(
    client: &Client,
    topic: &str,
    partition: u32,
    request: &ProduceRequest,
    retries: u32,
    first_backoff: Duration,
) -> Result<(String, PendingResponse), ClientError> {
    let mut backoff = first_backoff;
    let mut attempt = 0;
    loop {
        let started = match client.leader_addr(topic, partition).await {
            Ok(addr) => client.start(&addr, Body::ProduceRequest(request.clone())).await.map(|p| (addr, p)),
            Err(error) => Err(error),
        };
        let retriable = |error: &ClientError| match error {
            ClientError::Connect { .. } => true,
            ClientError::Server { code, .. } => is_misrouted(*code) && *code != ErrorCode::UnknownTopic,
            _ => false,
        };
        match started {
            Ok(started) => return Ok(started),
            Err(error) if retriable(&error) && attempt < retries => {
                tracing::debug!(%error, attempt, "produce not sent; retrying");
                client.forget_leaders(topic);
                attempt += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(RETRY_BACKOFF_MS_MAX));
            }
            Err(error) => {
                // Out of retries: the cached leader (dead, or moved) must not be aimed at again by
                // the next send (tests/cluster_process.rs saw every later send fail for 30 s).
                if retriable(&error) {
                    client.forget_leaders(topic);
                }
                return Err(error);
            }
        }
    }
}

/// The longest wait between two attempts to send a batch (the backoff doubles up to it).
pub const RETRY_BACKOFF_MS_MAX: u64 = 2_000;

/// Refusals after which a batch is definitely not appended and may be re-sent (see the module docs).
fn is_refusal(code: ErrorCode) -> bool {
    is_misrouted(code) || code == ErrorCode::NotEnoughReplicas
}

fn fail(deliveries: Vec<DeliverySender>, error: &ClientError) {
    for delivery in deliveries {
        let _ = delivery.send(Err(error.clone()));
    }
}

/// Answers a batch's deliveries from its produce response, or hands the batch back when the broker
/// refused it without appending it: the producer task decides whether re-sending keeps the order.
/// Whether a produce's outcome says its partition's leader may be elsewhere now: it lost leadership
/// after the append (`NotLeaderAfterAppend`), or the connection failed with the request in flight.
fn leader_may_have_moved(result: &Result<Body, ClientError>) -> bool {
    match result {
        Ok(Body::ProduceResponse(ProduceResponse { error: Some(info), .. })) => {
            info.error_code() == ErrorCode::NotLeaderAfterAppend
        }
        Ok(_) => false,
        Err(error) => matches!(error, ClientError::Ambiguous(_) | ClientError::Connect { .. }),
    }
}

fn answer(
    result: Result<Body, ClientError>,
    topic: String,
    partition: u32,
    batch: ClosedBatch,
    send_seq: u64,
) -> Option<Refused> {
    let outcome = match result {
        Ok(Body::ProduceResponse(ProduceResponse { error: None, base_offset, .. })) => Ok(Offset(base_offset)),
        Ok(Body::ProduceResponse(ProduceResponse { error: Some(info), .. })) => {
            let code = info.error_code();
            let error = ClientError::Server { code, message: info.message };
            if is_refusal(code) {
                return Some(Refused { topic, partition, batch, send_seq, code, error });
            }
            // Anything else is final: a definite failure, or ambiguous (`is_indeterminate`).
            Err(error)
        }
        Ok(other) => Err(ClientError::Protocol(format!("unexpected response {other:?}"))),
        Err(error) => Err(error),
    };
    for (index, delivery) in batch.deliveries.into_iter().enumerate() {
        let _ = delivery
            .send(outcome.clone().map(|base| RecordMetadata { partition, offset: Offset(base.0 + index as i64) }));
    }
    None
}

pub use crate::clock::wall_clock_ms;

fn record_size_estimate(record: &Record) -> usize {
    let headers: usize =
        record.headers.iter().map(|(key, value)| key.len() + value.as_ref().map_or(0, |v| v.len()) + 10).sum();
    record.key.as_ref().map_or(0, |key| key.len()) + record.value.as_ref().map_or(0, |value| value.len()) + headers + 24
}

/// Kafka's murmur2 variant (seed 0x9747b28c), as its default partitioner uses it.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len() as u32;
    let mut hash: u32 = 0x9747_b28c ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M);
        hash ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        hash ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        hash ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        hash ^= rest[0] as u32;
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^= hash >> 15;
    hash
}

#[cfg(test)]
mod tests {
    use super::{idempotent_answer, is_refusal, murmur2, AnswerKind};
    use crate::protocol::ErrorCode;

    /// A keyless record on a compacted topic gets the same answer however often it is sent: a
    /// definite failure, never retried, with or without idempotence.
    #[test]
    fn invalid_record_is_a_definite_failure() {
        assert!(matches!(idempotent_answer(ErrorCode::InvalidRecord), AnswerKind::Fail));
        assert!(!is_refusal(ErrorCode::InvalidRecord));
        assert!(!ErrorCode::InvalidRecord.is_indeterminate());
    }

    #[test]
    fn murmur2_matches_kafka_reference_values() {
        // Values from Kafka's own UtilsTest (org.apache.kafka.common.utils.Utils.murmur2), as i32.
        let cases: [(&[u8], i32); 5] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input) as i32, expected, "murmur2({:?})", String::from_utf8_lossy(input));
        }
    }
}
