//! Real Kafka clients, unmodified, against `keel broker --kafka-listen` (ADR 0026): Debian's `kcat`
//! (librdkafka 2.0.2), PyPI's confluent-kafka (a current librdkafka) and Debian's confluent-kafka 1.7.0
//! (librdkafka 2.0.2), PyPI's kafka-python 3 (its own protocol code), and an idempotent producer that
//! keeps sending while the leader of a replicated partition is killed with kill -9 and restarted.
//!
//! What runs where:
//! - kcat is driven from here: metadata (`-L -J`), produce (`-P`), consume (`-C -e`) and consume as a
//!   group (`-G`), cross-checked against the native CLI (`keel consume`, `keel group describe`).
//! - The Python clients run the scripts of `tests/kafka_clients/`, each of which checks its own run
//!   and prints one `checked: ...` line per check (echoed here); this file asserts their exit status,
//!   that the expected library versions ran, and, through the native CLI, what they left behind
//!   (committed offsets).
//! - PyPI's clients come from the venv that `.ci/kafka-clients-venv` makes (and leaves alone when it
//!   is complete), so `cargo test` alone sets everything up; Debian's come from `bash .ci/deps`.
//!
//! Every broker, script and kcat runs on free loopback ports with its own data dir; every wait is a
//! condition polled until a bound or a child awaited with a timeout, never a fixed sleep; every child
//! is killed when its handle drops, so a failing test leaves nothing running.

#![cfg(not(madsim))]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use keel::process::{free_loopback_addr, BrokerCommand, BrokerProcess, ClusterSpec};
use serde_json::Value;
use support::cli::{keel, ok, start_broker_with, stderr, stdout, KEEL};
use support::wait::{wait_for, WAIT_MAX};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The bound each Python script puts on its own run (its `--timeout-s`); it fails itself past it.
const SCRIPT_TIMEOUT_S: u64 = 150;
/// How long this file waits for a script: its own bound, plus room for its watchdog to report.
const SCRIPT_WAIT_MAX: Duration = Duration::from_secs(SCRIPT_TIMEOUT_S + 30);
/// How long one kcat run may take.
const KCAT_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long `.ci/kafka-clients-venv` may take (a first run downloads two wheels from PyPI).
const VENV_WAIT_MAX: Duration = Duration::from_secs(600);
/// Debian's interpreter, whose confluent_kafka is python3-confluent-kafka 1.7.0 (`.ci/deps`).
const DEBIAN_PYTHON: &str = "/usr/bin/python3";
/// Debian's kcat (`.ci/deps`).
const KCAT: &str = "/usr/bin/kcat";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn script(name: &str) -> PathBuf {
    repo_path("tests/kafka_clients").join(name)
}

/// Panics, saying how to get it, when a Debian tool the tests run is not installed.
fn require_debian(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} not found: the Kafka client tests need Debian's {package}; run `bash .ci/deps` (as root or with sudo)"
    );
}

/// Runs `.ci/kafka-clients-venv` (idempotent: nothing to do when the venv has the pinned versions)
/// and returns the venv's interpreter, from the last line of its stdout.
async fn venv_python() -> PathBuf {
    let mut command = Command::new("bash");
    command.arg(repo_path(".ci/kafka-clients-venv")).stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(VENV_WAIT_MAX, command.output())
        .await
        .unwrap_or_else(|_| panic!(".ci/kafka-clients-venv still runs after {VENV_WAIT_MAX:?}"))
        .expect("run bash .ci/kafka-clients-venv");
    assert!(
        output.status.success(),
        ".ci/kafka-clients-venv failed ({}): it needs Debian's python3-venv (`bash .ci/deps`) and PyPI \
         (pypi.org) reachable for its first run.\nstdout:\n{}\nstderr:\n{}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    let printed = stdout(&output);
    let python = PathBuf::from(printed.lines().last().unwrap_or("").trim());
    assert!(python.is_file(), ".ci/kafka-clients-venv printed {printed:?}, not an interpreter");
    python
}

/// Waits until `addr` accepts TCP connections (the Kafka listener is up).
async fn wait_for_listener(addr: SocketAddr) {
    wait_for(&format!("the Kafka listener on {addr}"), || async move {
        tokio::net::TcpStream::connect(addr).await.map(drop).map_err(|error| error.to_string())
    })
    .await;
}

/// One broker with a Kafka listener, and its data dir (removed on drop, after the broker is killed).
struct KafkaBroker {
    process: BrokerProcess,
    kafka: SocketAddr,
    _dir: tempfile::TempDir,
}

impl KafkaBroker {
    async fn start() -> KafkaBroker {
        let dir = tempfile::tempdir().unwrap();
        let kafka = free_loopback_addr().unwrap();
        let process = start_broker_with(dir.path(), WAIT_MAX, &["--kafka-listen", &kafka.to_string()]).await;
        wait_for_listener(kafka).await;
        KafkaBroker { process, kafka, _dir: dir }
    }

    /// The native address, for `keel` client commands.
    fn native(&self) -> String {
        self.process.addr().to_string()
    }
}

/// Runs `program args...` to its end, at most `wait` (killed past it), with Python's environment
/// kept from leaking in: no user site-packages, no PYTHONPATH, no bytecode written into the tree.
async fn run_client(program: &Path, args: &[String], stdin_text: &str, wait: Duration) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", program.display()));
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let input = stdin_text.as_bytes().to_vec();
    // Write and read at once, so a child that prints before it has read all its input cannot
    // deadlock against us.
    let feed = async move {
        let _ = pipe.write_all(&input).await;
        drop(pipe);
    };
    let run = async { tokio::join!(feed, child.wait_with_output()).1 };
    tokio::time::timeout(wait, run)
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} still runs after {wait:?} (killed)", program.display()))
        .unwrap_or_else(|error| panic!("wait for {}: {error}", program.display()))
}

/// Echoes a script's stdout, asserts it exited 0, and returns its `client:` line and `checked:` lines.
fn script_result(name: &str, output: &Output) -> (String, Vec<String>) {
    for line in stdout(output).lines() {
        println!("[{name}] {line}");
    }
    assert!(
        output.status.success(),
        "{name} failed ({}).\nstdout:\n{}\nstderr:\n{}",
        output.status,
        stdout(output),
        stderr(output)
    );
    let text = stdout(output);
    let client = text.lines().find(|line| line.starts_with("client: ")).unwrap_or("").to_owned();
    let checked: Vec<String> = text.lines().filter(|line| line.starts_with("checked: ")).map(str::to_owned).collect();
    (client, checked)
}

/// Runs `tests/kafka_clients/<name>` with `python` and `args` (plus its `--timeout-s`).
async fn run_script(python: &Path, name: &str, args: &[&str]) -> (String, Vec<String>) {
    let mut all = vec![script(name).display().to_string(), "--timeout-s".to_owned(), SCRIPT_TIMEOUT_S.to_string()];
    all.extend(args.iter().map(|arg| arg.to_string()));
    let output = run_client(python, &all, "", SCRIPT_WAIT_MAX).await;
    script_result(name, &output)
}

/// `kcat args...` with `stdin_text`; must exit 0; its stdout.
async fn kcat(args: &[&str], stdin_text: &str) -> String {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let output = run_client(Path::new(KCAT), &args, stdin_text, KCAT_WAIT_MAX).await;
    assert!(output.status.success(), "kcat {args:?} failed ({}): {}", output.status, stderr(&output));
    stdout(&output)
}

/// `group describe --json`, or `None` while the group is unknown.
async fn describe_group(broker: &str, group: &str) -> Option<Value> {
    let output = keel(broker, &["--json", "group", "describe", group], "").await;
    if !output.status.success() {
        assert!(stderr(&output).contains("unknown group"), "describe {group}: {}", stderr(&output));
        return None;
    }
    Some(serde_json::from_str(&stdout(&output)).expect("describe prints JSON"))
}

/// Waits until `group` has no members, lag 0 on every partition it committed, and a committed offset
/// above 0 on `nonempty_n` partitions; returns those, as (partition, committed offset). (A partition
/// a member never read from may have no commit, or one at 0: clients differ, both are right.)
async fn wait_for_group_caught_up(broker: &str, group: &str, nonempty_n: usize) -> Vec<(u64, u64)> {
    wait_for(&format!("group {group} to be empty with everything committed"), || async {
        let description = describe_group(broker, group).await.ok_or("unknown group")?;
        let rows = description["partitions"].as_array().cloned().unwrap_or_default();
        let lags_zero = rows.iter().all(|row| row["lag"] == 0);
        let committed: Vec<(u64, u64)> = rows
            .iter()
            .filter_map(|row| Some((row["partition"].as_u64()?, row["committed"].as_u64()?)))
            .filter(|(_, offset)| *offset > 0)
            .collect();
        if description["state"] == "empty" && lags_zero && committed.len() == nonempty_n {
            Ok(committed)
        } else {
            Err(description.to_string())
        }
    })
    .await
}

fn numbered(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn kcat_lists_produces_reads_back_and_consumes_as_a_group() {
    require_debian(KCAT, "kcat");
    let broker = KafkaBroker::start().await;
    let native = broker.native();
    let kafka = broker.kafka.to_string();
    ok(&native, &["topic", "create", "lines", "--partitions", "3"]).await;

    // Metadata: the topic the native CLI made, its partitions led by the broker at the Kafka address.
    let metadata: Value = serde_json::from_str(&kcat(&["-b", &kafka, "-L", "-J", "-t", "lines"], "").await)
        .expect("kcat -L -J prints JSON");
    let brokers = metadata["brokers"].as_array().expect("brokers");
    assert_eq!(brokers.len(), 1, "{metadata}");
    assert_eq!(brokers[0]["name"], kafka, "the broker is listed at its Kafka address: {metadata}");
    let broker_id = brokers[0]["id"].clone();
    let topics = metadata["topics"].as_array().expect("topics");
    assert_eq!(topics.len(), 1, "{metadata}");
    assert_eq!(topics[0]["topic"], "lines", "{metadata}");
    assert!(topics[0].get("error").is_none(), "{metadata}");
    let partitions = topics[0]["partitions"].as_array().expect("partitions");
    let ids: Vec<_> = partitions.iter().map(|p| p["partition"].as_u64().unwrap()).collect();
    assert_eq!(ids, [0, 1, 2], "{metadata}");
    assert!(partitions.iter().all(|p| p["leader"] == broker_id && p.get("error").is_none()), "{metadata}");
    println!("checked: kcat -L lists topic lines (made by keel topic create) with 3 partitions led by broker {broker_id} at {kafka}");

    // Produce with kcat, read back with kcat and with the native CLI.
    let first = numbered("line", 100);
    kcat(&["-b", &kafka, "-P", "-t", "lines", "-p", "0"], &(first.join("\n") + "\n")).await;
    let read =
        kcat(&["-b", &kafka, "-C", "-t", "lines", "-p", "0", "-o", "beginning", "-e", "-q", "-f", "%o %s\n"], "").await;
    let expected: Vec<String> = first.iter().enumerate().map(|(offset, line)| format!("{offset} {line}")).collect();
    assert_eq!(read.lines().collect::<Vec<_>>(), expected, "kcat -C reads back what kcat -P wrote, at offsets 0..");
    let native_read = ok(&native, &["consume", "lines", "--partition", "0", "--from-beginning"]).await;
    assert_eq!(native_read.lines().collect::<Vec<_>>(), first, "keel consume reads what kcat -P wrote");
    println!(
        "checked: 100 lines produced by kcat -P to partition 0 read back exactly by kcat -C -e and by keel consume"
    );

    // Produce with the native CLI, read with kcat.
    let second = numbered("native", 50);
    let output = keel(&native, &["produce", "lines", "--partition", "1"], &(second.join("\n") + "\n")).await;
    assert!(output.status.success(), "keel produce: {}", stderr(&output));
    let read = kcat(&["-b", &kafka, "-C", "-t", "lines", "-p", "1", "-o", "beginning", "-e", "-q"], "").await;
    assert_eq!(read.lines().collect::<Vec<_>>(), second, "kcat -C reads what keel produce wrote");
    println!("checked: 50 lines produced by keel produce to partition 1 read back exactly by kcat -C -e");

    // Consume as a group: everything once (kcat -G has no end-of-partition exit, so -c bounds it).
    let group_read = |count: usize| {
        let kafka = kafka.clone();
        async move {
            let count = count.to_string();
            let mut args = vec!["-b", &kafka, "-G", "kcat-group", "-c", &count];
            args.extend(["-X", "auto.offset.reset=earliest", "-q", "-f", "%p %o %s\n", "lines"]);
            let read = kcat(&args, "").await;
            read.lines().map(str::to_owned).collect::<Vec<String>>()
        }
    };
    let read = group_read(first.len() + second.len()).await;
    let got: BTreeSet<String> = read.iter().cloned().collect();
    let mut expected: BTreeSet<String> =
        first.iter().enumerate().map(|(offset, line)| format!("0 {offset} {line}")).collect();
    expected.extend(second.iter().enumerate().map(|(offset, line)| format!("1 {offset} {line}")));
    assert_eq!(read.len(), got.len(), "kcat -G printed a record twice: {read:?}");
    assert_eq!(got, expected, "kcat -G reads every record of the topic once");
    let committed = wait_for_group_caught_up(&native, "kcat-group", 2).await;
    assert_eq!(committed, [(0, 100), (1, 50)], "what kcat -G committed");
    println!("checked: kcat -G kcat-group read all 150 records once; keel group describe shows it committed {committed:?}, lag 0");

    // The group resumes where it committed.
    let third = numbered("later", 10);
    kcat(&["-b", &kafka, "-P", "-t", "lines", "-p", "2"], &(third.join("\n") + "\n")).await;
    let read = group_read(third.len()).await;
    let expected: Vec<String> = third.iter().enumerate().map(|(offset, line)| format!("2 {offset} {line}")).collect();
    assert_eq!(read, expected, "a second kcat -G of the group reads exactly the records produced since");
    let committed = wait_for_group_caught_up(&native, "kcat-group", 3).await;
    assert_eq!(committed, [(0, 100), (1, 50), (2, 10)]);
    println!("checked: a second kcat -G kcat-group resumed at the committed offsets: exactly the 10 new records");
}

/// Runs `confluent_roundtrip.py` with `python`, checks which library ran and what the group left.
async fn confluent_roundtrip(python: &Path, expected_client: &str, topic: &str, group: &str) {
    let broker = KafkaBroker::start().await;
    let kafka = broker.kafka.to_string();
    let args = ["--bootstrap", &kafka, "--topic", topic, "--group", group, "--partitions", "3"];
    let (client, checked) = run_script(python, "confluent_roundtrip.py", &args).await;
    assert!(client.starts_with(expected_client), "expected {expected_client:?} to run, got {client:?}");
    assert!(checked.len() >= 8, "every step checked something: {checked:#?}");
    for step in
        ["create_topics", "idempotent", "from the beginning", "synchronous commit", "resumed", "offsets_for_times"]
    {
        assert!(checked.iter().any(|line| line.contains(step)), "no checked line about {step:?}: {checked:#?}");
    }
    // Through the native protocol: the group exists, empty, with everything committed.
    let committed = wait_for_group_caught_up(&broker.native(), group, 3).await;
    println!("checked: keel group describe {group} shows it empty, committed {committed:?}, lag 0");
}

#[tokio::test]
async fn confluent_kafka_from_pypi_round_trips_commits_resumes_and_seeks_by_time() {
    let python = venv_python().await;
    confluent_roundtrip(&python, "client: confluent-kafka 2.16.1 ", "pypi-roundtrip", "pypi-group").await;
}

#[tokio::test]
async fn debian_confluent_kafka_1_7_round_trips_commits_resumes_and_seeks_by_time() {
    require_debian(DEBIAN_PYTHON, "python3");
    let import = run_client(
        Path::new(DEBIAN_PYTHON),
        &["-c".to_owned(), "import confluent_kafka".to_owned()],
        "",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        import.status.success(),
        "{DEBIAN_PYTHON} cannot import confluent_kafka: run `bash .ci/deps` (python3-confluent-kafka): {}",
        stderr(&import)
    );
    let expected = "client: confluent-kafka 1.7.0 librdkafka 2.0.2";
    confluent_roundtrip(Path::new(DEBIAN_PYTHON), expected, "debian-roundtrip", "debian-group").await;
}

#[tokio::test]
async fn kafka_python_round_trips_and_two_consumers_rebalance() {
    let python = venv_python().await;
    let broker = KafkaBroker::start().await;
    let kafka = broker.kafka.to_string();
    let args =
        ["--bootstrap", &kafka, "--topic", "kp-roundtrip", "--group-topic", "kp-group-topic", "--group", "kp-group"];
    let (client, checked) = run_script(&python, "kafka_python_roundtrip.py", &args).await;
    assert_eq!(client, "client: kafka-python 3.0.12");
    for step in
        ["create_topics", "idempotent", "from the beginning", "alone", "disjoint", "exactly once", "delete_topics"]
    {
        assert!(checked.iter().any(|line| line.contains(step)), "no checked line about {step:?}: {checked:#?}");
    }
    // Through the native protocol: the deleted topic is gone, the group topic is still there.
    let listed: Value = serde_json::from_str(&ok(&broker.native(), &["--json", "topic", "list"]).await).unwrap();
    let topics: BTreeSet<(String, u64)> = listed["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .map(|topic| (topic["name"].as_str().unwrap().to_owned(), topic["partitions"].as_u64().unwrap()))
        .filter(|(name, _)| !name.starts_with("__")) // internal topics (the groups' __consumer_offsets)
        .collect();
    assert_eq!(topics, BTreeSet::from([("kp-group-topic".to_owned(), 4)]), "{listed}");
    println!("checked: keel topic list lists kp-group-topic with 4 partitions, and no longer kp-roundtrip");
}

/// One node of the failover cluster: its process and its Kafka listener.
struct Node {
    node_id: u64,
    process: BrokerProcess,
    kafka: SocketAddr,
}

/// Three voters, each with a Kafka listener, data under `dir`, once every one answers.
/// (`LocalCluster` takes no per-node arguments, so the nodes are started here the way it starts them.)
async fn start_kafka_cluster(dir: &Path) -> Vec<Node> {
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_loopback_addr().unwrap()).collect();
    let spec = ClusterSpec::new(KEEL, addrs.clone(), dir);
    let peers = spec.peers();
    let mut nodes = Vec::new();
    for (index, addr) in addrs.iter().enumerate() {
        let node_id = index as u64 + 1;
        let kafka = free_loopback_addr().unwrap();
        let command = BrokerCommand::new(KEEL, *addr, spec.node_dir(node_id))
            .member(node_id, &peers)
            .arg("--kafka-listen")
            .arg(kafka.to_string())
            .env("RUST_LOG", "error");
        let process = BrokerProcess::spawn(command).expect("start a broker");
        nodes.push(Node { node_id, process, kafka });
    }
    for node in &mut nodes {
        node.process.wait_ready(WAIT_MAX).await.unwrap_or_else(|error| panic!("node {}: {error}", node.node_id));
        wait_for_listener(node.kafka).await;
    }
    nodes
}

/// The failover script's stdout, line by line as it comes (each echoed), and its stdin.
struct Driven {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Driven {
    /// Waits, at most `wait`, for a line starting with `prefix`; returns the rest of it.
    async fn line_starting(&mut self, prefix: &str, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {prefix:?} line from the script within {wait:?}; saw {:#?}", self.seen))
                .unwrap_or_else(|| panic!("the script ended before printing {prefix:?}; saw {:#?}", self.seen));
            self.seen.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }

    async fn send(&mut self, line: &str) {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write to the script");
        self.stdin.flush().await.expect("flush the script's stdin");
    }
}

#[tokio::test]
async fn an_idempotent_producer_loses_and_duplicates_nothing_when_the_leader_is_killed() {
    let python = venv_python().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_kafka_cluster(dir.path()).await;
    let native: Vec<String> = nodes.iter().map(|node| node.process.addr().to_string()).collect();
    let native = native.join(",");
    let bootstrap: Vec<String> = nodes.iter().map(|node| node.kafka.to_string()).collect();
    let bootstrap = bootstrap.join(",");
    // A replicated topic can be created once all three brokers registered.
    wait_for("a topic with three replicas", || async {
        let args =
            ["topic", "create", "failover", "--partitions", "3", "--replication", "3", "--min-insync-replicas", "2"];
        let output = keel(&native, &args, "").await;
        if output.status.success() {
            Ok(())
        } else {
            Err(stderr(&output))
        }
    })
    .await;

    let script_args = [
        script("confluent_failover.py").display().to_string(),
        "--bootstrap".to_owned(),
        bootstrap.clone(),
        "--topic".to_owned(),
        "failover".to_owned(),
        "--records".to_owned(),
        "3000".to_owned(),
        "--rate".to_owned(),
        "1000".to_owned(),
        "--timeout-s".to_owned(),
        SCRIPT_TIMEOUT_S.to_string(),
    ];
    let mut child = Command::new(&python)
        .args(&script_args)
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start confluent_failover.py");
    let stdin = child.stdin.take().expect("piped");
    let mut reader = BufReader::new(child.stdout.take().expect("piped")).lines();
    let (sender, lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            println!("[confluent_failover.py] {line}");
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut driven = Driven { child, stdin, lines, seen: Vec::new() };

    // Kill -9 the leader of partition 0 while the producer sends.
    let leader = driven.line_starting("leader=", WAIT_MAX).await;
    let leader: u64 = leader.parse().unwrap_or_else(|_| panic!("leader={leader} is not a node id"));
    let node = nodes.iter_mut().find(|node| node.node_id == leader);
    let node = node.unwrap_or_else(|| panic!("the Kafka metadata names leader {leader}, not a node of 1..=3"));
    let status = node.process.kill9().await.expect("kill -9 the leader");
    println!("killed node {leader} with kill -9 ({status})");
    driven.send("killed").await;

    // Once partition 0 took writes on another leader, restart the killed node on its data.
    let new_leader = driven.line_starting("new-leader=", WAIT_MAX).await;
    assert_ne!(new_leader, leader.to_string(), "partition 0 moved off the killed node");
    let node = nodes.iter_mut().find(|node| node.node_id == leader).unwrap();
    node.process.restart().expect("restart the killed node");
    node.process.wait_ready(WAIT_MAX).await.expect("the restarted node answers");
    wait_for_listener(node.kafka).await;
    println!("restarted node {leader}; partition 0 is led by node {new_leader}");
    driven.send("restarted").await;

    let status = tokio::time::timeout(SCRIPT_WAIT_MAX, driven.child.wait())
        .await
        .unwrap_or_else(|_| panic!("confluent_failover.py still runs after {SCRIPT_WAIT_MAX:?}"))
        .expect("wait for confluent_failover.py");
    while let Some(line) = driven.lines.recv().await {
        driven.seen.push(line);
    }
    assert!(status.success(), "confluent_failover.py failed ({status}); its output: {:#?}", driven.seen);
    let client = driven.seen.iter().find(|line| line.starts_with("client: "));
    assert!(client.is_some_and(|line| line.starts_with("client: confluent-kafka 2.16.1 ")), "{:#?}", driven.seen);
    let checked: Vec<&String> = driven.seen.iter().filter(|line| line.starts_with("checked: ")).collect();
    for step in ["acknowledged (0 failed)", "none twice", "exactly once", "send order"] {
        assert!(checked.iter().any(|line| line.contains(step)), "no checked line about {step:?}: {checked:#?}");
    }

    // Through the native protocol: the restarted node catches up and is back in every ISR.
    wait_for("the restarted node back in the ISR of every partition", || async {
        let output = keel(&native, &["--json", "topic", "describe", "failover"], "").await;
        if !output.status.success() {
            return Err(stderr(&output));
        }
        let description: Value = serde_json::from_str(&stdout(&output)).map_err(|error| error.to_string())?;
        let partitions = description["partitions"].as_array().cloned().unwrap_or_default();
        let all_in = partitions.len() == 3
            && partitions.iter().all(|p| p["isr"].as_array().is_some_and(|isr| isr.contains(&Value::from(leader))));
        if all_in {
            Ok(())
        } else {
            Err(description.to_string())
        }
    })
    .await;
    println!(
        "checked: node {leader}, killed with kill -9 and restarted, is back in the ISR of every partition of failover"
    );
}
