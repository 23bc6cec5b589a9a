//! One segment: a `.log` file of concatenated batches and its two sparse indexes.
//!
//! In: batches to append (already validated), positions to read. Out: batch headers, whole-batch byte
//! ranges, scan results for recovery. A segment knows nothing about other segments or about syncs;
//! [`super::PartitionLog`] decides when to roll, seal and sync.

use bytes::Bytes;

use super::index::{self, Indexer, OffsetEntry, Seal, SegmentIndex, TimeEntry};
use super::LogError;
use crate::batch::{peek_batch_size, Batch, BATCH_HEADER_BYTES, BATCH_LENGTH_PREFIX_BYTES, MAGIC_V2};
use crate::leader_epochs::EpochEntry;
use crate::producer_state::{BatchIdentity, ProducerStates};
use crate::storage::DiskFile;
use crate::types::{LeaderEpoch, Offset, TimestampMs};

// Field positions in a v2 batch header (see the layout table in `crate::batch`). Reads walk headers
// without parsing records, so they need these few fields directly.
const HEADER_OFFSET_LEADER_EPOCH: usize = 12;
const HEADER_OFFSET_MAGIC: usize = 16;
const HEADER_OFFSET_CRC: usize = 17;
const HEADER_OFFSET_CRC_START: usize = 21;
const HEADER_OFFSET_LAST_OFFSET_DELTA: usize = 23;
const HEADER_OFFSET_MAX_TIMESTAMP: usize = 35;

/// How much of a `.log` file the recovery scan reads at a time.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// The fields of a batch header that the log walks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    pub size_bytes: usize,
    pub last_offset_delta: i32,
    pub max_timestamp: TimestampMs,
    /// Not covered by the batch CRC: reads check it against the log's epoch runs instead.
    pub leader_epoch: LeaderEpoch,
}

impl BatchHeader {
    /// Parses the header at the start of `bytes`, which must hold at least [`BATCH_HEADER_BYTES`].
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, String> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(format!("batch header truncated: {} of {BATCH_HEADER_BYTES} bytes", bytes.len()));
        }
        let size_bytes = peek_batch_size(bytes).map_err(|error| error.to_string())?;
        if bytes[HEADER_OFFSET_MAGIC] != MAGIC_V2 {
            return Err(format!("bad batch magic {}", bytes[HEADER_OFFSET_MAGIC]));
        }
        let base_offset = Offset(i64::from_be_bytes(bytes[0..8].try_into().expect("8 bytes")));
        let last_offset_delta = i32::from_be_bytes(
            bytes[HEADER_OFFSET_LAST_OFFSET_DELTA..HEADER_OFFSET_LAST_OFFSET_DELTA + 4].try_into().expect("4 bytes"),
        );
        if last_offset_delta < 0
            || base_offset.0 < 0
            || base_offset.0.checked_add(last_offset_delta as i64 + 1).is_none()
        {
            return Err(format!("bad batch offsets: base {base_offset}, last delta {last_offset_delta}"));
        }
        let max_timestamp = i64::from_be_bytes(
            bytes[HEADER_OFFSET_MAX_TIMESTAMP..HEADER_OFFSET_MAX_TIMESTAMP + 8].try_into().expect("8 bytes"),
        );
        let leader_epoch = LeaderEpoch(i32::from_be_bytes(
            bytes[HEADER_OFFSET_LEADER_EPOCH..HEADER_OFFSET_LEADER_EPOCH + 4].try_into().expect("4 bytes"),
        ));
        Ok(BatchHeader { base_offset, size_bytes, last_offset_delta, max_timestamp, leader_epoch })
    }

    pub fn last_offset(&self) -> Offset {
        Offset(self.base_offset.0 + self.last_offset_delta as i64)
    }

    pub fn next_offset(&self) -> Offset {
        self.last_offset().next()
    }
}

/// Checks the CRC32C of one whole batch (the bytes after the CRC field).
pub fn crc_matches(batch: &[u8]) -> bool {
    batch.len() >= BATCH_HEADER_BYTES
        && u32::from_be_bytes(batch[HEADER_OFFSET_CRC..HEADER_OFFSET_CRC + 4].try_into().expect("4 bytes"))
            == crc32c::crc32c(&batch[HEADER_OFFSET_CRC_START..])
}

pub fn log_name(dir: &str, base: Offset) -> String {
    format!("{dir}/{:020}.log", base.0)
}

/// The idempotent producers' state as of the segment's base offset (ADR 0015).
pub fn producers_name(dir: &str, base: Offset) -> String {
    format!("{dir}/{:020}.producers", base.0)
}

pub fn offset_index_name(dir: &str, base: Offset) -> String {
    format!("{dir}/{:020}.index", base.0)
}

pub fn time_index_name(dir: &str, base: Offset) -> String {
    format!("{dir}/{:020}.timeindex", base.0)
}

/// Which of a segment's files have writes not yet handed to a sync.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dirty {
    pub log: bool,
    pub offset_index: bool,
    pub time_index: bool,
    /// The index files were rewritten (not only appended to): sync them even while the segment is
    /// active, so that no stale seal from before the rewrite can survive on disk.
    pub indexes_rewritten: bool,
}

pub struct Segment<F: DiskFile> {
    pub base_offset: Offset,
    /// The offset after the last batch in this segment (== `base_offset` when empty).
    pub next_offset: Offset,
    pub log: F,
    pub offset_index: F,
    pub time_index: F,
    /// Length of the `.log` file: the end of the last whole batch.
    pub log_bytes: u64,
    pub index: SegmentIndex,
    pub indexer: Indexer,
    /// A seal has been written after the index entries (it may not be durable yet).
    pub sealed: bool,
    pub dirty: Dirty,
    /// The ticket of the last `begin_sync` that was handed one of this segment's files (or its
    /// producer snapshot): while that sync is in flight, retention leaves the segment alone.
    pub sync_ticket: Option<u64>,
}

/// What a recovery scan of a `.log` file found.
pub struct ScanResult {
    /// Bytes of whole, valid, contiguous batches from the start of the file.
    pub valid_bytes: u64,
    pub next_offset: Offset,
    pub index: SegmentIndex,
    pub indexer: Indexer,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped_because: Option<String>,
    /// The leader-epoch runs of the valid batches: an entry wherever a batch's epoch differs from the
    /// previous batch's (the first batch always starts one).
    pub epochs: Vec<EpochEntry>,
}

/// Appends `(epoch, start)` to `runs` unless the last run already has that epoch.
pub fn push_epoch_run(runs: &mut Vec<EpochEntry>, epoch: LeaderEpoch, start_offset: Offset) {
    if runs.last().is_none_or(|last| last.epoch != epoch) {
        runs.push(EpochEntry { epoch, start_offset });
    }
}

impl<F: DiskFile> Segment<F> {
    pub fn relative(&self, offset: Offset) -> u32 {
        let relative = offset.0 - self.base_offset.0;
        assert!(
            (0..=u32::MAX as i64).contains(&relative),
            "offset {offset} is outside segment {} (relative {relative})",
            self.base_offset
        );
        relative as u32
    }

    /// Appends one batch (the caller checked contiguity and size) to the page cache, with the index
    /// entries due before it.
    pub fn append(&mut self, batch: &Batch) -> Result<(), LogError> {
        let position = u32::try_from(self.log_bytes).expect("segment_bytes_max keeps positions in u32");
        let relative = self.relative(batch.base_offset());
        if let Some((offset_entry, time_entry)) =
            self.indexer.on_batch(relative, position, batch.len() as u32, batch.max_timestamp())
        {
            self.write_index_entries(offset_entry, time_entry)?;
        }
        self.log.write_at(self.log_bytes, batch.as_bytes())?;
        self.dirty.log = true;
        self.log_bytes += batch.len() as u64;
        self.next_offset = batch.next_offset();
        Ok(())
    }

    fn write_index_entries(&mut self, offset_entry: OffsetEntry, time_entry: TimeEntry) -> Result<(), LogError> {
        assert!(!self.sealed, "segment {}: index entry after the seal", self.base_offset);
        let mut buf = Vec::with_capacity(index::TIME_ENTRY_BYTES);
        index::encode_offset_entry(offset_entry, &mut buf);
        self.offset_index.write_at((self.index.offsets.len() * index::OFFSET_ENTRY_BYTES) as u64, &buf)?;
        buf.clear();
        index::encode_time_entry(time_entry, &mut buf);
        self.time_index.write_at((self.index.times.len() * index::TIME_ENTRY_BYTES) as u64, &buf)?;
        self.index.offsets.push(offset_entry);
        self.index.times.push(time_entry);
        self.dirty.offset_index = true;
        self.dirty.time_index = true;
        Ok(())
    }

    /// Writes the seal after the index entries. Only once the segment's data is durable: a seal is
    /// what lets recovery trust the segment without scanning it.
    pub fn write_seal(&mut self) -> Result<(), LogError> {
        if self.sealed {
            return Ok(());
        }
        let (offset_seal, time_seal) = index::encode_seal(Seal {
            relative_next_offset: self.relative(self.next_offset),
            log_bytes: u32::try_from(self.log_bytes).expect("segment_bytes_max keeps positions in u32"),
            max_timestamp: self.indexer.max_timestamp,
        });
        self.offset_index.write_at((self.index.offsets.len() * index::OFFSET_ENTRY_BYTES) as u64, &offset_seal)?;
        self.time_index.write_at((self.index.times.len() * index::TIME_ENTRY_BYTES) as u64, &time_seal)?;
        self.sealed = true;
        self.dirty.offset_index = true;
        self.dirty.time_index = true;
        Ok(())
    }

    /// Replaces both index files with the in-memory entries (and a seal if `seal`).
    pub fn rewrite_indexes(&mut self, seal: bool) -> Result<(), LogError> {
        let (offset_bytes, time_bytes) = self.index.encode();
        self.offset_index.set_len(0)?;
        self.offset_index.write_at(0, &offset_bytes)?;
        self.time_index.set_len(0)?;
        self.time_index.write_at(0, &time_bytes)?;
        self.sealed = false;
        self.dirty.offset_index = true;
        self.dirty.time_index = true;
        self.dirty.indexes_rewritten = true;
        if seal {
            self.write_seal()?;
        }
        Ok(())
    }

    /// Reads the header of the batch at `position`, which must start at offset `expected`.
    pub fn header_at(&self, position: u64, expected: Offset) -> Result<BatchHeader, LogError> {
        if position >= self.log_bytes {
            return Err(self.corrupt(expected, position, "batch header past the end of the segment".to_string()));
        }
        let bytes = self.log.read_at(position, BATCH_HEADER_BYTES)?;
        let header = BatchHeader::parse(&bytes).map_err(|reason| self.corrupt(expected, position, reason))?;
        if position + header.size_bytes as u64 > self.log_bytes {
            let reason = format!("batch of {} bytes runs past the end", header.size_bytes);
            return Err(self.corrupt(expected, position, reason));
        }
        if header.base_offset != expected {
            let reason = format!("base offset {} where {expected} was expected", header.base_offset);
            return Err(self.corrupt(expected, position, reason));
        }
        Ok(header)
    }

    /// A [`LogError::Corrupt`] for the batch that should start at `offset`, at byte `position`.
    pub fn corrupt(&self, offset: Offset, position: u64, reason: String) -> LogError {
        LogError::Corrupt { offset, reason: format!("segment {} at byte {position}: {reason}", self.base_offset) }
    }

    /// The position and header of the batch that contains `offset` (which must be in this segment):
    /// from the index entry at or before it, walking batch headers.
    pub fn locate(&self, offset: Offset) -> Result<(u64, BatchHeader), LogError> {
        debug_assert!(self.base_offset <= offset && offset < self.next_offset);
        let entry = self.index.floor(self.relative(offset));
        let mut position = u64::from(entry.position);
        let mut expected = Offset(self.base_offset.0 + i64::from(entry.relative_offset));
        loop {
            let header = self.header_at(position, expected)?;
            if header.last_offset() >= offset {
                return Ok((position, header));
            }
            position += header.size_bytes as u64;
            expected = header.next_offset();
        }
    }

    /// The first batch in this segment with `max_timestamp >= timestamp`.
    pub fn find_timestamp(&self, timestamp: TimestampMs) -> Result<Option<BatchHeader>, LogError> {
        if self.indexer.max_timestamp < timestamp {
            return Ok(None);
        }
        let entry = self.index.floor(self.index.time_floor(timestamp));
        let mut position = u64::from(entry.position);
        let mut expected = Offset(self.base_offset.0 + i64::from(entry.relative_offset));
        while position < self.log_bytes {
            let header = self.header_at(position, expected)?;
            if header.max_timestamp >= timestamp {
                return Ok(Some(header));
            }
            position += header.size_bytes as u64;
            expected = header.next_offset();
        }
        let reason = format!("max timestamp {} but no batch reaches {timestamp}", self.indexer.max_timestamp);
        Err(self.corrupt(self.base_offset, position, reason))
    }

    /// Removes the batches from `position` (a batch boundary, where `offset` starts) on.
    pub fn truncate_at(&mut self, position: u64, offset: Offset) -> Result<(), LogError> {
        let relative = self.relative(offset);
        self.log.set_len(position)?;
        self.log_bytes = position;
        self.next_offset = offset;
        self.dirty.log = true;
        self.index.truncate(relative);
        // Rebuild the indexer state from the last remaining entry: its running max timestamp plus
        // the batches between it and the cut (at most about one index interval).
        let (start_position, start_relative, mut max_timestamp) =
            match (self.index.offsets.last(), self.index.times.last()) {
                (Some(offset_entry), Some(time_entry)) => {
                    (u64::from(offset_entry.position), offset_entry.relative_offset, time_entry.max_timestamp_before)
                }
                _ => (0, 0, TimestampMs::MIN),
            };
        let mut walk = start_position;
        let mut expected = Offset(self.base_offset.0 + i64::from(start_relative));
        while walk < position {
            let header = self.header_at(walk, expected)?;
            max_timestamp = max_timestamp.max(header.max_timestamp);
            walk += header.size_bytes as u64;
            expected = header.next_offset();
        }
        self.indexer.max_timestamp = max_timestamp;
        self.indexer.bytes_since_entry = position - start_position;
        self.rewrite_indexes(false)
    }
}

/// Scans a `.log` file from its start: batch after batch, each checked for length, magic, CRC,
/// record framing and contiguous offsets; stops at the first that fails.
/// Every valid batch is also recorded in `producers` (the idempotent producers' dedup state), in
/// log order.
pub fn scan<F: DiskFile>(
    log: &F,
    base_offset: Offset,
    interval_bytes: u32,
    producers: &mut ProducerStates,
) -> Result<ScanResult, LogError> {
    let file_bytes = log.len()?;
    let mut window = Bytes::new();
    let mut window_position = 0u64;
    let mut position = 0u64;
    let mut expected = base_offset;
    let mut index = SegmentIndex::default();
    let mut indexer = Indexer::new(interval_bytes);
    let mut epochs = Vec::new();
    // Makes `window` hold [at, at + len) if the file has it; false if the file is shorter.
    let fill = |window: &mut Bytes, window_position: &mut u64, at: u64, len: usize| -> Result<bool, LogError> {
        let window_end = *window_position + window.len() as u64;
        if at >= *window_position && at + len as u64 <= window_end {
            return Ok(true);
        }
        *window = log.read_at(at, len.max(SCAN_CHUNK_BYTES))?;
        *window_position = at;
        Ok(window.len() >= len)
    };
    let stopped_because = loop {
        if position >= file_bytes {
            break None;
        }
        if !fill(&mut window, &mut window_position, position, BATCH_LENGTH_PREFIX_BYTES)? {
            break Some("torn batch length prefix".to_string());
        }
        let start = (position - window_position) as usize;
        let size = match peek_batch_size(&window[start..]) {
            Ok(size) => size,
            Err(error) => break Some(error.to_string()),
        };
        if !fill(&mut window, &mut window_position, position, size)? {
            break Some(format!("torn batch: {size} bytes declared, file ends first"));
        }
        let start = (position - window_position) as usize;
        let batch = match Batch::parse(window.slice(start..start + size)) {
            Ok(batch) => batch,
            Err(error) => break Some(error.to_string()),
        };
        if batch.base_offset() != expected {
            break Some(format!("base offset {} where {expected} was expected", batch.base_offset()));
        }
        let relative_next = batch.next_offset().0 - base_offset.0;
        let end = position + size as u64;
        if relative_next > u32::MAX as i64 || end > u32::MAX as u64 {
            break Some("segment exceeds the u32 offset or position range".to_string());
        }
        let relative = (batch.base_offset().0 - base_offset.0) as u32;
        if let Some((offset_entry, time_entry)) =
            indexer.on_batch(relative, position as u32, size as u32, batch.max_timestamp())
        {
            index.offsets.push(offset_entry);
            index.times.push(time_entry);
        }
        push_epoch_run(&mut epochs, batch.leader_epoch(), batch.base_offset());
        producers.apply(&BatchIdentity::of(&batch), batch.base_offset());
        position = end;
        expected = batch.next_offset();
    };
    Ok(ScanResult { valid_bytes: position, next_offset: expected, index, indexer, stopped_because, epochs })
}
