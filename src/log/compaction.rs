//! Compaction (Kafka's `compact` cleanup policy, ADR 0022): the sealed segments below the high
//! watermark keep only the latest record of each key, on [`PartitionLog`].
//!
//! In: the offset compaction may clean below (the caller's high watermark, never past the durable
//! end), the time, and how long a tombstone (a record with a null value) is kept. Out: the same log
//! with fewer records, and a [`CompactionReport`].
//!
//! # What is kept
//! A record with a key survives when no record of that key follows it in the cleaned range, except
//! a tombstone whose timestamp is more than `delete_retention_ms` old, which goes too. Records
//! without a key are kept (a compacted topic refuses them on produce; older ones stay). Offsets never
//! change and the log never gets a gap: a batch that keeps some records keeps its header (offsets,
//! epoch, producer, timestamps, codec) with only those records; a run of batches that lose every
//! record becomes one *filler* batch without records covering their offsets
//! ([`Batch::filler`]; one run per leader epoch, so the epoch runs recovery and reads rely on do not
//! change); a batch the idempotent producers' dedup table holds (each producer's last few) stays,
//! emptied, so the table recovery rebuilds from the log is the one in memory (Kafka keeps this
//! state too, in snapshots the cleaner does not touch).
//!
//! # Crash safety: a redo file
//! Each segment is rewritten in place, through `{base:020}.{next:020}.cleaned`:
//! 1. the new content is written to the `.cleaned` file, which is synced, then the directory;
//! 2. the content is copied over the segment's `.log`, which is cut to the new length and synced;
//! 3. the index files are rebuilt from the new content, sealed and synced;
//! 4. the `.cleaned` file is removed and the directory synced.
//!
//! Recovery ([`finish_interrupted`], before anything else in `open`) finishes step 2 for every
//! `.cleaned` file that is whole (its batches scan to exactly `next`, the offset its name gives)
//! and whose segment still has its `.log`, empties that segment's index files (rebuilt from the
//! scan), and removes every `.cleaned` file. A `.cleaned` file that is not whole was never
//! durable, so step 2 had not begun: the `.log` holds the old content. Either way a crash leaves
//! the old segment or the new one, never a mix.
//!
//! # Limits
//! The key map of one pass holds at most [`COMPACTION_KEYS_MAX`] distinct keys (copied out of the
//! read buffers): a pass cleans the prefix of the segments whose keys fit, so a log with more distinct
//! keys than that in its sealed segments is only partly compacted. Each pass reads every cleanable segment twice
//! (map, then rewrite); segments are rewritten one by one (never merged), and only when something
//! in them goes.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::retention::FailIfAbandoned;
use super::{segment, LogError, PartitionLog, Segment};
use crate::batch::{peek_batch_size, Batch, StoredRecord, BATCH_LENGTH_PREFIX_BYTES};
use crate::producer_state::ProducerStates;
use crate::storage::{Disk, DiskFile};
use crate::types::{LeaderEpoch, Offset, TimestampMs};

/// The most keys one compaction pass maps (about 100 MiB for 1 M keys of 64 bytes).
pub const COMPACTION_KEYS_MAX: usize = 1 << 20;
/// How much of a segment a pass reads at a time.
const READ_CHUNK_BYTES: usize = 1 << 20;
const CLEANED_EXT: &str = "cleaned";

/// What one compaction pass is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Only segments that end at or below this are cleaned (the high watermark, at most the durable
    /// end: nothing uncommitted is compacted).
    pub clean_below: Offset,
    pub now_ms: TimestampMs,
    /// A tombstone older than this (by its timestamp) is removed; a younger one is kept.
    pub delete_retention_ms: i64,
}

/// What a pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactionReport {
    /// Sealed segments the pass looked at.
    pub segments_cleanable: usize,
    pub segments_rewritten: usize,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The latest offset of every key in the segments a pass cleans.
type KeyMap = BTreeMap<Bytes, Offset>;

/// The `.cleaned` file that rewrites segment `base`, which ends at `next`.
fn cleaned_name(dir: &str, base: Offset, next: Offset) -> String {
    format!("{dir}/{:020}.{:020}.{CLEANED_EXT}", base.0, next.0)
}

/// Parses `{base:020}.{next:020}.cleaned`.
fn parse_cleaned_name(name: &str) -> Option<(Offset, Offset)> {
    let stem = name.strip_suffix(".cleaned")?;
    let (base, next) = stem.split_once('.')?;
    let number = |digits: &str| {
        (digits.len() == 20 && digits.bytes().all(|byte| byte.is_ascii_digit())).then(|| digits.parse::<i64>().ok())?
    };
    Some((Offset(number(base)?), Offset(number(next)?)))
}

/// Every batch of a segment's `.log` file, in order, read a chunk at a time. Each is parsed (CRC,
/// framing); a bad one is [`LogError::Corrupt`].
struct Batches<'a, F: DiskFile> {
    file: &'a F,
    end: u64,
    position: u64,
    window: Bytes,
    window_position: u64,
}

impl<'a, F: DiskFile> Batches<'a, F> {
    fn new(file: &'a F, end: u64) -> Self {
        Batches { file, end, position: 0, window: Bytes::new(), window_position: 0 }
    }

    /// Makes the window hold `[position, position + len)`.
    fn fill(&mut self, len: usize) -> Result<(), LogError> {
        let window_end = self.window_position + self.window.len() as u64;
        if self.position + len as u64 <= window_end && self.position >= self.window_position {
            return Ok(());
        }
        let want = (len.max(READ_CHUNK_BYTES) as u64).min(self.end - self.position) as usize;
        self.window = self.file.read_at(self.position, want)?;
        self.window_position = self.position;
        if self.window.len() < len {
            return Err(self.corrupt(format!("file ends {} bytes into a {len}-byte batch", self.window.len())));
        }
        Ok(())
    }

    fn corrupt(&self, reason: String) -> LogError {
        LogError::Corrupt { offset: Offset(-1), reason: format!("compaction read at byte {}: {reason}", self.position) }
    }

    fn next_batch(&mut self) -> Result<Option<Batch>, LogError> {
        if self.position >= self.end {
            return Ok(None);
        }
        self.fill(BATCH_LENGTH_PREFIX_BYTES)?;
        let start = (self.position - self.window_position) as usize;
        let size = peek_batch_size(&self.window[start..]).map_err(|error| self.corrupt(error.to_string()))?;
        self.fill(size)?;
        let start = (self.position - self.window_position) as usize;
        let batch =
            Batch::parse(self.window.slice(start..start + size)).map_err(|error| self.corrupt(error.to_string()))?;
        self.position += size as u64;
        Ok(Some(batch))
    }
}

/// The records of `batch` (inflated), or `Corrupt`.
fn records_of(batch: &Batch) -> Result<Vec<StoredRecord>, LogError> {
    batch.records().collect::<Result<Vec<_>, _>>().map_err(|error| LogError::Corrupt {
        offset: batch.base_offset(),
        reason: format!("compaction: records do not decode: {error}"),
    })
}

/// A run of consecutive batches that lost every record: one filler replaces them.
struct Run {
    base: Offset,
    last: Offset,
    epoch: LeaderEpoch,
    base_timestamp: TimestampMs,
    max_timestamp: TimestampMs,
}

/// Builds a segment's new content batch by batch.
struct Rewriter<'a> {
    keys: &'a KeyMap,
    producers: &'a ProducerStates,
    policy: CompactionPolicy,
    out: Vec<Batch>,
    run: Option<Run>,
    changed: bool,
    records_removed: u64,
    tombstones_removed: u64,
}

impl Rewriter<'_> {
    fn keeps(&mut self, record: &StoredRecord) -> bool {
        let Some(key) = &record.key else { return true };
        if self.keys.get(key).is_some_and(|latest| *latest > record.offset) {
            self.records_removed += 1;
            return false;
        }
        let expired = record.timestamp_ms < self.policy.now_ms.saturating_sub(self.policy.delete_retention_ms);
        if record.value.is_none() && expired {
            self.tombstones_removed += 1;
            return false;
        }
        true
    }

    /// A batch the dedup table holds for an idempotent producer (its last few) stays, even
    /// emptied, so the table recovery rebuilds from the log is the one in memory.
    fn is_in_producer_table(&self, batch: &Batch) -> bool {
        let producer = batch.producer().producer_id;
        producer.0 >= 0
            && self
                .producers
                .get(producer)
                .is_some_and(|entry| entry.batches.iter().any(|meta| meta.last_offset == batch.last_offset()))
    }

    fn push(&mut self, batch: Batch) -> Result<(), LogError> {
        let records = records_of(&batch)?;
        let kept: Vec<StoredRecord> = records.iter().filter(|record| self.keeps(record)).cloned().collect();
        // A batch an earlier pass emptied joins a run (a filler, or a producer's batch that is no
        // longer its last); it changes nothing on its own.
        let keep_as_is =
            if records.is_empty() { self.is_in_producer_table(&batch) } else { kept.len() == records.len() };
        if keep_as_is {
            self.flush();
            self.out.push(batch);
            return Ok(());
        }
        self.changed |= !records.is_empty();
        if !kept.is_empty() || self.is_in_producer_table(&batch) {
            self.flush();
            self.out.push(batch.with_records(&kept));
            return Ok(());
        }
        let joins = self.run.as_ref().is_some_and(|run| {
            run.epoch == batch.leader_epoch() && batch.last_offset().0 - run.base.0 <= i64::from(i32::MAX)
        });
        if !joins {
            self.flush();
        }
        let run = self.run.get_or_insert(Run {
            base: batch.base_offset(),
            last: batch.last_offset(),
            epoch: batch.leader_epoch(),
            base_timestamp: batch.base_timestamp(),
            max_timestamp: batch.max_timestamp(),
        });
        run.last = batch.last_offset();
        run.base_timestamp = run.base_timestamp.min(batch.base_timestamp());
        run.max_timestamp = run.max_timestamp.max(batch.max_timestamp());
        Ok(())
    }

    fn flush(&mut self) {
        if let Some(run) = self.run.take() {
            self.out.push(Batch::filler(run.base, run.last, run.epoch, run.base_timestamp, run.max_timestamp));
        }
    }
}

impl<D: Disk> PartitionLog<D> {
    /// One compaction pass (module doc): maps the latest offset of every key in the cleanable
    /// segments (sealed, not the active one, ending at or below `policy.clean_below`, no sync in
    /// flight on them), then rewrites each of them that loses anything, crash-safely. Offsets, the
    /// log start and end, the epoch runs and the producer table do not change. On an I/O error or
    /// corrupt data, or if the future is dropped half-way, the log is failed and must be reopened
    /// (recovery finishes or forgets the interrupted rewrite).
    pub async fn compact(&mut self, policy: CompactionPolicy) -> Result<CompactionReport, LogError> {
        self.check_failed()?;
        let cleanable = self.cleanable_below(policy.clean_below);
        let abandoned = FailIfAbandoned::arm(&self.shared);
        let result = self.compact_segments(&cleanable, policy).await;
        abandoned.disarm();
        let report = self.fail_on_error(result)?;
        self.check_invariants();
        if report.segments_rewritten > 0 {
            tracing::info!(
                dir = self.dir,
                rewritten = report.segments_rewritten,
                records_removed = report.records_removed,
                tombstones_removed = report.tombstones_removed,
                bytes_before = report.bytes_before,
                bytes_after = report.bytes_after,
                "log: compacted"
            );
        }
        Ok(report)
    }

    /// The bases of the sealed segments (oldest first, never the active one) that end at or below
    /// `clean_below`, up to the first one a sync in flight still holds.
    fn cleanable_below(&self, clean_below: Offset) -> Vec<Offset> {
        self.oldest_segments_while(|segment| {
            segment.next_offset <= clean_below && segment.sealed && !self.pending_seals.contains(&segment.base_offset)
        })
    }

    async fn compact_segments(
        &mut self,
        cleanable: &[Offset],
        policy: CompactionPolicy,
    ) -> Result<CompactionReport, LogError> {
        let (keys, mapped) = self.map_keys(cleanable)?;
        let mut report = CompactionReport { segments_cleanable: mapped, ..CompactionReport::default() };
        for &base in &cleanable[..mapped] {
            let segment = &self.segments[&base];
            let mut rewriter = Rewriter {
                keys: &keys,
                producers: &self.producers,
                policy,
                out: Vec::new(),
                run: None,
                changed: false,
                records_removed: 0,
                tombstones_removed: 0,
            };
            let mut batches = Batches::new(&segment.log, segment.log_bytes);
            while let Some(batch) = batches.next_batch()? {
                rewriter.push(batch)?;
            }
            rewriter.flush();
            if !rewriter.changed {
                continue;
            }
            report.records_removed += rewriter.records_removed;
            report.tombstones_removed += rewriter.tombstones_removed;
            report.bytes_before += segment.log_bytes;
            let out = std::mem::take(&mut rewriter.out);
            report.bytes_after += self.rewrite_segment(base, &out).await?;
            report.segments_rewritten += 1;
        }
        Ok(report)
    }

    /// The latest offset of each key in the segments `cleanable`, and how many of them (a prefix)
    /// the map covers whole: it stops before the segment that would take it past
    /// [`COMPACTION_KEYS_MAX`].
    fn map_keys(&self, cleanable: &[Offset]) -> Result<(KeyMap, usize), LogError> {
        let mut keys = KeyMap::new();
        for (mapped, base) in cleanable.iter().enumerate() {
            let segment = &self.segments[base];
            let mut segment_keys = KeyMap::new();
            let mut batches = Batches::new(&segment.log, segment.log_bytes);
            while let Some(batch) = batches.next_batch()? {
                for record in records_of(&batch)? {
                    if let Some(key) = record.key {
                        // A copy: the record's key is a slice of a whole read window.
                        segment_keys.insert(Bytes::copy_from_slice(&key), record.offset);
                    }
                }
            }
            let new_keys = segment_keys.keys().filter(|key| !keys.contains_key(*key)).count();
            if keys.len() + new_keys > COMPACTION_KEYS_MAX {
                tracing::warn!(dir = self.dir, base = base.0, "log: compaction key map full; the rest waits");
                return Ok((keys, mapped));
            }
            keys.extend(segment_keys);
        }
        Ok((keys, cleanable.len()))
    }

    /// Replaces segment `base`'s content with `batches` (same offsets) through the redo file (module
    /// doc), rebuilds and seals its indexes, and returns its new size.
    async fn rewrite_segment(&mut self, base: Offset, batches: &[Batch]) -> Result<u64, LogError> {
        let next = self.segments[&base].next_offset;
        let cleaned_path = cleaned_name(&self.dir, base, next);
        let cleaned = self.disk.open(&cleaned_path, true)?;
        cleaned.set_len(0)?;
        let mut length = 0u64;
        for batch in batches {
            cleaned.write_at(length, batch.as_bytes())?;
            length += batch.len() as u64;
        }
        cleaned.sync().await?;
        self.disk.sync_dir(&self.dir).await?;
        let interval = self.config.index_interval_bytes;
        let segment = self.segments.get_mut(&base).expect("a cleanable segment is in the log");
        copy_over(&cleaned, &segment.log, length).await?;
        rebuild_sealed_indexes(segment, interval).await?;
        self.disk.remove(&cleaned_path)?;
        self.disk.sync_dir(&self.dir).await?;
        Ok(length)
    }
}

/// Copies the first `length` bytes of `from` over `to`, cuts `to` there and syncs it.
async fn copy_over<F: DiskFile>(from: &F, to: &F, length: u64) -> Result<(), LogError> {
    let mut position = 0u64;
    while position < length {
        let chunk = from.read_at(position, READ_CHUNK_BYTES.min((length - position) as usize))?;
        if chunk.is_empty() {
            return Err(LogError::Corrupt {
                offset: Offset(-1),
                reason: "compaction: redo file shorter than written".into(),
            });
        }
        to.write_at(position, &chunk)?;
        position += chunk.len() as u64;
    }
    to.set_len(length)?;
    to.sync().await?;
    Ok(())
}

/// Rebuilds a sealed segment's in-memory and on-disk indexes from its (rewritten) `.log`, seals them
/// and syncs both index files.
async fn rebuild_sealed_indexes<F: DiskFile>(segment: &mut Segment<F>, interval: u32) -> Result<(), LogError> {
    let scan = segment::scan(&segment.log, segment.base_offset, interval, &mut ProducerStates::new())?;
    if scan.stopped_because.is_some() || scan.next_offset != segment.next_offset {
        let reason = format!("compaction: the rewritten segment does not scan whole: {:?}", scan.stopped_because);
        return Err(LogError::Corrupt { offset: scan.next_offset, reason });
    }
    segment.log_bytes = scan.valid_bytes;
    segment.index = scan.index;
    segment.indexer = scan.indexer;
    segment.rewrite_indexes(true)?;
    segment.offset_index.sync().await?;
    segment.time_index.sync().await?;
    segment.dirty = segment::Dirty::default();
    Ok(())
}

/// Recovery's first step (module doc): finishes the copy of every whole `.cleaned` file whose
/// segment still has its `.log` (and empties that segment's index files, so recovery rebuilds
/// them), and removes every `.cleaned` file. True if the directory changed.
pub(super) async fn finish_interrupted<D: Disk>(disk: &D, dir: &str, interval: u32) -> Result<bool, LogError> {
    let mut changed = false;
    let names = disk.list(dir)?;
    for name in &names {
        let Some((base, next)) = parse_cleaned_name(name) else { continue };
        let path = format!("{dir}/{name}");
        let cleaned = disk.open(&path, false)?;
        let scan = segment::scan(&cleaned, base, interval, &mut ProducerStates::new())?;
        let whole = scan.stopped_because.is_none() && scan.next_offset == next && scan.valid_bytes == cleaned.len()?;
        let has_log = names.contains(&format!("{:020}.log", base.0));
        if whole && has_log {
            let log = disk.open(&segment::log_name(dir, base), false)?;
            copy_over(&cleaned, &log, scan.valid_bytes).await?;
            for index in [segment::offset_index_name(dir, base), segment::time_index_name(dir, base)] {
                let file = disk.open(&index, true)?;
                file.set_len(0)?;
                file.sync().await?;
            }
            tracing::warn!(dir, base = base.0, "log recovery: finished an interrupted compaction of the segment");
        }
        disk.remove(&path)?;
        changed = true;
    }
    Ok(changed)
}
