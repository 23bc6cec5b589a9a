//! Idempotent producers' state in one partition: the dedup table (ADR 0015).
//!
//! Every batch of an idempotent producer carries `(producer id, producer epoch, base sequence)`;
//! sequences count records, per producer and partition, from 0 (wrapping at `i32::MAX` as Kafka's
//! do). For each producer the table keeps its epoch, the last [`PRODUCER_BATCHES_KEPT`] batches it
//! appended (sequences and offsets) and the newest timestamp it wrote. The leader asks
//! [`ProducerStates::check`] before appending a batch and records it with [`ProducerStates::apply`];
//! followers and recovery apply every batch of the log in order, so any replica holding the same log
//! holds the same table, and a new leader dedups exactly as the old one did.
//!
//! # The rules (`check`)
//! - A batch without a producer id (-1) is not idempotent: always appended.
//! - Unknown producer: sequence 0 starts it; any other sequence is [`Verdict::UnknownProducer`] (its
//!   state expired, or its first batch never arrived): the client bumps its epoch and starts again at
//!   0 (KIP-360), which cannot duplicate because this replica holds none of its batches.
//! - An epoch older than the producer's is [`Verdict::Fenced`]. A newer epoch must start at sequence 0.
//! - Same epoch: a batch whose first and last sequences are those of one of the kept batches is a
//!   retry, [`Verdict::Duplicate`] with the original offsets; the sequence after the last batch's is
//!   appended; anything else is [`Verdict::OutOfOrder`].
//!
//! # Pure
//! No I/O, clocks or randomness: time comes in as an argument (`expire`). The snapshot codec
//! ([`ProducerStates::encode`]) carries a CRC and its decoder never panics on untrusted bytes.
//!
//! Two copies live per replica, fed the same batches: the replica core's (it also holds appends not
//! yet written) and the log's (only what is in the log: rebuilt by recovery and truncation, written
//! as snapshots at segment roll).

use std::collections::{BTreeMap, VecDeque};

use crate::batch::Batch;
use crate::types::{Offset, ProducerEpoch, ProducerId, Sequence, TimestampMs};

/// Batches kept per producer for dedup: the client keeps at most this many in flight per partition.
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// What identifies one batch for dedup, read from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchIdentity {
    pub producer_id: ProducerId,
    pub producer_epoch: ProducerEpoch,
    pub base_sequence: Sequence,
    /// Records in the batch (`last_offset_delta + 1`), at least 1.
    pub record_count: i32,
    pub max_timestamp_ms: TimestampMs,
}

impl BatchIdentity {
    pub fn of(batch: &Batch) -> BatchIdentity {
        let producer = batch.producer();
        BatchIdentity {
            producer_id: producer.producer_id,
            producer_epoch: producer.producer_epoch,
            base_sequence: producer.base_sequence,
            record_count: batch.last_offset_delta().saturating_add(1).max(1),
            max_timestamp_ms: batch.max_timestamp(),
        }
    }

    /// True for a batch of an idempotent producer (a producer id and a sequence).
    pub fn is_idempotent(&self) -> bool {
        self.producer_id.0 >= 0 && self.producer_epoch.0 >= 0 && self.base_sequence.0 >= 0
    }

    pub fn last_sequence(&self) -> Sequence {
        add_sequence(self.base_sequence, self.record_count - 1)
    }
}

/// `sequence + delta`, wrapping from `i32::MAX` to 0 as Kafka's sequences do.
pub fn add_sequence(sequence: Sequence, delta: i32) -> Sequence {
    let modulus = i64::from(i32::MAX) + 1;
    Sequence(((i64::from(sequence.0) + i64::from(delta)).rem_euclid(modulus)) as i32)
}

/// One appended batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_sequence: Sequence,
    pub last_sequence: Sequence,
    pub base_offset: Offset,
    pub last_offset: Offset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: ProducerEpoch,
    /// Oldest first; never empty; at most [`PRODUCER_BATCHES_KEPT`].
    pub batches: VecDeque<BatchMeta>,
    /// The newest `max_timestamp` of its batches (what expiry measures from).
    pub last_timestamp_ms: TimestampMs,
}

impl ProducerEntry {
    pub fn last(&self) -> &BatchMeta {
        self.batches.back().expect("a producer entry holds at least one batch")
    }
}

/// What the leader does with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Append,
    /// A retry of a batch already in the log: answer with its offsets, do not append.
    Duplicate {
        base_offset: Offset,
        last_offset: Offset,
    },
    /// A gap, or a retry older than the kept batches: `expected` is the next sequence.
    OutOfOrder {
        expected: Sequence,
    },
    /// The batch's epoch is older than the producer's `current`.
    Fenced {
        current: ProducerEpoch,
    },
    /// No state for this producer and a sequence other than 0.
    UnknownProducer,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("producer snapshot truncated")]
    Truncated,
    #[error("producer snapshot version {0} unknown")]
    BadVersion(u8),
    #[error("producer snapshot CRC mismatch")]
    BadCrc,
    #[error("producer snapshot malformed: {0}")]
    Malformed(&'static str),
}

const SNAPSHOT_VERSION: u8 = 1;
const SNAPSHOT_CRC_SEED: &[u8] = b"keel-producers";

/// The dedup table of one partition replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    entries: BTreeMap<ProducerId, ProducerEntry>,
}

impl ProducerStates {
    pub fn new() -> ProducerStates {
        ProducerStates::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, producer_id: ProducerId) -> Option<&ProducerEntry> {
        self.entries.get(&producer_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ProducerId, &ProducerEntry)> {
        self.entries.iter()
    }

    /// What the leader must do with this batch (module doc: the rules).
    pub fn check(&self, batch: &BatchIdentity) -> Verdict {
        if !batch.is_idempotent() {
            return Verdict::Append;
        }
        let Some(entry) = self.entries.get(&batch.producer_id) else {
            return if batch.base_sequence == Sequence(0) { Verdict::Append } else { Verdict::UnknownProducer };
        };
        if batch.producer_epoch < entry.epoch {
            return Verdict::Fenced { current: entry.epoch };
        }
        if batch.producer_epoch > entry.epoch {
            return if batch.base_sequence == Sequence(0) {
                Verdict::Append
            } else {
                Verdict::OutOfOrder { expected: Sequence(0) }
            };
        }
        let last_sequence = batch.last_sequence();
        if let Some(kept) = entry
            .batches
            .iter()
            .find(|kept| kept.first_sequence == batch.base_sequence && kept.last_sequence == last_sequence)
        {
            return Verdict::Duplicate { base_offset: kept.base_offset, last_offset: kept.last_offset };
        }
        let expected = add_sequence(entry.last().last_sequence, 1);
        if batch.base_sequence == expected {
            Verdict::Append
        } else {
            Verdict::OutOfOrder { expected }
        }
    }

    /// Records a batch appended at `base_offset` (the leader after [`Verdict::Append`]; followers
    /// and recovery for every batch of the log, in order). A batch with an epoch older than the
    /// producer's changes nothing (a correct leader never appends one).
    pub fn apply(&mut self, batch: &BatchIdentity, base_offset: Offset) {
        if !batch.is_idempotent() {
            return;
        }
        let meta = BatchMeta {
            first_sequence: batch.base_sequence,
            last_sequence: batch.last_sequence(),
            base_offset,
            last_offset: Offset(base_offset.0 + i64::from(batch.record_count) - 1),
        };
        match self.entries.get_mut(&batch.producer_id) {
            None => {
                let entry = ProducerEntry {
                    epoch: batch.producer_epoch,
                    batches: VecDeque::from([meta]),
                    last_timestamp_ms: batch.max_timestamp_ms,
                };
                self.entries.insert(batch.producer_id, entry);
            }
            Some(entry) if batch.producer_epoch < entry.epoch => {}
            Some(entry) => {
                if batch.producer_epoch > entry.epoch {
                    entry.epoch = batch.producer_epoch;
                    entry.batches.clear();
                }
                entry.batches.push_back(meta);
                while entry.batches.len() > PRODUCER_BATCHES_KEPT {
                    entry.batches.pop_front();
                }
                entry.last_timestamp_ms = entry.last_timestamp_ms.max(batch.max_timestamp_ms);
            }
        }
    }

    /// Forgets producers whose newest batch is older than `now_ms - state_ms_max`; returns how many.
    pub fn expire(&mut self, now_ms: TimestampMs, state_ms_max: i64) -> usize {
        let before = self.entries.len();
        let cutoff = now_ms.saturating_sub(state_ms_max);
        self.entries.retain(|_, entry| entry.last_timestamp_ms >= cutoff);
        before - self.entries.len()
    }

    /// The snapshot bytes: `version u8 | count u32 | entries | crc32c u32`, each entry `producer_id
    /// i64 | epoch i16 | last_timestamp i64 | batch count u8 | batches (first_seq i32, last_seq i32,
    /// base_offset i64, last_offset i64)`, big-endian; the CRC (seeded "keel-producers") covers
    /// everything before it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.entries.len() * (19 + PRODUCER_BATCHES_KEPT * 24) + 4);
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for (producer_id, entry) in &self.entries {
            out.extend_from_slice(&producer_id.0.to_be_bytes());
            out.extend_from_slice(&entry.epoch.0.to_be_bytes());
            out.extend_from_slice(&entry.last_timestamp_ms.to_be_bytes());
            out.push(entry.batches.len() as u8);
            for meta in &entry.batches {
                out.extend_from_slice(&meta.first_sequence.0.to_be_bytes());
                out.extend_from_slice(&meta.last_sequence.0.to_be_bytes());
                out.extend_from_slice(&meta.base_offset.0.to_be_bytes());
                out.extend_from_slice(&meta.last_offset.0.to_be_bytes());
            }
        }
        let crc = snapshot_crc(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes [`ProducerStates::encode`]'s bytes; never panics on untrusted input.
    pub fn decode(bytes: &[u8]) -> Result<ProducerStates, SnapshotError> {
        if bytes.len() < 9 {
            return Err(SnapshotError::Truncated);
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if snapshot_crc(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
            return Err(SnapshotError::BadCrc);
        }
        let mut reader = Reader { bytes: body };
        let version = reader.u8()?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::BadVersion(version));
        }
        let count = reader.u32()?;
        let mut states = ProducerStates::new();
        for _ in 0..count {
            let (producer_id, entry) = reader.entry()?;
            if states.entries.insert(producer_id, entry).is_some() {
                return Err(SnapshotError::Malformed("a producer id appears twice"));
            }
        }
        if !reader.bytes.is_empty() {
            return Err(SnapshotError::Malformed("bytes after the last entry"));
        }
        Ok(states)
    }
}

fn snapshot_crc(body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(SNAPSHOT_CRC_SEED), body)
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        if self.bytes.len() < N {
            return Err(SnapshotError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        Ok(head.try_into().expect("N bytes"))
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    fn i32(&mut self) -> Result<i32, SnapshotError> {
        Ok(i32::from_be_bytes(self.take()?))
    }

    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_be_bytes(self.take()?))
    }

    fn entry(&mut self) -> Result<(ProducerId, ProducerEntry), SnapshotError> {
        let producer_id = ProducerId(self.i64()?);
        let epoch = ProducerEpoch(i16::from_be_bytes(self.take()?));
        let last_timestamp_ms = self.i64()?;
        let batch_count = usize::from(self.u8()?);
        if producer_id.0 < 0 || epoch.0 < 0 || batch_count == 0 || batch_count > PRODUCER_BATCHES_KEPT {
            return Err(SnapshotError::Malformed("an entry's id, epoch or batch count is out of range"));
        }
        let mut batches = VecDeque::with_capacity(batch_count);
        for _ in 0..batch_count {
            let meta = BatchMeta {
                first_sequence: Sequence(self.i32()?),
                last_sequence: Sequence(self.i32()?),
                base_offset: Offset(self.i64()?),
                last_offset: Offset(self.i64()?),
            };
            if meta.first_sequence.0 < 0 || meta.last_sequence.0 < 0 || meta.last_offset < meta.base_offset {
                return Err(SnapshotError::Malformed("a batch's sequences or offsets are out of range"));
            }
            batches.push_back(meta);
        }
        Ok((producer_id, ProducerEntry { epoch, batches, last_timestamp_ms }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer: i64, epoch: i16, sequence: i32, records: i32) -> BatchIdentity {
        BatchIdentity {
            producer_id: ProducerId(producer),
            producer_epoch: ProducerEpoch(epoch),
            base_sequence: Sequence(sequence),
            record_count: records,
            max_timestamp_ms: 1_000,
        }
    }

    #[test]
    fn in_order_batches_append_and_retries_of_the_last_five_get_their_offsets() {
        let mut states = ProducerStates::new();
        let mut offset = 0;
        for n in 0..7 {
            let b = batch(7, 0, n * 2, 2);
            assert_eq!(states.check(&b), Verdict::Append, "batch {n}");
            states.apply(&b, Offset(offset));
            offset += 2;
        }
        assert_eq!(
            states.check(&batch(7, 0, 4, 2)),
            Verdict::Duplicate { base_offset: Offset(4), last_offset: Offset(5) }
        );
        assert_eq!(
            states.check(&batch(7, 0, 12, 2)),
            Verdict::Duplicate { base_offset: Offset(12), last_offset: Offset(13) }
        );
        // Batches 0 and 1 left the window: a retry that old is out of order, never appended again.
        assert_eq!(states.check(&batch(7, 0, 2, 2)), Verdict::OutOfOrder { expected: Sequence(14) });
        assert_eq!(states.check(&batch(7, 0, 16, 2)), Verdict::OutOfOrder { expected: Sequence(14) });
        assert_eq!(states.check(&batch(7, 0, 4, 1)), Verdict::OutOfOrder { expected: Sequence(14) });
        assert_eq!(states.check(&batch(7, 0, 14, 5)), Verdict::Append);
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut states = ProducerStates::new();
        assert_eq!(states.check(&batch(1, 0, 3, 1)), Verdict::UnknownProducer);
        states.apply(&batch(1, 2, 0, 1), Offset(0));
        assert_eq!(states.check(&batch(1, 1, 1, 1)), Verdict::Fenced { current: ProducerEpoch(2) });
        assert_eq!(states.check(&batch(1, 3, 1, 1)), Verdict::OutOfOrder { expected: Sequence(0) });
        assert_eq!(states.check(&batch(1, 3, 0, 1)), Verdict::Append);
        states.apply(&batch(1, 3, 0, 1), Offset(1));
        assert_eq!(states.get(ProducerId(1)).unwrap().batches.len(), 1, "a new epoch forgets the old batches");
        assert_eq!(states.check(&batch(-1, -1, -1, 1)), Verdict::Append, "not idempotent");
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut states = ProducerStates::new();
        states.apply(&batch(1, 0, 0, 1), Offset(0));
        states.apply(&batch(1, 0, 1, i32::MAX - 1), Offset(1));
        assert_eq!(states.get(ProducerId(1)).unwrap().last().last_sequence, Sequence(i32::MAX - 1));
        assert_eq!(states.check(&batch(1, 0, i32::MAX, 3)), Verdict::Append);
        states.apply(&batch(1, 0, i32::MAX, 3), Offset(i64::from(i32::MAX)));
        assert_eq!(states.get(ProducerId(1)).unwrap().last().last_sequence, Sequence(1));
        assert_eq!(states.check(&batch(1, 0, 2, 1)), Verdict::Append);
    }

    #[test]
    fn expiry_forgets_idle_producers() {
        let mut states = ProducerStates::new();
        states.apply(&BatchIdentity { max_timestamp_ms: 100, ..batch(1, 0, 0, 1) }, Offset(0));
        states.apply(&BatchIdentity { max_timestamp_ms: 500, ..batch(2, 0, 0, 1) }, Offset(1));
        assert_eq!(states.expire(1_000, 600), 1);
        assert!(states.get(ProducerId(1)).is_none());
        assert_eq!(states.check(&batch(1, 0, 1, 1)), Verdict::UnknownProducer);
    }

    #[test]
    fn snapshots_round_trip_and_reject_damage() {
        let mut states = ProducerStates::new();
        for producer in 0..4 {
            for n in 0..(producer + 3) {
                states.apply(&batch(producer, 1, n as i32, 1), Offset(producer * 100 + n));
            }
        }
        let bytes = states.encode();
        assert_eq!(ProducerStates::decode(&bytes), Ok(states.clone()));
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x10;
            assert!(ProducerStates::decode(&damaged).is_err(), "a flip at byte {position} went unnoticed");
        }
        for len in 0..bytes.len() {
            assert!(ProducerStates::decode(&bytes[..len]).is_err(), "a snapshot cut to {len} bytes decoded");
        }
    }
}
