//! The partition log against the reference model in `keel_model::partition_log`.
//!
//! Random sequences of appends, reads, syncs, crashes, torn tails, truncations and clean reopens run
//! against `PartitionLog` on both disks (`SimDisk`, and `FileDisk` in a fresh temp dir), with small
//! segments so they roll. After every operation the offsets are compared with the model; reads are
//! compared batch by batch and record by record; after every reopen the whole log is read back and
//! must pass the model's crash rule (a prefix of what was appended, holding all that was durable).
//! With injected write errors (SimDisk, during appends), a failed append must leave the batch out of
//! the log and everything appended before it in, once the log is reopened without a power loss.
//! Bit rot (`FlipBit`: one bit of any stored segment file flips, then the log is reopened as its
//! owner does it) must cut the log exactly at the batch holding the flipped byte when it hit a `.log`
//! file (the model's `corrupted`), and lose nothing when it hit an index.
//! Retention (`DeleteBefore`) and a follower's reset (`ResetTo`) run with a power loss right after or
//! in the middle (SimDisk: the operation is dropped after a given number of its syncs, then the
//! machine loses power, undoing every directory change not synced): the recovered log must start at
//! one of the segment bases between the old start and the requested one (or, for a reset, at the
//! new offset, empty), hold every batch from there to the durable end intact, and its producer table
//! must be the one as of its start (the first segment's snapshot) plus its batches.
//! Unit tests below pin the disk-fault cases one by one.

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use bytes::Bytes;
use keel::batch::{encode_batch, peek_batch_size, Batch, ProducerFields, Record};
use keel::leader_epochs::{EpochEntry, LeaderEpochs};
use keel::log::{LogConfig, LogError, PartitionLog, RecoveryReport};
use keel::producer_state::{BatchIdentity, ProducerStates};
use keel::storage::file::FileDisk;
use keel::storage::handles::{HandleBudget, Handles};
use keel::storage::sim::{SimDisk, SimDiskFaults};
use keel::storage::{Disk, DiskFile};
use keel::types::{LeaderEpoch, Offset, ProducerEpoch, ProducerId, Sequence};
use keel_model::partition_log::{BatchMeta, PartitionLogModel, RecoveredBatch};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use support::yielding_disk::{poll_at_most, YieldingDisk};
use tokio::runtime::Runtime;

const DIR: &str = "topics/t-0";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// One generated batch: its records' values and timestamp offsets, and a base timestamp.
#[derive(Debug, Clone)]
struct BatchSpec {
    values: Vec<Vec<u8>>,
    timestamp_deltas: Vec<i64>,
    base_timestamp: i64,
}

#[derive(Debug, Clone)]
enum Op {
    Append(BatchSpec),
    /// Begin a sync, append while it runs, then complete it (group commit).
    AppendDuringSync(BatchSpec),
    Read {
        offset_pick: u32,
        max_bytes: usize,
        up_to_pick: Option<u32>,
    },
    OffsetForTimestamp(i64),
    Sync,
    /// SimDisk: power loss. FileDisk: the process dies (the OS keeps the writes).
    Crash,
    /// FileDisk: the process dies and the unsynced tail of the last segment is cut at a random byte,
    /// optionally followed by garbage. SimDisk: a power loss.
    DamageTail {
        cut_pick: u32,
        garbage: Option<(usize, bool)>,
    },
    /// Truncate, then sync (the log requires a sync before the next append).
    Truncate {
        offset_pick: u32,
    },
    CleanReopen,
    /// The process stops, one bit of a stored segment file (`.log` or an index) flips, and the log
    /// is reopened.
    FlipBit {
        file_pick: u32,
        byte_pick: u32,
        bit: u8,
    },
    /// Retention: delete the segments below an offset from the log start to past its end.
    DeleteBefore {
        offset_pick: u32,
        crash: Option<CrashAt>,
    },
    /// A follower's reset to the log end plus `gap` (below the end, even the start, too: the log
    /// drops everything either way).
    ResetTo {
        gap: i8,
        crash: Option<CrashAt>,
    },
}

/// When a power loss hits a deletion or a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashAt {
    /// Once it completed.
    After,
    /// SimDisk: after `n_polls` polls (each of its syncs yields once), before it completes; the
    /// operation is dropped (which fails the log). FileDisk: as `After`.
    Within { n_polls: usize },
}

fn crash_at() -> impl Strategy<Value = Option<CrashAt>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(CrashAt::After)),
        2 => (1usize..8).prop_map(|n_polls| Some(CrashAt::Within { n_polls })),
    ]
}

fn batch_spec() -> impl Strategy<Value = BatchSpec> {
    (1usize..=5, 0i64..1_000).prop_flat_map(|(n_records, base_timestamp)| {
        (
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..48), n_records),
            proptest::collection::vec(0i64..20, n_records),
        )
            .prop_map(move |(values, timestamp_deltas)| BatchSpec { values, timestamp_deltas, base_timestamp })
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => batch_spec().prop_map(Op::Append),
        2 => batch_spec().prop_map(Op::AppendDuringSync),
        5 => (any::<u32>(), 0usize..1_500, proptest::option::of(any::<u32>()))
            .prop_map(|(offset_pick, max_bytes, up_to_pick)| Op::Read { offset_pick, max_bytes, up_to_pick }),
        2 => (-10i64..1_100).prop_map(Op::OffsetForTimestamp),
        4 => Just(Op::Sync),
        2 => Just(Op::Crash),
        1 => (any::<u32>(), proptest::option::of((1usize..200, any::<bool>())))
            .prop_map(|(cut_pick, garbage)| Op::DamageTail { cut_pick, garbage }),
        1 => any::<u32>().prop_map(|offset_pick| Op::Truncate { offset_pick }),
        1 => Just(Op::CleanReopen),
        1 => (any::<u32>(), any::<u32>(), 0u8..8).prop_map(|(file_pick, byte_pick, bit)| Op::FlipBit { file_pick, byte_pick, bit }),
        1 => (any::<u32>(), crash_at()).prop_map(|(offset_pick, crash)| Op::DeleteBefore { offset_pick, crash }),
        1 => (-12i8..20, crash_at()).prop_map(|(gap, crash)| Op::ResetTo { gap, crash }),
    ]
}

fn config() -> impl Strategy<Value = LogConfig> {
    (512u64..4_096, 0u32..1_024).prop_map(|(segment_bytes_max, index_interval_bytes)| LogConfig {
        segment_bytes_max,
        index_interval_bytes,
        clean_close_min_bytes: 0,
    })
}

/// What a test keeps of each appended batch, by fingerprint (the batch CRC): the records'
/// values and timestamps.
type Payloads = HashMap<u64, Vec<(Vec<u8>, i64)>>;

fn fingerprint(batch: &Batch) -> u64 {
    u64::from(batch.crc())
}

fn build_batch(spec: &BatchSpec, base_offset: Offset, payloads: &mut Payloads) -> (Batch, BatchMeta) {
    let records: Vec<Record> = spec
        .values
        .iter()
        .zip(&spec.timestamp_deltas)
        .map(|(value, delta)| Record {
            value: Some(Bytes::from(value.clone())),
            timestamp_ms: Some(spec.base_timestamp + delta),
            ..Record::default()
        })
        .collect();
    // Idempotent producers' fields, so the log's producer state has something to track (the log
    // applies what it is given; the rules are the replica core's).
    let producer = ProducerFields {
        producer_id: ProducerId(spec.base_timestamp % 3),
        producer_epoch: ProducerEpoch(0),
        base_sequence: Sequence(spec.base_timestamp as i32),
    };
    let bytes = encode_batch(&records, spec.base_timestamp, producer);
    let batch = Batch::parse(bytes).unwrap().stamped(base_offset, LeaderEpoch(0));
    let expected = spec
        .values
        .iter()
        .zip(&spec.timestamp_deltas)
        .map(|(value, delta)| (value.clone(), spec.base_timestamp + delta));
    payloads.insert(fingerprint(&batch), expected.collect());
    let meta = BatchMeta {
        base_offset: batch.base_offset().0,
        next_offset: batch.next_offset().0,
        max_timestamp: batch.max_timestamp(),
        size_bytes: batch.len(),
        fingerprint: fingerprint(&batch),
    };
    (batch, meta)
}

/// Splits a read result into batches and checks every record against what was appended.
fn decode_and_check(bytes: Bytes, payloads: &Payloads) -> Vec<BatchMeta> {
    let mut buf = bytes;
    let mut metas = Vec::new();
    while let Some(batch) = Batch::split_first(&mut buf).expect("a read returns whole, valid batches") {
        let expected = payloads.get(&fingerprint(&batch)).expect("read a batch that was never appended");
        let records: Vec<_> = batch.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(records.len(), expected.len());
        for (index, (record, (value, timestamp))) in records.iter().zip(expected).enumerate() {
            assert_eq!(record.offset, Offset(batch.base_offset().0 + index as i64));
            assert_eq!(record.value.as_deref(), Some(&value[..]));
            assert_eq!(record.timestamp_ms, *timestamp);
        }
        metas.push(BatchMeta {
            base_offset: batch.base_offset().0,
            next_offset: batch.next_offset().0,
            max_timestamp: batch.max_timestamp(),
            size_bytes: batch.len(),
            fingerprint: fingerprint(&batch),
        });
    }
    metas
}

fn read_all<D: Disk>(log: &PartitionLog<D>, payloads: &Payloads) -> Vec<BatchMeta> {
    let mut metas = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = log.read(offset, 64 * 1024, log.log_end_offset()).unwrap();
        let batches = decode_and_check(bytes, payloads);
        assert!(!batches.is_empty(), "read at {offset} below the log end returned nothing");
        offset = Offset(batches.last().unwrap().next_offset);
        metas.extend(batches);
    }
    metas
}

/// Every batch of the log, from its start.
fn all_batches<D: Disk>(log: &PartitionLog<D>) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let mut bytes = log.read(offset, 64 * 1024, log.log_end_offset()).unwrap();
        while let Some(batch) = Batch::split_first(&mut bytes).unwrap() {
            offset = batch.next_offset();
            batches.push(batch);
        }
    }
    batches
}

/// The producer state of the batches the log returns when read from its start, on top of the state
/// as of its start (`at_start`: the batches retention deleted): what the log's own copy
/// (`producer_states`) must equal after appends, truncations, deletions and recoveries.
fn producers_by_reading<D: Disk>(log: &PartitionLog<D>, at_start: &ProducerStates) -> ProducerStates {
    let mut producers = at_start.clone();
    for batch in all_batches(log) {
        producers.apply(&BatchIdentity::of(&batch), batch.base_offset());
    }
    producers
}

/// `producers` after the batches of `batches` below `offset`.
fn applied_below(producers: &ProducerStates, batches: &[Batch], offset: Offset) -> ProducerStates {
    let mut producers = producers.clone();
    for batch in batches.iter().filter(|batch| batch.base_offset() < offset) {
        producers.apply(&BatchIdentity::of(batch), batch.base_offset());
    }
    producers
}

/// What differs between the two disks.
trait Env {
    type D: Disk;
    fn disk(&self) -> Self::D;
    /// Simulates a crash of the process (and, for SimDisk, of the machine).
    fn crash(&self);
    /// Whether a crash may lose unsynced writes (SimDisk) or not (FileDisk: the OS keeps them).
    fn crash_loses_unsynced(&self) -> bool;
    /// Cuts the last segment's `.log` at `cut` and appends garbage; `None` if not supported.
    fn damage_last_segment(&self, cut_pick: u32, garbage: Option<(usize, bool)>, durable_end: i64) -> Option<()>;
    /// Whether an operation can be stopped half-way and the machine crashed (SimDisk).
    fn can_interrupt(&self) -> bool;
    /// Turns injected write errors (EIO and ENOSPC) on or off; false if the disk cannot inject them.
    fn inject_write_errors(&self, on: bool) -> bool;
    /// Flips one bit of a stored file (what reads and a crash see), as a rotting disk would.
    fn flip_bit(&self, path: &str, byte: u64, bit: u8);
    /// How many leading bytes of the file (whose page-cache view is `current`) are stored for good:
    /// a flip there stays. SimDisk: where the durable bytes are what reads see (a flip of a byte only
    /// in the page cache vanishes when a failed sync rebuilds it from the pending writes).
    fn durable_prefix_bytes(&self, path: &str, current: &[u8]) -> usize;
}

struct SimEnv {
    disk: SimDisk,
}

impl Env for SimEnv {
    type D = YieldingDisk;
    fn disk(&self) -> YieldingDisk {
        YieldingDisk(self.disk.clone())
    }
    fn can_interrupt(&self) -> bool {
        true
    }
    fn crash(&self) {
        self.disk.crash();
    }
    fn crash_loses_unsynced(&self) -> bool {
        true
    }
    fn damage_last_segment(&self, _: u32, _: Option<(usize, bool)>, _: i64) -> Option<()> {
        None
    }
    fn inject_write_errors(&self, on: bool) -> bool {
        let probability = if on { 0.1 } else { 0.0 };
        let faults = SimDiskFaults {
            write_eio_probability: probability,
            write_enospc_probability: probability,
            ..self.disk.faults()
        };
        self.disk.set_faults(faults);
        true
    }
    fn flip_bit(&self, path: &str, byte: u64, bit: u8) {
        self.disk.flip_bit(path, byte, bit).unwrap();
    }
    fn durable_prefix_bytes(&self, path: &str, current: &[u8]) -> usize {
        let durable = self.disk.durable_content(path).unwrap_or_default();
        durable.iter().zip(current).take_while(|(stored, cached)| stored == cached).count()
    }
}

/// SimDisk behind an open-file budget of 3 handles (`keel::storage::handles`, without the sync
/// task: syncs run on their own handle), so every few file uses close a handle, and one with
/// unsynced writes is synced by the opener first. The log must not tell the difference.
struct BudgetEnv {
    sim: SimEnv,
}

impl Env for BudgetEnv {
    type D = Handles<YieldingDisk>;
    fn disk(&self) -> Handles<YieldingDisk> {
        let budget = HandleBudget { files_max: 3, keep_unsynced: true, self_checked: &keel::log::SELF_CHECKED_FILES };
        Handles::new(self.sim.disk(), budget)
    }
    fn can_interrupt(&self) -> bool {
        self.sim.can_interrupt()
    }
    fn crash(&self) {
        self.sim.crash();
    }
    fn crash_loses_unsynced(&self) -> bool {
        self.sim.crash_loses_unsynced()
    }
    fn damage_last_segment(&self, cut_pick: u32, garbage: Option<(usize, bool)>, durable_end: i64) -> Option<()> {
        self.sim.damage_last_segment(cut_pick, garbage, durable_end)
    }
    fn inject_write_errors(&self, on: bool) -> bool {
        self.sim.inject_write_errors(on)
    }
    fn flip_bit(&self, path: &str, byte: u64, bit: u8) {
        self.sim.flip_bit(path, byte, bit);
    }
    fn durable_prefix_bytes(&self, path: &str, current: &[u8]) -> usize {
        self.sim.durable_prefix_bytes(path, current)
    }
}

struct FileEnv {
    root: tempfile::TempDir,
}

impl Env for FileEnv {
    type D = FileDisk;
    fn disk(&self) -> FileDisk {
        FileDisk::new(self.root.path())
    }
    fn crash(&self) {}
    fn can_interrupt(&self) -> bool {
        false
    }
    fn crash_loses_unsynced(&self) -> bool {
        false
    }
    fn damage_last_segment(&self, cut_pick: u32, garbage: Option<(usize, bool)>, durable_end: i64) -> Option<()> {
        let dir = self.root.path().join(DIR);
        let mut logs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".log"))
            .collect();
        logs.sort();
        let path = dir.join(logs.last()?);
        let mut content = std::fs::read(&path).unwrap();
        // Only bytes past the durable end may be lost: find where the first non-durable batch starts.
        let mut position = 0usize;
        while position < content.len() {
            let batch = Batch::split_first(&mut Bytes::copy_from_slice(&content[position..])).unwrap().unwrap();
            if batch.next_offset().0 > durable_end {
                break;
            }
            position += batch.len();
        }
        let cut = position + cut_pick as usize % (content.len() - position + 1);
        content.truncate(cut);
        if let Some((len, random)) = garbage {
            let fill: Vec<u8> = if random {
                (0..len).map(|i| (i as u8).wrapping_mul(151) ^ (cut as u8)).collect()
            } else {
                vec![0; len]
            };
            content.extend_from_slice(&fill);
        }
        write_file(&path, &content);
        Some(())
    }
    fn inject_write_errors(&self, _: bool) -> bool {
        false
    }
    fn flip_bit(&self, path: &str, byte: u64, bit: u8) {
        let path = self.root.path().join(path);
        let mut content = std::fs::read(&path).unwrap();
        content[byte as usize] ^= 1 << bit;
        write_file(&path, &content);
    }
    fn durable_prefix_bytes(&self, _: &str, current: &[u8]) -> usize {
        current.len()
    }
}

fn write_file(path: &Path, content: &[u8]) {
    std::fs::write(path, content).unwrap();
}

/// The base offset of the batch holding byte `byte` of a segment file's content (whole batches).
fn batch_holding(content: &[u8], byte: usize) -> i64 {
    let mut position = 0;
    loop {
        let size = peek_batch_size(&content[position..]).unwrap();
        if byte < position + size {
            return i64::from_be_bytes(content[position..position + 8].try_into().unwrap());
        }
        position += size;
    }
}

struct Harness<E: Env> {
    env: E,
    runtime: Runtime,
    config: LogConfig,
    log: Option<PartitionLog<E::D>>,
    model: PartitionLogModel,
    payloads: Payloads,
    fsync_errors: bool,
    /// Appends run with injected write errors.
    write_errors: bool,
    /// The producer state as of the log start: of the batches retention deleted.
    producers_at_start: ProducerStates,
}

impl<E: Env> Harness<E> {
    fn new(env: E, config: LogConfig, fsync_errors: bool) -> Self {
        let mut harness = Harness {
            env,
            runtime: runtime(),
            config,
            log: None,
            model: PartitionLogModel::new(),
            payloads: Payloads::new(),
            fsync_errors,
            write_errors: false,
            producers_at_start: ProducerStates::new(),
        };
        harness.reopen(true);
        harness
    }

    fn log(&mut self) -> &mut PartitionLog<E::D> {
        self.log.as_mut().expect("log is open")
    }

    /// Opens the log (retrying while injected fsync errors fail recovery) and checks the recovered
    /// contents against the model's crash rule. `exact`: nothing may have been lost.
    fn reopen(&mut self, exact: bool) -> RecoveryReport {
        self.log = None;
        let (log, report) = loop {
            match self.runtime.block_on(PartitionLog::open(self.env.disk(), DIR, self.config.clone())) {
                Ok(opened) => break opened,
                Err(LogError::Io(error)) if self.fsync_errors => {
                    assert!(error.to_string().contains("injected"), "{error}");
                }
                Err(error) => panic!("open failed: {error}"),
            }
        };
        let recovered = read_all(&log, &self.payloads);
        if exact {
            assert_eq!(recovered, self.model.batches(), "a reopen without power loss lost or changed data");
        }
        let as_recovered: Vec<RecoveredBatch> =
            recovered.iter().map(|batch| (batch.base_offset, batch.next_offset, batch.fingerprint)).collect();
        self.model.recovered(log.log_start_offset().0, &as_recovered).unwrap();
        assert_eq!(report.log_end_offset.0, self.model.log_end_offset());
        assert_eq!(report.log_start_offset, log.log_start_offset());
        assert_eq!(log.durable_end_offset(), log.log_end_offset(), "recovery syncs what it found");
        self.log = Some(log);
        report
    }

    /// Opens the log, retrying while injected fsync errors fail recovery.
    fn open_retrying(&mut self) -> PartitionLog<E::D> {
        loop {
            match self.runtime.block_on(PartitionLog::open(self.env.disk(), DIR, self.config.clone())) {
                Ok((log, _)) => return log,
                Err(LogError::Io(error)) if self.fsync_errors => {
                    assert!(error.to_string().contains("injected"), "{error}");
                }
                Err(error) => panic!("open failed: {error}"),
            }
        }
    }

    /// Bit rot: stops the process, flips one bit of a stored (durable) segment file and reopens the log as its
    /// owner does: recovery, then the leader-epoch check against the epoch cache (the batch CRC does
    /// not cover the epoch field; every batch here is written in epoch 0, so the cache is one entry),
    /// cutting the log where they disagree. A flip in a `.log` file must cut the log exactly at the
    /// batch holding the byte (or below it, where injected fsync errors may also lose unsynced
    /// batches); a flip in an index loses nothing.
    fn flip_bit(&mut self, file_pick: u32, byte_pick: u32, bit: u8) {
        self.log = None;
        let disk = self.env.disk();
        let mut files = Vec::new();
        for name in disk.list(DIR).unwrap() {
            let path = format!("{DIR}/{name}");
            if ![".log", ".index", ".timeindex"].iter().any(|ext| name.ends_with(ext)) {
                continue;
            }
            let content = disk.open(&path, false).unwrap().read_at(0, usize::MAX).unwrap();
            let durable_bytes = self.env.durable_prefix_bytes(&path, &content);
            if durable_bytes > 0 {
                files.push((path, content, durable_bytes));
            }
        }
        if files.is_empty() {
            self.reopen(!self.fsync_errors);
            return;
        }
        let (path, content, durable_bytes) = &files[file_pick as usize % files.len()];
        let byte = byte_pick as usize % durable_bytes;
        self.env.flip_bit(path, byte as u64, bit);
        if path.ends_with(".log") {
            self.model.corrupted(batch_holding(content, byte));
        }
        let epoch_cache = LeaderEpochs::from_entries([EpochEntry { epoch: LeaderEpoch(0), start_offset: Offset(0) }]);
        let log = loop {
            let mut log = self.open_retrying();
            let Some(cut) = log.epoch_mismatch(&epoch_cache) else { break log };
            log.truncate_to(cut).unwrap();
            match self.runtime.block_on(log.begin_sync()) {
                Ok(covered) => {
                    log.mark_durable(covered);
                    break log;
                }
                Err(error) => assert!(self.fsync_errors, "{error}"),
            }
        };
        let recovered = read_all(&log, &self.payloads);
        if !self.fsync_errors {
            assert_eq!(recovered, self.model.batches(), "bit flip at byte {byte} of {path}: not cut exactly there");
        }
        let as_recovered: Vec<RecoveredBatch> =
            recovered.iter().map(|batch| (batch.base_offset, batch.next_offset, batch.fingerprint)).collect();
        self.model.recovered(log.log_start_offset().0, &as_recovered).unwrap();
        assert_eq!(log.durable_end_offset(), log.log_end_offset());
        self.log = Some(log);
    }

    /// After a sync failed: the log refuses appends, then a reopen must keep everything durable.
    fn after_sync_failure(&mut self, error: LogError) {
        assert!(self.fsync_errors, "sync failed without injected errors: {error}");
        let log_end = self.log().log_end_offset();
        let spec = BatchSpec { values: vec![vec![1]], timestamp_deltas: vec![0], base_timestamp: 0 };
        let (batch, _) = build_batch(&spec, log_end, &mut Payloads::new());
        assert!(matches!(self.log().append(&batch), Err(LogError::Failed)));
        let sync = self.log().begin_sync();
        assert!(matches!(self.runtime.block_on(sync), Err(LogError::Failed)));
        self.reopen(false);
    }

    /// Appends one batch; false if an injected write error failed it (the log was then reopened).
    fn append(&mut self, spec: &BatchSpec) -> bool {
        let (batch, meta) = build_batch(spec, Offset(self.model.log_end_offset()), &mut self.payloads);
        if !self.write_errors {
            self.log().append(&batch).unwrap();
            self.model.append(meta).unwrap();
            return true;
        }
        assert!(self.env.inject_write_errors(true), "this disk cannot inject write errors");
        let result = self.log().append(&batch);
        self.env.inject_write_errors(false);
        match result {
            Ok(()) => {
                self.model.append(meta).unwrap();
                true
            }
            Err(error) => {
                let message = error.to_string();
                assert!(message.contains("injected write error"), "{message}");
                assert_eq!(error.is_disk_full(), message.contains("ENOSPC"), "{message}");
                // The log is failed until reopened...
                assert!(matches!(self.log().append(&batch), Err(LogError::Failed)));
                // ...and without a power loss the reopened log holds exactly what was appended
                // before: the failed batch is not in it (recovery cut whatever prefix of it landed).
                self.reopen(true);
                false
            }
        }
    }

    fn sync(&mut self) {
        let ticket = self.model.begin_sync();
        let sync = self.log().begin_sync();
        match self.runtime.block_on(sync) {
            Ok(covered) => {
                self.log().mark_durable(covered);
                self.model.sync_succeeded(ticket);
            }
            Err(error) => self.after_sync_failure(error),
        }
    }

    fn check_offsets(&mut self) {
        let (start, end, durable) =
            (self.model.log_start_offset(), self.model.log_end_offset(), self.model.durable_end_offset());
        let log = self.log.as_ref().expect("log is open");
        assert_eq!(log.log_start_offset().0, start, "log start");
        assert_eq!(log.log_end_offset().0, end, "log end");
        assert_eq!(log.durable_end_offset().0, durable, "durable end");
        let expected = producers_by_reading(log, &self.producers_at_start);
        assert_eq!(log.producer_states(), &expected, "the log's producer state is its batches'");
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(spec) => {
                self.append(spec);
            }
            Op::AppendDuringSync(spec) => {
                let ticket = self.model.begin_sync();
                let sync = self.log().begin_sync();
                if !self.append(spec) {
                    // The failed append reopened the log; the sync belonged to the old one.
                    drop(sync);
                    return self.check_offsets();
                }
                match self.runtime.block_on(sync) {
                    Ok(covered) => {
                        self.log().mark_durable(covered);
                        self.model.sync_succeeded(ticket);
                        assert!(self.log().durable_end_offset() < self.log().log_end_offset());
                    }
                    Err(error) => self.after_sync_failure(error),
                }
            }
            Op::Read { offset_pick, max_bytes, up_to_pick } => {
                let end = self.model.log_end_offset();
                let offset = (*offset_pick as i64) % (end + 2);
                let up_to = up_to_pick.map_or(end, |pick| (pick as i64) % (end + 1));
                let expected = self.model.read(offset, *max_bytes, up_to);
                let actual = self.log().read(Offset(offset), *max_bytes, Offset(up_to));
                match (expected, actual) {
                    (Ok(expected), Ok(bytes)) => assert_eq!(decode_and_check(bytes, &self.payloads), expected),
                    (Err(_), Err(LogError::OffsetOutOfRange { requested, .. })) => assert_eq!(requested.0, offset),
                    (expected, actual) => {
                        panic!("read({offset}, {max_bytes}, {up_to}): model {expected:?}, log {actual:?}")
                    }
                }
            }
            Op::OffsetForTimestamp(timestamp) => {
                let expected = self.model.offset_for_timestamp(*timestamp);
                let actual = self.log().offset_for_timestamp(*timestamp).unwrap();
                assert_eq!(actual.map(|(offset, ts)| (offset.0, ts)), expected, "offset_for_timestamp({timestamp})");
            }
            Op::Sync => self.sync(),
            Op::Crash => {
                self.log = None;
                self.env.crash();
                let lossless = !self.env.crash_loses_unsynced();
                self.reopen(lossless);
            }
            Op::DamageTail { cut_pick, garbage } => {
                self.log = None;
                let durable_end = self.model.durable_end_offset();
                if self.env.damage_last_segment(*cut_pick, *garbage, durable_end).is_none() {
                    self.env.crash();
                }
                self.reopen(false);
            }
            Op::Truncate { offset_pick } => {
                let (start, end) = (self.model.log_start_offset(), self.model.log_end_offset());
                let offset = start + (*offset_pick as i64) % (end - start + 1);
                self.log().truncate_to(Offset(offset)).unwrap();
                self.model.truncate_to(offset).unwrap();
                self.check_offsets();
                self.sync();
            }
            Op::CleanReopen => {
                let log = self.log.take().unwrap();
                match self.runtime.block_on(log.close()) {
                    Ok(()) => {
                        self.model.sync_succeeded(self.model.begin_sync());
                        let report = self.reopen(true);
                        // (With injected fsync errors an open that failed took the record with it,
                        // and the retry scans.)
                        // (An empty log gets no record: its open scans nothing anyway.)
                        let empty = self.model.log_end_offset() == self.model.log_start_offset();
                        if !self.fsync_errors {
                            assert_eq!(
                                report.clean_close, !empty,
                                "a graceful close is followed by an open without a scan"
                            );
                            assert_eq!(report.verified_bytes, 0);
                        }
                    }
                    Err(error) => {
                        assert!(self.fsync_errors, "close failed: {error}");
                        self.reopen(false);
                    }
                }
            }
            Op::FlipBit { file_pick, byte_pick, bit } => self.flip_bit(*file_pick, *byte_pick, *bit),
            Op::DeleteBefore { offset_pick, crash } => self.delete_before(*offset_pick, *crash),
            Op::ResetTo { gap, crash } => self.reset_to(*gap, *crash),
        }
        self.check_offsets();
    }

    /// Runs `operation` on the log to completion, or (`CrashAt::Within`, on a disk that can) for at
    /// most that many polls; `None` if it did not complete.
    fn run_log_operation<T>(
        &mut self,
        crash: Option<CrashAt>,
        operation: impl FnOnce(&mut PartitionLog<E::D>) -> Pin<Box<dyn Future<Output = T> + '_>>,
    ) -> Option<T> {
        let n_polls = match crash {
            Some(CrashAt::Within { n_polls }) if self.env.can_interrupt() => Some(n_polls),
            _ => None,
        };
        let log = self.log.as_mut().expect("log is open");
        let future = operation(log);
        match n_polls {
            Some(n_polls) => poll_at_most(future, n_polls),
            None => Some(self.runtime.block_on(future)),
        }
    }

    /// After an operation that moved the log start did not complete (dropped half-way, then a power
    /// loss; or failed on an injected error, then a reopen): the recovered log must start at one of
    /// the segment bases it had (`bases`) or at `reset_offset`, and its producer state is the one as
    /// of that start.
    fn recover_interrupted(&mut self, crashed: bool, bases: &[i64], batches: &[Batch], reset_offset: Option<i64>) {
        self.log = None;
        if crashed {
            self.env.crash();
        }
        self.reopen(!self.env.crash_loses_unsynced() && !self.fsync_errors);
        let log = self.log.as_ref().expect("reopened");
        let start = log.log_start_offset();
        assert!(bases.contains(&start.0) || reset_offset == Some(start.0), "recovered start {start}, bases {bases:?}");
        // The new empty log, unless the reset was to the base of an empty active segment: then the
        // log is empty there either way, and its snapshot is the old one or the reset's (empty).
        let new_log = reset_offset == Some(start.0)
            && log.log_end_offset() == start
            && (!bases.contains(&start.0) || log.producer_states().is_empty());
        self.producers_at_start =
            if new_log { ProducerStates::new() } else { applied_below(&self.producers_at_start, batches, start) };
    }

    /// Retention up to a random offset (from the log start to past the log end), then maybe a power
    /// loss: completed, the log starts at the last segment base at or below the offset (never past
    /// the active segment's) and the deletion is durable.
    fn delete_before(&mut self, offset_pick: u32, crash: Option<CrashAt>) {
        let (start, end) = (self.model.log_start_offset(), self.model.log_end_offset());
        let requested = start + offset_pick as i64 % (end - start + 20);
        let log = self.log.as_ref().expect("log is open");
        let bases: Vec<i64> = log.segment_summaries().iter().map(|summary| summary.base_offset.0).collect();
        let batches = all_batches(log);
        let outcome = self.run_log_operation(crash, |log| Box::pin(log.delete_segments_before(Offset(requested))));
        match outcome {
            Some(Ok(new_start)) => {
                let expected = bases.iter().copied().filter(|&base| base <= requested.max(start)).max().unwrap();
                assert_eq!(new_start.0, expected, "requested {requested}, bases {bases:?}");
                assert_eq!(self.log().log_start_offset(), new_start);
                self.model.delete_before(new_start.0).unwrap();
                self.producers_at_start = applied_below(&self.producers_at_start, &batches, new_start);
                self.check_offsets();
                if crash.is_some() {
                    self.apply(&Op::Crash);
                    assert_eq!(self.log().log_start_offset(), new_start, "a completed deletion is durable");
                }
            }
            Some(Err(error)) => {
                assert!(self.fsync_errors, "deletion failed: {error}");
                self.model.deletion_interrupted(requested);
                self.recover_interrupted(false, &bases, &batches, None);
            }
            None => {
                self.model.deletion_interrupted(requested);
                self.recover_interrupted(true, &bases, &batches, None);
            }
        }
    }

    /// A follower's reset to the log end plus `gap` (not below 0), then maybe a power loss.
    fn reset_to(&mut self, gap: i8, crash: Option<CrashAt>) {
        let offset = (self.model.log_end_offset() + i64::from(gap)).max(0);
        let log = self.log.as_ref().expect("log is open");
        let bases: Vec<i64> = log.segment_summaries().iter().map(|summary| summary.base_offset.0).collect();
        let batches = all_batches(log);
        let outcome = self.run_log_operation(crash, |log| Box::pin(log.reset_to(Offset(offset))));
        match outcome {
            Some(Ok(())) => {
                self.model.reset(offset).unwrap();
                self.producers_at_start = ProducerStates::new();
                self.check_offsets();
                if crash.is_some() {
                    self.apply(&Op::Crash);
                    assert_eq!(self.log().log_start_offset(), Offset(offset), "a completed reset is durable");
                }
            }
            Some(Err(error)) => {
                assert!(self.fsync_errors, "reset failed: {error}");
                self.model.reset_interrupted(offset);
                self.recover_interrupted(false, &bases, &batches, Some(offset));
            }
            None => {
                self.model.reset_interrupted(offset);
                self.recover_interrupted(true, &bases, &batches, Some(offset));
            }
        }
    }
}

fn run<E: Env>(env: E, config: LogConfig, ops: &[Op], fsync_errors: bool) {
    let mut harness = Harness::new(env, config, fsync_errors);
    for op in ops {
        harness.apply(op);
    }
    // End with a clean reopen: everything must come back.
    harness.apply(&Op::CleanReopen);
}

fn proptest_config() -> ProptestConfig {
    // PROPTEST_CASES overrides the modest default (kept small so the debug test stays fast).
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(40);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/log_model.txt"))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn sim_disk_log_matches_model(seed in any::<u64>(), config in config(), ops in proptest::collection::vec(op(), 1..80)) {
        run(SimEnv { disk: SimDisk::new(seed) }, config, &ops, false);
    }

    #[test]
    fn sim_disk_with_fsync_errors_keeps_durable_data(
        seed in any::<u64>(),
        config in config(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let disk = SimDisk::new(seed);
        disk.set_faults(SimDiskFaults { fsync_error_probability: 0.1, ..SimDiskFaults::default() });
        run(SimEnv { disk }, config, &ops, true);
    }

    #[test]
    fn sim_disk_with_write_errors_keeps_everything_appended_before_and_nothing_of_the_failed_batch(
        seed in any::<u64>(),
        config in config(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut harness = Harness::new(SimEnv { disk: SimDisk::new(seed) }, config, false);
        harness.write_errors = true;
        for op in &ops {
            harness.apply(op);
        }
        harness.apply(&Op::CleanReopen);
    }

    /// Without fsync errors: a closing sync that fails is not told to the log until its next sync,
    /// and reads of its unsynced tail may fail (`Corrupt`) in between (ADR 0023, "What is left").
    #[test]
    fn budgeted_sim_disk_log_matches_model(
        seed in any::<u64>(),
        config in config(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(BudgetEnv { sim: SimEnv { disk: SimDisk::new(seed) } }, config, &ops, false);
    }

    #[test]
    fn file_disk_log_matches_model(config in config(), ops in proptest::collection::vec(op(), 1..60)) {
        run(FileEnv { root: tempfile::tempdir().unwrap() }, config, &ops, false);
    }
}

// ---- Unit tests for single fault cases. ----

fn small_config() -> LogConfig {
    LogConfig { segment_bytes_max: 1_024, index_interval_bytes: 128, clean_close_min_bytes: 0 }
}

fn spec(index: usize) -> BatchSpec {
    BatchSpec {
        values: vec![vec![index as u8; 40]; 3],
        timestamp_deltas: vec![0, 1, 2],
        base_timestamp: index as i64 * 10,
    }
}

/// A SimDisk log with `n` batches appended and synced (segments rolled and sealed).
fn synced_sim_log(n: usize) -> Harness<SimEnv> {
    let mut harness = Harness::new(SimEnv { disk: SimDisk::new(7) }, small_config(), false);
    for index in 0..n {
        harness.apply(&Op::Append(spec(index)));
    }
    harness.apply(&Op::CleanReopen);
    harness
}

fn segment_logs(disk: &SimDisk) -> Vec<String> {
    disk.list(DIR).unwrap().into_iter().filter(|name| name.ends_with(".log")).collect()
}

/// The durable content of segment file `name`, and the base offsets of its batches with their
/// byte positions.
fn segment_batches(disk: &SimDisk, name: &str) -> (Vec<u8>, Vec<(i64, usize)>) {
    let content = disk.durable_content(&format!("{DIR}/{name}")).unwrap();
    let mut batches = Vec::new();
    let mut position = 0;
    while position < content.len() {
        batches.push((batch_holding(&content, position), position));
        position += peek_batch_size(&content[position..]).unwrap();
    }
    (content, batches)
}

/// A bit flip in the records of a batch in a sealed (not the last) segment, found by a read while
/// the log is open: a read that reaches the batch (from before it, or at it) fails with `Corrupt` at
/// that batch, never returns its bytes, and fails the log; reads that stop below it are intact. The
/// reopened log ends at the last good batch.
#[test]
fn bit_flip_in_a_sealed_segment_is_caught_on_read_and_never_served() {
    for read_from_before in [true, false] {
        let mut harness = synced_sim_log(40);
        let logs = segment_logs(&harness.env.disk);
        assert!(logs.len() >= 3, "segments: {logs:?}");
        let (_, batches) = segment_batches(&harness.env.disk, &logs[1]);
        assert!(batches.len() >= 3, "{batches:?}");
        let (corrupt_base, position) = batches[1];
        harness.env.disk.flip_bit(&format!("{DIR}/{}", logs[1]), position as u64 + 80, 2).unwrap();
        let end = harness.log().log_end_offset();
        let below = harness.log().read(Offset(0), 64 * 1024, Offset(corrupt_base)).unwrap();
        assert_eq!(decode_and_check(below, &harness.payloads).last().unwrap().next_offset, corrupt_base);
        let from = if read_from_before { Offset(batches[0].0) } else { Offset(corrupt_base) };
        match harness.log().read(from, 64 * 1024, end) {
            Err(LogError::Corrupt { offset, reason }) => {
                assert_eq!(offset.0, corrupt_base, "{reason}");
                assert!(reason.contains("CRC"), "{reason}");
            }
            other => panic!("read across a flipped byte: {other:?}"),
        }
        // The log failed with it: it must be reopened before it is used again.
        assert!(matches!(harness.log().read(Offset(0), 100, end), Err(LogError::Failed)));
        harness.log = None;
        harness.model.corrupted(corrupt_base);
        let report = harness.reopen(true);
        assert_eq!(report.log_end_offset.0, corrupt_base);
    }
}

/// A bit flip in the middle of a durable, sealed segment (not the tail): recovery verifies every
/// batch of every segment, so the reopened log ends at the last good batch before it; the rest of
/// that segment and every later segment are gone (a replica fetches them again from its leader).
#[test]
fn bit_flip_in_the_middle_of_a_sealed_segment_cuts_the_log_there_on_recovery() {
    let mut harness = synced_sim_log(40);
    let logs = segment_logs(&harness.env.disk);
    assert!(logs.len() >= 3, "segments: {logs:?}");
    let (content, batches) = segment_batches(&harness.env.disk, &logs[1]);
    let (corrupt_base, position) = batches[batches.len() / 2];
    let bytes_from_cut: u64 = (content.len() - position) as u64
        + logs[2..]
            .iter()
            .map(|name| harness.env.disk.durable_content(&format!("{DIR}/{name}")).unwrap().len() as u64)
            .sum::<u64>();
    harness.log = None;
    harness.env.disk.flip_bit(&format!("{DIR}/{}", logs[1]), position as u64 + 70, 5).unwrap();
    harness.model.corrupted(corrupt_base);
    let report = harness.reopen(true);
    assert_eq!(report.log_end_offset.0, corrupt_base);
    assert_eq!(report.truncated_bytes, bytes_from_cut, "the rest of the segment and every later one");
    let (cut_at, reason) = report.cut.clone().expect("recovery reports its cut");
    assert_eq!(cut_at.0, corrupt_base, "{reason}");
    assert_eq!(segment_logs(&harness.env.disk), logs[..2].to_vec(), "later segments removed");
    assert_eq!(
        report.verified_bytes,
        position as u64
            + logs[..1]
                .iter()
                .map(|name| harness.env.disk.durable_content(&format!("{DIR}/{name}")).unwrap().len() as u64)
                .sum::<u64>()
    );
    // The cut is durable: a power loss now brings back nothing past it.
    harness.log = None;
    harness.env.disk.crash();
    let report = harness.reopen(true);
    assert_eq!(report.cut, None);
}

/// A flipped leader-epoch field (not covered by the batch CRC) survives recovery's scan, but the
/// epoch runs recovery collects disagree with the epoch cache exactly there, and a read of a batch
/// whose epoch field changed while the log was open fails.
#[test]
fn flipped_leader_epoch_field_is_found_by_the_epoch_check() {
    let mut harness = synced_sim_log(40);
    let logs = segment_logs(&harness.env.disk);
    let (_, batches) = segment_batches(&harness.env.disk, &logs[1]);
    let (corrupt_base, position) = batches[1];
    let epoch_cache = LeaderEpochs::from_entries([EpochEntry { epoch: LeaderEpoch(0), start_offset: Offset(0) }]);
    assert_eq!(harness.log().epoch_mismatch(&epoch_cache), None);
    // Byte 15 is the low byte of the epoch field.
    harness.env.disk.flip_bit(&format!("{DIR}/{}", logs[1]), position as u64 + 15, 1).unwrap();
    let end = harness.log().log_end_offset();
    match harness.log().read(Offset(corrupt_base), 64 * 1024, end) {
        Err(LogError::Corrupt { offset, reason }) => {
            assert_eq!(offset.0, corrupt_base);
            assert!(reason.contains("leader epoch"), "{reason}");
        }
        other => panic!("read of a batch with a flipped epoch: {other:?}"),
    }
    harness.log = None;
    let (log, _) = harness.runtime.block_on(PartitionLog::open(harness.env.disk(), DIR, small_config())).unwrap();
    assert_eq!(log.log_end_offset(), end, "the scan cannot see it: the CRC does not cover the epoch");
    assert_eq!(log.epoch_mismatch(&epoch_cache), Some(Offset(corrupt_base)));
    let runs: Vec<(i32, i64)> = log.epoch_runs().iter().map(|run| (run.epoch.0, run.start_offset.0)).collect();
    let next = batches[2].0;
    assert_eq!(runs, vec![(0, 0), (2, corrupt_base), (0, next)]);
}

#[test]
fn bit_flip_in_the_last_segment_is_truncated_on_recovery() {
    let mut harness = synced_sim_log(40);
    let logs = segment_logs(&harness.env.disk);
    let last = format!("{DIR}/{}", logs.last().unwrap());
    let end_before = harness.model.log_end_offset();
    harness.log = None;
    harness.env.disk.flip_bit(&last, 70, 0).unwrap();
    let (log, report) = harness.runtime.block_on(PartitionLog::open(harness.env.disk(), DIR, small_config())).unwrap();
    assert!(report.truncated_bytes > 0);
    assert!(log.log_end_offset().0 < end_before);
    let base: i64 = logs.last().unwrap()[..20].parse().unwrap();
    assert_eq!(log.log_end_offset().0, base, "the flip is in the first batch of the last segment");
}

#[test]
fn corrupt_index_of_a_closed_segment_is_rebuilt_from_a_scan() {
    let mut harness = synced_sim_log(40);
    let indexes: Vec<String> =
        harness.env.disk.list(DIR).unwrap().into_iter().filter(|name| name.ends_with(".index")).collect();
    harness.log = None;
    harness.env.disk.flip_bit(&format!("{DIR}/{}", indexes[0]), 0, 7).unwrap();
    let report = harness.reopen(true);
    assert_eq!(report.rebuilt_indexes, 2, "the corrupt closed segment and the last one");
    assert_eq!(report.truncated_bytes, 0);
    // And the rebuilt one is sealed again: the next open trusts it.
    harness.apply(&Op::CleanReopen);
    let report = harness.reopen(true);
    assert_eq!(report.rebuilt_indexes, 1);
}

#[test]
fn close_makes_seals_durable_so_power_loss_leaves_closed_segments_trusted() {
    let mut harness = synced_sim_log(40);
    harness.apply(&Op::CleanReopen);
    harness.log = None;
    harness.env.disk.crash();
    let report = harness.reopen(true);
    assert!(report.segments >= 3);
    assert_eq!(report.rebuilt_indexes, 1, "only the last segment's indexes are rebuilt (every segment is verified)");
    assert_eq!(report.truncated_bytes, 0);
}

#[test]
fn a_sync_of_plain_appends_costs_one_file_sync() {
    let mut harness = Harness::new(SimEnv { disk: SimDisk::new(9) }, small_config(), false);
    for index in 0..3 {
        harness.apply(&Op::Append(spec(index)));
    }
    let before = harness.env.disk.stats();
    harness.apply(&Op::Sync);
    let after = harness.env.disk.stats();
    assert_eq!(after.syncs - before.syncs, 1, "index entries of the active segment are not fsynced");
    assert_eq!(after.dir_syncs, before.dir_syncs);
}

#[test]
fn unsynced_appends_are_lost_on_power_loss_and_synced_ones_survive() {
    let mut harness = Harness::new(SimEnv { disk: SimDisk::new(3) }, small_config(), false);
    harness.env.disk.set_faults(SimDiskFaults { torn_write_probability: 1.0, ..SimDiskFaults::default() });
    for index in 0..5 {
        harness.apply(&Op::Append(spec(index)));
    }
    harness.apply(&Op::Sync);
    let durable = harness.model.durable_end_offset();
    for index in 5..30 {
        harness.apply(&Op::Append(spec(index)));
    }
    harness.log = None;
    harness.env.disk.crash();
    harness.reopen(false);
    let end = harness.log().log_end_offset().0;
    assert!(end >= durable && end < 90, "durable {durable}, recovered end {end}");
}

#[test]
fn fsync_error_fails_the_log_and_reopen_keeps_durable_data() {
    let mut harness = Harness::new(SimEnv { disk: SimDisk::new(11) }, small_config(), true);
    for index in 0..10 {
        harness.apply(&Op::Append(spec(index)));
    }
    harness.apply(&Op::Sync);
    let durable = harness.model.durable_end_offset();
    assert_eq!(durable, 30);
    for index in 10..20 {
        harness.apply(&Op::Append(spec(index)));
    }
    harness.env.disk.set_faults(SimDiskFaults { fsync_error_probability: 1.0, ..SimDiskFaults::default() });
    let sync = harness.log().begin_sync();
    let result = harness.runtime.block_on(sync);
    assert!(matches!(result, Err(LogError::Io(_))));
    assert!(harness.env.disk.stats().sync_errors > 0);
    harness.env.disk.set_faults(SimDiskFaults::default());
    harness.after_sync_failure(result.unwrap_err());
    assert!(harness.log().log_end_offset().0 >= durable);
}

#[test]
fn durable_end_waits_for_every_earlier_sync() {
    let mut harness = Harness::new(SimEnv { disk: SimDisk::new(5) }, small_config(), false);
    harness.apply(&Op::Append(spec(0)));
    let first = harness.log().begin_sync();
    harness.apply(&Op::Append(spec(1)));
    let second = harness.log().begin_sync();
    let covered = harness.runtime.block_on(second).unwrap();
    assert_eq!(covered, Offset(6));
    harness.log().mark_durable(covered);
    assert_eq!(harness.log().durable_end_offset(), Offset(0), "the first sync has not completed");
    let covered_first = harness.runtime.block_on(first).unwrap();
    harness.log().mark_durable(covered_first);
    assert_eq!(harness.log().durable_end_offset(), Offset(3));
    harness.log().mark_durable(covered);
    assert_eq!(harness.log().durable_end_offset(), Offset(6));
}

#[test]
fn dropping_a_sync_future_fails_the_log() {
    let mut harness = Harness::new(SimEnv { disk: SimDisk::new(5) }, small_config(), false);
    harness.apply(&Op::Append(spec(0)));
    drop(harness.log().begin_sync());
    let (batch, _) = build_batch(&spec(1), Offset(3), &mut Payloads::new());
    assert!(matches!(harness.log().append(&batch), Err(LogError::Failed)));
}

#[test]
fn truncate_then_read_and_reopen() {
    let mut harness = synced_sim_log(30);
    let end = harness.model.log_end_offset();
    harness.apply(&Op::Truncate { offset_pick: 31 });
    assert_eq!(harness.model.log_end_offset(), 30, "31 is inside the batch at 30");
    harness.apply(&Op::Read { offset_pick: 0, max_bytes: 100_000, up_to_pick: None });
    harness.apply(&Op::Append(spec(99)));
    harness.apply(&Op::CleanReopen);
    assert!(end > 33);
    harness.apply(&Op::Truncate { offset_pick: 0 });
    assert_eq!(harness.log().log_end_offset(), Offset(0));
    harness.apply(&Op::CleanReopen);
    harness.apply(&Op::Append(spec(1)));
    harness.apply(&Op::Crash);
}

#[test]
#[should_panic(expected = "truncate_to without a completed sync")]
fn append_right_after_truncate_is_refused() {
    let mut harness = synced_sim_log(5);
    harness.log().truncate_to(Offset(3)).unwrap();
    let (batch, _) = build_batch(&spec(1), Offset(3), &mut Payloads::new());
    let _ = harness.log().append(&batch);
}

#[test]
fn read_spanning_segments_and_limits() {
    let mut harness = synced_sim_log(40);
    // One batch is ~190 bytes: a small max_bytes still returns one batch, a large one spans segments.
    for (offset_pick, max_bytes) in [(0, 1), (4, 0), (13, 5_000), (0, 100_000), (119, 10), (120, 10)] {
        harness.apply(&Op::Read { offset_pick, max_bytes, up_to_pick: None });
        harness.apply(&Op::Read { offset_pick, max_bytes, up_to_pick: Some(60) });
    }
    let all = harness.log().read(Offset(0), 1 << 20, Offset(120)).unwrap();
    assert_eq!(decode_and_check(all, &harness.payloads).len(), 40);
}

#[test]
fn leftover_index_files_without_a_log_are_removed() {
    let disk = SimDisk::new(1);
    disk.create_dir_all(DIR).unwrap();
    let stray = disk.open(&format!("{DIR}/00000000000000000042.index"), true).unwrap();
    stray.write_at(0, b"junk").unwrap();
    let runtime = runtime();
    let (log, report) = runtime.block_on(PartitionLog::open(disk.clone(), DIR, small_config())).unwrap();
    assert_eq!(report.segments, 1);
    assert_eq!(log.log_end_offset(), Offset(0));
    assert!(!disk.list(DIR).unwrap().iter().any(|name| name.starts_with("00000000000000000042")));
}

#[test]
fn non_contiguous_batch_in_a_segment_is_cut_on_recovery() {
    let disk = SimDisk::new(2);
    disk.create_dir_all(DIR).unwrap();
    let mut payloads = Payloads::new();
    let (first, _) = build_batch(&spec(0), Offset(0), &mut payloads);
    let (skipping, _) = build_batch(&spec(1), Offset(5), &mut payloads);
    let file = disk.open(&format!("{DIR}/00000000000000000000.log"), true).unwrap();
    file.write_at(0, first.as_bytes()).unwrap();
    file.write_at(first.len() as u64, skipping.as_bytes()).unwrap();
    let runtime = runtime();
    let (log, report) = runtime.block_on(PartitionLog::open(disk.clone(), DIR, small_config())).unwrap();
    assert_eq!(log.log_end_offset(), Offset(3));
    assert_eq!(report.truncated_bytes, skipping.len() as u64);
}

#[test]
fn sealed_segment_whose_length_does_not_match_is_scanned_and_later_segments_dropped() {
    let mut harness = synced_sim_log(40);
    harness.log = None;
    let logs = segment_logs(&harness.env.disk);
    let second = harness.env.disk.open(&format!("{DIR}/{}", logs[1]), false).unwrap();
    let len = second.len().unwrap();
    // Lose the tail of a sealed segment behind the log's back (as a lying disk would).
    second.set_len(len - 10).unwrap();
    let runtime = runtime();
    let (log, report) = runtime.block_on(PartitionLog::open(harness.env.disk(), DIR, small_config())).unwrap();
    let base: i64 = logs[1][..20].parse().unwrap();
    assert!(log.log_end_offset().0 > base && log.log_end_offset().0 < 120);
    assert_eq!(report.segments, 2, "segments after the hole are dropped");
    assert_eq!(segment_logs(&harness.env.disk).len(), 2);
    assert!(report.truncated_bytes > 10);
    read_all(&log, &harness.payloads);
}

#[test]
fn failed_syncs_around_rolls_with_garbage_tails_never_serve_garbage() {
    // Syncs fail half the time and every torn write ends in garbage: the case where a seal written
    // before the segment's data was durable (the directory sync succeeded, the data sync failed
    // with a torn, full-length tail) would make recovery trust a damaged segment.
    for seed in 0..200 {
        let disk = SimDisk::new(seed);
        let mut harness = Harness::new(SimEnv { disk: disk.clone() }, small_config(), true);
        disk.set_faults(SimDiskFaults {
            fsync_error_probability: 0.5,
            torn_write_probability: 0.5,
            garbage_tail_probability: 1.0,
            ..SimDiskFaults::default()
        });
        for index in 0..12 {
            harness.apply(&Op::Append(spec(index)));
            if index % 3 == (seed as usize % 3) {
                harness.apply(&Op::Sync);
            }
        }
        harness.apply(&Op::Crash);
        harness.apply(&Op::Read { offset_pick: 0, max_bytes: 1 << 20, up_to_pick: None });
    }
}

/// Closes the harness's log gracefully, as a broker's stop does, without reopening it.
fn close_gracefully(harness: &mut Harness<SimEnv>) {
    let log = harness.log.take().expect("log is open");
    harness.runtime.block_on(log.close()).unwrap();
    harness.model.sync_succeeded(harness.model.begin_sync());
}

/// A graceful close leaves a clean-close record: the next open (even after a power loss: the close
/// synced it) takes the log's state from it and the seals, reads none of the `.log` bytes, and has
/// the same log: every batch, the producer table, the epoch runs. That open removes the record
/// durably, so after more appends and a power loss the open scans again.
#[test]
fn a_clean_close_lets_the_next_open_skip_the_scan_once() {
    let mut harness = synced_sim_log(40);
    let runs_before = harness.log().epoch_runs().to_vec();
    let producers_before = harness.log().producer_states().clone();
    close_gracefully(&mut harness);
    harness.env.disk.crash();
    let report = harness.reopen(true);
    assert!(report.clean_close, "{report:?}");
    assert_eq!((report.verified_bytes, report.rebuilt_indexes, report.truncated_bytes), (0, 0, 0), "{report:?}");
    assert!(report.segments >= 3, "{report:?}");
    assert_eq!(harness.log().epoch_runs(), &runs_before[..]);
    assert_eq!(harness.log().producer_states(), &producers_before);
    harness.check_offsets();
    for index in 40..45 {
        harness.apply(&Op::Append(spec(index)));
    }
    harness.apply(&Op::Sync);
    harness.log = None;
    harness.env.disk.crash();
    let report = harness.reopen(true);
    assert!(!report.clean_close, "the record was removed by the open before the appends");
    assert!(report.verified_bytes > 0);
    harness.check_offsets();
}

/// An empty log (new, or truncated back to its start) closes without a record and without a sync:
/// its next open scans nothing anyway, and thousands of idle partitions stopping at once paid three
/// fsyncs each for nothing (`many_partitions_small_file_budget` seed 34695192). A log with one batch
/// still gets its record.
#[test]
fn an_empty_log_closes_without_a_record_or_a_sync() {
    let runtime = runtime();
    let disk = SimDisk::new(12);
    let (log, _) = runtime.block_on(PartitionLog::open(disk.clone(), DIR, small_config())).unwrap();
    let syncs_before = (disk.stats().syncs, disk.stats().dir_syncs);
    runtime.block_on(log.close()).unwrap();
    assert_eq!((disk.stats().syncs, disk.stats().dir_syncs), syncs_before, "a new log's close synced");
    let (mut log, report) = runtime.block_on(PartitionLog::open(disk.clone(), DIR, small_config())).unwrap();
    assert!(!report.clean_close, "{report:?}");

    let batch = Batch::parse(encode_batch(&[Record::value(b"x".to_vec())], 1_000, ProducerFields::NONE))
        .unwrap()
        .stamped(Offset(0), LeaderEpoch(1));
    log.append(&batch).unwrap();
    let covered = runtime.block_on(log.begin_sync()).unwrap();
    log.mark_durable(covered);
    log.truncate_to(Offset(0)).unwrap();
    let covered = runtime.block_on(log.begin_sync()).unwrap();
    log.mark_durable(covered);
    let syncs_before = (disk.stats().syncs, disk.stats().dir_syncs);
    runtime.block_on(log.close()).unwrap();
    assert_eq!((disk.stats().syncs, disk.stats().dir_syncs), syncs_before, "a log truncated to its start synced");
    let (mut log, report) = runtime.block_on(PartitionLog::open(disk.clone(), DIR, small_config())).unwrap();
    assert!(!report.clean_close && log.log_end_offset() == Offset(0), "{report:?}");

    log.append(&batch).unwrap();
    runtime.block_on(log.close()).unwrap();
    let (log, report) = runtime.block_on(PartitionLog::open(disk, DIR, small_config())).unwrap();
    assert!(report.clean_close && report.verified_bytes == 0, "{report:?}");
    assert_eq!(log.log_end_offset(), Offset(1));
}

/// The epoch runs and the producer table an open takes from the record are the ones the log had:
/// batches of several leader epochs and producers, closed, reopened without a scan.
#[test]
fn a_clean_close_keeps_the_epoch_runs_and_the_producer_table() {
    let runtime = runtime();
    let disk = SimDisk::new(11);
    let (mut log, _) = runtime.block_on(PartitionLog::open(disk.clone(), DIR, small_config())).unwrap();
    let mut next = Offset(0);
    for (index, epoch) in [1, 1, 2, 2, 2, 5, 7, 7].into_iter().enumerate() {
        let producer = ProducerFields {
            producer_id: ProducerId(index as i64 % 3),
            producer_epoch: ProducerEpoch(0),
            base_sequence: Sequence(index as i32 / 3),
        };
        let records = vec![Record::value(vec![index as u8; 300])];
        let batch = Batch::parse(encode_batch(&records, 1_000, producer)).unwrap().stamped(next, LeaderEpoch(epoch));
        log.append(&batch).unwrap();
        next = batch.next_offset();
    }
    let covered = runtime.block_on(log.begin_sync()).unwrap();
    log.mark_durable(covered);
    let (runs, producers) = (log.epoch_runs().to_vec(), log.producer_states().clone());
    assert_eq!(runs.len(), 4, "{runs:?}");
    runtime.block_on(log.close()).unwrap();
    let (log, report) = runtime.block_on(PartitionLog::open(disk.clone(), DIR, small_config())).unwrap();
    assert!(report.clean_close && report.verified_bytes == 0, "{report:?}");
    assert_eq!(log.epoch_runs(), &runs[..]);
    assert_eq!(log.producer_states(), &producers);
    assert_eq!(log.log_end_offset(), next);
}

/// The record is trusted only where the files agree with it: a `.log` that grew or shrank after the
/// close (a stray writer, a restore from a backup) sends the open to the full scan, which finds
/// what is really there. A record that does not decode is ignored the same way.
#[test]
fn a_clean_close_record_the_files_disagree_with_is_not_trusted() {
    for damage in ["grown", "shrunk", "torn record"] {
        let mut harness = synced_sim_log(40);
        close_gracefully(&mut harness);
        let logs = segment_logs(&harness.env.disk);
        match damage {
            "grown" => {
                let active = format!("{DIR}/{}", logs.last().unwrap());
                let file = harness.env.disk.open(&active, false).unwrap();
                file.write_at(file.len().unwrap(), &[0xAB; 64]).unwrap();
                harness.runtime.block_on(file.sync()).unwrap();
            }
            "shrunk" => {
                let sealed = format!("{DIR}/{}", logs[1]);
                let file = harness.env.disk.open(&sealed, false).unwrap();
                file.set_len(file.len().unwrap() - 10).unwrap();
                harness.runtime.block_on(file.sync()).unwrap();
                let (_, batches) = segment_batches(&harness.env.disk, &logs[1]);
                harness.model.corrupted(batches.last().unwrap().0);
            }
            _ => {
                let record = harness.env.disk.open(&format!("{DIR}/clean-close.checkpoint"), false).unwrap();
                record.set_len(record.len().unwrap() / 2).unwrap();
                harness.runtime.block_on(record.sync()).unwrap();
            }
        }
        let report = harness.reopen(damage != "shrunk");
        assert!(!report.clean_close, "{damage}: {report:?}");
        assert!(report.verified_bytes > 0, "{damage}: {report:?}");
        assert_eq!(report.truncated_bytes > 0, damage != "torn record", "{damage}: {report:?}");
        harness.check_offsets();
    }
}

/// What the record gives up: bit rot in a sealed segment between the close and the next open is not
/// found at open (nothing is scanned) but by the read that reaches it, which returns `Corrupt` and
/// never the bytes; the reopen that follows has no record, scans, and cuts there.
#[test]
fn bit_rot_after_a_clean_close_is_caught_by_the_read_and_the_next_open() {
    let mut harness = synced_sim_log(40);
    close_gracefully(&mut harness);
    let logs = segment_logs(&harness.env.disk);
    let (_, batches) = segment_batches(&harness.env.disk, &logs[1]);
    let (corrupt_base, position) = batches[1];
    harness.env.disk.flip_bit(&format!("{DIR}/{}", logs[1]), position as u64 + 80, 2).unwrap();
    let (log, report) = harness.runtime.block_on(PartitionLog::open(harness.env.disk(), DIR, small_config())).unwrap();
    assert!(report.clean_close, "{report:?}");
    let end = log.log_end_offset();
    match log.read(Offset(0), 64 * 1024, end) {
        Err(LogError::Corrupt { offset, .. }) => assert_eq!(offset.0, corrupt_base),
        other => panic!("read across a flipped byte: {other:?}"),
    }
    drop(log);
    harness.model.corrupted(corrupt_base);
    let report = harness.reopen(true);
    assert!(!report.clean_close);
    assert_eq!(report.log_end_offset.0, corrupt_base);
}

/// The record is best effort: the close made everything durable before writing it, so a close that
/// cannot write it (here no descriptor is left for the record's file) still succeeds, and the next
/// open scans and finds everything.
#[test]
fn a_close_that_cannot_write_its_record_succeeds_and_the_next_open_scans() {
    let mut harness = synced_sim_log(40);
    let disk = harness.env.disk.clone();
    disk.set_open_files_max(Some(disk.open_files()));
    close_gracefully(&mut harness);
    disk.set_open_files_max(None);
    assert!(!disk.list(DIR).unwrap().iter().any(|name| name == "clean-close.checkpoint"));
    disk.crash();
    let report = harness.reopen(true);
    assert!(!report.clean_close && report.verified_bytes > 0, "{report:?}");
    harness.check_offsets();
}
