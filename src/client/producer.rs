//! The batching producer.
//!
//! `send` hands a record to a background task and returns a [`Delivery`] future. The task keeps one
//! open batch per partition and sends it when it reaches `batch_bytes_max` or when it has waited
//! `linger`. Up to `in_flight_max` produce requests are outstanding at once; beyond that the task
//! stops taking records, so `send` waits (backpressure). Before sending, the task takes every record
//! already queued, so with `linger` 0 nothing waits on purpose, yet records that arrived while
//! requests were in flight share the next batch instead of each becoming a request (Kafka's sender
//! behaves the same way).
//!
//! Partitioning: an explicit partition wins; otherwise a key picks `murmur2(key) % partitions`
//! (Kafka's default partitioner, so keys land where a Kafka client would put them); records without
//! a key stick to one randomly chosen partition until its batch is sent (Kafka's sticky partitioner).
//!
//! Routing: each batch goes to its partition's leader (the client's metadata cache, refreshed when
//! a leader moves), over that broker's connection.
//!
//! Retries: a batch whose request definitely never left this process is retried with backoff, up to
//! `retries` times. A batch answered `NotLeader`, `UnknownPartition` or `UnknownTopic` was not
//! appended: it is re-sent to the refreshed leader, at most [`ROUTE_ATTEMPTS_MAX`] times, but only
//! while no later batch of its partition has been sent meanwhile (otherwise the retry could land
//! after a later batch, and acknowledged offsets would not follow send order; it then fails with the
//! leader's answer, a definite failure). A redirect is handled by the task itself, so no other batch
//! overtakes it. A batch whose connection broke in flight is reported ambiguous, not retried:
//! retrying could write it twice until idempotent producers exist.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{is_misrouted, Client, ClientError, PendingResponse, ROUTE_ATTEMPTS_MAX};
use crate::batch::{encode_batch, ProducerFields, Record, BATCH_BYTES_MAX};
use crate::protocol::{Acks, Body, ErrorCode, ProduceRequest, ProduceResponse};
use crate::types::Offset;

/// Records queued for the background task before `send` waits.
pub const PRODUCER_QUEUE_MAX: usize = 4096;

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    pub linger: Duration,
    pub batch_bytes_max: usize,
    pub in_flight_max: usize,
    /// Attempts after the first for batches that were definitely not sent.
    pub retries: u32,
    pub retry_backoff: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes_max: 256 * 1024,
            in_flight_max: 16,
            retries: 5,
            retry_backoff: Duration::from_millis(100),
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
            open_batches: 0,
            in_flight: FuturesUnordered::new(),
            flushes: Vec::new(),
            broker_unreachable: false,
            next_send_seq: 1,
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

struct TopicState {
    partitions: u32,
    /// Indexed by partition.
    open: Vec<Option<OpenBatch>>,
    /// Where keyless records go until that partition's batch is sent.
    sticky: Option<u32>,
    /// Indexed by partition: the send sequence number of the partition's latest batch.
    last_sent: Vec<u64>,
}

/// A batch its partition's supposed leader refused without appending it: to be re-sent.
struct Redirect {
    topic: String,
    partition: u32,
    request: ProduceRequest,
    deliveries: Vec<DeliverySender>,
    /// The batch's send sequence number (compared with the partition's latest).
    send_seq: u64,
    /// Sends so far.
    attempts: u32,
    /// The refusal, reported if the batch is not re-sent.
    error: ClientError,
}

struct Task {
    stats: Arc<Stats>,
    client: Arc<Client>,
    config: ProducerConfig,
    /// Per topic: partition count, open batches, sticky partition. One hash lookup per record.
    topics: BTreeMap<String, TopicState>,
    /// Open batches across all topics (to know when the task is idle).
    open_batches: usize,
    in_flight: FuturesUnordered<BoxFuture<'static, Option<Redirect>>>,
    flushes: Vec<oneshot::Sender<()>>,
    /// Set when a batch used up its retries without reaching the broker: later batches try once
    /// and fail fast instead of each waiting through the whole backoff sequence.
    broker_unreachable: bool,
    /// Increases with every produce request put on a connection.
    next_send_seq: u64,
}

impl Task {
    async fn run(mut self, mut queue: mpsc::Receiver<Message>) {
        let mut queue_open = true;
        loop {
            // Records that arrived while the task was busy (a request in flight, a redirect) join the
            // open batches before anything is sent, as Kafka's accumulator does: with `linger` 0 a
            // record waits for nothing, but records queued meanwhile go out together, not as one
            // request each.
            let mut drained = 0;
            while queue_open && self.has_request_slot() && drained < PRODUCER_QUEUE_MAX {
                drained += 1;
                match queue.try_recv() {
                    Ok(message) => self.handle(message).await,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.handle_closed(&mut queue_open).await;
                    }
                }
            }
            self.send_due().await;
            if self.in_flight.is_empty() && self.open_batches == 0 {
                for done in self.flushes.drain(..) {
                    let _ = done.send(());
                }
            }
            if !queue_open && self.open_batches == 0 && self.in_flight.is_empty() {
                break;
            }
            let deadline = self.open_batches().map(|(_, _, deadline)| deadline).min();
            let slot = self.has_request_slot();
            tokio::select! {
                biased;
                Some(redirect) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    if let Some(redirect) = redirect {
                        self.redirect(redirect).await;
                    }
                }
                // Due batches are sent at the top of the loop, once a request slot is free.
                _ = crate::clock::sleep_until_opt(deadline), if deadline.is_some() && slot => {}
                message = queue.recv(), if queue_open && slot => match message {
                    None => self.handle_closed(&mut queue_open).await,
                    Some(message) => self.handle(message).await,
                },
            }
        }
    }

    /// Whether another produce request may go out (at most `in_flight_max` are outstanding).
    fn has_request_slot(&self) -> bool {
        self.in_flight.len() < self.config.in_flight_max
    }

    async fn handle(&mut self, message: Message) {
        match message {
            Message::Send { topic, partition, record, delivery } => self.add(topic, partition, record, delivery).await,
            Message::Flush { done } => {
                self.send_all().await;
                self.flushes.push(done);
            }
        }
    }

    /// Every `Producer` handle is gone: send what is open and stop once it is answered.
    async fn handle_closed(&mut self, queue_open: &mut bool) {
        *queue_open = false;
        self.send_all().await;
    }

    /// Sends the open batches whose linger has passed, oldest first, while request slots are free.
    async fn send_due(&mut self) {
        if self.open_batches == 0 {
            return;
        }
        let now = Instant::now();
        let mut due: Vec<_> = self.open_batches().filter(|(_, _, deadline)| *deadline <= now).collect();
        due.sort_by_key(|(_, _, deadline)| *deadline);
        for (topic, partition, _) in due {
            if !self.has_request_slot() {
                break;
            }
            self.send_batch(&topic, partition).await;
        }
    }

    fn open_batches(&self) -> impl Iterator<Item = (String, u32, Instant)> + '_ {
        self.topics.iter().flat_map(|(topic, state)| {
            state.open.iter().enumerate().filter_map(move |(partition, batch)| {
                batch.as_ref().map(|batch| (topic.clone(), partition as u32, batch.deadline))
            })
        })
    }

    async fn send_all(&mut self) {
        let open: Vec<_> = self.open_batches().collect();
        for (topic, partition, _) in open {
            self.send_batch(&topic, partition).await;
        }
    }

    async fn add(&mut self, topic: String, partition: Option<u32>, record: Record, delivery: DeliverySender) {
        if !self.topics.contains_key(&topic) {
            match self.client.topic(&topic).await {
                Ok(info) if !info.partitions.is_empty() => {
                    let partitions = info.partitions.len() as u32;
                    let open = (0..partitions).map(|_| None).collect();
                    let last_sent = vec![0; partitions as usize];
                    self.topics.insert(topic.clone(), TopicState { partitions, open, sticky: None, last_sent });
                }
                Ok(_) => {
                    let error = ClientError::Protocol(format!("topic {topic:?} has no partitions"));
                    let _ = delivery.send(Err(error));
                    return;
                }
                Err(error) => {
                    let _ = delivery.send(Err(error));
                    return;
                }
            }
        }
        let size = record_size_estimate(&record);
        if size + 128 > self.config.batch_bytes_max.min(BATCH_BYTES_MAX) {
            let message =
                format!("record of ~{size} bytes exceeds the batch limit of {} bytes", self.config.batch_bytes_max);
            let _ = delivery.send(Err(ClientError::InvalidArgument(message)));
            return;
        }
        let state = self.topics.get_mut(&topic).expect("inserted above");
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
        let full = state.open[partition as usize]
            .as_ref()
            .is_some_and(|batch| batch.bytes + size > self.config.batch_bytes_max);
        if full {
            self.send_batch(&topic, partition).await;
        }
        let linger = self.config.linger;
        let state = self.topics.get_mut(&topic).expect("inserted above");
        let slot = &mut state.open[partition as usize];
        if slot.is_none() {
            self.open_batches += 1;
        }
        let batch = slot.get_or_insert_with(|| OpenBatch {
            records: Vec::new(),
            deliveries: Vec::new(),
            bytes: 0,
            deadline: Instant::now() + linger,
        });
        batch.records.push(record);
        batch.deliveries.push(delivery);
        batch.bytes += size;
        // A full batch goes now; any other waits for its linger (sent by `send_due`, which with
        // `linger` 0 runs as soon as the records queued meanwhile have joined it).
        if batch.bytes >= self.config.batch_bytes_max {
            self.send_batch(&topic, partition).await;
        }
    }

    /// Encodes the open batch of a partition and puts its request on the wire (in order), retrying
    /// while it definitely was not sent. The response is awaited in `in_flight`.
    async fn send_batch(&mut self, topic: &str, partition: u32) {
        let Some(state) = self.topics.get_mut(topic) else { return };
        let Some(batch) = state.open[partition as usize].take() else { return };
        self.open_batches -= 1;
        if state.sticky == Some(partition) {
            state.sticky = None;
        }
        let timestamp_ms = wall_clock_ms();
        let bytes = encode_batch(&batch.records, timestamp_ms, ProducerFields::NONE);
        let request = ProduceRequest {
            topic: topic.to_owned(),
            partition,
            acks: self.config.acks as i32,
            batch: bytes,
            timeout_ms: self.client.config().request_timeout.as_millis() as u32,
        };
        self.send_request(topic, partition, request, batch.deliveries, 0).await;
    }

    /// Re-sends a refused batch if no later batch of its partition went out since; otherwise the
    /// refusal is its (definite) outcome.
    async fn redirect(&mut self, redirect: Redirect) {
        let latest =
            self.topics.get(&redirect.topic).and_then(|state| state.last_sent.get(redirect.partition as usize));
        if latest != Some(&redirect.send_seq) || redirect.attempts >= ROUTE_ATTEMPTS_MAX {
            for delivery in redirect.deliveries {
                let _ = delivery.send(Err(redirect.error.clone()));
            }
            return;
        }
        let backoff = self.config.retry_backoff * 2u32.saturating_pow(redirect.attempts.saturating_sub(1).min(5));
        tokio::time::sleep(backoff.min(Duration::from_millis(RETRY_BACKOFF_MS_MAX))).await;
        self.client.forget_leaders(&redirect.topic);
        self.send_request(
            &redirect.topic,
            redirect.partition,
            redirect.request,
            redirect.deliveries,
            redirect.attempts,
        )
        .await;
    }

    /// Puts a produce request on its partition leader's connection (in order), retrying while it
    /// definitely was not sent. The response is awaited in `in_flight`.
    async fn send_request(
        &mut self,
        topic: &str,
        partition: u32,
        request: ProduceRequest,
        deliveries: Vec<DeliverySender>,
        attempts: u32,
    ) {
        let sent = self.start_request(topic, partition, &request).await;
        let send_seq = self.next_send_seq;
        if sent.is_ok() {
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            self.stats.records.fetch_add(deliveries.len() as u64, Ordering::Relaxed);
            self.next_send_seq += 1;
            if let Some(slot) = self.topics.get_mut(topic).and_then(|state| state.last_sent.get_mut(partition as usize))
            {
                *slot = send_seq;
            }
        }
        let client = self.client.clone();
        let topic = topic.to_owned();
        self.in_flight.push(Box::pin(async move {
            let result = match sent {
                Ok((addr, pending)) => client.finish(&addr, pending, Duration::ZERO).await,
                Err(error) => Err(error),
            };
            let unsent = Redirect {
                topic,
                partition,
                request,
                deliveries,
                send_seq,
                attempts: attempts + 1,
                error: ClientError::Protocol("not answered yet".into()),
            };
            deliver(result, unsent)
        }));
    }

    /// Starts the request on the partition leader's connection, retrying (with backoff) while it
    /// definitely was not sent: no connection, or the broker said it does not lead the partition.
    async fn start_request(
        &mut self,
        topic: &str,
        partition: u32,
        request: &ProduceRequest,
    ) -> Result<(String, PendingResponse), ClientError> {
        let mut backoff = self.config.retry_backoff;
        let mut attempt = 0;
        let retries = if self.broker_unreachable { 0 } else { self.config.retries };
        loop {
            let started = match self.client.leader_addr(topic, partition).await {
                Ok(addr) => self.client.start(&addr, Body::ProduceRequest(request.clone())).await.map(|p| (addr, p)),
                Err(error) => Err(error),
            };
            let retriable = |error: &ClientError| match error {
                ClientError::Connect { .. } => true,
                ClientError::Server { code, .. } => is_misrouted(*code) && *code != ErrorCode::UnknownTopic,
                _ => false,
            };
            match started {
                Ok(started) => {
                    self.broker_unreachable = false;
                    return Ok(started);
                }
                Err(error) if retriable(&error) && attempt < retries => {
                    tracing::debug!(%error, attempt, "produce not sent; retrying");
                    self.client.forget_leaders(topic);
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(RETRY_BACKOFF_MS_MAX));
                }
                Err(error) => {
                    self.broker_unreachable = matches!(error, ClientError::Connect { .. });
                    return Err(error);
                }
            }
        }
    }
}

/// The longest wait between two attempts to send a batch (the backoff doubles up to it).
pub const RETRY_BACKOFF_MS_MAX: u64 = 2_000;

/// Answers a batch's deliveries from its produce response, or hands the batch back as a redirect
/// (carrying the refusal) when the broker did not append it because it does not lead the partition:
/// the producer task decides whether re-sending keeps the order.
fn deliver(result: Result<Body, ClientError>, mut batch: Redirect) -> Option<Redirect> {
    let outcome = match result {
        Ok(Body::ProduceResponse(ProduceResponse { error: None, base_offset, .. })) => Ok(Offset(base_offset)),
        Ok(Body::ProduceResponse(ProduceResponse { error: Some(info), .. })) => {
            let code = info.error_code();
            let error = ClientError::Server { code, message: info.message };
            if is_misrouted(code) {
                batch.error = error;
                return Some(batch);
            }
            Err(error)
        }
        Ok(other) => Err(ClientError::Protocol(format!("unexpected response {other:?}"))),
        Err(error) => Err(error),
    };
    let partition = batch.partition;
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
    use super::murmur2;

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
