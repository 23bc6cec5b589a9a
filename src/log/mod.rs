//! The partition log: one partition's records as segment files in one directory, over a [`Disk`].
//!
//! In: batches stamped with the next offset ([`PartitionLog::append`]), syncs, reads, truncations,
//! retention's new log starts and a follower's reset ([`retention`]).
//! Out: whole batches as one `Bytes` (never re-encoded), offsets, segment summaries, and after a
//! crash a recovered log that is a suffix (retention moves the start) of a prefix of what was
//! appended and holds everything that was synced and not deleted.
//!
//! # On-disk format
//! A directory per partition holds, per segment, four files named by the segment's base offset
//! (the offset of its first record) in 20 decimal digits:
//!
//! - `{base:020}.log`: concatenated RecordBatch v2 batches ([`crate::batch`]), each with its own
//!   CRC32C, exactly as they were appended;
//! - `{base:020}.index`: a sparse offset index, one 12-byte entry `relative_offset u32, position
//!   u32, crc32c u32` per `index_interval_bytes` of log;
//! - `{base:020}.timeindex`: the matching sparse time index, 16-byte entries `max_timestamp_before
//!   i64, relative_offset u32, crc32c u32`;
//! - `{base:020}.producers`: the idempotent producers' table as of the batches before `base`
//!   ([`ProducerStates::encode`], CRC'd; ADR 0015), written at the roll that starts the segment and
//!   again by every recovery. Only the first segment's is ever the sole record of anything: the
//!   batches before it were deleted by retention.
//!
//! A compaction in progress ([`compaction`]) also leaves `{base:020}.{next:020}.cleaned`, the
//! segment's new content, until it has been copied over the `.log`.
//!
//! All integers are big-endian; see [`index`] for the entries and the seal. A segment rolls when the
//! next batch would take it past `segment_bytes_max`. When a rolled segment's data is known durable
//! (a sync covering its last offset succeeded), a *seal* is appended to both index files: a CRC'd
//! entry recording the segment's byte length, next offset and max timestamp, made durable by the
//! next sync. Files are not preallocated: a file's length is the end of its data, which is what lets
//! recovery and the seal check use the length at all (and keeps the format simple; revisit if
//! `fdatasync` metadata cost shows up in the benches).
//!
//! # Recovery (in [`PartitionLog::open`])
//! After a graceful [`PartitionLog::close`] of a log of at least `LogConfig::clean_close_min_bytes`
//! there is nothing to recover: the close sealed every segment (the active one too), synced
//! everything and (best effort) wrote a CRC'd clean-close record
//! ([`clean_close`]: log end, active segment, epoch runs, producer table). The next open reads and
//! removes that record (the removal is durable before the open returns), and if every segment's
//! seal matches its `.log` and the record, takes the log's state from the seals and the record
//! without reading a byte of the `.log` files (steps 3 and 4 are skipped; the active segment's seal
//! is dropped). Otherwise, and after any crash, it recovers:
//!
//! 0. An interrupted compaction is finished or forgotten ([`compaction`]'s module doc): a whole
//!    `.cleaned` file is copied over its segment's `.log` (whose index files are emptied, so step 4
//!    rebuilds them); every `.cleaned` file is removed.
//! 1. Segments are the `.log` files, in base-offset order. Index and producer files without a `.log`,
//!    and files of segments dropped below, are removed.
//! 2. Segments must be contiguous: each base offset equals the previous segment's next offset. At the
//!    first gap, that segment and every later one are removed.
//! 3. Every segment is scanned from its start, sealed or not: batch after batch is parsed
//!    ([`crate::batch::peek_batch_size`] and [`Batch::parse`] check length, magic, CRC and record
//!    framing) and offsets must be contiguous. The scan stops at the first torn, garbage, zeroed,
//!    corrupt (a bit flipped anywhere, not only in the tail) or non-contiguous batch; the file is
//!    truncated there and every later segment is removed (they follow a hole), so the log ends at the
//!    last good batch and a replica fetches the rest again from its leader. [`RecoveryReport::cut`]
//!    says where and why, and `open` logs it with the bytes cut.
//!    The producer table the scan builds starts from the first segment's `.producers` snapshot (the
//!    table as of the batches retention deleted), or empty when the first base is 0 or the snapshot
//!    is missing or fails its CRC (the producers of deleted batches are then forgotten: their next
//!    batch gets `UnknownProducer`, the client starts a new epoch). Every later segment's snapshot
//!    is written again from the scan.
//! 4. A segment that is not the last keeps its index files when it is sealed (both index files decode
//!    with valid CRCs and end in matching seals, the seal's length equals the `.log` length) and the
//!    scan agrees with the seal. Otherwise (and always for the last segment) its indexes are rebuilt
//!    from the scan, by the same code appends use, so they come out byte for byte the same; a whole
//!    segment that is not the last is sealed again.
//! 5. Everything recovery changed or scanned is synced, with the directory, before `open` returns, so
//!    `durable_end_offset() == log_end_offset()` after open (even after a process crash where the OS
//!    still held unsynced writes).
//!
//! Cost: step 3 reads and CRCs the whole log on every open after a crash, `O(log bytes)` (about a
//! second per few GiB at CRC32C and disk speeds): after a crash, a seal proves the segment was
//! written whole, not that its bytes are still the ones written. After a graceful close the open
//! costs a few small reads per segment (its index files) and one record. What that open no longer
//! finds is bit rot since the close; reads verify every batch they return, so it surfaces as
//! [`LogError::Corrupt`] at the first read of the damaged batch, and the reopen that follows scans
//! (ADR 0025). A background scrub of sealed segments would find it sooner; there is none yet.
//!
//! # Retention and reset (in [`retention`])
//! [`PartitionLog::delete_segments_before`] deletes whole segments from the start, oldest first,
//! never the active one: per segment its `.log` (which defines it for recovery), its index files,
//! then `sync_dir` before the next, so a crash leaves a suffix of the log and never a gap (recovery
//! would drop everything after a gap). Before anything goes, the `.producers` snapshot of every
//! segment a crash could leave first is made durable; a deleted segment's snapshot is removed only
//! once its `.log` removal is durable. [`PartitionLog::reset_to`] (a follower below its leader's
//! log start) deletes the same way down to the active segment, creates the empty segment at the new
//! offset (empty snapshot first) and syncs the directory, and only then removes the old active
//! segment: a crash recovers a suffix of the old log or the new empty log, never an empty directory
//! (which would restart the log at offset 0).
//!
//! # Compaction (in [`compaction`])
//! [`PartitionLog::compact`] keeps the latest record of each key in the sealed segments below a
//! given offset (ADR 0022). Offsets do not move and no gap appears: batches keep their spans with
//! fewer records (or none), runs of emptied batches become record-less fillers, one per leader
//! epoch, so every rule above (contiguity, CRCs, epoch runs) still holds. Each segment is rewritten
//! in place through its `.cleaned` redo file.
//!
//! # Corruption after recovery
//! Reads check every returned batch's CRC, offsets and leader epoch (the CRC does not cover the epoch
//! field: it is checked against the epoch runs the log records from the batches it scanned or
//! appended), so a bit flip shows up as [`LogError::Corrupt`] instead of wrong data, and fails the log
//! until it is reopened (recovery then cuts at the corrupt batch). A flip of an epoch field *before*
//! recovery passes the scan (the runs then show the flipped epoch); the owner finds it by comparing
//! the runs with the persisted epoch cache ([`PartitionLog::epoch_mismatch`]) and cuts there.
//!
//! # Durability
//! `append` writes to the page cache. [`PartitionLog::begin_sync`] syncs every file written since the
//! previous `begin_sync` (and the directory if entries changed) and resolves to the log end it covers.
//! The exception is the active segment's index files while they are only appended to: recovery
//! always rebuilds them, so they are synced once the segment has rolled (before its seal is
//! written), not on every sync; a plain append costs one `fdatasync`.
//! Syncs complete in any order, but the durable end only advances to a sync's offset once every sync
//! begun before it has succeeded too (an earlier sync may be the one that carries a file the later one
//! did not need to touch). Any failed sync poisons the log ([`LogError::Failed`]): after a failed
//! fsync the unsynced bytes are in an unknown state, so the owner must drop the log and reopen it.
//!
//! # In memory
//! Per segment: its files, length, next offset, max timestamp (from appends, the seal or recovery's
//! scan; [`PartitionLog::segment_summaries`] reports them to retention) and both sparse indexes (one
//! entry per `index_interval_bytes`, 24 bytes of memory per 4 KiB of log by default).

pub mod clean_close;
pub mod compaction;
pub mod end_checkpoint;
pub mod epoch_cache;
mod index;
pub mod retention;
mod segment;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};

use crate::batch::{Batch, BATCH_BYTES_MAX, BATCH_HEADER_BYTES};
use crate::leader_epochs::{EpochEntry, LeaderEpochs};
use crate::producer_state::{BatchIdentity, ProducerStates};
use crate::sometimes::{self, Sometimes};
use crate::storage::{Disk, DiskFile};
use crate::types::{LeaderEpoch, Offset, TimestampMs};
use clean_close::{CleanClose, CLEAN_CLOSE_FILE};
pub use retention::SegmentSummary;
use segment::{BatchHeader, Segment};

/// The ends of the names of the files this log checks or rebuilds itself: a sealed segment's index
/// files are used only when their CRCs and seal match the `.log` (recovery step 4), and the active
/// segment's are rebuilt from the scan at every open. So their unsynced writes need no sync before
/// the open-file budget closes their handle (`storage::handles::HandleBudget::self_checked`).
pub const SELF_CHECKED_FILES: [&str; 2] = [".index", ".timeindex"];

/// The largest `segment_bytes_max` accepted: positions in the index are u32, and a segment may
/// overshoot its limit by at most one batch.
pub const SEGMENT_BYTES_LIMIT: u64 = (u32::MAX as u64) - (BATCH_BYTES_MAX as u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment when the next batch would take the active one past this.
    pub segment_bytes_max: u64,
    /// Write one offset-index and one time-index entry per this many bytes of log.
    pub index_interval_bytes: u32,
    /// A graceful close writes the clean-close record ([`clean_close`]) only for a log of at least
    /// this many bytes, and never for an empty one: it costs a sealing sync, the record's sync and a directory sync, while a
    /// smaller log is scanned at its next open in less time than those fsyncs take.
    pub clean_close_min_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 128 * 1024 * 1024,
            index_interval_bytes: 4096,
            clean_close_min_bytes: clean_close::CLEAN_CLOSE_MIN_BYTES_DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes on disk are not what was appended (a bad CRC, a batch that does not start where the
    /// index says, a leader epoch that is not the one the batch was written with, ...), found by a
    /// read. `offset` is the first offset the read could not vouch for: everything below it that the
    /// read returned before is intact, nothing at or after it was returned.
    ///
    /// The log is failed by it (every later call returns [`LogError::Failed`]): the owner treats it as
    /// a storage failure and reopens the log, whose recovery truncates at the corrupt batch (see the
    /// module doc). A follower then fetches the rest again from its leader; a leader whose corruption
    /// is below its high watermark lost acknowledged data from its own copy and must resign so that an
    /// ISR member with an intact copy leads. Corrupt bytes are never returned, so never served or
    /// replicated.
    #[error("log corrupt at offset {offset}: {reason}")]
    Corrupt { offset: Offset, reason: String },
    #[error("offset {requested} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange { requested: Offset, log_start: Offset, log_end: Offset },
    #[error("batch base offset {got} where {expected} was expected")]
    NonContiguous { expected: Offset, got: Offset },
    /// A sync (or a write) failed earlier; the log must be dropped and reopened (recovered).
    #[error("log failed earlier and must be reopened")]
    Failed,
}

impl LogError {
    /// The disk is full (ENOSPC): the caller can tell its clients so instead of a generic I/O error.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, LogError::Io(error) if error.kind() == std::io::ErrorKind::StorageFull)
    }
}

/// What [`PartitionLog::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Bytes cut off `.log` files (torn or corrupt tails, segments after a hole or a gap).
    pub truncated_bytes: u64,
    pub log_start_offset: Offset,
    pub log_end_offset: Offset,
    /// Segments whose index files were rebuilt from a scan.
    pub rebuilt_indexes: usize,
    /// Bytes of batches whose CRCs recovery verified (every segment is scanned).
    pub verified_bytes: u64,
    /// Where recovery cut the log and why (a torn tail after a power loss, a corrupt batch found
    /// anywhere): the offset of the first batch dropped. `None` when nothing was cut.
    pub cut: Option<(Offset, String)>,
    /// The log was opened from its clean-close record ([`clean_close`]): nothing was scanned.
    pub clean_close: bool,
}

/// Sync bookkeeping shared with the futures `begin_sync` hands out.
struct SyncShared {
    failed: bool,
    /// Bumped by every truncation: a sync begun before one must not make later appends look durable.
    generation: u64,
    next_ticket: u64,
    /// Syncs in flight by ticket: (covered offset, generation, completed).
    in_flight: BTreeMap<u64, (Offset, u64, bool)>,
    /// Highest offset covered by a sync that, with every sync begun before it, succeeded in the
    /// current generation.
    completed: Offset,
    /// A sync begun after the last truncation has succeeded (so the truncation is durable).
    synced_since_truncation: bool,
}

impl SyncShared {
    fn advance(&mut self) {
        while let Some(entry) = self.in_flight.first_entry() {
            let (covered, generation, done) = *entry.get();
            if !done {
                break;
            }
            entry.remove();
            if generation == self.generation {
                self.completed = self.completed.max(covered);
                self.synced_since_truncation = true;
            }
        }
    }
}

fn lock(shared: &Mutex<SyncShared>) -> MutexGuard<'_, SyncShared> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Logs where recovery cut the log, if it did, and counts it for the simulation's coverage.
fn report_cut(dir: &str, report: &RecoveryReport) {
    if let Some((cut_at, reason)) = &report.cut {
        let (cut_at, truncated_bytes) = (cut_at.0, report.truncated_bytes);
        tracing::warn!(dir, cut_at, truncated_bytes, reason, "log recovery cut the log there");
        let torn = reason.contains("torn");
        sometimes::hit(if torn { Sometimes::TornTailTruncated } else { Sometimes::CorruptBatchCut });
    }
}

/// Marks the ticket done (or the log failed, if the future is dropped before it finishes).
struct TicketGuard {
    shared: Arc<Mutex<SyncShared>>,
    ticket: u64,
    finished: bool,
}

impl TicketGuard {
    fn finish(mut self, ok: bool) {
        self.finished = true;
        let mut shared = lock(&self.shared);
        if ok {
            if let Some(entry) = shared.in_flight.get_mut(&self.ticket) {
                entry.2 = true;
            }
            shared.advance();
        } else {
            shared.failed = true;
            shared.in_flight.remove(&self.ticket);
        }
    }
}

impl Drop for TicketGuard {
    fn drop(&mut self) {
        if !self.finished {
            // Abandoned mid-way: the files it was to sync are no longer marked dirty, so their
            // durability is unknown. Only a reopen (recovery) can tell.
            let mut shared = lock(&self.shared);
            shared.failed = true;
            shared.in_flight.remove(&self.ticket);
        }
    }
}

type SyncFuture = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

pub struct PartitionLog<D: Disk> {
    disk: D,
    dir: String,
    config: LogConfig,
    /// By base offset; the last one is the active segment, the only one appended to.
    segments: BTreeMap<Offset, Segment<D::File>>,
    log_end: Offset,
    durable_end: Offset,
    /// Directory entries were created or removed since the last `begin_sync`.
    dir_dirty: bool,
    /// Rolled segments still to be sealed once their data is durable.
    pending_seals: Vec<Offset>,
    /// The leader epochs the batches were written with, as runs (an entry where a batch's epoch
    /// differs from the previous batch's): built by recovery's scan and by appends. The batch CRC does
    /// not cover the epoch field, so reads check it against these.
    epoch_runs: Vec<EpochEntry>,
    /// The idempotent producers' dedup state of exactly the batches in the log (ADR 0015): built by
    /// recovery's scan, kept up by appends, rebuilt by a truncation. The replica shell hands it to
    /// its core whenever the core's copy must be replaced (open, recovery, truncation).
    producers: ProducerStates,
    /// Producer snapshots written and not yet synced (by the next `begin_sync`), by segment base.
    unsynced_snapshots: Vec<(Offset, D::File)>,
    shared: Arc<Mutex<SyncShared>>,
}

/// What recovery's scan collects from the batches it keeps.
struct Scanned<F> {
    epoch_runs: Vec<EpochEntry>,
    producers: ProducerStates,
    /// The producer snapshot recovery wrote (or, for the first segment, read) for each segment it
    /// kept, by segment base.
    snapshots: Vec<(Offset, F)>,
}

fn parent_of(dir: &str) -> &str {
    dir.trim_end_matches('/').rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// The `.log` files' base offsets (sorted), and every other segment file with its base.
type SegmentFiles = (Vec<Offset>, Vec<(Offset, String)>);

/// Parses `{20 digits}.{ext}`.
fn parse_segment_name(name: &str) -> Option<(Offset, &str)> {
    let (digits, ext) = name.split_once('.')?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let base = digits.parse::<i64>().ok()?;
    matches!(ext, "log" | "index" | "timeindex" | "producers").then_some((Offset(base), ext))
}

impl<D: Disk> PartitionLog<D> {
    /// Opens (creating if missing) the log in `dir` and recovers it; see the module doc.
    ///
    /// Steps: list the segment files; recover the segments in order, stopping at a gap or a torn
    /// segment; remove what recovery dropped; make sure an active segment exists; then sync what
    /// recovery found, so everything the opened log holds is durable.
    pub async fn open(disk: D, dir: &str, config: LogConfig) -> Result<(Self, RecoveryReport), LogError> {
        assert!(
            config.segment_bytes_max > 0 && config.segment_bytes_max <= SEGMENT_BYTES_LIMIT,
            "segment_bytes_max {} must be in 1..={SEGMENT_BYTES_LIMIT}",
            config.segment_bytes_max
        );
        let dir = dir.trim_end_matches('/').to_string();
        disk.create_dir_all(&dir)?;
        // An interrupted compaction is finished (or forgotten) before any segment is looked at.
        let compaction_finished = compaction::finish_interrupted(&disk, &dir, config.index_interval_bytes).await?;
        let (log_bases, other_files) = Self::list_segment_files(&disk, &dir)?;
        let mut report = RecoveryReport::default();
        let clean = Self::take_clean_close(&disk, &dir)?.filter(|_| !compaction_finished);
        let (mut segments, scanned) =
            Self::trust_or_recover(&disk, &dir, &config, (&log_bases, &other_files), clean, &mut report)?;
        let mut dir_changed = compaction_finished;
        dir_changed |= Self::remove_dropped_files(
            &disk,
            &dir,
            &segments,
            &log_bases[segments.len()..],
            &other_files,
            &mut report,
        )?;
        if segments.is_empty() {
            let segment = Self::open_segment(&disk, &dir, Offset::ZERO, &config)?;
            segments.insert(Offset::ZERO, segment);
            dir_changed = true;
        }
        // The active segment carries no seal (one may remain if later segments were dropped).
        let active = segments.values_mut().next_back().expect("at least one segment");
        if active.sealed {
            active.rewrite_indexes(false)?;
        }
        let log_end = active.next_offset;
        let log_start = *segments.keys().next().expect("at least one segment");
        let mut log = PartitionLog {
            disk,
            dir,
            config,
            segments,
            log_end,
            durable_end: log_end,
            dir_dirty: dir_changed,
            pending_seals: Vec::new(),
            epoch_runs: scanned.epoch_runs,
            producers: scanned.producers,
            unsynced_snapshots: scanned.snapshots,
            shared: Arc::new(Mutex::new(SyncShared {
                failed: false,
                generation: 0,
                next_ticket: 0,
                in_flight: BTreeMap::new(),
                completed: Offset::ZERO,
                synced_since_truncation: true,
            })),
        };
        // Make what recovery found durable (the OS may still hold unsynced writes of the last run),
        // the removal of the clean-close record, and the log directory's own entry too.
        log.dir_dirty = true;
        let covered = log.begin_sync().await?;
        log.mark_durable(covered);
        log.disk.sync_dir(parent_of(&log.dir)).await?;
        report.segments = log.segments.len();
        report.log_start_offset = log_start;
        report.log_end_offset = log_end;
        report_cut(&log.dir, &report);
        log.check_invariants();
        Ok((log, report))
    }

    /// The base offsets of the `.log` files in `dir` (sorted), and every other segment file
    /// (`.index`, `.timeindex`, `.producers`) with its base. Files that are not Keel's are left out.
    fn list_segment_files(disk: &D, dir: &str) -> Result<SegmentFiles, LogError> {
        let mut log_bases = Vec::new();
        let mut other_files = Vec::new();
        for name in disk.list(dir)? {
            match parse_segment_name(&name) {
                Some((base, "log")) => log_bases.push(base),
                Some((base, _)) => other_files.push((base, name)),
                None => {} // Not ours: leave it alone.
            }
        }
        log_bases.sort();
        Ok((log_bases, other_files))
    }

    /// Recovers the segments of `log_bases` in order: every segment is scanned (each batch's length,
    /// CRC, framing and offsets checked) and cut at its first invalid batch; a sealed segment other
    /// than the last keeps its indexes when the scan agrees with its seal. Stops at a gap in the
    /// offsets or after a cut segment (later segments follow a hole); the segments returned are a
    /// prefix of `log_bases`. Fills `scanned` from the batches kept.
    fn recover_segments(
        disk: &D,
        dir: &str,
        config: &LogConfig,
        log_bases: &[Offset],
        report: &mut RecoveryReport,
        scanned: &mut Scanned<D::File>,
    ) -> Result<BTreeMap<Offset, Segment<D::File>>, LogError> {
        let mut segments: BTreeMap<Offset, Segment<D::File>> = BTreeMap::new();
        for (idx, &base) in log_bases.iter().enumerate() {
            let is_last = idx + 1 == log_bases.len();
            if let Some(previous) = segments.values().next_back() {
                if previous.next_offset != base {
                    report.cut.get_or_insert((previous.next_offset, format!("gap before segment {base}")));
                    break; // A gap: this segment and all later ones go.
                }
            }
            let mut segment = Self::open_segment(disk, dir, base, config)?;
            let log_len = segment.log.len()?;
            let sealed = !is_last && Self::load_sealed(&mut segment, log_len)?;
            // The state as of this segment's base. The first segment's is read (the batches before it
            // are gone: retention deleted them); every later one is written again on every open, so
            // whatever a crash left of an earlier snapshot, it is the scan's.
            let snapshot = match Self::first_snapshot(disk, dir, base, idx == 0)? {
                Some((file, producers)) => {
                    scanned.producers = producers;
                    file
                }
                None => write_producer_snapshot(disk, dir, base, &scanned.producers)?,
            };
            let scan = segment::scan(&segment.log, base, config.index_interval_bytes, &mut scanned.producers)?;
            report.verified_bytes += scan.valid_bytes;
            for run in &scan.epochs {
                segment::push_epoch_run(&mut scanned.epoch_runs, run.epoch, run.start_offset);
            }
            let whole = scan.stopped_because.is_none();
            scanned.snapshots.push((base, snapshot));
            if sealed && whole && scan.next_offset == segment.next_offset {
                segments.insert(base, segment); // The scan agrees with the seal: the indexes stand.
                continue;
            }
            if let Some(reason) = &scan.stopped_because {
                tracing::warn!(dir, base = base.0, at = scan.valid_bytes, reason, "log recovery: truncating segment");
                segment.log.set_len(scan.valid_bytes)?;
                report.truncated_bytes += log_len - scan.valid_bytes;
                report.cut = Some((scan.next_offset, format!("segment {base} at byte {}: {reason}", scan.valid_bytes)));
            }
            segment.log_bytes = scan.valid_bytes;
            segment.next_offset = scan.next_offset;
            segment.index = scan.index;
            segment.indexer = scan.indexer;
            segment.dirty.log = true;
            segment.rewrite_indexes(!is_last && whole)?;
            report.rebuilt_indexes += 1;
            segments.insert(base, segment);
            if !whole {
                break; // Later segments follow a hole.
            }
        }
        Ok(segments)
    }

    /// The segments and the scan's state: from the clean-close record if there is one the files
    /// agree with, else from recovery's scan (steps 3 and 4 of the module doc).
    #[allow(clippy::type_complexity)]
    fn trust_or_recover(
        disk: &D,
        dir: &str,
        config: &LogConfig,
        (log_bases, other_files): (&[Offset], &[(Offset, String)]),
        clean: Option<CleanClose>,
        report: &mut RecoveryReport,
    ) -> Result<(BTreeMap<Offset, Segment<D::File>>, Scanned<D::File>), LogError> {
        if let Some(record) = clean {
            if let Some(trusted) = Self::open_clean(disk, dir, config, log_bases, other_files, record)? {
                report.clean_close = true;
                sometimes::hit(Sometimes::CleanCloseOpened);
                return Ok(trusted);
            }
        }
        let mut scanned = Scanned { epoch_runs: Vec::new(), producers: ProducerStates::new(), snapshots: Vec::new() };
        let segments = Self::recover_segments(disk, dir, config, log_bases, report, &mut scanned)?;
        Ok((segments, scanned))
    }

    /// Reads and removes the clean-close record, if there is one; the record if it decodes. The
    /// removal becomes durable with the directory sync every open ends with, before any append can
    /// make the record false.
    fn take_clean_close(disk: &D, dir: &str) -> Result<Option<CleanClose>, LogError> {
        let path = format!("{dir}/{CLEAN_CLOSE_FILE}");
        let file = match disk.open(&path, false) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let bytes = file.read_at(0, file.len()? as usize)?;
        drop(file);
        disk.remove(&path)?;
        let record = CleanClose::decode(&bytes);
        if record.is_none() {
            tracing::warn!(dir, "log open: the clean-close record does not decode; scanning the log");
        }
        Ok(record)
    }

    /// The segments and the scan's state as the clean-close `record` gives them, if the files agree
    /// with it: every segment sealed with its seal's length, contiguous, as many as the record says,
    /// the last at the record's base ending at its log end, each with its producer snapshot (but a
    /// first segment at offset 0). `None`
    /// sends the open to the full recovery scan.
    #[allow(clippy::type_complexity)]
    fn open_clean(
        disk: &D,
        dir: &str,
        config: &LogConfig,
        log_bases: &[Offset],
        other_files: &[(Offset, String)],
        record: CleanClose,
    ) -> Result<Option<(BTreeMap<Offset, Segment<D::File>>, Scanned<D::File>)>, LogError> {
        let snapshot_bases: std::collections::BTreeSet<Offset> =
            other_files.iter().filter(|(_, name)| name.ends_with(".producers")).map(|(base, _)| *base).collect();
        let mut segments: BTreeMap<Offset, Segment<D::File>> = BTreeMap::new();
        for &base in log_bases {
            let contiguous = segments.values().next_back().is_none_or(|previous| previous.next_offset == base);
            // (A log's first segment at offset 0 needs no snapshot: nothing came before it.)
            if !contiguous || !(base == Offset::ZERO || snapshot_bases.contains(&base)) {
                return Ok(None);
            }
            let mut segment = Self::open_segment(disk, dir, base, config)?;
            let log_len = segment.log.len()?;
            if !Self::load_sealed(&mut segment, log_len)? {
                return Ok(None);
            }
            segments.insert(base, segment);
        }
        let Some(last) = segments.values().next_back() else { return Ok(None) };
        let agrees = segments.len() == record.segments as usize
            && last.base_offset == record.active_base
            && last.next_offset == record.log_end;
        if !agrees {
            tracing::warn!(dir, "log open: the files do not match the clean-close record; scanning the log");
            return Ok(None);
        }
        let scanned = Scanned { epoch_runs: record.epoch_runs, producers: record.producers, snapshots: Vec::new() };
        Ok(Some((segments, scanned)))
    }

    /// Removes the `.log` files recovery dropped and index files without a kept log. True if the
    /// directory changed.
    fn remove_dropped_files(
        disk: &D,
        dir: &str,
        segments: &BTreeMap<Offset, Segment<D::File>>,
        dropped_logs: &[Offset],
        other_files: &[(Offset, String)],
        report: &mut RecoveryReport,
    ) -> Result<bool, LogError> {
        let mut dir_changed = false;
        for &base in dropped_logs {
            let path = segment::log_name(dir, base);
            report.truncated_bytes += disk.open(&path, false)?.len()?;
            disk.remove(&path)?;
            dir_changed = true;
        }
        for (base, name) in other_files {
            if !segments.contains_key(base) {
                disk.remove(&format!("{dir}/{name}"))?;
                dir_changed = true;
            }
        }
        Ok(dir_changed)
    }

    /// The producer snapshot recovery starts from when `base` is the first segment's: the table as of
    /// the batches before it, which retention deleted. `None` (start from an empty table) for any
    /// other segment, at offset 0, or when the snapshot is missing or fails its CRC: then the
    /// producers of the deleted batches are forgotten (their next batches get `UnknownProducer`).
    fn first_snapshot(
        disk: &D,
        dir: &str,
        base: Offset,
        is_first: bool,
    ) -> Result<Option<(D::File, ProducerStates)>, LogError> {
        if !is_first || base == Offset::ZERO {
            return Ok(None);
        }
        let snapshot = read_producer_snapshot(disk, dir, base)?;
        if snapshot.is_none() {
            tracing::warn!(dir, base = base.0, "log recovery: no valid producer snapshot at the log start");
        }
        Ok(snapshot)
    }

    fn open_segment(disk: &D, dir: &str, base: Offset, config: &LogConfig) -> Result<Segment<D::File>, LogError> {
        Ok(Segment {
            base_offset: base,
            next_offset: base,
            log: disk.open(&segment::log_name(dir, base), true)?,
            offset_index: disk.open(&segment::offset_index_name(dir, base), true)?,
            time_index: disk.open(&segment::time_index_name(dir, base), true)?,
            log_bytes: 0,
            index: index::SegmentIndex::default(),
            indexer: index::Indexer::new(config.index_interval_bytes),
            sealed: false,
            dirty: segment::Dirty::default(),
            sync_ticket: None,
        })
    }

    /// Loads a segment's indexes if it is sealed and the seal matches the `.log` length.
    fn load_sealed(segment: &mut Segment<D::File>, log_len: u64) -> Result<bool, LogError> {
        let offset_bytes = segment.offset_index.read_at(0, usize::MAX)?;
        let time_bytes = segment.time_index.read_at(0, usize::MAX)?;
        let Some(sealed) = index::decode_sealed(&offset_bytes, &time_bytes) else {
            return Ok(false);
        };
        if u64::from(sealed.seal.log_bytes) != log_len {
            return Ok(false);
        }
        segment.log_bytes = log_len;
        segment.next_offset = Offset(segment.base_offset.0 + i64::from(sealed.seal.relative_next_offset));
        segment.indexer.max_timestamp = sealed.seal.max_timestamp;
        segment.indexer.bytes_since_entry =
            log_len - sealed.offsets.last().map_or(0, |entry| u64::from(entry.position));
        segment.index = index::SegmentIndex { offsets: sealed.offsets, times: sealed.times };
        segment.sealed = true;
        Ok(true)
    }

    pub fn log_start_offset(&self) -> Offset {
        *self.segments.keys().next().expect("a log has at least one segment")
    }

    /// The next offset to assign.
    pub fn log_end_offset(&self) -> Offset {
        self.log_end
    }

    /// Everything below this offset is known to be durable.
    pub fn durable_end_offset(&self) -> Offset {
        self.durable_end
    }

    /// The bytes of the log's `.log` files (its batches, as stored: compressed ones compressed),
    /// without the index files.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|segment| segment.log_bytes).sum()
    }

    /// Changes the segment size from the next roll on (a topic's `segment_bytes` was altered).
    pub fn set_segment_bytes_max(&mut self, segment_bytes_max: u64) {
        self.config.segment_bytes_max = segment_bytes_max;
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    fn check_failed(&self) -> Result<(), LogError> {
        if lock(&self.shared).failed {
            Err(LogError::Failed)
        } else {
            Ok(())
        }
    }

    /// Marks the log failed on any error from `result` (a half-done write leaves unknown state).
    fn fail_on_error<T>(&self, result: Result<T, LogError>) -> Result<T, LogError> {
        if result.is_err() {
            lock(&self.shared).failed = true;
        }
        result
    }

    fn active(&mut self) -> &mut Segment<D::File> {
        self.segments.values_mut().next_back().expect("a log has at least one segment")
    }

    /// Appends one batch already stamped with `base_offset == log_end_offset()`. It goes to the page
    /// cache, not yet durable. May roll to a new segment first.
    ///
    /// On an error the log is failed and must be reopened. The batch is then definitely not in the
    /// log: a failed disk write keeps at most a strict prefix of its bytes (the storage contract),
    /// and recovery cuts an incomplete batch by its length and CRC.
    ///
    /// # Panics
    /// After [`PartitionLog::truncate_to`] removed data, until a sync begun after it succeeded:
    /// appending over a truncation that is not durable could, after a crash, leave new batches
    /// followed by resurrected old ones.
    pub fn append(&mut self, batch: &Batch) -> Result<(), LogError> {
        {
            let shared = lock(&self.shared);
            if shared.failed {
                return Err(LogError::Failed);
            }
            assert!(
                shared.synced_since_truncation,
                "PartitionLog::append after truncate_to without a completed sync in between"
            );
        }
        if batch.base_offset() != self.log_end {
            return Err(LogError::NonContiguous { expected: self.log_end, got: batch.base_offset() });
        }
        let result = self.append_inner(batch);
        self.fail_on_error(result)?;
        self.check_invariants();
        Ok(())
    }

    fn append_inner(&mut self, batch: &Batch) -> Result<(), LogError> {
        let segment_bytes_max = self.config.segment_bytes_max;
        let active = self.active();
        let too_big = active.log_bytes > 0 && active.log_bytes + batch.len() as u64 > segment_bytes_max;
        let too_many_offsets = batch.next_offset().0 - active.base_offset.0 > u32::MAX as i64;
        if too_big || too_many_offsets {
            self.roll(batch.base_offset())?;
        }
        self.active().append(batch)?;
        segment::push_epoch_run(&mut self.epoch_runs, batch.leader_epoch(), batch.base_offset());
        self.producers.apply(&BatchIdentity::of(batch), batch.base_offset());
        self.log_end = batch.next_offset();
        Ok(())
    }

    /// Starts a new active segment at `base`. The old one is sealed once its data is durable.
    fn roll(&mut self, base: Offset) -> Result<(), LogError> {
        let old_base = self.active().base_offset;
        let segment = Self::open_segment(&self.disk, &self.dir, base, &self.config)?;
        // A leftover file of that name (not possible after recovery, but cheap to rule out).
        for file in [&segment.log, &segment.offset_index, &segment.time_index] {
            if !file.is_empty()? {
                file.set_len(0)?;
            }
        }
        self.segments.insert(base, segment);
        self.pending_seals.push(old_base);
        self.dir_dirty = true;
        // Every batch before `base` is applied, none after: the state a truncation into this
        // segment starts its rescan from.
        let snapshot = write_producer_snapshot(&self.disk, &self.dir, base, &self.producers)?;
        self.unsynced_snapshots.push((base, snapshot));
        tracing::debug!(dir = self.dir, base = base.0, "log: rolled to a new segment");
        Ok(())
    }

    /// A future that makes everything appended so far durable: every file written since the last
    /// `begin_sync` (a rolled segment and its indexes included) and the directory when entries
    /// changed. It resolves to the log end offset it covers; the caller then calls
    /// [`PartitionLog::mark_durable`] with it. The caller may keep appending and reading while it runs
    /// (group commit). Dropping the future before it completes poisons the log, as a failure does.
    pub fn begin_sync(&mut self) -> impl Future<Output = Result<Offset, LogError>> + Send + 'static {
        let covered = self.log_end;
        let mut syncs: Vec<SyncFuture> = Vec::new();
        let guard = {
            let mut shared = lock(&self.shared);
            (!shared.failed).then(|| {
                let ticket = shared.next_ticket;
                shared.next_ticket += 1;
                let generation = shared.generation;
                shared.in_flight.insert(ticket, (covered, generation, false));
                TicketGuard { shared: self.shared.clone(), ticket, finished: false }
            })
        };
        if let Some(ticket) = guard.as_ref().map(|guard| guard.ticket) {
            let active_base = self.active().base_offset;
            for segment in self.segments.values_mut() {
                let n_syncs = syncs.len();
                if std::mem::take(&mut segment.dirty.log) {
                    syncs.push(Box::pin(segment.log.sync()));
                }
                // The active segment's indexes are rebuilt by every recovery, so their appended
                // entries need no fsync (one fsync per sync instead of three); they are synced when
                // the segment rolls, before its seal can be trusted.
                let dirty = &mut segment.dirty;
                if segment.base_offset != active_base || dirty.indexes_rewritten {
                    dirty.indexes_rewritten = false;
                    if std::mem::take(&mut dirty.offset_index) {
                        syncs.push(Box::pin(segment.offset_index.sync()));
                    }
                    if std::mem::take(&mut dirty.time_index) {
                        syncs.push(Box::pin(segment.time_index.sync()));
                    }
                }
                if syncs.len() > n_syncs {
                    segment.sync_ticket = Some(ticket);
                }
            }
            for (base, snapshot) in self.unsynced_snapshots.drain(..) {
                syncs.push(Box::pin(snapshot.sync()));
                if let Some(segment) = self.segments.get_mut(&base) {
                    segment.sync_ticket = Some(ticket);
                }
            }
            if std::mem::take(&mut self.dir_dirty) {
                syncs.push(Box::pin(self.disk.sync_dir(&self.dir)));
            }
        }
        async move {
            let Some(guard) = guard else {
                return Err(LogError::Failed);
            };
            let results = futures::future::join_all(syncs).await;
            if let Some(error) = results.into_iter().find_map(Result::err) {
                tracing::error!(%error, "log: sync failed; the log must be reopened");
                guard.finish(false);
                return Err(LogError::Io(error));
            }
            guard.finish(true);
            Ok(covered)
        }
    }

    /// Records that a sync resolved to `up_to`. The durable end advances to it only as far as every
    /// sync begun before it has succeeded too, and not past a later truncation. Rolled segments that
    /// are now wholly durable get their seal (durable with the next sync).
    pub fn mark_durable(&mut self, up_to: Offset) {
        let completed = lock(&self.shared).completed;
        let durable = up_to.min(completed).min(self.log_end);
        if durable > self.durable_end {
            self.durable_end = durable;
        }
        let durable_end = self.durable_end;
        let mut result = Ok(());
        let segments = &mut self.segments;
        self.pending_seals.retain(|base| {
            let Some(segment) = segments.get_mut(base) else {
                return false;
            };
            if segment.next_offset > durable_end || result.is_err() {
                return true;
            }
            result = segment.write_seal();
            false
        });
        let _ = self.fail_on_error(result);
        self.check_invariants();
    }

    /// Whole batches, concatenated, starting with the batch that contains `offset`, stopping before
    /// `max_bytes` would be exceeded (but at least one batch if any qualifies), and only batches
    /// whose last offset is below `up_to` (the high watermark). May span segments. Empty if `offset
    /// >= up_to` or `offset == log_end_offset()`.
    ///
    /// Every returned batch is checked: its CRC, its offsets, and its leader epoch (which the CRC does
    /// not cover) against the epoch it was written with. A batch that fails is never returned: the
    /// read fails with [`LogError::Corrupt`] and the log with it (see there).
    pub fn read(&self, offset: Offset, max_bytes: usize, up_to: Offset) -> Result<Bytes, LogError> {
        let result = self.read_inner(offset, max_bytes, up_to).map(|bytes| starting_at(bytes, offset));
        self.fail_on_corrupt(result)
    }

    /// Fails the log on a [`LogError::Corrupt`]: its bytes cannot be trusted until recovery cut them.
    fn fail_on_corrupt<T>(&self, result: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(LogError::Corrupt { offset, reason }) = &result {
            tracing::error!(
                dir = self.dir,
                offset = offset.0,
                reason,
                "log: corrupt data found; the log must be reopened"
            );
            sometimes::hit(Sometimes::CorruptBatchDetected);
            lock(&self.shared).failed = true;
        }
        result
    }

    fn read_inner(&self, offset: Offset, max_bytes: usize, up_to: Offset) -> Result<Bytes, LogError> {
        self.check_failed()?;
        let log_start = self.log_start_offset();
        if offset < log_start || offset > self.log_end {
            return Err(LogError::OffsetOutOfRange { requested: offset, log_start, log_end: self.log_end });
        }
        let up_to = up_to.min(self.log_end);
        if offset >= up_to {
            return Ok(Bytes::new());
        }
        let (&first_base, first_segment) =
            self.segments.range(..=offset).next_back().expect("offset >= log start has a segment");
        let (mut position, first_header) = first_segment.locate(offset)?;
        let mut expected = first_header.base_offset;
        let mut reader = RunCollector::default();
        let mut total_bytes = 0usize;
        'segments: for segment in self.segments.range(first_base..).map(|(_, segment)| segment) {
            if segment.base_offset != first_base {
                position = 0;
            }
            let mut window = Bytes::new();
            let mut window_position = position;
            while position < segment.log_bytes {
                let budget = max_bytes.saturating_sub(total_bytes);
                let header_in_window = position + BATCH_HEADER_BYTES as u64 <= window_position + window.len() as u64;
                if !header_in_window {
                    window = self.read_window(segment, position, expected, BATCH_HEADER_BYTES, budget)?;
                    window_position = position;
                }
                let start = (position - window_position) as usize;
                let header = self.checked_header(segment, &window[start..], position, expected)?;
                if header.last_offset() >= up_to && total_bytes == 0 {
                    // `up_to` (an HW or a written end) falls on a batch boundary, so the batch
                    // holding an offset below it ends below it too. One that claims to end past it
                    // is rot in its length or offset-delta field, unless its CRC holds: check, or
                    // every read here would return nothing, for ever (`isr_3_bit_flips` seed 59).
                    let batch = self.read_window(segment, position, expected, header.size_bytes, 0)?;
                    if !segment::crc_matches(&batch.slice(..header.size_bytes)) {
                        return Err(segment.corrupt(expected, position, "batch CRC mismatch".to_string()));
                    }
                    break 'segments;
                }
                if header.last_offset() >= up_to || (total_bytes > 0 && total_bytes + header.size_bytes > max_bytes) {
                    break 'segments;
                }
                if start + header.size_bytes > window.len() {
                    reader.flush();
                    window = self.read_window(segment, position, expected, header.size_bytes, budget)?;
                    window_position = position;
                }
                let start = (position - window_position) as usize;
                let batch = window.slice(start..start + header.size_bytes);
                if !segment::crc_matches(&batch) {
                    return Err(segment.corrupt(expected, position, "batch CRC mismatch".to_string()));
                }
                reader.push(&window, start, header.size_bytes);
                total_bytes += header.size_bytes;
                position += header.size_bytes as u64;
                expected = header.next_offset();
            }
            reader.flush();
        }
        Ok(reader.finish())
    }

    /// Parses the header of the batch at `position`, which must start at `expected` and carry the
    /// leader epoch the log recorded for that offset.
    fn checked_header(
        &self,
        segment: &Segment<D::File>,
        bytes: &[u8],
        position: u64,
        expected: Offset,
    ) -> Result<BatchHeader, LogError> {
        let header = BatchHeader::parse(bytes).map_err(|reason| segment.corrupt(expected, position, reason))?;
        if header.base_offset != expected {
            let reason = format!("base offset {} where {expected} was expected", header.base_offset);
            return Err(segment.corrupt(expected, position, reason));
        }
        let written = self.written_epoch(expected);
        if Some(header.leader_epoch) != written {
            let reason = format!("leader epoch {} where {written:?} was written", header.leader_epoch);
            return Err(segment.corrupt(expected, position, reason));
        }
        Ok(header)
    }

    /// The leader epoch the batch at `offset` was written with (its run's).
    fn written_epoch(&self, offset: Offset) -> Option<LeaderEpoch> {
        let after = self.epoch_runs.partition_point(|run| run.start_offset <= offset);
        after.checked_sub(1).map(|index| self.epoch_runs[index].epoch)
    }

    /// The leader-epoch runs of the batches in the log, in offset order: an entry wherever a batch's
    /// epoch differs from the previous batch's. Built from the batches themselves (recovery's scan,
    /// appends), so they are what the log holds, right or wrong; see [`PartitionLog::epoch_mismatch`].
    pub fn epoch_runs(&self) -> &[EpochEntry] {
        &self.epoch_runs
    }

    /// The first offset at which the batches' leader epochs disagree with the persisted epoch cache
    /// (`epochs`, recovered by [`epoch_cache::EpochCache::open`] for this log), or `None` when they
    /// agree over the whole log.
    ///
    /// The batch CRC does not cover the leader-epoch field, and a corrupt cache entry ends the cache
    /// there (its recovery cannot tell what followed). Either way the two stop agreeing at the first
    /// batch whose epoch is in doubt. The owner then cuts both there, in the usual order (module doc of
    /// [`epoch_cache`]: `truncate_to` and sync the log, then `truncate_from_end` and sync the cache),
    /// and fetches the rest from the leader. Only meaningful where every batch is stamped with the
    /// epoch the cache assigns (the replicated data path).
    pub fn epoch_mismatch(&self, epochs: &LeaderEpochs) -> Option<Offset> {
        first_epoch_mismatch(&self.epoch_runs, epochs.entries(), self.log_start_offset(), self.log_end)
    }

    /// Reads at least `needed` bytes at `position` (and up to `budget`, to serve the rest of a read
    /// from one I/O), never past the segment's end. `expected` is the offset of the batch there.
    fn read_window(
        &self,
        segment: &Segment<D::File>,
        position: u64,
        expected: Offset,
        needed: usize,
        budget: usize,
    ) -> Result<Bytes, LogError> {
        let available = segment.log_bytes - position;
        let want = (needed.max(budget) as u64).min(available) as usize;
        let window = segment.log.read_at(position, want)?;
        if window.len() < needed {
            let reason = format!("file ends {} bytes into a {needed}-byte read", window.len());
            return Err(segment.corrupt(expected, position, reason));
        }
        Ok(window)
    }

    /// The first batch with `max_timestamp >= timestamp`: its base offset and max timestamp.
    pub fn offset_for_timestamp(&self, timestamp: TimestampMs) -> Result<Option<(Offset, TimestampMs)>, LogError> {
        self.check_failed()?;
        let found = self.segments.values().find_map(|segment| segment.find_timestamp(timestamp).transpose());
        let result = found.transpose().map(|header| header.map(|header| (header.base_offset, header.max_timestamp)));
        self.fail_on_corrupt(result)
    }

    /// Removes the batch that contains `offset` and everything after it (a batch is never split, so
    /// the new log end may be below `offset`). A no-op if `offset >= log_end_offset()`. Durable after
    /// the next sync, and until a sync begun after it has succeeded, [`PartitionLog::append`] refuses
    /// to run (see there). Syncs begun before the truncation no longer advance the durable end.
    pub fn truncate_to(&mut self, offset: Offset) -> Result<(), LogError> {
        self.check_failed()?;
        let log_start = self.log_start_offset();
        if offset < log_start {
            return Err(LogError::OffsetOutOfRange { requested: offset, log_start, log_end: self.log_end });
        }
        if offset >= self.log_end {
            return Ok(());
        }
        let result = self.truncate_inner(offset);
        self.fail_on_error(result)?;
        self.check_invariants();
        Ok(())
    }

    fn truncate_inner(&mut self, offset: Offset) -> Result<(), LogError> {
        let (&base, segment) = self.segments.range(..=offset).next_back().expect("offset >= log start");
        let (position, header) = segment.locate(offset)?;
        let cut = header.base_offset;
        // Drop whole segments from the cut on (keeping the first segment, even if emptied).
        let first_dropped = if position == 0 && base != self.log_start_offset() { base } else { base.next() };
        let dropped: Vec<Offset> = self.segments.range(first_dropped..).map(|(&base, _)| base).collect();
        for base in dropped {
            self.forget_segment(base);
            for path in [
                segment::log_name(&self.dir, base),
                segment::offset_index_name(&self.dir, base),
                segment::time_index_name(&self.dir, base),
            ] {
                self.disk.remove(&path)?;
            }
            remove_if_present(&self.disk, &segment::producers_name(&self.dir, base))?;
            self.dir_dirty = true;
        }
        let active = self.active();
        let active_base = active.base_offset;
        if active.next_offset > cut {
            let position = if active_base == base { position } else { active.log_bytes };
            active.truncate_at(position, cut)?;
        } else if active.sealed {
            active.rewrite_indexes(false)?;
        }
        self.pending_seals.retain(|pending| *pending != active_base);
        self.epoch_runs.retain(|run| run.start_offset < cut);
        self.producers = self.rescan_producers()?;
        self.log_end = cut;
        self.durable_end = self.durable_end.min(cut);
        let mut shared = lock(&self.shared);
        shared.generation += 1;
        shared.completed = shared.completed.min(cut);
        shared.synced_since_truncation = false;
        Ok(())
    }

    /// The dedup state of the producers as of the batches in the log now.
    pub fn producer_states(&self) -> &ProducerStates {
        &self.producers
    }

    /// The dedup state of the batches left after a truncation: the state as of the active segment
    /// ([`PartitionLog::producers_before`]) plus a scan of that segment. The batches were verified
    /// when written or recovered: a scan that stops early found corruption, which fails the log like
    /// a read would.
    fn rescan_producers(&self) -> Result<ProducerStates, LogError> {
        let active_base = *self.segments.keys().next_back().expect("a segment");
        let mut producers = self.producers_before(active_base)?;
        self.scan_producers(active_base, self.log_end, &mut producers)?;
        Ok(producers)
    }

    /// The dedup state as of the batches before the segment at `base`: empty at offset 0; else that
    /// segment's producer snapshot (written at its roll, by recovery, or by retention); if it is
    /// missing or fails its CRC, the first segment's state (its snapshot, which stands for the
    /// batches retention deleted) plus a scan of the segments from the log start to `base`.
    fn producers_before(&self, base: Offset) -> Result<ProducerStates, LogError> {
        if base == Offset::ZERO {
            return Ok(ProducerStates::new());
        }
        if let Some((_, producers)) = read_producer_snapshot(&self.disk, &self.dir, base)? {
            return Ok(producers);
        }
        let log_start = self.log_start_offset();
        if base == log_start {
            tracing::warn!(dir = self.dir, base = base.0, "log: no valid producer snapshot at the log start");
            return Ok(ProducerStates::new());
        }
        let mut producers = self.producers_before(log_start)?;
        self.scan_producers(log_start, base, &mut producers)?;
        Ok(producers)
    }

    /// Applies the batches of the segments with bases in `[from, to)` to `producers`, in log order.
    fn scan_producers(&self, from: Offset, to: Offset, producers: &mut ProducerStates) -> Result<(), LogError> {
        for (&base, segment) in self.segments.range(from..to) {
            let scan = segment::scan(&segment.log, base, self.config.index_interval_bytes, producers)?;
            if let Some(reason) = scan.stopped_because {
                return Err(LogError::Corrupt { offset: scan.next_offset, reason });
            }
        }
        Ok(())
    }

    /// Drops the segment at `base` from memory: from the map, the seals due and the snapshots to
    /// sync (its files are being removed; a sync of a removed file may fail).
    fn forget_segment(&mut self, base: Offset) {
        self.segments.remove(&base);
        self.pending_seals.retain(|pending| *pending != base);
        self.unsynced_snapshots.retain(|(snapshot_base, _)| *snapshot_base != base);
    }

    /// Syncs everything (seals included) and consumes the log: a graceful shutdown.
    pub async fn close(mut self) -> Result<(), LogError> {
        // The first sync may make segments sealable; the second makes the seals durable.
        for _ in 0..2 {
            let covered = self.begin_sync().await?;
            self.mark_durable(covered);
        }
        self.check_failed()?;
        // What the shutdown sync covered, from the sync's own result: a real process cannot lose
        // its page cache, so this line is how tests/broker_process.rs sees that a SIGTERM with
        // fsync=never synced everything (a missing shutdown sync leaves `durable_end` behind).
        tracing::info!(dir = self.dir, log_end = self.log_end.0, durable_end = self.durable_end.0, "log closed");
        // An empty log (no offsets: new, or truncated or retained down to its start) gets no record:
        // its next open scans nothing either way, and the record's three fsyncs made a graceful stop
        // of thousands of idle partitions wait on a busy disk (`many_partitions_small_file_budget`
        // seed 34695192: 3,000 records at 0.1-0.5 s an fsync took past the 30 s bound).
        if self.log_end == self.log_start_offset() || self.size_bytes() < self.config.clean_close_min_bytes {
            return Ok(());
        }
        // Everything is durable already: the record only spares the next open its scan, so failing
        // to write it (a full disk, no descriptor left) fails nothing (the next open scans).
        let dir = self.dir.clone();
        if let Err(error) = self.write_clean_close().await {
            tracing::warn!(dir, %error, "no clean-close record written; the next open scans the log");
        }
        Ok(())
    }

    /// Seals the active segment, syncs it, and writes the clean-close record ([`clean_close`]) so
    /// the next open need not scan. Called with everything else durable and sealed.
    async fn write_clean_close(mut self) -> Result<(), LogError> {
        let active = self.active();
        active.write_seal()?;
        // The active segment's index entries are not synced by plain syncs (recovery rebuilds
        // them); the record will vouch for them, so this sync must carry them.
        active.dirty.indexes_rewritten = true;
        // (Not `mark_durable`: the log is consumed, and its invariants say the active segment is
        // not sealed.)
        self.begin_sync().await?;
        let record = CleanClose {
            log_end: self.log_end,
            active_base: self.active().base_offset,
            segments: self.segments.len() as u32,
            epoch_runs: self.epoch_runs.clone(),
            producers: self.producers.clone(),
        };
        let file = self.disk.open(&format!("{}/{CLEAN_CLOSE_FILE}", self.dir), true)?;
        file.set_len(0)?;
        file.write_at(0, &record.encode())?;
        file.sync().await?;
        self.disk.sync_dir(&self.dir).await?;
        Ok(())
    }

    /// Asserts the log's own invariants (debug builds and tests).
    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        assert!(self.durable_end <= self.log_end, "durable end {} > log end {}", self.durable_end, self.log_end);
        let mut expected = None;
        for (base, segment) in &self.segments {
            assert_eq!(*base, segment.base_offset);
            if let Some(expected) = expected {
                assert_eq!(segment.base_offset, expected, "segments not contiguous");
            }
            assert!(segment.next_offset >= segment.base_offset);
            expected = Some(segment.next_offset);
        }
        assert_eq!(expected, Some(self.log_end), "active segment does not end at the log end");
        let active = self.segments.values().next_back().expect("a segment");
        assert!(!active.sealed, "the active segment is sealed");
    }
}

/// Writes the producer snapshot of the segment at `base` (replacing any earlier one); the caller
/// syncs the returned file. Recovery writes every kept segment's snapshot again from its own scan, so
/// a snapshot an earlier run left behind is never read; a torn one fails its CRC and is not used.
/// `bytes` (whole batches from a read at `offset`) starting exactly at `offset` when the first batch is
/// one without records that starts below it: compaction merges the batches of a run it emptied into
/// one filler (ADR 0022), so a follower whose log ends at a boundary of the original batches may
/// fetch from inside one. The filler's tail from `offset` is the same thing for every reader (no
/// records, the same epoch and timestamps), and lets a follower append at its log end.
fn starting_at(bytes: Bytes, offset: Offset) -> Bytes {
    let Ok(span) = crate::batch::peek_batch_span(&bytes) else { return bytes };
    if span.base_offset >= offset || span.record_count != 0 {
        return bytes;
    }
    let Ok(first) = Batch::parse(bytes.slice(..span.bytes)) else { return bytes };
    let tail =
        Batch::filler(offset, first.last_offset(), first.leader_epoch(), first.base_timestamp(), first.max_timestamp());
    let mut out = BytesMut::with_capacity(tail.len() + bytes.len() - span.bytes);
    out.extend_from_slice(tail.as_bytes());
    out.extend_from_slice(&bytes[span.bytes..]);
    sometimes::hit(Sometimes::FillerSplitForRead);
    out.freeze()
}

fn write_producer_snapshot<D: Disk>(
    disk: &D,
    dir: &str,
    base: Offset,
    producers: &ProducerStates,
) -> Result<D::File, LogError> {
    let file = disk.open(&segment::producers_name(dir, base), true)?;
    let bytes = producers.encode();
    file.set_len(0)?;
    file.write_at(0, &bytes)?;
    Ok(file)
}

/// The producer snapshot of the segment at `base` and its open file, if it exists and decodes.
fn read_producer_snapshot<D: Disk>(
    disk: &D,
    dir: &str,
    base: Offset,
) -> Result<Option<(D::File, ProducerStates)>, LogError> {
    let file = match disk.open(&segment::producers_name(dir, base), false) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let bytes = file.read_at(0, file.len()? as usize)?;
    Ok(ProducerStates::decode(&bytes).ok().map(|producers| (file, producers)))
}

/// Removes the file at `path`; a file that is not there is not an error.
fn remove_if_present<D: Disk>(disk: &D, path: &str) -> Result<(), LogError> {
    match disk.remove(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
        _ => Ok(()),
    }
}

/// The first offset in `[log_start, log_end)` where the epoch runs of the batches (`runs`) and the
/// epoch cache's entries (`cache`) give a different epoch, or `None`. Both are step functions over
/// offsets; they can first differ only at a start offset of either, so only those are compared (a
/// cache entry before the log start counts from the log start, as `truncate_from_start` makes it).
pub fn first_epoch_mismatch(
    runs: &[EpochEntry],
    cache: &[EpochEntry],
    log_start: Offset,
    log_end: Offset,
) -> Option<Offset> {
    let epoch_at = |entries: &[EpochEntry], offset: Offset| {
        let after = entries.partition_point(|entry| entry.start_offset <= offset);
        after.checked_sub(1).map(|index| entries[index].epoch)
    };
    let mut starts: Vec<Offset> =
        runs.iter().chain(cache).map(|entry| entry.start_offset.max(log_start)).filter(|&at| at < log_end).collect();
    starts.push(log_start);
    starts.sort();
    starts.dedup();
    starts.into_iter().filter(|&at| at < log_end).find(|&at| epoch_at(runs, at) != epoch_at(cache, at))
}

/// Gathers the byte ranges a read returns, as slices of the windows read, and joins them at the end
/// (without a copy when they all came from one window, the common case).
#[derive(Default)]
struct RunCollector {
    runs: Vec<Bytes>,
    current: Option<(Bytes, usize, usize)>,
}

impl RunCollector {
    fn push(&mut self, window: &Bytes, start: usize, len: usize) {
        if let Some((current_window, _, end)) = &mut self.current {
            if current_window.as_ptr() == window.as_ptr() && current_window.len() == window.len() && *end == start {
                *end += len;
                return;
            }
        }
        self.flush();
        self.current = Some((window.clone(), start, start + len));
    }

    fn flush(&mut self) {
        if let Some((window, start, end)) = self.current.take() {
            self.runs.push(window.slice(start..end));
        }
    }

    fn finish(mut self) -> Bytes {
        self.flush();
        match self.runs.len() {
            0 => Bytes::new(),
            1 => self.runs.pop().expect("one run"),
            _ => {
                let mut out = BytesMut::with_capacity(self.runs.iter().map(Bytes::len).sum());
                for run in &self.runs {
                    out.extend_from_slice(run);
                }
                out.freeze()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(i32, i64)]) -> Vec<EpochEntry> {
        pairs
            .iter()
            .map(|&(epoch, start)| EpochEntry { epoch: LeaderEpoch(epoch), start_offset: Offset(start) })
            .collect()
    }

    #[test]
    fn first_epoch_mismatch_finds_where_batches_and_cache_disagree() {
        let mismatch = |runs: &[(i32, i64)], cache: &[(i32, i64)], start: i64, end: i64| {
            first_epoch_mismatch(&entries(runs), &entries(cache), Offset(start), Offset(end)).map(|offset| offset.0)
        };
        let log = [(0, 0), (2, 10), (5, 30)];
        assert_eq!(mismatch(&log, &log, 0, 40), None);
        assert_eq!(mismatch(&[], &[], 0, 0), None, "an empty log");
        // A flipped epoch field in the batch at 20 (a run of its own), or one raised at 30.
        assert_eq!(mismatch(&[(0, 0), (2, 10), (6, 20), (2, 25), (5, 30)], &log, 0, 40), Some(20));
        assert_eq!(mismatch(&[(0, 0), (2, 10), (7, 30)], &log, 0, 40), Some(30));
        // A cache whose recovery dropped a corrupt entry and what followed.
        assert_eq!(mismatch(&log, &[(0, 0)], 0, 40), Some(10));
        // Retention: cache entries before the log start count from it; entries at or past the end
        // (a leader that wrote nothing yet) do not matter.
        assert_eq!(mismatch(&[(2, 15), (5, 30)], &[(0, 0), (2, 10), (5, 30), (6, 40)], 15, 40), None);
        assert_eq!(mismatch(&[(2, 15), (5, 30)], &[(0, 0), (5, 30)], 15, 40), Some(15));
    }
}
