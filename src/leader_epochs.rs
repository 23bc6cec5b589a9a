//! The leader-epoch cache's arithmetic: which leader epoch started at which offset (pure, no I/O).
//!
//! In: `assign(epoch, start_offset)` when a replica becomes leader or appends the first batch of a
//! newer epoch, truncations from either end. Out: `end_offset_for(epoch)`, the answer to Kafka's
//! OffsetsForLeaderEpoch (KIP-101, KIP-279), which followers use to find where their log diverges
//! from the leader's, and the leader uses to detect a diverging fetch (KIP-320).
//!
//! Both the sans-IO replica core (`partition::replica`, which answers fetches from memory) and the
//! persisted cache (`log::epoch_cache`, which survives restarts) hold one of these, fed the same
//! calls in the same order.
//!
//! # Invariants
//! Entries are sorted with strictly increasing epochs *and* strictly increasing start offsets. An
//! epoch in which nothing was written before the next epoch began (same start offset) is replaced
//! by the newer one, as Kafka does: it owns no batch, so no lookup can need it.
//!
//! # `end_offset_for(e)` (Kafka's OffsetsForLeaderEpoch semantics)
//! - `e` below the earliest epoch (or an empty cache): `UNDEFINED` (epoch `None`, offset `None`);
//! - `e` at or above the latest epoch: `(latest, log_end)`;
//! - otherwise `(f, start of the first epoch above e)`, where `f` is the largest epoch `<= e`.

use crate::types::{LeaderEpoch, Offset};

/// One entry: `epoch` began at `start_offset` (its first batch's base offset, or the log end when a
/// leader took over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: LeaderEpoch,
    pub start_offset: Offset,
}

/// The answer to "end offset for epoch E": the largest known epoch `<= E` and the offset where it
/// ended. `None` for both is Kafka's UNDEFINED (E is below every epoch this log knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEndOffset {
    pub epoch: Option<LeaderEpoch>,
    pub end_offset: Option<Offset>,
}

impl EpochEndOffset {
    pub const UNDEFINED: EpochEndOffset = EpochEndOffset { epoch: None, end_offset: None };
}

/// Why an `assign` was refused: it would break the ordering invariants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochOrderError {
    #[error("epoch {epoch} at {start_offset} is older than the latest epoch {latest} at {latest_start}")]
    EpochWentBack { epoch: LeaderEpoch, start_offset: Offset, latest: LeaderEpoch, latest_start: Offset },
    #[error("epoch {epoch} starts at {start_offset}, before the latest epoch {latest} at {latest_start}")]
    StartWentBack { epoch: LeaderEpoch, start_offset: Offset, latest: LeaderEpoch, latest_start: Offset },
}

/// What an accepted `assign` changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigned {
    /// The epoch was already the latest one, at that start offset.
    Unchanged,
    /// A new entry was added; `replaced` older entries with the same start offset were dropped first.
    Added { replaced: usize },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochs {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochs {
    pub fn new() -> LeaderEpochs {
        LeaderEpochs::default()
    }

    /// Builds a cache from entries already in order (a recovered file). Entries that break the order
    /// end the list there, as a torn or corrupt tail would.
    pub fn from_entries(entries: impl IntoIterator<Item = EpochEntry>) -> LeaderEpochs {
        let mut epochs = LeaderEpochs::new();
        for entry in entries {
            if epochs.assign(entry.epoch, entry.start_offset).is_err() {
                break;
            }
        }
        epochs
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.entries.last().map(|entry| entry.epoch)
    }

    /// The start offset of `epoch` if it is in the cache.
    pub fn start_of(&self, epoch: LeaderEpoch) -> Option<Offset> {
        self.entries.iter().find(|entry| entry.epoch == epoch).map(|entry| entry.start_offset)
    }

    /// Records that `epoch` starts at `start_offset`. Epochs and start offsets only move forward;
    /// re-assigning the latest epoch at its own start offset is a no-op.
    pub fn assign(&mut self, epoch: LeaderEpoch, start_offset: Offset) -> Result<Assigned, EpochOrderError> {
        if let Some(latest) = self.latest() {
            if epoch == latest.epoch && start_offset == latest.start_offset {
                return Ok(Assigned::Unchanged);
            }
            if epoch <= latest.epoch {
                return Err(EpochOrderError::EpochWentBack {
                    epoch,
                    start_offset,
                    latest: latest.epoch,
                    latest_start: latest.start_offset,
                });
            }
            if start_offset < latest.start_offset {
                return Err(EpochOrderError::StartWentBack {
                    epoch,
                    start_offset,
                    latest: latest.epoch,
                    latest_start: latest.start_offset,
                });
            }
        }
        let before = self.entries.len();
        self.entries.retain(|entry| entry.start_offset < start_offset);
        let replaced = before - self.entries.len();
        self.entries.push(EpochEntry { epoch, start_offset });
        Ok(Assigned::Added { replaced })
    }

    /// The log was truncated to `offset` (a follower that diverged): epochs that started at or after
    /// it own no batch any more. Returns how many entries were removed.
    pub fn truncate_from_end(&mut self, offset: Offset) -> usize {
        let before = self.entries.len();
        self.entries.retain(|entry| entry.start_offset < offset);
        before - self.entries.len()
    }

    /// The log's start moved to `offset` (retention): entries that ended below it are dropped, and
    /// the one containing it now starts at `offset`.
    pub fn truncate_from_start(&mut self, offset: Offset) {
        let covering = self.entries.partition_point(|entry| entry.start_offset <= offset);
        if covering == 0 {
            return;
        }
        self.entries.drain(..covering - 1);
        self.entries[0].start_offset = offset;
    }

    /// Kafka's OffsetsForLeaderEpoch answer for `epoch` on a log that ends at `log_end` (module doc).
    pub fn end_offset_for(&self, epoch: LeaderEpoch, log_end: Offset) -> EpochEndOffset {
        let above = self.entries.partition_point(|entry| entry.epoch <= epoch);
        if above == 0 {
            return EpochEndOffset::UNDEFINED;
        }
        let found = self.entries[above - 1].epoch;
        let end_offset = self.entries.get(above).map_or(log_end, |next| next.start_offset);
        EpochEndOffset { epoch: Some(found), end_offset: Some(end_offset) }
    }

    /// Asserts the ordering invariants (module doc).
    pub fn check_invariants(&self) {
        for pair in self.entries.windows(2) {
            assert!(
                pair[0].epoch < pair[1].epoch && pair[0].start_offset < pair[1].start_offset,
                "leader epochs out of order: {:?} then {:?}",
                pair[0],
                pair[1]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(pairs: &[(i32, i64)]) -> LeaderEpochs {
        let mut epochs = LeaderEpochs::new();
        for &(epoch, start) in pairs {
            epochs.assign(LeaderEpoch(epoch), Offset(start)).unwrap();
        }
        epochs
    }

    fn answer(epoch: i32, end: i64) -> EpochEndOffset {
        EpochEndOffset { epoch: Some(LeaderEpoch(epoch)), end_offset: Some(Offset(end)) }
    }

    #[test]
    fn end_offset_for_follows_kafka() {
        let epochs = cache(&[(0, 0), (2, 15), (5, 40)]);
        assert_eq!(epochs.end_offset_for(LeaderEpoch(0), Offset(50)), answer(0, 15));
        assert_eq!(epochs.end_offset_for(LeaderEpoch(1), Offset(50)), answer(0, 15));
        assert_eq!(epochs.end_offset_for(LeaderEpoch(3), Offset(50)), answer(2, 40));
        assert_eq!(epochs.end_offset_for(LeaderEpoch(5), Offset(50)), answer(5, 50));
        assert_eq!(epochs.end_offset_for(LeaderEpoch(9), Offset(50)), answer(5, 50));
        let later = cache(&[(3, 10)]);
        assert_eq!(later.end_offset_for(LeaderEpoch(2), Offset(20)), EpochEndOffset::UNDEFINED);
        assert_eq!(LeaderEpochs::new().end_offset_for(LeaderEpoch(0), Offset(0)), EpochEndOffset::UNDEFINED);
    }

    #[test]
    fn assign_is_monotonic_and_replaces_empty_epochs() {
        let mut epochs = cache(&[(1, 0), (2, 10)]);
        assert_eq!(epochs.assign(LeaderEpoch(2), Offset(10)), Ok(Assigned::Unchanged));
        assert!(matches!(epochs.assign(LeaderEpoch(1), Offset(20)), Err(EpochOrderError::EpochWentBack { .. })));
        assert!(matches!(epochs.assign(LeaderEpoch(2), Offset(12)), Err(EpochOrderError::EpochWentBack { .. })));
        assert!(matches!(epochs.assign(LeaderEpoch(3), Offset(5)), Err(EpochOrderError::StartWentBack { .. })));
        // Epoch 2 wrote nothing before epoch 3 began: epoch 3 replaces it.
        assert_eq!(epochs.assign(LeaderEpoch(3), Offset(10)), Ok(Assigned::Added { replaced: 1 }));
        assert_eq!(epochs.entries().len(), 2);
        assert_eq!(epochs.end_offset_for(LeaderEpoch(2), Offset(30)), answer(1, 10));
        epochs.check_invariants();
    }

    #[test]
    fn truncations() {
        let mut epochs = cache(&[(0, 0), (2, 15), (5, 40)]);
        assert_eq!(epochs.truncate_from_end(Offset(40)), 1, "an epoch starting at the cut owns nothing");
        assert_eq!(epochs.latest_epoch(), Some(LeaderEpoch(2)));
        assert_eq!(epochs.truncate_from_end(Offset(41)), 0);
        let mut epochs = cache(&[(0, 0), (2, 15), (5, 40)]);
        epochs.truncate_from_start(Offset(20));
        assert_eq!(
            epochs.entries(),
            &[
                EpochEntry { epoch: LeaderEpoch(2), start_offset: Offset(20) },
                EpochEntry { epoch: LeaderEpoch(5), start_offset: Offset(40) }
            ]
        );
        assert_eq!(epochs.end_offset_for(LeaderEpoch(0), Offset(50)), EpochEndOffset::UNDEFINED);
        epochs.truncate_from_start(Offset(40));
        assert_eq!(epochs.entries(), &[EpochEntry { epoch: LeaderEpoch(5), start_offset: Offset(40) }]);
    }

    #[test]
    fn from_entries_stops_at_the_first_out_of_order_entry() {
        let entries = [(0, 0), (3, 10), (2, 20), (4, 30)]
            .map(|(epoch, start)| EpochEntry { epoch: LeaderEpoch(epoch), start_offset: Offset(start) });
        let epochs = LeaderEpochs::from_entries(entries);
        assert_eq!(epochs.entries(), &entries[..2]);
    }
}
