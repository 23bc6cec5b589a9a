//! The idempotent producers' dedup table (`keel::producer_state`) against the reference model in
//! `keel_model::idempotent`.
//!
//! Random sequences of operations run on both: offer a batch (a few producer ids and sometimes none,
//! epochs 0..=3, sequences mostly the expected next one or near it, zero, near the wrap at
//! `i32::MAX`, or a retry of one of the producer's recent batches; now and then a batch so long that
//! the next ones wrap), expire at a time, and round-trip the table through a snapshot. The leader
//! does what the broker will: `check`, then `apply` at the log's next offset only on `Append`. Every
//! verdict is compared with the model's decision (offsets included), and after every operation each
//! producer's epoch, remembered batches and newest timestamp are compared with the model's view.
//!
//! A second property replays the leader's log (every appended batch, in order, with the expiries
//! where they happened) into a "follower" table that only `apply`s, with a snapshot round trip at a
//! random point as recovery does: it must end equal to the leader's table.

use keel::producer_state::{BatchIdentity, ProducerEntry, ProducerStates, Verdict, PRODUCER_BATCHES_KEPT};
use keel::types::{Offset, ProducerEpoch, ProducerId, Sequence};
use keel_model::idempotent::{
    sequence_plus, Decision, IdempotentModel, OfferedBatch, ProducerView, BATCHES_REMEMBERED, NO_PRODUCER_ID,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// How an offered batch's base sequence is chosen, relative to what the model holds.
#[derive(Debug, Clone)]
enum SequencePick {
    /// The next sequence of the producer (0 if unknown).
    Expected,
    /// The next sequence plus a small delta (a gap, or an old sequence).
    NearExpected(i8),
    Zero,
    /// `i32::MAX - n`.
    NearWrap(u8),
    /// The `n`-th newest batch the model remembers of this producer (any epoch; also ones out of the
    /// real table's window), offered again with its own epoch and length.
    Retry(u8),
    Any(i32),
}

#[derive(Debug, Clone)]
enum EpochPick {
    /// The producer's current epoch (0 if unknown).
    Current,
    Specific(i16),
}

#[derive(Debug, Clone)]
enum Op {
    Offer {
        /// `NO_PRODUCER_ID` (not idempotent) or a small id.
        producer_id: i64,
        epoch: EpochPick,
        sequence: SequencePick,
        record_count: i32,
        /// The clock moves on by this much before the batch.
        advance_ms: i64,
        /// The batch's max timestamp is the clock plus this (clients' clocks are not ours).
        timestamp_skew_ms: i64,
    },
    Expire {
        advance_ms: i64,
        state_ms_max: i64,
    },
    SnapshotRoundTrip,
}

fn sequence_pick() -> impl Strategy<Value = SequencePick> {
    prop_oneof![
        6 => Just(SequencePick::Expected),
        2 => (-3i8..=3).prop_map(SequencePick::NearExpected),
        1 => Just(SequencePick::Zero),
        1 => (0u8..6).prop_map(SequencePick::NearWrap),
        4 => (0u8..8).prop_map(SequencePick::Retry),
        1 => (0..=i32::MAX).prop_map(SequencePick::Any),
    ]
}

/// Mostly 1..=4 records; rarely nearly 2^31, so that the producer's next batches wrap.
fn record_count() -> impl Strategy<Value = i32> {
    prop_oneof![40 => 1i32..=4, 1 => (i32::MAX - 8)..=i32::MAX]
}

fn op() -> impl Strategy<Value = Op> {
    let offer =
        (
            prop_oneof![8 => 0i64..4, 1 => Just(NO_PRODUCER_ID)],
            prop_oneof![6 => Just(EpochPick::Current), 1 => (0i16..=3).prop_map(EpochPick::Specific)],
            sequence_pick(),
            record_count(),
            0i64..=10,
            -20i64..=20,
        )
            .prop_map(|(producer_id, epoch, sequence, record_count, advance_ms, timestamp_skew_ms)| {
                Op::Offer { producer_id, epoch, sequence, record_count, advance_ms, timestamp_skew_ms }
            });
    prop_oneof![
        20 => offer,
        2 => (0i64..=200, 0i64..=300).prop_map(|(advance_ms, state_ms_max)| Op::Expire { advance_ms, state_ms_max }),
        1 => Just(Op::SnapshotRoundTrip),
    ]
}

/// What a follower sees, in log order.
#[derive(Debug, Clone)]
enum LogEvent {
    Appended(BatchIdentity, Offset),
    Expired { now_ms: i64, state_ms_max: i64 },
}

struct Harness {
    leader: ProducerStates,
    model: IdempotentModel,
    /// The leader's log end: where the next appended batch goes.
    log_end: i64,
    events: Vec<LogEvent>,
    now_ms: i64,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            leader: ProducerStates::new(),
            model: IdempotentModel::new(),
            log_end: 0,
            events: Vec::new(),
            now_ms: 1_000,
        }
    }

    /// The batch `Op::Offer` describes, given what the model holds of the producer.
    fn offered_batch(&self, producer_id: i64, epoch: &EpochPick, sequence: &SequencePick, count: i32) -> OfferedBatch {
        let timestamp = self.now_ms;
        if producer_id == NO_PRODUCER_ID {
            return OfferedBatch {
                producer_id,
                epoch: -1,
                base_sequence: -1,
                record_count: count,
                max_timestamp_ms: timestamp,
            };
        }
        let known = self.model.batches_of(producer_id);
        let current_epoch = known.last().map_or(0, |newest| newest.epoch);
        let expected = known.last().map_or(0, |newest| sequence_plus(newest.last_sequence, 1));
        let mut batch = OfferedBatch {
            producer_id,
            epoch: match epoch {
                EpochPick::Current => current_epoch,
                EpochPick::Specific(epoch) => *epoch,
            },
            base_sequence: 0,
            record_count: count,
            max_timestamp_ms: timestamp,
        };
        batch.base_sequence = match sequence {
            SequencePick::Expected => expected,
            SequencePick::NearExpected(delta) => sequence_plus(expected, i64::from(*delta)),
            SequencePick::Zero => 0,
            SequencePick::NearWrap(n) => i32::MAX - i32::from(*n),
            SequencePick::Any(sequence) => *sequence,
            SequencePick::Retry(n) => match known.iter().rev().nth(usize::from(*n) % known.len().max(1)) {
                Some(original) => {
                    batch.epoch = original.epoch;
                    batch.record_count = i32::try_from(original.last_offset - original.base_offset + 1).unwrap();
                    original.first_sequence
                }
                None => 0,
            },
        };
        batch
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Offer { producer_id, epoch, sequence, record_count, advance_ms, timestamp_skew_ms } => {
                self.now_ms += advance_ms;
                let mut batch = self.offered_batch(*producer_id, epoch, sequence, *record_count);
                batch.max_timestamp_ms += timestamp_skew_ms;
                self.offer(&batch);
            }
            Op::Expire { advance_ms, state_ms_max } => {
                self.now_ms += advance_ms;
                let expired = self.leader.expire(self.now_ms, *state_ms_max);
                let forgotten = self.model.expire(self.now_ms, *state_ms_max);
                assert_eq!(expired, forgotten.len(), "expire({}, {state_ms_max}) forgot {forgotten:?}", self.now_ms);
                self.events.push(LogEvent::Expired { now_ms: self.now_ms, state_ms_max: *state_ms_max });
            }
            Op::SnapshotRoundTrip => {
                let decoded = ProducerStates::decode(&self.leader.encode()).expect("a snapshot decodes");
                assert_eq!(decoded, self.leader, "a snapshot round trip changed the table");
                self.leader = decoded;
            }
        }
        self.check_views();
    }

    /// The leader's step: check, append on `Append` only; the verdict must be the model's decision.
    fn offer(&mut self, offered: &OfferedBatch) {
        let batch = BatchIdentity {
            producer_id: ProducerId(offered.producer_id),
            producer_epoch: ProducerEpoch(offered.epoch),
            base_sequence: Sequence(offered.base_sequence),
            record_count: offered.record_count,
            max_timestamp_ms: offered.max_timestamp_ms,
        };
        let verdict = self.leader.check(&batch);
        let as_decision = match verdict {
            Verdict::Append => {
                let base_offset = self.log_end;
                Decision::Append { base_offset, last_offset: base_offset + i64::from(offered.record_count) - 1 }
            }
            Verdict::Duplicate { base_offset, last_offset } => {
                Decision::Duplicate { base_offset: base_offset.0, last_offset: last_offset.0 }
            }
            Verdict::OutOfOrder { expected } => Decision::OutOfOrder { expected: expected.0 },
            Verdict::Fenced { current } => Decision::Fenced { current: current.0 },
            Verdict::UnknownProducer => Decision::UnknownProducer,
        };
        let decision = self.model.offer(offered);
        assert_eq!(as_decision, decision, "verdicts differ for {offered:?}");
        if verdict == Verdict::Append {
            self.leader.apply(&batch, Offset(self.log_end));
            self.events.push(LogEvent::Appended(batch, Offset(self.log_end)));
            self.log_end += i64::from(offered.record_count);
        }
        assert_eq!(self.log_end, self.model.next_offset());
    }

    /// Every producer's state in the real table is the model's view of it, and no other is held.
    fn check_views(&self) {
        let real_ids: Vec<i64> = self.leader.iter().map(|(producer_id, _)| producer_id.0).collect();
        assert_eq!(real_ids, self.model.producer_ids(), "the producers held differ");
        for producer_id in real_ids {
            let entry = self.leader.get(ProducerId(producer_id)).expect("listed");
            let view = self.model.view(producer_id).expect("listed");
            assert_eq!(view_of(entry), view, "producer {producer_id} differs");
        }
    }
}

fn view_of(entry: &ProducerEntry) -> ProducerView {
    ProducerView {
        epoch: entry.epoch.0,
        last_batches: entry
            .batches
            .iter()
            .map(|meta| (meta.first_sequence.0, meta.last_sequence.0, meta.base_offset.0, meta.last_offset.0))
            .collect(),
        last_timestamp_ms: entry.last_timestamp_ms,
    }
}

fn proptest_config() -> ProptestConfig {
    // PROPTEST_CASES overrides the default.
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(1024);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/producer_state_model.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn the_dedup_table_decides_as_the_model(ops in prop::collection::vec(op(), 1..200)) {
        assert_eq!(PRODUCER_BATCHES_KEPT, BATCHES_REMEMBERED);
        let mut harness = Harness::new();
        for op in &ops {
            harness.apply(op);
        }
    }

    #[test]
    fn a_follower_applying_the_log_holds_the_leaders_table(
        ops in prop::collection::vec(op(), 1..200),
        snapshot_pick in any::<usize>(),
    ) {
        let mut harness = Harness::new();
        for op in &ops {
            harness.apply(op);
        }
        let events = &harness.events;
        let snapshot_at = snapshot_pick % (events.len() + 1);
        let mut follower = ProducerStates::new();
        for (index, event) in events.iter().enumerate() {
            if index == snapshot_at {
                follower = ProducerStates::decode(&follower.encode()).expect("a snapshot decodes");
            }
            match event {
                LogEvent::Appended(batch, base_offset) => follower.apply(batch, *base_offset),
                LogEvent::Expired { now_ms, state_ms_max } => {
                    follower.expire(*now_ms, *state_ms_max);
                }
            }
        }
        prop_assert_eq!(&follower, &harness.leader);
    }
}
