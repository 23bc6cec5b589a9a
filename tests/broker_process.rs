//! Integration tests against the real `keel` binary: the CLI as a user runs it, kill -9 and restart
//! without losing acknowledged records (a recorded history judged by the model's queue checker),
//! graceful shutdown that syncs what `fsync = "never"` left unsynced, garbage on the port, config
//! files, logs, bootstrap lists, linger 0, Raft traffic from connections that are not peers, and
//! compressed batches, good and bad.
//!
//! Each test starts its own broker on a free loopback port with its own temporary data dir, through
//! `keel::process` (the helper `keel cluster up` runs its nodes with). Every wait is a condition with
//! a generous bound ([`WAIT_MAX`]), never a fixed sleep.

#![cfg(not(madsim))]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use keel::batch::{encode_batch, ProducerFields, Record};
use keel::client::{delivered, Client, ClientConfig, Producer, ProducerConfig};
use keel::process::{free_loopback_addr, run_keel, BrokerCommand, BrokerProcess, Signal, Stderr};
use keel::protocol::{
    Body, ErrorCode, Frame, MetadataRequest, PeerHello, ProduceRequest, RaftMessage, PEER_PROTOCOL_VERSION,
};
use keel::types::Offset as KeelOffset;
use keel_model::history::{History, Offset, Op, Partition, PollReads, ProcessId, Value};
use keel_model::queue_checker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const KEEL: &str = env!("CARGO_BIN_EXE_keel");
/// Liveness guard for every wait in this file.
const WAIT_MAX: Duration = Duration::from_secs(30);

fn free_addr() -> SocketAddr {
    free_loopback_addr().expect("a free loopback port")
}

/// A broker on a free port with its data in `data_dir`, logging warnings to the test's stderr,
/// once it answers.
async fn start(data_dir: &Path, extra_args: &[&str]) -> BrokerProcess {
    let command = BrokerCommand::new(KEEL, free_addr(), data_dir).args(extra_args).env("RUST_LOG", "warn");
    BrokerProcess::start(command, WAIT_MAX).await.expect("start keel broker")
}

async fn cli(broker: &BrokerProcess, args: &[&str]) -> Output {
    cli_with_stdin(broker, args, "").await
}

async fn cli_with_stdin(broker: &BrokerProcess, args: &[&str], stdin: &str) -> Output {
    let mut all = vec!["--broker".to_owned(), broker.addr().to_string()];
    all.extend(args.iter().map(|arg| arg.to_string()));
    run_keel(Path::new(KEEL), all, stdin.as_bytes()).await.expect("run keel")
}

/// `keel args...` with extra environment and no `--broker`.
async fn keel_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(KEEL);
    command.args(args).envs(env.iter().copied()).stdin(std::process::Stdio::null());
    command.output().await.expect("run keel")
}

async fn write_frame(stream: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    stream.write_all(&(body.len() as u32).to_be_bytes()).await?;
    stream.write_all(body).await
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Frame> {
    let read = async {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut body).await?;
        Frame::decode_bytes(Bytes::from(body)).map_err(std::io::Error::other)
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.map_err(std::io::Error::other)?
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn cli_round_trip_as_a_new_user_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &[]).await;

    let created = cli(&broker, &["topic", "create", "orders", "--partitions", "3"]).await;
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(stdout(&created).contains("created topic orders"));

    let listed = cli(&broker, &["--json", "topic", "list"]).await;
    let listed: serde_json::Value = serde_json::from_str(&stdout(&listed)).unwrap();
    assert_eq!(listed["topics"][0]["name"], "orders");
    assert_eq!(listed["topics"][0]["partitions"], 3);

    let produced = cli_with_stdin(&broker, &["produce", "orders", "--partition", "1", "--verbose"], "a\nb\nc\n").await;
    assert!(produced.status.success(), "{}", stderr(&produced));
    assert_eq!(stdout(&produced), "partition 1 offset 0\npartition 1 offset 1\npartition 1 offset 2\n");

    let single = cli(&broker, &["produce", "orders", "--partition", "1", "--value", "d"]).await;
    assert!(single.status.success(), "{}", stderr(&single));

    let consumed = cli(&broker, &["consume", "orders", "--partition", "1", "--from-beginning"]).await;
    assert!(consumed.status.success(), "{}", stderr(&consumed));
    assert_eq!(stdout(&consumed), "a\nb\nc\nd\n");

    let consumed =
        cli(&broker, &["--json", "consume", "orders", "--partition", "1", "--offset", "2", "--count", "1"]).await;
    let record: serde_json::Value = serde_json::from_str(stdout(&consumed).trim()).unwrap();
    assert_eq!(record["offset"], 2);
    assert_eq!(record["value"], "c");
    assert_eq!(record["partition"], 1);

    // Seek by time: everything is at or after time 0, nothing is at or after the far future.
    let since_epoch = cli(&broker, &["consume", "orders", "--partition", "1", "--from-timestamp", "0"]).await;
    assert_eq!(stdout(&since_epoch), "a\nb\nc\nd\n");
    let future = cli(&broker, &["consume", "orders", "--partition", "1", "--from-timestamp", "99999999999999"]).await;
    assert!(future.status.success(), "{}", stderr(&future));
    assert_eq!(stdout(&future), "");

    let described = cli(&broker, &["--json", "topic", "describe", "orders"]).await;
    let described: serde_json::Value = serde_json::from_str(&stdout(&described)).unwrap();
    assert_eq!(described["partitions"][1]["high_watermark"], 4);
    assert_eq!(described["partitions"][0]["high_watermark"], 0);

    // Keys pick partitions deterministically: the same key lands on the same partition.
    let keyed = cli_with_stdin(&broker, &["--json", "produce", "orders", "--key", "user-7"], "x\ny\n").await;
    let partitions: Vec<u64> = stdout(&keyed)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["partition"].as_u64().unwrap())
        .collect();
    assert_eq!(partitions.len(), 2);
    assert_eq!(partitions[0], partitions[1]);

    // Bad input: every failure is a clear message and a non-zero exit.
    let unknown = cli(&broker, &["produce", "nope", "--value", "x"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("unknown topic \"nope\""), "{}", stderr(&unknown));
    let bad_partition = cli(&broker, &["consume", "orders", "--partition", "9"]).await;
    assert_eq!(bad_partition.status.code(), Some(1));
    assert!(stderr(&bad_partition).contains("no partition 9"));
    let duplicate = cli(&broker, &["topic", "create", "orders"]).await;
    assert_eq!(duplicate.status.code(), Some(1));
    assert!(stderr(&duplicate).contains("already exists"));
    let bad_name = cli(&broker, &["topic", "create", "no/slashes"]).await;
    assert!(stderr(&bad_name).contains("invalid topic name"));
    let zero = cli(&broker, &["topic", "create", "z", "--partitions", "0"]).await;
    assert!(stderr(&zero).contains("partitions must be between"));
    let replicated = cli(&broker, &["topic", "create", "r", "--replication", "3"]).await;
    assert!(stderr(&replicated).contains("replication factor 3"));
    let bad_args = cli(&broker, &["produce"]).await;
    assert_eq!(bad_args.status.code(), Some(2), "clap exits 2 on bad arguments");

    let deleted = cli(&broker, &["topic", "delete", "orders"]).await;
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let gone = cli(&broker, &["topic", "describe", "orders"]).await;
    assert_eq!(gone.status.code(), Some(1));
}

#[tokio::test]
async fn cli_reports_a_dead_broker() {
    let dead = free_addr().to_string();
    let output = run_keel(Path::new(KEEL), ["--broker", &dead, "topic", "list"], b"").await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("cannot connect to broker"), "{}", stderr(&output));
}

/// The binary checks the idempotence flags before it connects anywhere: a bad value and a
/// combination clap cannot see by itself are both usage errors (exit code 2, the message on stderr,
/// nothing read from stdin, no broker asked: the one named here does not exist).
#[tokio::test]
async fn bad_idempotence_flags_are_usage_errors_before_anything_is_sent() {
    let dead = free_addr().to_string();
    for (args, expected) in [
        (&["produce", "t", "--delivery-timeout-ms", "0"][..], "0 would give up on every record"),
        (&["produce", "t", "--delivery-timeout-ms", "1000"][..], "give at least 30005"),
        (&["produce", "t", "--acks", "leader", "--delivery-timeout-ms", "60000"][..], "needs --acks all"),
        (&["produce", "t", "--no-idempotence", "--delivery-timeout-ms", "60000"][..], "cannot be used with"),
        (&["bench", "produce", "--compare-idempotence", "--acks", "none"][..], "needs --acks all"),
    ] {
        let mut all = vec!["--broker", &dead];
        all.extend_from_slice(args);
        let output = run_keel(Path::new(KEEL), all, b"1\n2\n").await.unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{args:?}: {}", stderr(&output));
        assert!(!stderr(&output).contains("cannot connect"), "{args:?}: {}", stderr(&output));
    }
}

/// The kill -9 workload's shape.
const KILL_TOPIC: &str = "durable";
const KILL_PARTITIONS: u32 = 2;
/// Producer processes (Jepsen's: each has one send outstanding at a time); they share one
/// `Producer`, so batches carry records of several processes.
const KILL_PRODUCERS: u64 = 8;
const KILL_POLLER: ProcessId = ProcessId(100);
const KILL_READER: ProcessId = ProcessId(101);
/// The broker is killed once the history holds this many acknowledged sends.
const ACKED_BEFORE_KILL: usize = 400;
/// Longest one send or poll may take before the test calls it a hang (client timeouts are 5 s).
const OPERATION_MAX: Duration = Duration::from_secs(20);

/// The history every workload task records into, with times from the start of the run.
struct Recorder {
    history: Mutex<History>,
    start: Instant,
}

impl Recorder {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn with<R>(&self, record: impl FnOnce(&mut History, u64) -> R) -> R {
        let now_ns = self.now_ns();
        record(&mut self.history.lock().expect("history lock"), now_ns)
    }

    fn acked(&self) -> usize {
        let history = self.history.lock().expect("history lock");
        history.events().iter().filter(|event| matches!(event.op, Op::Send { offset: Some(_), .. })).count()
    }
}

fn kill_client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        retries: 0,
        ..ClientConfig::default()
    }
}

/// When a producer process stops sending.
#[derive(Clone)]
enum Until {
    /// Once it has resolved a send it started after this token was cancelled (the kill): so the
    /// kill always lands while every process is producing, and every process records at least one
    /// send against the dead broker.
    SentAfter(CancellationToken),
    /// Once this many of its sends were acknowledged (after the restart).
    Acked(usize),
}

/// One producer process: sends unique values `"<process>-<n>"` from `sequence` on, one at a time,
/// round-robin over the partitions, and records each outcome. Returns the next unused sequence.
async fn produce(
    process: ProcessId,
    producer: Producer,
    recorder: Arc<Recorder>,
    mut sequence: u64,
    until: Until,
) -> u64 {
    let mut acked = 0;
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let after_kill = matches!(&until, Until::SentAfter(killed) if killed.is_cancelled());
        let partition = ((process.0 + sequence) % u64::from(KILL_PARTITIONS)) as u32;
        let value = format!("{}-{sequence}", process.0);
        sequence += 1;
        let pending = recorder.with(|history, now_ns| {
            history.invoke_send(process, now_ns, Partition::of_topic(KILL_TOPIC, partition), value.as_str())
        });
        let send =
            async { delivered(producer.send(KILL_TOPIC, Some(partition), Record::value(value.clone())).await).await };
        let outcome = tokio::time::timeout(OPERATION_MAX, send).await;
        let outcome = outcome.unwrap_or_else(|_| panic!("{process}: the send of {value} hung for {OPERATION_MAX:?}"));
        recorder.with(|history, now_ns| match outcome {
            Ok(metadata) => {
                assert_eq!(metadata.partition, partition, "{value} acked in another partition");
                history.send_ok(pending, now_ns, Offset(metadata.offset.0 as u64));
                acked += 1;
            }
            Err(error) if error.is_ambiguous() => {
                history.send_info(pending, now_ns);
            }
            Err(_) => {
                history.send_fail(pending, now_ns);
            }
        });
        match until {
            Until::SentAfter(_) if after_kill => return sequence,
            Until::Acked(wanted) if acked >= wanted => return sequence,
            Until::Acked(wanted) => {
                assert!(Instant::now() < deadline, "{process}: {acked} of {wanted} sends acked in {WAIT_MAX:?}")
            }
            Until::SentAfter(_) => {}
        }
    }
}

/// Reads `partition` from `position` once and records it as one poll; returns the fetch (or `None`
/// when it failed, which read nothing and moved no position).
async fn poll_once(
    client: &Client,
    recorder: &Recorder,
    process: ProcessId,
    partition: u32,
    position: &mut u64,
) -> Option<keel::client::Fetched> {
    let pending = recorder.with(|history, now_ns| history.invoke_poll(process, now_ns));
    let fetch = client.fetch(KILL_TOPIC, partition, KeelOffset(*position as i64), 1 << 20, Duration::from_millis(50));
    let fetched = tokio::time::timeout(OPERATION_MAX, fetch)
        .await
        .unwrap_or_else(|_| panic!("{process}: a fetch of partition {partition} hung for {OPERATION_MAX:?}"));
    let Ok(fetched) = fetched else {
        recorder.with(|history, now_ns| history.poll_fail(pending, now_ns));
        return None;
    };
    let mut read = Vec::new();
    for record in &fetched.records {
        let value = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned();
        read.push((Offset(record.offset.0 as u64), Value(value)));
        *position = record.offset.0 as u64 + 1;
    }
    let reads: PollReads = BTreeMap::from([(Partition::of_topic(KILL_TOPIC, partition), read)]);
    recorder.with(|history, now_ns| history.poll_ok(pending, now_ns, reads));
    Some(fetched)
}

/// A consumer that reads every partition from its own positions until the kill.
async fn poll_until_killed(client: Arc<Client>, recorder: Arc<Recorder>, killed: CancellationToken) {
    let partitions = (0..KILL_PARTITIONS).map(|partition| Partition::of_topic(KILL_TOPIC, partition));
    recorder.with(|history, now_ns| history.assign(KILL_POLLER, now_ns, partitions));
    let mut positions = [0u64; KILL_PARTITIONS as usize];
    while !killed.is_cancelled() {
        for partition in 0..KILL_PARTITIONS {
            poll_once(&client, &recorder, KILL_POLLER, partition, &mut positions[partition as usize]).await;
        }
    }
}

/// The final phase: every partition read from offset 0 up to its high watermark.
async fn read_everything(client: &Client, recorder: &Recorder) {
    let partitions = (0..KILL_PARTITIONS).map(|partition| Partition::of_topic(KILL_TOPIC, partition));
    recorder.with(|history, now_ns| history.assign(KILL_READER, now_ns, partitions));
    let deadline = Instant::now() + WAIT_MAX;
    for partition in 0..KILL_PARTITIONS {
        let mut position = 0u64;
        loop {
            match poll_once(client, recorder, KILL_READER, partition, &mut position).await {
                Some(fetched) if position >= fetched.high_watermark.0 as u64 => break,
                Some(_) => {}
                // The restarted broker may still be bringing the partition up: ask again.
                None => {
                    assert!(
                        Instant::now() < deadline,
                        "partition {partition} unreadable for {WAIT_MAX:?} after restart"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// `history` with `value` taken out of every poll: a planted loss of one acknowledged record.
fn without_reads_of(history: &History, value: &Value) -> History {
    let mut events = history.events().to_vec();
    for event in &mut events {
        if let Op::Poll { reads: Some(reads) } = &mut event.op {
            for records in reads.values_mut() {
                records.retain(|(_, read)| read != value);
            }
        }
    }
    History::from_events(events).expect("removing reads keeps a history well-formed")
}

/// kill -9 in the middle of a produce stream, restart on the same data, produce a little more, read
/// everything back: the recorded history (shared/HISTORY-FORMAT.md) must satisfy the model's queue checker: no acked
/// record lost, nothing duplicated or out of order, nothing read that was never sent. Set
/// `KEEL_TEST_HISTORY=<dir>` to keep the history for an outside checker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start(dir.path(), &[]).await;
    let addr = broker.addr().to_string();
    Client::new(addr.clone(), kill_client_config()).create_topic(KILL_TOPIC, KILL_PARTITIONS, 1).await.unwrap();

    let recorder = Arc::new(Recorder { history: Mutex::new(History::new()), start: Instant::now() });
    let killed = CancellationToken::new();
    // The plain producer: its sends after the kill must end (unknown) while the broker is down; an
    // idempotent one would re-send them until the restart.
    let producer_config =
        ProducerConfig { linger: Duration::from_millis(1), retries: 0, idempotent: false, ..ProducerConfig::default() };
    let producer = Producer::new(Client::new(addr.clone(), kill_client_config()), producer_config.clone());
    let mut producers = Vec::new();
    for process in 0..KILL_PRODUCERS {
        let (producer, recorder, until) = (producer.clone(), recorder.clone(), Until::SentAfter(killed.clone()));
        producers.push(tokio::spawn(produce(ProcessId(process), producer, recorder, 0, until)));
    }
    let poller = Client::new(addr.clone(), kill_client_config());
    let poller = tokio::spawn(poll_until_killed(poller, recorder.clone(), killed.clone()));

    // Kill once enough sends are acknowledged (a condition on the history, not a count of sends
    // that might all finish first: the producers run until after the kill).
    let deadline = Instant::now() + WAIT_MAX;
    while recorder.acked() < ACKED_BEFORE_KILL {
        assert!(Instant::now() < deadline, "{} sends acked after {WAIT_MAX:?}", recorder.acked());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.kill9().await.unwrap();
    killed.cancel();
    let mut sequences = Vec::new();
    for task in producers {
        sequences.push(task.await.expect("a producer process panicked"));
    }
    poller.await.expect("the poller panicked");

    // Restart, and write again before the final read: a record lost in the restart would have its
    // offset taken by a new one, which the checker reports (inconsistent offsets, offsets going
    // backwards), even when the poller had read the lost record before the kill.
    broker.restart().unwrap();
    broker.wait_ready(WAIT_MAX).await.unwrap();
    let producer = Producer::new(Client::new(addr.clone(), kill_client_config()), producer_config);
    let mut producers = Vec::new();
    for (process, sequence) in sequences.into_iter().enumerate() {
        let (producer, recorder) = (producer.clone(), recorder.clone());
        producers.push(tokio::spawn(produce(ProcessId(process as u64), producer, recorder, sequence, Until::Acked(4))));
    }
    for task in producers {
        task.await.expect("a producer process panicked");
    }
    let reader = Client::new(addr, ClientConfig { retries: 3, ..kill_client_config() });
    read_everything(&reader, &recorder).await;

    let history = recorder.history.lock().unwrap().clone();
    if let Some(dir) = std::env::var_os("KEEL_TEST_HISTORY") {
        let path = PathBuf::from(dir).join(format!("broker_process-kill9-{}.jsonl", std::process::id()));
        std::fs::write(&path, history.to_jsonl()).unwrap();
        println!("history written to {}", path.display());
    }
    let report = queue_checker::check(&history);
    println!("{report}");
    assert!(report.is_valid(), "kill -9 broke the queue's guarantees:\n{report}");
    // The kill landed mid-stream: sends were acknowledged before it, and every producer process
    // resolved at least one send against the dead broker (none of which can be ok).
    assert!(report.stats.sends_ok_with_offset >= ACKED_BEFORE_KILL, "{:?}", report.stats);
    let unacked = report.stats.sends_failed + report.stats.sends_info;
    assert!(unacked >= KILL_PRODUCERS as usize, "only {unacked} sends failed after the kill: {:?}", report.stats);

    // The checker has teeth on this very history: take one acknowledged record out of every read
    // and it must be reported missing.
    let last_acked = history.events().iter().rev().find_map(|event| match &event.op {
        Op::Send { value, offset: Some(_), .. } => Some(value.clone()),
        _ => None,
    });
    let last_acked = last_acked.expect("some send was acked");
    let planted = queue_checker::check(&without_reads_of(&history, &last_acked));
    assert!(
        planted.lost_or_unseen().iter().any(|missing| missing.value == last_acked),
        "a planted loss of {last_acked} went unnoticed:\n{planted}"
    );
}

/// What the kernel's page cache holds of one file (cachestat(2), Linux 6.5 and later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageCacheState {
    cached: u64,
    dirty: u64,
    writeback: u64,
}

/// cachestat(2) over the whole of `path`. `Err` with `ENOSYS` (an older kernel) or `EPERM` (a
/// seccomp filter) means the kernel will not say.
fn page_cache_state(path: &Path) -> std::io::Result<PageCacheState> {
    use std::os::fd::AsRawFd;

    /// `struct cachestat_range` of include/uapi/linux/mman.h.
    #[repr(C)]
    struct CachestatRange {
        off: u64,
        len: u64,
    }
    /// `struct cachestat` of include/uapi/linux/mman.h. The kernel fills every field; only the
    /// first three are read.
    #[repr(C)]
    #[derive(Default)]
    #[allow(dead_code)]
    struct Cachestat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // New system calls share one number on every architecture with the generic table (x86_64 and
    // aarch64 included); this libc version does not name it yet.
    const SYS_CACHESTAT: libc::c_long = 451;
    let file = std::fs::File::open(path)?;
    let range = CachestatRange { off: 0, len: 0 }; // `len` 0: up to the end of the file.
    let mut stat = Cachestat::default();
    // SAFETY: cachestat only reads `range` and writes one `struct cachestat` into `stat`; both are
    // live, aligned `#[repr(C)]` values with the kernel's layout, and `file` keeps the fd open for
    // the whole call.
    let result = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0u32,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(PageCacheState { cached: stat.nr_cache, dirty: stat.nr_dirty, writeback: stat.nr_writeback })
}

/// Every segment data file (`*.log`) under `dir`, which should be a broker's `<data dir>/data`
/// (the metadata store's RocksDB keeps its own `.log` files in `<data dir>/meta`).
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(segment_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "log") {
            files.push(path);
        }
    }
    files
}

/// SIGTERM with `fsync = "never"`: nothing was synced while the broker ran, so only the shutdown
/// sync can make the records durable. A real process cannot lose its page cache, so the test
/// looks at two accounts of that sync instead of a power loss: the broker's (each partition log
/// logs, when it closes, the durable end its final sync reached) and the kernel's (cachestat: no
/// page of a segment file is left dirty or under writeback). Then a restart reads everything back.
#[tokio::test]
async fn sigterm_syncs_what_fsync_never_left_unsynced_and_keeps_the_data() {
    const RECORDS: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let log_path = dir.path().join("broker.log");
    let command = BrokerCommand::new(KEEL, free_addr(), &data_dir)
        .args(["--fsync", "never"])
        .global_arg("--log-format")
        .global_arg("json")
        .env("RUST_LOG", "info")
        .stderr(Stderr::AppendTo(log_path.clone()));
    let mut broker = BrokerProcess::start(command, WAIT_MAX).await.unwrap();
    let created = cli(&broker, &["topic", "create", "t"]).await;
    assert!(created.status.success(), "{}", stderr(&created));
    let lines: Vec<String> = (0..RECORDS).map(|index| format!("record-{index}")).collect();
    let produced = cli_with_stdin(&broker, &["produce", "t"], &(lines.join("\n") + "\n")).await;
    assert!(produced.status.success(), "{}", stderr(&produced));
    let partitions_dir = data_dir.join("data");
    for file in segment_files(&partitions_dir) {
        // Informational: how much the shutdown has to sync (the kernel may write some back itself).
        println!("before SIGTERM: {} {:?}", file.display(), page_cache_state(&file));
    }

    let stopped = broker.stop(Signal::Terminate, WAIT_MAX).await.unwrap();
    assert!(!stopped.forced && stopped.status.success(), "SIGTERM exit: {stopped:?}");

    // The broker's account: the partition log closed with everything it wrote durable.
    let log = std::fs::read_to_string(&log_path).unwrap();
    let closed: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "log closed")
        .collect();
    assert_eq!(closed.len(), 1, "one partition, one `log closed` line: {log}");
    assert_eq!(closed[0]["fields"]["log_end"], RECORDS, "{log}");
    assert_eq!(closed[0]["fields"]["durable_end"], RECORDS, "the shutdown did not sync everything: {log}");

    // The kernel's account: nothing of the segment files is left unwritten.
    let files = segment_files(&partitions_dir);
    assert!(!files.is_empty(), "no segment file under {}", partitions_dir.display());
    for file in &files {
        match page_cache_state(file) {
            Ok(state) => {
                println!("after SIGTERM: {} {state:?}", file.display());
                assert_eq!((state.dirty, state.writeback), (0, 0), "{}: {state:?} after shutdown", file.display());
            }
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
                eprintln!(
                    "cachestat(2) unavailable ({error}): only the broker's account of the shutdown sync was checked"
                );
            }
            Err(error) => panic!("cachestat({}): {error}", file.display()),
        }
    }

    broker.restart().unwrap();
    broker.wait_ready(WAIT_MAX).await.unwrap();
    let consumed = cli(&broker, &["consume", "t", "--from-beginning"]).await;
    assert_eq!(stdout(&consumed), lines.join("\n") + "\n");
}

#[tokio::test]
async fn garbage_on_the_port_does_not_hurt_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &[]).await;
    assert!(cli(&broker, &["topic", "create", "t"]).await.status.success());

    // A well-framed but undecodable request gets a typed error and the connection stays usable.
    let mut stream = TcpStream::connect(broker.addr()).await.unwrap();
    write_frame(&mut stream, &[0xff; 32]).await.unwrap();
    let reply = read_frame(&mut stream).await.unwrap();
    match reply.body {
        Some(Body::ErrorResponse(response)) => {
            assert_eq!(response.error.unwrap().error_code(), ErrorCode::InvalidRequest)
        }
        other => panic!("expected an error response, got {other:?}"),
    }
    let request = Frame::new(9, Body::MetadataRequest(MetadataRequest { topics: vec!["t".into()] }));
    write_frame(&mut stream, &request.encode_to_bytes()).await.unwrap();
    let reply = read_frame(&mut stream).await.unwrap();
    assert_eq!(reply.correlation_id, 9);

    // An oversized length prefix gets MessageTooLarge and the connection is closed.
    let mut oversized = TcpStream::connect(broker.addr()).await.unwrap();
    oversized.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let reply = read_frame(&mut oversized).await.unwrap();
    match reply.body {
        Some(Body::ErrorResponse(response)) => {
            assert_eq!(response.error.unwrap().error_code(), ErrorCode::MessageTooLarge)
        }
        other => panic!("expected an error response, got {other:?}"),
    }
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), oversized.read_to_end(&mut rest)).await;
    assert_eq!(closed.unwrap().unwrap(), 0, "connection closed after a framing error");

    // Pure noise, then a hang-up mid-frame.
    let mut noise = TcpStream::connect(broker.addr()).await.unwrap();
    noise.write_all(&[0, 0, 0, 100, 1, 2, 3]).await.unwrap();
    drop(noise);

    // Other clients are served throughout.
    let produced = cli(&broker, &["produce", "t", "--value", "still-here"]).await;
    assert!(produced.status.success(), "{}", stderr(&produced));
    let consumed = cli(&broker, &["consume", "t", "--from-beginning"]).await;
    assert_eq!(stdout(&consumed), "still-here\n");
}

#[tokio::test]
async fn config_file_sets_the_broker_up_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let (file_addr, flag_addr) = (free_addr(), free_addr());
    let config = dir.path().join("keel.toml");
    let data_dir = dir.path().join("from-config");
    std::fs::write(
        &config,
        format!("listen = \"{file_addr}\"\ndata_dir = {:?}\nfsync = \"never\"\n", data_dir.display().to_string()),
    )
    .unwrap();

    let from_config =
        |addr: SocketAddr| BrokerCommand::bare(KEEL, addr).arg("--config").arg(&config).stderr(Stderr::Null);
    let mut from_file = BrokerProcess::start(from_config(file_addr), WAIT_MAX).await.unwrap();
    assert!(data_dir.exists(), "the data dir named in the config file is used");
    from_file.kill9().await.unwrap();

    let overridden = from_config(flag_addr).arg("--listen").arg(flag_addr.to_string());
    let mut overridden = BrokerProcess::start(overridden, WAIT_MAX).await.unwrap();
    overridden.kill9().await.unwrap();

    // A bad config file is a clear error and a non-zero exit.
    std::fs::write(&config, "lisen = 1\n").unwrap();
    let output = keel_with_env(&["broker", "--config", config.to_str().unwrap()], &[]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("invalid config file"), "{}", stderr(&output));
}

/// Runs a broker with its stderr in a file (not a terminal) until it is ready, stops it with SIGTERM
/// and returns what it logged.
async fn broker_log(global_args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("broker.log");
    let mut command = BrokerCommand::new(KEEL, free_addr(), dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stderr(Stderr::AppendTo(log_path.clone()));
    for arg in global_args {
        command = command.global_arg(arg);
    }
    for (key, value) in env {
        command = command.env(key, value);
    }
    let mut broker = BrokerProcess::start(command, WAIT_MAX).await.unwrap();
    let stopped = broker.stop(Signal::Terminate, WAIT_MAX).await.unwrap();
    assert!(!stopped.forced && stopped.status.success(), "{stopped:?}");
    std::fs::read_to_string(log_path).unwrap()
}

/// Issue 6: `keel broker 2>log` wrote ANSI colour escapes into the file.
#[tokio::test]
async fn logs_to_a_file_have_no_colour_escapes() {
    let log = broker_log(&[], &[]).await;
    assert!(log.contains("broker listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape sequences in a log file: {log:?}");
}

/// `--log-format json`: one JSON object per line, for log shippers.
#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let log = broker_log(&["--log-format", "json"], &[]).await;
    let lines: Vec<serde_json::Value> =
        log.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"))).collect();
    assert!(lines.len() >= 2, "{log}");
    assert!(lines.iter().all(|line| line["level"].is_string() && line["timestamp"].is_string()), "{log}");
    assert!(lines.iter().any(|line| line["fields"]["message"] == "broker listening"), "{log}");
    let bad = keel_with_env(&["--log-format", "xml", "topic", "list"], &[]).await;
    assert_eq!(bad.status.code(), Some(2));
}

/// Issue 6: `--broker` / `KEEL_BROKER` take a bootstrap list; the first broker that answers is used,
/// so a script keeps working while one listed broker is down. A malformed list is a usage error.
#[tokio::test]
async fn a_bootstrap_list_skips_a_dead_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &[]).await;
    let dead = free_addr().to_string();
    let list = format!("{dead}, {}", broker.addr());
    let created = keel_with_env(&["topic", "create", "listed"], &[("KEEL_BROKER", &list)]).await;
    assert!(created.status.success(), "{}", stderr(&created));
    let listed = keel_with_env(&["--broker", &list, "topic", "list"], &[]).await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(stdout(&listed).contains("listed"));

    // Only dead brokers: a definite failure naming an address, exit code 1.
    let only_dead = keel_with_env(&["--broker", &dead, "topic", "list"], &[]).await;
    assert_eq!(only_dead.status.code(), Some(1));
    assert!(stderr(&only_dead).contains(&dead));

    for bad in ["", " , ", "localhost", "127.0.0.1:notaport", "127.0.0.1:9400,:9401", "127.0.0.1:0"] {
        let output = keel_with_env(&["topic", "list"], &[("KEEL_BROKER", bad)]).await;
        assert_eq!(output.status.code(), Some(2), "{bad:?}: {}", stderr(&output));
        assert!(stderr(&output).contains("--broker"), "{bad:?}");
    }
}

/// Issue 6: with `linger` 0 every record went out as its own request. Records that arrive while the
/// producer's requests are in flight must share the next request (nothing waits on purpose: the
/// first record goes out alone at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linger_zero_batches_what_arrives_while_requests_are_in_flight() {
    const RECORDS: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &[]).await;
    let client = Client::new(broker.addr().to_string(), ClientConfig::default());
    client.create_topic("linger0", 1, 1).await.unwrap();
    let config = ProducerConfig { linger: Duration::ZERO, in_flight_max: 2, ..ProducerConfig::default() };
    let producer = Producer::new(client, config);
    let mut deliveries = Vec::new();
    for index in 0..RECORDS {
        deliveries.push(producer.send("linger0", Some(0), Record::value(format!("v{index}"))).await);
    }
    let mut offsets = Vec::new();
    for delivery in deliveries {
        offsets.push(delivered(delivery).await.unwrap().offset);
    }
    assert_eq!(offsets, (0..RECORDS as i64).map(KeelOffset).collect::<Vec<_>>(), "acked in send order");
    let stats = producer.stats();
    assert_eq!(stats.records, RECORDS);
    // One request per record before the fix; with it, a few dozen at most (each fsync round trip
    // lets the queue refill, and everything queued goes in the next request).
    assert!(stats.requests * 10 <= RECORDS, "{} requests for {RECORDS} records at linger 0", stats.requests);
}

/// The frame of issue 7: a `RaftMessage` whose raft-rs `MsgHeartbeat` from `from` claims term
/// 1,000,000 and commit 2^40. raft-rs's `commit_to` panics on a commit past the last index.
fn forged_heartbeat(correlation_id: u64, from: u64, to: u64) -> Bytes {
    use protobuf::Message as _;
    let mut heartbeat = raft::eraftpb::Message::default();
    heartbeat.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    heartbeat.from = from;
    heartbeat.to = to;
    heartbeat.term = 1_000_000;
    heartbeat.commit = 1 << 40;
    let message = Bytes::from(heartbeat.write_to_bytes().unwrap());
    Frame::new(correlation_id, Body::RaftMessage(RaftMessage { from, to, message })).encode_to_bytes()
}

fn error_code(frame: &Frame) -> ErrorCode {
    match &frame.body {
        Some(Body::ErrorResponse(response)) => response.error.as_ref().unwrap().error_code(),
        Some(Body::PeerHelloResponse(response)) => response.error.as_ref().map_or(ErrorCode::None, |e| e.error_code()),
        other => panic!("expected an error or hello response, got {other:?}"),
    }
}

/// Issue 7: one forged frame of about 60 bytes over an ordinary client connection used to panic
/// the broker's Raft task, after which every topic create and list failed ("the metadata node is
/// shutting down") while `cluster status` still showed the node as leader.
#[tokio::test]
async fn a_forged_raft_frame_from_a_client_is_refused_and_metadata_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &[]).await;
    let created = cli(&broker, &["topic", "create", "before"]).await;
    assert!(created.status.success(), "{}", stderr(&created));

    let mut stream = TcpStream::connect(broker.addr()).await.unwrap();
    let forged = forged_heartbeat(77, 2, 1);
    assert!(forged.len() < 80, "the issue's frame is about 60 bytes; this one is {}", forged.len());
    write_frame(&mut stream, &forged).await.unwrap();

    // The metadata group still works after the frame was read.
    let created = cli(&broker, &["topic", "create", "after"]).await;
    assert!(created.status.success(), "topic create after the forged frame: {}", stderr(&created));
    let listed = cli(&broker, &["topic", "list"]).await;
    assert!(listed.status.success(), "topic list after the forged frame: {}", stderr(&listed));
    assert!(stdout(&listed).contains("before") && stdout(&listed).contains("after"), "{}", stdout(&listed));

    // The forged message got a typed error tied to its correlation id, and the connection goes on.
    let reply = read_frame(&mut stream).await.expect("a typed error for the forged raft message");
    assert_eq!(reply.correlation_id, 77);
    assert_eq!(error_code(&reply), ErrorCode::PeerNotIdentified);
    let request = Frame::new(78, Body::MetadataRequest(MetadataRequest { topics: vec![] }));
    write_frame(&mut stream, &request.encode_to_bytes()).await.unwrap();
    assert_eq!(read_frame(&mut stream).await.unwrap().correlation_id, 78);

    // The node is alive and says so: leader of its one-voter group.
    let status = cli(&broker, &["--json", "cluster", "status"]).await;
    assert!(status.status.success(), "{}", stderr(&status));
    let status: serde_json::Value = serde_json::from_str(stdout(&status).trim()).unwrap();
    assert_eq!(status["nodes"][0]["role"], "leader", "{status}");
    assert_eq!(status["nodes"][0]["term"], 1, "the forged term must not reach Raft: {status}");
}

/// Sends a `PeerHello` and returns the error code of its answer (`None` when accepted).
async fn hello(stream: &mut TcpStream, correlation_id: u64, node_id: u64, to: u64, peer_version: u32) -> ErrorCode {
    let frame = Frame::new(correlation_id, Body::PeerHello(PeerHello { node_id, to, peer_version }));
    write_frame(stream, &frame.encode_to_bytes()).await.unwrap();
    let reply = read_frame(stream).await.unwrap();
    assert_eq!(reply.correlation_id, correlation_id);
    error_code(&reply)
}

/// A peer handshake must name another voter of the metadata group, addressed to this node, in this
/// peer protocol version; a refused handshake leaves the connection a client connection, where Raft
/// traffic stays refused.
#[tokio::test]
async fn peer_handshakes_naming_a_non_voter_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &[]).await;
    let mut stream = TcpStream::connect(broker.addr()).await.unwrap();
    // This broker's only voter is node 1 (itself): node 2 is not a voter, and node 1 is not a peer.
    assert_eq!(hello(&mut stream, 1, 2, 1, PEER_PROTOCOL_VERSION).await, ErrorCode::UnknownPeer);
    assert_eq!(hello(&mut stream, 2, 1, 1, PEER_PROTOCOL_VERSION).await, ErrorCode::UnknownPeer);
    assert_eq!(hello(&mut stream, 3, 2, 1, PEER_PROTOCOL_VERSION + 1).await, ErrorCode::UnsupportedVersion);

    write_frame(&mut stream, &forged_heartbeat(4, 2, 1)).await.unwrap();
    let reply = read_frame(&mut stream).await.unwrap();
    assert_eq!((reply.correlation_id, error_code(&reply)), (4, ErrorCode::PeerNotIdentified));

    let created = cli(&broker, &["topic", "create", "still-works"]).await;
    assert!(created.status.success(), "{}", stderr(&created));
}

/// `topics_max` (a config key that was validated but never used): the broker refuses to create a
/// topic past it with a clear error, and an out-of-range value is refused at start.
#[tokio::test]
async fn topics_max_limits_topic_creation() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    std::fs::write(&config, "topics_max = 2\n").unwrap();
    let config_arg = config.to_str().unwrap();
    let broker = start(&dir.path().join("data"), &["--config", config_arg]).await;
    for name in ["first", "second"] {
        let created = cli(&broker, &["topic", "create", name]).await;
        assert!(created.status.success(), "{}", stderr(&created));
    }
    let refused = cli(&broker, &["topic", "create", "third"]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("topics_max is 2"), "{}", stderr(&refused));
    let listed = cli(&broker, &["topic", "list"]).await;
    assert!(!stdout(&listed).contains("third"), "{}", stdout(&listed));
    // Deleting one makes room again.
    assert!(cli(&broker, &["topic", "delete", "first"]).await.status.success());
    assert!(cli(&broker, &["topic", "create", "third"]).await.status.success());

    std::fs::write(&config, "topics_max = 10000000\n").unwrap();
    let output = keel_with_env(&["broker", "--config", config_arg], &[]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("topics_max is at most"), "{}", stderr(&output));
}

/// Topic settings from the CLI (issue 8): `--min-insync-replicas` and `--unclean-leader-election`
/// are stored and described; a min ISR of 0 or above the replication factor, and an unknown topic,
/// are clear errors (exit code 1), and the broker keeps serving. `cluster status` lists no unhealthy
/// partition on a healthy broker.
#[tokio::test]
async fn topic_settings_and_bad_settings_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &[]).await;

    let created = cli(&broker, &["topic", "create", "plain", "--partitions", "2"]).await;
    assert!(created.status.success(), "{}", stderr(&created));
    let created = cli(
        &broker,
        &["topic", "create", "risky", "--replication", "1", "--min-insync-replicas", "1", "--unclean-leader-election"],
    )
    .await;
    assert!(created.status.success(), "{}", stderr(&created));

    let json = |output: &Output| -> serde_json::Value { serde_json::from_str(stdout(output).trim()).unwrap() };
    let plain = json(&cli(&broker, &["--json", "topic", "describe", "plain"]).await);
    assert_eq!(plain["min_insync_replicas"], 1, "min(2, replication 1): {plain}");
    assert_eq!(plain["unclean_leader_election"], false, "{plain}");
    for partition in plain["partitions"].as_array().unwrap() {
        assert_eq!(partition["leader"], 1, "{plain}");
        assert_eq!(partition["isr"], serde_json::json!([1]), "{plain}");
        assert_eq!(partition["replicas"], serde_json::json!([1]), "{plain}");
        assert_eq!((partition["leader_epoch"].as_i64(), partition["partition_epoch"].as_i64()), (Some(0), Some(0)));
        assert_eq!(partition["unclean_elections"], 0, "{plain}");
    }
    let risky = json(&cli(&broker, &["--json", "topic", "describe", "risky"]).await);
    assert_eq!((&risky["min_insync_replicas"], &risky["unclean_leader_election"]), (&1.into(), &true.into()));
    let human = stdout(&cli(&broker, &["topic", "describe", "risky"]).await);
    assert!(human.contains("min insync replicas 1, unclean leader election on"), "{human}");
    assert!(human.contains("leader epoch 0\tpartition epoch 0\treplicas [1]\tisr [1]"), "{human}");

    for (min_isr, replication) in [("0", "1"), ("2", "1")] {
        let refused =
            cli(&broker, &["topic", "create", "bad", "--replication", replication, "--min-insync-replicas", min_isr])
                .await;
        assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
        let expected =
            format!("min insync replicas must be between 1 and the replication factor {replication}, got {min_isr}");
        assert!(stderr(&refused).contains(&expected), "{}", stderr(&refused));
    }
    let not_a_number = cli(&broker, &["topic", "create", "bad", "--min-insync-replicas", "-1"]).await;
    assert_eq!(not_a_number.status.code(), Some(2), "{}", stderr(&not_a_number));
    let unknown = cli(&broker, &["topic", "describe", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(1), "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains("unknown topic \"nope\""), "{}", stderr(&unknown));
    let listed = stdout(&cli(&broker, &["topic", "list"]).await);
    assert!(!listed.contains("bad"), "{listed}");

    // Still serving; nothing is offline or under-replicated.
    let status = json(&cli(&broker, &["--json", "cluster", "status"]).await);
    assert_eq!(status["offline_partitions"], serde_json::json!([]), "{status}");
    assert_eq!(status["under_replicated_partitions"], serde_json::json!([]), "{status}");
    let human = stdout(&cli(&broker, &["cluster", "status"]).await);
    assert!(human.contains("partitions: 0 offline, 0 under-replicated"), "{human}");
}

/// Batch compression (ADR 0018) as a user runs it: `keel produce --compression` with every codec,
/// `keel consume` reading each back, the leader's log smaller for every codec than uncompressed;
/// and over the wire, a compressed batch whose CRC is right but whose inside lies is refused with
/// `CorruptBatch`, an unknown codec with `UnsupportedCompression`, and the connection keeps working.
#[tokio::test]
async fn compressed_batches_round_trip_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &[]).await;
    let input: String = (0..3_000).map(|i| format!("{{\"user\":\"user-{}\",\"event\":\"click\"}}\n", i % 37)).collect();
    let mut sizes = BTreeMap::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("c-{codec}");
        assert!(cli(&broker, &["topic", "create", &topic]).await.status.success());
        let produced = cli_with_stdin(&broker, &["produce", &topic, "--compression", codec], &input).await;
        assert!(produced.status.success(), "{codec}: {}", stderr(&produced));
        let consumed = cli(&broker, &["consume", &topic, "--from-beginning"]).await;
        assert_eq!(stdout(&consumed), input, "{codec}");
        let described = cli(&broker, &["--json", "topic", "describe", &topic]).await;
        let described: serde_json::Value = serde_json::from_str(stdout(&described).trim()).unwrap();
        sizes.insert(codec, described["partitions"][0]["log_size_bytes"].as_u64().unwrap());
    }
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        assert!(sizes[codec] * 2 < sizes["none"], "{codec} did not shrink the log: {sizes:?}");
    }
    let refused = cli(&broker, &["produce", "c-none", "--compression", "brotli", "--value", "x"]).await;
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));

    let mut stream = TcpStream::connect(broker.addr()).await.unwrap();
    let lying = with_section(&keel::compression::Compression::Zstd.compress(b"not records"), 4);
    let unknown_codec = with_section(&encode_batch(&[Record::value("v")], 0, ProducerFields::NONE)[61..], 6);
    let good = encode_batch(&[Record::value("after")], 0, ProducerFields::NONE);
    for (id, batch, expected) in [
        (1, lying, ErrorCode::CorruptBatch),
        (2, unknown_codec, ErrorCode::UnsupportedCompression),
        (3, good, ErrorCode::None),
    ] {
        let request = ProduceRequest { topic: "c-none".into(), partition: 0, acks: 1, batch, timeout_ms: 10_000 };
        write_frame(&mut stream, &Frame::new(id, Body::ProduceRequest(request)).encode_to_bytes()).await.unwrap();
        let Some(Body::ProduceResponse(response)) = read_frame(&mut stream).await.unwrap().body else {
            panic!("expected a produce response")
        };
        assert_eq!(response.error.map_or(ErrorCode::None, |error| error.error_code()), expected, "request {id}");
    }
    let consumed = cli(&broker, &["consume", "c-none", "--from-beginning"]).await;
    assert!(stdout(&consumed).ends_with("\nafter\n"), "{}", stdout(&consumed));
}

/// A one-record batch's header (record count 1) over `section`, with codec `codec_id` and a CRC
/// that matches: only what is inside the section can be wrong.
fn with_section(section: &[u8], codec_id: u16) -> Bytes {
    let mut bytes = encode_batch(&[Record::value("v")], 0, ProducerFields::NONE)[..61].to_vec();
    bytes.extend_from_slice(section);
    let batch_length = (bytes.len() - 12) as i32;
    bytes[8..12].copy_from_slice(&batch_length.to_be_bytes());
    bytes[21..23].copy_from_slice(&codec_id.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(bytes)
}

/// Retention (ADR 0019) as a user runs it: a topic with small segments and a size limit loses its
/// oldest segments while records are produced, the log start moves (and stays after a kill -9 and a
/// restart), `keel consume` below it applies `--reset` with a message, and the settings are shown,
/// altered, and refused when out of range.
#[tokio::test]
async fn retention_deletes_old_segments_and_consumers_reset_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    std::fs::write(&config, "retention_check_interval_ms = 100\n").unwrap();
    let mut broker = start(dir.path(), &["--config", config.to_str().unwrap()]).await;
    let created = cli(&broker, &["topic", "create", "r", "--segment-bytes", "1024", "--retention-bytes", "4096"]).await;
    assert!(created.status.success(), "{}", stderr(&created));
    let json = |output: &Output| -> serde_json::Value { serde_json::from_str(stdout(output).trim()).unwrap() };
    let described = json(&cli(&broker, &["--json", "topic", "describe", "r"]).await);
    assert_eq!(
        (described["retention_ms"].as_i64(), described["retention_bytes"].as_i64()),
        (Some(604_800_000), Some(4096))
    );
    assert_eq!(described["segment_bytes"], 1024, "{described}");
    for round in 0..20 {
        let lines: String = (0..50).map(|i| format!("r{round}-{i}\n")).collect();
        assert!(cli_with_stdin(&broker, &["produce", "r", "--partition", "0"], &lines).await.status.success());
    }
    let log_start = |described: &serde_json::Value| described["partitions"][0]["log_start_offset"].as_i64().unwrap();
    let size = |described: &serde_json::Value| described["partitions"][0]["log_size_bytes"].as_u64().unwrap();
    // A pass may stop early at a segment a sync still holds; the next one goes on. Settled: the log
    // is within one segment of the limit (segments here are at most about 1 KiB), and its start has
    // not moved for five retention intervals (so the consumes below all see the same log start).
    let deadline = Instant::now() + WAIT_MAX;
    let mut last_start = (-1, Instant::now());
    let described = loop {
        let described = json(&cli(&broker, &["--json", "topic", "describe", "r"]).await);
        if log_start(&described) != last_start.0 {
            last_start = (log_start(&described), Instant::now());
        }
        let steady = last_start.1.elapsed() >= Duration::from_millis(500);
        if (log_start(&described) > 0 && size(&described) < 4096 + 2048 && steady) || Instant::now() >= deadline {
            break described;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let start = log_start(&described);
    assert!(start > 0 && start < 1000, "retention moved the log start: {described}");
    assert!(size(&described) >= 4096 && size(&described) < 4096 + 2048, "{described}");

    // Below the log start: reset to the earliest with a message, to the latest, or fail.
    let earliest = cli(&broker, &["consume", "r", "--offset", "0", "--count", "1"]).await;
    assert!(earliest.status.success(), "{}", stderr(&earliest));
    assert!(
        stderr(&earliest).contains(&format!("going on from the earliest offset {start} (--reset earliest)")),
        "{}",
        stderr(&earliest)
    );
    let all = cli(&broker, &["consume", "r", "--from-beginning"]).await;
    assert_eq!(stdout(&earliest).lines().next(), stdout(&all).lines().next());
    assert_eq!(stdout(&all).lines().count() as i64, 1000 - start);
    assert!(stdout(&all).ends_with("r19-49\n"));
    let none = cli(&broker, &["consume", "r", "--offset", "0", "--reset", "none"]).await;
    assert_eq!(none.status.code(), Some(1), "{}", stderr(&none));
    assert!(stderr(&none).contains("out of range") && stderr(&none).contains("--reset none"), "{}", stderr(&none));
    let latest = cli(&broker, &["consume", "r", "--offset", "0", "--reset", "latest"]).await;
    assert!(latest.status.success() && stdout(&latest).is_empty(), "{}", stderr(&latest));

    // The log start survives a kill -9 and a restart.
    broker.kill9().await.unwrap();
    broker.restart().unwrap();
    broker.wait_ready(WAIT_MAX).await.unwrap();
    let restarted = json(&cli(&broker, &["--json", "topic", "describe", "r"]).await);
    assert!(log_start(&restarted) >= start, "{restarted}");

    // Settings: altered, refused out of range, an empty alter is a usage error, an unknown cleanup
    // policy is a usage error; a compacted topic takes keyed records only.
    let altered = cli(&broker, &["topic", "alter", "r", "--retention-bytes", "-1", "--retention-ms", "-1"]).await;
    assert!(altered.status.success(), "{}", stderr(&altered));
    let human = stdout(&cli(&broker, &["topic", "describe", "r"]).await);
    assert!(
        human.contains(
            "retention forever, retention bytes no limit, segment bytes 1024, cleanup policy delete, delete \
             retention 1 day"
        ),
        "{human}"
    );
    let refused = cli(&broker, &["topic", "alter", "r", "--segment-bytes", "10"]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("segment bytes must be between 1024"), "{}", stderr(&refused));
    let unknown = cli(&broker, &["topic", "alter", "nope", "--retention-ms", "5"]).await;
    assert_eq!(unknown.status.code(), Some(1), "{}", stderr(&unknown));
    assert_eq!(cli(&broker, &["topic", "alter", "r"]).await.status.code(), Some(2));
    let unknown_policy = cli(&broker, &["topic", "create", "c", "--cleanup-policy", "shred"]).await;
    assert_eq!(unknown_policy.status.code(), Some(2), "{}", stderr(&unknown_policy));
    assert!(stderr(&unknown_policy).contains("expected delete or compact"), "{}", stderr(&unknown_policy));
    let compact = cli(&broker, &["topic", "create", "c", "--cleanup-policy", "compact"]).await;
    assert!(compact.status.success(), "{}", stderr(&compact));
    let tombstones = cli(&broker, &["topic", "alter", "c", "--delete-retention-ms", "60000"]).await;
    assert!(tombstones.status.success(), "{}", stderr(&tombstones));
    let described = json(&cli(&broker, &["--json", "topic", "describe", "c"]).await);
    assert_eq!(described["cleanup_policy"], "compact", "{described}");
    assert_eq!(described["delete_retention_ms"], 60000, "{described}");
    let keyless = cli(&broker, &["produce", "c", "--value", "v"]).await;
    assert_eq!(keyless.status.code(), Some(1), "{}", stderr(&keyless));
    assert!(stderr(&keyless).contains("every record needs a key"), "{}", stderr(&keyless));
    let keyed = cli(&broker, &["produce", "c", "--key", "k", "--value", "v"]).await;
    assert!(keyed.status.success(), "{}", stderr(&keyed));
}

/// Compaction (ADR 0022) as a user runs it: a compacted topic with small segments, many values per
/// key and a tombstone; once compaction has run, a consumer from the beginning gets the latest value
/// of every key, nothing of the deleted key, far fewer records than were produced, at their
/// original offsets; the same after a kill -9 and a restart.
#[tokio::test]
async fn compaction_keeps_the_latest_value_per_key_and_drops_deleted_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    std::fs::write(&config, "retention_check_interval_ms = 100\n").unwrap();
    let mut broker = start(dir.path(), &["--config", config.to_str().unwrap()]).await;
    let args = ["topic", "create", "c", "--cleanup-policy", "compact", "--segment-bytes", "1024"];
    let created = cli(&broker, &[&args[..], &["--delete-retention-ms", "0"]].concat()).await;
    assert!(created.status.success(), "{}", stderr(&created));
    let described: serde_json::Value =
        serde_json::from_str(stdout(&cli(&broker, &["--json", "topic", "describe", "c"]).await).trim()).unwrap();
    assert_eq!((described["cleanup_policy"].as_str(), described["retention_ms"].as_i64()), (Some("compact"), Some(-1)));
    /// Ten values of `key` from one `keel produce` (one batch): `k{key}-{round}-{0..10}`.
    async fn produce_ten(broker: &BrokerProcess, key: usize, round: usize) {
        let lines: String = (0..10).map(|i| format!("k{key}-{round}-{i}\n")).collect();
        let key = format!("k{key}");
        let out = cli_with_stdin(broker, &["produce", "c", "--partition", "0", "--key", &key], &lines).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for round in 0..4 {
        for key in 0..10 {
            produce_ten(&broker, key, round).await;
        }
    }
    let tombstone = cli(&broker, &["produce", "c", "--partition", "0", "--key", "k0", "--tombstone"]).await;
    assert!(tombstone.status.success(), "{}", stderr(&tombstone));
    // More records after the tombstone roll it into a sealed segment, where compaction can reach it.
    for key in 1..10 {
        produce_ten(&broker, key, 4).await;
    }
    let produced = 4 * 10 * 10 + 1 + 9 * 10;
    let latest: BTreeMap<String, String> = (1..10).map(|key| (format!("k{key}"), format!("k{key}-4-9"))).collect();

    async fn consumed(broker: &BrokerProcess) -> Vec<serde_json::Value> {
        let out = cli(broker, &["--json", "consume", "c", "--from-beginning"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }
    let deadline = Instant::now() + WAIT_MAX;
    let records = loop {
        let records = consumed(&broker).await;
        let compacted = records.len() < produced / 2 && !records.iter().any(|record| record["key"] == "k0");
        if compacted || Instant::now() >= deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(records.len() < produced / 2, "compaction removed most records: {} of {produced} left", records.len());
    assert!(!records.iter().any(|record| record["key"] == "k0"), "the deleted key is gone with its tombstone");
    let mut last_seen = BTreeMap::new();
    let mut previous = -1;
    for record in &records {
        let offset = record["offset"].as_i64().unwrap();
        assert!(offset > previous, "offsets increase: {offset} after {previous}");
        previous = offset;
        last_seen.insert(record["key"].as_str().unwrap().to_owned(), record["value"].as_str().unwrap().to_owned());
    }
    assert_eq!(last_seen, latest, "the latest value of every key survives");
    assert_eq!(previous, produced as i64 - 1, "the last record keeps its offset");

    broker.kill9().await.unwrap();
    broker.restart().unwrap();
    broker.wait_ready(WAIT_MAX).await.unwrap();
    assert_eq!(consumed(&broker).await, records, "the compacted log survives a kill -9 and a restart");
}
