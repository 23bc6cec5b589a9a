//! The queue workload against the containers: producer processes, consumer processes, the final read,
//! all recorded in one [`History`] (shared/HISTORY-FORMAT.md) with the time since the run started.
//!
//! This is a thin twin of the simulation's workload (sim/src/workload.rs). It records the same
//! history types in the same way, so that `keel_model::queue_checker` judges both alike; it differs
//! where a real run needs to: wall-clock time, one client per process (below), a shared rate limit.
//!
//! - A *producer process* sends unique values `"<process>-<n>"` to a random partition, one at a time
//!   (a Jepsen process has at most one operation outstanding), through its own client and
//!   [`Producer`], as each Jepsen process has its own client. (A producer shared by all processes, as
//!   the simulation's is, stalled every partition while one partition leader's broker was down: the
//!   producer task connected and backed off inline, so one unreachable leader blocked every batch;
//!   measured in the first Docker runs, see ADR 0013, and fixed in the client since.) Outcomes: `ok` with the acked offset, `fail`
//!   (definitely not written), `info` (unknown: the connection broke, or no answer within
//!   [`OPERATION_MS_MAX`]).
//! - A *consumer process* is assigned every partition and polls a random one from its own position;
//!   a failed poll moves nothing; a position past the log's end (only a log that lost records can
//!   cause it) resets the consumer, recorded as a new `assign`.
//! - The *final reader* runs after the heal and polls every partition from offset 0 to its high
//!   watermark (Jepsen's final read).
//!
//! Every operation waits for a token of the shared rate limiter first, so `--rate` bounds the offered
//! load whatever the latency.
//!
//! A fetch that returns a batch whose CRC does not match is counted apart ([`Recorder::corrupt_reads`]):
//! a broker must never serve a corrupt batch, so the run fails on any.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel::batch::Record;
use keel::client::{delivered, Client, ClientConfig, ClientError, Producer, ProducerConfig};
use keel::protocol::{Acks, ErrorCode};
use keel::types::Offset as KeelOffset;
use keel_model::history::{History, Offset, Partition, PollReads, ProcessId, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

/// An operation without an answer after this long is recorded `info` (and its process moves on).
pub const OPERATION_MS_MAX: u64 = 10_000;
/// The idempotent producers' delivery timeout: how long a send is sent again before it is reported
/// (below [`OPERATION_MS_MAX`], so the producer reports it, not the harness's timeout).
pub const DELIVERY_TIMEOUT_MS: u64 = 8_000;
/// Bytes one fetch may return.
pub const FETCH_BYTES_MAX: u32 = 256 * 1024;
/// Longest a consumer's poll waits for records.
pub const POLL_WAIT_MS_MAX: u64 = 100;

/// Client settings: short timeouts, so a dead, paused or cut-off broker turns into `info` or a failed
/// poll quickly instead of a hang.
/// The TLS every client of the run connects with (`--tls`); unset: plain TCP.
static TLS: std::sync::OnceLock<keel::tls::ClientTls> = std::sync::OnceLock::new();

/// Sets the run's client TLS, once, before any client is made.
pub fn set_tls(tls: keel::tls::ClientTls) {
    let _ = TLS.set(tls);
}

pub fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_millis(1_000),
        request_timeout: Duration::from_millis(2_000),
        retries: 3,
        retry_backoff: Duration::from_millis(50),
        retry_backoff_max: Duration::from_millis(500),
        tls: TLS.get().cloned(),
    }
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The history and what every task shares.
pub struct Recorder {
    pub history: Mutex<History>,
    pub start: Instant,
    /// Fetches that failed because a batch's CRC did not match (the client verifies every batch).
    corrupt_reads: Mutex<Vec<String>>,
    /// Operations that hit [`OPERATION_MS_MAX`].
    timeouts: AtomicU64,
}

impl Recorder {
    pub fn new(start: Instant) -> Arc<Recorder> {
        Arc::new(Recorder {
            history: Mutex::new(History::new()),
            start,
            corrupt_reads: Mutex::default(),
            timeouts: AtomicU64::new(0),
        })
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn history(&self) -> History {
        lock(&self.history).clone()
    }

    pub fn corrupt_reads(&self) -> Vec<String> {
        lock(&self.corrupt_reads).clone()
    }

    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// Records a nemesis event (`"process": "nemesis"`).
    pub fn nemesis(&self, f: &str, value: serde_json::Value) {
        let now_ns = self.now_ns();
        lock(&self.history).nemesis(now_ns, f, value);
    }
}

/// A token bucket refilled at `rate` per second, shared by every process.
pub struct RateLimiter {
    interval: Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl RateLimiter {
    pub fn new(rate_per_s: u32) -> Arc<RateLimiter> {
        Arc::new(RateLimiter {
            interval: Duration::from_secs_f64(1.0 / f64::from(rate_per_s.max(1))),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        })
    }

    /// Waits for this operation's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = tokio::time::Instant::now();
            // No burst after an idle stretch beyond one interval.
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// The workload's shape.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub bootstrap: String,
    pub topic: String,
    pub partitions: u32,
    pub producers: u32,
    pub consumers: u32,
    pub seed: u64,
    /// Idempotent producers (see [`DELIVERY_TIMEOUT_MS`]).
    pub idempotent: bool,
}

fn value_of(bytes: Option<&Bytes>) -> Value {
    Value(bytes.map_or_else(String::new, |bytes| String::from_utf8_lossy(bytes).into_owned()))
}

/// Runs producer and consumer processes until `stop`; returns when every process has resolved its
/// last operation. Process ids: producers `0..producers`, consumers after them.
pub async fn run(config: WorkloadConfig, rate: Arc<RateLimiter>, recorder: Arc<Recorder>, stop: CancellationToken) {
    let producer_config = ProducerConfig {
        acks: Acks::All,
        linger: Duration::ZERO,
        // Plain producer: a batch that was definitely not sent may be re-sent; never an ambiguous one.
        retries: 2,
        // Idempotent (the default, as `keel produce`): every failure that may be transient is sent
        // again with the same sequence until the delivery timeout, which ends within OPERATION_MS_MAX.
        idempotent: config.idempotent,
        delivery_timeout: Duration::from_millis(DELIVERY_TIMEOUT_MS),
        ..ProducerConfig::default()
    };
    let mut tasks = Vec::new();
    for process_idx in 0..config.producers {
        let process = ProcessId(u64::from(process_idx));
        let producer = Producer::new(Client::new(config.bootstrap.clone(), client_config()), producer_config.clone());
        let (recorder, stop, rate, config) = (recorder.clone(), stop.clone(), rate.clone(), config.clone());
        tasks.push(tokio::spawn(async move {
            let rng = StdRng::seed_from_u64(config.seed ^ (0x5e4d << 16) ^ process.0);
            run_producer(process, rng, &producer, &config, &rate, &recorder, &stop).await;
        }));
    }
    for consumer_idx in 0..config.consumers {
        let process = ProcessId(u64::from(config.producers + consumer_idx));
        let (recorder, stop, rate, config) = (recorder.clone(), stop.clone(), rate.clone(), config.clone());
        tasks.push(tokio::spawn(async move {
            let rng = StdRng::seed_from_u64(config.seed ^ (0xc0 << 16) ^ process.0);
            run_consumer(process, rng, &config, &rate, &recorder, &stop).await;
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn run_producer(
    process: ProcessId,
    mut rng: StdRng,
    producer: &Producer,
    config: &WorkloadConfig,
    rate: &RateLimiter,
    recorder: &Recorder,
    stop: &CancellationToken,
) {
    let mut sequence = 0u64;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = rate.acquire() => {}
        }
        let partition = rng.random_range(0..config.partitions);
        let value = format!("{}-{sequence}", process.0);
        sequence += 1;
        let pending = lock(&recorder.history).invoke_send(
            process,
            recorder.now_ns(),
            Partition::of_topic(&config.topic, partition),
            value.as_str(),
        );
        let outcome = tokio::time::timeout(Duration::from_millis(OPERATION_MS_MAX), async {
            let delivery =
                producer.send(&config.topic, Some(partition), Record::value(Bytes::from(value.clone()))).await;
            delivered(delivery).await
        })
        .await;
        let now_ns = recorder.now_ns();
        let mut history = lock(&recorder.history);
        match outcome {
            Ok(Ok(metadata)) if metadata.partition == partition && metadata.offset.0 >= 0 => {
                history.send_ok(pending, now_ns, Offset(metadata.offset.0 as u64));
            }
            // An ack for another partition or a negative offset: the outcome is not what was asked.
            Ok(Ok(_)) => {
                history.send_info(pending, now_ns);
            }
            Ok(Err(error)) if error.is_ambiguous() => {
                history.send_info(pending, now_ns);
            }
            Ok(Err(_)) => {
                history.send_fail(pending, now_ns);
            }
            Err(_) => {
                recorder.timeouts.fetch_add(1, Ordering::Relaxed);
                history.send_info(pending, now_ns);
            }
        }
    }
}

/// What one recorded poll gave.
enum PollResult {
    Read { next: i64, high_watermark: i64, log_start: i64 },
    Failed(Option<ClientError>),
}

/// Polls `partition` from `position` once and records the poll.
async fn poll_once(
    client: &Client,
    recorder: &Recorder,
    process: ProcessId,
    topic: &str,
    partition: u32,
    position: i64,
    max_wait: Duration,
) -> PollResult {
    let pending = lock(&recorder.history).invoke_poll(process, recorder.now_ns());
    let fetched = tokio::time::timeout(
        Duration::from_millis(OPERATION_MS_MAX),
        client.fetch(topic, partition, KeelOffset(position), FETCH_BYTES_MAX, max_wait),
    )
    .await;
    let now_ns = recorder.now_ns();
    let fetched = match fetched {
        Err(_) => {
            recorder.timeouts.fetch_add(1, Ordering::Relaxed);
            // A fetch writes nothing and the consumer's position moves only on an ok, so even an
            // unanswered poll moved nothing: a definite `fail`.
            lock(&recorder.history).poll_fail(pending, now_ns);
            return PollResult::Failed(None);
        }
        Ok(Err(error)) => {
            if let ClientError::Corrupt(reason) = &error {
                lock(&recorder.corrupt_reads).push(format!("{topic}/{partition} from offset {position}: {reason}"));
            }
            lock(&recorder.history).poll_fail(pending, now_ns);
            return PollResult::Failed(Some(error));
        }
        Ok(Ok(fetched)) => fetched,
    };
    let mut reads = Vec::with_capacity(fetched.records.len());
    let mut next = position;
    for record in &fetched.records {
        next = next.max(record.offset.0 + 1);
        reads.push((Offset(record.offset.0.max(0) as u64), value_of(record.value.as_ref())));
    }
    let mut poll_reads = PollReads::new();
    poll_reads.insert(Partition::of_topic(topic, partition), reads);
    lock(&recorder.history).poll_ok(pending, now_ns, poll_reads);
    PollResult::Read { next, high_watermark: fetched.high_watermark.0, log_start: fetched.log_start.0 }
}

async fn run_consumer(
    process: ProcessId,
    mut rng: StdRng,
    config: &WorkloadConfig,
    rate: &RateLimiter,
    recorder: &Recorder,
    stop: &CancellationToken,
) {
    let client = Client::new(config.bootstrap.clone(), client_config());
    let all: Vec<Partition> =
        (0..config.partitions).map(|partition| Partition::of_topic(&config.topic, partition)).collect();
    lock(&recorder.history).assign(process, recorder.now_ns(), all.clone());
    let mut positions = vec![0i64; config.partitions as usize];
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = rate.acquire() => {}
        }
        let partition = rng.random_range(0..config.partitions);
        let max_wait = Duration::from_millis(rng.random_range(0..=POLL_WAIT_MS_MAX));
        let position = positions[partition as usize];
        match poll_once(&client, recorder, process, &config.topic, partition, position, max_wait).await {
            PollResult::Read { next, .. } => positions[partition as usize] = next,
            PollResult::Failed(Some(error)) if error.code() == Some(ErrorCode::OffsetOutOfRange) => {
                positions = vec![0; config.partitions as usize];
                lock(&recorder.history).assign(process, recorder.now_ns(), all.clone());
            }
            PollResult::Failed(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The final read: every partition from offset 0 to its high watermark, by process `process`.
/// Returns each partition's high watermark, or why the read did not finish within `bound`.
pub async fn final_read(
    bootstrap: &str,
    topic: &str,
    partitions: u32,
    process: ProcessId,
    recorder: &Recorder,
    bound: Duration,
) -> Result<Vec<i64>, String> {
    let deadline = Instant::now() + bound;
    let client = Client::new(bootstrap.to_owned(), client_config());
    let all: Vec<Partition> = (0..partitions).map(|partition| Partition::of_topic(topic, partition)).collect();
    lock(&recorder.history).assign(process, recorder.now_ns(), all);
    let mut high_watermarks = Vec::new();
    for partition in 0..partitions {
        let mut position = 0i64;
        let mut last_error = String::from("no answer");
        loop {
            if Instant::now() >= deadline {
                return Err(format!(
                    "final read of {topic}/{partition} stuck at offset {position} after {bound:?}: {last_error}"
                ));
            }
            match poll_once(&client, recorder, process, topic, partition, position, Duration::ZERO).await {
                PollResult::Read { next, high_watermark, log_start } => {
                    if log_start > 0 {
                        return Err(format!("{topic}/{partition} starts at {log_start}: records before it are gone"));
                    }
                    position = next;
                    if position >= high_watermark {
                        high_watermarks.push(high_watermark);
                        break;
                    }
                }
                PollResult::Failed(error) => {
                    last_error = error.map_or_else(|| "timed out".to_owned(), |error| error.to_string());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    Ok(high_watermarks)
}
