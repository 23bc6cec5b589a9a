//! Real `keel broker` processes on loopback: topic admin through a follower, linearizable
//! describes on every node, produce and consume routed to partition leaders on different nodes,
//! `keel cluster status`, kill -9 of the Raft leader (with the measured time until a metadata write
//! succeeds again), ISR replication (followers join the ISR; a killed leader's partitions move to
//! another ISR member once it is fenced, and nothing acknowledged is lost), controlled shutdown
//! (SIGTERM moves leadership before the broker stops) and a rolling restart of every broker, min ISR
//! (`NotEnoughReplicas` below it), the metadata group losing its majority, restart and catch-up;
//! `topic describe`'s per-replica log ends and lags (a killed follower lagging, then leaving the
//! ISR); `keel cluster up`; bad cluster input; and forged Raft traffic on a connection that
//! identified itself as a peer.
//!
//! The nodes run through `keel::process`, as `keel cluster up` runs them. Waits are polls of a
//! condition with a generous bound (a liveness guard), never blind sleeps; and no step relies on the
//! Raft leader staying where it was: the leader is read from the cluster (every node agreeing)
//! right before a step needs it.
//!
//! The tests that kill or stop nodes under a produce load measure unavailability (printed as
//! `FAILOVER ...`, `CONTROLLED-SHUTDOWN ...` and `ROLLING ...` lines) and depend on heartbeats
//! arriving in time: they take [`HEAVY`] so they never run at once (on two cores, two loaded
//! clusters starve each other's heartbeats and fence live nodes).

#![cfg(not(madsim))]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::batch::Record;
use keel::client::{delivered, Client, ClientConfig, ClientError, Producer, ProducerConfig, RecordMetadata, TopicSpec};
use keel::process::{free_loopback_addr, run_keel, signal_child, ClusterSpec, LocalCluster, Signal};
use keel::protocol::{ErrorCode, TopicInfo};
use keel::types::Offset as KeelOffset;
use keel_model::history::{History, Offset, Partition, PollReads, ProcessId, Value};
use keel_model::queue_checker;
use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const KEEL: &str = env!("CARGO_BIN_EXE_keel");
/// Liveness guard for every wait in this file.
const WAIT_MAX: Duration = Duration::from_secs(30);
/// Between two looks at a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

fn free_addr() -> SocketAddr {
    free_loopback_addr().expect("a free loopback port")
}

/// `n_nodes` voters on free ports, data in `dir/node-i`, errors logged to the test's stderr; once
/// every node answers.
///
/// With `KEEL_TEST_RUST_LOG=<filter>` set, the nodes log at that level to `dir/node-<id>.log`
/// instead (see [`test_dir`], which then keeps `dir`).
async fn start_cluster(dir: &Path, n_nodes: usize) -> LocalCluster {
    let addrs = (0..n_nodes).map(|_| free_addr()).collect();
    let level = std::env::var("KEEL_TEST_RUST_LOG").ok();
    let spec = ClusterSpec {
        env: vec![("RUST_LOG".into(), level.clone().unwrap_or_else(|| "error".into()).into())],
        node_logs: level.is_some(),
        ..ClusterSpec::new(KEEL, addrs, dir)
    };
    let mut cluster = LocalCluster::spawn(&spec).expect("start the brokers");
    cluster.wait_ready(WAIT_MAX).await.expect("every node answers");
    cluster
}

/// A temporary directory for one test's nodes; kept (and named) when `KEEL_TEST_RUST_LOG` is set, so
/// the node logs can be read after a failure.
fn test_dir() -> tempfile::TempDir {
    let keep = std::env::var_os("KEEL_TEST_RUST_LOG").is_some();
    let dir = tempfile::Builder::new().prefix("keel-cluster-").disable_cleanup(keep).tempdir().unwrap();
    if keep {
        println!("node logs in {}", dir.path().display());
    }
    dir
}

fn addr_of(cluster: &LocalCluster, node_id: u64) -> String {
    let node = cluster.nodes().iter().find(|node| node.node_id == node_id).expect("a node with that id");
    node.process.addr().to_string()
}

async fn cli(addr: &str, args: &[&str]) -> Output {
    cli_with_stdin(addr, args, "").await
}

async fn cli_with_stdin(addr: &str, args: &[&str], stdin: &str) -> Output {
    let mut all = vec!["--broker", addr];
    all.extend_from_slice(args);
    run_keel(Path::new(KEEL), all, stdin.as_bytes()).await.expect("run keel")
}

/// `keel args...` without `--broker`.
async fn keel(args: &[&str]) -> Output {
    run_keel(Path::new(KEEL), args, b"").await.expect("run keel")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Json {
    assert!(output.status.success(), "command failed: {}", stderr(output));
    serde_json::from_str(stdout(output).trim()).unwrap_or_else(|error| panic!("{error}: {}", stdout(output)))
}

/// `keel cluster status --json` through `addr`, if it answers.
async fn status(addr: &str) -> Option<Json> {
    let output = cli(addr, &["--json", "cluster", "status"]).await;
    output.status.success().then(|| json(&output))
}

/// Asks `check` until it returns `Some`, at most `WAIT_MAX`.
async fn poll<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {WAIT_MAX:?} waiting for {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The leader and its term in one node's status, when exactly the nodes `expected_reachable` answer,
/// exactly one of them leads, and every answering node names it as leader.
fn one_leader(status: &Json, expected_reachable: &[u64]) -> Option<(u64, u64)> {
    let nodes = status["nodes"].as_array()?;
    let reachable: Vec<&Json> = nodes.iter().filter(|node| node["reachable"] == true).collect();
    let reachable_ids: Vec<u64> = reachable.iter().map(|node| node["node_id"].as_u64().unwrap()).collect();
    let leaders: Vec<&&Json> =
        reachable.iter().filter(|node| node["role"].as_str().unwrap().eq_ignore_ascii_case("leader")).collect();
    let [leader] = leaders.as_slice() else { return None };
    let leader_id = leader["node_id"].as_u64()?;
    let agreed = reachable.iter().all(|node| node["leader_id"].as_u64() == Some(leader_id));
    (reachable_ids == expected_reachable && agreed).then(|| (leader_id, leader["term"].as_u64().unwrap()))
}

/// The leader and term that every node of `node_ids`, asked one after another, reports by
/// [`one_leader`]; `None` while they do not all agree (an election is under way or a node lags).
async fn agreed_leader(cluster: &LocalCluster, node_ids: &[u64]) -> Option<(u64, u64)> {
    let mut agreed = None;
    for node_id in node_ids {
        let seen = one_leader(&status(&addr_of(cluster, *node_id)).await?, node_ids)?;
        if agreed.is_some_and(|agreed| agreed != seen) {
            return None;
        }
        agreed = Some(seen);
    }
    agreed
}

/// Records read back by `keel consume --from-beginning --json`: (partition, offset, value).
/// Waits until every node is registered (not fenced) as `addr` sees it, and every node agrees on one
/// Raft leader.
async fn all_registered_with_one_leader(cluster: &LocalCluster, all: &[u64], addr: &str) {
    poll("every node registered and one Raft leader that every node agrees on", async || {
        let status = status(addr).await?;
        let registered =
            status["nodes"].as_array()?.iter().all(|node| node["registered"] == true && node["fenced"] == false);
        registered.then_some(())?;
        agreed_leader(cluster, all).await
    })
    .await;
}

async fn consume_all(addr: &str, topic: &str) -> Vec<(u64, i64, String)> {
    let output = cli(addr, &["--json", "consume", topic, "--from-beginning"]).await;
    assert!(output.status.success(), "consume through {addr}: {}", stderr(&output));
    parse_consumed(&output)
}

/// `keel consume --from-beginning --json` through `addr`, asked again until it succeeds (a leader
/// elected a moment ago refuses consumers until its high watermark reaches its epoch's start).
async fn consume_eventually(addr: &str, topic: &str) -> Vec<(u64, i64, String)> {
    poll(&format!("a consume of {topic} through {addr} to succeed"), async || {
        let output = cli(addr, &["--json", "consume", topic, "--from-beginning"]).await;
        output.status.success().then(|| parse_consumed(&output))
    })
    .await
}

fn parse_consumed(output: &Output) -> Vec<(u64, i64, String)> {
    let mut records: Vec<(u64, i64, String)> = stdout(output)
        .lines()
        .map(|line| {
            let record: Json = serde_json::from_str(line).unwrap();
            (
                record["partition"].as_u64().unwrap(),
                record["offset"].as_i64().unwrap(),
                record["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    records.sort();
    records
}

/// Every test that kills nodes under load holds this (see the module doc). A tokio mutex: each test
/// has its own runtime, and the guard is held across awaits.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The broker's default `broker_fence_after_ms`: a node silent this long is fenced.
const FENCE_AFTER: Duration = Duration::from_millis(6_000);
/// Longest one produce or fetch may take before the test calls it a hang (client timeouts are 5 s).
const OPERATION_MAX: Duration = Duration::from_secs(20);
/// A workload producer waits this long after a send that failed before the next one (what an
/// application's backoff would do; it also bounds how finely unavailability is measured).
const FAILED_SEND_PAUSE: Duration = Duration::from_millis(20);
/// The reading process in recorded histories (producers are numbered by partition).
const READER: ProcessId = ProcessId(1_000);

/// Short timeouts, no transport retries: a dead broker is found out fast, and every outcome is
/// recorded as it happened.
fn workload_client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        retries: 0,
        ..ClientConfig::default()
    }
}

/// The plain producer: these tests judge refusals and unknown outcomes as they happen (an
/// idempotent producer would re-send them until its delivery timeout).
fn workload_producer_config() -> ProducerConfig {
    ProducerConfig { linger: Duration::ZERO, retries: 0, idempotent: false, ..ProducerConfig::default() }
}

/// A client for metadata and admin through any of `addrs` (a dead one is skipped).
fn admin_client(addrs: &[String]) -> Arc<Client> {
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(3),
        retries: 1,
        ..ClientConfig::default()
    };
    Client::new(addrs.join(","), config)
}

/// The addresses of the nodes of `cluster` other than `except`.
fn addrs_except(cluster: &LocalCluster, except: &[u64]) -> Vec<String> {
    let nodes = cluster.nodes().iter().filter(|node| !except.contains(&node.node_id));
    nodes.map(|node| node.process.addr().to_string()).collect()
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

/// Waits until every partition of `topic` has a leader and every replica in its ISR; returns the
/// topic's metadata then (linearizable: metadata is answered after a Raft read barrier).
async fn full_isr(admin: &Client, topic: &str) -> TopicInfo {
    poll(&format!("every replica of {topic} in its ISR"), async || {
        let info = admin.topic(topic).await.ok()?;
        info.partitions.iter().all(|p| p.leader != 0 && sorted(&p.isr) == sorted(&p.replicas)).then_some(info)
    })
    .await
}

/// Creates `topic` with replication factor 3 and the default min ISR (2), and waits for its full ISR.
async fn create_replicated(admin: &Client, topic: &str, partitions: u32) -> TopicInfo {
    admin.create_topic_with(topic, &TopicSpec { partitions, replication: 3, ..TopicSpec::default() }).await.unwrap();
    let info = full_isr(admin, topic).await;
    assert_eq!(info.min_insync_replicas, 2, "the default min ISR for replication 3: {info:?}");
    info
}

/// Checks the partitions of `after` against `before` across the loss of `lost` (fenced, or in
/// controlled shutdown): the partitions it led have a new leader from their ISR with a bumped
/// leader epoch, the others keep theirs, nobody was elected uncleanly, and `lost` is in no ISR.
fn assert_moved_within_isr(before: &TopicInfo, after: &TopicInfo, lost: u64) {
    for (old, new) in before.partitions.iter().zip(&after.partitions) {
        let context = format!("partition {} before {old:?}, after {new:?}", old.partition);
        assert_eq!(new.unclean_elections, 0, "{context}");
        assert!(!new.isr.contains(&lost), "{context}");
        assert!(new.leader != 0, "{context}");
        if old.leader == lost {
            assert!(new.leader != lost && old.isr.contains(&new.leader), "{context}");
            assert!(new.leader_epoch > old.leader_epoch, "{context}");
        } else {
            assert_eq!(new.leader, old.leader, "{context}");
        }
    }
}

/// What a [`Workload`]'s producers saw: the history (shared/HISTORY-FORMAT.md), per partition when
/// each acknowledged send was invoked and answered, and every failed send.
struct Recorder {
    history: Mutex<History>,
    start: Instant,
    acks: Mutex<BTreeMap<u32, Vec<(Instant, Instant)>>>,
    failures: Mutex<Vec<SendFailure>>,
}

/// A send that was not acknowledged: definitely not appended, or with an unknown outcome.
#[derive(Debug, Clone)]
struct SendFailure {
    partition: u32,
    answered: Instant,
    ambiguous: bool,
    error: String,
}

impl Recorder {
    fn with<R>(&self, record: impl FnOnce(&mut History, u64) -> R) -> R {
        let now_ns = self.start.elapsed().as_nanos() as u64;
        record(&mut self.history.lock().expect("history lock"), now_ns)
    }
}

/// Three brokers, all registered under one Raft leader, a replicated topic, and acks=all load on
/// every partition that has had `acked_min` acknowledgements (the start of the load tests).
struct LoadedCluster {
    dir: tempfile::TempDir,
    cluster: LocalCluster,
    all: Vec<u64>,
    addrs: Vec<String>,
    admin: Arc<Client>,
    workload: Workload,
}

impl LoadedCluster {
    async fn start(topic: &str, partitions: u32, acked_min: usize) -> LoadedCluster {
        let dir = test_dir();
        let cluster = start_cluster(dir.path(), 3).await;
        let all: Vec<u64> = vec![1, 2, 3];
        let addrs: Vec<String> = all.iter().map(|node_id| addr_of(&cluster, *node_id)).collect();
        all_registered_with_one_leader(&cluster, &all, &addrs[0]).await;
        let admin = admin_client(&addrs);
        create_replicated(&admin, topic, partitions).await;
        let workload = Workload::start(&addrs, topic, partitions);
        workload.acked_count_after(workload.recorder.start, acked_min).await;
        LoadedCluster { dir, cluster, all, addrs, admin, workload }
    }
}

/// An `acks=all` produce load on every partition of a topic: one producer per partition, each with
/// its own client and connections (a dead leader delays only its own partition), sending unique
/// values `p<partition>-<n>` one at a time and recording every outcome.
struct Workload {
    topic: String,
    partitions: u32,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Workload {
    fn start(addrs: &[String], topic: &str, partitions: u32) -> Workload {
        let recorder = Arc::new(Recorder {
            history: Mutex::new(History::new()),
            start: Instant::now(),
            acks: Mutex::new((0..partitions).map(|partition| (partition, Vec::new())).collect()),
            failures: Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        let tasks = (0..partitions)
            .map(|partition| {
                let client = Client::new(addrs.join(","), workload_client_config());
                let producer = Producer::new(client, workload_producer_config());
                let sender = PartitionSender { recorder: recorder.clone(), producer, topic: topic.to_owned() };
                tokio::spawn(sender.run(partition, stop.clone()))
            })
            .collect();
        Workload { topic: topic.to_owned(), partitions, recorder, stop, tasks }
    }

    /// The acknowledged sends of `partition` so far: (invoked, answered).
    fn acks(&self, partition: u32) -> Vec<(Instant, Instant)> {
        self.recorder.acks.lock().expect("acks lock")[&partition].clone()
    }

    /// How long after `since` the first send invoked at or after `since` was acknowledged.
    fn first_ack_after(&self, partition: u32, since: Instant) -> Option<Duration> {
        let acks = self.acks(partition);
        acks.iter().filter(|(invoked, _)| *invoked >= since).map(|(_, answered)| *answered - since).min()
    }

    /// Waits until every partition has acknowledged a send invoked at or after `since`; returns, per
    /// partition, how long after `since` that took.
    async fn acked_after(&self, since: Instant) -> Vec<Duration> {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let acked: Option<Vec<Duration>> =
                (0..self.partitions).map(|partition| self.first_ack_after(partition, since)).collect();
            if let Some(acked) = acked {
                return acked;
            }
            let failures = self.failures_between(self.recorder.start, Instant::now());
            let errors: BTreeMap<u32, String> = failures.into_iter().map(|f| (f.partition, f.error)).collect();
            assert!(
                Instant::now() < deadline,
                "timed out after {WAIT_MAX:?} waiting for every partition to acknowledge again; the latest \
                 failure per partition: {errors:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Like [`Workload::acked_after`], but gives up once `bound` has passed since `since`: `None` for
    /// each partition that acknowledged nothing by then.
    async fn acked_after_within(&self, since: Instant, bound: Duration) -> Vec<Option<Duration>> {
        loop {
            let acked: Vec<Option<Duration>> =
                (0..self.partitions).map(|partition| self.first_ack_after(partition, since)).collect();
            if acked.iter().all(Option::is_some) || since.elapsed() >= bound {
                return acked;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The longest time `partition` went without an acknowledgement during `from..to`: the longest gap
    /// between two consecutive acknowledgements (or the last one and `to`) that overlaps it, and when
    /// that gap began, relative to `from`.
    fn longest_stall(&self, partition: u32, from: Instant, to: Instant) -> (Duration, Duration) {
        let answered: Vec<Instant> = self.acks(partition).iter().map(|(_, answered)| *answered).collect();
        let gaps = answered.windows(2).map(|pair| (pair[0], pair[1])).chain(answered.last().map(|last| (*last, to)));
        let overlapping = gaps.filter(|(began, ended)| *ended > from && *began < to);
        let (began, ended) = overlapping.max_by_key(|(began, ended)| *ended - *began).unwrap_or((from, to));
        (ended - began, began.saturating_duration_since(from))
    }

    /// The failed sends answered during `from..to`, in the order they were answered.
    fn failures_between(&self, from: Instant, to: Instant) -> Vec<SendFailure> {
        let failures = self.recorder.failures.lock().expect("failures lock");
        failures.iter().filter(|failure| (from..to).contains(&failure.answered)).cloned().collect()
    }

    /// Waits until every partition has `count` acknowledged sends invoked at or after `since`.
    async fn acked_count_after(&self, since: Instant, count: usize) {
        poll(&format!("{count} acknowledged sends on every partition"), async || {
            let enough = (0..self.partitions)
                .all(|partition| self.acks(partition).iter().filter(|(invoked, _)| *invoked >= since).count() >= count);
            enough.then_some(())
        })
        .await
    }

    /// Stops the producers, reads every partition back through `addrs` from offset 0 to its high
    /// watermark, and judges the history with the model's queue checker: every acknowledged record
    /// at its acknowledged offset, nothing that definitely failed, no duplicates. Set
    /// `KEEL_TEST_HISTORY=<dir>` to keep the history for an outside checker.
    async fn finish(self, addrs: &[String], name: &str) -> queue_checker::QueueReport {
        self.stop.cancel();
        for task in self.tasks {
            task.await.expect("a producer panicked");
        }
        let reader = Client::new(addrs.join(","), ClientConfig { retries: 3, ..workload_client_config() });
        read_back(&self.recorder, &reader, &self.topic, self.partitions).await;
        let history = self.recorder.history.lock().unwrap().clone();
        if let Some(dir) = std::env::var_os("KEEL_TEST_HISTORY") {
            let path =
                std::path::PathBuf::from(dir).join(format!("cluster_process-{name}-{}.jsonl", std::process::id()));
            std::fs::write(&path, history.to_jsonl()).unwrap();
            println!("history written to {}", path.display());
        }
        let report = queue_checker::check(&history);
        println!("{name}: {report}");
        assert!(report.is_valid(), "{name} broke the queue's guarantees:\n{report}");
        report
    }
}

/// One producer of a [`Workload`].
struct PartitionSender {
    recorder: Arc<Recorder>,
    producer: Producer,
    topic: String,
}

impl PartitionSender {
    async fn run(self, partition: u32, stop: CancellationToken) {
        let process = ProcessId(u64::from(partition));
        let mut sequence = 0u64;
        while !stop.is_cancelled() {
            let value = format!("p{partition}-{sequence}");
            sequence += 1;
            let invoked_at = Instant::now();
            let pending = self.recorder.with(|history, now_ns| {
                history.invoke_send(process, now_ns, Partition::of_topic(&self.topic, partition), value.as_str())
            });
            let record = Record::value(value.clone());
            let send = async { delivered(self.producer.send(&self.topic, Some(partition), record).await).await };
            let outcome = tokio::time::timeout(OPERATION_MAX, send).await;
            let outcome = outcome.unwrap_or_else(|_| panic!("the send of {value} hung for {OPERATION_MAX:?}"));
            let failed = outcome.is_err();
            if let Err(error) = &outcome {
                let (answered, ambiguous, error) = (Instant::now(), error.is_ambiguous(), format!("{value}: {error}"));
                let failure = SendFailure { partition, answered, ambiguous, error };
                self.recorder.failures.lock().expect("failures lock").push(failure);
            }
            self.recorder.with(|history, now_ns| match outcome {
                Ok(metadata) => {
                    assert_eq!(metadata.partition, partition, "{value} acknowledged in another partition");
                    history.send_ok(pending, now_ns, Offset(metadata.offset.0 as u64));
                }
                Err(error) if error.is_ambiguous() => {
                    history.send_info(pending, now_ns);
                }
                Err(_) => {
                    history.send_fail(pending, now_ns);
                }
            });
            if failed {
                tokio::time::sleep(FAILED_SEND_PAUSE).await;
            } else {
                let mut acks = self.recorder.acks.lock().expect("acks lock");
                acks.get_mut(&partition).expect("every partition").push((invoked_at, Instant::now()));
            }
        }
    }
}

/// The final read: every partition from offset 0 up to its high watermark, recorded as polls.
async fn read_back(recorder: &Recorder, client: &Client, topic: &str, partitions: u32) {
    let all = (0..partitions).map(|partition| Partition::of_topic(topic, partition));
    recorder.with(|history, now_ns| history.assign(READER, now_ns, all));
    let deadline = Instant::now() + WAIT_MAX;
    for partition in 0..partitions {
        let mut position = 0u64;
        loop {
            assert!(Instant::now() < deadline, "partition {partition} not read back within {WAIT_MAX:?}");
            let pending = recorder.with(|history, now_ns| history.invoke_poll(READER, now_ns));
            let offset = KeelOffset(position as i64);
            let fetch = client.fetch(topic, partition, offset, 1 << 20, Duration::from_millis(50));
            let fetched = tokio::time::timeout(OPERATION_MAX, fetch).await.expect("a fetch hung");
            let Ok(fetched) = fetched else {
                // A new leader not ready for consumers yet, or one being looked up: ask again.
                recorder.with(|history, now_ns| history.poll_fail(pending, now_ns));
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            };
            let mut read = Vec::new();
            for record in &fetched.records {
                let value = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned();
                read.push((Offset(record.offset.0 as u64), Value(value)));
                position = record.offset.0 as u64 + 1;
            }
            let reads: PollReads = BTreeMap::from([(Partition::of_topic(topic, partition), read)]);
            recorder.with(|history, now_ns| history.poll_ok(pending, now_ns, reads));
            if position >= fetched.high_watermark.0 as u64 {
                break;
            }
        }
    }
}

/// Three nodes: topic admin through a follower, produce and consume routed to partition leaders on
/// different nodes, followers joining the ISR of a replication-factor-3 topic, kill -9 of the Raft
/// leader (metadata writes resume through a survivor; the time is printed), and once the dead node
/// is fenced: every `replicated` partition it led moves to another ISR member (leader epoch bumped,
/// no unclean election) and keeps every acknowledged record and taking acks=all writes, while the
/// `orders` partitions it led (replication factor 1: it holds their only copy) go offline, as they
/// must. `cluster status` and `topic describe` show both states. The restarted node catches up: the
/// same metadata, its `orders` partitions back with every record, and a place in every ISR again.
#[tokio::test]
async fn three_nodes_route_to_leaders_move_a_dead_leaders_partitions_within_the_isr_and_catch_up() {
    let _heavy = HEAVY.lock().await;
    let dir = test_dir();
    let mut cluster = start_cluster(dir.path(), 3).await;
    let all: Vec<u64> = vec![1, 2, 3];
    let addrs: Vec<String> = all.iter().map(|node_id| addr_of(&cluster, *node_id)).collect();
    all_registered_with_one_leader(&cluster, &all, &addrs[0]).await;
    let (leader, _) = poll("an agreed leader", async || agreed_leader(&cluster, &all).await).await;
    let follower = addr_of(&cluster, *all.iter().find(|node_id| **node_id != leader).unwrap());

    // Create through a follower; right after it returns, every node describes the topic. `orders`
    // has one replica per partition, `replicated` three: its followers fetch from the leaders and
    // join the ISR.
    let created = cli(&follower, &["topic", "create", "orders", "--partitions", "3", "--replication", "1"]).await;
    assert!(created.status.success(), "create through a follower: {}", stderr(&created));
    let created = cli(&follower, &["topic", "create", "replicated", "--partitions", "3", "--replication", "3"]).await;
    assert!(created.status.success(), "create through a follower: {}", stderr(&created));
    let mut partition_leaders = Vec::new();
    for (node_id, addr) in all.iter().zip(&addrs) {
        let described = json(&cli(addr, &["--json", "topic", "describe", "replicated"]).await);
        assert_eq!(described["min_insync_replicas"], 2, "node {node_id} describes {described}");
        for partition in described["partitions"].as_array().unwrap() {
            assert_eq!(partition["replicas"].as_array().unwrap().len(), 3, "{described}");
            let isr = partition["isr"].as_array().unwrap();
            assert!(isr.contains(&partition["leader"]), "the leader is in the ISR: {described}");
        }
        let described = json(&cli(addr, &["--json", "topic", "describe", "orders"]).await);
        let partitions = described["partitions"].as_array().unwrap();
        assert_eq!(partitions.len(), 3, "node {node_id} describes {described}");
        let leaders: Vec<u64> = partitions.iter().map(|p| p["leader"].as_u64().unwrap()).collect();
        for partition in partitions {
            assert_eq!(partition["replicas"].as_array().unwrap().len(), 1);
        }
        if partition_leaders.is_empty() {
            partition_leaders = leaders;
        } else {
            assert_eq!(leaders, partition_leaders, "node {node_id} disagrees on the leaders");
        }
    }
    let distinct: std::collections::BTreeSet<u64> = partition_leaders.iter().copied().collect();
    assert!(distinct.len() >= 2, "partitions should be led by different nodes: {partition_leaders:?}");
    let admin = admin_client(&addrs);
    let joined_at = Instant::now();
    let replicated_before = full_isr(&admin, "replicated").await;
    println!("ISR: every follower of `replicated` joined the ISR {:?} after the create", joined_at.elapsed());
    let described = json(&cli(&addrs[0], &["--json", "topic", "describe", "replicated"]).await);
    for partition in described["partitions"].as_array().unwrap() {
        assert_eq!(partition["isr"].as_array().unwrap().len(), 3, "`topic describe` shows the full ISR: {described}");
    }

    // Replication larger than the cluster: a clear error, exit code 1.
    let too_many = cli(&follower, &["topic", "create", "wide", "--replication", "4"]).await;
    assert_eq!(too_many.status.code(), Some(1), "{}", stderr(&too_many));
    assert!(stderr(&too_many).contains("replication factor 4"), "{}", stderr(&too_many));

    // Produce to every partition of both topics (acks=all, the CLI's default), each time through a
    // different bootstrap node, and read everything back through every node: each request is routed
    // to its partition's leader.
    let mut expected = Vec::new();
    let mut expected_replicated = Vec::new();
    for partition in 0..3u64 {
        let bootstrap = &addrs[partition as usize % 3];
        for (topic, expected) in [("orders", &mut expected), ("replicated", &mut expected_replicated)] {
            let lines: Vec<String> = (0..4).map(|i| format!("{topic}-p{partition}-r{i}")).collect();
            let produced = cli_with_stdin(
                bootstrap,
                &["--json", "produce", topic, "--partition", &partition.to_string()],
                &(lines.join("\n") + "\n"),
            )
            .await;
            assert!(produced.status.success(), "produce to {topic}/{partition}: {}", stderr(&produced));
            for (offset, value) in lines.into_iter().enumerate() {
                expected.push((partition, offset as i64, value));
            }
        }
    }
    let keyed = cli(&addrs[0], &["--json", "produce", "orders", "--key", "user-7", "--value", "keyed"]).await;
    let keyed = json(&keyed);
    expected.push((keyed["partition"].as_u64().unwrap(), keyed["offset"].as_i64().unwrap(), "keyed".to_owned()));
    expected.sort();
    for (node_id, addr) in all.iter().zip(&addrs) {
        assert_eq!(consume_all(addr, "orders").await, expected, "consumed through node {node_id}");
        assert_eq!(consume_all(addr, "replicated").await, expected_replicated, "consumed through node {node_id}");
    }

    // Cluster status from every node: all reachable, one leader they all agree on. That leader
    // (read now, not the one seen at start, which may have changed since) is the one killed.
    let (leader, term) = poll("every node agreeing on one leader", async || agreed_leader(&cluster, &all).await).await;
    let replicated_before = admin.topic("replicated").await.unwrap_or(replicated_before);

    // kill -9 the Raft leader; measure until a metadata write through a survivor succeeds again.
    let survivors: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let survivor = addr_of(&cluster, survivors[0]);
    cluster.node_mut(leader).process.kill9().await.unwrap();
    let killed_at = Instant::now();
    let mut attempt = 0;
    poll("a topic create through a survivor after the leader died", async || {
        attempt += 1;
        let name = format!("after-failover-{attempt}");
        cli(&survivor, &["topic", "create", &name]).await.status.success().then_some(())
    })
    .await;
    let failover = killed_at.elapsed();
    println!(
        "FAILOVER: metadata writes resumed {failover:?} after kill -9 of the Raft leader (node {leader}, term {term}), {attempt} attempt(s)"
    );

    // The dead node shows as unreachable; the survivors agree on a new leader, elected after the kill.
    let (after, after_term) =
        poll("a new leader among the survivors", async || agreed_leader(&cluster, &survivors).await).await;
    assert_ne!(after, leader);
    assert!(after_term > term, "node {after} leads at term {after_term}, not after the kill at term {term}");

    // Partitions led by survivors keep taking writes, through either survivor.
    let live_partition = partition_leaders.iter().position(|id| *id != leader).unwrap();
    let produced =
        cli(&survivor, &["produce", "orders", "--partition", &live_partition.to_string(), "--value", "after"]).await;
    assert!(produced.status.success(), "produce after failover: {}", stderr(&produced));

    // Once the dead node is fenced (6 s without heartbeats), the controller takes it out of every
    // ISR and elects a new leader, from the ISR, for every partition it led. The `replicated` ones
    // all have another ISR member; the `orders` ones it led have none (it is their only replica, the
    // last member of their ISR, which keeps it) and go offline. `cluster status` lists both kinds.
    let led_by_dead = (0..3u64).filter(|p| partition_leaders[*p as usize] == leader);
    let expected_offline: Vec<(String, u64)> = led_by_dead.map(|p| ("orders".to_owned(), p)).collect();
    let survivors_admin = admin_client(&addrs_except(&cluster, &[leader]));
    let (status_after, replicated_after) = poll("the dead node fenced and its partitions moved", async || {
        let status = status(&survivor).await?;
        let offline: Vec<(String, u64)> = status["offline_partitions"]
            .as_array()?
            .iter()
            .map(|p| (p["topic"].as_str().unwrap().to_owned(), p["partition"].as_u64().unwrap()))
            // The `after-failover-*` topics created while the dead node was not yet fenced may have
            // been placed on it too: only the two topics of this check count.
            .filter(|(topic, _)| topic == "orders" || topic == "replicated")
            .collect();
        let fenced = status["nodes"].as_array()?.iter().any(|node| node["node_id"] == leader && node["fenced"] == true);
        let replicated: Vec<&Json> =
            status["under_replicated_partitions"].as_array()?.iter().filter(|p| p["topic"] == "replicated").collect();
        let info = survivors_admin.topic("replicated").await.ok()?;
        let moved = info.partitions.iter().all(|p| p.leader != 0 && !p.isr.contains(&leader));
        (fenced && offline == expected_offline && replicated.len() == 3 && moved).then_some((status, info))
    })
    .await;
    println!("FENCING: node {leader} fenced, its partitions moved or offline {:?} after kill -9", killed_at.elapsed());
    assert_moved_within_isr(&replicated_before, &replicated_after, leader);
    for partition in &replicated_after.partitions {
        assert_eq!(sorted(&partition.isr), survivors, "{replicated_after:?}");
    }
    let human = stdout(&cli(&survivor, &["cluster", "status"]).await);
    assert!(
        human.contains(&format!(
            "partitions: {} offline, 3 under-replicated",
            status_after["offline_partitions"].as_array().unwrap().len()
        )),
        "{human}\n{status_after}"
    );
    let human = stdout(&cli(&survivor, &["topic", "describe", "replicated"]).await);
    assert!(!human.contains("offline") && !human.contains("UNCLEAN"), "{human}");
    let human = stdout(&cli(&survivor, &["topic", "describe", "orders"]).await);
    assert_eq!(human.matches("none (offline)").count(), expected_offline.len(), "{human}");

    // Nothing acknowledged was lost, and acks=all keeps working with two of three in the ISR
    // (the min ISR), on the moved partitions too.
    for partition in 0..3u64 {
        let value = format!("replicated-p{partition}-after");
        let produced = cli(
            &survivor,
            &["--json", "produce", "replicated", "--partition", &partition.to_string(), "--value", &value],
        )
        .await;
        let produced = json(&produced);
        expected_replicated.push((partition, produced["offset"].as_i64().unwrap(), value));
    }
    expected_replicated.sort();
    assert_eq!(consume_eventually(&survivor, "replicated").await, expected_replicated);

    // Restart the old leader on the same data: it catches up (same applied index and state hash).
    cluster.node_mut(leader).process.restart().unwrap();
    let restarted_at = Instant::now();
    let restarted = addr_of(&cluster, leader);
    poll("the restarted node to catch up", async || {
        let status = status(&restarted).await?;
        one_leader(&status, &all)?;
        let nodes = status["nodes"].as_array()?;
        let first = &nodes[0];
        nodes
            .iter()
            .all(|node| node["state_hash"] == first["state_hash"] && node["applied_index"] == first["applied_index"])
            .then_some(())
    })
    .await;
    println!(
        "CATCH-UP: the restarted node matched the others' applied index and state hash after {:?}",
        restarted_at.elapsed()
    );

    // Its `orders` partitions' records are all still there (their only copy is on it).
    let consumed = poll("every record readable after the restart", async || {
        let output = cli(&restarted, &["--json", "consume", "orders", "--from-beginning"]).await;
        output.status.success().then(|| stdout(&output).lines().count())
    })
    .await;
    assert_eq!(consumed, expected.len() + 1);
    // It led its `orders` partitions again as soon as it registered: none is offline.
    let status = status(&restarted).await.expect("cluster status from the restarted node");
    assert_eq!(status["offline_partitions"], serde_json::json!([]), "{status}");
    // It caught up on `replicated` as a follower and is back in every ISR.
    full_isr(&admin, "replicated").await;
    println!("REJOIN: the restarted node is back in every ISR {:?} after its restart", restarted_at.elapsed());
    assert_eq!(consume_eventually(&restarted, "replicated").await, expected_replicated);
}

/// The `replicas_status` entry of `node` in one partition of `topic describe --json`:
/// (log end, lag, in ISR).
fn replica_row(partition: &Json, node: u64) -> (Option<i64>, Option<i64>, bool) {
    let rows = partition["replicas_status"].as_array().unwrap_or_else(|| panic!("no replicas_status: {partition}"));
    let row = rows.iter().find(|row| row["node"] == node).unwrap_or_else(|| panic!("no row of {node}: {partition}"));
    (row["log_end_offset"].as_i64(), row["lag"].as_i64(), row["in_isr"].as_bool().unwrap())
}

/// `topic describe` shows each replica's log end and lag as the partition's leader sees them. After
/// acks=all produces, every replica is in the ISR at the high watermark; after kill -9 of a follower
/// and more produces (acks=leader), the dead follower stays at its last log end and lags by what came
/// since, and the HW waits for it while it is in the ISR; once it is fenced it is out of the ISR and
/// the HW moves on over the two left.
#[tokio::test]
async fn describe_shows_each_replicas_log_end_and_lag_and_a_dead_follower_falling_out_of_the_isr() {
    let _heavy = HEAVY.lock().await;
    let dir = test_dir();
    let mut cluster = start_cluster(dir.path(), 3).await;
    let all: Vec<u64> = vec![1, 2, 3];
    let addrs: Vec<String> = all.iter().map(|node_id| addr_of(&cluster, *node_id)).collect();
    all_registered_with_one_leader(&cluster, &all, &addrs[0]).await;
    let admin = admin_client(&addrs);
    create_replicated(&admin, "described", 1).await;
    let bootstrap = addrs.join(",");
    let describe = async || json(&cli(&bootstrap, &["--json", "topic", "describe", "described"]).await);

    let produced = cli_with_stdin(&bootstrap, &["produce", "described", "--partition", "0"], "a\nb\nc\nd\ne\n").await;
    assert!(produced.status.success(), "acks=all produce: {}", stderr(&produced));
    let partition = poll("every replica in the ISR at the high watermark 5", async || {
        let described = describe().await;
        let partition = described["partitions"][0].clone();
        let caught_up = all.iter().all(|node| replica_row(&partition, *node) == (Some(5), Some(0), true));
        (partition["high_watermark"] == 5 && partition["log_end_offset"] == 5 && caught_up).then_some(partition)
    })
    .await;
    assert_eq!(partition["log_start_offset"], 0, "{partition}");
    assert_eq!(sorted(&serde_json::from_value::<Vec<u64>>(partition["isr"].clone()).unwrap()), all, "{partition}");
    let human = stdout(&cli(&bootstrap, &["topic", "describe", "described"]).await);
    assert!(human.contains("log start 0\thigh watermark 5\tlog end 5"), "{human}");
    assert_eq!(human.matches("\tlog end 5\tlag 0\tin ISR").count(), 3, "{human}");

    // Kill a follower (not the Raft leader either, so fencing needs no election first) and append
    // three more records on the leader alone.
    let leader = partition["leader"].as_u64().unwrap();
    let (raft_leader, _) = poll("an agreed Raft leader", async || agreed_leader(&cluster, &all).await).await;
    let dead = *all.iter().find(|node| **node != leader && **node != raft_leader).unwrap();
    let live_follower = *all.iter().find(|node| **node != leader && **node != dead).unwrap();
    cluster.node_mut(dead).process.kill9().await.unwrap();
    let killed_at = Instant::now();
    let live = addrs_except(&cluster, &[dead]).join(",");
    let produced =
        cli_with_stdin(&live, &["produce", "described", "--partition", "0", "--acks", "leader"], "f\ng\nh\n").await;
    assert!(produced.status.success(), "acks=leader produce: {}", stderr(&produced));
    let describe_live = async || json(&cli(&live, &["--json", "topic", "describe", "described"]).await);
    poll("the dead follower lagging by 3", async || {
        let partition = describe_live().await["partitions"][0].clone();
        let (end, lag, in_isr) = replica_row(&partition, dead);
        if in_isr {
            assert_eq!(partition["high_watermark"], 5, "the HW waits for a dead ISR member: {partition}");
        }
        (partition["log_end_offset"] == 8 && end == Some(5) && lag == Some(3)).then_some(())
    })
    .await;
    let partition = poll("the dead follower out of the ISR and the HW past it", async || {
        let partition = describe_live().await["partitions"][0].clone();
        let out = !replica_row(&partition, dead).2;
        let moved_on =
            partition["high_watermark"] == 8 && replica_row(&partition, live_follower) == (Some(8), Some(0), true);
        (out && moved_on).then_some(partition)
    })
    .await;
    println!("DESCRIBE: the dead follower left the ISR {:?} after kill -9", killed_at.elapsed());
    assert_eq!(replica_row(&partition, dead), (Some(5), Some(3), false), "{partition}");
    assert_eq!(replica_row(&partition, leader), (Some(8), Some(0), true), "{partition}");
    let human = stdout(&cli(&live, &["topic", "describe", "described"]).await);
    assert!(human.contains(&format!("replica {dead}\tlog end 5\tlag 3\tnot in ISR")), "{human}");
    assert!(human.contains(&format!("replica {leader}\tlog end 8\tlag 0\tin ISR (leader)")), "{human}");
}

#[tokio::test]
async fn bad_cluster_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let listen = free_addr().to_string();
    let output = keel(&[
        "broker",
        "--node-id",
        "4",
        "--listen",
        &listen,
        "--peers",
        "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3",
        "--data-dir",
        data_dir,
    ])
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("not among the peers"), "{}", stderr(&output));

    let up_dir = dir.path().join("up");
    let up_dir = up_dir.to_str().unwrap();
    for nodes in ["0", "8"] {
        let output = cli("127.0.0.1:1", &["cluster", "up", "--nodes", nodes, "--data-dir"]).await;
        assert_eq!(output.status.code(), Some(2), "--data-dir without a value is a usage error");
        let output = keel(&["cluster", "up", "--nodes", nodes, "--data-dir", up_dir]).await;
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(stderr(&output).contains("--nodes must be between 1 and 7"), "{}", stderr(&output));
    }

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = keel(&["cluster", "up", "--nodes", "1", "--base-port", &port, "--data-dir", up_dir]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains(&format!("cannot use 127.0.0.1:{port}")), "{}", stderr(&output));
}

/// A base port with `count` free consecutive ports after it.
fn free_port_run(count: u16) -> u16 {
    for _ in 0..100 {
        let base = free_addr().port();
        if base > u16::MAX - count {
            continue;
        }
        if (0..count).all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok()) {
            return base;
        }
    }
    panic!("no run of {count} free ports");
}

#[tokio::test]
async fn cluster_up_starts_three_nodes_and_ctrl_c_stops_them() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_run(3);
    let mut up = tokio::process::Command::new(KEEL)
        .args(["cluster", "up", "--nodes", "3", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut up_stderr = up.stderr.take().unwrap();
    let up_stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = up_stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let deadline = Instant::now() + WAIT_MAX;
    while !printed.iter().any(|line: &String| line.contains("is up")) {
        let line = tokio::time::timeout_at(deadline, lines.next_line()).await;
        let line = line.expect("`keel cluster up` reports the cluster up in time").unwrap();
        printed.push(line.expect("`keel cluster up` exited before reporting the cluster up"));
    }
    for node in 0..3u16 {
        let addr = format!("127.0.0.1:{}", base + node);
        assert!(printed.iter().any(|line| line.contains(&addr)), "{addr} not in {printed:?}");
    }
    let first = format!("127.0.0.1:{base}");
    poll("one leader among the three nodes", async || one_leader(&status(&first).await?, &[1, 2, 3])).await;

    assert!(signal_child(&up, Signal::Interrupt).unwrap(), "`keel cluster up` is running");
    let exit = tokio::time::timeout(WAIT_MAX, up.wait()).await.expect("`keel cluster up` exits after Ctrl-C");
    let exit = exit.unwrap();
    let up_stderr = up_stderr.await.unwrap();
    assert!(exit.success(), "{exit}: {up_stderr}");
    assert!(up_stderr.contains("stopping 3 node(s)") && !up_stderr.contains("killed it"), "{up_stderr}");
    for node in 0..3u16 {
        let addr = ("127.0.0.1", base + node);
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "node on port {} still runs", base + node);
        // Each node shut down cleanly (SIGINT reached it and it finished its shutdown).
        let log = std::fs::read_to_string(dir.path().join(format!("node-{}.log", node + 1))).unwrap();
        assert!(log.contains("broker stopped"), "node {} log: {log}", node + 1);
    }
}

async fn write_frame(stream: &mut tokio::net::TcpStream, frame: &keel::protocol::Frame) {
    let body = frame.encode_to_bytes();
    stream.write_all(&(body.len() as u32).to_be_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
}

async fn read_frame(stream: &mut tokio::net::TcpStream) -> keel::protocol::Frame {
    let read = async {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut body).await.unwrap();
        keel::protocol::Frame::decode_bytes(body.into()).unwrap()
    };
    tokio::time::timeout(WAIT_MAX, read).await.expect("a frame within WAIT_MAX")
}

/// A forged heartbeat (issue 7's) from `from` to node 1: term 1,000,000, commit 2^40.
fn forged_heartbeat(correlation_id: u64, from: u64) -> keel::protocol::Frame {
    use keel::protocol::{Body, Frame, RaftMessage};
    use protobuf::Message as _;
    let mut heartbeat = raft::eraftpb::Message::default();
    heartbeat.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    heartbeat.from = from;
    heartbeat.to = 1;
    heartbeat.term = 1_000_000;
    heartbeat.commit = 1 << 40;
    let message = heartbeat.write_to_bytes().unwrap().into();
    Frame::new(correlation_id, Body::RaftMessage(RaftMessage { from, to: 1, message }))
}

/// A connection that identified itself as a voter can still carry garbage (no TLS proves the
/// identity yet, and a correct peer may have a bug): issue 7's heartbeat, committing 2^40, is
/// dropped before raft-rs sees it, a message claiming another sender is refused, and the node
/// keeps serving.
#[tokio::test]
async fn an_identified_peer_cannot_crash_a_node_with_a_forged_heartbeat() {
    use keel::protocol::{Body, ErrorCode, Frame, PeerHello, PEER_PROTOCOL_VERSION};

    let dir = test_dir();
    let mut cluster = start_cluster(dir.path(), 3).await;
    let all: Vec<u64> = vec![1, 2, 3];
    let node1 = addr_of(&cluster, 1);
    poll("a Raft leader with every node reachable and registered", async || {
        let status = status(&node1).await?;
        status["nodes"].as_array()?.iter().all(|node| node["registered"] == true).then_some(())?;
        one_leader(&status, &all)
    })
    .await;

    let mut stream = tokio::net::TcpStream::connect(&node1).await.unwrap();
    let hello = PeerHello { node_id: 2, to: 1, peer_version: PEER_PROTOCOL_VERSION };
    write_frame(&mut stream, &Frame::new(1, Body::PeerHello(hello))).await;
    match read_frame(&mut stream).await.body {
        Some(Body::PeerHelloResponse(response)) => assert_eq!(response.error, None, "node 2 is a voter"),
        other => panic!("expected a hello response, got {other:?}"),
    }
    write_frame(&mut stream, &forged_heartbeat(2, 2)).await;
    write_frame(&mut stream, &forged_heartbeat(3, 3)).await;
    // Only the message claiming another sender is answered (accepted Raft traffic is one-way).
    let reply = read_frame(&mut stream).await;
    assert_eq!(reply.correlation_id, 3);
    match reply.body {
        Some(Body::ErrorResponse(response)) => {
            assert_eq!(response.error.unwrap().error_code(), ErrorCode::UnknownPeer)
        }
        other => panic!("expected an error response, got {other:?}"),
    }

    let created = cli(&node1, &["topic", "create", "after-forgery", "--replication", "3"]).await;
    assert!(created.status.success(), "topic create through node 1: {}", stderr(&created));
    let status = poll("one leader among all three nodes", async || {
        let status = status(&node1).await?;
        one_leader(&status, &all).map(|_| status)
    })
    .await;
    for node in status["nodes"].as_array().unwrap() {
        assert!(node["term"].as_u64().unwrap() < 1_000_000, "the forged term reached Raft: {status}");
    }
    assert!(cluster.node_mut(1).process.exited().unwrap().is_none(), "node 1 still runs");
}

/// Graceful shutdown (SIGTERM) is a controlled shutdown: before it stops, the broker has the
/// controller move the leadership of its partitions to other ISR members (leader epoch bumped, no
/// unclean election) and take it out of every ISR. Under an acks=all produce load on every
/// partition: no partition is ever seen without a leader; right after the broker exited it leads
/// nothing, is in no ISR, and was never fenced; the partitions acknowledge again (the time after the
/// exit is printed as `CONTROLLED-SHUTDOWN ...`); the restarted broker rejoins every ISR as a
/// follower (leadership stays where it moved); every partition acknowledges after that, and every
/// acknowledged record is read back at its offset (the model's queue checker on the history).
///
/// No partition pauses either: a leader that proposes re-adding the stopping broker to the ISR is
/// refused by the controller, and the refusal bumps the partition epoch, which settles the leader's
/// pending expansion (before that fix acks=all stalled on 2 to 4 of 6 partitions in 4 of 6 runs
/// until the broker came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_moves_leadership_before_the_broker_stops_and_loses_nothing() {
    const TOPIC: &str = "rolling";
    const PARTITIONS: u32 = 6;
    let _heavy = HEAVY.lock().await;
    let LoadedCluster { dir: _dir, mut cluster, all: _, addrs, admin, workload } =
        LoadedCluster::start(TOPIC, PARTITIONS, 10).await;

    let before = full_isr(&admin, TOPIC).await;
    let victim = before.partitions[0].leader;
    let led: Vec<u32> = before.partitions.iter().filter(|p| p.leader == victim).map(|p| p.partition).collect();
    let survivor_addrs = addrs_except(&cluster, &[victim]);
    let survivors_admin = admin_client(&survivor_addrs);
    // Watch the partitions' leaders through the survivors for the whole shutdown and restart.
    let watching = CancellationToken::new();
    let watcher = tokio::spawn(leaderless_sightings(survivors_admin.clone(), TOPIC, watching.clone()));

    let signalled_at = Instant::now();
    let stopped = cluster.node_mut(victim).process.stop(Signal::Terminate, WAIT_MAX).await.unwrap();
    let exited_at = Instant::now();
    assert!(!stopped.forced && stopped.status.success(), "{stopped:?}");

    // Leadership had moved before the broker exited: the first look after the exit finds it.
    let after = survivors_admin.topic(TOPIC).await.expect("metadata through a survivor");
    assert_moved_within_isr(&before, &after, victim);
    let seen = status(&survivor_addrs[0]).await.expect("cluster status through a survivor");
    let victim_status = seen["nodes"].as_array().unwrap().iter().find(|node| node["node_id"] == victim).unwrap();
    assert_eq!(victim_status["fenced"], false, "stopped by controlled shutdown, not by fencing: {seen}");
    assert_eq!(seen["offline_partitions"], serde_json::json!([]), "{seen}");
    let under_replicated = seen["under_replicated_partitions"].as_array().unwrap();
    assert_eq!(under_replicated.len(), PARTITIONS as usize, "every ISR lost the stopped broker: {seen}");

    // Every partition acknowledges acks=all writes again without waiting for fencing.
    let acked_again = workload.acked_after_within(exited_at, FENCE_AFTER).await;
    let mut stalled = Vec::new();
    for (partition, acked_again) in acked_again.iter().enumerate() {
        let role = if led.contains(&(partition as u32)) { "leader" } else { "follower" };
        let acked_again_ms = match acked_again {
            Some(after) => after.as_millis().to_string(),
            None => {
                stalled.push(partition);
                "stalled".to_owned()
            }
        };
        println!(
            "CONTROLLED-SHUTDOWN partition={partition} acked_again_after_exit_ms={acked_again_ms} role={role} \
             stopped_node={victim} exited_after_sigterm_ms={}",
            (exited_at - signalled_at).as_millis()
        );
    }
    assert!(stalled.is_empty(), "acks=all stalled on partitions {stalled:?} after node {victim}'s controlled shutdown");

    // Restarted on the same data, it catches up as a follower of every partition and rejoins every
    // ISR; leadership stays where it moved (no partition was offline, so none is elected again).
    cluster.node_mut(victim).process.restart().unwrap();
    let restarted_at = Instant::now();
    let rejoined = full_isr(&admin, TOPIC).await;
    println!("REJOIN: node {victim} back in every ISR {:?} after its restart", restarted_at.elapsed());
    for (old, new) in after.partitions.iter().zip(&rejoined.partitions) {
        assert_eq!((new.leader, new.leader_epoch), (old.leader, old.leader_epoch), "{after:?}\n{rejoined:?}");
    }
    // Every partition acknowledges again, the stalled ones included.
    workload.acked_count_after(Instant::now(), 3).await;
    watching.cancel();
    let sightings = watcher.await.unwrap();
    assert!(sightings.is_empty(), "partitions seen without a leader: {sightings:?}");
    let report = workload.finish(&addrs, "sigterm").await;
    assert!(report.stats.sends_ok_with_offset >= 10 * PARTITIONS as usize, "{:?}", report.stats);
}

/// Reads `topic`'s metadata through `admin` until `stop`, and returns every sighting of a partition
/// without a leader (as `(partition, milliseconds since the watch began)`).
async fn leaderless_sightings(admin: Arc<Client>, topic: &'static str, stop: CancellationToken) -> Vec<(u32, u128)> {
    let began = Instant::now();
    let mut sightings = Vec::new();
    while !stop.is_cancelled() {
        if let Ok(info) = admin.topic(topic).await {
            let leaderless = info.partitions.iter().filter(|p| p.leader == 0);
            sightings.extend(leaderless.map(|p| (p.partition, began.elapsed().as_millis())));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sightings
}

/// Issue 8's rolling restart: under an acks=all produce load on every partition of a replication-
/// factor-3 topic, each broker in turn (1, 2, 3) is stopped with SIGTERM (a controlled shutdown: it
/// exits cleanly, leading nothing and in no ISR), restarted on the same data, and waited for until it
/// is back in every ISR before the next one, as an operator rolls a cluster. No partition is ever
/// seen without a leader, every partition acknowledges again after each restart, and every
/// acknowledged record is read back at its offset (the model's queue checker). What clients feel is
/// measured, not asserted: per restart and over the whole roll, each partition's longest time
/// without an acknowledgement (its stall) and the failed sends, definite and ambiguous, printed as
/// `ROLLING ...` lines.
///
/// Asserted: every failed send is a `NotLeaderAfterAppend` (a batch in flight when its partition's
/// leadership moved; unknown outcome). Before the client looked the leader up again after one, and
/// before a stopping broker drained its client connections and closed them without a reset, each
/// restart also gave definite "cannot connect" failures and "connection reset" ambiguous ones.
///
/// A broker that leads the metadata group hands that leadership over before its controlled
/// shutdown. In the other order the partitions it followed stalled for `isr_change_retry_ms` (1 s)
/// in 4 of 9 restarts of the Raft leader, 7 s in 2 more: the re-adding of the stopping broker that
/// their leaders proposed (and counted toward their HW) met a Raft leader in a transfer, which drops
/// proposals. Since, the longest stall per restart was 53 to 162 ms (36 restarts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_broker_under_load_loses_nothing_and_reports_its_stalls() {
    const TOPIC: &str = "rolled";
    const PARTITIONS: u32 = 6;
    let _heavy = HEAVY.lock().await;
    let LoadedCluster { dir: _dir, mut cluster, all, addrs, admin, workload } =
        LoadedCluster::start(TOPIC, PARTITIONS, 10).await;
    full_isr(&admin, TOPIC).await;
    let watching = CancellationToken::new();
    let watcher = tokio::spawn(leaderless_sightings(admin.clone(), TOPIC, watching.clone()));

    let rolling_from = Instant::now();
    for (restart, node) in all.iter().enumerate() {
        let before = full_isr(&admin, TOPIC).await;
        let (raft_leader, _) = poll("an agreed Raft leader", async || agreed_leader(&cluster, &all).await).await;
        let from = Instant::now();
        let stopped = cluster.node_mut(*node).process.stop(Signal::Terminate, WAIT_MAX).await.unwrap();
        assert!(!stopped.forced && stopped.status.success(), "node {node}: {stopped:?}");
        let exited = from.elapsed();
        // Its controlled shutdown applied before it exited (so the wait for the full ISR below waits
        // for the restarted broker, not for a stale view that still names it).
        assert_moved_within_isr(&before, &admin.topic(TOPIC).await.expect("metadata"), *node);
        cluster.node_mut(*node).process.restart().unwrap();
        full_isr(&admin, TOPIC).await;
        let rejoined = from.elapsed();
        workload.acked_after(Instant::now()).await;
        let led: Vec<String> =
            before.partitions.iter().filter(|p| p.leader == *node).map(|p| p.partition.to_string()).collect();
        let label = format!(
            "restart={} node={node} led={} raft_leader={} exited_after_sigterm_ms={} back_in_every_isr_ms={}",
            restart + 1,
            led.join(","),
            raft_leader == *node,
            exited.as_millis(),
            rejoined.as_millis()
        );
        for SendFailure { partition, answered, ambiguous, error } in
            report_stalls(&workload, &label, from, Instant::now())
        {
            let at_ms = (answered - from).as_millis();
            println!(
                "ROLLING failed_send restart={} partition={partition} at_ms={at_ms} ambiguous={ambiguous} {error}",
                restart + 1
            );
        }
    }
    // The only failed sends are the batches in flight on a stopping leader's partitions when their
    // leadership moved: appended there, maybe not committed, so their outcome is unknown (idempotent
    // producers will retry them safely). No definite failure, no lost connection: a stopping broker
    // answers what it read, drains its clients and closes without a reset.
    let failures = report_stalls(&workload, "worst", rolling_from, Instant::now());
    for failure in &failures {
        assert!(failure.ambiguous && failure.error.contains("NotLeaderAfterAppend"), "{}", failure.error);
    }
    watching.cancel();
    let sightings = watcher.await.unwrap();
    assert!(sightings.is_empty(), "partitions seen without a leader: {sightings:?}");
    let report = workload.finish(&addrs, "rolling-restart").await;
    assert!(report.stats.sends_ok_with_offset >= 10 * PARTITIONS as usize, "{:?}", report.stats);
}

/// Prints one `ROLLING <label> ...` line for `from..to`: the longest stall of any partition (which,
/// and when it began after `from`), every partition's longest stall, and the failed sends; returns
/// those failures.
fn report_stalls(workload: &Workload, label: &str, from: Instant, to: Instant) -> Vec<SendFailure> {
    let stalls: Vec<(Duration, Duration)> =
        (0..workload.partitions).map(|partition| workload.longest_stall(partition, from, to)).collect();
    let (partition, (stall, began)) =
        stalls.iter().enumerate().max_by_key(|(_, (stall, _))| *stall).expect("partitions");
    let each: Vec<String> = stalls.iter().map(|(stall, _)| stall.as_millis().to_string()).collect();
    let failures = workload.failures_between(from, to);
    let ambiguous = failures.iter().filter(|failure| failure.ambiguous).count();
    println!(
        "ROLLING {label} max_stall_ms={} partition={partition} stall_began_ms={} stalls_ms={} \
         errors_definite={} errors_ambiguous={ambiguous}",
        stall.as_millis(),
        began.as_millis(),
        each.join(","),
        failures.len() - ambiguous
    );
    failures
}

/// The replication issue's test: three brokers, a topic with replication factor 3 (min ISR 2) and
/// three partitions, an acks=all produce load on every partition throughout, while each partition's
/// leader in turn is killed with kill -9, restarted, and given time to rejoin every ISR before the
/// next kill. After each kill, once the controller fences the dead broker (`broker_fence_after_ms`,
/// 6 s), every partition it led moves to another ISR member (leader epoch bumped, no unclean
/// election) and every partition acknowledges again: the partitions it only followed stall too, as
/// an acks=all write waits for every ISR member until the fence takes it out of the ISR. The time
/// from the kill to each partition's first acknowledged write is printed as `FAILOVER ...`. At the
/// end everything is read back and the recorded history is judged by the model's queue checker:
/// every acknowledged record at its acknowledged offset, no definitely failed record, no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_loses_nothing_while_each_partition_leader_is_killed_in_turn() {
    const TOPIC: &str = "turns";
    const PARTITIONS: u32 = 3;
    let _heavy = HEAVY.lock().await;
    let LoadedCluster { dir: _dir, mut cluster, all, addrs, admin, workload } =
        LoadedCluster::start(TOPIC, PARTITIONS, 20).await;

    let mut worst = Duration::ZERO;
    for round in 0..PARTITIONS {
        let before = full_isr(&admin, TOPIC).await;
        let victim = before.partitions[round as usize].leader;
        let survivors_admin = admin_client(&addrs_except(&cluster, &[victim]));
        // Whether the victim is also the Raft leader (the controller): fencing then waits for a new one.
        let (raft_leader, _) = poll("an agreed Raft leader", async || agreed_leader(&cluster, &all).await).await;
        cluster.node_mut(victim).process.kill9().await.unwrap();
        let killed_at = Instant::now();

        let after = poll("the dead broker's partitions moved within their ISR", async || {
            let info = survivors_admin.topic(TOPIC).await.ok()?;
            info.partitions
                .iter()
                .all(|p| p.leader != 0 && p.leader != victim && !p.isr.contains(&victim))
                .then_some(info)
        })
        .await;
        let moved_after = killed_at.elapsed();
        assert_moved_within_isr(&before, &after, victim);
        let unavailable = workload.acked_after(killed_at).await;
        for (partition, unavailable) in unavailable.iter().enumerate() {
            let role = if before.partitions[partition].leader == victim { "leader" } else { "follower" };
            println!(
                "FAILOVER partition={partition} unavailable_ms={} role={role} killed_node={victim} round={round} \
                 moved_after_ms={} raft_leader_killed={}",
                unavailable.as_millis(),
                moved_after.as_millis(),
                raft_leader == victim
            );
            worst = worst.max(*unavailable);
        }

        cluster.node_mut(victim).process.restart().unwrap();
        let restarted_at = Instant::now();
        full_isr(&admin, TOPIC).await;
        println!("REJOIN: node {victim} back in every ISR {:?} after its restart", restarted_at.elapsed());
    }
    // The cluster, whole again, keeps acknowledging.
    workload.acked_count_after(Instant::now(), 5).await;
    let report = workload.finish(&addrs, "leaders-killed-in-turn").await;
    println!("FAILOVER worst unavailable_ms={} over {PARTITIONS} kills", worst.as_millis());
    assert!(report.stats.sends_ok_with_offset >= 20 * PARTITIONS as usize, "{:?}", report.stats);
    // Each kill caught a send in flight on a partition the dead broker led: it cannot have been
    // acknowledged.
    let unacked = report.stats.sends_failed + report.stats.sends_info;
    assert!(
        unacked >= PARTITIONS as usize,
        "only {unacked} sends failed across {PARTITIONS} kills: {:?}",
        report.stats
    );
}

/// One acks=all send through `producer`, bounded.
async fn send_one(producer: &Producer, topic: &str, value: &str) -> Result<RecordMetadata, ClientError> {
    let send = async { delivered(producer.send(topic, Some(0), Record::value(value.to_owned())).await).await };
    tokio::time::timeout(OPERATION_MAX, send).await.unwrap_or_else(|_| panic!("the send of {value} hung"))
}

/// Min ISR, and the metadata group losing its majority, on five brokers (so the metadata group keeps
/// its majority with two down) and one partition with replication factor 3 and min ISR 2.
///
/// - kill -9 of two of its three replicas (its leader and a follower): once both are fenced, the
///   third leads with an ISR of itself alone, and an acks=all produce is refused with
///   `NotEnoughReplicas`, a definite error (nothing appended: the refused records are never read);
///   `keel produce` exits 1 and names the error; `cluster status` lists the partition as
///   under-replicated and below min ISR, not offline.
/// - restart one of them: once it is back in the ISR, acks=all produce is accepted again.
/// - MAJORITY-LOSS: kill the two brokers that hold no replica, so three of five are down and the
///   metadata group has no majority (every node left is a pre-candidate). No heartbeat applies any
///   more, so once the leader's controller lease lapses (ADR 0014: 4 s after its last heartbeat that
///   applied) produce is refused with a definite `NotLeader` error, although the partition's leader
///   and ISR are alive: nobody could fence the leader or elect another, and a leader that cannot
///   tell whether it was replaced serves nobody. Sends before that may still be acknowledged.
///   `keel produce` from a new client exits 1 with "no Raft leader is known" (metadata waits for a
///   Raft read barrier); `cluster status` still answers from each node's last applied state
///   ("Raft leader: none").
/// - restart everything: the ISR is full again, and every acknowledged record is read back at its
///   offset; no refused record is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_is_refused_below_min_isr_and_while_the_metadata_group_has_no_majority() {
    const TOPIC: &str = "guarded";
    let _heavy = HEAVY.lock().await;
    let dir = test_dir();
    let mut cluster = start_cluster(dir.path(), 5).await;
    let all: Vec<u64> = (1..=5).collect();
    let addrs: Vec<String> = all.iter().map(|node_id| addr_of(&cluster, *node_id)).collect();
    all_registered_with_one_leader(&cluster, &all, &addrs[0]).await;
    let admin = admin_client(&addrs);
    let before = create_replicated(&admin, TOPIC, 1).await;
    let replicas = before.partitions[0].replicas.clone();
    let leader = before.partitions[0].leader;
    let follower = *replicas.iter().find(|node_id| **node_id != leader).unwrap();
    let survivor = *replicas.iter().find(|node_id| **node_id != leader && **node_id != follower).unwrap();
    let outsiders: Vec<u64> = all.iter().copied().filter(|node_id| !replicas.contains(node_id)).collect();
    let survivor_addr = addr_of(&cluster, survivor);

    // One producer throughout, as an application keeps it: its connections and its cached leader.
    let client = Client::new(addrs.join(","), workload_client_config());
    let producer = Producer::new(client.clone(), workload_producer_config());
    let mut acked: Vec<(i64, String)> = Vec::new();
    for i in 0..5 {
        let value = format!("before-{i}");
        let metadata = send_one(&producer, TOPIC, &value).await.expect("acks=all with the full ISR");
        acked.push((metadata.offset.0, value));
    }

    // Two of three replicas die; once both are fenced, the ISR is the survivor alone.
    cluster.node_mut(leader).process.kill9().await.unwrap();
    cluster.node_mut(follower).process.kill9().await.unwrap();
    let killed_at = Instant::now();
    let survivors_admin = admin_client(&addrs_except(&cluster, &[leader, follower]));
    let shrunk = poll("the ISR shrunk to the survivor, which leads", async || {
        let info = survivors_admin.topic(TOPIC).await.ok()?;
        let partition = &info.partitions[0];
        (partition.leader == survivor && partition.isr == [survivor]).then_some(info)
    })
    .await;
    assert_eq!(shrunk.partitions[0].unclean_elections, 0, "{shrunk:?}");
    println!(
        "MIN-ISR: the ISR shrank to [{survivor}] {:?} after kill -9 of {leader} and {follower}",
        killed_at.elapsed()
    );

    // acks=all is refused, definitely. (The producer first finds its cached leader dead.)
    let mut refused = Vec::new();
    let mut attempt = 0;
    let error = poll("acks=all refused with NotEnoughReplicas", async || {
        attempt += 1;
        let value = format!("refused-{attempt}");
        match send_one(&producer, TOPIC, &value).await {
            Ok(metadata) => panic!("{value} acknowledged at {metadata:?} with an ISR of one, below min ISR 2"),
            Err(error) if error.code() == Some(ErrorCode::NotEnoughReplicas) => {
                refused.push(value);
                Some(error)
            }
            Err(error) => {
                if !error.is_ambiguous() {
                    refused.push(value);
                }
                client.forget_leaders(TOPIC);
                None
            }
        }
    })
    .await;
    assert!(!error.is_ambiguous(), "NotEnoughReplicas is a definite failure: {error}");
    let output = cli(&survivor_addr, &["produce", TOPIC, "--partition", "0", "--value", "refused-cli"]).await;
    assert_eq!(output.status.code(), Some(1), "a definite failure: {}", stderr(&output));
    assert!(stderr(&output).contains("NotEnoughReplicas"), "{}", stderr(&output));
    refused.push("refused-cli".to_owned());
    let human = stdout(&cli(&survivor_addr, &["cluster", "status"]).await);
    let line = human.lines().find(|line| line.contains(&format!("{TOPIC}/0"))).unwrap_or_else(|| panic!("{human}"));
    assert!(
        line.contains("under-replicated") && line.contains("below min ISR") && !line.contains("OFFLINE"),
        "{human}"
    );
    println!("MIN-ISR: `cluster status` says: {}", line.trim());
    // acks=leader asks only the leader: accepted below min ISR (the durability the user chose).
    let output = cli(
        &survivor_addr,
        &["--json", "produce", TOPIC, "--partition", "0", "--acks", "leader", "--value", "leader-only"],
    )
    .await;
    acked.push((json(&output)["offset"].as_i64().unwrap(), "leader-only".to_owned()));

    // One of them comes back: once it is in the ISR again, acks=all is accepted.
    cluster.node_mut(follower).process.restart().unwrap();
    let restarted_at = Instant::now();
    poll("the restarted replica back in the ISR", async || {
        let info = survivors_admin.topic(TOPIC).await.ok()?;
        (sorted(&info.partitions[0].isr) == sorted(&[survivor, follower])).then_some(())
    })
    .await;
    let value = "after-rejoin".to_owned();
    let metadata = send_one(&producer, TOPIC, &value).await.expect("acks=all with two in the ISR");
    acked.push((metadata.offset.0, value));
    println!("MIN-ISR: acks=all accepted again {:?} after the restart of {follower}", restarted_at.elapsed());

    // MAJORITY-LOSS: three of five down (the dead old leader and the two outsiders). The partition's
    // leader and ISR are alive, but no heartbeat applies: once the leader's lease lapses it refuses.
    for outsider in &outsiders {
        cluster.node_mut(*outsider).process.kill9().await.unwrap();
    }
    let majority_lost_at = Instant::now();
    let mut attempt = 0;
    let error = poll("produce refused once the leader's controller lease lapsed", async || {
        attempt += 1;
        let value = format!("no-majority-{attempt}");
        match send_one(&producer, TOPIC, &value).await {
            Ok(metadata) => {
                acked.push((metadata.offset.0, value));
                None
            }
            Err(error) if error.is_ambiguous() => None,
            Err(error) => {
                refused.push(value);
                Some(error)
            }
        }
    })
    .await;
    assert_eq!(error.code(), Some(ErrorCode::NotLeader), "{error}");
    println!("MAJORITY-LOSS: produce refused {:?} after the majority was lost: {error}", majority_lost_at.elapsed());
    // Whatever needs the metadata group does not work: a new client cannot look the leader up.
    let output = cli(&survivor_addr, &["produce", TOPIC, "--partition", "0", "--value", "fresh-cli"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("no Raft leader"), "{}", stderr(&output));
    refused.push("fresh-cli".to_owned());
    // `cluster status` still answers, from what each node last applied, and says there is no leader.
    let human = stdout(&cli(&survivor_addr, &["cluster", "status"]).await);
    assert!(human.contains("Raft leader: none"), "{human}");
    let line = human.lines().find(|line| line.contains(&format!("{TOPIC}/0"))).unwrap_or_else(|| panic!("{human}"));
    assert!(line.contains(&format!("leader {survivor}")) && !line.contains("below min ISR"), "{human}");
    println!("MAJORITY-LOSS: `cluster status` through node {survivor}:\n{human}");
    cluster.node_mut(follower).process.kill9().await.unwrap();

    // Everything back: the majority returns, the ISR fills, nothing acknowledged is lost.
    for node_id in [leader, follower].into_iter().chain(outsiders.iter().copied()) {
        cluster.node_mut(node_id).process.restart().unwrap();
    }
    all_registered_with_one_leader(&cluster, &all, &survivor_addr).await;
    full_isr(&admin, TOPIC).await;
    let consumed = consume_eventually(&survivor_addr, TOPIC).await;
    let by_offset: BTreeMap<i64, String> = consumed.into_iter().map(|(_, offset, value)| (offset, value)).collect();
    for (offset, value) in &acked {
        assert_eq!(by_offset.get(offset), Some(value), "acknowledged {value} at {offset}: {by_offset:?}");
    }
    for value in &refused {
        assert!(!by_offset.values().any(|read| read == value), "{value} was refused yet stored: {by_offset:?}");
    }
}
