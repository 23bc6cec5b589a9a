//! A reference model of one partition's log, with crash semantics.
//!
//! In: appends (batch metadata), sync begin/success, truncations, and after a crash what the real
//! log recovered. Out: the offsets and batches a correct log must report, and a verdict on whether a
//! recovered log is acceptable.
//!
//! The model knows batches only by metadata (offsets, max timestamp, size, a payload fingerprint):
//! the caller keeps the payloads if it wants to compare records.
//!
//! # Crash rule
//! After a crash (or a failed sync, which may lose unsynced data the same way) the recovered log
//! must be a prefix of a log the model could be in, and must contain every batch that was durable.
//! The logs it could be in are the current one and, until a sync begun after it succeeds, the log as
//! it was before each truncation (a truncation is not durable until synced, so a crash may undo it).
//!
//! # Log start: retention and reset
//! Retention deletes whole segments from the start; the model does not know segments, so the caller
//! reports the new start the log chose ([`PartitionLogModel::delete_before`]) and the model checks it
//! is a batch boundary. A completed deletion is durable. One interrupted by a crash
//! ([`PartitionLogModel::deletion_interrupted`]) may leave any batch boundary between the old start
//! and the requested one as the recovered start. A follower's reset ([`PartitionLogModel::reset`])
//! empties the log at an offset (usually at or past its end); interrupted, it recovers either a
//! suffix of the old log (possibly cut at the offset) or the empty log at that offset. In every case the recovered log holds every durable batch
//! at or after its start: a crash never loses a synced batch that retention did not delete.

use serde::{Deserialize, Serialize};

/// What the model knows of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMeta {
    pub base_offset: i64,
    /// The offset after the batch's last record.
    pub next_offset: i64,
    pub max_timestamp: i64,
    pub size_bytes: usize,
    /// Identifies the payload (e.g. a hash of the batch bytes); compared after recovery.
    pub fingerprint: u64,
}

/// A recovered batch as the real log reports it: (base offset, next offset, fingerprint).
pub type RecoveredBatch = (i64, i64, u64);

/// Captured when a sync begins: what it will cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncTicket {
    /// The log end when the sync began.
    end: i64,
    generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelError {
    OffsetOutOfRange {
        requested: i64,
        log_start: i64,
        log_end: i64,
    },
    NonContiguous {
        expected: i64,
        got: i64,
    },
    /// A recovered log the crash rule does not allow.
    BadRecovery(String),
    /// A log start that is not where a batch starts (or the log end).
    NotABatchBoundary {
        offset: i64,
    },
}

/// A log-start change a crash interrupted: what the recovered log may start at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupted {
    /// A deletion up to this requested start: any batch boundary from the log start up to it.
    Deletion { requested: i64 },
    /// A reset to this offset: the old log's suffix from any boundary, or empty at the offset.
    Reset { offset: i64 },
}

#[derive(Debug, Clone, Default)]
pub struct PartitionLogModel {
    /// The first offset in the log; `batches` start there.
    log_start: i64,
    batches: Vec<BatchMeta>,
    /// Everything below this offset is known durable (may lie below the log start after retention
    /// deleted batches that were never synced).
    durable_end: i64,
    /// Logs as they were before truncations that are not durable yet (from the log start).
    ghosts: Vec<Vec<BatchMeta>>,
    /// Bumped by every truncation; a sync begun before one does not make later state durable.
    generation: u64,
    /// A deletion or reset that a crash interrupted, until the next recovery.
    interrupted: Option<Interrupted>,
}

impl PartitionLogModel {
    pub fn new() -> PartitionLogModel {
        PartitionLogModel::default()
    }

    pub fn batches(&self) -> &[BatchMeta] {
        &self.batches
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start
    }

    pub fn log_end_offset(&self) -> i64 {
        self.batches.last().map_or(self.log_start, |batch| batch.next_offset)
    }

    pub fn durable_end_offset(&self) -> i64 {
        self.durable_end
    }

    /// How many of `batches` (the current log) are durable.
    fn durable_len(&self) -> usize {
        self.batches.partition_point(|batch| batch.next_offset <= self.durable_end)
    }

    pub fn append(&mut self, batch: BatchMeta) -> Result<(), ModelError> {
        let expected = self.log_end_offset();
        if batch.base_offset != expected || batch.next_offset <= batch.base_offset {
            return Err(ModelError::NonContiguous { expected, got: batch.base_offset });
        }
        self.batches.push(batch);
        Ok(())
    }

    pub fn begin_sync(&self) -> SyncTicket {
        SyncTicket { end: self.log_end_offset(), generation: self.generation }
    }

    /// A sync begun with `ticket` (and every sync begun before it) succeeded.
    pub fn sync_succeeded(&mut self, ticket: SyncTicket) {
        if ticket.generation != self.generation {
            return; // Begun before a truncation: says nothing about what came after it.
        }
        self.durable_end = self.durable_end.max(ticket.end.min(self.log_end_offset()));
        self.ghosts.clear();
    }

    /// Removes the batch containing `offset` and everything after it. Returns the new log end.
    pub fn truncate_to(&mut self, offset: i64) -> Result<i64, ModelError> {
        if offset < self.log_start_offset() {
            return Err(ModelError::OffsetOutOfRange {
                requested: offset,
                log_start: self.log_start_offset(),
                log_end: self.log_end_offset(),
            });
        }
        let keep = self.batches.iter().take_while(|batch| batch.next_offset <= offset).count();
        if keep < self.batches.len() {
            self.ghosts.push(self.batches.clone());
            self.batches.truncate(keep);
            self.durable_end = self.durable_end.min(self.log_end_offset());
            self.generation += 1;
        }
        Ok(self.log_end_offset())
    }

    /// Bit rot: a stored byte of the batch containing `offset` changed. A correct log cuts that batch
    /// and everything after it at its next recovery (a replicated partition fetches the rest again
    /// from another replica), so the model does the same, in the current log and in every earlier
    /// version a crash could bring back. Returns the new log end.
    pub fn corrupted(&mut self, offset: i64) -> i64 {
        let keep = |batches: &[BatchMeta]| batches.iter().take_while(|batch| batch.next_offset <= offset).count();
        let kept = keep(&self.batches);
        self.batches.truncate(kept);
        self.durable_end = self.durable_end.min(self.log_end_offset());
        for ghost in &mut self.ghosts {
            let kept = keep(ghost);
            ghost.truncate(kept);
        }
        self.log_end_offset()
    }

    /// Retention deleted the batches below `new_start`, the log start the real log reported (the
    /// base of its first remaining segment): it must be a batch boundary at or past the log start.
    /// The deletion is durable when the log reports it.
    pub fn delete_before(&mut self, new_start: i64) -> Result<(), ModelError> {
        let skip = self.batches.partition_point(|batch| batch.base_offset < new_start);
        let boundary = new_start == self.log_start
            || self
                .batches
                .get(skip)
                .map_or(new_start == self.log_end_offset(), |batch| batch.base_offset == new_start);
        if new_start < self.log_start || !boundary {
            return Err(ModelError::NotABatchBoundary { offset: new_start });
        }
        self.batches.drain(..skip);
        for ghost in &mut self.ghosts {
            ghost.retain(|batch| batch.base_offset >= new_start);
        }
        self.log_start = new_start;
        self.interrupted = None;
        Ok(())
    }

    /// A deletion up to `requested` was under way when the log failed or crashed: until the next
    /// recovery, the log may start at any batch boundary from the log start up to `requested`.
    pub fn deletion_interrupted(&mut self, requested: i64) {
        self.interrupted = Some(Interrupted::Deletion { requested });
    }

    /// A follower's reset: the log is empty at `offset` (any offset: everything it held is dropped),
    /// all of it durable.
    pub fn reset(&mut self, offset: i64) -> Result<(), ModelError> {
        if offset < 0 {
            return Err(ModelError::OffsetOutOfRange {
                requested: offset,
                log_start: self.log_start,
                log_end: self.log_end_offset(),
            });
        }
        self.log_start = offset;
        self.batches.clear();
        self.ghosts.clear();
        self.durable_end = offset;
        self.generation += 1;
        self.interrupted = None;
        Ok(())
    }

    /// A reset to `offset` was under way when the log failed or crashed: until the next recovery,
    /// the log is a suffix of the old one or the empty log at `offset`.
    pub fn reset_interrupted(&mut self, offset: i64) {
        self.interrupted = Some(Interrupted::Reset { offset });
    }

    /// Checks what the real log recovered after a crash (or a failed sync and a reopen), starting at
    /// `log_start`, against the crash rule, and adopts it: recovery syncs what it found, so all of it
    /// is durable afterwards.
    pub fn recovered(&mut self, log_start: i64, recovered: &[RecoveredBatch]) -> Result<(), ModelError> {
        if let Some(Interrupted::Reset { offset }) = self.interrupted {
            if log_start == offset && recovered.is_empty() {
                return self.reset(offset);
            }
        }
        let start_max = match self.interrupted {
            None => self.log_start,
            Some(Interrupted::Deletion { requested }) => requested.max(self.log_start),
            Some(Interrupted::Reset { .. }) => i64::MAX,
        };
        if log_start < self.log_start || log_start > start_max {
            return Err(ModelError::BadRecovery(format!(
                "recovered log start {log_start}, outside [{}, {start_max}]",
                self.log_start
            )));
        }
        if recovered.first().is_some_and(|batch| batch.0 != log_start) {
            return Err(ModelError::BadRecovery(format!("log start {log_start}, first batch {recovered:?}")));
        }
        // The durable batches at or past the recovered start must all be there.
        let below = self.batches.partition_point(|batch| batch.base_offset < log_start);
        let required = self.durable_len().saturating_sub(below);
        if recovered.len() < required {
            return Err(ModelError::BadRecovery(format!(
                "recovered {} batches from {log_start} (end {}), but {required} were durable (end {})",
                recovered.len(),
                recovered.last().map_or(log_start, |batch| batch.1),
                self.durable_end
            )));
        }
        let candidate = std::iter::once(&self.batches)
            .chain(self.ghosts.iter())
            .filter_map(|candidate| self.suffix_from(candidate, log_start))
            .find(|suffix| {
                recovered.len() <= suffix.len()
                    && recovered.iter().zip(suffix.iter()).all(|(&(base, next, fingerprint), batch)| {
                        base == batch.base_offset && next == batch.next_offset && fingerprint == batch.fingerprint
                    })
            })
            .ok_or_else(|| {
                ModelError::BadRecovery(format!(
                    "recovered log {recovered:?} from {log_start} is not a prefix of the log ({} batches from {}) or of \
                     {} earlier version(s) from there",
                    self.batches.len(),
                    self.log_start,
                    self.ghosts.len()
                ))
            })?;
        self.batches = candidate[..recovered.len()].to_vec();
        self.log_start = log_start;
        self.durable_end = self.log_end_offset();
        self.ghosts.clear();
        self.generation += 1;
        self.interrupted = None;
        Ok(())
    }

    /// The batches of `candidate` (a log from the log start) from `offset` on, if `offset` is a batch
    /// boundary of it (a batch's base, or its end).
    fn suffix_from<'a>(&self, candidate: &'a [BatchMeta], offset: i64) -> Option<&'a [BatchMeta]> {
        let skip = candidate.partition_point(|batch| batch.base_offset < offset);
        let end = candidate.last().map_or(self.log_start, |batch| batch.next_offset);
        let boundary = candidate.get(skip).map_or(offset == end, |batch| batch.base_offset == offset);
        boundary.then(|| &candidate[skip..])
    }

    /// The batches a read must return: whole batches starting with the one containing `offset`,
    /// only those whose last offset is below `up_to`, stopping before `max_bytes` would be exceeded
    /// but always at least one if any qualifies.
    pub fn read(&self, offset: i64, max_bytes: usize, up_to: i64) -> Result<Vec<BatchMeta>, ModelError> {
        let (log_start, log_end) = (self.log_start_offset(), self.log_end_offset());
        if offset < log_start || offset > log_end {
            return Err(ModelError::OffsetOutOfRange { requested: offset, log_start, log_end });
        }
        let first = self.batches.partition_point(|batch| batch.next_offset <= offset);
        let mut out = Vec::new();
        let mut total_bytes = 0usize;
        for batch in &self.batches[first..] {
            let last_offset = batch.next_offset - 1;
            if last_offset >= up_to || (!out.is_empty() && total_bytes + batch.size_bytes > max_bytes) {
                break;
            }
            total_bytes += batch.size_bytes;
            out.push(*batch);
        }
        Ok(out)
    }

    /// The first batch with `max_timestamp >= timestamp`: (its base offset, its max timestamp).
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Option<(i64, i64)> {
        self.batches
            .iter()
            .find(|batch| batch.max_timestamp >= timestamp)
            .map(|batch| (batch.base_offset, batch.max_timestamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(base: i64, count: i64, fingerprint: u64) -> BatchMeta {
        BatchMeta { base_offset: base, next_offset: base + count, max_timestamp: base, size_bytes: 100, fingerprint }
    }

    fn recovered_of(batches: &[BatchMeta]) -> Vec<RecoveredBatch> {
        batches.iter().map(|batch| (batch.base_offset, batch.next_offset, batch.fingerprint)).collect()
    }

    #[test]
    fn crash_keeps_durable_prefix_and_rejects_loss_or_invention() {
        let mut model = PartitionLogModel::new();
        model.append(meta(0, 2, 1)).unwrap();
        model.append(meta(2, 1, 2)).unwrap();
        let ticket = model.begin_sync();
        model.append(meta(3, 3, 3)).unwrap();
        model.sync_succeeded(ticket);
        assert_eq!(model.durable_end_offset(), 3);
        let all = model.batches().to_vec();
        // Losing a durable batch is wrong; so is a batch never appended.
        assert!(model.clone().recovered(0, &recovered_of(&all[..1])).is_err());
        assert!(model.clone().recovered(0, &[(0, 2, 1), (2, 3, 2), (3, 6, 99)]).is_err());
        assert!(model.clone().recovered(0, &recovered_of(&all[..2])).is_ok());
        model.recovered(0, &recovered_of(&all)).unwrap();
        assert_eq!(model.durable_end_offset(), 6);
    }

    #[test]
    fn unsynced_truncation_may_be_undone_by_a_crash() {
        let mut model = PartitionLogModel::new();
        model.append(meta(0, 2, 1)).unwrap();
        model.append(meta(2, 2, 2)).unwrap();
        model.sync_succeeded(model.begin_sync());
        assert_eq!(model.truncate_to(3).unwrap(), 2);
        assert_eq!(model.durable_end_offset(), 2);
        assert!(model.clone().recovered(0, &[(0, 2, 1), (2, 4, 2)]).is_ok());
        model.sync_succeeded(model.begin_sync());
        assert!(model.clone().recovered(0, &[(0, 2, 1), (2, 4, 2)]).is_err());
    }

    #[test]
    fn a_corrupt_durable_batch_is_cut_with_everything_after_it() {
        let mut model = PartitionLogModel::new();
        for (base, fingerprint) in [(0, 1), (2, 2), (4, 3)] {
            model.append(meta(base, 2, fingerprint)).unwrap();
        }
        model.sync_succeeded(model.begin_sync());
        assert_eq!(model.corrupted(3), 2, "the batch holding offset 3 and the one after are gone");
        assert_eq!(model.durable_end_offset(), 2);
        // Keeping the corrupt batch is wrong; keeping everything below it is right.
        assert!(model.clone().recovered(0, &[(0, 2, 1), (2, 4, 2)]).is_err());
        assert!(model.clone().recovered(0, &[(0, 2, 1)]).is_ok());
    }

    #[test]
    fn reads_respect_max_bytes_and_up_to() {
        let mut model = PartitionLogModel::new();
        for (base, fingerprint) in [(0, 1), (2, 2), (4, 3)] {
            model.append(meta(base, 2, fingerprint)).unwrap();
        }
        assert_eq!(model.read(3, 1, 6).unwrap().len(), 1, "at least one batch");
        assert_eq!(model.read(3, 200, 6).unwrap().len(), 2);
        assert_eq!(model.read(3, 1000, 4).unwrap().len(), 1);
        assert_eq!(model.read(3, 1000, 3).unwrap().len(), 0);
        assert!(model.read(6, 1000, 6).unwrap().is_empty());
        assert!(model.read(7, 1000, 6).is_err());
        assert_eq!(model.offset_for_timestamp(1), Some((2, 2)));
        assert_eq!(model.offset_for_timestamp(5), None);
    }

    #[test]
    fn deletion_moves_the_start_and_a_crash_during_one_may_stop_at_any_boundary_up_to_the_request() {
        let mut model = PartitionLogModel::new();
        for (base, fingerprint) in [(0, 1), (2, 2), (4, 3), (6, 4)] {
            model.append(meta(base, 2, fingerprint)).unwrap();
        }
        let ticket = model.begin_sync();
        model.append(meta(8, 2, 5)).unwrap();
        model.sync_succeeded(ticket);
        assert_eq!(model.durable_end_offset(), 8);
        assert!(model.clone().delete_before(3).is_err(), "not a batch boundary");
        let mut deleted = model.clone();
        deleted.delete_before(4).unwrap();
        assert_eq!((deleted.log_start_offset(), deleted.log_end_offset()), (4, 10));
        assert!(deleted.read(2, 100, 10).is_err());
        // Completed: the start stays; the durable batches after it stay; the unsynced one may go.
        assert!(deleted.clone().recovered(2, &[(2, 4, 2), (4, 6, 3), (6, 8, 4)]).is_err());
        assert!(deleted.clone().recovered(4, &[(4, 6, 3)]).is_err(), "lost a durable batch");
        assert!(deleted.clone().recovered(4, &[(4, 6, 3), (6, 8, 4)]).is_ok());
        // Interrupted: any boundary from the old start up to the request.
        model.deletion_interrupted(6);
        assert!(model.clone().recovered(0, &recovered_of(&model.batches()[..4])).is_ok());
        assert!(model.clone().recovered(2, &[(2, 4, 2), (4, 6, 3), (6, 8, 4)]).is_ok());
        assert!(model.clone().recovered(6, &[(6, 8, 4), (8, 10, 5)]).is_ok());
        assert!(model.clone().recovered(8, &[(8, 10, 5)]).is_err(), "past the requested start");
        assert!(model.clone().recovered(6, &[]).is_err(), "lost a durable batch");
        model.recovered(4, &[(4, 6, 3), (6, 8, 4)]).unwrap();
        assert_eq!((model.log_start_offset(), model.durable_end_offset()), (4, 8));
    }

    #[test]
    fn deleting_unsynced_batches_leaves_the_durable_end_below_the_start() {
        let mut model = PartitionLogModel::new();
        model.append(meta(0, 2, 1)).unwrap();
        model.append(meta(2, 2, 2)).unwrap();
        model.delete_before(2).unwrap();
        assert_eq!(model.durable_end_offset(), 0);
        assert!(model.clone().recovered(2, &[]).is_ok(), "nothing durable to keep");
        model.sync_succeeded(model.begin_sync());
        assert_eq!(model.durable_end_offset(), 4);
    }

    #[test]
    fn reset_empties_the_log_and_an_interrupted_one_recovers_old_suffix_or_new_log() {
        let mut model = PartitionLogModel::new();
        for (base, fingerprint) in [(0, 1), (2, 2), (4, 3)] {
            model.append(meta(base, 2, fingerprint)).unwrap();
        }
        model.sync_succeeded(model.begin_sync());
        assert!(model.clone().reset(-1).is_err());
        let mut below = model.clone();
        below.reset(3).unwrap();
        assert_eq!((below.log_start_offset(), below.log_end_offset()), (3, 3), "below the end: all dropped");
        let mut reset = model.clone();
        reset.reset(9).unwrap();
        assert_eq!((reset.log_start_offset(), reset.log_end_offset(), reset.durable_end_offset()), (9, 9, 9));
        assert!(reset.clone().recovered(9, &[]).is_ok());
        assert!(reset.clone().recovered(4, &[(4, 6, 3)]).is_err());
        model.reset_interrupted(9);
        assert!(model.clone().recovered(9, &[]).is_ok());
        assert!(model.clone().recovered(2, &[(2, 4, 2), (4, 6, 3)]).is_ok());
        assert!(model.clone().recovered(4, &[(4, 6, 3)]).is_ok());
        assert!(model.clone().recovered(4, &[]).is_err(), "lost a durable batch of the old suffix");
        assert!(model.clone().recovered(8, &[]).is_err(), "neither");
    }
}
