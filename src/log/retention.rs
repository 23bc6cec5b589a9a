//! Retention (Kafka's `delete` cleanup policy: whole segments go from the start of the log) and a
//! follower's full reset ("truncate fully and start at"), on [`PartitionLog`].
//!
//! In: a new log start (the sealed segments wholly below it go), or an offset to start an empty log
//! at. Out: the new log start; [`SegmentSummary`]s (sizes, max timestamps) for the policy that picks
//! the new start. The policy (ages, sizes, never past the high watermark) is the caller's; this
//! module only makes the removal crash-safe.
//!
//! # Invariants
//! - Segments go oldest first. Per segment: its `.log` (which defines the segment for recovery),
//!   its `.index` and `.timeindex`, then `sync_dir`, before the next segment is touched. Recovery
//!   removes every segment after a gap, so a newer segment must never be gone while an older one
//!   survives: a crash leaves a suffix of the log, some oldest segments gone.
//! - Before anything goes, the producer snapshot of every segment that a crash half-way could leave
//!   first (each deleted one but the oldest, and the first that stays) is durable (written first if
//!   it is missing or fails its CRC): recovery starts its producer table from the first segment's
//!   snapshot, the table as of the deleted batches. A deleted segment's own snapshot is
//!   removed only once its `.log` removal is durable (with the next segment's, or the next sync), so
//!   no crash leaves a first segment without its snapshot.
//! - Never the active (last) segment, never a segment a sync in flight is syncing (on a disk that
//!   invalidates the handles of removed files, that sync would fail and fail the log).
//! - A reset removes the old segments but the active one as above, then creates the new empty
//!   segment (its empty snapshot durable first) and syncs the directory, and only then removes the
//!   old active segment. The directory never holds no segment (recovery would then start an empty
//!   log at offset 0): a crash recovers the old log's suffix (the new segment, behind a gap, is
//!   dropped; or, when it starts at the old end, kept empty after it) or the new empty log.
//! - A future dropped half-way fails the log: files and memory may disagree until a reopen.

use std::sync::{Arc, Mutex};

use super::{
    lock, read_producer_snapshot, remove_if_present, segment, write_producer_snapshot, LogError, PartitionLog, Segment,
    SyncShared,
};
use crate::leader_epochs::EpochEntry;
use crate::producer_state::ProducerStates;
use crate::storage::{Disk, DiskFile};
use crate::types::{Offset, TimestampMs};

/// One segment as a retention policy sees it ([`PartitionLog::segment_summaries`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    pub base_offset: Offset,
    /// The offset after its last batch (`== base_offset` when empty).
    pub next_offset: Offset,
    /// Bytes of its `.log` file (batches as stored); the index files are not counted.
    pub size_bytes: u64,
    /// The largest batch max timestamp in it; `i64::MIN` when empty.
    pub max_timestamp_ms: TimestampMs,
    /// The last segment, the one appended to: never deleted by retention.
    pub active: bool,
}

/// Fails the log when dropped armed: a retention future abandoned between two removals leaves the
/// files and the log's memory out of step, which only a reopen (recovery) sorts out.
pub(super) struct FailIfAbandoned {
    shared: Arc<Mutex<SyncShared>>,
    armed: bool,
}

impl FailIfAbandoned {
    pub(super) fn arm(shared: &Arc<Mutex<SyncShared>>) -> FailIfAbandoned {
        FailIfAbandoned { shared: shared.clone(), armed: true }
    }

    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for FailIfAbandoned {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.shared).failed = true;
        }
    }
}

impl<D: Disk> PartitionLog<D> {
    /// Every segment, in base-offset order, the last one active.
    pub fn segment_summaries(&self) -> Vec<SegmentSummary> {
        let active_base = *self.segments.keys().next_back().expect("a log has at least one segment");
        self.segments
            .values()
            .map(|segment| SegmentSummary {
                base_offset: segment.base_offset,
                next_offset: segment.next_offset,
                size_bytes: segment.log_bytes,
                max_timestamp_ms: segment.indexer.max_timestamp,
                active: segment.base_offset == active_base,
            })
            .collect()
    }

    /// Retention: deletes, oldest first, every segment whose `next_offset <= new_start`, never the
    /// active one, and resolves to the new log start (the base of the first segment left, so at most
    /// `new_start` when anything went). Each deletion is durable before the next begins (module doc
    /// of [`super::retention`]); when the future resolves, all of them are.
    ///
    /// Stops early, leaving the rest for a later call, at a segment that a sync begun earlier is
    /// still syncing. Reads below the new start fail with [`LogError::OffsetOutOfRange`]; the
    /// producer table is unchanged (it still holds the producers of the deleted batches, as the
    /// first remaining segment's snapshot does for recovery); the epoch runs start at the new start.
    /// The owner trims its epoch cache with `truncate_from_start` afterwards. On an I/O error, or if
    /// the future is dropped before it resolves, the log is failed and must be reopened; recovery
    /// then finds a suffix of the log that starts at one of the segment bases up to `new_start`.
    pub async fn delete_segments_before(&mut self, new_start: Offset) -> Result<Offset, LogError> {
        self.check_failed()?;
        let doomed = self.deletable_before(new_start);
        if doomed.is_empty() {
            return Ok(self.log_start_offset());
        }
        let abandoned = FailIfAbandoned::arm(&self.shared);
        let result = self.delete_oldest(&doomed).await;
        abandoned.disarm();
        self.fail_on_error(result)?;
        self.check_invariants();
        let log_start = self.log_start_offset();
        tracing::info!(dir = self.dir, log_start = log_start.0, n_segments = doomed.len(), "log: deleted old segments");
        Ok(log_start)
    }

    /// The bases of the oldest segments that end at or below `new_start`, up to the active one or
    /// the first one a sync in flight still holds.
    fn deletable_before(&self, new_start: Offset) -> Vec<Offset> {
        self.oldest_segments_while(|segment| segment.next_offset <= new_start)
    }

    /// The bases of the oldest segments, in order, while `wanted` holds: never the active one,
    /// and none from the first one a sync in flight still holds (retention and compaction leave
    /// it for a later pass).
    pub(super) fn oldest_segments_while(&self, wanted: impl Fn(&Segment<D::File>) -> bool) -> Vec<Offset> {
        let shared = lock(&self.shared);
        let in_flight = |ticket: u64| shared.in_flight.get(&ticket).is_some_and(|&(_, _, done)| !done);
        let active_base = *self.segments.keys().next_back().expect("a log has at least one segment");
        self.segments
            .values()
            .take_while(|segment| segment.base_offset != active_base && wanted(segment))
            .take_while(|segment| !segment.sync_ticket.is_some_and(in_flight))
            .map(|segment| segment.base_offset)
            .collect()
    }

    /// Removes the segments `doomed` (the oldest ones, in order, the active one never), each durably
    /// before the next, after making the first remaining segment's producer snapshot durable.
    async fn delete_oldest(&mut self, doomed: &[Offset]) -> Result<(), LogError> {
        let Some(last) = doomed.last() else { return Ok(()) };
        let first_kept = self.segments.get(last).expect("a doomed segment is in the log").next_offset;
        assert!(self.segments.contains_key(&first_kept), "segment {first_kept} is not in the log");
        // Each segment left first by a crash half-way needs its snapshot durable, not only the last.
        let mut next_firsts = doomed[1..].to_vec();
        next_firsts.push(first_kept);
        self.sync_producer_snapshots(&next_firsts).await?;
        let mut snapshot_due: Option<Offset> = None;
        for &base in doomed {
            assert_eq!(Some(&base), self.segments.keys().next(), "segments are deleted oldest first");
            self.disk.remove(&segment::log_name(&self.dir, base))?;
            remove_if_present(&self.disk, &segment::offset_index_name(&self.dir, base))?;
            remove_if_present(&self.disk, &segment::time_index_name(&self.dir, base))?;
            // The previous segment's `.log` removal is durable: its snapshot may go now.
            if let Some(previous) = snapshot_due.replace(base) {
                remove_if_present(&self.disk, &segment::producers_name(&self.dir, previous))?;
            }
            self.disk.sync_dir(&self.dir).await?;
            self.forget_segment(base);
        }
        if let Some(previous) = snapshot_due {
            remove_if_present(&self.disk, &segment::producers_name(&self.dir, previous))?;
            self.dir_dirty = true; // Durable with the next sync; an orphan snapshot is removed by recovery.
        }
        trim_epoch_runs(&mut self.epoch_runs, first_kept, self.log_end);
        Ok(())
    }

    /// Makes the producer snapshots of the segments at `bases` durable, each written first (from
    /// the segments before it) if it is missing or fails its CRC: once the segments before one are
    /// gone, recovery starts from it. (A snapshot written at a roll is synced by the next
    /// `begin_sync`, which may not have run yet.)
    async fn sync_producer_snapshots(&mut self, bases: &[Offset]) -> Result<(), LogError> {
        let mut syncs = Vec::with_capacity(bases.len());
        for &base in bases {
            let file = match read_producer_snapshot(&self.disk, &self.dir, base)? {
                Some((file, _)) => file,
                None => {
                    let producers = self.producers_before(base)?;
                    write_producer_snapshot(&self.disk, &self.dir, base, &producers)?
                }
            };
            syncs.push(file.sync());
        }
        for result in futures::future::join_all(syncs).await {
            result?;
        }
        Ok(())
    }

    /// A follower whose leader's log start moved past this log's end (Kafka's "truncate fully and
    /// start at"): removes every segment and starts an empty log at `offset`. Afterwards
    /// `log_start_offset() == log_end_offset() == durable_end_offset() == offset`, the producer
    /// table and the epoch runs are empty, and all of it is durable. The owner resets its epoch cache
    /// and producer table to match.
    ///
    /// Any `offset` will do, below the log's start or end too (a follower whose epochs its leader no
    /// longer knows starts over at the leader's log start, wherever that is): everything the log held
    /// is dropped. Call it with no sync in flight: on a disk that invalidates the handles of removed
    /// files, such a sync fails and fails the log (which a reopen then finds reset, or not yet). A
    /// crash recovers a suffix of the old log (when `offset` is inside it, possibly cut at `offset`
    /// and followed by the new empty segment) or the new empty log at `offset` (module doc of
    /// [`super::retention`]); when `offset` is the active segment's base, that segment is emptied in
    /// place (its `.log` cut and synced, then its snapshot emptied). On an I/O error, or if the future
    /// is dropped before it resolves, the log is failed.
    pub async fn reset_to(&mut self, offset: Offset) -> Result<(), LogError> {
        self.check_failed()?;
        let abandoned = FailIfAbandoned::arm(&self.shared);
        let result = self.reset_inner(offset).await;
        abandoned.disarm();
        self.fail_on_error(result)?;
        self.check_invariants();
        tracing::info!(dir = self.dir, offset = offset.0, "log: reset to an empty log");
        Ok(())
    }

    async fn reset_inner(&mut self, offset: Offset) -> Result<(), LogError> {
        let mut older: Vec<Offset> = self.segments.keys().copied().collect();
        let old_base = older.pop().expect("a log has at least one segment");
        self.delete_oldest(&older).await?;
        let empty = ProducerStates::new();
        if old_base == offset {
            // The active segment already starts there: empty it in place, durably (also when it is
            // empty already: a truncation into it may not be durable yet), then its snapshot.
            let segment = self.create_empty_segment(offset, true).await?;
            self.segments.insert(offset, segment);
            write_producer_snapshot(&self.disk, &self.dir, offset, &empty)?.sync().await?;
            self.disk.sync_dir(&self.dir).await?; // Removals of a truncation before, if any.
        } else {
            write_producer_snapshot(&self.disk, &self.dir, offset, &empty)?.sync().await?;
            let segment = self.create_empty_segment(offset, false).await?;
            self.disk.sync_dir(&self.dir).await?;
            // Both segments are on disk now; the old one goes, `.log` first.
            self.disk.remove(&segment::log_name(&self.dir, old_base))?;
            remove_if_present(&self.disk, &segment::offset_index_name(&self.dir, old_base))?;
            remove_if_present(&self.disk, &segment::time_index_name(&self.dir, old_base))?;
            self.disk.sync_dir(&self.dir).await?;
            self.forget_segment(old_base);
            self.segments.insert(offset, segment);
            remove_if_present(&self.disk, &segment::producers_name(&self.dir, old_base))?;
            self.dir_dirty = true;
        }
        self.log_end = offset;
        self.durable_end = offset;
        self.pending_seals.clear();
        self.unsynced_snapshots.clear();
        self.epoch_runs.clear();
        self.producers = empty;
        let mut shared = lock(&self.shared);
        // Syncs begun before the reset no longer move the durable end, as after a truncation.
        shared.generation += 1;
        shared.completed = offset;
        shared.synced_since_truncation = true;
        Ok(())
    }

    /// Opens (creating) the files of an empty segment at `base`; any bytes a file already held are
    /// cut and the cut synced (every file synced with `sync_always`: an earlier cut of a file that
    /// is empty now may not be durable). The caller syncs the directory.
    async fn create_empty_segment(&self, base: Offset, sync_always: bool) -> Result<Segment<D::File>, LogError> {
        let segment = Self::open_segment(&self.disk, &self.dir, base, &self.config)?;
        for file in [&segment.log, &segment.offset_index, &segment.time_index] {
            let cut = !file.is_empty()?;
            if cut {
                file.set_len(0)?;
            }
            if cut || sync_always {
                file.sync().await?;
            }
        }
        Ok(segment)
    }
}

/// Drops the epoch runs of the batches below `log_start` (retention), as recovery's scan from the
/// new first segment builds them: the run holding `log_start` now starts there, unless the log is
/// empty (no batch, no run).
fn trim_epoch_runs(runs: &mut Vec<EpochEntry>, log_start: Offset, log_end: Offset) {
    let covering = runs.partition_point(|run| run.start_offset <= log_start);
    if covering == 0 {
        return;
    }
    let epoch = runs[covering - 1].epoch;
    runs.drain(..covering);
    if log_start < log_end {
        runs.insert(0, EpochEntry { epoch, start_offset: log_start });
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures::executor::block_on;

    use super::*;
    use crate::batch::{encode_batch, Batch, ProducerFields, Record};
    use crate::log::LogConfig;
    use crate::producer_state::BatchIdentity;
    use crate::storage::sim::SimDisk;
    use crate::types::{LeaderEpoch, ProducerEpoch, ProducerId, Sequence};

    const DIR: &str = "topics/t-0";

    fn config() -> LogConfig {
        LogConfig { segment_bytes_max: 600, index_interval_bytes: 128, clean_close_min_bytes: 0 }
    }

    fn open(disk: &SimDisk) -> PartitionLog<SimDisk> {
        block_on(PartitionLog::open(disk.clone(), DIR, config())).unwrap().0
    }

    /// Appends to a log and keeps the next sequence of each producer.
    struct Writer {
        sequences: std::collections::BTreeMap<i64, i32>,
    }

    impl Writer {
        fn new() -> Writer {
            Writer { sequences: Default::default() }
        }

        /// Appends one 3-record batch stamped with `epoch`, from `producer` (idempotent) if given.
        fn append(&mut self, log: &mut PartitionLog<SimDisk>, producer: Option<i64>, timestamp: i64, epoch: i32) {
            let records: Vec<Record> = (0..3)
                .map(|index| Record {
                    value: Some(Bytes::from(vec![index as u8; 60])),
                    timestamp_ms: Some(timestamp + index),
                    ..Record::default()
                })
                .collect();
            let fields = producer.map_or(ProducerFields::NONE, |id| {
                let sequence = self.sequences.entry(id).or_insert(0);
                let fields = ProducerFields {
                    producer_id: ProducerId(id),
                    producer_epoch: ProducerEpoch(0),
                    base_sequence: Sequence(*sequence),
                };
                *sequence += 3;
                fields
            });
            let batch = Batch::parse(encode_batch(&records, timestamp, fields))
                .unwrap()
                .stamped(log.log_end_offset(), LeaderEpoch(epoch));
            log.append(&batch).unwrap();
        }
    }

    fn sync(log: &mut PartitionLog<SimDisk>) {
        let covered = block_on(log.begin_sync()).unwrap();
        log.mark_durable(covered);
    }

    fn segment_files(disk: &SimDisk) -> Vec<String> {
        disk.list(DIR).unwrap()
    }

    /// A log of `n_batches` batches (timestamps 100 per batch apart) from producers 1, 2, 3 in turn,
    /// synced, with several segments.
    fn written_log(disk: &SimDisk, n_batches: usize) -> PartitionLog<SimDisk> {
        let mut log = open(disk);
        let mut writer = Writer::new();
        for index in 0..n_batches {
            writer.append(&mut log, Some(1 + index as i64 % 3), 100 * index as i64, 1 + index as i32 / 10);
        }
        sync(&mut log);
        log
    }

    #[test]
    fn summaries_follow_appends_rolls_and_recovery() {
        let disk = SimDisk::new(1);
        let mut log = open(&disk);
        let empty = log.segment_summaries();
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].max_timestamp_ms, i64::MIN, "an empty segment has no timestamp");
        assert!(empty[0].active);
        let mut writer = Writer::new();
        // Timestamps go down and up: a segment's max is not its last batch's.
        let timestamps = [50, 10, 700, 300, 20, 900, 5, 40, 30, 1_000, 2, 3];
        for timestamp in timestamps {
            writer.append(&mut log, None, timestamp, 0);
        }
        let summaries = log.segment_summaries();
        assert!(summaries.len() >= 3, "{summaries:?}");
        assert_eq!(summaries.iter().map(|summary| summary.size_bytes).sum::<u64>(), log.size_bytes());
        assert_eq!(summaries.iter().filter(|summary| summary.active).count(), 1);
        assert!(summaries.last().unwrap().active);
        assert_eq!(summaries[0].base_offset, Offset(0));
        assert_eq!(summaries.last().unwrap().next_offset, log.log_end_offset());
        for pair in summaries.windows(2) {
            assert_eq!(pair[0].next_offset, pair[1].base_offset, "{summaries:?}");
        }
        for summary in &summaries {
            // Batch i holds offsets 3i..3i+3 and records at timestamps t, t+1, t+2.
            let batches = (summary.base_offset.0 / 3) as usize..(summary.next_offset.0 / 3) as usize;
            let expected = timestamps[batches].iter().map(|timestamp| timestamp + 2).max().unwrap();
            assert_eq!(summary.max_timestamp_ms, expected, "{summary:?}");
        }
        sync(&mut log);
        drop(log);
        disk.crash();
        assert_eq!(open(&disk).segment_summaries(), summaries, "recovery finds the same segments");
    }

    #[test]
    fn deletion_keeps_the_active_segment_and_starts_the_log_at_the_first_segment_left() {
        let disk = SimDisk::new(2);
        let mut log = written_log(&disk, 30);
        let summaries = log.segment_summaries();
        assert!(summaries.len() >= 5, "{summaries:?}");
        // Nothing ends at or below the start: nothing goes.
        assert_eq!(block_on(log.delete_segments_before(Offset(0))).unwrap(), Offset(0));
        assert_eq!(block_on(log.delete_segments_before(Offset(1))).unwrap(), Offset(0));
        // An offset inside the third segment: the first two go.
        let inside = Offset(summaries[2].base_offset.0 + 1);
        assert_eq!(block_on(log.delete_segments_before(inside)).unwrap(), summaries[2].base_offset);
        assert_eq!(log.log_start_offset(), summaries[2].base_offset);
        assert_eq!(log.segment_summaries(), summaries[2..].to_vec());
        match log.read(Offset(summaries[2].base_offset.0 - 1), 1 << 20, log.log_end_offset()) {
            Err(LogError::OffsetOutOfRange { log_start, .. }) => assert_eq!(log_start, summaries[2].base_offset),
            other => panic!("read below the log start: {other:?}"),
        }
        let all = log.read(log.log_start_offset(), 1 << 20, log.log_end_offset()).unwrap();
        assert_eq!(Batch::split_first(&mut all.clone()).unwrap().unwrap().base_offset(), summaries[2].base_offset);
        let first_left = format!("{:020}", summaries[2].base_offset.0);
        assert!(
            segment_files(&disk).iter().all(|name| name.as_str() >= first_left.as_str()),
            "{:?}",
            segment_files(&disk)
        );
        // Past the end: everything but the active segment.
        let active = *summaries.last().unwrap();
        assert_eq!(block_on(log.delete_segments_before(Offset(10_000))).unwrap(), active.base_offset);
        assert_eq!(log.segment_summaries(), vec![active]);
        assert_eq!(log.log_end_offset(), active.next_offset);
        // The log goes on: appends, and a reopen.
        Writer::new().append(&mut log, None, 5, 9);
        sync(&mut log);
        drop(log);
        let log = open(&disk);
        assert_eq!(log.log_start_offset(), active.base_offset);
    }

    #[test]
    fn a_reopen_after_deletion_recovers_the_log_start_the_producers_and_the_epoch_runs() {
        for power_loss in [false, true] {
            let disk = SimDisk::new(3);
            let mut log = open(&disk);
            let mut writer = Writer::new();
            // Producer 1 only in what will be deleted, 2 throughout, 3 only after; epochs change.
            for index in 0..12 {
                let producer = if index % 2 == 0 { 1 } else { 2 };
                writer.append(&mut log, Some(producer), index, index as i32 / 5);
            }
            sync(&mut log);
            let new_start = log.log_end_offset();
            for index in 12..24 {
                let producer = if index % 2 == 0 { 2 } else { 3 };
                writer.append(&mut log, Some(producer), index, index as i32 / 5);
            }
            sync(&mut log);
            let log_start = block_on(log.delete_segments_before(new_start)).unwrap();
            assert!(log_start > Offset(0) && log_start <= new_start);
            let producers = log.producer_states().clone();
            assert!(producers.get(ProducerId(1)).is_some(), "deletion keeps the table");
            let runs = log.epoch_runs().to_vec();
            assert_eq!(runs[0].start_offset, log_start, "{runs:?}");
            drop(log);
            if power_loss {
                disk.crash();
            }
            let (log, report) = block_on(PartitionLog::open(disk.clone(), DIR, config())).unwrap();
            assert_eq!(report.log_start_offset, log_start);
            assert_eq!(report.cut, None);
            assert_eq!(log.log_start_offset(), log_start);
            assert_eq!(log.producer_states(), &producers, "power loss: {power_loss}");
            assert_eq!(log.epoch_runs(), &runs[..]);
            // A second round, from a first segment that is not at offset 0.
            let mut log = log;
            let log_start = block_on(log.delete_segments_before(Offset(10_000))).unwrap();
            drop(log);
            disk.crash();
            let log = open(&disk);
            assert_eq!(log.log_start_offset(), log_start);
            assert_eq!(log.producer_states(), &producers);
        }
    }

    #[test]
    fn a_truncation_after_deletion_rebuilds_the_producers_from_the_first_snapshot() {
        let disk = SimDisk::new(4);
        let mut log = written_log(&disk, 30);
        let summaries = log.segment_summaries();
        let start = block_on(log.delete_segments_before(summaries[2].base_offset)).unwrap();
        let before_cut = log.producer_states().clone();
        // Cut inside the segment before the active one, without its snapshot: the truncation
        // rescans from the first segment's snapshot.
        let target = summaries[summaries.len() - 2];
        assert!(target.base_offset > start && target.next_offset.0 - target.base_offset.0 >= 6, "{summaries:?}");
        disk.remove(&segment::producers_name(DIR, target.base_offset)).unwrap();
        let cut = Offset(target.base_offset.0 + 3);
        log.truncate_to(cut).unwrap();
        sync(&mut log);
        let (_, mut expected) = read_producer_snapshot(&disk, DIR, start).unwrap().unwrap();
        let mut kept = log.read(start, 1 << 20, cut).unwrap();
        while let Some(batch) = Batch::split_first(&mut kept).unwrap() {
            expected.apply(&BatchIdentity::of(&batch), batch.base_offset());
        }
        assert_eq!(log.log_end_offset(), cut);
        assert_eq!(log.producer_states(), &expected);
        assert_ne!(log.producer_states(), &before_cut, "the cut batches are forgotten");
        drop(log);
        assert_eq!(open(&disk).producer_states(), &expected);
    }

    #[test]
    fn a_segment_that_a_sync_in_flight_holds_is_left_for_later() {
        let disk = SimDisk::new(5);
        let mut log = open(&disk);
        let mut writer = Writer::new();
        for index in 0..6 {
            writer.append(&mut log, None, index, 0);
        }
        let summaries = log.segment_summaries();
        assert!(summaries.len() >= 2);
        let in_flight = log.begin_sync();
        assert_eq!(block_on(log.delete_segments_before(Offset(10_000))).unwrap(), Offset(0));
        let covered = block_on(in_flight).unwrap();
        log.mark_durable(covered);
        let active_base = summaries.last().unwrap().base_offset;
        assert_eq!(block_on(log.delete_segments_before(Offset(10_000))).unwrap(), active_base);
    }

    #[test]
    fn reset_starts_an_empty_log_at_the_offset_and_survives_a_power_loss() {
        let disk = SimDisk::new(6);
        let mut log = written_log(&disk, 20);
        let log_end = log.log_end_offset();
        let offset = Offset(log_end.0 + 17);
        block_on(log.reset_to(offset)).unwrap();
        let check = |log: &PartitionLog<SimDisk>| {
            assert_eq!(log.log_start_offset(), offset);
            assert_eq!(log.log_end_offset(), offset);
            assert_eq!(log.durable_end_offset(), offset);
            assert!(log.producer_states().is_empty());
            assert!(log.epoch_runs().is_empty());
            assert_eq!(log.segment_summaries().len(), 1);
        };
        check(&log);
        let names = segment_files(&disk);
        let base = format!("{:020}", offset.0);
        assert!(names.iter().all(|name| name.starts_with(&base)), "{names:?}");
        drop(log);
        disk.crash();
        let mut log = open(&disk);
        check(&log);
        // A follower then appends what it fetches from there.
        Writer::new().append(&mut log, Some(7), 1, 4);
        sync(&mut log);
        assert!(!log.read(offset, 1 << 20, log.log_end_offset()).unwrap().is_empty());
    }

    #[test]
    fn reset_to_the_base_of_an_empty_active_segment_empties_it_durably() {
        // Seeds: a power loss keeps a random part of what was not synced.
        for seed in 0..20 {
            let disk = SimDisk::new(seed);
            let mut log = written_log(&disk, 20);
            let summaries = log.segment_summaries();
            let start = block_on(log.delete_segments_before(summaries[2].base_offset)).unwrap();
            // Empty the first segment, which becomes the active one (its snapshot holds the
            // producers before it), without a sync: its batches are still on disk.
            log.truncate_to(start).unwrap();
            assert_eq!(log.segment_summaries().len(), 1);
            assert_eq!(log.log_end_offset(), start);
            block_on(log.reset_to(start)).unwrap();
            assert!(log.producer_states().is_empty());
            assert_eq!(log.log_start_offset(), start);
            drop(log);
            disk.crash();
            let log = open(&disk);
            let offsets = (log.log_start_offset(), log.log_end_offset());
            assert_eq!(offsets, (start, start), "seed {seed}: the truncation is durable");
            assert!(log.producer_states().is_empty(), "seed {seed}: so is the empty snapshot");
        }
    }

    #[test]
    fn reset_below_the_log_end_or_start_drops_everything() {
        for (seed, pick) in [(8, 0usize), (9, 1), (10, 2)] {
            let disk = SimDisk::new(seed);
            let mut log = written_log(&disk, 20);
            let summaries = log.segment_summaries();
            let start = block_on(log.delete_segments_before(summaries[2].base_offset)).unwrap();
            let active_base = summaries.last().unwrap().base_offset;
            // Below the log start, inside the log, at the active segment's base (emptied in place).
            let offset = [Offset(start.0 - 2), Offset(start.0 + 4), active_base][pick];
            block_on(log.reset_to(offset)).unwrap();
            assert_eq!(
                (log.log_start_offset(), log.log_end_offset(), log.durable_end_offset()),
                (offset, offset, offset)
            );
            assert!(log.producer_states().is_empty() && log.epoch_runs().is_empty());
            drop(log);
            disk.crash();
            let log = open(&disk);
            assert_eq!((log.log_start_offset(), log.log_end_offset()), (offset, offset), "offset {offset}");
            assert!(log.producer_states().is_empty());
        }
    }

    #[test]
    fn epoch_runs_are_trimmed_as_recovery_builds_them() {
        let run = |epoch: i32, start: i64| EpochEntry { epoch: LeaderEpoch(epoch), start_offset: Offset(start) };
        let mut runs = vec![run(0, 0), run(2, 10), run(5, 30)];
        trim_epoch_runs(&mut runs, Offset(0), Offset(40));
        assert_eq!(runs, vec![run(0, 0), run(2, 10), run(5, 30)]);
        trim_epoch_runs(&mut runs, Offset(15), Offset(40));
        assert_eq!(runs, vec![run(2, 15), run(5, 30)]);
        trim_epoch_runs(&mut runs, Offset(30), Offset(40));
        assert_eq!(runs, vec![run(5, 30)]);
        trim_epoch_runs(&mut runs, Offset(40), Offset(40));
        assert_eq!(runs, vec![], "an empty log has no runs");
    }
}
