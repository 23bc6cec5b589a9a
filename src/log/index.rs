//! The sparse offset and time indexes of one segment, and their on-disk entries.
//!
//! Both index files are arrays of fixed-size, big-endian entries, each with its own CRC32C:
//!
//! ```text
//! .index      relative_offset u32 | position u32            | crc u32   (12 bytes)
//! .timeindex  max_timestamp_before i64 | relative_offset u32 | crc u32  (16 bytes)
//! ```
//!
//! An offset-index entry says "the batch whose base offset is `base + relative_offset` starts at byte
//! `position` of the .log file". The time-index entry written with it says "every batch before that
//! offset in this segment has `max_timestamp <= max_timestamp_before`" (the running maximum, so the
//! entries are sorted and can be binary-searched even when producers' timestamps go backwards).
//!
//! A sealed segment ends both files with one *seal* entry of the same shape, whose CRC is seeded
//! differently (`crc32c_append(crc32c("keel-seal"), ..)`), so an ordinary entry is never taken for a
//! seal or the other way round:
//!
//! ```text
//! .index seal      relative_next_offset u32 | log_bytes u32 | crc
//! .timeindex seal  segment_max_timestamp i64 | relative_next_offset u32 | crc
//! ```

use crate::types::TimestampMs;

pub const OFFSET_ENTRY_BYTES: usize = 12;
pub const TIME_ENTRY_BYTES: usize = 16;

fn seal_seed() -> u32 {
    crc32c::crc32c(b"keel-seal")
}

fn entry_crc(payload: &[u8], seal: bool) -> u32 {
    if seal {
        crc32c::crc32c_append(seal_seed(), payload)
    } else {
        crc32c::crc32c(payload)
    }
}

/// One offset-index entry: the batch at `base + relative_offset` starts at `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// One time-index entry: batches before `base + relative_offset` have timestamps `<= max_timestamp_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub max_timestamp_before: TimestampMs,
    pub relative_offset: u32,
}

/// What a segment's seal records: its length and next offset (and max timestamp) when it was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    pub relative_next_offset: u32,
    pub log_bytes: u32,
    pub max_timestamp: TimestampMs,
}

pub fn encode_offset_entry(entry: OffsetEntry, out: &mut Vec<u8>) {
    encode_offset_raw(entry.relative_offset, entry.position, false, out);
}

pub fn encode_time_entry(entry: TimeEntry, out: &mut Vec<u8>) {
    encode_time_raw(entry.max_timestamp_before, entry.relative_offset, false, out);
}

/// The two seal entries: (for .index, for .timeindex).
pub fn encode_seal(seal: Seal) -> (Vec<u8>, Vec<u8>) {
    let mut offset = Vec::with_capacity(OFFSET_ENTRY_BYTES);
    encode_offset_raw(seal.relative_next_offset, seal.log_bytes, true, &mut offset);
    let mut time = Vec::with_capacity(TIME_ENTRY_BYTES);
    encode_time_raw(seal.max_timestamp, seal.relative_next_offset, true, &mut time);
    (offset, time)
}

fn encode_offset_raw(a: u32, b: u32, seal: bool, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&a.to_be_bytes());
    out.extend_from_slice(&b.to_be_bytes());
    let crc = entry_crc(&out[start..], seal);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn encode_time_raw(timestamp: i64, relative_offset: u32, seal: bool, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&relative_offset.to_be_bytes());
    let crc = entry_crc(&out[start..], seal);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// What the CRC of one raw entry says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Entry,
    Seal,
    Corrupt,
}

fn kind(raw: &[u8]) -> Kind {
    let (payload, crc) = raw.split_at(raw.len() - 4);
    let stored = u32_at(crc, 0);
    if stored == entry_crc(payload, false) {
        Kind::Entry
    } else if stored == entry_crc(payload, true) {
        Kind::Seal
    } else {
        Kind::Corrupt
    }
}

/// The checked contents of a sealed segment's two index files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedIndexes {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
    pub seal: Seal,
}

/// Decodes the index files of a segment that claims to be sealed. `None` unless every entry's CRC
/// holds, both files end with matching seals, the entries pair up, are strictly increasing and lie
/// inside the sealed length: anything else sends the segment to a full scan.
pub fn decode_sealed(offset_file: &[u8], time_file: &[u8]) -> Option<SealedIndexes> {
    if offset_file.len() % OFFSET_ENTRY_BYTES != 0 || time_file.len() % TIME_ENTRY_BYTES != 0 {
        return None;
    }
    let n_offset = offset_file.len() / OFFSET_ENTRY_BYTES;
    let n_time = time_file.len() / TIME_ENTRY_BYTES;
    if n_offset == 0 || n_offset != n_time {
        return None;
    }
    let mut offsets = Vec::with_capacity(n_offset - 1);
    let mut times = Vec::with_capacity(n_offset - 1);
    let mut seal = None;
    for (idx, (raw_offset, raw_time)) in
        offset_file.chunks_exact(OFFSET_ENTRY_BYTES).zip(time_file.chunks_exact(TIME_ENTRY_BYTES)).enumerate()
    {
        let expected = if idx + 1 == n_offset { Kind::Seal } else { Kind::Entry };
        if kind(raw_offset) != expected || kind(raw_time) != expected {
            return None;
        }
        let a = u32_at(raw_offset, 0);
        let b = u32_at(raw_offset, 4);
        let timestamp = i64::from_be_bytes(raw_time[0..8].try_into().expect("8 bytes"));
        let time_relative = u32_at(raw_time, 8);
        if expected == Kind::Seal {
            if time_relative != a {
                return None;
            }
            seal = Some(Seal { relative_next_offset: a, log_bytes: b, max_timestamp: timestamp });
        } else {
            if time_relative != a {
                return None;
            }
            offsets.push(OffsetEntry { relative_offset: a, position: b });
            times.push(TimeEntry { max_timestamp_before: timestamp, relative_offset: a });
        }
    }
    let seal = seal?;
    let increasing = offsets
        .windows(2)
        .all(|pair| pair[0].relative_offset < pair[1].relative_offset && pair[0].position < pair[1].position)
        && times.windows(2).all(|pair| pair[0].max_timestamp_before <= pair[1].max_timestamp_before);
    let inside = offsets
        .last()
        .is_none_or(|last| last.relative_offset < seal.relative_next_offset && last.position < seal.log_bytes);
    (increasing && inside).then_some(SealedIndexes { offsets, times, seal })
}

/// The in-memory copy of one segment's indexes (they are small: one entry per
/// `index_interval_bytes` of log).
#[derive(Debug, Clone, Default)]
pub struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
}

impl SegmentIndex {
    /// The last entry at or before `relative_offset`, as (relative offset, position); (0, 0) if none.
    pub fn floor(&self, relative_offset: u32) -> OffsetEntry {
        let idx = self.offsets.partition_point(|entry| entry.relative_offset <= relative_offset);
        if idx == 0 {
            OffsetEntry { relative_offset: 0, position: 0 }
        } else {
            self.offsets[idx - 1]
        }
    }

    /// Where to start looking for the first batch with `max_timestamp >= timestamp`: the last
    /// time entry whose earlier batches are all older, as a relative offset (0 if none).
    pub fn time_floor(&self, timestamp: TimestampMs) -> u32 {
        let idx = self.times.partition_point(|entry| entry.max_timestamp_before < timestamp);
        if idx == 0 {
            0
        } else {
            self.times[idx - 1].relative_offset
        }
    }

    /// Drops the entries for batches at or after `relative_offset`.
    pub fn truncate(&mut self, relative_offset: u32) {
        self.offsets.retain(|entry| entry.relative_offset < relative_offset);
        self.times.retain(|entry| entry.relative_offset < relative_offset);
    }

    pub fn encode(&self) -> (Vec<u8>, Vec<u8>) {
        let mut offset_bytes = Vec::with_capacity(self.offsets.len() * OFFSET_ENTRY_BYTES);
        for entry in &self.offsets {
            encode_offset_entry(*entry, &mut offset_bytes);
        }
        let mut time_bytes = Vec::with_capacity(self.times.len() * TIME_ENTRY_BYTES);
        for entry in &self.times {
            encode_time_entry(*entry, &mut time_bytes);
        }
        (offset_bytes, time_bytes)
    }
}

/// Decides where index entries go. Both appends and the recovery scan feed it every batch in
/// order, so a rebuilt index is byte-for-byte the index the appends wrote.
#[derive(Debug, Clone, Copy)]
pub struct Indexer {
    pub interval_bytes: u32,
    /// Log bytes since the last entry (or since the start of the segment).
    pub bytes_since_entry: u64,
    /// Largest batch `max_timestamp` so far in this segment (`i64::MIN` when empty).
    pub max_timestamp: TimestampMs,
}

impl Indexer {
    pub fn new(interval_bytes: u32) -> Indexer {
        Indexer { interval_bytes, bytes_since_entry: 0, max_timestamp: TimestampMs::MIN }
    }

    /// Records one batch at `position`; returns the entries to write before it, if one is due.
    pub fn on_batch(
        &mut self,
        relative_offset: u32,
        position: u32,
        batch_bytes: u32,
        max_timestamp: TimestampMs,
    ) -> Option<(OffsetEntry, TimeEntry)> {
        let due = position > 0 && self.bytes_since_entry >= u64::from(self.interval_bytes);
        let entries = due.then(|| {
            self.bytes_since_entry = 0;
            (
                OffsetEntry { relative_offset, position },
                TimeEntry { max_timestamp_before: self.max_timestamp, relative_offset },
            )
        });
        self.bytes_since_entry += u64::from(batch_bytes);
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_indexes_round_trip_and_reject_any_flip() {
        let index = SegmentIndex {
            offsets: vec![
                OffsetEntry { relative_offset: 3, position: 100 },
                OffsetEntry { relative_offset: 9, position: 250 },
            ],
            times: vec![
                TimeEntry { max_timestamp_before: 5, relative_offset: 3 },
                TimeEntry { max_timestamp_before: 7, relative_offset: 9 },
            ],
        };
        let (mut offset_bytes, mut time_bytes) = index.encode();
        let seal = Seal { relative_next_offset: 12, log_bytes: 300, max_timestamp: 8 };
        let (offset_seal, time_seal) = encode_seal(seal);
        offset_bytes.extend_from_slice(&offset_seal);
        time_bytes.extend_from_slice(&time_seal);
        let decoded = decode_sealed(&offset_bytes, &time_bytes).unwrap();
        assert_eq!(decoded.offsets, index.offsets);
        assert_eq!(decoded.times, index.times);
        assert_eq!(decoded.seal, seal);
        for byte in 0..offset_bytes.len() {
            let mut corrupt = offset_bytes.clone();
            corrupt[byte] ^= 1;
            assert!(decode_sealed(&corrupt, &time_bytes).is_none(), "flip at {byte}");
        }
        for byte in 0..time_bytes.len() {
            let mut corrupt = time_bytes.clone();
            corrupt[byte] ^= 0x10;
            assert!(decode_sealed(&offset_bytes, &corrupt).is_none(), "flip at {byte}");
        }
        // Without the seal the segment is not sealed.
        let unsealed = index.encode();
        assert!(decode_sealed(&unsealed.0, &unsealed.1).is_none());
    }

    #[test]
    fn floor_lookups() {
        let index = SegmentIndex {
            offsets: vec![
                OffsetEntry { relative_offset: 3, position: 100 },
                OffsetEntry { relative_offset: 9, position: 250 },
            ],
            times: vec![
                TimeEntry { max_timestamp_before: 5, relative_offset: 3 },
                TimeEntry { max_timestamp_before: 7, relative_offset: 9 },
            ],
        };
        assert_eq!(index.floor(0).position, 0);
        assert_eq!(index.floor(3).position, 100);
        assert_eq!(index.floor(8).position, 100);
        assert_eq!(index.floor(100).position, 250);
        assert_eq!(index.time_floor(5), 0);
        assert_eq!(index.time_floor(6), 3);
        assert_eq!(index.time_floor(100), 9);
    }
}
