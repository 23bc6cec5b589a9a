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
    len: usize,
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
}

#[derive(Debug, Clone, Default)]
pub struct PartitionLogModel {
    batches: Vec<BatchMeta>,
    /// `batches[..durable_len]` are known durable.
    durable_len: usize,
    /// Logs as they were before truncations that are not durable yet.
    ghosts: Vec<Vec<BatchMeta>>,
    /// Bumped by every truncation; a sync begun before one does not make later state durable.
    generation: u64,
}

impl PartitionLogModel {
    pub fn new() -> PartitionLogModel {
        PartitionLogModel::default()
    }

    pub fn batches(&self) -> &[BatchMeta] {
        &self.batches
    }

    pub fn log_start_offset(&self) -> i64 {
        0
    }

    pub fn log_end_offset(&self) -> i64 {
        self.batches.last().map_or(0, |batch| batch.next_offset)
    }

    pub fn durable_end_offset(&self) -> i64 {
        if self.durable_len == 0 {
            0
        } else {
            self.batches[self.durable_len - 1].next_offset
        }
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
        SyncTicket { len: self.batches.len(), generation: self.generation }
    }

    /// A sync begun with `ticket` (and every sync begun before it) succeeded.
    pub fn sync_succeeded(&mut self, ticket: SyncTicket) {
        if ticket.generation != self.generation {
            return; // Begun before a truncation: says nothing about what came after it.
        }
        self.durable_len = self.durable_len.max(ticket.len.min(self.batches.len()));
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
            self.durable_len = self.durable_len.min(keep);
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
        self.durable_len = self.durable_len.min(kept);
        for ghost in &mut self.ghosts {
            let kept = keep(ghost);
            ghost.truncate(kept);
        }
        self.log_end_offset()
    }

    /// Checks what the real log recovered after a crash (or a failed sync and a reopen) against the
    /// crash rule, and adopts it: recovery syncs what it found, so all of it is durable afterwards.
    pub fn recovered(&mut self, recovered: &[RecoveredBatch]) -> Result<(), ModelError> {
        if recovered.len() < self.durable_len {
            return Err(ModelError::BadRecovery(format!(
                "recovered {} batches (end {}), but {} were durable (end {})",
                recovered.len(),
                recovered.last().map_or(0, |batch| batch.1),
                self.durable_len,
                self.durable_end_offset()
            )));
        }
        let matches = |candidate: &Vec<BatchMeta>| {
            recovered.len() <= candidate.len()
                && recovered.iter().zip(candidate).all(|(&(base, next, fingerprint), batch)| {
                    base == batch.base_offset && next == batch.next_offset && fingerprint == batch.fingerprint
                })
        };
        let candidate = std::iter::once(&self.batches)
            .chain(self.ghosts.iter())
            .find(|candidate| matches(candidate))
            .ok_or_else(|| {
            ModelError::BadRecovery(format!(
                "recovered log {recovered:?} is not a prefix of the log ({} batches) or of {} earlier version(s)",
                self.batches.len(),
                self.ghosts.len()
            ))
        })?;
        self.batches = candidate[..recovered.len()].to_vec();
        self.durable_len = self.batches.len();
        self.ghosts.clear();
        self.generation += 1;
        Ok(())
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
        assert!(model.clone().recovered(&recovered_of(&all[..1])).is_err());
        assert!(model.clone().recovered(&[(0, 2, 1), (2, 3, 2), (3, 6, 99)]).is_err());
        assert!(model.clone().recovered(&recovered_of(&all[..2])).is_ok());
        model.recovered(&recovered_of(&all)).unwrap();
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
        assert!(model.clone().recovered(&[(0, 2, 1), (2, 4, 2)]).is_ok());
        model.sync_succeeded(model.begin_sync());
        assert!(model.clone().recovered(&[(0, 2, 1), (2, 4, 2)]).is_err());
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
        assert!(model.clone().recovered(&[(0, 2, 1), (2, 4, 2)]).is_err());
        assert!(model.clone().recovered(&[(0, 2, 1)]).is_ok());
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
}
