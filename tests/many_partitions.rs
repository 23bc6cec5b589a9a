//! Many partitions on one real broker with a small open-file budget (issue 15): more partitions
//! than the budget lets have their files open at once are produced to, the broker is killed and
//! restarted, and every record is read back (again after a graceful stop, whose clean-close records
//! each partition's reopen takes instead of scanning); the broker's descriptors on partition files settle
//! within the budget once the acknowledged work is done; a create past `partitions_max` is refused with a typed error.
//!
//! The broker is the real `keel` binary on a free loopback port with its own data dir. Every wait is
//! a condition with a generous bound, never a fixed sleep.

#![cfg(not(madsim))]

mod support;

use std::path::Path;
use std::time::Duration;

use keel::batch::Record;
use keel::client::{delivered, Client, ClientConfig, Producer, ProducerConfig};
use keel::process::Signal;
use keel::types::Offset;
use support::cli::{keel, ok, start_broker_with, stderr};

/// Liveness guard for every wait in this file.
const WAIT_MAX: Duration = Duration::from_secs(60);
const PARTITIONS: u32 = 300;
/// Partition files open at once: fewer than one partition's worth per 20 partitions (each has at
/// least five: a segment's `.log`, `.index`, `.timeindex`, its epoch cache and checkpoint).
const OPEN_FILES_MAX: usize = 16;

/// Descriptors the process `pid` holds on files under `dir` (the partition files: `meta/`, the
/// metadata store, is elsewhere).
fn descriptors_under(pid: u32, dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    entries
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Waits until the broker's descriptors on partition files are within the budget. They may be past
/// it by the handles whose closing sync is in flight when no clean handle could be closed (module
/// `storage::handles`); those syncs take milliseconds, and the partitions' checkpoint writes trail
/// the last acknowledgement. A budget that is not enforced (or a leak) never settles and fails here.
async fn wait_within_budget(pid: u32, dir: &Path, when: &str) {
    let started = tokio::time::Instant::now();
    loop {
        let open = descriptors_under(pid, dir);
        if open <= OPEN_FILES_MAX {
            return;
        }
        assert!(started.elapsed() < WAIT_MAX, "{when}: {open} partition files open, budget {OPEN_FILES_MAX}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn produce_one_to_each(addr: &str, round: &str) {
    let client = Client::new(addr.to_owned(), ClientConfig::default());
    let producer = Producer::new(client, ProducerConfig::default());
    let mut deliveries = Vec::new();
    for partition in 0..PARTITIONS {
        let record = Record::value(format!("{round}-{partition}"));
        deliveries.push((partition, producer.send("many", Some(partition), record).await));
    }
    for (partition, delivery) in deliveries {
        let acked = delivered(delivery).await.unwrap_or_else(|error| panic!("partition {partition}: {error}"));
        assert_eq!(acked.partition, partition);
    }
}

/// Every value in `partition`, in offset order.
async fn read_partition(client: &Client, partition: u32) -> Vec<String> {
    let fetched = client
        .fetch("many", partition, Offset(0), 1 << 20, Duration::ZERO)
        .await
        .unwrap_or_else(|error| panic!("partition {partition}: {error}"));
    fetched
        .records
        .iter()
        .map(|record| String::from_utf8_lossy(record.value.as_deref().unwrap_or(b"")).into_owned())
        .collect()
}

#[tokio::test]
async fn more_partitions_than_the_file_budget_are_produced_to_restarted_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    // Every log gets a clean-close record at a graceful stop, however small (ADR 0025).
    let toml = format!("open_files_max = {OPEN_FILES_MAX}\npartitions_max = 500\nclean_close_min_bytes = 0\n");
    std::fs::write(&config, toml).unwrap();
    let data = dir.path().join("data");
    let mut broker = start_broker_with(&data, WAIT_MAX, &["--config", config.to_str().unwrap()]).await;
    let addr = broker.addr().to_string();
    ok(&addr, &["topic", "create", "many", "--partitions", &PARTITIONS.to_string()]).await;

    produce_one_to_each(&addr, "first").await;
    let pid = broker.pid().expect("running");
    let partition_dir = data.join("data");
    wait_within_budget(pid, &partition_dir, "after the first round").await;

    // Admission: 300 more would put 600 partition replicas on this broker, past partitions_max.
    let refused = keel(&addr, &["topic", "create", "more", "--partitions", "300"], "").await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("would place 600 partition replicas"), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("partitions_max"), "{}", stderr(&refused));
    ok(&addr, &["topic", "create", "fits", "--partitions", "200"]).await;

    // Everything acknowledged survives a kill -9; the partitions reopen lazily at their first read.
    broker.kill9().await.unwrap();
    broker.restart().unwrap();
    broker.wait_ready(WAIT_MAX).await.unwrap();
    produce_one_to_each(&addr, "second").await;
    let client = Client::new(addr.clone(), ClientConfig::default());
    for partition in 0..PARTITIONS {
        let values = read_partition(&client, partition).await;
        assert_eq!(values, [format!("first-{partition}"), format!("second-{partition}")], "partition {partition}");
    }
    wait_within_budget(broker.pid().expect("running"), &partition_dir, "after the restart").await;

    // A graceful stop leaves every open partition a clean-close record (ADR 0025); after a restart
    // each partition's first use takes it (no scan) and removes it, and every record reads back.
    let stopped = broker.stop(Signal::Terminate, WAIT_MAX).await.unwrap();
    assert!(!stopped.forced && stopped.status.success(), "SIGTERM exit: {stopped:?}");
    assert_eq!(clean_close_records(&partition_dir, "many"), PARTITIONS as usize, "one per partition of many");
    broker.restart().unwrap();
    broker.wait_ready(WAIT_MAX).await.unwrap();
    let client = Client::new(addr.clone(), ClientConfig::default());
    for partition in 0..PARTITIONS {
        let values = read_partition(&client, partition).await;
        assert_eq!(values, [format!("first-{partition}"), format!("second-{partition}")], "partition {partition}");
    }
    assert_eq!(clean_close_records(&partition_dir, "many"), 0, "each open took its partition's record");
}

/// The clean-close records in the partition directories of `topic` under `dir`.
fn clean_close_records(dir: &Path, topic: &str) -> usize {
    let mut found = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|name| name == keel::log::clean_close::CLEAN_CLOSE_FILE)
                && path.parent().and_then(Path::parent).and_then(Path::file_name).is_some_and(|name| {
                    // `{topic}@{id}/{partition}/`
                    name.to_string_lossy().strip_prefix(topic).is_some_and(|rest| rest.starts_with('@'))
                })
            {
                found += 1;
            }
        }
    }
    found
}
