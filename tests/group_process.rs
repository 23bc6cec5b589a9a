//! Consumer groups through the real `keel` binary, as a user runs them: `keel consume --group`
//! (alone, with `--count`, and as two `--follow` members that split a topic's partitions and hand
//! them over on SIGTERM) and `keel group list | describe | reset-offsets`, including their refusals.
//!
//! Each test starts its own broker (or, for the coordinator's failover, a three-broker cluster) on
//! free loopback ports with its own data dir, through `keel::process`. Every wait is a condition polled until a generous bound ([`WAIT_MAX`]), never a
//! fixed sleep.

#![cfg(not(madsim))]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use keel::process::{free_loopback_addr, signal_child, ClusterSpec, LocalCluster, Signal};
use serde_json::Value;
use support::cli::{keel, ok, start_broker, stderr, stdout, KEEL};
use support::wait::{wait_for, WAIT_MAX};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const PARTITIONS: u32 = 3;
/// Records per partition the tests produce.
const PER_PARTITION: u32 = 10;

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// Creates `topic` with [`PARTITIONS`] partitions and produces [`PER_PARTITION`] records to each,
/// valued `{prefix}-{partition}-{i}`. Returns the values, sorted.
async fn topic_with_records(broker: &str, topic: &str, prefix: &str) -> Vec<String> {
    ok(broker, &["topic", "create", topic, "--partitions", &PARTITIONS.to_string()]).await;
    produce(broker, topic, prefix).await
}

async fn produce(broker: &str, topic: &str, prefix: &str) -> Vec<String> {
    let mut values = Vec::new();
    for partition in 0..PARTITIONS {
        let lines: Vec<String> = (0..PER_PARTITION).map(|i| format!("{prefix}-{partition}-{i}")).collect();
        let input = lines.join("\n") + "\n";
        let output = keel(broker, &["produce", topic, "--partition", &partition.to_string()], &input).await;
        assert!(output.status.success(), "produce: {}", stderr(&output));
        values.extend(lines);
    }
    values.sort();
    values
}

/// `group describe --json`, or `None` while the group is unknown.
async fn describe(broker: &str, group: &str) -> Option<Value> {
    let output = keel(broker, &["--json", "group", "describe", group], "").await;
    if !output.status.success() {
        assert!(stderr(&output).contains("unknown group"), "describe {group}: {}", stderr(&output));
        return None;
    }
    Some(serde_json::from_str(&stdout(&output)).expect("describe prints JSON"))
}

/// Waits until `group` is in `state`; its description then.
async fn wait_for_state(broker: &str, group: &str, state: &str) -> Value {
    wait_for(&format!("group {group} to be {state}"), || async {
        let description = describe(broker, group).await.ok_or("unknown group")?;
        if description["state"] == state {
            Ok(description)
        } else {
            Err(description.to_string())
        }
    })
    .await
}

/// Each member's partitions of `topic` in a description.
fn assignments(description: &Value, topic: &str) -> Vec<BTreeSet<u64>> {
    let members = description["members"].as_array().expect("members");
    members
        .iter()
        .map(|member| {
            let assigned = member["assignment"].as_array().expect("assignment");
            let of_topic = assigned.iter().filter(|a| a["topic"] == topic);
            of_topic.flat_map(|a| a["partitions"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap())).collect()
        })
        .collect()
}

/// The partitions of `description` as `(partition, committed, log_end, lag)`.
fn partition_rows(description: &Value) -> Vec<(u64, Value, Value, Value)> {
    let partitions = description["partitions"].as_array().expect("partitions");
    partitions
        .iter()
        .map(|p| (p["partition"].as_u64().unwrap(), p["committed"].clone(), p["log_end"].clone(), p["lag"].clone()))
        .collect()
}

#[tokio::test]
async fn a_group_consumes_each_record_once_and_can_be_reset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), WAIT_MAX).await;
    let at = broker.addr().to_string();
    let values = topic_with_records(&at, "orders", "v").await;

    let first = ok(&at, &["consume", "orders", "--group", "g"]).await;
    assert_eq!(sorted_lines(&first), values, "the first member reads every record");
    let second = ok(&at, &["consume", "orders", "--group", "g"]).await;
    assert_eq!(second, "", "the group committed past everything");

    // The last member's leave starts a rebalance that writes an empty generation: wait for it.
    let description = wait_for_state(&at, "g", "empty").await;
    assert_eq!(description["group"], "g");
    assert_eq!(description["members"].as_array().unwrap().len(), 0, "{description}");
    let end = Value::from(PER_PARTITION);
    let expected: Vec<_> = (0..u64::from(PARTITIONS)).map(|p| (p, end.clone(), end.clone(), Value::from(0))).collect();
    assert_eq!(partition_rows(&description), expected, "lag 0 everywhere: {description}");

    let reset = ok(&at, &["group", "reset-offsets", "g", "--topic", "orders", "--to-earliest"]).await;
    assert_eq!(reset.lines().count(), PARTITIONS as usize, "one line per partition: {reset}");
    assert!(reset.contains("orders partition 1 committed offset set to 0"), "{reset}");
    let again = ok(&at, &["consume", "orders", "--group", "g"]).await;
    assert_eq!(sorted_lines(&again), values, "after the reset the group reads everything again");

    // Back to offset 4 of partition 2 only: six records to read.
    let reset = ok(
        &at,
        &["--json", "group", "reset-offsets", "g", "--topic", "orders", "--partition", "2", "--to-offset", "4"],
    )
    .await;
    let reset: Value = serde_json::from_str(&reset).unwrap();
    assert_eq!(reset["offsets"], serde_json::json!([{"topic": "orders", "partition": 2, "offset": 4}]));
    let tail = ok(&at, &["consume", "orders", "--group", "g"]).await;
    let expected: Vec<String> = (4..PER_PARTITION).map(|i| format!("v-2-{i}")).collect();
    assert_eq!(sorted_lines(&tail), expected);

    // By time: everything was produced after the epoch's first millisecond.
    ok(&at, &["group", "reset-offsets", "g", "--topic", "orders", "--to-datetime", "1970-01-01T00:00:00.001Z"]).await;
    let by_time = ok(&at, &["consume", "orders", "--group", "g"]).await;
    assert_eq!(sorted_lines(&by_time), values);

    let listed = ok(&at, &["--json", "group", "list"]).await;
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let names: Vec<_> = listed["groups"].as_array().unwrap().iter().map(|g| g["group"].clone()).collect();
    assert_eq!(names, vec![Value::from("g")], "{listed}");
    let listed = ok(&at, &["group", "list"]).await;
    assert!(listed.starts_with("g\tempty\t"), "{listed}");
}

#[tokio::test]
async fn count_commits_exactly_past_the_printed_records() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), WAIT_MAX).await;
    let at = broker.addr().to_string();
    let values = topic_with_records(&at, "events", "e").await;

    let mut seen = Vec::new();
    for _ in 0..4 {
        let some = ok(&at, &["consume", "events", "--group", "counted", "--count", "7"]).await;
        assert_eq!(some.lines().count(), 7, "{some}");
        seen.extend(some.lines().map(str::to_owned));
    }
    let rest = ok(&at, &["consume", "events", "--group", "counted"]).await;
    seen.extend(rest.lines().map(str::to_owned));
    seen.sort();
    assert_eq!(seen, values, "every record exactly once over the runs");
}

#[tokio::test]
async fn bad_group_input_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), WAIT_MAX).await;
    let at = broker.addr().to_string();
    topic_with_records(&at, "orders", "v").await;

    for (args, code, expected) in [
        (&["group", "describe", "nobody"][..], 1, "unknown group \"nobody\""),
        (&["group", "reset-offsets", "g", "--topic", "nope", "--to-earliest"][..], 1, "unknown topic \"nope\""),
        (
            &["group", "reset-offsets", "g", "--topic", "orders", "--partition", "7", "--to-latest"][..],
            1,
            "no partition 7",
        ),
        (&["group", "reset-offsets", "g", "--topic", "orders", "--to-offset", "-3"][..], 2, "never negative"),
        (&["group", "reset-offsets", "g", "--topic", "orders", "--to-datetime", "soon"][..], 2, "RFC 3339"),
        (&["group", "reset-offsets", "g", "--topic", "orders"][..], 2, "required"),
        (&["consume", "orders", "--group", "g", "--from-beginning"][..], 2, "cannot be used with"),
        (&["consume", "nope", "--group", "g"][..], 1, "unknown topic \"nope\""),
    ] {
        let output = keel(&at, args, "").await;
        assert_eq!(output.status.code(), Some(code), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{args:?}: {}", stderr(&output));
    }
}

/// A `keel consume --follow` child whose stdout lines are collected as they come.
struct Follower {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Follower {
    fn start(broker: &str, topic: &str, group: &str) -> Follower {
        let mut child = Command::new(KEEL)
            .args(["--broker", broker, "consume", topic, "--group", group, "--follow"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start keel consume --follow");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut reader = BufReader::new(child.stdout.take().expect("piped")).lines();
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Follower { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Sends `signal` and waits for the exit; the exit code.
    async fn stop(&mut self, signal: Signal) -> Option<i32> {
        signal_child(&self.child, signal).expect("signal the consumer");
        let status = tokio::time::timeout(WAIT_MAX, self.child.wait()).await.expect("the consumer exits");
        status.expect("wait for the consumer").code()
    }
}

/// Waits until `group` is stable with `members` members whose assignments of `topic` are disjoint
/// and cover every partition; returns them.
async fn wait_for_split(broker: &str, group: &str, topic: &str, members: usize) -> Vec<BTreeSet<u64>> {
    wait_for(&format!("{group} to split {topic} among {members} member(s)"), || async {
        let description = describe(broker, group).await.ok_or("unknown group")?;
        let assigned = assignments(&description, topic);
        let all: BTreeSet<u64> = assigned.iter().flatten().copied().collect();
        let total: usize = assigned.iter().map(BTreeSet::len).sum();
        let split = description["state"] == "stable"
            && assigned.len() == members
            && total == PARTITIONS as usize
            && all == (0..u64::from(PARTITIONS)).collect();
        if split {
            Ok(assigned)
        } else {
            Err(description.to_string())
        }
    })
    .await
}

#[tokio::test]
async fn two_followers_split_the_partitions_and_hand_them_over_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), WAIT_MAX).await;
    let at = broker.addr().to_string();
    let values = topic_with_records(&at, "clicks", "c").await;

    let mut first = Follower::start(&at, "clicks", "g2");
    let mut second = Follower::start(&at, "clicks", "g2");
    let split = wait_for_split(&at, "g2", "clicks", 2).await;
    assert!(split.iter().all(|partitions| !partitions.is_empty()), "each member has partitions: {split:?}");
    wait_for("the followers to print every record", || async {
        let mut seen: Vec<String> = first.lines().into_iter().chain(second.lines()).collect();
        seen.sort();
        seen.dedup();
        if seen == values {
            Ok(())
        } else {
            Err(format!("{} of {} records", seen.len(), values.len()))
        }
    })
    .await;

    let refused = keel(&at, &["group", "reset-offsets", "g2", "--topic", "clicks", "--to-earliest"], "").await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("stop its consumers first"), "{}", stderr(&refused));

    assert_eq!(first.stop(Signal::Terminate).await, Some(0), "SIGTERM: commit, leave, exit 0");
    let after = wait_for_split(&at, "g2", "clicks", 1).await;
    assert_eq!(after, vec![(0..u64::from(PARTITIONS)).collect::<BTreeSet<_>>()]);

    // The one left reads what comes next, on every partition.
    let more = produce(&at, "clicks", "d").await;
    wait_for("the remaining follower to print the new records", || async {
        let seen: BTreeSet<String> = second.lines().into_iter().collect();
        let missing = more.iter().filter(|value| !seen.contains(*value)).count();
        if missing == 0 {
            Ok(())
        } else {
            Err(format!("{missing} new records not printed"))
        }
    })
    .await;
    assert_eq!(second.stop(Signal::Interrupt).await, Some(0), "SIGINT: commit, leave, exit 0");

    let description = wait_for_state(&at, "g2", "empty").await;
    let lags: Vec<_> = partition_rows(&description).into_iter().map(|(_, _, _, lag)| lag).collect();
    assert_eq!(lags, vec![Value::from(0); PARTITIONS as usize], "everything printed was committed: {description}");
    let listed = ok(&at, &["--json", "group", "list"]).await;
    assert!(listed.contains("\"g2\""), "{listed}");
}

/// Three brokers with their data under `dir`, once every one answers.
async fn start_cluster(dir: &Path) -> LocalCluster {
    let addrs = (0..3).map(|_| free_loopback_addr().unwrap()).collect();
    let spec = ClusterSpec { env: vec![("RUST_LOG".into(), "error".into())], ..ClusterSpec::new(KEEL, addrs, dir) };
    let mut cluster = LocalCluster::spawn(&spec).expect("start the brokers");
    cluster.wait_ready(WAIT_MAX).await.expect("every broker answers");
    cluster
}

/// The bootstrap list of the nodes of `cluster` still running.
fn running(cluster: &LocalCluster, stopped: &[u64]) -> String {
    let addrs: Vec<String> = cluster
        .nodes()
        .iter()
        .filter(|node| !stopped.contains(&node.node_id))
        .map(|node| node.process.addr().to_string())
        .collect();
    addrs.join(",")
}

/// Waits until every partition of `group` has lag 0 with one stable member; its description then.
async fn wait_for_caught_up(broker: &str, group: &str) -> Value {
    wait_for(&format!("{group} to commit everything"), || async {
        let description = describe(broker, group).await.ok_or("unknown group")?;
        let rows = partition_rows(&description);
        let caught_up = description["state"] == "stable"
            && rows.len() == PARTITIONS as usize
            && rows.iter().all(|(_, _, _, lag)| *lag == 0);
        if caught_up {
            Ok(description)
        } else {
            Err(description.to_string())
        }
    })
    .await
}

#[tokio::test]
async fn a_group_follows_its_coordinator_to_another_broker() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path()).await;
    let all = running(&cluster, &[]);
    // A replicated topic can be created once all three brokers registered.
    wait_for("a topic with three replicas", || async {
        let args = ["topic", "create", "moves", "--partitions", "3", "--replication", "3"];
        let output = keel(&all, &args, "").await;
        if output.status.success() {
            Ok(())
        } else {
            Err(stderr(&output))
        }
    })
    .await;
    let values = produce(&all, "moves", "a").await;

    let mut follower = Follower::start(&all, "moves", "gm");
    wait_for("the follower to print every record", || async {
        let seen = sorted_lines(&follower.lines().join("\n"));
        if seen == values {
            Ok(())
        } else {
            Err(format!("{} of {} records", seen.len(), values.len()))
        }
    })
    .await;
    let before = wait_for_caught_up(&all, "gm").await;
    let coordinator = before["coordinator"].as_u64().expect("a coordinator");

    // A graceful stop moves the offsets partition's leadership, and with it the group, elsewhere.
    let stopped = cluster.node_mut(coordinator).process.stop(Signal::Terminate, WAIT_MAX).await.unwrap();
    assert!(!stopped.forced, "broker {coordinator} stopped within the bound");
    let rest = running(&cluster, &[coordinator]);
    let more = produce(&rest, "moves", "b").await;
    wait_for("the follower to print the records produced after the move", || async {
        let seen: BTreeSet<String> = follower.lines().into_iter().collect();
        let missing = more.iter().filter(|value| !seen.contains(*value)).count();
        if missing == 0 {
            Ok(())
        } else {
            Err(format!("{missing} of {} not printed", more.len()))
        }
    })
    .await;
    let after = wait_for_caught_up(&rest, "gm").await;
    assert_ne!(after["coordinator"], before["coordinator"], "{after}");
    let committed: Vec<_> = partition_rows(&after).into_iter().map(|(_, committed, _, _)| committed).collect();
    assert_eq!(committed, vec![Value::from(2 * PER_PARTITION); PARTITIONS as usize], "{after}");
    assert_eq!(follower.stop(Signal::Terminate).await, Some(0));
}
