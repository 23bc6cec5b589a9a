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

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

struct Totals {
    records: u64,
    bytes: u64,
    errors: u64,
    /// Produce requests sent (0 for consume): records per request shows how well batching works.
    requests: u64,
    latency_us: Histogram<u64>,
}

impl Totals {
    fn new() -> Totals {
        Totals { records: 0, bytes: 0, errors: 0, requests: 0, latency_us: histogram() }
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
    }
}

/// `keel bench produce`: one run, or with `--compare-idempotence` one without idempotence and one
/// with it, on the same topic.
async fn produce(cli: &Cli, args: &ProduceBenchArgs) -> Result<(), CliError> {
    if args.size == 0 || args.producers == 0 || args.window == 0 || args.rate == Some(0) {
        return Err(fail("--size, --producers, --window and --rate must be positive"));
    }
    let admin = Client::new(cli.broker.clone(), ClientConfig::default());
    create_topic_if_missing(&admin, &args.topic, args.partitions).await?;
    if args.compare_idempotence {
        let off = produce_run(cli, &args.with_idempotence(false)).await?;
        let on = produce_run(cli, &args.with_idempotence(true)).await?;
        report_comparison(cli, &off, &on, args.rate);
    } else if args.compression != Compression::None {
        let plain = measured_run(cli, &admin, &args.with_compression(Compression::None)).await?;
        let compressed = measured_run(cli, &admin, args).await?;
        report_compression(cli, args, &plain, &compressed);
    } else {
        let run = produce_run(cli, args).await?;
        report(cli, "produce", &run.totals, run.elapsed, args.rate);
    }
    Ok(())
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
async fn create_topic_if_missing(admin: &Client, topic: &str, partitions: u32) -> Result<(), CliError> {
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
async fn wait_until_ready(admin: &Client, topic: &str) {
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
struct Run {
    totals: Totals,
    elapsed: Duration,
}

/// Runs `args.producers` producers for `args.duration_s` and adds up what they measured.
async fn produce_run(cli: &Cli, args: &ProduceBenchArgs) -> Result<Run, CliError> {
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let started = Instant::now();
    let mut workers = FuturesUnordered::new();
    for seed in 0..u64::from(args.producers) {
        let client = Client::new(cli.broker.clone(), ClientConfig::default());
        let args = args.clone();
        let rate_per_producer = args.rate.map(|rate| rate as f64 / f64::from(args.producers));
        workers.push(tokio::spawn(produce_worker(client, args, deadline, rate_per_producer, seed)));
    }
    let mut totals = Totals::new();
    while let Some(result) = workers.next().await {
        let worker = result.map_err(|error| fail(format!("bench worker failed: {error}")))?;
        totals.records += worker.records;
        totals.bytes += worker.bytes;
        totals.errors += worker.errors;
        totals.requests += worker.requests;
        totals.latency_us.add(&worker.latency_us).expect("same bounds");
    }
    Ok(Run { totals, elapsed: started.elapsed() })
}

async fn produce_worker(
    client: Arc<Client>,
    args: ProduceBenchArgs,
    deadline: Instant,
    rate_per_producer: Option<f64>,
    seed: u64,
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
    let mut next_value = values.iter().cycle();
    if let Some(rate) = rate_per_producer {
        let mut totals = produce_on_schedule(producer.clone(), &args, values, deadline, rate).await;
        totals.requests = producer.stats().requests;
        return totals;
    }
    let mut totals = Totals::new();
    // Deliveries complete almost in send order, so a FIFO with a non-blocking check of its head is
    // enough and costs far less per record than a FuturesUnordered of 20k futures.
    let mut outstanding: VecDeque<(Instant, Delivery)> = VecDeque::with_capacity(args.window);
    loop {
        let finished = Instant::now() >= deadline;
        if finished || outstanding.len() >= args.window {
            let Some((sent_at, delivery)) = outstanding.pop_front() else { break };
            account(&mut totals, sent_at, delivered(delivery).await, args.size);
            continue;
        }
        let record = Record { value: next_value.next().cloned(), ..Record::default() };
        let sent_at = Instant::now();
        outstanding.push_back((sent_at, producer.send(&args.topic, None, record).await));
        while let Some((_, delivery)) = outstanding.front_mut() {
            match delivery.try_recv() {
                Ok(result) => {
                    let (sent_at, _) = outstanding.pop_front().expect("front exists");
                    account(&mut totals, sent_at, result, args.size);
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => break,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    outstanding.pop_front();
                    totals.errors += 1;
                }
            }
        }
    }
    totals.requests = producer.stats().requests;
    totals
}

/// Sends one record every `1 / rate` seconds until `deadline`, whatever the answers do. A collector
/// task awaits the deliveries in send order (they complete almost in that order) and measures each
/// from its scheduled time; at most `window` are outstanding, beyond which the schedule falls behind,
/// which the latency of the late records then shows.
async fn produce_on_schedule(
    producer: Producer,
    args: &ProduceBenchArgs,
    values: Vec<Bytes>,
    deadline: Instant,
    rate: f64,
) -> Totals {
    let mut next_value = values.iter().cycle();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (outstanding, mut deliveries) = tokio::sync::mpsc::channel::<(Instant, Delivery)>(args.window);
    let size = args.size;
    let collector = tokio::spawn(async move {
        let mut totals = Totals::new();
        while let Some((scheduled, delivery)) = deliveries.recv().await {
            account(&mut totals, scheduled, delivered(delivery).await, size);
        }
        totals
    });
    let mut scheduled = Instant::now();
    while scheduled < deadline {
        tokio::time::sleep_until(scheduled).await;
        let record = Record { value: next_value.next().cloned(), ..Record::default() };
        let delivery = producer.send(&args.topic, None, record).await;
        if outstanding.send((scheduled, delivery)).await.is_err() {
            break;
        }
        scheduled += interval;
    }
    drop(outstanding);
    collector.await.unwrap_or_else(|_| Totals { errors: 1, ..Totals::new() })
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

fn account<T>(totals: &mut Totals, sent_at: Instant, result: Result<T, ClientError>, size: usize) {
    match result {
        Ok(_) => {
            totals.records += 1;
            totals.bytes += size as u64;
            let micros = sent_at.elapsed().as_micros().max(1) as u64;
            let _ = totals.latency_us.record(micros);
        }
        Err(_) => totals.errors += 1,
    }
}

async fn consume(cli: &Cli, args: &ConsumeBenchArgs) -> Result<(), CliError> {
    let client = Client::new(cli.broker.clone(), ClientConfig::default());
    let topic = client.topic(&args.topic).await?;
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let started = Instant::now();
    let mut workers = FuturesUnordered::new();
    for partition in topic.partitions.iter().map(|p| p.partition) {
        let client = Client::new(cli.broker.clone(), ClientConfig::default());
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
        let worker = result.map_err(|error| fail(format!("bench worker failed: {error}")))??;
        totals.records += worker.records;
        totals.bytes += worker.bytes;
        totals.latency_us.add(&worker.latency_us).expect("same bounds");
    }
    report(cli, "consume", &totals, started.elapsed(), None);
    Ok(())
}

fn report(cli: &Cli, what: &str, totals: &Totals, elapsed: Duration, rate_target: Option<u64>) {
    if cli.json {
        println!("{}", report_json(what, totals, elapsed, rate_target));
    } else {
        println!("{}", report_text(what, totals, elapsed, rate_target));
    }
}

/// Records per second over `elapsed`.
fn msg_per_s(totals: &Totals, elapsed: Duration) -> f64 {
    totals.records as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn quantile_ms(totals: &Totals, quantile: f64) -> f64 {
    totals.latency_us.value_at_quantile(quantile) as f64 / 1000.0
}

/// One run as a JSON object (`msg_per_s`, `mb_per_s`, latency percentiles in ms, ...).
fn report_json(what: &str, totals: &Totals, elapsed: Duration, rate_target: Option<u64>) -> serde_json::Value {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    json!({
        "bench": what, "records": totals.records, "errors": totals.errors, "seconds": seconds,
        "rate_target": rate_target, "requests": totals.requests,
        "msg_per_s": msg_per_s(totals, elapsed), "mb_per_s": totals.bytes as f64 / seconds / 1e6,
        "p50_ms": quantile_ms(totals, 0.5), "p99_ms": quantile_ms(totals, 0.99), "p999_ms": quantile_ms(totals, 0.999),
    })
}

/// One run as a line for people.
fn report_text(what: &str, totals: &Totals, elapsed: Duration, rate_target: Option<u64>) -> String {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let rate = msg_per_s(totals, elapsed);
    let megabytes = totals.bytes as f64 / seconds / 1e6;
    let target = rate_target.map(|rate| format!(" (offered {rate} msg/s)")).unwrap_or_default();
    let batching = match totals.requests {
        0 => String::new(),
        requests => format!(", {:.1} records/request", totals.records as f64 / requests as f64),
    };
    format!(
        "{what}: {} records in {seconds:.1} s: {rate:.0} msg/s{target}, {megabytes:.1} MB/s; latency p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms; {} errors{batching}",
        totals.records,
        quantile_ms(totals, 0.5),
        quantile_ms(totals, 0.99),
        quantile_ms(totals, 0.999),
        totals.errors
    )
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
    let admin = Client::new(cli.broker.clone(), ClientConfig::default());
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
    let client = Client::new(cli.broker.clone(), ClientConfig::default());
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
    let producer = Producer::new(Client::new(cli.broker.clone(), ClientConfig::default()), config);
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
