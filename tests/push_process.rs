//! Push subscriptions through the real `keel` binary, as a user runs them: `keel consume --follow`
//! (records produced before and after it started, `--count`, a start past the log's end with each
//! `--reset`) and `keel bench deliver` in both modes.
//!
//! Each test starts its own broker on a free loopback port with its own data dir, through
//! `keel::process`. Every wait is a condition polled until a generous bound ([`WAIT_MAX`]), never a
//! fixed sleep.

#![cfg(not(madsim))]

mod support;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::cli::{keel, ok, start_broker, stderr, stdout, KEEL};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Liveness guard for every wait in this file.
const WAIT_MAX: Duration = Duration::from_secs(30);
/// Between two looks at a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Produces `values` to `partition` of `topic`, one record each, in order.
async fn produce(broker: &str, topic: &str, partition: u32, values: &[String]) {
    let input = values.join("\n") + "\n";
    let output = keel(broker, &["produce", topic, "--partition", &partition.to_string()], &input).await;
    assert!(output.status.success(), "produce: {}", stderr(&output));
}

/// `{prefix}-{partition}-{i}` for `i` in `0..count`.
fn values(prefix: &str, partition: u32, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{partition}-{i}")).collect()
}

/// A `keel consume` child whose stdout and stderr lines are collected as they come.
struct Consumer {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Consumer {
    fn start(broker: &str, args: &[&str]) -> Consumer {
        let mut child = Command::new(KEEL)
            .args(["--broker", broker, "consume"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start keel consume");
        let stdout = collect_lines(child.stdout.take().expect("piped"));
        let stderr = collect_lines(child.stderr.take().expect("piped"));
        Consumer { child, stdout, stderr }
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until stdout has at least `count` lines; they then.
    async fn wait_for_lines(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let lines = self.stdout();
            if lines.len() >= count {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {count} lines; got {lines:?}; stderr: {}",
                self.stderr()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until stderr says `text`.
    async fn wait_for_stderr(&self, text: &str) {
        let deadline = Instant::now() + WAIT_MAX;
        while !self.stderr().contains(text) {
            assert!(Instant::now() < deadline, "timed out waiting for {text:?} on stderr: {}", self.stderr());
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits for the child to exit by itself; its exit code.
    async fn exit_code(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(WAIT_MAX, self.child.wait()).await.expect("the consumer exits by itself");
        status.expect("wait for the consumer").code()
    }

    async fn kill(mut self) {
        self.child.kill().await.expect("kill the consumer");
    }
}

/// The lines `from` writes, collected by a task as they come.
fn collect_lines(from: impl AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::new(from).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// `consume --json` lines as (partition, offset, value), each partition's in the order printed.
fn records_by_partition(lines: &[String], partitions: u32) -> Vec<Vec<(i64, String)>> {
    let mut by_partition = vec![Vec::new(); partitions as usize];
    for line in lines {
        let record: Value = serde_json::from_str(line).unwrap_or_else(|error| panic!("{line:?}: {error}"));
        let partition = record["partition"].as_u64().expect("partition") as usize;
        let value = record["value"].as_str().expect("value").to_owned();
        by_partition[partition].push((record["offset"].as_i64().expect("offset"), value));
    }
    by_partition
}

#[tokio::test]
async fn follow_prints_records_produced_before_and_after_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), WAIT_MAX).await;
    let at = broker.addr().to_string();
    ok(&at, &["topic", "create", "clicks", "--partitions", "2"]).await;
    for partition in 0..2 {
        produce(&at, "clicks", partition, &values("before", partition, 5)).await;
    }

    let consumer = Consumer::start(&at, &["--json", "clicks", "--follow", "--from-beginning"]);
    // Every record from before is printed: the subscriptions are open (they start at offset 0).
    consumer.wait_for_lines(10).await;
    for partition in 0..2 {
        produce(&at, "clicks", partition, &values("after", partition, 5)).await;
    }
    let lines = consumer.wait_for_lines(20).await;
    let by_partition = records_by_partition(&lines, 2);
    for (partition, records) in by_partition.iter().enumerate() {
        let partition = partition as u32;
        let expected: Vec<(i64, String)> = values("before", partition, 5)
            .into_iter()
            .chain(values("after", partition, 5))
            .enumerate()
            .map(|(offset, value)| (offset as i64, value))
            .collect();
        assert_eq!(records, &expected, "partition {partition}; all lines: {lines:?}");
    }
    assert!(consumer.stderr().is_empty(), "{}", consumer.stderr());
    consumer.kill().await;
}

#[tokio::test]
async fn follow_with_a_count_exits_by_itself_after_that_many_records() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), WAIT_MAX).await;
    let at = broker.addr().to_string();
    ok(&at, &["topic", "create", "orders"]).await;
    produce(&at, "orders", 0, &values("before", 0, 2)).await;

    let mut consumer = Consumer::start(&at, &["orders", "--follow", "--from-beginning", "--count", "3"]);
    consumer.wait_for_lines(2).await;
    // The third record is pushed after the consumer waited for it; the rest are not printed.
    produce(&at, "orders", 0, &values("after", 0, 3)).await;
    assert_eq!(consumer.exit_code().await, Some(0), "{}", consumer.stderr());
    // The exit closed stdout; give the reader task the last lines, bounded.
    let deadline = Instant::now() + WAIT_MAX;
    while consumer.stdout().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    assert_eq!(consumer.stdout(), ["before-0-0", "before-0-1", "after-0-0"], "{}", consumer.stderr());
}

#[tokio::test]
async fn follow_from_past_the_end_resets_as_told() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), WAIT_MAX).await;
    let at = broker.addr().to_string();
    ok(&at, &["topic", "create", "events"]).await;
    produce(&at, "events", 0, &values("old", 0, 4)).await;

    // --reset none: the out-of-range start ends the command with exit 1 and says why.
    let none = keel(&at, &["consume", "events", "--follow", "--offset", "999999", "--reset", "none"], "").await;
    assert_eq!(none.status.code(), Some(1), "{}", stderr(&none));
    assert!(stdout(&none).is_empty(), "{}", stdout(&none));
    let message = stderr(&none);
    assert!(
        message.contains("partition 0: offset 999999 is out of range") && message.contains("(--reset none)"),
        "{message}"
    );

    // The default (--reset earliest): said on stderr, then everything from the log start, then
    // what comes next.
    let earliest = Consumer::start(&at, &["events", "--follow", "--offset", "999999"]);
    earliest.wait_for_stderr("going on from the earliest offset 0 (--reset earliest)").await;
    assert_eq!(earliest.wait_for_lines(4).await, values("old", 0, 4));

    // --reset latest: said on stderr, then only records produced after the reset.
    let latest = Consumer::start(&at, &["events", "--follow", "--offset", "999999", "--reset", "latest"]);
    latest.wait_for_stderr("going on from the latest offset 4 (--reset latest)").await;
    produce(&at, "events", 0, &values("new", 0, 2)).await;
    let expected: Vec<String> = values("old", 0, 4).into_iter().chain(values("new", 0, 2)).collect();
    assert_eq!(earliest.wait_for_lines(6).await, expected, "{}", earliest.stderr());
    assert_eq!(latest.wait_for_lines(2).await, values("new", 0, 2), "{}", latest.stderr());
    earliest.kill().await;
    latest.kill().await;
}

/// `keel --json bench deliver` with `extra` flags: its report, after checking that every
/// acknowledged record was delivered.
async fn bench_deliver(broker: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--json", "bench", "deliver", "--duration-s", "2", "--rate", "200", "--size", "100"];
    args.extend_from_slice(extra);
    let output = keel(broker, &args, "").await;
    assert!(output.status.success(), "bench deliver {extra:?}: {}", stderr(&output));
    let report: Value = serde_json::from_str(stdout(&output).trim()).expect("one JSON object");
    assert_eq!(report["bench"], "deliver", "{report}");
    assert!(report["records"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["missing"], 0, "{report}");
    assert_eq!(report["delivered"], report["records"], "{report}");
    for field in ["delivery_p50_ms", "delivery_p99_ms", "delivery_p999_ms", "e2e_p50_ms", "e2e_p99_ms", "msg_per_s"] {
        assert!(report[field].as_f64().is_some_and(|value| value >= 0.0), "{field}: {report}");
    }
    assert!(report["delivery_p99_ms"].as_f64() <= report["e2e_p99_ms"].as_f64(), "{report}");
    report
}

#[tokio::test]
async fn bench_deliver_delivers_every_acknowledged_record_pushed_or_polled() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), WAIT_MAX).await;
    let at = broker.addr().to_string();
    let pushed = bench_deliver(&at, &[]).await;
    assert_eq!(pushed["mode"], "push", "{pushed}");
    // The second run subscribes from the end the first one left: it sees only its own records.
    let polled = bench_deliver(&at, &["--mode", "poll"]).await;
    assert_eq!(polled["mode"], "poll", "{polled}");
    assert_eq!(polled["unmatched"], 0, "{polled}");
}
