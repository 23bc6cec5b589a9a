//! `keel bench produce` / `keel bench consume` / `keel bench deliver`: load generators that report
//! msg/s, MB/s and latency percentiles (hdrhistogram), against a running broker.
//!
//! Produce latency is measured per record from `send` to its acknowledgement, so it includes
//! batching (linger) and, with `--acks all`, the fsync on the in-sync replicas (with `--acks none`
//! it ends when the request is on the connection). With `--rate` the load is offered on a fixed
//! schedule (open loop) and latency runs from each record's scheduled time. Consume latency is per
//! fetch request.
//!
//! `--compare-idempotence` runs the produce benchmark twice on one topic, without and then with
//! the idempotent producer, and reports both runs and the drop in throughput with idempotence.
//! `--compression CODEC` (other than none) runs it without compression and then with the codec, and
//! reports both runs' throughput and the bytes their batches take in the leaders' logs.
//!
//! A failed send is counted by its reason (`Server(StorageError)`, `Connect`, `Ambiguous`, ...;
//! [`error_reason`]), with the first message of each reason as its example, and classified
//! ([`classify`]): after a retriable error (a refusal or an outcome that can change, such as a
//! leader moving or a disk error) the worker pauses, 10 ms doubling to 1 s, and until its next
//! acknowledgement sends one record at a time ([`Pacing`]); a fatal error (one every retry would
//! get again, such as `InvalidRecord` or a value too large) stops every worker of the run, and the
//! command fails naming it after printing the report. Without this a broken partition made each
//! worker fail millions of sends a second without saying why (issue 15).
//!
//! Record values are JSON-like event lines with random fields (`payloads`), each value distinct, so
//! that compression sees text about as compressible as real event data, not one repeated byte.
//!
//! `keel bench deliver` measures how soon a consumer has a record once it is acknowledged: it
//! subscribes to every partition of its topic from the current end (`--mode push`, push
//! subscriptions; `--mode poll`, a long-poll fetch loop per partition, for comparison), then offers
//! `--rate` records per second on a fixed schedule. Each acknowledged record is remembered by
//! (partition, offset) with its scheduled send time and the time its ack came; its receipt then
//! gives the delivery latency (receipt - ack; a record received before its ack, as the push and the
//! ack race, counts 0 and is reported as pushed before its ack) and the end-to-end latency
//! (receipt - scheduled send). After the run it waits [`DELIVERY_WAIT_MS_MAX`] for the stragglers;
//! an acknowledged record still not received then is missing, and any missing record fails the
//! command (exit 1).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::bench_connections::{self, ConnectionsBenchArgs};
use super::{fail, parse_acks, Cli, CliError, IdempotenceArgs};
use crate::batch::Record;
use crate::client::{
    delivered, Client, ClientConfig, ClientError, Delivery, Producer, ProducerConfig, RecordMetadata, Subscription,
    SubscriptionConfig,
};
use crate::compression::Compression;
use crate::protocol::{Acks, ErrorCode, LIST_OFFSETS_EARLIEST, LIST_OFFSETS_LATEST};
use crate::types::Offset;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    Produce(ProduceBenchArgs),
    Consume(ConsumeBenchArgs),
    /// Delivery latency: from a record's acknowledgement to its receipt by a subscriber.
    Deliver(DeliverBenchArgs),
    /// Producer throughput and latency with and without many idle connections held open.
    Connections(ConnectionsBenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ProduceBenchArgs {
    #[arg(long, default_value = "keel-bench")]
    pub topic: String,
    /// Partitions to create the topic with, if it does not exist.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Concurrent producers, each with its own connection.
    #[arg(long, default_value_t = 4)]
    pub producers: u32,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// What an acknowledgement waits for (the latency measured), and so what can be lost after it.
    ///
    /// all (default): fsynced on every in-sync replica, with at least min_insync_replicas in the ISR;
    /// loses nothing while one ISR member's disk survives. leader: fsynced on the leader only; a
    /// leader failure before the followers copy it can lose it. none: not waited for (latency is
    /// the time to put the request on the connection); anything in flight can be lost, and the
    /// broker's errors are not reported.
    ///
    /// `NotEnoughReplicas` is retried with backoff, then counted as an error; the *AfterAppend
    /// errors (outcome unknown) are re-sent by the idempotent producer (the default) until a
    /// definite answer, and without idempotence counted as errors at once, never retried.
    #[arg(long, default_value = "all", value_parser = parse_acks, verbatim_doc_comment)]
    pub acks: Acks,
    #[command(flatten)]
    pub idempotence: IdempotenceArgs,
    /// Run the benchmark twice, idempotence off and then on (same topic, settings and duration; the
    /// second run appends after the first's records), and report both and the overhead: how much
    /// lower the throughput is with idempotence, in percent (with --rate, compare the latencies).
    /// Needs --acks all.
    #[arg(long, conflicts_with = "no_idempotence")]
    pub compare_idempotence: bool,
    /// Compress batches with this codec: none (default), gzip, snappy, lz4 or zstd. Any codec but
    /// none runs the benchmark twice, uncompressed and then with the codec (same topic, settings and
    /// duration), and reports both with the bytes each run's batches take in the leaders' logs.
    #[arg(
        long,
        default_value = "none",
        value_name = "CODEC",
        conflicts_with = "compare_idempotence",
        verbatim_doc_comment
    )]
    pub compression: Compression,
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    #[arg(long, default_value_t = 256 * 1024)]
    pub batch_bytes: usize,
    /// Records each producer may have unacknowledged.
    #[arg(long, default_value_t = 2_000)]
    pub window: usize,
    /// Offer this many records per second in total (split evenly over the producers) on a fixed
    /// schedule, instead of as fast as the window allows. Open loop: latency is measured from each
    /// record's scheduled send time, so a stall delays the schedule's records and shows in the
    /// percentiles instead of hiding (no coordinated omission).
    #[arg(long)]
    pub rate: Option<u64>,
}

impl ProduceBenchArgs {
    /// The checks across flags (see [`Cli::try_parse_checked_from`]).
    pub fn check(&self) -> Result<(), String> {
        if self.compare_idempotence && self.acks != Acks::All {
            return Err("--compare-idempotence needs --acks all (the idempotent producer needs it)".into());
        }
        let linger = Duration::from_millis(self.linger_ms);
        self.idempotence.check(self.acks, linger, ClientConfig::default().request_timeout)
    }

    /// These arguments with idempotence turned on or off.
    fn with_idempotence(&self, on: bool) -> ProduceBenchArgs {
        let mut args = self.clone();
        args.idempotence.no_idempotence = !on;
        args
    }

    fn with_compression(&self, compression: Compression) -> ProduceBenchArgs {
        ProduceBenchArgs { compression, ..self.clone() }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ConsumeBenchArgs {
    #[arg(long, default_value = "keel-bench")]
    pub topic: String,
    /// Stop after this long even if not caught up.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    #[arg(long, default_value_t = 1024 * 1024)]
    pub fetch_bytes: u32,
}

#[derive(Args, Debug, Clone)]
pub struct DeliverBenchArgs {
    #[arg(long, default_value = "keel-bench-deliver")]
    pub topic: String,
    /// Partitions to create the topic with, if it does not exist.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Records offered per second, on a fixed schedule (open loop).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Value size in bytes (values are distinct from 20 bytes on: each starts with its sequence).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// What an acknowledgement waits for (see `keel bench produce --help`); consumers only ever
    /// see committed records, so with `leader` or `none` the receipt may come well after the ack.
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    pub acks: Acks,
    /// The producer's linger: 0 (the default) sends each record at once unless a request to its
    /// partition is in flight, for the lowest latency.
    #[arg(long, default_value_t = 0)]
    pub linger_ms: u64,
    /// How the records reach the consumer: push (subscriptions) or poll (long-poll fetches).
    #[arg(long, value_enum, default_value_t = DeliverMode::Push)]
    pub mode: DeliverMode,
}

/// `keel bench deliver --mode`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliverMode {
    /// One push subscription per partition (`keel consume --follow`).
    Push,
    /// One loop of long-poll fetches per partition, each waiting up to [`POLL_WAIT_MS`].
    Poll,
}

impl DeliverMode {
    fn name(self) -> &'static str {
        match self {
            DeliverMode::Push => "push",
            DeliverMode::Poll => "poll",
        }
    }
}

pub(super) struct Totals {
    pub(super) records: u64,
    pub(super) bytes: u64,
    /// Failed sends (for produce, the sum of `errors_by_reason`'s counts; consume stops at its first).
    pub(super) errors: u64,
    /// Produce requests sent (0 for consume): records per request shows how well batching works.
    pub(super) requests: u64,
    pub(super) latency_us: Histogram<u64>,
    /// Failed sends by reason ([`error_reason`]), each with the first one's message.
    pub(super) errors_by_reason: BTreeMap<String, ReasonErrors>,
    /// The fatal error the run stopped at (its reason and message), if it met one.
    pub(super) fatal: Option<(String, String)>,
}

/// The failed sends of one reason: how many, and the message of the first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ReasonErrors {
    pub(super) count: u64,
    pub(super) example: String,
}

impl Totals {
    pub(super) fn new() -> Totals {
        Totals {
            records: 0,
            bytes: 0,
            errors: 0,
            requests: 0,
            latency_us: histogram(),
            errors_by_reason: BTreeMap::new(),
            fatal: None,
        }
    }

    /// Counts one failed send of `reason`; its message is kept if it is the reason's first.
    fn add_error(&mut self, reason: String, message: String) {
        self.errors += 1;
        count_reason(&mut self.errors_by_reason, reason, message, 1);
    }

    /// Adds up another worker's totals; the first fatal error merged is the one kept.
    fn merge(&mut self, other: Totals) {
        self.records += other.records;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.requests += other.requests;
        self.latency_us.add(&other.latency_us).expect("same bounds");
        merge_reasons(&mut self.errors_by_reason, other.errors_by_reason);
        self.fatal = self.fatal.take().or(other.fatal);
    }
}

/// Counts `count` errors of `reason`; `example` is kept if the reason is new to `reasons`.
pub(super) fn count_reason(reasons: &mut BTreeMap<String, ReasonErrors>, reason: String, example: String, count: u64) {
    reasons.entry(reason).or_insert(ReasonErrors { count: 0, example }).count += count;
}

/// Adds `from`'s counts into `into`; a reason already in `into` keeps its example.
fn merge_reasons(into: &mut BTreeMap<String, ReasonErrors>, from: BTreeMap<String, ReasonErrors>) {
    for (reason, errors) in from {
        count_reason(into, reason, errors.example, errors.count);
    }
}

/// What the bench does after a failed send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Severity {
    /// Another attempt may succeed (a leader moving, a disk error, a broker busy or unreachable):
    /// pause ([`Pacing`]) and go on.
    Retriable,
    /// Every retry would get it again (the request itself is wrong for this topic or broker): stop.
    Fatal,
}

/// How long into a run `UnknownTopic` and `UnknownPartition` are retried: a topic created a moment
/// ago may not have reached every broker's metadata yet. Later they mean the topic is gone (or was
/// never there), which no retry mends.
pub(super) const UNKNOWN_TOPIC_RETRY_MS_MAX: u64 = 5_000;

/// Whether the bench goes on after `error`, `run_time` into its run. Every variant of
/// [`ClientError`] is named, so that a new one is classified on purpose; error codes not listed as
/// retriable are fatal (a new code is fatal until someone decides otherwise).
pub(super) fn classify(error: &ClientError, run_time: Duration) -> Severity {
    let retriable = match error {
        ClientError::Connect { .. } | ClientError::Ambiguous(_) => true,
        ClientError::Server { code: ErrorCode::UnknownTopic | ErrorCode::UnknownPartition, .. } => {
            run_time < Duration::from_millis(UNKNOWN_TOPIC_RETRY_MS_MAX)
        }
        ClientError::Server { code, .. } => retriable_code(*code),
        ClientError::SequenceLost(_)
        | ClientError::Protocol(_)
        | ClientError::Corrupt(_)
        | ClientError::InvalidArgument(_) => false,
    };
    if retriable {
        Severity::Retriable
    } else {
        Severity::Fatal
    }
}

/// The broker's answers that a later attempt may not get: the partition or its leader is in
/// trouble or moving, or the outcome is not known yet.
fn retriable_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::StorageError
            | ErrorCode::StorageIndeterminate
            | ErrorCode::NotLeader
            | ErrorCode::Timeout
            | ErrorCode::ShuttingDown
            | ErrorCode::Busy
            | ErrorCode::LeaderNotReady
            | ErrorCode::NotEnoughReplicas
            | ErrorCode::NotEnoughReplicasAfterAppend
            | ErrorCode::NotLeaderAfterAppend
            | ErrorCode::DuplicatePending
            | ErrorCode::DiskFull
            | ErrorCode::FencedLeaderEpoch
            | ErrorCode::UnknownLeaderEpoch
    )
}

/// The key errors are counted under: the variant, and for a broker's answer its code
/// (`Server(StorageError)`).
pub(super) fn error_reason(error: &ClientError) -> String {
    match error {
        ClientError::Connect { .. } => "Connect".to_owned(),
        ClientError::Ambiguous(_) => "Ambiguous".to_owned(),
        ClientError::SequenceLost(_) => "SequenceLost".to_owned(),
        ClientError::Server { code, .. } => format!("Server({code:?})"),
        ClientError::Protocol(_) => "Protocol".to_owned(),
        ClientError::Corrupt(_) => "Corrupt".to_owned(),
        ClientError::InvalidArgument(_) => "InvalidArgument".to_owned(),
    }
}

/// The message shown as a reason's example: the broker's own for its answers (the reason already
/// names the code), else the error as it prints.
pub(super) fn error_message(error: &ClientError) -> String {
    match error {
        ClientError::Server { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// The first pause after a retriable error, and the longest (the pause doubles in between).
pub const BACKOFF_MS_MIN: u64 = 10;
pub const BACKOFF_MS_MAX: u64 = 1_000;

/// What a worker must wait for before its next send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// Pausing after a retriable error, until then.
    Until(Instant),
    /// Failing: one record at a time (a probe), and one is unanswered.
    Answer,
}

/// How an answer went, for [`Pacing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Acked,
    Failed(Severity),
}

/// A worker's pacing after retriable errors. A retriable error starts a *step*: no send for the
/// current backoff (10 ms, doubling per step to 1 s), then one record at a time until an
/// acknowledgement, which resets the backoff and the window. Errors of records sent before the step
/// began (the rest of the window, failing together) belong to that step and neither double nor
/// extend it; so a worker that keeps failing makes one attempt per step, not one per record.
#[derive(Debug)]
struct Pacing {
    backoff: Duration,
    paused_until: Option<Instant>,
    /// When the latest step began.
    step_at: Option<Instant>,
    /// A retriable error came after the latest acknowledgement.
    failing: bool,
}

impl Pacing {
    fn new() -> Pacing {
        Pacing { backoff: Duration::from_millis(BACKOFF_MS_MIN), paused_until: None, step_at: None, failing: false }
    }

    /// The answer of a record sent at `sent_at` came at `now`.
    fn answered(&mut self, answer: Answer, sent_at: Instant, now: Instant) {
        match answer {
            Answer::Acked => {
                self.backoff = Duration::from_millis(BACKOFF_MS_MIN);
                self.failing = false;
            }
            Answer::Failed(Severity::Fatal) => {}
            Answer::Failed(Severity::Retriable) => {
                self.failing = true;
                if self.step_at.is_some_and(|step_at| sent_at < step_at) {
                    return;
                }
                self.paused_until = Some(now + self.backoff);
                self.step_at = Some(now);
                self.backoff = (self.backoff * 2).min(Duration::from_millis(BACKOFF_MS_MAX));
            }
        }
    }

    /// What to wait for before the next send at `now`, with `unanswered` records outstanding.
    fn wait(&self, now: Instant, unanswered: usize) -> Option<Wait> {
        if let Some(until) = self.paused_until.filter(|until| *until > now) {
            return Some(Wait::Until(until));
        }
        (self.failing && unanswered > 0).then_some(Wait::Answer)
    }
}

/// What the workers of one run share: its start (`UnknownTopic` is retried only early in it, see
/// [`classify`]) and the stop that a fatal error sets off.
#[derive(Clone)]
struct RunControl {
    started: Instant,
    stop: CancellationToken,
}

impl RunControl {
    fn new() -> RunControl {
        RunControl { started: Instant::now(), stop: CancellationToken::new() }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Runs `keel bench ...` or `keel cluster ...`.
pub async fn run(cli: &Cli, command: &BenchCommand) -> Result<(), CliError> {
    match command {
        BenchCommand::Produce(args) => produce(cli, args).await,
        BenchCommand::Consume(args) => consume(cli, args).await,
        BenchCommand::Deliver(args) => deliver(cli, args).await,
        BenchCommand::Connections(args) => bench_connections::run(cli, args).await,
    }
}

/// `keel bench produce`: one run, or with `--compare-idempotence` one without idempotence and one
/// with it, on the same topic.
async fn produce(cli: &Cli, args: &ProduceBenchArgs) -> Result<(), CliError> {
    if args.size == 0 || args.producers == 0 || args.window == 0 || args.rate == Some(0) {
        return Err(fail("--size, --producers, --window and --rate must be positive"));
    }
    let admin = Client::new(cli.broker.clone(), cli.client_defaults());
    create_topic_if_missing(&admin, &args.topic, args.partitions).await?;
    if args.compare_idempotence {
        let off = produce_run(cli, &args.with_idempotence(false)).await?;
        stop_if_fatal(cli, "produce, idempotence off", &off, args.rate)?;
        let on = produce_run(cli, &args.with_idempotence(true)).await?;
        stop_if_fatal(cli, "produce, idempotence on", &on, args.rate)?;
        report_comparison(cli, &off, &on, args.rate);
    } else if args.compression != Compression::None {
        let plain = measured_run(cli, &admin, &args.with_compression(Compression::None)).await?;
        stop_if_fatal(cli, "produce, none", &plain.0, args.rate)?;
        let compressed = measured_run(cli, &admin, args).await?;
        stop_if_fatal(cli, &format!("produce, {}", args.compression.name()), &compressed.0, args.rate)?;
        report_compression(cli, args, &plain, &compressed);
    } else {
        let run = produce_run(cli, args).await?;
        report(cli, "produce", &run.totals, run.elapsed, args.rate);
        if let Some(error) = fatal_error(&run.totals) {
            return Err(error);
        }
    }
    Ok(())
}

/// When `run` stopped at a fatal error: prints its report (as `what`) and returns the error.
pub(super) fn stop_if_fatal(cli: &Cli, what: &str, run: &Run, rate_target: Option<u64>) -> Result<(), CliError> {
    match fatal_error(&run.totals) {
        Some(error) => {
            report(cli, what, &run.totals, run.elapsed, rate_target);
            Err(error)
        }
        None => Ok(()),
    }
}

/// The command's error when a run stopped at a fatal error: its reason and message.
pub(super) fn fatal_error(totals: &Totals) -> Option<CliError> {
    let (reason, message) = totals.fatal.as_ref()?;
    Some(fail(format!(
        "the benchmark stopped at a fatal error, which every retry would get again: {reason} {message:?} ({} \
         errors in all)",
        totals.errors
    )))
}

/// A produce run and the bytes it added to the topic's leaders' logs.
async fn measured_run(cli: &Cli, admin: &Client, args: &ProduceBenchArgs) -> Result<(Run, u64), CliError> {
    let before = topic_log_bytes(admin, &args.topic).await?;
    let run = produce_run(cli, args).await?;
    let after = topic_log_bytes(admin, &args.topic).await?;
    Ok((run, after.saturating_sub(before)))
}

/// The bytes of every partition leader's log of `topic` (what `topic describe` shows as size).
async fn topic_log_bytes(admin: &Client, topic: &str) -> Result<u64, CliError> {
    let mut bytes = 0;
    for partition in admin.topic(topic).await?.partitions {
        bytes += admin.replica_status(topic, partition.partition).await?.log_size_bytes;
    }
    Ok(bytes)
}

/// `--compression`: both runs, their throughput and bytes on disk, and the ratios; with `--json`
/// one object with `none` and `compressed` (each a single run's report plus `disk_bytes` and
/// `disk_bytes_per_record`), `codec`, `throughput_ratio` and `disk_ratio` (compressed / none).
fn report_compression(cli: &Cli, args: &ProduceBenchArgs, plain: &(Run, u64), compressed: &(Run, u64)) {
    let codec = args.compression;
    let per_record = |(run, bytes): &(Run, u64)| *bytes as f64 / run.totals.records.max(1) as f64;
    let rate = |(run, _): &(Run, u64)| msg_per_s(&run.totals, run.elapsed);
    let throughput_ratio = rate(compressed) / rate(plain).max(1e-9);
    let disk_ratio = per_record(compressed) / per_record(plain).max(1e-9);
    if cli.json {
        let run_json = |measured: &(Run, u64)| {
            let mut value = report_json("produce", &measured.0.totals, measured.0.elapsed, args.rate);
            value["disk_bytes"] = json!(measured.1);
            value["disk_bytes_per_record"] = json!(per_record(measured));
            value
        };
        let line = json!({
            "bench": "produce-compare-compression", "codec": codec.name(),
            "none": run_json(plain), "compressed": run_json(compressed),
            "throughput_ratio": throughput_ratio, "disk_ratio": disk_ratio,
        });
        println!("{line}");
        return;
    }
    for (name, measured) in [("none", plain), (codec.name(), compressed)] {
        let (run, bytes) = measured;
        println!("{}", report_text(&format!("produce, {name}"), &run.totals, run.elapsed, args.rate));
        println!(
            "  on disk: {bytes} bytes in the leaders' logs, {:.1} per record of {} bytes",
            per_record(measured),
            args.size
        );
    }
    println!(
        "{codec} against none: {throughput_ratio:.2}x the throughput, {disk_ratio:.3}x the bytes on disk per record \
         ({:.1}x smaller)",
        1.0 / disk_ratio.max(1e-9)
    );
}

/// Creates `topic` with `partitions` partitions (one replica) unless it exists, and waits until it
/// is ready ([`wait_until_ready`]).
pub(super) async fn create_topic_if_missing(admin: &Client, topic: &str, partitions: u32) -> Result<(), CliError> {
    match admin.create_topic(topic, partitions, 1).await {
        Ok(()) | Err(ClientError::Server { code: ErrorCode::TopicAlreadyExists, .. }) => {}
        Err(error) => return Err(error.into()),
    }
    wait_until_ready(admin, topic).await;
    Ok(())
}

/// Longest the bench waits for a topic's partitions to have a leader and a full ISR.
const TOPIC_READY_WAIT_MS_MAX: u64 = 10_000;

/// Waits, at most [`TOPIC_READY_WAIT_MS_MAX`], until every partition of `topic` has a leader and all
/// its replicas in its ISR, so a topic created a moment ago does not measure its own start-up (a
/// producer without idempotence gives up on a partition without a leader after a few retries; an
/// idempotent one keeps re-sending, so the two would not be compared alike). Goes on regardless
/// after the wait, saying so: an under-replicated topic can be benchmarked on purpose.
pub(super) async fn wait_until_ready(admin: &Client, topic: &str) {
    let deadline = Instant::now() + Duration::from_millis(TOPIC_READY_WAIT_MS_MAX);
    loop {
        let ready = admin.topic(topic).await.is_ok_and(|info| {
            info.partitions.iter().all(|p| p.leader != 0 && p.replicas.iter().all(|node| p.isr.contains(node)))
        });
        if ready {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("warning: some partition of {topic} has no leader or an incomplete ISR; benchmarking anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one produce run measured.
pub(super) struct Run {
    pub(super) totals: Totals,
    pub(super) elapsed: Duration,
}

/// Runs `args.producers` producers for `args.duration_s` and adds up what they measured. A fatal
/// error stops every producer at once; the run's totals then name it (see [`fatal_error`]).
pub(super) async fn produce_run(cli: &Cli, args: &ProduceBenchArgs) -> Result<Run, CliError> {
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let control = RunControl::new();
    let mut workers = FuturesUnordered::new();
    for seed in 0..u64::from(args.producers) {
        let client = Client::new(cli.broker.clone(), cli.client_defaults());
        let args = args.clone();
        let rate_per_producer = args.rate.map(|rate| rate as f64 / f64::from(args.producers));
        workers.push(tokio::spawn(produce_worker(client, args, deadline, rate_per_producer, seed, control.clone())));
    }
    let mut totals = Totals::new();
    while let Some(result) = workers.next().await {
        totals.merge(result.map_err(|error| fail(format!("bench worker failed: {error}")))?);
    }
    Ok(Run { totals, elapsed: control.started.elapsed() })
}

async fn produce_worker(
    client: Arc<Client>,
    args: ProduceBenchArgs,
    deadline: Instant,
    rate_per_producer: Option<f64>,
    seed: u64,
    control: RunControl,
) -> Totals {
    let config = args.idempotence.apply(ProducerConfig {
        acks: args.acks,
        linger: Duration::from_millis(args.linger_ms),
        batch_bytes_max: args.batch_bytes,
        compression: args.compression,
        ..ProducerConfig::default()
    });
    let producer = Producer::new(client, config);
    let values = payloads(args.size, PAYLOADS_PER_PRODUCER, seed);
    let mut totals = match rate_per_producer {
        Some(rate) => produce_on_schedule(producer.clone(), &args, values, deadline, rate, control).await,
        None => produce_in_window(&producer, &args, values, deadline, &control).await,
    };
    totals.requests = producer.stats().requests;
    totals
}

/// How long a run waits for the answers to its records after its duration: a producer retrying a
/// broken partition until its delivery timeout (120 s by default) would otherwise hold the report.
const ANSWERS_WAIT_AFTER_RUN: Duration = Duration::from_secs(10);

/// Records still unanswered when the run stopped waiting: errors of their own reason.
fn count_unanswered(totals: &mut Totals, count: usize) {
    if count > 0 {
        let message = format!("no answer within {ANSWERS_WAIT_AFTER_RUN:?} after the run");
        count_reason(&mut totals.errors_by_reason, "Unanswered".into(), message, count as u64);
        totals.errors += count as u64;
    }
}

/// Records unanswered, oldest first, each with its send time. Deliveries complete almost in send
/// order, so a FIFO with a non-blocking check of its head is enough and costs far less per record
/// than a FuturesUnordered of 20k futures.
type Outstanding = VecDeque<(Instant, Delivery)>;

/// Sends as fast as `args.window` unanswered records allow until `deadline`, pausing after
/// retriable errors ([`Pacing`]), then waits for the answers; stops at once when the run stops.
async fn produce_in_window(
    producer: &Producer,
    args: &ProduceBenchArgs,
    values: Vec<Bytes>,
    deadline: Instant,
    control: &RunControl,
) -> Totals {
    let mut next_value = values.iter().cycle();
    let (mut totals, mut pacing) = (Totals::new(), Pacing::new());
    let mut outstanding: Outstanding = VecDeque::with_capacity(args.window);
    while !control.stop.is_cancelled() {
        let now = Instant::now();
        let wait = if now >= deadline || outstanding.len() >= args.window {
            Some(Wait::Answer)
        } else {
            pacing.wait(now, outstanding.len())
        };
        let until = match wait {
            None => {
                let record = Record { value: next_value.next().cloned(), ..Record::default() };
                let sent_at = Instant::now();
                let Some(delivery) = send_unless_stopped(producer, &args.topic, record, &control.stop).await else {
                    break;
                };
                outstanding.push_back((sent_at, delivery));
                take_ready_answers(&mut outstanding, &mut totals, &mut pacing, args.size, control);
                continue;
            }
            // Only once the deadline passed: pacing waits for an answer only with one outstanding.
            Some(Wait::Answer) if outstanding.is_empty() => break,
            // After the run, answers are waited for `ANSWERS_WAIT_AFTER_RUN` at most.
            Some(Wait::Answer) if now >= deadline => Some(deadline + ANSWERS_WAIT_AFTER_RUN),
            Some(Wait::Answer) => None,
            Some(Wait::Until(until)) => Some(until.min(deadline)),
        };
        match next_answer(&mut outstanding, until, &control.stop).await {
            NextAnswer::Answer(sent_at, result) => {
                let answer = account(&mut totals, sent_at, result, args.size, control);
                pacing.answered(answer, sent_at, Instant::now());
            }
            NextAnswer::Timeout if Instant::now() >= deadline + ANSWERS_WAIT_AFTER_RUN => {
                count_unanswered(&mut totals, outstanding.len());
                break;
            }
            NextAnswer::Timeout => {}
            NextAnswer::Stopped => break,
        }
    }
    totals
}

/// Queues `record`, unless the run stops first (a saturated producer makes `send` wait).
async fn send_unless_stopped(
    producer: &Producer,
    topic: &str,
    record: Record,
    stop: &CancellationToken,
) -> Option<Delivery> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        delivery = producer.send(topic, None, record) => Some(delivery),
    }
}

/// Accounts every answer already at the head of `outstanding`, without waiting.
fn take_ready_answers(
    outstanding: &mut Outstanding,
    totals: &mut Totals,
    pacing: &mut Pacing,
    size: usize,
    control: &RunControl,
) {
    while let Some((_, delivery)) = outstanding.front_mut() {
        let result = match delivery.try_recv() {
            Ok(result) => result,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Err(producer_stopped()),
        };
        let (sent_at, _) = outstanding.pop_front().expect("front exists");
        let answer = account(totals, sent_at, result, size, control);
        pacing.answered(answer, sent_at, Instant::now());
    }
}

/// What a delivery whose producer went away resolves to (as [`delivered`] has it).
fn producer_stopped() -> ClientError {
    ClientError::Ambiguous("producer stopped before the answer came".into())
}

enum NextAnswer {
    /// The oldest outstanding record's send time and answer (it is no longer outstanding).
    Answer(Instant, Result<RecordMetadata, ClientError>),
    /// `until` came first.
    Timeout,
    /// The run stopped first.
    Stopped,
}

/// Waits for the answer of the oldest outstanding record, until `until` (without one, for as long
/// as it takes) or until the run stops.
async fn next_answer(outstanding: &mut Outstanding, until: Option<Instant>, stop: &CancellationToken) -> NextAnswer {
    let front = async {
        match outstanding.front_mut() {
            Some((_, delivery)) => delivery.await.unwrap_or_else(|_| Err(producer_stopped())),
            None => std::future::pending().await,
        }
    };
    let timeout = async {
        match until {
            Some(until) => tokio::time::sleep_until(until).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        biased;
        _ = stop.cancelled() => return NextAnswer::Stopped,
        result = front => result,
        _ = timeout => return NextAnswer::Timeout,
    };
    let (sent_at, _) = outstanding.pop_front().expect("the front answered");
    NextAnswer::Answer(sent_at, result)
}

/// A scheduled run's pacing, shared by its sender and its collector.
struct SchedulePacing {
    pacing: Pacing,
    /// Records sent whose answers the collector has not accounted yet.
    unanswered: usize,
}

/// While a scheduled producer waits for its probe's answer, it looks again this often.
const PROBE_POLL_MS: u64 = 1;

/// Sends one record every `1 / rate` seconds until `deadline`, whatever the answers do, except that
/// the records scheduled while it pauses after a retriable error ([`Pacing`]) are not offered (the
/// report's msg/s falls below the offered rate), nor while its one probe is unanswered. A collector
/// task awaits the deliveries in send order (they complete almost in that order) and measures each
/// from its scheduled time; at most `window` are outstanding, beyond which the schedule falls behind,
/// which the latency of the late records then shows. Both stop at once when the run stops.
async fn produce_on_schedule(
    producer: Producer,
    args: &ProduceBenchArgs,
    values: Vec<Bytes>,
    deadline: Instant,
    rate: f64,
    control: RunControl,
) -> Totals {
    let mut next_value = values.iter().cycle();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (outstanding, deliveries) = tokio::sync::mpsc::channel::<(Instant, Delivery)>(args.window);
    let shared = Arc::new(Mutex::new(SchedulePacing { pacing: Pacing::new(), unanswered: 0 }));
    let give_up = deadline + ANSWERS_WAIT_AFTER_RUN;
    let collector = tokio::spawn(collect_scheduled(deliveries, shared.clone(), args.size, give_up, control.clone()));
    let mut scheduled = Instant::now();
    while scheduled < deadline {
        tokio::select! {
            biased;
            _ = control.stop.cancelled() => break,
            _ = tokio::time::sleep_until(scheduled) => {}
        }
        let wait = {
            let shared = shared.lock().expect("pacing");
            shared.pacing.wait(Instant::now(), shared.unanswered)
        };
        match wait {
            Some(Wait::Until(until)) => scheduled = scheduled.max(until),
            Some(Wait::Answer) => scheduled += interval.max(Duration::from_millis(PROBE_POLL_MS)),
            None => {
                let record = Record { value: next_value.next().cloned(), ..Record::default() };
                let Some(delivery) = send_unless_stopped(&producer, &args.topic, record, &control.stop).await else {
                    break;
                };
                shared.lock().expect("pacing").unanswered += 1;
                if outstanding.send((scheduled, delivery)).await.is_err() {
                    break;
                }
                scheduled += interval;
            }
        }
    }
    drop(outstanding);
    collector.await.unwrap_or_else(|_| {
        let mut totals = Totals::new();
        totals.add_error("Collector".into(), "the bench's collector task failed".into());
        totals
    })
}

/// `produce_on_schedule`'s collector: accounts each delivery in send order, measured from its
/// scheduled time, and tells the sender's pacing how it went. At `give_up` (the run's end plus
/// [`ANSWERS_WAIT_AFTER_RUN`]) the deliveries still unanswered are counted as `Unanswered`.
async fn collect_scheduled(
    mut deliveries: tokio::sync::mpsc::Receiver<(Instant, Delivery)>,
    shared: Arc<Mutex<SchedulePacing>>,
    size: usize,
    give_up: Instant,
    control: RunControl,
) -> Totals {
    let mut totals = Totals::new();
    loop {
        let next = tokio::select! {
            biased;
            _ = control.stop.cancelled() => break,
            next = deliveries.recv() => next,
        };
        let Some((scheduled, delivery)) = next else { break };
        let result = tokio::select! {
            biased;
            _ = control.stop.cancelled() => break,
            result = delivered(delivery) => result,
            _ = tokio::time::sleep_until(give_up) => {
                // This one, and every one queued behind it (the sender has stopped by now).
                deliveries.close();
                let mut unanswered = 1;
                while deliveries.recv().await.is_some() {
                    unanswered += 1;
                }
                count_unanswered(&mut totals, unanswered);
                break;
            }
        };
        let answer = account(&mut totals, scheduled, result, size, &control);
        let mut shared = shared.lock().expect("pacing");
        shared.unanswered -= 1;
        shared.pacing.answered(answer, scheduled, Instant::now());
    }
    totals
}

/// Distinct values each producer cycles through: at 1 KiB, 4 MiB of them, more than any batch
/// holds, so no batch compresses one value against an earlier copy of itself.
const PAYLOADS_PER_PRODUCER: usize = 4096;

/// `count` distinct record values of exactly `size` bytes: JSON event lines with random ids,
/// numbers and words, repeated to fill the size (from a seeded RNG, so runs compare alike).
fn payloads(size: usize, count: usize, seed: u64) -> Vec<Bytes> {
    const EVENTS: [&str; 6] = ["click", "view", "purchase", "login", "logout", "search"];
    const PATHS: [&str; 5] = ["/products", "/cart", "/checkout", "/search", "/account"];
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let mut value = String::with_capacity(size + 160);
            while value.len() < size {
                value.push_str(&format!(
                    "{{\"ts\":{},\"user\":\"user-{}\",\"event\":\"{}\",\"path\":\"{}/{}\",\"latency_ms\":{},\"ok\":{}}}\n",
                    1_700_000_000_000u64 + rng.random_range(0..10_000_000_000u64),
                    rng.random_range(0..100_000),
                    EVENTS[rng.random_range(0..EVENTS.len())],
                    PATHS[rng.random_range(0..PATHS.len())],
                    rng.random_range(0..10_000),
                    rng.random_range(0..2_000),
                    rng.random_bool(0.95),
                ));
            }
            value.truncate(size);
            Bytes::from(value)
        })
        .collect()
}

/// Counts one answer: an acknowledged record with its latency since `sent_at`, or an error by its
/// reason. A fatal error is kept as the run's (the first one) and stops the run.
fn account<T>(
    totals: &mut Totals,
    sent_at: Instant,
    result: Result<T, ClientError>,
    size: usize,
    control: &RunControl,
) -> Answer {
    let error = match result {
        Ok(_) => {
            totals.records += 1;
            totals.bytes += size as u64;
            let micros = sent_at.elapsed().as_micros().max(1) as u64;
            let _ = totals.latency_us.record(micros);
            return Answer::Acked;
        }
        Err(error) => error,
    };
    let (reason, message) = (error_reason(&error), error_message(&error));
    let severity = classify(&error, control.started.elapsed());
    if severity == Severity::Fatal {
        if totals.fatal.is_none() {
            totals.fatal = Some((reason.clone(), message.clone()));
        }
        control.stop.cancel();
    }
    totals.add_error(reason, message);
    Answer::Failed(severity)
}

async fn consume(cli: &Cli, args: &ConsumeBenchArgs) -> Result<(), CliError> {
    let client = Client::new(cli.broker.clone(), cli.client_defaults());
    let topic = client.topic(&args.topic).await?;
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let started = Instant::now();
    let mut workers = FuturesUnordered::new();
    for partition in topic.partitions.iter().map(|p| p.partition) {
        let client = Client::new(cli.broker.clone(), cli.client_defaults());
        let (topic, fetch_bytes) = (args.topic.clone(), args.fetch_bytes);
        workers.push(tokio::spawn(async move {
            let mut totals = Totals::new();
            let start = client.list_offsets(&topic, partition, LIST_OFFSETS_EARLIEST).await?;
            let end = client.list_offsets(&topic, partition, LIST_OFFSETS_LATEST).await?;
            let (mut position, end) = (start.map_or(Offset(0), |o| o.0), end.map_or(Offset(0), |o| o.0));
            while position < end && Instant::now() < deadline {
                let sent_at = Instant::now();
                let fetched = client.fetch(&topic, partition, position, fetch_bytes, Duration::ZERO).await?;
                let _ = totals.latency_us.record(sent_at.elapsed().as_micros().max(1) as u64);
                for record in &fetched.records {
                    totals.records += 1;
                    totals.bytes += record.value.as_ref().map_or(0, |v| v.len()) as u64;
                    position = record.offset.next();
                }
                if fetched.records.is_empty() {
                    break;
                }
            }
            Ok::<_, ClientError>(totals)
        }));
    }
    let mut totals = Totals::new();
    while let Some(result) = workers.next().await {
        totals.merge(result.map_err(|error| fail(format!("bench worker failed: {error}")))??);
    }
    report(cli, "consume", &totals, started.elapsed(), None);
    Ok(())
}

pub(super) fn report(cli: &Cli, what: &str, totals: &Totals, elapsed: Duration, rate_target: Option<u64>) {
    if cli.json {
        println!("{}", report_json(what, totals, elapsed, rate_target));
    } else {
        println!("{}", report_text(what, totals, elapsed, rate_target));
    }
}

/// Records per second over `elapsed`.
pub(super) fn msg_per_s(totals: &Totals, elapsed: Duration) -> f64 {
    totals.records as f64 / elapsed.as_secs_f64().max(1e-9)
}

pub(super) fn quantile_ms(totals: &Totals, quantile: f64) -> f64 {
    totals.latency_us.value_at_quantile(quantile) as f64 / 1000.0
}

/// One run as a JSON object (`msg_per_s`, `mb_per_s`, latency percentiles in ms, ...), with
/// `errors_by_reason` (`{"Server(StorageError)": {"count": 12, "example": "..."}}`) and `fatal`
/// (`{"reason": ..., "message": ...}`, or null).
pub(super) fn report_json(
    what: &str,
    totals: &Totals,
    elapsed: Duration,
    rate_target: Option<u64>,
) -> serde_json::Value {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let fatal = totals.fatal.as_ref().map(|(reason, message)| json!({"reason": reason, "message": message}));
    json!({
        "bench": what, "records": totals.records, "errors": totals.errors, "seconds": seconds,
        "rate_target": rate_target, "requests": totals.requests,
        "msg_per_s": msg_per_s(totals, elapsed), "mb_per_s": totals.bytes as f64 / seconds / 1e6,
        "p50_ms": quantile_ms(totals, 0.5), "p99_ms": quantile_ms(totals, 0.99), "p999_ms": quantile_ms(totals, 0.999),
        "errors_by_reason": reasons_json(&totals.errors_by_reason), "fatal": fatal,
    })
}

/// Errors by reason as a JSON object: each reason's `count` and `example` message.
pub(super) fn reasons_json(reasons: &BTreeMap<String, ReasonErrors>) -> serde_json::Value {
    let object: serde_json::Map<String, serde_json::Value> = reasons
        .iter()
        .map(|(reason, errors)| (reason.clone(), json!({"count": errors.count, "example": errors.example})))
        .collect();
    serde_json::Value::Object(object)
}

/// One line per reason, `{indent}errors: 12 Server(StorageError) "cannot open ..."`, each ending
/// in a line break.
pub(super) fn reasons_text(reasons: &BTreeMap<String, ReasonErrors>, indent: &str) -> String {
    reasons
        .iter()
        .map(|(reason, errors)| format!("{indent}errors: {} {reason} {:?}\n", errors.count, errors.example))
        .collect()
}

/// One run as text for people: a line, then one line per error reason.
pub(super) fn report_text(what: &str, totals: &Totals, elapsed: Duration, rate_target: Option<u64>) -> String {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let rate = msg_per_s(totals, elapsed);
    let megabytes = totals.bytes as f64 / seconds / 1e6;
    let target = rate_target.map(|rate| format!(" (offered {rate} msg/s)")).unwrap_or_default();
    let batching = match totals.requests {
        0 => String::new(),
        requests => format!(", {:.1} records/request", totals.records as f64 / requests as f64),
    };
    let mut text = format!(
        "{what}: {} records in {seconds:.1} s: {rate:.0} msg/s{target}, {megabytes:.1} MB/s; latency p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms; {} errors{batching}",
        totals.records,
        quantile_ms(totals, 0.5),
        quantile_ms(totals, 0.99),
        quantile_ms(totals, 0.999),
        totals.errors
    );
    if !totals.errors_by_reason.is_empty() {
        text.push('\n');
        text.push_str(reasons_text(&totals.errors_by_reason, "  ").trim_end());
    }
    text
}

/// How much lower the throughput is with idempotence, in percent of the throughput without it
/// (negative: higher with it, i.e. within noise); `None` when the run without it sent nothing.
fn overhead_percent(off: &Run, on: &Run) -> Option<f64> {
    let (rate_off, rate_on) = (msg_per_s(&off.totals, off.elapsed), msg_per_s(&on.totals, on.elapsed));
    (rate_off > 0.0).then(|| (rate_off - rate_on) / rate_off * 100.0)
}

/// `--compare-idempotence`: both runs and the overhead; with `--json` one object holding both runs
/// (`idempotence_off`, `idempotence_on`, each as a single run reports) and `overhead_percent`.
fn report_comparison(cli: &Cli, off: &Run, on: &Run, rate_target: Option<u64>) {
    let overhead = overhead_percent(off, on);
    if cli.json {
        let line = json!({
            "bench": "produce-compare-idempotence",
            "idempotence_off": report_json("produce", &off.totals, off.elapsed, rate_target),
            "idempotence_on": report_json("produce", &on.totals, on.elapsed, rate_target),
            "overhead_percent": overhead,
        });
        println!("{line}");
        return;
    }
    println!("{}", report_text("produce, idempotence off", &off.totals, off.elapsed, rate_target));
    println!("{}", report_text("produce, idempotence on", &on.totals, on.elapsed, rate_target));
    if off.totals.errors > 0 || on.totals.errors > 0 {
        println!(
            "note: {} errors without idempotence, {} with it: the runs did not do the same work",
            off.totals.errors, on.totals.errors
        );
    }
    let overhead =
        overhead.map_or_else(|| "unknown (nothing acknowledged without it)".to_owned(), |p| format!("{p:.1}%"));
    println!(
        "idempotence overhead: {overhead} lower throughput ({:.0} -> {:.0} msg/s); latency p50 {:.2} -> {:.2} ms, \
         p99 {:.2} -> {:.2} ms",
        msg_per_s(&off.totals, off.elapsed),
        msg_per_s(&on.totals, on.elapsed),
        quantile_ms(&off.totals, 0.5),
        quantile_ms(&on.totals, 0.5),
        quantile_ms(&off.totals, 0.99),
        quantile_ms(&on.totals, 0.99),
    );
}

/// How long `bench deliver` waits after its run for acknowledged records to be received; one
/// still missing then counts as never delivered.
pub const DELIVERY_WAIT_MS_MAX: u64 = 5_000;
/// How long one fetch of `bench deliver --mode poll` waits for records.
pub const POLL_WAIT_MS: u64 = 500;
/// Acknowledgements `bench deliver` waits for at once; beyond it the schedule falls behind, which
/// the end-to-end latency then shows.
const DELIVER_IN_FLIGHT_MAX: usize = 100_000;

/// What `bench deliver`'s producer and receivers know of each record, keyed by (partition, offset);
/// the only state they share, behind one mutex that is never held across an await.
struct Ledger {
    /// Acknowledged, not received yet: the scheduled send time and the time the ack came.
    acked: BTreeMap<(u32, Offset), (Instant, Instant)>,
    /// Received before its ack came (the push and the ack race): the time it was received.
    early: BTreeMap<(u32, Offset), Instant>,
    /// Records acknowledged, and records whose send failed.
    records: u64,
    errors: u64,
    delivered: u64,
    pushed_before_ack: u64,
    last_receipt: Option<Instant>,
    /// Receipt - ack (0 for a record received before its ack), and receipt - scheduled send.
    delivery_us: Histogram<u64>,
    end_to_end_us: Histogram<u64>,
}

impl Ledger {
    fn new() -> Ledger {
        Ledger {
            acked: BTreeMap::new(),
            early: BTreeMap::new(),
            records: 0,
            errors: 0,
            delivered: 0,
            pushed_before_ack: 0,
            last_receipt: None,
            delivery_us: histogram(),
            end_to_end_us: histogram(),
        }
    }

    /// The outcome of a record sent at `sent`, known at `at`.
    fn answered(&mut self, sent: Instant, result: Result<RecordMetadata, ClientError>, at: Instant) {
        let Ok(metadata) = result else {
            self.errors += 1;
            return;
        };
        self.records += 1;
        let key = (metadata.partition, metadata.offset);
        match self.early.remove(&key) {
            Some(received) => {
                self.pushed_before_ack += 1;
                self.deliver(sent, at, received);
            }
            None => {
                self.acked.insert(key, (sent, at));
            }
        }
    }

    /// Records of `partition` at `offsets`, received at `at`.
    fn received(&mut self, partition: u32, offsets: impl Iterator<Item = Offset>, at: Instant) {
        for offset in offsets {
            match self.acked.remove(&(partition, offset)) {
                Some((sent, acked)) => self.deliver(sent, acked, at),
                None => {
                    self.early.insert((partition, offset), at);
                }
            }
        }
        self.last_receipt = Some(at);
    }

    fn deliver(&mut self, sent: Instant, acked: Instant, received: Instant) {
        self.delivered += 1;
        let micros = |duration: Duration| duration.as_micros().min(u128::from(u64::MAX)) as u64;
        let _ = self.delivery_us.record(micros(received.saturating_duration_since(acked)));
        let _ = self.end_to_end_us.record(micros(received.saturating_duration_since(sent)));
    }
}

/// `keel bench deliver`: subscribe (or poll) from the end of every partition, produce on a
/// schedule, wait for the stragglers, report.
async fn deliver(cli: &Cli, args: &DeliverBenchArgs) -> Result<(), CliError> {
    if args.size == 0 || args.rate == 0 || args.duration_s == 0 {
        return Err(fail("--size, --rate and --duration-s must be positive"));
    }
    let admin = Client::new(cli.broker.clone(), cli.client_defaults());
    create_topic_if_missing(&admin, &args.topic, args.partitions).await?;
    let ledger = Arc::new(Mutex::new(Ledger::new()));
    let receivers = start_receivers(cli, &admin, args, &ledger).await?;
    let started = Instant::now();
    produce_on_rate(cli, args, &ledger).await;
    let produced = started.elapsed();
    let deadline = Instant::now() + Duration::from_millis(DELIVERY_WAIT_MS_MAX);
    while !ledger.lock().expect("ledger").acked.is_empty()
        && Instant::now() < deadline
        && !receivers.iter().any(|(_, receiver)| receiver.is_finished())
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (partition, receiver) in receivers {
        if receiver.is_finished() {
            let ended = receiver.await.map_err(|error| fail(format!("bench receiver failed: {error}")))?;
            let error = ended.err().map_or_else(|| "ended".to_owned(), |error| error.to_string());
            return Err(fail(format!("the receiver of partition {partition} stopped: {error}")));
        }
        receiver.abort();
    }
    let ledger = ledger.lock().expect("ledger");
    report_delivery(cli, args, &ledger, started, produced);
    match ledger.acked.len() {
        0 => Ok(()),
        missing => Err(fail(format!(
            "{missing} of {} acknowledged record(s) never arrived within {DELIVERY_WAIT_MS_MAX} ms",
            ledger.records
        ))),
    }
}

type Receiver = tokio::task::JoinHandle<Result<(), ClientError>>;

/// One receiving task per partition of the topic, each from the partition's current end, on one
/// client of their own (a connection apart from the producer's).
async fn start_receivers(
    cli: &Cli,
    admin: &Client,
    args: &DeliverBenchArgs,
    ledger: &Arc<Mutex<Ledger>>,
) -> Result<Vec<(u32, Receiver)>, CliError> {
    let client = Client::new(cli.broker.clone(), cli.client_defaults());
    let mut receivers = Vec::new();
    for partition in admin.topic(&args.topic).await?.partitions.iter().map(|p| p.partition) {
        let end = admin.list_offsets(&args.topic, partition, LIST_OFFSETS_LATEST).await?;
        let start = end.map_or(Offset(0), |(offset, _)| offset);
        let (client, topic, ledger) = (client.clone(), args.topic.clone(), ledger.clone());
        let receiver = match args.mode {
            DeliverMode::Push => tokio::spawn(receive_pushed(client, topic, partition, start, ledger)),
            DeliverMode::Poll => tokio::spawn(receive_polled(client, topic, partition, start, ledger)),
        };
        receivers.push((partition, receiver));
    }
    Ok(receivers)
}

/// Takes what a subscription to `partition` pushes, from `start`, until aborted or an error.
async fn receive_pushed(
    client: Arc<Client>,
    topic: String,
    partition: u32,
    start: Offset,
    ledger: Arc<Mutex<Ledger>>,
) -> Result<(), ClientError> {
    let mut subscription = Subscription::new(client, &topic, partition, start, SubscriptionConfig::default());
    loop {
        let pushed = subscription.next().await?;
        let at = Instant::now();
        ledger.lock().expect("ledger").received(partition, pushed.records.iter().map(|record| record.offset), at);
    }
}

/// Fetches `partition` from `start` in a loop of long polls, until aborted or an error.
async fn receive_polled(
    client: Arc<Client>,
    topic: String,
    partition: u32,
    start: Offset,
    ledger: Arc<Mutex<Ledger>>,
) -> Result<(), ClientError> {
    let mut position = start;
    loop {
        let wait = Duration::from_millis(POLL_WAIT_MS);
        let fetched = client.fetch(&topic, partition, position, 1024 * 1024, wait).await?;
        let at = Instant::now();
        if let Some(last) = fetched.records.last() {
            position = last.offset.next();
        }
        ledger.lock().expect("ledger").received(partition, fetched.records.iter().map(|record| record.offset), at);
    }
}

/// Sends `args.rate` records a second for `args.duration_s` on a fixed schedule, and returns once
/// every one is answered, each answer written into `ledger` as it comes (not in send order: the
/// time of an ack is the ack's, not that of the slowest record before it).
async fn produce_on_rate(cli: &Cli, args: &DeliverBenchArgs, ledger: &Arc<Mutex<Ledger>>) {
    let config =
        ProducerConfig { acks: args.acks, linger: Duration::from_millis(args.linger_ms), ..ProducerConfig::default() };
    let producer = Producer::new(Client::new(cli.broker.clone(), cli.client_defaults()), config);
    let values = payloads(args.size, PAYLOADS_PER_PRODUCER, 0);
    let (sent, deliveries) = tokio::sync::mpsc::channel::<(Instant, Delivery)>(DELIVER_IN_FLIGHT_MAX);
    let collector = tokio::spawn(collect_answers(deliveries, ledger.clone()));
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let (mut scheduled, mut sequence) = (Instant::now(), 0u64);
    while scheduled < deadline {
        tokio::time::sleep_until(scheduled).await;
        let value = distinct_value(&values[sequence as usize % values.len()], sequence, args.size);
        let delivery = producer.send(&args.topic, None, Record { value: Some(value), ..Record::default() }).await;
        if sent.send((scheduled, delivery)).await.is_err() {
            break;
        }
        (scheduled, sequence) = (scheduled + interval, sequence + 1);
    }
    drop(sent);
    let _ = collector.await;
}

/// Awaits the deliveries sent on `deliveries` all at once, and writes each outcome into `ledger`
/// as soon as it is known.
async fn collect_answers(mut deliveries: tokio::sync::mpsc::Receiver<(Instant, Delivery)>, ledger: Arc<Mutex<Ledger>>) {
    let mut pending = FuturesUnordered::new();
    let mut sending = true;
    loop {
        tokio::select! {
            biased;
            Some((sent, result)) = pending.next(), if !pending.is_empty() => {
                ledger.lock().expect("ledger").answered(sent, result, Instant::now());
            }
            next = deliveries.recv(), if sending => match next {
                Some((sent, delivery)) => pending.push(async move { (sent, delivered(delivery).await) }),
                None => sending = false,
            },
            else => return,
        }
    }
}

/// `template` with `sequence` written over its start: distinct values of `size` bytes (while
/// `size` holds the sequence's digits).
fn distinct_value(template: &Bytes, sequence: u64, size: usize) -> Bytes {
    let mut value = format!("{sequence:019} ").into_bytes();
    value.extend_from_slice(template);
    value.truncate(size);
    Bytes::from(value)
}

/// `bench deliver`'s report: one line, or with `--json` one object (see the module docs).
fn report_delivery(cli: &Cli, args: &DeliverBenchArgs, ledger: &Ledger, started: Instant, produced: Duration) {
    let ms = |histogram: &Histogram<u64>, quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    let (delivery, end_to_end) = (&ledger.delivery_us, &ledger.end_to_end_us);
    let receiving = ledger.last_receipt.map_or(produced, |last| last.saturating_duration_since(started));
    let msg_per_s = ledger.records as f64 / produced.as_secs_f64().max(1e-9);
    let delivered_per_s = ledger.delivered as f64 / receiving.as_secs_f64().max(1e-9);
    let missing = ledger.acked.len();
    if cli.json {
        let line = json!({
            "bench": "deliver", "mode": args.mode.name(), "records": ledger.records, "delivered": ledger.delivered,
            "missing": missing, "errors": ledger.errors, "unmatched": ledger.early.len(),
            "pushed_before_ack": ledger.pushed_before_ack, "seconds": produced.as_secs_f64(), "rate_target": args.rate,
            "msg_per_s": msg_per_s, "delivered_per_s": delivered_per_s,
            "delivery_p50_ms": ms(delivery, 0.5), "delivery_p99_ms": ms(delivery, 0.99),
            "delivery_p999_ms": ms(delivery, 0.999), "e2e_p50_ms": ms(end_to_end, 0.5),
            "e2e_p99_ms": ms(end_to_end, 0.99),
        });
        println!("{line}");
        return;
    }
    println!(
        "deliver ({}): {} records in {:.1} s: {msg_per_s:.0} msg/s produced (offered {}), {delivered_per_s:.0} msg/s \
         delivered; delivery (ack to receipt) p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms; end to end (send to \
         receipt) p50 {:.2} ms, p99 {:.2} ms; {} received before their ack; {missing} missing; {} errors",
        args.mode.name(),
        ledger.records,
        produced.as_secs_f64(),
        args.rate,
        ms(delivery, 0.5),
        ms(delivery, 0.99),
        ms(delivery, 0.999),
        ms(end_to_end, 0.5),
        ms(end_to_end, 0.99),
        ledger.pushed_before_ack,
        ledger.errors,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: ErrorCode) -> ClientError {
        ClientError::Server { code, message: format!("{code:?} happened") }
    }

    #[test]
    fn errors_that_a_retry_may_mend_are_retriable_and_the_rest_fatal() {
        let early = Duration::from_secs(1);
        for code in [
            ErrorCode::StorageError,
            ErrorCode::StorageIndeterminate,
            ErrorCode::NotLeader,
            ErrorCode::Timeout,
            ErrorCode::ShuttingDown,
            ErrorCode::Busy,
            ErrorCode::LeaderNotReady,
            ErrorCode::NotEnoughReplicas,
            ErrorCode::NotEnoughReplicasAfterAppend,
            ErrorCode::NotLeaderAfterAppend,
            ErrorCode::DuplicatePending,
            ErrorCode::DiskFull,
            ErrorCode::FencedLeaderEpoch,
            ErrorCode::UnknownLeaderEpoch,
        ] {
            assert_eq!(classify(&server(code), early), Severity::Retriable, "{code:?}");
        }
        let connect = ClientError::Connect { addr: "127.0.0.1:1".into(), reason: "refused".into() };
        assert_eq!(classify(&connect, early), Severity::Retriable);
        assert_eq!(classify(&ClientError::Ambiguous("lost".into()), early), Severity::Retriable);
        for code in [
            ErrorCode::InvalidRecord,
            ErrorCode::MessageTooLarge,
            ErrorCode::CorruptBatch,
            ErrorCode::InvalidRequest,
            ErrorCode::UnsupportedCompression,
            ErrorCode::InvalidConfig,
            ErrorCode::InternalTopic,
            ErrorCode::OutOfOrderSequence,
            ErrorCode::ProducerFenced,
            ErrorCode::UnknownProducerId,
            ErrorCode::Internal,
            ErrorCode::InvalidAcks,
        ] {
            assert_eq!(classify(&server(code), early), Severity::Fatal, "{code:?}");
        }
        for error in [
            ClientError::SequenceLost("lost".into()),
            ClientError::Protocol("bad".into()),
            ClientError::Corrupt("crc".into()),
            ClientError::InvalidArgument("too large".into()),
        ] {
            assert_eq!(classify(&error, early), Severity::Fatal, "{error}");
        }
    }

    /// A topic created a moment ago may not be known everywhere yet; later it is gone for good.
    #[test]
    fn an_unknown_topic_is_retriable_only_early_in_a_run() {
        let grace = Duration::from_millis(UNKNOWN_TOPIC_RETRY_MS_MAX);
        for code in [ErrorCode::UnknownTopic, ErrorCode::UnknownPartition] {
            assert_eq!(classify(&server(code), Duration::ZERO), Severity::Retriable);
            assert_eq!(classify(&server(code), grace - Duration::from_millis(1)), Severity::Retriable);
            assert_eq!(classify(&server(code), grace), Severity::Fatal);
        }
    }

    #[test]
    fn errors_are_counted_by_reason_with_the_first_message_as_example() {
        assert_eq!(error_reason(&server(ErrorCode::StorageError)), "Server(StorageError)");
        assert_eq!(error_message(&server(ErrorCode::StorageError)), "StorageError happened");
        let connect = ClientError::Connect { addr: "h:1".into(), reason: "refused".into() };
        assert_eq!(error_reason(&connect), "Connect");
        assert_eq!(error_message(&connect), "cannot connect to broker h:1: refused");
        assert_eq!(error_reason(&ClientError::Ambiguous("x".into())), "Ambiguous");

        let mut one = Totals::new();
        one.add_error("Server(StorageError)".into(), "first".into());
        one.add_error("Server(StorageError)".into(), "second".into());
        let mut other = Totals::new();
        other.add_error("Server(StorageError)".into(), "third".into());
        other.add_error("Connect".into(), "refused".into());
        other.fatal = Some(("Server(InvalidRecord)".into(), "no key".into()));
        one.merge(other);
        assert_eq!(one.errors, 4);
        let storage = &one.errors_by_reason["Server(StorageError)"];
        assert_eq!((storage.count, storage.example.as_str()), (3, "first"));
        assert_eq!(one.errors_by_reason["Connect"].count, 1);
        assert_eq!(one.fatal, Some(("Server(InvalidRecord)".into(), "no key".into())));
    }

    #[test]
    fn a_fatal_error_is_kept_and_stops_the_run() {
        let control = RunControl::new();
        let mut totals = Totals::new();
        let sent_at = Instant::now();
        let retriable = account::<()>(&mut totals, sent_at, Err(server(ErrorCode::NotLeader)), 10, &control);
        assert_eq!(retriable, Answer::Failed(Severity::Retriable));
        assert!(!control.stop.is_cancelled());
        let fatal = account::<()>(&mut totals, sent_at, Err(server(ErrorCode::InvalidRecord)), 10, &control);
        assert_eq!(fatal, Answer::Failed(Severity::Fatal));
        assert!(control.stop.is_cancelled());
        account::<()>(&mut totals, sent_at, Err(server(ErrorCode::CorruptBatch)), 10, &control);
        assert_eq!(totals.fatal, Some(("Server(InvalidRecord)".into(), "InvalidRecord happened".into())));
        assert_eq!(account(&mut totals, sent_at, Ok(()), 10, &control), Answer::Acked);
        assert_eq!((totals.records, totals.bytes, totals.errors), (1, 10, 3));
        let error = fatal_error(&totals).expect("a fatal error");
        assert_eq!(error.exit_code, 1);
        assert!(error.message.contains("Server(InvalidRecord) \"InvalidRecord happened\" (3 errors in all)"));
    }

    /// 10 ms doubling to 1 s, one step per failed attempt (not per record of the window failing
    /// with it), one record at a time while failing, all reset by an acknowledgement.
    #[test]
    fn pacing_backs_off_exponentially_per_step_and_resets_on_success() {
        let ms = Duration::from_millis;
        let start = Instant::now();
        let mut pacing = Pacing::new();
        assert_eq!(pacing.wait(start, 100), None);
        let retriable = Answer::Failed(Severity::Retriable);
        // A window sent at `start` fails from `start + 1 ms` on: the first answer starts a step.
        pacing.answered(retriable, start, start + ms(1));
        assert_eq!(pacing.wait(start + ms(1), 100), Some(Wait::Until(start + ms(11))));
        // The rest of the window, sent before the step began, fails with it: no longer pause.
        pacing.answered(retriable, start, start + ms(2));
        assert_eq!(pacing.wait(start + ms(2), 100), Some(Wait::Until(start + ms(11))));
        // After the pause: one probe at a time while failing.
        assert_eq!(pacing.wait(start + ms(11), 0), None);
        assert_eq!(pacing.wait(start + ms(11), 1), Some(Wait::Answer));
        let mut now = start + ms(11);
        let mut pauses = Vec::new();
        for _ in 0..9 {
            pacing.answered(retriable, now, now);
            let Some(Wait::Until(until)) = pacing.wait(now, 0) else { panic!("no pause") };
            pauses.push((until - now).as_millis());
            now = until;
        }
        assert_eq!(pauses, [20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        // A fatal answer does not touch the pacing; an acknowledgement resets it.
        pacing.answered(Answer::Failed(Severity::Fatal), now, now);
        assert_eq!(pacing.wait(now, 1), Some(Wait::Answer));
        pacing.answered(Answer::Acked, now, now);
        assert_eq!(pacing.wait(now, 1), None);
        pacing.answered(retriable, now, now + ms(1));
        assert_eq!(pacing.wait(now + ms(1), 0), Some(Wait::Until(now + ms(11))));
    }

    #[test]
    fn the_reports_show_the_errors_by_reason_with_an_example() {
        let mut totals = Totals::new();
        totals.records = 5;
        totals.add_error("Server(StorageError)".into(), "cannot open the partition log: EIO".into());
        totals.add_error("Server(StorageError)".into(), "later".into());
        totals.add_error("Connect".into(), "refused".into());
        let text = report_text("produce", &totals, Duration::from_secs(1), None);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("produce: 5 records in 1.0 s: 5 msg/s") && lines[0].contains("; 3 errors"));
        assert_eq!(
            lines[1..],
            [
                "  errors: 1 Connect \"refused\"",
                "  errors: 2 Server(StorageError) \"cannot open the partition log: EIO\""
            ]
        );
        let json = report_json("produce", &totals, Duration::from_secs(1), None);
        assert_eq!(json["errors"], 3);
        assert_eq!(json["errors_by_reason"]["Server(StorageError)"]["count"], 2);
        assert_eq!(json["errors_by_reason"]["Server(StorageError)"]["example"], "cannot open the partition log: EIO");
        assert!(json["fatal"].is_null());
        // Without errors the text is one line, as before.
        assert_eq!(report_text("produce", &Totals::new(), Duration::from_secs(1), None).lines().count(), 1);
    }

    #[tokio::test]
    async fn the_scheduled_run_counts_what_stays_unanswered_after_the_wait_as_unanswered() {
        let (outstanding, deliveries) = tokio::sync::mpsc::channel(8);
        let shared = Arc::new(Mutex::new(SchedulePacing { pacing: Pacing::new(), unanswered: 3 }));
        // The run's end plus the wait (`ANSWERS_WAIT_AFTER_RUN` in a real run).
        let give_up = Instant::now() + Duration::from_millis(200);
        let collector = tokio::spawn(collect_scheduled(deliveries, shared, 16, give_up, RunControl::new()));
        let (answer, answered) = tokio::sync::oneshot::channel();
        outstanding.send((Instant::now(), answered)).await.unwrap();
        let meta = crate::client::RecordMetadata { partition: 0, offset: Offset(0) };
        answer.send(Ok(meta)).unwrap();
        // Two records whose answers never come; the sender still holds its end of the queue.
        let (_never1, unanswered1) = tokio::sync::oneshot::channel();
        let (_never2, unanswered2) = tokio::sync::oneshot::channel();
        outstanding.send((Instant::now(), unanswered1)).await.unwrap();
        outstanding.send((Instant::now(), unanswered2)).await.unwrap();
        let totals = collector.await.unwrap();
        assert_eq!(totals.errors, 2);
        assert_eq!(totals.errors_by_reason.get("Unanswered").map(|reason| reason.count), Some(2));
        assert!(Instant::now() >= give_up, "the answered record was accounted, the others waited for");
        assert_eq!(totals.latency_us.len(), 1);
        drop(outstanding);
    }
}
