//! A reference model of idempotent producers in one partition: what the leader must do with each
//! offered batch (ADR 0015; the real table is `keel::producer_state`).
//!
//! In: offered batches (producer id, epoch, base sequence, record count, max timestamp) and expiry
//! calls. Out: a [`Decision`] per batch, and per producer the view the real table must hold.
//!
//! # How it is written
//! Deliberately naive, so it can be checked by reading: it never forgets a batch it did not have
//! to. Per producer it keeps the FULL list of every batch appended since the producer was last
//! forgotten (by expiry), of every epoch, and every question is answered by scanning that list. The
//! real table keeps only the current epoch's last [`BATCHES_REMEMBERED`] batches; the two must agree.
//! The model knows nothing of the real code's types (this crate does not depend on `keel`): plain
//! integers throughout.
//!
//! # The rules
//! - Producer id [`NO_PRODUCER_ID`] (any negative id): not idempotent, always appended.
//! - A producer is *unknown* when it has no appended batch (never seen, or forgotten by expiry).
//!   Sequence 0 starts it, in any epoch; any other sequence is [`Decision::UnknownProducer`].
//! - Its *current epoch* is the epoch of its newest batch. An older epoch is
//!   [`Decision::Fenced`]; a newer one must start at sequence 0 (else out of order, expecting 0).
//! - Same epoch: among its last [`BATCHES_REMEMBERED`] batches of the current epoch, one with the
//!   same first and last sequence makes the batch a retry: [`Decision::Duplicate`] with that batch's
//!   offsets (checked first: after a full wrap of 2^31 sequences a retry may also look like the
//!   next batch). Otherwise the sequence after the newest batch's last one is appended, and anything
//!   else is [`Decision::OutOfOrder`].
//! - Sequences count records and wrap from `i32::MAX` to 0.
//! - Expiry forgets a producer whose newest timestamp (the largest max timestamp of its batches) is
//!   older than `now - max`.

use std::collections::BTreeMap;

/// The producer id of a batch that is not idempotent (Kafka's `NO_PRODUCER_ID`).
pub const NO_PRODUCER_ID: i64 = -1;

/// Batches of the current epoch a retry may match (the real `PRODUCER_BATCHES_KEPT`).
pub const BATCHES_REMEMBERED: usize = 5;

/// Sequences live in `0..SEQUENCE_MODULUS`.
const SEQUENCE_MODULUS: i64 = i32::MAX as i64 + 1;

/// `sequence + delta`, wrapping from `i32::MAX` to 0.
pub fn sequence_plus(sequence: i32, delta: i64) -> i32 {
    let wrapped = (i64::from(sequence) + delta).rem_euclid(SEQUENCE_MODULUS);
    i32::try_from(wrapped).expect("a wrapped sequence fits an i32")
}

/// A batch offered to the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferedBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
    /// At least 1.
    pub record_count: i32,
    pub max_timestamp_ms: i64,
}

impl OfferedBatch {
    pub fn last_sequence(&self) -> i32 {
        sequence_plus(self.base_sequence, i64::from(self.record_count) - 1)
    }
}

/// A batch the model appended to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedBatch {
    pub epoch: i16,
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp_ms: i64,
}

/// What the leader must do with an offered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Appended at these offsets (the log's next ones).
    Append {
        base_offset: i64,
        last_offset: i64,
    },
    /// A retry of a batch already appended at these offsets.
    Duplicate {
        base_offset: i64,
        last_offset: i64,
    },
    OutOfOrder {
        expected: i32,
    },
    Fenced {
        current: i16,
    },
    UnknownProducer,
}

/// What the real table must hold for one producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerView {
    pub epoch: i16,
    /// The last [`BATCHES_REMEMBERED`] batches of the current epoch, oldest first, as
    /// `(first sequence, last sequence, base offset, last offset)`.
    pub last_batches: Vec<(i32, i32, i64, i64)>,
    /// The largest max timestamp of all its batches, of every epoch.
    pub last_timestamp_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct IdempotentModel {
    /// The offset the next appended record gets.
    next_offset: i64,
    /// Every batch appended per producer (oldest first) since it was last forgotten. A producer
    /// with an entry has at least one batch.
    producers: BTreeMap<i64, Vec<AppendedBatch>>,
}

impl IdempotentModel {
    pub fn new() -> IdempotentModel {
        IdempotentModel::default()
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// The producers the model remembers.
    pub fn producer_ids(&self) -> Vec<i64> {
        self.producers.keys().copied().collect()
    }

    /// Every batch the model remembers of `producer_id`, oldest first (empty if unknown).
    pub fn batches_of(&self, producer_id: i64) -> &[AppendedBatch] {
        self.producers.get(&producer_id).map_or(&[], |batches| batches.as_slice())
    }

    /// The current epoch's batches a retry may match, oldest first.
    fn remembered(&self, producer_id: i64) -> Vec<AppendedBatch> {
        let batches = self.batches_of(producer_id);
        let Some(newest) = batches.last() else { return Vec::new() };
        let current: Vec<AppendedBatch> = batches.iter().filter(|batch| batch.epoch == newest.epoch).copied().collect();
        let skip = current.len().saturating_sub(BATCHES_REMEMBERED);
        current[skip..].to_vec()
    }

    /// What the leader must do with `batch` (module doc: the rules). Changes nothing.
    pub fn decide(&self, batch: &OfferedBatch) -> Decision {
        let append = Decision::Append {
            base_offset: self.next_offset,
            last_offset: self.next_offset + i64::from(batch.record_count) - 1,
        };
        if batch.producer_id < 0 {
            return append;
        }
        let Some(newest) = self.batches_of(batch.producer_id).last() else {
            return if batch.base_sequence == 0 { append } else { Decision::UnknownProducer };
        };
        if batch.epoch < newest.epoch {
            return Decision::Fenced { current: newest.epoch };
        }
        if batch.epoch > newest.epoch {
            return if batch.base_sequence == 0 { append } else { Decision::OutOfOrder { expected: 0 } };
        }
        for kept in self.remembered(batch.producer_id) {
            if kept.first_sequence == batch.base_sequence && kept.last_sequence == batch.last_sequence() {
                return Decision::Duplicate { base_offset: kept.base_offset, last_offset: kept.last_offset };
            }
        }
        let expected = sequence_plus(newest.last_sequence, 1);
        if batch.base_sequence == expected {
            append
        } else {
            Decision::OutOfOrder { expected }
        }
    }

    /// Decides, and appends the batch when the decision is [`Decision::Append`].
    pub fn offer(&mut self, batch: &OfferedBatch) -> Decision {
        let decision = self.decide(batch);
        if let Decision::Append { base_offset, last_offset } = decision {
            self.next_offset = last_offset + 1;
            if batch.producer_id >= 0 {
                let appended = AppendedBatch {
                    epoch: batch.epoch,
                    first_sequence: batch.base_sequence,
                    last_sequence: batch.last_sequence(),
                    base_offset,
                    last_offset,
                    max_timestamp_ms: batch.max_timestamp_ms,
                };
                self.producers.entry(batch.producer_id).or_default().push(appended);
            }
        }
        decision
    }

    /// Forgets every producer whose newest timestamp is older than `now_ms - state_ms_max`; returns
    /// the ids forgotten.
    pub fn expire(&mut self, now_ms: i64, state_ms_max: i64) -> Vec<i64> {
        let cutoff = i128::from(now_ms) - i128::from(state_ms_max);
        let forgotten: Vec<i64> = self
            .producer_ids()
            .into_iter()
            .filter(|producer_id| i128::from(self.view(*producer_id).expect("known").last_timestamp_ms) < cutoff)
            .collect();
        for producer_id in &forgotten {
            self.producers.remove(producer_id);
        }
        forgotten
    }

    /// What the real table must hold for `producer_id` (`None`: nothing).
    pub fn view(&self, producer_id: i64) -> Option<ProducerView> {
        let batches = self.batches_of(producer_id);
        let newest = batches.last()?;
        Some(ProducerView {
            epoch: newest.epoch,
            last_batches: self
                .remembered(producer_id)
                .iter()
                .map(|batch| (batch.first_sequence, batch.last_sequence, batch.base_offset, batch.last_offset))
                .collect(),
            last_timestamp_ms: batches.iter().map(|batch| batch.max_timestamp_ms).max().expect("not empty"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: i64, epoch: i16, base_sequence: i32, record_count: i32) -> OfferedBatch {
        OfferedBatch { producer_id, epoch, base_sequence, record_count, max_timestamp_ms: 1_000 }
    }

    #[test]
    fn in_order_batches_append_and_retries_of_the_last_five_are_duplicates() {
        let mut model = IdempotentModel::new();
        for n in 0..7 {
            assert_eq!(
                model.offer(&batch(3, 0, n * 2, 2)),
                Decision::Append { base_offset: i64::from(n) * 2, last_offset: i64::from(n) * 2 + 1 }
            );
        }
        assert_eq!(model.offer(&batch(3, 0, 4, 2)), Decision::Duplicate { base_offset: 4, last_offset: 5 });
        assert_eq!(model.offer(&batch(3, 0, 12, 2)), Decision::Duplicate { base_offset: 12, last_offset: 13 });
        // The first two batches left the window; a retry with a different length is no retry.
        assert_eq!(model.offer(&batch(3, 0, 2, 2)), Decision::OutOfOrder { expected: 14 });
        assert_eq!(model.offer(&batch(3, 0, 12, 1)), Decision::OutOfOrder { expected: 14 });
        assert_eq!(model.offer(&batch(3, 0, 15, 1)), Decision::OutOfOrder { expected: 14 });
        assert_eq!(model.next_offset(), 14, "nothing but appends moves the log end");
        assert_eq!(model.view(3).unwrap().last_batches.first(), Some(&(4, 5, 4, 5)));
        assert_eq!(model.batches_of(3).len(), 7, "the model itself forgets nothing");
    }

    #[test]
    fn unknown_producers_start_at_zero_in_any_epoch() {
        let mut model = IdempotentModel::new();
        assert_eq!(model.offer(&batch(1, 0, 1, 1)), Decision::UnknownProducer);
        assert_eq!(model.offer(&batch(1, 2, 0, 3)), Decision::Append { base_offset: 0, last_offset: 2 });
        assert_eq!(model.view(1).unwrap().epoch, 2);
        assert_eq!(model.offer(&batch(NO_PRODUCER_ID, -1, -1, 2)), Decision::Append { base_offset: 3, last_offset: 4 });
        assert_eq!(model.offer(&batch(NO_PRODUCER_ID, -1, -1, 2)), Decision::Append { base_offset: 5, last_offset: 6 });
        assert_eq!(model.producer_ids(), vec![1], "a batch without a producer id leaves no state");
    }

    #[test]
    fn older_epochs_are_fenced_and_newer_ones_start_over() {
        let mut model = IdempotentModel::new();
        model.offer(&batch(1, 1, 0, 1));
        model.offer(&batch(1, 1, 1, 1));
        assert_eq!(model.offer(&batch(1, 0, 0, 1)), Decision::Fenced { current: 1 });
        assert_eq!(model.offer(&batch(1, 2, 2, 1)), Decision::OutOfOrder { expected: 0 });
        assert_eq!(model.offer(&batch(1, 2, 0, 1)), Decision::Append { base_offset: 2, last_offset: 2 });
        // Epoch 1's batch at sequence 1 is not a retry any more, and epoch 1 is fenced.
        assert_eq!(model.offer(&batch(1, 2, 1, 1)), Decision::Append { base_offset: 3, last_offset: 3 });
        assert_eq!(model.offer(&batch(1, 1, 1, 1)), Decision::Fenced { current: 2 });
        assert_eq!(model.view(1).unwrap().last_batches, vec![(0, 0, 2, 2), (1, 1, 3, 3)]);
    }

    #[test]
    fn sequences_wrap_from_i32_max_to_zero() {
        let mut model = IdempotentModel::new();
        model.offer(&batch(1, 0, 0, 1));
        assert_eq!(
            model.offer(&batch(1, 0, 1, i32::MAX - 2)),
            Decision::Append { base_offset: 1, last_offset: 2_147_483_645 }
        );
        assert_eq!(model.view(1).unwrap().last_batches[1].1, i32::MAX - 2);
        model.offer(&batch(1, 0, i32::MAX - 1, 4));
        assert_eq!(model.view(1).unwrap().last_batches[2].1, 1, "MAX-1, MAX, 0, 1");
        assert_eq!(
            model.offer(&batch(1, 0, i32::MAX - 1, 4)),
            Decision::Duplicate { base_offset: 2_147_483_646, last_offset: 2_147_483_649 }
        );
        assert_eq!(model.offer(&batch(1, 0, 3, 1)), Decision::OutOfOrder { expected: 2 });
        assert!(matches!(model.offer(&batch(1, 0, 2, 1)), Decision::Append { .. }));
    }

    #[test]
    fn a_retry_wins_over_the_expected_sequence_after_a_full_wrap() {
        let mut model = IdempotentModel::new();
        model.offer(&batch(1, 0, 0, 1));
        model.offer(&batch(1, 0, 1, i32::MAX));
        // A full wrap later, sequence 0 comes round again: expected, but also a retry of batch 0.
        assert_eq!(model.decide(&batch(1, 0, 0, 1)), Decision::Duplicate { base_offset: 0, last_offset: 0 });
        assert_eq!(
            model.offer(&batch(1, 0, 0, 2)),
            Decision::Append { base_offset: 2_147_483_648, last_offset: 2_147_483_649 }
        );
    }

    #[test]
    fn expiry_forgets_producers_idle_longer_than_the_limit() {
        let mut model = IdempotentModel::new();
        model.offer(&OfferedBatch { max_timestamp_ms: 500, ..batch(1, 0, 0, 1) });
        model.offer(&OfferedBatch { max_timestamp_ms: 100, ..batch(1, 0, 1, 1) });
        model.offer(&OfferedBatch { max_timestamp_ms: 399, ..batch(2, 0, 0, 1) });
        assert_eq!(model.view(1).unwrap().last_timestamp_ms, 500, "the largest, not the last");
        assert_eq!(model.expire(1_000, 600), vec![2], "older than 400 goes; 500 stays");
        assert_eq!(model.expire(1_100, 600), Vec::<i64>::new(), "exactly now - max stays");
        assert_eq!(model.offer(&batch(2, 0, 1, 1)), Decision::UnknownProducer);
        assert_eq!(model.offer(&batch(2, 0, 0, 1)), Decision::Append { base_offset: 3, last_offset: 3 });
        assert_eq!(model.expire(2_000, 0), vec![1, 2]);
        assert_eq!(model.next_offset(), 4, "expiry forgets producers, never the log");
    }
}
