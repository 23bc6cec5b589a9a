//! The replica convergence check of the ISR scenarios: after the final read, every in-sync replica
//! holds the leader's batches, byte for byte, below the high watermark the final reader saw (with
//! retention, from the latest of their log starts: each replica deletes at its own pace).
//!
//! In: the cluster (its brokers' `SimDisk`s), the topic's partitions as the metadata described them
//! after the final read (leader and ISR), and the final high watermarks. Out: violations.
//!
//! Followers whose disk had bit rot injected are excused (the rot may not have been read yet). It
//! stops every broker first (a process kill: the page cache survives, as it would for a real
//! `kill -9`), then opens each replica's log on its disk and compares the bytes. This is the last
//! step of a run: nothing serves afterwards.

use std::collections::BTreeMap;
use std::time::Duration;

use keel::client::Client;
use keel::log::{LogConfig, PartitionLog};
use keel::storage::sim::SimDisk;
use keel::types::Offset;

use crate::cluster::Cluster;
use crate::durable_acks::topic_dir;
use crate::workload::client_config;

/// One partition as the metadata described it.
#[derive(Clone, Debug)]
pub struct Described {
    pub leader: Option<u64>,
    pub isr: Vec<u64>,
}

/// The topic's partitions (leader, ISR), asked through `bootstrap`, retried within `bound`.
pub async fn describe(bootstrap: String, topic: String, bound: Duration) -> Result<BTreeMap<u32, Described>, String> {
    let client = Client::new(bootstrap, client_config());
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let error = match client.metadata(std::slice::from_ref(&topic)).await {
            Ok(response) => match response.topics.into_iter().find(|info| info.name == topic) {
                Some(info) => {
                    let partitions = info.partitions.into_iter().map(|p| {
                        let described = Described { leader: (p.leader != 0).then_some(p.leader), isr: p.isr };
                        (p.partition, described)
                    });
                    return Ok(partitions.collect());
                }
                None => format!("topic {topic} not described"),
            },
            Err(error) => error.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("cannot describe {topic}: {error}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills every broker, then compares each ISR member's log with its leader's below the HW.
pub async fn check(
    cluster: &mut Cluster,
    topic: &str,
    described: &BTreeMap<u32, Described>,
    high_watermarks: &BTreeMap<u32, i64>,
) -> Vec<String> {
    for index in 0..cluster.broker_count() {
        if cluster.is_up(index) {
            cluster.kill(index);
        }
        // The check opens whole logs without the brokers' open-file budget, as a tool would.
        cluster.broker(index).disk.set_open_files_max(None);
    }
    let mut violations = Vec::new();
    for (partition, info) in described {
        let high_watermark = Offset(high_watermarks.get(partition).copied().unwrap_or(0));
        let Some(leader) = info.leader else {
            violations.push(format!("replicas: partition {partition} has no leader after the heal"));
            continue;
        };
        // Retention deletes on each replica at its own pace: compare above the latest log start.
        let mut from = Offset::ZERO;
        for member in info.isr.iter().chain(std::iter::once(&leader)) {
            let disk = &cluster.broker(*member as usize - 1).disk;
            from = from.max(log_start(disk, topic, *partition).await.unwrap_or(Offset::ZERO));
        }
        let from = from.min(high_watermark);
        let leader_bytes = match read_replica(
            &cluster.broker(leader as usize - 1).disk,
            topic,
            *partition,
            from,
            high_watermark,
        )
        .await
        {
            Ok(bytes) => bytes,
            Err(error) => {
                violations.push(format!("replicas: partition {partition} leader {leader}: {error}"));
                continue;
            }
        };
        for member in info.isr.iter().filter(|member| **member != leader) {
            let disk = &cluster.broker(*member as usize - 1).disk;
            if disk.stats().bit_flips > 0 || disk.stats().misdirected_writes > 0 {
                // Bit rot not yet read or recovered is still on this disk: a real broker finds it on
                // its next read or restart and fetches the batches again; it is not a divergence.
                continue;
            }
            match read_replica(disk, topic, *partition, from, high_watermark).await {
                Ok(bytes) if bytes == leader_bytes => {}
                Ok(bytes) => violations.push(format!(
                    "replicas: partition {partition}: in-sync replica {member} differs from leader {leader} below \
                     the high watermark {high_watermark} ({} bytes against {})",
                    bytes.len(),
                    leader_bytes.len()
                )),
                Err(error) => {
                    violations.push(format!("replicas: partition {partition} in-sync replica {member}: {error}"))
                }
            }
        }
    }
    violations
}

/// Where the replica's log starts (`None`: it cannot be opened; `read_replica` reports why).
async fn log_start(disk: &SimDisk, topic: &str, partition: u32) -> Option<Offset> {
    let dir = format!("{}/{partition}", topic_dir(disk, topic)?);
    let (log, _) = PartitionLog::open(disk.clone(), &dir, LogConfig::default()).await.ok()?;
    Some(log.log_start_offset())
}

/// The replica's whole batches from the one holding `from` (a batch boundary: some replica's log
/// start) to below `up_to`, as stored; an error if its log starts after `from` or ends before `up_to`.
async fn read_replica(
    disk: &SimDisk,
    topic: &str,
    partition: u32,
    from: Offset,
    up_to: Offset,
) -> Result<Vec<u8>, String> {
    let Some(dir) = topic_dir(disk, topic) else {
        return Err("no data directory for the topic".into());
    };
    let dir = format!("{dir}/{partition}");
    let (log, _) =
        PartitionLog::open(disk.clone(), &dir, LogConfig::default()).await.map_err(|error| error.to_string())?;
    if log.log_end_offset() < up_to {
        return Err(format!("its log ends at {} below the high watermark {up_to}", log.log_end_offset()));
    }
    if log.log_start_offset() > from {
        return Err(format!("its log starts at {}, after {from}", log.log_start_offset()));
    }
    let mut bytes = Vec::new();
    let mut offset = from;
    while offset < up_to {
        let chunk = log.read(offset, 1 << 20, up_to).map_err(|error| error.to_string())?;
        if chunk.is_empty() {
            break;
        }
        let mut rest = chunk.clone();
        while let Some(batch) = keel::batch::Batch::split_first(&mut rest).map_err(|error| error.to_string())? {
            offset = batch.next_offset();
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}
