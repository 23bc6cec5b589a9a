//! `keel bench connections`: what many idle client connections cost a broker's producers, and its
//! memory and file descriptors.
//!
//! In: the options of [`ConnectionsBenchArgs`], a running broker (and, with `--broker-pid`, its
//! `/proc/PID/status` and `/proc/PID/fd`). Out: one report, text or `--json`.
//!
//! The steps:
//! 1. `--producers` producers run alone for `--duration-s`, exactly as `keel bench produce` runs
//!    them (its other flags at their defaults), on `--topic` (created with `--partitions` if missing);
//! 2. `--idle` connections are opened, at most [`OPEN_CONCURRENCY_MAX`] at a time, each by a client
//!    of its own that completes one metadata request on it (so the broker has accepted it and set it
//!    up, not only the kernel); more than [`OPEN_FAILURES_PERCENT_MAX`]% failing stops the bench;
//! 3. with them held open, the producers run again for the same duration;
//! 4. the report shows both runs side by side (msg/s, p50, p99, p999) and the ratios with/without
//!    the idle connections, and with `--broker-pid` the broker's RSS and open files before the idle
//!    connections were opened and while they are open, and the RSS per idle connection.
//!
//! The bench holds a descriptor per idle connection: it raises its own soft `RLIMIT_NOFILE` to the
//! hard limit first, and refuses at once when `--idle` + [`FDS_RESERVED`] exceeds that hard limit.
//! The broker refuses connections beyond its `connections_max` (its config file; lowered at start
//! when its own open-file limit cannot hold them, as its start-up log says), and the producers'
//! connections count too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use super::bench::{
    count_reason, create_topic_if_missing, error_message, error_reason, msg_per_s, produce_run, quantile_ms,
    reasons_json, reasons_text, report_json, stop_if_fatal, ProduceBenchArgs, ReasonErrors, Run,
};
use super::{fail, parse_acks, Cli, CliError};
use crate::client::{Client, ClientConfig, ClientError};
use crate::protocol::Acks;

#[derive(Args, Debug, Clone)]
pub struct ConnectionsBenchArgs {
    #[arg(long, default_value = "keel-bench")]
    pub topic: String,
    /// Partitions to create the topic with, if it does not exist.
    #[arg(long, default_value_t = 10)]
    pub partitions: u32,
    /// Idle connections held open during the second run.
    #[arg(long, default_value_t = 10_000)]
    pub idle: u32,
    /// Concurrent producers, each with its own connection.
    #[arg(long, default_value_t = 4)]
    pub producers: u32,
    /// Length of each of the two runs.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// What an acknowledgement waits for (see `keel bench produce --help`).
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    pub acks: Acks,
    /// The broker's process id: report its RSS and open files (from /proc) before the idle
    /// connections are opened and while they are open.
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
}

/// Idle connections being opened at once.
pub const OPEN_CONCURRENCY_MAX: usize = 200;
/// Idle connections that may fail to open, in percent of `--idle`, before the bench stops.
pub const OPEN_FAILURES_PERCENT_MAX: u64 = 1;
/// Descriptors the bench needs besides the idle connections (producers, admin client, runtime,
/// stdio), for the check against `RLIMIT_NOFILE`.
pub const FDS_RESERVED: u64 = 256;

/// Runs `keel bench connections` (see the module docs).
pub async fn run(cli: &Cli, args: &ConnectionsBenchArgs) -> Result<(), CliError> {
    let produce = produce_args(args)?;
    raise_open_files_limit(u64::from(args.idle) + FDS_RESERVED)?;
    if let Some(pid) = args.broker_pid {
        // A wrong pid fails now, not after the first run.
        sample_broker(pid)?;
    }
    let admin = Client::new(cli.broker.clone(), cli.client_defaults());
    create_topic_if_missing(&admin, &args.topic, args.partitions).await?;
    let alone = produce_run(cli, &produce).await?;
    stop_if_fatal(cli, "produce, without idle connections", &alone, None)?;
    let before = args.broker_pid.map(sample_broker).transpose()?;
    let opened = open_idle(cli, &args.topic, args.idle).await;
    check_opened(args.idle, &opened)?;
    let with = args.broker_pid.map(sample_broker).transpose()?;
    let with_idle = produce_run(cli, &produce).await?;
    stop_if_fatal(cli, &format!("produce, with {} idle connections", opened.clients.len()), &with_idle, None)?;
    let broker = match (args.broker_pid, before, with) {
        (Some(pid), Some(before), Some(with)) => Some(BrokerMemory { pid, before, with }),
        _ => None,
    };
    let report = Report {
        idle: args.idle,
        opened: opened.clients.len() as u64,
        open_elapsed: opened.elapsed,
        open_failures: &opened.failures,
        alone: &alone,
        with_idle: &with_idle,
        broker,
    };
    if cli.json {
        println!("{}", report_json_line(&report));
    } else {
        println!("{}", report_text_lines(&report));
    }
    drop(opened);
    Ok(())
}

/// `keel bench produce`'s arguments with these options, every other flag at its default there.
fn produce_args(args: &ConnectionsBenchArgs) -> Result<ProduceBenchArgs, CliError> {
    if args.idle == 0 || args.producers == 0 || args.duration_s == 0 || args.size == 0 {
        return Err(fail("--idle, --producers, --duration-s and --size must be positive"));
    }
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        produce: ProduceBenchArgs,
    }
    let mut produce = <Defaults as clap::Parser>::try_parse_from(["bench-produce"])
        .map_err(|error| fail(format!("bench produce's defaults do not parse: {error}")))?
        .produce;
    produce.topic = args.topic.clone();
    produce.partitions = args.partitions;
    produce.producers = args.producers;
    produce.duration_s = args.duration_s;
    produce.size = args.size;
    produce.acks = args.acks;
    produce.check().map_err(fail)?;
    Ok(produce)
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; fails when `needed` descriptors
/// exceed the hard limit (no soft limit could then hold them).
#[cfg(not(madsim))]
fn raise_open_files_limit(needed: u64) -> Result<(), CliError> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum.filter(|hard| needed > *hard) {
        return Err(fail(format!(
            "--idle needs {needed} file descriptors here (one per idle connection + {FDS_RESERVED}), but this \
             process's hard limit (RLIMIT_NOFILE) is {hard}: lower --idle or raise the hard limit (ulimit -Hn)"
        )));
    }
    // Without a hard limit (never so on Linux, whose nr_open caps it), ask for what is needed.
    let target = limit.maximum.unwrap_or(needed.max(limit.current.unwrap_or(0)));
    if limit.current.is_some_and(|current| current >= target) {
        return Ok(());
    }
    setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: limit.maximum })
        .map_err(|error| fail(format!("cannot raise this process's open files limit to {target}: {error}")))
}

#[cfg(madsim)]
fn raise_open_files_limit(_needed: u64) -> Result<(), CliError> {
    Err(fail("`keel bench connections` opens real sockets; it does not exist in the simulation"))
}

/// The broker's memory and descriptors at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BrokerSample {
    rss_bytes: u64,
    open_files: u64,
}

/// The broker's samples before the idle connections were opened and while they are open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BrokerMemory {
    pid: u32,
    before: BrokerSample,
    with: BrokerSample,
}

impl BrokerMemory {
    /// The RSS the broker grew by per idle connection held (negative if it shrank).
    fn rss_bytes_per_connection(&self, opened: u64) -> f64 {
        (self.with.rss_bytes as f64 - self.before.rss_bytes as f64) / opened.max(1) as f64
    }
}

/// Reads process `pid`'s resident set size and open descriptors from /proc.
fn sample_broker(pid: u32) -> Result<BrokerSample, CliError> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .map_err(|error| fail(format!("--broker-pid {pid}: cannot read {path}: {error}")))?;
    let rss_kib = parse_vm_rss_kib(&status).ok_or_else(|| fail(format!("--broker-pid {pid}: no VmRSS in {path}")))?;
    let fd_dir = format!("/proc/{pid}/fd");
    let open_files = std::fs::read_dir(&fd_dir)
        .map_err(|error| fail(format!("--broker-pid {pid}: cannot list {fd_dir}: {error}")))?
        .count() as u64;
    Ok(BrokerSample { rss_bytes: rss_kib * 1024, open_files })
}

/// The `VmRSS:` of a /proc/PID/status text, in KiB (the kernel writes `kB` and means KiB).
fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let rest = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let mut words = rest.split_whitespace();
    let kib = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib)
}

/// The idle connections: the clients that hold them (one connection each), how long opening them
/// all took, and the failures by reason.
struct Opened {
    clients: Vec<Arc<Client>>,
    elapsed: Duration,
    failures: BTreeMap<String, ReasonErrors>,
}

/// Opens `count` connections, [`OPEN_CONCURRENCY_MAX`] at a time, each with one metadata request
/// for `topic` done on it. Their clients do not retry: a failure is counted, not hidden.
async fn open_idle(cli: &Cli, topic: &str, count: u32) -> Opened {
    let started = Instant::now();
    let config = ClientConfig { retries: 0, ..cli.client_defaults() };
    let mut opening = futures::stream::iter(0..count)
        .map(|_| open_one(cli.broker.clone(), config.clone(), topic.to_owned()))
        .buffer_unordered(OPEN_CONCURRENCY_MAX);
    let mut opened =
        Opened { clients: Vec::with_capacity(count as usize), elapsed: Duration::ZERO, failures: BTreeMap::new() };
    while let Some(result) = opening.next().await {
        match result {
            Ok(client) => opened.clients.push(client),
            Err(error) => count_reason(&mut opened.failures, error_reason(&error), error_message(&error), 1),
        }
    }
    opened.elapsed = started.elapsed();
    opened
}

/// A client of its own, whose one connection has carried a metadata request.
async fn open_one(broker: String, config: ClientConfig, topic: String) -> Result<Arc<Client>, ClientError> {
    let client = Client::new(broker, config);
    client.metadata(&[topic]).await?;
    Ok(client)
}

/// Fails when more than [`OPEN_FAILURES_PERCENT_MAX`]% of the `idle` connections failed to open.
fn check_opened(idle: u32, opened: &Opened) -> Result<(), CliError> {
    let failed: u64 = opened.failures.values().map(|errors| errors.count).sum();
    if failed * 100 <= u64::from(idle) * OPEN_FAILURES_PERCENT_MAX {
        return Ok(());
    }
    Err(fail(format!(
        "{failed} of {idle} idle connections failed to open in {:.1} s (more than {OPEN_FAILURES_PERCENT_MAX}%); \
         a broker refuses connections beyond its connections_max (see its start-up log):\n{}",
        opened.elapsed.as_secs_f64(),
        reasons_text(&opened.failures, "  ").trim_end()
    )))
}

/// What the report shows.
struct Report<'a> {
    idle: u32,
    opened: u64,
    open_elapsed: Duration,
    open_failures: &'a BTreeMap<String, ReasonErrors>,
    alone: &'a Run,
    with_idle: &'a Run,
    broker: Option<BrokerMemory>,
}

impl Report<'_> {
    /// msg/s with the idle connections over msg/s without (`None` when nothing was acked without).
    fn msg_per_s_ratio(&self) -> Option<f64> {
        let alone = msg_per_s(&self.alone.totals, self.alone.elapsed);
        (alone > 0.0).then(|| msg_per_s(&self.with_idle.totals, self.with_idle.elapsed) / alone)
    }

    /// p99 latency with the idle connections over p99 without (`None` without a latency).
    fn p99_ratio(&self) -> Option<f64> {
        let alone = quantile_ms(&self.alone.totals, 0.99);
        (alone > 0.0).then(|| quantile_ms(&self.with_idle.totals, 0.99) / alone)
    }
}

/// The report as one JSON object: both runs as `keel bench produce --json` reports a run, the
/// ratios, the opening, and `broker` (null without `--broker-pid`).
fn report_json_line(report: &Report) -> serde_json::Value {
    let broker = report.broker.map(|broker| {
        json!({
            "pid": broker.pid,
            "rss_bytes_before": broker.before.rss_bytes, "rss_bytes_with_idle": broker.with.rss_bytes,
            "rss_bytes_per_idle_connection": broker.rss_bytes_per_connection(report.opened),
            "open_files_before": broker.before.open_files, "open_files_with_idle": broker.with.open_files,
        })
    });
    let run_json = |run: &Run| report_json("produce", &run.totals, run.elapsed, None);
    json!({
        "bench": "connections", "idle": report.idle, "opened": report.opened,
        "open_seconds": report.open_elapsed.as_secs_f64(),
        "open_errors_by_reason": reasons_json(report.open_failures),
        "without_idle": run_json(report.alone), "with_idle": run_json(report.with_idle),
        "msg_per_s_ratio": report.msg_per_s_ratio(), "p99_ratio": report.p99_ratio(), "broker": broker,
    })
}

/// The report for people: the opening, a table of both runs, the ratios, the broker's memory, and
/// the errors of each run by reason.
fn report_text_lines(report: &Report) -> String {
    let mut text = format!(
        "connections: {} of {} idle connections opened in {:.2} s\n",
        report.opened,
        report.idle,
        report.open_elapsed.as_secs_f64()
    );
    text.push_str(&reasons_text(report.open_failures, "  opening "));
    text.push_str(&format!(
        "{:<28}{:>10}{:>10}{:>10}{:>10}{:>8}\n",
        "run", "msg/s", "p50 ms", "p99 ms", "p999 ms", "errors"
    ));
    let with_label = format!("with {} idle", report.opened);
    for (label, run) in [("without idle connections", report.alone), (with_label.as_str(), report.with_idle)] {
        let totals = &run.totals;
        text.push_str(&format!(
            "{label:<28}{:>10.0}{:>10.2}{:>10.2}{:>10.2}{:>8}\n",
            msg_per_s(totals, run.elapsed),
            quantile_ms(totals, 0.5),
            quantile_ms(totals, 0.99),
            quantile_ms(totals, 0.999),
            totals.errors
        ));
        text.push_str(&reasons_text(&totals.errors_by_reason, "  "));
    }
    let ratio = |ratio: Option<f64>| ratio.map_or_else(|| "unknown".to_owned(), |ratio| format!("{ratio:.2}x"));
    text.push_str(&format!(
        "with/without idle connections: {} msg/s, {} p99",
        ratio(report.msg_per_s_ratio()),
        ratio(report.p99_ratio())
    ));
    if let Some(broker) = report.broker {
        text.push_str(&format!(
            "\nbroker pid {}: RSS {:.1} MiB before, {:.1} MiB with the idle connections ({:.1} KiB per idle \
             connection); open files {} before, {} with them",
            broker.pid,
            broker.before.rss_bytes as f64 / (1024.0 * 1024.0),
            broker.with.rss_bytes as f64 / (1024.0 * 1024.0),
            broker.rss_bytes_per_connection(report.opened) / 1024.0,
            broker.before.open_files,
            broker.with.open_files
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::bench::Totals;

    /// A run of `records` acks in `seconds`, each with latency `latency_us`.
    fn run_of(records: u64, seconds: u64, latency_us: u64) -> Run {
        let mut totals = Totals::new();
        for _ in 0..records {
            totals.records += 1;
            totals.latency_us.record(latency_us).expect("in bounds");
        }
        Run { totals, elapsed: Duration::from_secs(seconds) }
    }

    const STATUS: &str = "Name:\tkeel\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t  912340 kB\n\
                          VmSize:\t  912340 kB\nVmHWM:\t   60000 kB\nVmRSS:\t   51200 kB\nRssAnon:\t   40000 kB\n\
                          Threads:\t9\n";

    #[test]
    fn vm_rss_is_read_in_kib_from_a_proc_status_text() {
        assert_eq!(parse_vm_rss_kib(STATUS), Some(51_200));
        // Not VmHWM nor RssAnon, and nothing when the line or its unit is missing or garbled.
        assert_eq!(parse_vm_rss_kib("VmHWM:\t 60000 kB\nRssAnon:\t 40000 kB\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\t 51200\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\t lots kB\n"), None);
        assert_eq!(parse_vm_rss_kib(""), None);
    }

    #[test]
    fn rss_per_idle_connection_is_the_growth_over_the_connections_opened() {
        let broker = BrokerMemory {
            pid: 7,
            before: BrokerSample { rss_bytes: 50 * 1024 * 1024, open_files: 40 },
            with: BrokerSample { rss_bytes: 70 * 1024 * 1024, open_files: 2_040 },
        };
        assert_eq!(broker.rss_bytes_per_connection(2_000), 20.0 * 1024.0 * 1024.0 / 2_000.0);
        let shrunk = BrokerMemory { with: BrokerSample { rss_bytes: 49 * 1024 * 1024, open_files: 40 }, ..broker };
        assert!(shrunk.rss_bytes_per_connection(1_024) < 0.0);
        // Nothing opened: no division by zero.
        assert!(broker.rss_bytes_per_connection(0).is_finite());
    }

    /// Both runs side by side, the ratios, the opening's failures and the broker's memory.
    #[test]
    fn the_report_shows_both_runs_side_by_side_with_the_ratios() {
        let (alone, with_idle) = (run_of(1_000, 1, 2_000), run_of(800, 1, 3_000));
        let mut failures = BTreeMap::new();
        failures.insert("Ambiguous".to_owned(), ReasonErrors { count: 3, example: "connection lost".to_owned() });
        let broker = BrokerMemory {
            pid: 42,
            before: BrokerSample { rss_bytes: 100 * 1024 * 1024, open_files: 30 },
            with: BrokerSample { rss_bytes: 120 * 1024 * 1024, open_files: 2_027 },
        };
        let report = Report {
            idle: 2_000,
            opened: 1_997,
            open_elapsed: Duration::from_millis(1_500),
            open_failures: &failures,
            alone: &alone,
            with_idle: &with_idle,
            broker: Some(broker),
        };
        assert_eq!(report.msg_per_s_ratio(), Some(0.8));
        let p99_ratio = report.p99_ratio().expect("a p99 without idle connections");
        assert!((p99_ratio - 1.5).abs() < 0.01, "{p99_ratio}");
        let text = report_text_lines(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "connections: 1997 of 2000 idle connections opened in 1.50 s");
        assert_eq!(lines[1], "  opening errors: 3 Ambiguous \"connection lost\"");
        assert!(lines[2].starts_with("run ") && lines[2].ends_with("errors"), "{}", lines[2]);
        assert!(lines[3].starts_with("without idle connections") && lines[3].contains(" 1000 "), "{}", lines[3]);
        assert!(lines[4].starts_with("with 1997 idle") && lines[4].contains(" 800 "), "{}", lines[4]);
        assert_eq!(lines[5], "with/without idle connections: 0.80x msg/s, 1.50x p99");
        assert!(lines[6].starts_with("broker pid 42: RSS 100.0 MiB before, 120.0 MiB with the idle"), "{}", lines[6]);
        assert!(lines[6].contains("(10.3 KiB per idle connection); open files 30 before, 2027 with them"));

        let json = report_json_line(&report);
        assert_eq!(json["bench"], "connections");
        assert_eq!(json["opened"], 1_997);
        assert_eq!(json["open_errors_by_reason"]["Ambiguous"]["count"], 3);
        assert_eq!(json["without_idle"]["records"], 1_000);
        assert_eq!(json["with_idle"]["records"], 800);
        assert_eq!(json["msg_per_s_ratio"], 0.8);
        assert_eq!(json["broker"]["open_files_with_idle"], 2_027);
        assert_eq!(json["broker"]["rss_bytes_with_idle"], 120 * 1024 * 1024);
    }

    #[test]
    fn without_a_broker_pid_or_acks_the_report_says_unknown() {
        let (alone, with_idle) = (run_of(0, 1, 1), run_of(0, 1, 1));
        let failures = BTreeMap::new();
        let report = Report {
            idle: 10,
            opened: 10,
            open_elapsed: Duration::from_millis(10),
            open_failures: &failures,
            alone: &alone,
            with_idle: &with_idle,
            broker: None,
        };
        let text = report_text_lines(&report);
        assert!(text.ends_with("with/without idle connections: unknown msg/s, unknown p99"), "{text}");
        assert!(!text.contains("broker pid"));
        let json = report_json_line(&report);
        assert!(json["broker"].is_null() && json["msg_per_s_ratio"].is_null());
    }

    #[test]
    fn more_than_one_percent_of_failed_opens_stops_the_bench() {
        let opened = |failed: u64| {
            let mut failures = BTreeMap::new();
            if failed > 0 {
                failures.insert("Connect".to_owned(), ReasonErrors { count: failed, example: "refused".to_owned() });
            }
            Opened { clients: Vec::new(), elapsed: Duration::from_secs(1), failures }
        };
        assert!(check_opened(1_000, &opened(0)).is_ok());
        assert!(check_opened(1_000, &opened(10)).is_ok());
        let error = check_opened(1_000, &opened(11)).expect_err("11 of 1000 is more than 1%");
        assert!(error.message.starts_with("11 of 1000 idle connections failed to open"), "{}", error.message);
        assert!(error.message.contains("errors: 11 Connect \"refused\""), "{}", error.message);
    }

    #[test]
    fn the_produce_runs_take_these_options_and_bench_produces_defaults() {
        let args = ConnectionsBenchArgs {
            topic: "t".into(),
            partitions: 10,
            idle: 100,
            producers: 2,
            duration_s: 3,
            size: 100,
            acks: Acks::Leader,
            broker_pid: None,
        };
        let produce = produce_args(&args).expect("valid");
        assert_eq!((produce.topic.as_str(), produce.partitions, produce.producers), ("t", 10, 2));
        assert_eq!((produce.duration_s, produce.size, produce.acks), (3, 100, Acks::Leader));
        assert_eq!((produce.window, produce.linger_ms, produce.rate), (2_000, 5, None));
        assert!(produce_args(&ConnectionsBenchArgs { idle: 0, ..args }).is_err());
    }
}
