//! `jepsen/run`: the real `keel` binary in Docker containers, real faults, a recorded history judged
//! by the simulation's checker (`keel_model::queue_checker`), and a report.
//!
//! # One run
//! 1. Build the image (no registry: docker.rs) from the `keel` binary `jepsen/run` built.
//! 2. Create the run's network and N brokers (one Raft group for metadata, `--peers`), wait until the
//!    cluster answers, create the test topic.
//! 3. Run the workload (workload.rs) and the nemesis (nemesis.rs) for `--time-limit` seconds.
//! 4. Heal everything, wait for the cluster to recover, read every partition from offset 0.
//! 5. Check the history; write `history.jsonl`, `summary.json`, `report.html`, the PNGs and the
//!    brokers' logs; remove every container, volume and network (also on Ctrl-C and on failure).
//!
//! Exit codes: 0 valid; 1 an anomaly or another failed check; 2 bad arguments; 3 the harness could
//! not run (Docker, build); 130 interrupted.
//!
//! # Verdict under `corrupt` (ADR 0013)
//! With replication (the default, `--replication 3`) the nemesis damages one broker's copy, a
//! minority, so nothing acknowledged may be lost: every anomaly fails the run. With `--replication 1`
//! a partition has one copy, so damaging a segment loses the acknowledged records after the damage,
//! and the checker reports them. Such anomalies are *expected* when every one of them is in a
//! partition the nemesis corrupted (and, for a missing write, was acknowledged before the
//! corruption); they are listed as expected and do not fail the run. Anything else does, and so does
//! any fetch that returned a batch with a bad CRC (a broker must never serve one).
//!
//! # Exactly-once
//! The producers are idempotent unless `--no-idempotence`, and the history is then judged in the
//! checker's exactly-once mode: an acknowledged record appears exactly once, any other at most once,
//! and each process's records in the order it sent them.

mod docker;
mod nemesis;
mod pki;
mod report;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use keel::client::{Client, ClientError};
use keel::protocol::{ErrorCode, LIST_OFFSETS_LATEST};
use keel_model::history::{History, OpIndex, ProcessId};
use keel_model::queue_checker::{self, AnomalyKind, QueueReport};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::docker::{Cluster, Guard, Resources};
use crate::nemesis::{Corruption, Nemesis, Package, Schedule};
use crate::workload::{client_config, RateLimiter, Recorder, WorkloadConfig};

const TOPIC: &str = "jepsen";
const NODES_MAX: usize = 9;
/// How long the cluster may take to answer at the start and to recover after the heal.
const RECOVERY_BOUND: Duration = Duration::from_secs(90);
/// How long the final read may take.
const FINAL_READ_BOUND: Duration = Duration::from_secs(90);

#[derive(Parser, Debug, Clone)]
#[command(
    name = "jepsen/run",
    about = "Keel's Jepsen-style test: the real keel binary in Docker, real faults, a checked history"
)]
struct Args {
    /// Broker containers (one metadata Raft group of all of them).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Seconds of workload and faults (the heal, recovery and final read come after).
    #[arg(long, default_value_t = 120)]
    time_limit: u64,
    /// Operations per second offered, all processes together.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Fault packages, comma-separated: partition, kill, pause, clock, packet, corrupt; `all`; `none`.
    #[arg(long, default_value = "partition,kill,pause,clock,packet")]
    nemesis: String,
    /// Seed of the fault schedule and the workload's choices (default: drawn and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory (default: target/jepsen/<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run every matrix entry (none, each package alone, partition+kill, pause+kill+clock, all) and
    /// write an index page.
    #[arg(long)]
    matrix: bool,
    /// Copies of each partition (ISR replication, ADR 0011; min ISR is min(2, replication)).
    /// Default: 3, or --nodes if fewer.
    #[arg(long)]
    replication: Option<u32>,
    /// Producers without idempotence (the history is then judged without the exactly-once rules).
    #[arg(long)]
    no_idempotence: bool,
    /// Seconds between faults, as MIN-MAX.
    #[arg(long, default_value = "8-12")]
    interval: String,
    /// Mutual TLS on every broker listener and between the brokers (ADR 0028), with certificates the
    /// run makes (in OUT/tls); the harness's clients present their own.
    #[arg(long)]
    tls: bool,
}

impl Args {
    fn replication(&self) -> u32 {
        self.replication.unwrap_or(3.min(self.nodes as u32))
    }
}

/// What a run ended with.
struct Outcome {
    valid: bool,
    line: String,
}

#[derive(Debug)]
enum Failure {
    /// The harness could not run: exit 3.
    Harness(String),
}

impl From<docker::DockerError> for Failure {
    fn from(error: docker::DockerError) -> Failure {
        Failure::Harness(error.to_string())
    }
}

fn main() {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = error.print();
                std::process::exit(0);
            }
            // One line: clap's first line names the problem.
            let text = error.to_string();
            eprintln!("jepsen: {}", text.lines().next().unwrap_or("bad arguments").trim_start_matches("error: "));
            std::process::exit(2);
        }
    };
    let (packages, schedule) = match validate(&args) {
        Ok(valid) => valid,
        Err(message) => {
            eprintln!("jepsen: {message}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let code = runtime.block_on(run_main(args, packages, schedule));
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

/// Checks the arguments; one clear line when they are wrong.
fn validate(args: &Args) -> Result<(Vec<Package>, Schedule), String> {
    if args.nodes == 0 || args.nodes > NODES_MAX {
        return Err(format!("--nodes must be between 1 and {NODES_MAX}, got {}", args.nodes));
    }
    if args.time_limit == 0 || args.time_limit > 24 * 3600 {
        return Err(format!("--time-limit must be between 1 and 86400 seconds, got {}", args.time_limit));
    }
    if args.rate == 0 || args.rate > 100_000 {
        return Err(format!("--rate must be between 1 and 100000 operations per second, got {}", args.rate));
    }
    if args.replication() == 0 || args.replication() as usize > args.nodes {
        return Err(format!(
            "--replication must be between 1 and --nodes ({}), got {}",
            args.nodes,
            args.replication()
        ));
    }
    let packages = Package::parse_list(&args.nemesis)?;
    if args.matrix && args.nemesis != "partition,kill,pause,clock,packet" {
        return Err("--matrix runs its own nemesis list; drop --nemesis".into());
    }
    let bad_interval = || format!("--interval must be MIN-MAX seconds with 1 <= MIN <= MAX, got {:?}", args.interval);
    let (low, high) = args.interval.split_once('-').ok_or_else(bad_interval)?;
    let (low, high): (u64, u64) =
        (low.trim().parse().map_err(|_| bad_interval())?, high.trim().parse().map_err(|_| bad_interval())?);
    if low == 0 || low > high {
        return Err(bad_interval());
    }
    let schedule = Schedule { interval_ms: (low * 1000, high * 1000), ..Schedule::default() };
    Ok((packages, schedule))
}

fn unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

async fn run_main(args: Args, packages: Vec<Package>, schedule: Schedule) -> i32 {
    if !docker::daemon_available() {
        eprintln!("jepsen: no Docker daemon answers `docker info`; the Jepsen tests need one");
        return 3;
    }
    let seed = args.seed.unwrap_or_else(|| (unix_ms() as u64) % 1_000_000_007);
    let out = args.out.clone().unwrap_or_else(|| workspace_root().join(format!("target/jepsen/{}", unix_ms() / 1000)));
    if let Err(error) = std::fs::create_dir_all(&out) {
        eprintln!("jepsen: cannot create {}: {error}", out.display());
        return 3;
    }
    let out = std::fs::canonicalize(&out).unwrap_or(out);
    let invocation = format!("{}-{}", std::process::id(), seed % 100_000);
    let resources = Resources::new(&invocation);
    // The image lives as long as the invocation; its own list, so a matrix entry's guard leaves it.
    let image_resources = Resources::new(&format!("{invocation}-image"));
    let signal_resources = resources.clone();
    let signal_image_resources = image_resources.clone();

    let work = async {
        let binary = keel_binary()?;
        let image = format!("{}:{invocation}", docker::IMAGE_REPOSITORY);
        // Removed with everything else when the invocation ends (the matrix keeps it across entries).
        let _image_guard = Guard { resources: image_resources.clone() };
        image_resources.add(docker::Resource::Image(image.clone()));
        eprintln!("jepsen: building image {image} from {}", binary.display());
        docker::build_image(&binary, &out, &image).await?;
        if !args.matrix {
            let outcome = run_one(&args, &packages, schedule, seed, &out, &image, &resources, "run").await?;
            println!("{}", outcome.line);
            return Ok::<bool, Failure>(outcome.valid);
        }
        let mut entries = Vec::new();
        let mut all_valid = true;
        for (name, entry_packages) in matrix_entries() {
            let entry_dir = out.join(&name);
            eprintln!("jepsen: matrix entry {name}");
            let outcome =
                run_one(&args, &entry_packages, schedule, seed, &entry_dir, &image, &resources, &name).await?;
            println!("{name}: {}", outcome.line);
            all_valid &= outcome.valid;
            entries.push((name.clone(), format!("{name}/report.html"), outcome.valid, outcome.line));
            report::write_index(&entries, &out.join("index.html")).map_err(|e| Failure::Harness(e.to_string()))?;
        }
        eprintln!("jepsen: index at {}", out.join("index.html").display());
        Ok(all_valid)
    };
    let result = tokio::select! {
        biased;
        signal = wait_for_signal() => {
            eprintln!("jepsen: {signal}: stopping and removing the run's containers, volumes and network");
            // Let killed `docker` children exit before sweeping what they may have created.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut failures = signal_resources.remove_all_and_sweep();
            failures.extend(signal_image_resources.remove_all());
            for failure in &failures {
                eprintln!("jepsen: cleanup: {failure}");
            }
            return 130;
        }
        result = work => result,
    };
    match result {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(Failure::Harness(message)) => {
            eprintln!("jepsen: {message}");
            3
        }
    }
}

async fn wait_for_signal() -> &'static str {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("jepsen/ sits in the workspace").to_path_buf()
}

/// The `keel` binary `jepsen/run` built beside this harness (same profile, same directory).
fn keel_binary() -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe().map_err(|e| Failure::Harness(format!("locating the harness: {e}")))?;
    let binary = exe.with_file_name("keel");
    if !binary.exists() {
        return Err(Failure::Harness(format!(
            "{} missing: run the harness through jepsen/run, which builds it",
            binary.display()
        )));
    }
    Ok(binary)
}

fn matrix_entries() -> Vec<(String, Vec<Package>)> {
    let mut entries = vec![("none".to_owned(), Vec::new())];
    for package in Package::ALL {
        entries.push((package.name().to_owned(), vec![package]));
    }
    entries.push(("partition+kill".into(), vec![Package::Partition, Package::Kill]));
    entries.push(("pause+kill+clock".into(), vec![Package::Kill, Package::Pause, Package::Clock]));
    entries.push(("all".into(), Package::ALL.to_vec()));
    entries
}

/// Waits until every node answers as a voter, one is the Raft leader, and (once the topic exists)
/// every partition's leader answers.
async fn wait_for_cluster(
    client: &Client,
    n_nodes: usize,
    topic: Option<(&str, u32)>,
    bound: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::from("no answer yet");
    loop {
        if started.elapsed() > bound {
            return Err(format!("the cluster did not become whole within {bound:?}: {last}"));
        }
        match tokio::time::timeout(Duration::from_secs(5), ready(client, n_nodes, topic)).await {
            Ok(Ok(())) => return Ok(started.elapsed()),
            Ok(Err(reason)) => last = reason,
            Err(_) => last = "a status request timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn ready(client: &Client, n_nodes: usize, topic: Option<(&str, u32)>) -> Result<(), String> {
    let status = client.cluster_status(true).await.map_err(|e| e.to_string())?;
    let reachable = status.nodes.iter().filter(|node| node.voter && node.reachable).count();
    if reachable < n_nodes {
        return Err(format!("{reachable} of {n_nodes} voters reachable"));
    }
    let leaders: BTreeSet<u64> = status.nodes.iter().map(|node| node.leader_id).collect();
    if leaders.len() != 1 || leaders.contains(&0) {
        return Err(format!("no agreed Raft leader (nodes name {leaders:?})"));
    }
    if let Some((topic, partitions)) = topic {
        client.forget_leaders(topic);
        for partition in 0..partitions {
            client
                .list_offsets(topic, partition, LIST_OFFSETS_LATEST)
                .await
                .map_err(|e| format!("{topic}/{partition}: {e}"))?;
        }
    }
    Ok(())
}

async fn create_topic(client: &Client, partitions: u32, replication: u32) -> Result<(), String> {
    let started = Instant::now();
    loop {
        match client.create_topic(TOPIC, partitions, replication).await {
            Ok(()) => return Ok(()),
            Err(ClientError::Server { code: ErrorCode::TopicAlreadyExists, .. }) => return Ok(()),
            Err(error) if started.elapsed() > Duration::from_secs(30) => {
                return Err(format!("creating {TOPIC}: {error}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_one(
    args: &Args,
    packages: &[Package],
    schedule: Schedule,
    seed: u64,
    out: &Path,
    image: &str,
    resources: &Resources,
    name: &str,
) -> Result<Outcome, Failure> {
    std::fs::create_dir_all(out.join("logs")).map_err(|e| Failure::Harness(format!("{}: {e}", out.display())))?;
    let _guard = Guard { resources: resources.clone() };
    let run_id = format!("{}-{}", std::process::id(), name.replace('+', "-"));
    let package_names: Vec<&str> = packages.iter().map(|p| p.name()).collect();
    let nemesis_text = if package_names.is_empty() { "none".to_owned() } else { package_names.join(",") };
    eprintln!(
        "jepsen: run {run_id}: {} nodes, {} s, rate {}/s, nemesis {nemesis_text}, seed {seed}",
        args.nodes, args.time_limit, args.rate
    );
    let cluster = Arc::new(Cluster::start(&run_id, args.nodes, seed, (out, args.tls), image, resources).await?);
    if let Some(pki) = &cluster.pki {
        let identity = keel::tls::Identity { cert: pki.client_cert.clone(), key: pki.client_key.clone() };
        let tls = keel::tls::client_config(&pki.ca, Some(&identity)).map_err(|e| Failure::Harness(e.to_string()))?;
        workload::set_tls(tls);
    }
    let client = Client::new(cluster.bootstrap(), client_config());
    let partitions = (2 * args.nodes as u32).max(4);
    let mut problems: Vec<String> = Vec::new();
    let startup = wait_for_cluster(&client, args.nodes, None, RECOVERY_BOUND).await.map_err(Failure::Harness)?;
    create_topic(&client, partitions, args.replication()).await.map_err(Failure::Harness)?;
    wait_for_cluster(&client, args.nodes, Some((TOPIC, partitions)), RECOVERY_BOUND).await.map_err(Failure::Harness)?;
    eprintln!("jepsen: cluster up in {:.1} s; topic {TOPIC} with {partitions} partitions", startup.as_secs_f64());

    let start_unix_ms = unix_ms();
    let recorder = Recorder::new(Instant::now());
    let stop = CancellationToken::new();
    // Jepsen's concurrency: enough processes that the ones stuck on an unavailable partition (one
    // operation each, up to OPERATION_MS_MAX) leave others running.
    let producers = 2 * args.nodes as u32;
    let consumers = args.nodes as u32;
    let config = WorkloadConfig {
        bootstrap: cluster.bootstrap(),
        topic: TOPIC.into(),
        partitions,
        producers,
        consumers,
        seed,
        idempotent: !args.no_idempotence,
    };
    let workload = tokio::spawn(workload::run(config, RateLimiter::new(args.rate), recorder.clone(), stop.clone()));
    let mut nemesis = Nemesis::new(cluster.clone(), recorder.clone(), packages.to_vec(), TOPIC.into(), schedule);
    let nemesis_stop = stop.clone();
    let time_limit = Duration::from_secs(args.time_limit);
    let timer_stop = stop.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(time_limit).await;
        timer_stop.cancel();
    });
    let nemesis_result = nemesis.run(StdRng::seed_from_u64(seed ^ 0x6e656d), nemesis_stop).await;
    stop.cancel();
    timer.abort();
    let _ = workload.await;
    nemesis_result?;
    if nemesis.pause_refusals > 0 && nemesis.pauses_applied == 0 {
        problems.push(format!(
            "pause never took effect: the cgroup freezer refused all {} nodes it was asked to freeze (see the skipped faults)",
            nemesis.pause_refusals
        ));
    }
    eprintln!("jepsen: healed; waiting for recovery");
    let recovery = match wait_for_cluster(&client, args.nodes, Some((TOPIC, partitions)), RECOVERY_BOUND).await {
        Ok(recovery) => Some(recovery),
        Err(reason) => {
            problems.push(format!("after the heal: {reason}"));
            None
        }
    };
    let final_process = ProcessId(u64::from(producers + consumers));
    let final_read =
        workload::final_read(&cluster.bootstrap(), TOPIC, partitions, final_process, &recorder, FINAL_READ_BOUND).await;
    if let Err(reason) = &final_read {
        problems.push(format!("final read: {reason}"));
    }
    for reason in recorder.corrupt_reads() {
        problems.push(format!("a fetch returned a batch with a bad CRC (a broker served corrupt data): {reason}"));
    }

    // Logs, and what the brokers said about damaged segments.
    let mut detections: Vec<String> = Vec::new();
    for node in &cluster.nodes {
        let log = docker::logs(node).await;
        let _ = std::fs::write(out.join("logs").join(format!("n{}.log", node.id)), &log);
        for line in log.lines().filter(|line| is_detection(line)) {
            detections.push(format!("n{}: {}", node.id, line.trim()));
        }
    }

    let history = recorder.history();
    let write_history = std::fs::File::create(out.join("history.jsonl")).and_then(|file| {
        let mut writer = std::io::BufWriter::new(file);
        history.write_jsonl(&mut writer)?;
        std::io::Write::flush(&mut writer)
    });
    write_history.map_err(|e| Failure::Harness(format!("writing history.jsonl: {e}")))?;
    let options = queue_checker::CheckOptions { exactly_once: !args.no_idempotence, ..Default::default() };
    let checked = queue_checker::check_with(&history, options);
    let expected =
        if args.replication() == 1 { expected_anomalies(&checked, &history, &nemesis.corruptions) } else { Vec::new() };
    let unexpected: usize = AnomalyKind::ALL
        .iter()
        .map(|kind| checked.count(*kind) - expected.iter().find(|(k, _, _)| k == kind).map_or(0, |(_, n, _)| *n))
        .sum();
    let history_ok = checked.history_error.is_none();
    let valid = unexpected == 0 && problems.is_empty() && history_ok;

    // Counts.
    let stats = &checked.stats;
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for event in history.events() {
        let is_op = matches!(event.op, keel_model::history::Op::Send { .. } | keel_model::history::Op::Poll { .. });
        if is_op && event.kind != keel_model::history::EventKind::Invoke {
            *outcomes
                .entry(match event.kind {
                    keel_model::history::EventKind::Ok => "ok",
                    keel_model::history::EventKind::Fail => "fail",
                    _ => "info",
                })
                .or_default() += 1;
        }
    }
    let invokes = history.events().iter().filter(|e| e.kind == keel_model::history::EventKind::Invoke).count();
    let kinds: Vec<String> =
        checked.anomaly_kinds().iter().map(|kind| format!("{} {kind}", checked.count(*kind))).collect();
    let anomalies_text = if kinds.is_empty() { "no anomalies".to_owned() } else { kinds.join(", ") };
    let expected_count: usize = expected.iter().map(|(_, n, _)| n).sum();
    let verdict = if !valid {
        format!(
            "INVALID: {unexpected} unexpected anomalies, {} other problems",
            problems.len() + usize::from(!history_ok)
        )
    } else if expected_count > 0 {
        format!(
            "valid (with {expected_count} expected anomalies: data loss under corrupt with one copy, detection only)"
        )
    } else {
        "valid: no anomalies".to_owned()
    };
    let line = format!(
        "{verdict}; {invokes} operations ({} ok, {} fail, {} info; {} sends, {} acked), {anomalies_text}; {} faults; {} corruption detections in broker logs",
        outcomes.get("ok").unwrap_or(&0),
        outcomes.get("fail").unwrap_or(&0),
        outcomes.get("info").unwrap_or(&0),
        stats.sends_invoked,
        stats.sends_ok_with_offset,
        history.nemesis_events().iter().filter(|e| e.value.get("id").is_some() && !matches!(e.f.as_str(), "heal" | "start" | "resume")).count(),
        detections.len(),
    );

    let faults = report::fault_intervals(&history);
    let mut notes = vec![
        "The workload is the harness's own thin twin of sim/src/workload.rs (same history types, same checker); it records wall time from the run's start, which the simulation's does not.".to_owned(),
        format!("Client-side operation timeouts ({} ms): {}.", workload::OPERATION_MS_MAX, recorder.timeouts()),
        if args.no_idempotence {
            "Producers without idempotence: judged without the exactly-once rules.".to_owned()
        } else {
            format!("Idempotent producers (delivery timeout {} ms): judged exactly-once (each acknowledged record once, any other at most once, each process's records in send order).", workload::DELIVERY_TIMEOUT_MS)
        },
    ];
    if args.replication() == 1 {
        notes.push("One copy per partition (--replication 1): a killed, paused or cut-off partition leader makes its partition unavailable (fail/info), not lost.".into());
        if packages.contains(&Package::Corrupt) {
            notes.push("corrupt with one copy is detection only: acknowledged records after the damage are lost with the only copy; anomalies confined to corrupted partitions are expected, anything else fails the run.".into());
        }
    } else {
        notes.push(format!("{} copies per partition, min ISR {}: acks=all waits for every in-sync replica's fsync, so no fault here (corrupt damages one copy) may lose an acknowledged record; every anomaly fails the run.", args.replication(), args.replication().min(2)));
    }
    for skipped in &nemesis.skipped {
        notes.push(format!("skipped: {skipped}"));
    }
    for corruption in &nemesis.corruptions {
        notes.push(format!(
            "corrupted n{} {} ({}) at {:.1} s: {}",
            corruption.node,
            corruption.file,
            corruption.partition,
            corruption.time_ns as f64 / 1e9,
            corruption.mode
        ));
    }
    for detection in detections.iter().take(20) {
        notes.push(format!("detected: {detection}"));
    }
    if let Err(error) = report::register_font_once() {
        problems.push(format!("plots: {error}"));
    }
    for (file, plot) in [
        (
            "throughput.png",
            report::plot_throughput as fn(&History, &[report::FaultInterval], &Path) -> Result<(), String>,
        ),
        ("latency.png", report::plot_latency),
    ] {
        if let Err(error) = plot(&history, &faults, &out.join(file)) {
            problems.push(format!("{file}: {error}"));
        }
    }
    let parameters = vec![
        ("nemesis".to_owned(), nemesis_text.clone()),
        ("nodes".into(), format!("{} on network {} ({})", args.nodes, cluster.network, cluster.subnet)),
        ("time limit".into(), format!("{} s", args.time_limit)),
        ("rate".into(), format!("{}/s offered", args.rate)),
        ("seed".into(), seed.to_string()),
        ("topic".into(), format!("{TOPIC}: {partitions} partitions, replication {}", args.replication())),
        (
            "processes".into(),
            format!(
                "{producers} {} producers, {consumers} consumers, final reader {}",
                if args.no_idempotence { "plain" } else { "idempotent" },
                final_process.0
            ),
        ),
        ("started".into(), format!("{start_unix_ms} ms since the epoch (history times are ns since then)")),
        ("cluster up in".into(), format!("{:.1} s", startup.as_secs_f64())),
        (
            "recovered after heal in".into(),
            recovery.map_or("did not recover".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
        ),
        (
            "final read".into(),
            match &final_read {
                Ok(high_watermarks) => format!("complete; high watermarks {high_watermarks:?}"),
                Err(reason) => reason.clone(),
            },
        ),
    ];
    let counts = vec![
        ("operations invoked".to_owned(), invokes.to_string()),
        (
            "ok / fail / info".into(),
            format!(
                "{} / {} / {}",
                outcomes.get("ok").unwrap_or(&0),
                outcomes.get("fail").unwrap_or(&0),
                outcomes.get("info").unwrap_or(&0)
            ),
        ),
        (
            "sends".into(),
            format!(
                "{} invoked, {} acked, {} failed, {} unknown",
                stats.sends_invoked,
                stats.sends_ok_with_offset,
                stats.sends_failed,
                stats.sends_info + stats.sends_pending
            ),
        ),
        (
            "polls".into(),
            format!(
                "{} ok, {} records read, {} distinct values",
                stats.polls_ok, stats.records_read, stats.distinct_values_read
            ),
        ),
        (
            "corruption detections".into(),
            format!("{} broker log lines; {} corrupt batches served", detections.len(), recorder.corrupt_reads().len()),
        ),
    ];
    let summary = report::Summary {
        title: format!("Keel Jepsen: {name} ({nemesis_text})"),
        verdict: verdict.clone(),
        valid,
        parameters,
        counts,
        report: &checked,
        expected: expected.clone(),
        problems: problems.clone(),
        notes,
        faults: &faults,
    };
    report::write_html(&summary, &out.join("report.html"))
        .map_err(|e| Failure::Harness(format!("report.html: {e}")))?;
    let summary_json = json!({
        "name": name,
        "nemesis": nemesis_text,
        "seed": seed,
        "replication": args.replication(),
        "idempotent": !args.no_idempotence,
        "valid": valid,
        "verdict": verdict,
        "operations": invokes,
        "ok": outcomes.get("ok").unwrap_or(&0),
        "fail": outcomes.get("fail").unwrap_or(&0),
        "info": outcomes.get("info").unwrap_or(&0),
        "sends_acked": stats.sends_ok_with_offset,
        "anomalies": checked.anomaly_kinds().iter().map(|kind| (kind.name().to_owned(), checked.count(*kind))).collect::<BTreeMap<_, _>>(),
        "expected_anomalies": expected.iter().map(|(kind, n, _)| (kind.name().to_owned(), *n)).collect::<BTreeMap<_, _>>(),
        "problems": problems,
        "corruptions": nemesis.corruptions,
        "detections": detections,
    });
    let _ = std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary_json).unwrap_or_default());
    eprint!("{checked}");
    for problem in &problems {
        eprintln!("jepsen: problem: {problem}");
    }
    eprintln!("jepsen: report at {}", out.join("report.html").display());
    Ok(Outcome { valid, line })
}

/// A broker log line saying it found damaged data (recovery truncating a segment, a CRC mismatch).
fn is_detection(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    lower.contains("log recovery: truncating") || lower.contains("crc") || lower.contains("corrupt")
}

/// The anomalies that data loss under `corrupt` explains (see the crate doc): per kind, how many and
/// why. Only kinds a lost suffix can cause, only in corrupted partitions, and a missing write only if
/// it was acknowledged before its partition was corrupted.
fn expected_anomalies(
    checked: &QueueReport,
    history: &History,
    corruptions: &[Corruption],
) -> Vec<(AnomalyKind, usize, String)> {
    if corruptions.is_empty() {
        return Vec::new();
    }
    let time_of: BTreeMap<OpIndex, u64> = history.events().iter().map(|e| (e.index, e.time_ns)).collect();
    let last_corruption_of = |partition: &str| -> Option<u64> {
        corruptions.iter().filter(|c| c.partition == partition).map(|c| c.time_ns).max()
    };
    let why =
        "the only copy of a corrupted partition lost its records after the damage (no replication yet)".to_owned();
    let missing = |writes: &[queue_checker::MissingWrite]| {
        writes
            .iter()
            .filter(|w| {
                last_corruption_of(w.partition.as_str())
                    .is_some_and(|at| time_of.get(&w.send_ok).is_some_and(|acked| *acked <= at))
            })
            .count()
    };
    let in_corrupted = |partition: &str| last_corruption_of(partition).is_some();
    let mut expected = Vec::new();
    let mut push = |kind: AnomalyKind, count: usize| {
        if count > 0 {
            expected.push((kind, count, why.clone()));
        }
    };
    push(AnomalyKind::LostWrite, missing(&checked.lost_writes));
    push(AnomalyKind::Unseen, missing(&checked.unseen));
    push(AnomalyKind::LostRead, checked.lost_reads.iter().filter(|l| in_corrupted(l.partition.as_str())).count());
    push(
        AnomalyKind::InconsistentOffsets,
        checked.inconsistent_offsets.iter().filter(|i| in_corrupted(i.partition.as_str())).count(),
    );
    push(
        AnomalyKind::NonmonotonicSend,
        checked.nonmonotonic_sends.iter().filter(|n| in_corrupted(n.partition.as_str())).count(),
    );
    expected
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<(Vec<Package>, Schedule), String> {
        let mut argv = vec!["jepsen/run"];
        argv.extend_from_slice(extra);
        validate(&Args::try_parse_from(argv).map_err(|e| e.to_string())?)
    }

    #[test]
    fn replication_defaults_to_three_copies_or_every_node_when_fewer() {
        let parsed = |argv: &[&str]| Args::try_parse_from([&["jepsen/run"][..], argv].concat()).unwrap();
        assert_eq!(parsed(&[]).replication(), 3);
        assert_eq!(parsed(&["--nodes", "2"]).replication(), 2);
        assert_eq!(parsed(&["--replication", "1"]).replication(), 1);
        assert!(args(&["--nodes", "1"]).is_ok(), "one node gets one copy, not an error");
        assert!(!parsed(&[]).no_idempotence, "idempotent producers by default");
    }

    #[test]
    fn bad_arguments_get_one_clear_line() {
        for (argv, expected) in [
            (&["--nodes", "0"][..], "--nodes must be between 1 and 9, got 0"),
            (&["--nodes", "10"][..], "--nodes must be between 1 and 9, got 10"),
            (&["--time-limit", "0"][..], "--time-limit must be between"),
            (&["--rate", "0"][..], "--rate must be between"),
            (&["--nemesis", "partition,flood"][..], "unknown nemesis \"flood\""),
            (&["--replication", "6"][..], "--replication must be between 1 and --nodes (5), got 6"),
            (&["--interval", "5"][..], "--interval must be MIN-MAX"),
            (&["--interval", "9-3"][..], "--interval must be MIN-MAX"),
            (&["--matrix", "--nemesis", "kill"][..], "--matrix runs its own nemesis list"),
        ] {
            let error = args(argv).unwrap_err();
            assert!(error.contains(expected), "{argv:?}: {error}");
            assert_eq!(error.lines().count(), 1, "{argv:?}: {error}");
        }
        let (packages, schedule) = args(&["--nemesis", "pause,clock", "--interval", "3-5"]).unwrap();
        assert_eq!(packages, [Package::Pause, Package::Clock]);
        assert_eq!(schedule.interval_ms, (3000, 5000));
        assert_eq!(args(&["--nemesis", "none"]).unwrap().0, []);
    }

    #[test]
    fn the_matrix_has_every_entry_the_issue_names() {
        let names: Vec<String> = matrix_entries().into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "none",
                "partition",
                "kill",
                "pause",
                "clock",
                "packet",
                "corrupt",
                "partition+kill",
                "pause+kill+clock",
                "all"
            ]
        );
    }

    #[test]
    fn only_loss_in_corrupted_partitions_acked_before_the_damage_is_expected() {
        use keel_model::history::Offset;
        let mut history = History::new();
        // t/0: written at offsets 0 and 1, then corrupted and truncated, so nothing is read; t/1: a
        // write lost without any corruption.
        let send = history.invoke_send(ProcessId(0), 10, "t/0", "0-0");
        history.send_ok(send, 20, Offset(0));
        let send = history.invoke_send(ProcessId(0), 30, "t/1", "0-1");
        history.send_ok(send, 40, Offset(0));
        let corruption_ns = 50;
        let send = history.invoke_send(ProcessId(0), 60, "t/0", "0-2");
        history.send_ok(send, 70, Offset(0));
        let poll = history.invoke_poll(ProcessId(1), 80);
        let mut reads = keel_model::history::PollReads::new();
        reads.insert("t/0".into(), vec![(Offset(0), "0-2".into())]);
        reads.insert("t/1".into(), vec![]);
        history.poll_ok(poll, 90, reads);
        let checked = queue_checker::check(&history);
        assert!(!checked.is_valid());
        let corruptions = [Corruption {
            node: 1,
            partition: "t/0".into(),
            file: "t@1/0/00000000000000000000.log".into(),
            mode: "truncated".into(),
            time_ns: corruption_ns,
        }];
        let expected = expected_anomalies(&checked, &history, &corruptions);
        let total_expected: usize = expected.iter().map(|(_, n, _)| n).sum();
        // The t/1 loss is never excused; without corruptions nothing is.
        assert!(total_expected < checked.anomaly_count(), "{checked}\n{expected:?}");
        assert!(checked.unseen.iter().any(|w| w.partition.as_str() == "t/1"), "{checked}");
        assert!(expected_anomalies(&checked, &history, &[]).is_empty());
        // The t/0 loss (0-0 at offset 0, replaced by 0-2) is.
        assert!(
            expected.iter().any(|(kind, _, _)| *kind == AnomalyKind::InconsistentOffsets),
            "{checked}\n{expected:?}"
        );
    }
}
