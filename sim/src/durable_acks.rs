//! The durable-ack check: at the moment a producer receives an `acks=all` acknowledgement, the
//! record is in the synced bytes (what a power loss now would keep) of at least
//! `min_insync_replicas` brokers' disks. Checked on every ack of every `fsync=always` scenario, so a
//! leader that acknowledges with too small an ISR, or before its followers' fsyncs, is caught at the
//! ack, not only when a later fault happens to lose the record.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use keel::storage::sim::SimDisk;
use keel::storage::Disk;

/// The data directory of the latest incarnation of `topic` on `disk` (`data/<topic>@<index>`), if any.
pub fn topic_dir(disk: &SimDisk, topic: &str) -> Option<String> {
    let prefix = format!("{topic}@");
    let mut incarnations: Vec<String> =
        disk.list("data").ok()?.into_iter().filter(|name| name.starts_with(&prefix)).collect();
    incarnations.sort_by_key(|name| name[prefix.len()..].parse::<u64>().unwrap_or(0));
    incarnations.last().map(|dir| format!("data/{dir}"))
}

/// How many of `disks` hold `value` at `offset` of `topic`'s `partition` **durably** (in synced bytes,
/// what a power loss now would keep): the durable-ack check. An `acks=all` acknowledgement promises
/// the batch is fsynced on at least `min_insync_replicas` replicas when it is sent, so at the moment
/// a producer receives one, at least that many disks must answer yes.
///
/// A disk whose segment of the partition had bit rot or a misdirected write injected counts as a
/// holder (the fault may have hit the record after the promise was kept, or made the disk lie about
/// it; both stay on a minority of each partition's replicas).
pub fn durable_holders(disks: &[ReplicaDisk], topic: &str, partition: u32, offset: i64, value: &[u8]) -> usize {
    disks.iter().filter(|disk| holds_durably(disk, topic, partition, offset, value)).count()
}

/// A broker's disk, with the files bit rot was injected into.
pub struct ReplicaDisk {
    pub disk: SimDisk,
    pub rotted: Arc<Mutex<BTreeSet<String>>>,
}

fn holds_durably(replica: &ReplicaDisk, topic: &str, partition: u32, offset: i64, value: &[u8]) -> bool {
    let disk = &replica.disk;
    let Some(dir) = topic_dir(disk, topic) else { return false };
    let dir = format!("{dir}/{partition}");
    let Ok(names) = disk.list(&dir) else { return false };
    let segments: Vec<(i64, String)> = names
        .iter()
        .filter_map(|name| Some((name.strip_suffix(".log")?.parse::<i64>().ok()?, format!("{dir}/{name}"))))
        .collect();
    let rotted = crate::lock(&replica.rotted);
    let misdirected = disk.misdirected_paths();
    if segments.iter().any(|(_, path)| rotted.contains(path) || misdirected.contains(path)) {
        return true;
    }
    // Retention already deleted every segment at or below `offset` (the log starts past it): the
    // record was committed, so held, before that; it expired, it was not lost (ADR 0019).
    if !segments.is_empty() && segments.iter().all(|(base, _)| *base > offset) {
        return true;
    }
    // Only the segment with the greatest base at or below `offset` can hold it: reading just that
    // one keeps the check linear in the run instead of quadratic in the log.
    let holder = segments.iter().filter(|(base, _)| *base <= offset).max_by_key(|(base, _)| *base);
    holder.is_some_and(|(_, path)| segment_holds(&disk.durable_content(path).unwrap_or_default(), offset, value))
}

/// Whether the segment's bytes hold a CRC-valid batch with the record `value` at `offset` (or one
/// that covers `offset` after compaction removed its record there).
fn segment_holds(mut bytes: &[u8], offset: i64, value: &[u8]) -> bool {
    while let Ok(size) = keel::batch::peek_batch_size(bytes) {
        let Some(chunk) = bytes.get(..size) else { return false };
        if header_covers(chunk, offset) {
            if let Ok(batch) = keel::batch::Batch::parse(bytes::Bytes::copy_from_slice(chunk)) {
                if batch.base_offset().0 <= offset && offset <= batch.last_offset().0 {
                    let at_offset = batch.records().flatten().find(|record| record.offset.0 == offset);
                    // A durable batch that covers the offset with no record there: compaction removed
                    // it (ADR 0022), which it does only to records that were durable and superseded.
                    // Every other batch holds a record at each offset it covers.
                    return at_offset.is_none_or(|record| record.value.as_deref() == Some(value));
                }
            }
        }
        bytes = &bytes[size..];
    }
    false
}

/// Whether a batch's header claims `offset` (unchecked: the batch is parsed, CRC and all, only then).
fn header_covers(chunk: &[u8], offset: i64) -> bool {
    let field = |at: usize, len: usize| chunk.get(at..at + len);
    let (Some(base), Some(delta)) = (field(0, 8), field(23, 4)) else { return false };
    let base = i64::from_be_bytes(base.try_into().unwrap_or_default());
    let delta = i32::from_be_bytes(delta.try_into().unwrap_or_default());
    base <= offset && offset <= base.saturating_add(i64::from(delta))
}
