//! Log compaction (`PartitionLog::compact`, ADR 0022) against the reference model in
//! `keel_model::compaction`.
//!
//! A random log is written on `SimDisk` with small segments so that it rolls often: batches of 1 to
//! 5 records, keys from a small set (the empty key among them, so later records supersede earlier
//! ones) and sometimes none, tombstones, random timestamps and codecs, some headers, leader epochs
//! that only go up, and some batches from three idempotent producers. It is synced twice (the first
//! sync makes the rolled segments durable, so they get their seals, and only sealed segments are
//! cleaned; the second makes the seals durable). Then one pass runs with a random `clean_below`
//! between the log start and end, a random time and tombstone retention. The first property checks:
//! - the records read back are the model's `compact` of the records before, where the cleaned range
//!   ends at the end of the last segment (from the start, never the active one) that ends at or below
//!   `clean_below`, as `segment_summaries()` gave it before the pass; every record left is the
//!   original one byte for byte (timestamp and headers too);
//! - the log start and end, the segments' spans and max timestamps, the leader-epoch runs and the
//!   producer table do not change; read batch after batch, the spans are contiguous from start to
//!   end and every batch parses and decodes; a batch that keeps records keeps its header (span,
//!   epoch, producer, timestamps, codec) and is not re-encoded when it lost nothing; a batch that
//!   lost every record is a filler covering whole original batches of one epoch, one per run (or,
//!   the last batch of an idempotent producer, stays emptied); nothing past the cleaned range
//!   changes; a read that starts inside any batch, and a time lookup, find it through the rebuilt
//!   indexes;
//! - the report agrees (segments cleanable, records and tombstones removed, bytes);
//! - a second pass with the same policy rewrites nothing;
//! - after a power loss the reopened log reads back the same, each idempotent producer's last
//!   batch is still known (same sequences and offsets), a pass still rewrites nothing, and appends
//!   work.
//!
//! The second property interleaves appends, passes (each with its own `clean_below`, time and
//! retention, over segments earlier passes cleaned), retention and power losses: after every step
//! the log holds the model's records (passes compose, so the model carries its result from pass to
//! pass) and every idempotent producer's last batch is known.
//!
//! A deterministic test stops passes half-way, over [`N_CRASH_SEEDS`] seeds: with write errors and
//! fsync errors while the pass runs (it fails), or by dropping it between two of its syncs. Then the
//! power goes, recovery is itself cut short by another power loss, and the log is reopened: it must
//! hold, segment by segment, either the old content or the compacted one (the redo file's promise),
//! nothing else, everything the model keeps, each idempotent producer's last batch, and a fault-free
//! pass must then give exactly the model's result. It fails unless each way of stopping did stop
//! some pass half-way and some recovery with a redo file to finish was cut short.
//!
//! Two tests pin problems found here and fixed: the key-map limit counts distinct keys, not
//! records, and the producer table a reopen rebuilds from a compacted log is the one in memory.

mod support;

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::executor::block_on;
use keel::batch::{encode_batch_compressed, Batch, ProducerFields, Record, StoredRecord};
use keel::compression::Compression;
use keel::leader_epochs::EpochEntry;
use keel::log::compaction::{CompactionPolicy, CompactionReport};
use keel::log::{LogConfig, PartitionLog, SegmentSummary};
use keel::producer_state::ProducerStates;
use keel::storage::sim::{SimDisk, SimDiskFaults};
use keel::storage::Disk;
use keel::types::{LeaderEpoch, Offset, ProducerEpoch, ProducerId, Sequence};
use keel_model::compaction::{compact, ModelRecord};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, FileFailurePersistence, RngAlgorithm, TestRng, TestRunner};
use support::yielding_disk::{poll_at_most, YieldingDisk};

const DIR: &str = "topics/compacted-0";
/// Keys are the empty key and `key-1` .. `key-5`: few enough that most records are superseded.
const N_KEYS: u8 = 6;
/// The idempotent producers are 1 ..= this.
const N_PRODUCERS: i64 = 3;
/// Seeds of the half-way failure test.
const N_CRASH_SEEDS: u64 = 200;

/// One generated record.
#[derive(Debug, Clone)]
struct RecordSpec {
    /// [`key_bytes`]; `None`: no key.
    key: Option<u8>,
    /// `None`: a tombstone.
    value: Option<Vec<u8>>,
    /// Added to the batch's base timestamp.
    timestamp_delta_ms: i64,
    header: bool,
}

/// One generated batch.
#[derive(Debug, Clone)]
struct BatchSpec {
    records: Vec<RecordSpec>,
    base_timestamp_ms: i64,
    /// An idempotent producer's id (its sequences follow on), or a plain batch.
    producer: Option<i64>,
    /// The leader epoch goes up by one before this batch.
    new_epoch: bool,
    compression: Compression,
    /// A sync after this batch (the final two syncs come anyway).
    sync_after: bool,
}

/// A log and one compaction pass over it.
#[derive(Debug, Clone)]
struct Scenario {
    config: LogConfig,
    batches: Vec<BatchSpec>,
    /// Picks `clean_below` in `[log start, log end]`; `None`: the log end.
    clean_below_pick: Option<u32>,
    now_ms: i64,
    delete_retention_ms: i64,
}

// Timestamps, times and retentions are multiples of 25 ms, so that a tombstone exactly at the
// retention limit (kept) is common.

fn now_ms() -> impl Strategy<Value = i64> {
    (0i64..120).prop_map(|step| step * 25)
}

fn delete_retention_ms() -> impl Strategy<Value = i64> {
    prop_oneof![4 => (0i64..100).prop_map(|step| step * 25), 1 => Just(i64::MAX)]
}

fn record_spec() -> impl Strategy<Value = RecordSpec> {
    (
        prop_oneof![1 => Just(None), 7 => (0..N_KEYS).prop_map(Some)],
        prop_oneof![1 => Just(None), 3 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(Some)],
        (0i64..4).prop_map(|step| step * 25),
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(key, value, timestamp_delta_ms, header)| RecordSpec { key, value, timestamp_delta_ms, header })
}

fn batch_spec() -> impl Strategy<Value = BatchSpec> {
    (
        proptest::collection::vec(record_spec(), 1..=5),
        (0i64..40).prop_map(|step| step * 50),
        prop_oneof![2 => Just(None), 3 => (1..=N_PRODUCERS).prop_map(Some)],
        proptest::bool::weighted(0.1),
        prop_oneof![6 => Just(Compression::None), 1 => proptest::sample::select(Compression::ALL.to_vec())],
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(records, base_timestamp_ms, producer, new_epoch, compression, sync_after)| BatchSpec {
            records,
            base_timestamp_ms,
            producer,
            new_epoch,
            compression,
            sync_after,
        })
}

fn scenario(n_batches: std::ops::Range<usize>) -> impl Strategy<Value = Scenario> {
    (
        (256u64..2_048, 0u32..512),
        proptest::collection::vec(batch_spec(), n_batches),
        proptest::option::weighted(0.7, any::<u32>()),
        now_ms(),
        delete_retention_ms(),
    )
        .prop_map(
            |((segment_bytes_max, index_interval_bytes), batches, clean_below_pick, now_ms, delete_retention_ms)| {
                Scenario {
                    config: LogConfig { segment_bytes_max, index_interval_bytes, clean_close_min_bytes: 0 },
                    batches,
                    clean_below_pick,
                    now_ms,
                    delete_retention_ms,
                }
            },
        )
}

/// Key 0 is the empty key, which is a key (a record without one has a null key).
fn key_bytes(key: u8) -> Bytes {
    if key == 0 {
        Bytes::new()
    } else {
        Bytes::from(format!("key-{key}"))
    }
}

fn open<D: Disk>(disk: &D, config: &LogConfig) -> PartitionLog<D> {
    block_on(PartitionLog::open(disk.clone(), DIR, config.clone())).expect("the log opens").0
}

fn sync<D: Disk>(log: &mut PartitionLog<D>) {
    let covered = block_on(log.begin_sync()).expect("a fault-free sync");
    log.mark_durable(covered);
}

/// The next sequence of each idempotent producer.
type Sequences = BTreeMap<i64, i32>;

fn build_batch(spec: &BatchSpec, sequences: &mut Sequences) -> Batch {
    let records: Vec<Record> = spec
        .records
        .iter()
        .enumerate()
        .map(|(index, record)| Record {
            key: record.key.map(key_bytes),
            value: record.value.clone().map(Bytes::from),
            headers: if record.header {
                vec![(Bytes::from_static(b"h"), Some(Bytes::from(vec![index as u8])))]
            } else {
                vec![]
            },
            timestamp_ms: Some(spec.base_timestamp_ms + record.timestamp_delta_ms),
        })
        .collect();
    let producer = spec.producer.map_or(ProducerFields::NONE, |id| {
        let sequence = sequences.entry(id).or_insert(0);
        let fields = ProducerFields {
            producer_id: ProducerId(id),
            producer_epoch: ProducerEpoch(0),
            base_sequence: Sequence(*sequence),
        };
        *sequence += records.len() as i32;
        fields
    });
    Batch::parse(encode_batch_compressed(&records, spec.base_timestamp_ms, producer, spec.compression))
        .expect("an encoded batch parses")
}

/// Writes the scenario's batches to a new log and syncs it twice (module doc). Returns the batches
/// as appended and every producer's next sequence.
fn write_log<D: Disk>(disk: &D, config: &LogConfig, specs: &[BatchSpec]) -> (PartitionLog<D>, Vec<Batch>, Sequences) {
    let mut log = open(disk, config);
    let mut sequences = Sequences::new();
    let mut appended = Vec::with_capacity(specs.len());
    let mut epoch = 0;
    for spec in specs {
        epoch += i32::from(spec.new_epoch);
        let batch = build_batch(spec, &mut sequences).stamped(log.log_end_offset(), LeaderEpoch(epoch));
        log.append(&batch).expect("a fault-free append");
        appended.push(batch);
        if spec.sync_after {
            sync(&mut log);
        }
    }
    sync(&mut log);
    sync(&mut log);
    (log, appended, sequences)
}

/// Every batch of the log, by reads that each start where the last batch read ended: the spans must
/// be contiguous from the log start to the log end, and every batch must parse and decode.
fn read_batches<D: Disk>(log: &PartitionLog<D>) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let mut bytes = log.read(offset, 4_096, log.log_end_offset()).expect("a read of the log");
        assert!(!bytes.is_empty(), "a read at {offset} below the log end {} returned nothing", log.log_end_offset());
        while let Some(batch) = Batch::split_first(&mut bytes).expect("a read returns whole, valid batches") {
            assert_eq!(batch.base_offset(), offset, "the batch after {offset} does not start there");
            batch.check_records().expect("every batch's records decode");
            offset = batch.next_offset();
            batches.push(batch);
        }
    }
    assert_eq!(offset, log.log_end_offset(), "the batches end at the log end");
    batches
}

fn records_of(batches: &[Batch]) -> Vec<StoredRecord> {
    batches.iter().flat_map(|batch| batch.records().map(|record| record.expect("a record decodes"))).collect()
}

fn model_records(records: &[StoredRecord]) -> Vec<ModelRecord> {
    records
        .iter()
        .map(|record| ModelRecord {
            offset: record.offset.0,
            key: record.key.as_ref().map(|key| key.to_vec()),
            value: record.value.as_ref().map(|value| value.to_vec()),
            timestamp_ms: record.timestamp_ms,
        })
        .collect()
}

/// Where a pass with `clean_below` stops: the end of the last segment (from the start, never the
/// active one) that ends at or below it, and how many segments that is. Every rolled segment is
/// sealed here (the log was synced twice), so sealing does not stop it earlier.
fn cleaned_range(summaries: &[SegmentSummary], clean_below: Offset) -> (Offset, usize) {
    let cleaned: Vec<&SegmentSummary> =
        summaries.iter().take_while(|summary| !summary.active && summary.next_offset <= clean_below).collect();
    let log_start = summaries[0].base_offset;
    (cleaned.last().map_or(log_start, |summary| summary.next_offset), cleaned.len())
}

/// What a test knows of the log before the pass.
struct Before {
    log_start: Offset,
    log_end: Offset,
    /// As appended.
    batches: Vec<Batch>,
    records: Vec<StoredRecord>,
    summaries: Vec<SegmentSummary>,
    epoch_runs: Vec<EpochEntry>,
    producers: ProducerStates,
    cleaned_end: Offset,
    n_cleanable: usize,
    policy: CompactionPolicy,
    /// The model's result.
    expected: Vec<ModelRecord>,
}

impl Before {
    fn capture<D: Disk>(log: &PartitionLog<D>, appended: Vec<Batch>, scenario: &Scenario) -> Before {
        let batches = read_batches(log);
        assert_eq!(batches, appended, "the log reads back what was appended");
        let records = records_of(&batches);
        let summaries = log.segment_summaries();
        let (log_start, log_end) = (log.log_start_offset(), log.log_end_offset());
        let clean_below = scenario
            .clean_below_pick
            .map_or(log_end, |pick| Offset(log_start.0 + i64::from(pick) % (log_end.0 - log_start.0 + 1)));
        let (cleaned_end, n_cleanable) = cleaned_range(&summaries, clean_below);
        let policy = CompactionPolicy {
            clean_below,
            now_ms: scenario.now_ms,
            delete_retention_ms: scenario.delete_retention_ms,
        };
        let expected = compact(&model_records(&records), cleaned_end.0, policy.now_ms, policy.delete_retention_ms);
        Before {
            log_start,
            log_end,
            batches,
            records,
            summaries,
            epoch_runs: log.epoch_runs().to_vec(),
            producers: log.producer_states().clone(),
            cleaned_end,
            n_cleanable,
            policy,
            expected,
        }
    }

    /// The records the model keeps in `[from, to)`.
    fn expected_in(&self, from: Offset, to: Offset) -> Vec<ModelRecord> {
        self.expected.iter().filter(|record| (from.0..to.0).contains(&record.offset)).cloned().collect()
    }

    fn original_in(&self, from: Offset, to: Offset) -> Vec<ModelRecord> {
        let records: Vec<StoredRecord> =
            self.records.iter().filter(|record| (from..to).contains(&record.offset)).cloned().collect();
        model_records(&records)
    }

    /// Checks what holds of the log whether or not (or how far) the pass ran: the offsets, the
    /// segments, the epoch runs, the idempotent producers' last batches, and every batch against the
    /// batches appended. Returns the batches and records read.
    fn check_log<D: Disk>(&self, log: &PartitionLog<D>) -> (Vec<Batch>, Vec<StoredRecord>) {
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (self.log_start, self.log_end));
        let summaries = log.segment_summaries();
        let spans = |summaries: &[SegmentSummary]| -> Vec<(Offset, Offset, i64, bool)> {
            summaries
                .iter()
                .map(|summary| (summary.base_offset, summary.next_offset, summary.max_timestamp_ms, summary.active))
                .collect()
        };
        assert_eq!(spans(&summaries), spans(&self.summaries), "segments keep their spans and max timestamps");
        assert_eq!(summaries.iter().map(|summary| summary.size_bytes).sum::<u64>(), log.size_bytes());
        assert_eq!(log.epoch_runs(), &self.epoch_runs[..], "compaction keeps the leader-epoch runs");
        let batches = read_batches(log);
        self.check_batches(&batches, &summaries);
        check_lookups(log, &batches);
        let records = records_of(&batches);
        let originals: BTreeMap<Offset, &StoredRecord> =
            self.records.iter().map(|record| (record.offset, record)).collect();
        for record in &records {
            assert_eq!(Some(&record), originals.get(&record.offset), "a record left is the original one");
        }
        for (producer_id, entry) in self.producers.iter() {
            let now = log.producer_states().get(*producer_id);
            // Its epoch and last batches; not always its newest timestamp, which may come from a
            // batch the table no longer holds (producers stamp timestamps, not always in order).
            let kept = now.map(|now| (now.epoch, &now.batches));
            assert_eq!(kept, Some((entry.epoch, &entry.batches)), "producer {producer_id}'s table entry is kept");
            let last = entry.last();
            let kept = batches.iter().any(|batch| {
                batch.base_offset() == last.base_offset
                    && batch.last_offset() == last.last_offset
                    && batch.producer().producer_id == *producer_id
            });
            assert!(kept, "producer {producer_id}'s last batch {last:?} stays in the log");
        }
        (batches, records)
    }

    /// Every batch against the batches appended (module doc).
    fn check_batches(&self, batches: &[Batch], summaries: &[SegmentSummary]) {
        let originals: BTreeMap<Offset, &Batch> =
            self.batches.iter().map(|batch| (batch.base_offset(), batch)).collect();
        let segment_of = |offset: Offset| {
            summaries.iter().position(|summary| summary.base_offset <= offset && offset < summary.next_offset)
        };
        for (index, batch) in batches.iter().enumerate() {
            let base = batch.base_offset();
            let original =
                originals.get(&base).unwrap_or_else(|| panic!("a batch at {base}, where no batch was appended"));
            let covered: Vec<&Batch> = originals.range(base..batch.next_offset()).map(|(_, batch)| *batch).collect();
            let last_covered = covered.last().expect("at least the original at the base");
            assert_eq!(
                last_covered.next_offset(),
                batch.next_offset(),
                "a batch at {base} ends inside an original one"
            );
            assert_eq!(segment_of(base), segment_of(batch.last_offset()), "a batch at {base} crosses a segment");
            if base >= self.cleaned_end {
                assert_eq!(batch.as_bytes(), original.as_bytes(), "a batch past the cleaned range at {base} changed");
                continue;
            }
            let is_filler = batch.record_count() == 0 && batch.producer() == ProducerFields::NONE;
            if !is_filler {
                assert_eq!(covered.len(), 1, "a batch at {base} with records or a producer spans one original");
                assert_eq!(batch.leader_epoch(), original.leader_epoch());
                assert_eq!(batch.producer(), original.producer());
                assert_eq!(
                    (batch.base_timestamp(), batch.max_timestamp()),
                    (original.base_timestamp(), original.max_timestamp())
                );
                if batch.record_count() > 0 {
                    assert_eq!(batch.compression(), original.compression());
                }
                if batch.record_count() == original.record_count() {
                    assert_eq!(
                        batch.as_bytes(),
                        original.as_bytes(),
                        "a batch at {base} that lost nothing is re-encoded"
                    );
                }
                if batch.record_count() == 0 {
                    let producer = self.producers.get(batch.producer().producer_id).expect("a known producer");
                    assert!(
                        producer.batches.iter().any(|meta| meta.base_offset == base),
                        "an emptied batch at {base} is not in its producer's table"
                    );
                }
                continue;
            }
            for covered in &covered {
                assert_eq!(covered.leader_epoch(), batch.leader_epoch(), "a filler at {base} spans two epochs");
            }
            let base_timestamp = covered.iter().map(|batch| batch.base_timestamp()).min();
            let max_timestamp = covered.iter().map(|batch| batch.max_timestamp()).max();
            assert_eq!((Some(batch.base_timestamp()), Some(batch.max_timestamp())), (base_timestamp, max_timestamp));
            if let Some(previous) = index.checked_sub(1).map(|previous| &batches[previous]) {
                let previous_is_filler = previous.record_count() == 0 && previous.producer() == ProducerFields::NONE;
                let same_segment = segment_of(previous.base_offset()) == segment_of(base);
                assert!(
                    !(previous_is_filler && same_segment && previous.leader_epoch() == batch.leader_epoch()),
                    "two fillers in a row at {base}: one run of removed batches makes one filler"
                );
            }
        }
    }
}

/// Reads that start inside a batch (a removed record's offset, inside a filler) and time lookups
/// find their batch through the indexes the pass rebuilt.
fn check_lookups<D: Disk>(log: &PartitionLog<D>, batches: &[Batch]) {
    for batch in batches {
        let mut read = log.read(batch.last_offset(), 1, log.log_end_offset()).expect("a read inside the log");
        let first = Batch::split_first(&mut read).unwrap().expect("a batch");
        if batch.record_count() == 0 && first.base_offset() > batch.base_offset() {
            // A read from inside a batch without records gets its tail from the offset asked for.
            let tail = (first.base_offset(), first.next_offset(), first.leader_epoch(), first.record_count());
            assert_eq!(
                tail,
                (batch.last_offset(), batch.next_offset(), batch.leader_epoch(), 0),
                "a read at {}",
                batch.last_offset()
            );
        } else {
            assert_eq!(&first, batch, "a read at {}", batch.last_offset());
        }
        for timestamp in [batch.max_timestamp(), batch.max_timestamp() + 1] {
            let first = batches.iter().find(|batch| batch.max_timestamp() >= timestamp);
            let expected = first.map(|batch| (batch.base_offset(), batch.max_timestamp()));
            assert_eq!(log.offset_for_timestamp(timestamp).unwrap(), expected, "the lookup of {timestamp}");
        }
    }
}

fn check_report(before: &Before, report: &CompactionReport, n_records_left: usize) {
    assert_eq!(report.segments_cleanable, before.n_cleanable, "{report:?}");
    let n_removed = (before.records.len() - n_records_left) as u64;
    assert_eq!(report.records_removed + report.tombstones_removed, n_removed, "{report:?}");
    assert!(report.segments_rewritten <= report.segments_cleanable, "{report:?}");
    assert_eq!(n_removed > 0, report.segments_rewritten > 0, "{report:?}");
    assert!(report.bytes_after <= report.bytes_before, "{report:?}");
}

fn append_one_more<D: Disk>(log: &mut PartitionLog<D>, sequences: &mut Sequences) {
    let spec = BatchSpec {
        records: vec![RecordSpec {
            key: Some(0),
            value: Some(b"after".to_vec()),
            timestamp_delta_ms: 0,
            header: false,
        }],
        base_timestamp_ms: 5_000,
        producer: Some(1),
        new_epoch: false,
        compression: Compression::None,
        sync_after: false,
    };
    let epoch = log.epoch_runs().last().map_or(LeaderEpoch(0), |run| run.epoch);
    let at = log.log_end_offset();
    let batch = build_batch(&spec, sequences).stamped(at, epoch);
    log.append(&batch).expect("an append after the reopen");
    sync(log);
    let mut read = log.read(at, 1 << 20, log.log_end_offset()).unwrap();
    assert_eq!(Batch::split_first(&mut read).unwrap(), Some(batch));
    assert_eq!(log.producer_states().get(ProducerId(1)).unwrap().last().base_offset, at);
}

fn run_scenario(seed: u64, scenario: &Scenario) {
    let disk = SimDisk::new(seed);
    let (mut log, appended, mut sequences) = write_log(&disk, &scenario.config, &scenario.batches);
    let before = Before::capture(&log, appended, scenario);

    let report = block_on(log.compact(before.policy)).expect("a fault-free pass");
    let (batches, records) = before.check_log(&log);
    assert_eq!(model_records(&records), before.expected, "the records left are the model's");
    assert_eq!(log.producer_states(), &before.producers, "the pass keeps the producer table");
    check_report(&before, &report, records.len());

    let again = block_on(log.compact(before.policy)).expect("a second pass");
    assert_eq!(again.segments_rewritten, 0, "a second pass with the same policy changed something: {again:?}");
    assert_eq!(again.records_removed + again.tombstones_removed, 0, "{again:?}");
    assert_eq!(read_batches(&log), batches);

    drop(log);
    disk.crash();
    let (mut log, recovery) = block_on(PartitionLog::open(disk.clone(), DIR, scenario.config.clone())).unwrap();
    assert_eq!(recovery.cut, None, "a compacted log was durable");
    let (recovered, _) = before.check_log(&log);
    assert_eq!(recovered, batches, "a power loss after the pass changes nothing");
    let again = block_on(log.compact(before.policy)).expect("a pass after the reopen");
    assert_eq!(again.segments_rewritten, 0, "a pass after the reopen changed something: {again:?}");
    append_one_more(&mut log, &mut sequences);
}

/// One step of the repeated-passes property.
#[derive(Debug, Clone)]
enum Op {
    Append(BatchSpec),
    /// Two syncs (so every rolled segment is sealed), then one pass, then the same pass again.
    Compact {
        clean_below_pick: Option<u32>,
        now_ms: i64,
        delete_retention_ms: i64,
    },
    /// Retention: the segments that end at or below an offset between the log start and end go.
    DeleteBefore {
        offset_pick: u32,
    },
    /// A sync, a power loss and a reopen.
    CrashReopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => batch_spec().prop_map(Op::Append),
        3 => (
            proptest::option::weighted(0.7, any::<u32>()),
            now_ms(),
            delete_retention_ms(),
        )
            .prop_map(|(clean_below_pick, now_ms, delete_retention_ms)| Op::Compact {
                clean_below_pick,
                now_ms,
                delete_retention_ms
            }),
        1 => any::<u32>().prop_map(|offset_pick| Op::DeleteBefore { offset_pick }),
        1 => Just(Op::CrashReopen),
    ]
}

/// An offset in `[log start, log end]` picked by `pick`.
fn offset_in_log<D: Disk>(log: &PartitionLog<D>, pick: u32) -> Offset {
    let (log_start, log_end) = (log.log_start_offset(), log.log_end_offset());
    Offset(log_start.0 + i64::from(pick) % (log_end.0 - log_start.0 + 1))
}

/// The repeated-passes property: the log, and what it must hold. Passes compose (a pass over the
/// result of an earlier one is the model's pass over the model's earlier result), so the model's
/// records are carried from step to step rather than recomputed from everything appended.
struct Repeated {
    disk: SimDisk,
    config: LogConfig,
    log: PartitionLog<SimDisk>,
    epoch: i32,
    sequences: Sequences,
    /// Every record appended, as appended.
    appended: BTreeMap<Offset, StoredRecord>,
    /// The records the log must hold.
    expected: Vec<ModelRecord>,
    /// Each idempotent producer's last batch appended: base and last offset.
    last_batches: BTreeMap<i64, (Offset, Offset)>,
}

impl Repeated {
    fn new(seed: u64, config: LogConfig) -> Repeated {
        let disk = SimDisk::new(seed);
        let log = open(&disk, &config);
        Repeated {
            disk,
            config,
            log,
            epoch: 0,
            sequences: Sequences::new(),
            appended: BTreeMap::new(),
            expected: Vec::new(),
            last_batches: BTreeMap::new(),
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(spec) => {
                self.epoch += i32::from(spec.new_epoch);
                let batch =
                    build_batch(spec, &mut self.sequences).stamped(self.log.log_end_offset(), LeaderEpoch(self.epoch));
                self.log.append(&batch).expect("a fault-free append");
                let records = records_of(std::slice::from_ref(&batch));
                self.expected.extend(model_records(&records));
                self.appended.extend(records.into_iter().map(|record| (record.offset, record)));
                if let Some(producer_id) = spec.producer {
                    self.last_batches.insert(producer_id, (batch.base_offset(), batch.last_offset()));
                }
                if spec.sync_after {
                    sync(&mut self.log);
                }
            }
            Op::Compact { clean_below_pick, now_ms, delete_retention_ms } => {
                sync(&mut self.log);
                sync(&mut self.log);
                let clean_below =
                    clean_below_pick.map_or(self.log.log_end_offset(), |pick| offset_in_log(&self.log, pick));
                let (cleaned_end, n_cleanable) = cleaned_range(&self.log.segment_summaries(), clean_below);
                let policy =
                    CompactionPolicy { clean_below, now_ms: *now_ms, delete_retention_ms: *delete_retention_ms };
                let report = block_on(self.log.compact(policy)).expect("a fault-free pass");
                assert_eq!(report.segments_cleanable, n_cleanable, "{report:?}");
                self.expected = compact(&self.expected, cleaned_end.0, *now_ms, *delete_retention_ms);
                self.check();
                let again = block_on(self.log.compact(policy)).expect("a second pass");
                assert_eq!(
                    again.segments_rewritten, 0,
                    "a second pass with the same policy changed something: {again:?}"
                );
            }
            Op::DeleteBefore { offset_pick } => {
                let new_start = offset_in_log(&self.log, *offset_pick);
                let log_start = block_on(self.log.delete_segments_before(new_start)).expect("a fault-free deletion");
                self.expected.retain(|record| record.offset >= log_start.0);
            }
            Op::CrashReopen => {
                sync(&mut self.log);
                self.disk.crash();
                self.log = open(&self.disk, &self.config);
            }
        }
        self.check();
    }

    /// The log holds the model's records, each the original one, and every idempotent producer's
    /// last batch is known.
    fn check(&self) {
        let batches = read_batches(&self.log);
        check_lookups(&self.log, &batches);
        let records = records_of(&batches);
        assert_eq!(model_records(&records), self.expected, "the records in the log are the model's");
        for record in &records {
            assert_eq!(Some(record), self.appended.get(&record.offset), "a record left is the original one");
        }
        for (producer_id, (base_offset, last_offset)) in &self.last_batches {
            let entry = self.log.producer_states().get(ProducerId(*producer_id));
            let last =
                entry.map(|entry| (entry.last().base_offset, entry.last().last_offset, entry.last().last_sequence));
            let last_sequence = Sequence(self.sequences[producer_id] - 1);
            assert_eq!(last, Some((*base_offset, *last_offset, last_sequence)), "producer {producer_id}'s last batch");
        }
    }
}

fn proptest_config() -> ProptestConfig {
    // PROPTEST_CASES overrides the default (kept small so the debug test stays fast).
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/compaction_model.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn compaction_leaves_the_models_records_and_survives_a_power_loss(
        seed in any::<u64>(),
        scenario in scenario(1..80),
    ) {
        run_scenario(seed, &scenario);
    }

    #[test]
    fn repeated_passes_between_appends_retention_and_power_losses_match_the_model(
        seed in any::<u64>(),
        config in (256u64..2_048, 0u32..512)
            .prop_map(|(segment_bytes_max, index_interval_bytes)| LogConfig { segment_bytes_max, index_interval_bytes, clean_close_min_bytes: 0 }),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut repeated = Repeated::new(seed, config);
        for op in &ops {
            repeated.apply(op);
        }
    }
}

/// A scenario drawn from `seed` alone (the same one on every run): the strategies above, from a
/// seeded RNG.
fn seeded_scenario(seed: u64) -> Scenario {
    let mut rng_seed = [0u8; 32];
    rng_seed[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &rng_seed));
    scenario(20..70).new_tree(&mut runner).expect("a scenario").current()
}

/// How the half-way test stops a pass.
#[derive(Debug, Clone, Copy)]
enum Interruption {
    /// Write errors (EIO) and fsync errors while the pass runs: it fails, and fails the log.
    Faults { write_eio_probability: f64, fsync_error_probability: f64 },
    /// The pass is polled this many times (each sync yields once), then dropped, which fails the log.
    Dropped { n_polls: usize },
}

/// Even seeds inject faults; odd ones drop the pass before one of its syncs (each rewritten segment
/// takes six: the redo file, the directory, the `.log`, two index files, the directory again).
fn interruption(seed: u64, n_cleanable: usize) -> Interruption {
    let probabilities = [0.02, 0.05, 0.1];
    let pick = (seed / 2) as usize;
    if seed % 2 == 0 {
        Interruption::Faults {
            write_eio_probability: probabilities[pick % 3],
            fsync_error_probability: probabilities[pick / 3 % 3],
        }
    } else {
        Interruption::Dropped { n_polls: 1 + pick % (6 * n_cleanable + 1) }
    }
}

#[test]
fn a_compaction_stopped_half_way_recovers_each_segment_old_or_new() {
    let (mut n_failed, mut n_dropped, mut n_redo_files, mut n_redos_cut) = (0, 0, 0, 0);
    for seed in 0..N_CRASH_SEEDS {
        let scenario = seeded_scenario(seed);
        let disk = YieldingDisk(SimDisk::new(seed));
        let (mut log, appended, mut sequences) = write_log(&disk, &scenario.config, &scenario.batches);
        let before = Before::capture(&log, appended, &scenario);
        let interruption = interruption(seed, before.n_cleanable);
        let result = match interruption {
            Interruption::Faults { write_eio_probability, fsync_error_probability } => {
                disk.0.set_faults(SimDiskFaults {
                    write_eio_probability,
                    fsync_error_probability,
                    ..SimDiskFaults::default()
                });
                let result = block_on(log.compact(before.policy));
                disk.0.set_faults(SimDiskFaults::default());
                n_failed += usize::from(result.is_err());
                Some(result)
            }
            Interruption::Dropped { n_polls } => {
                let result = poll_at_most(log.compact(before.policy), n_polls);
                n_dropped += usize::from(result.is_none());
                result
            }
        };
        let context = format!("seed {seed}, {interruption:?}: {result:?}");
        drop(log);
        disk.0.crash();
        let has_redo_file = disk.list(DIR).unwrap().iter().any(|name| name.ends_with(".cleaned"));
        n_redo_files += usize::from(has_redo_file);
        // Recovery itself is cut short by another power loss (finishing a redo file must be safe to
        // redo).
        let opening = PartitionLog::open(disk.clone(), DIR, scenario.config.clone());
        let n_polls = 1 + (seed / 3) as usize % 8;
        n_redos_cut += usize::from(poll_at_most(opening, n_polls).is_none() && has_redo_file);
        disk.0.crash();

        let mut log = open(&disk, &scenario.config);
        let (_, records) = before.check_log(&log);
        let got = model_records(&records);
        for summary in &before.summaries {
            let (from, to) = (summary.base_offset, summary.next_offset);
            let in_segment: Vec<ModelRecord> =
                got.iter().filter(|record| (from.0..to.0).contains(&record.offset)).cloned().collect();
            assert!(
                in_segment == before.original_in(from, to) || in_segment == before.expected_in(from, to),
                "{context}: segment {from}..{to} is neither the old one nor the compacted one"
            );
        }
        for kept in &before.expected {
            assert!(got.contains(kept), "{context}: record {kept:?}, which the model keeps, is gone");
        }

        let report = block_on(log.compact(before.policy)).expect("a fault-free pass after the reopen");
        let (_, records) = before.check_log(&log);
        assert_eq!(model_records(&records), before.expected, "{context}: the pass after the reopen ({report:?})");
        drop(log);
        disk.0.crash();
        let mut log = open(&disk, &scenario.config);
        let (_, records) = before.check_log(&log);
        assert_eq!(model_records(&records), before.expected, "{context}: after a second power loss");
        append_one_more(&mut log, &mut sequences);
    }
    // Without these the test would pass vacuously.
    assert!(n_failed > 0, "no pass failed on an injected fault");
    assert!(n_dropped > 0, "no pass was dropped half-way");
    assert!(n_redo_files > 0, "no power loss left a redo file for recovery to finish");
    assert!(n_redos_cut > 0, "no recovery was cut short while it had a redo file to finish");
    eprintln!(
        "of {N_CRASH_SEEDS} passes, {n_failed} failed on a fault and {n_dropped} were dropped half-way; \
         {n_redo_files} power losses left a redo file; {n_redos_cut} recoveries with one were cut short"
    );
}

/// The key-map limit counts distinct keys: a segment with more than `COMPACTION_KEYS_MAX` (2^20)
/// keyed records of one key is cleaned (it once counted records, and such a segment, and every one
/// after it, was never cleaned; a 128 MiB segment of small records holds several million).
#[test]
fn a_segment_with_more_keyed_records_than_the_key_map_limit_is_cleaned() {
    use keel::log::compaction::COMPACTION_KEYS_MAX;
    let disk = SimDisk::new(1);
    let config = LogConfig { segment_bytes_max: 11 << 20, index_interval_bytes: 4_096, clean_close_min_bytes: 0 };
    let mut log = open(&disk, &config);
    // Two batches of one key in the first segment, more records than the limit in all; a third
    // batch rolls the log so the first segment is sealed and cleanable.
    let n_records = [COMPACTION_KEYS_MAX / 2 + 1, COMPACTION_KEYS_MAX / 2 + 1, 100_000];
    for n_records in n_records {
        let record =
            Record { key: Some(Bytes::from_static(b"k")), value: Some(Bytes::from_static(b"v")), ..Record::default() };
        let records = vec![record; n_records];
        let batch =
            Batch::parse(encode_batch_compressed(&records, 0, ProducerFields::NONE, Compression::None)).unwrap();
        log.append(&batch.stamped(log.log_end_offset(), LeaderEpoch(0))).unwrap();
    }
    sync(&mut log);
    sync(&mut log);
    let summaries = log.segment_summaries();
    assert_eq!(summaries.len(), 2, "{summaries:?}");
    assert_eq!(summaries[0].next_offset.0, COMPACTION_KEYS_MAX as i64 + 2, "{summaries:?}");
    let policy = CompactionPolicy { clean_below: log.log_end_offset(), now_ms: 0, delete_retention_ms: 0 };
    let report = block_on(log.compact(policy)).unwrap();
    // One key: one record is left of the 2^20 + 2.
    assert_eq!((report.segments_cleanable, report.segments_rewritten), (1, 1), "{report:?}");
    assert_eq!(report.records_removed, COMPACTION_KEYS_MAX as u64 + 1, "{report:?}");
}

/// A batch of an idempotent producer that loses every record but is still in the dedup table (not
/// its last) stays, emptied, so the table recovery rebuilds from the compacted log is the one in
/// memory: a retry gets the same answer after a restart, and expiry measures from the same newest
/// timestamp. (It once became a filler, and a reopen answered `OutOfOrder` instead of `Duplicate`.)
#[test]
fn a_table_rebuilt_from_a_compacted_log_keeps_the_producers_emptied_batches() {
    use keel::producer_state::{BatchIdentity, Verdict};
    let disk = SimDisk::new(1);
    let config = LogConfig { segment_bytes_max: 200, index_interval_bytes: 0, clean_close_min_bytes: 0 };
    // Producer 1's batch A (key k, at 900) is superseded by its batch B (key k, at 100); a plain
    // batch rolls the log, so A and B are in a sealed segment.
    let spec = |key: u8, base_timestamp_ms: i64, producer: Option<i64>| BatchSpec {
        records: vec![RecordSpec { key: Some(key), value: Some(b"v".to_vec()), timestamp_delta_ms: 0, header: false }],
        base_timestamp_ms,
        producer,
        new_epoch: false,
        compression: Compression::None,
        sync_after: false,
    };
    let batches = [spec(1, 900, Some(1)), spec(1, 100, Some(1)), spec(2, 100, None)];
    let (mut log, appended, _) = write_log(&disk, &config, &batches);
    assert_eq!(log.segment_summaries().len(), 2, "{:?}", log.segment_summaries());
    let retry_of_a = BatchIdentity::of(&appended[0]);
    let policy = CompactionPolicy { clean_below: log.log_end_offset(), now_ms: 0, delete_retention_ms: 0 };
    let report = block_on(log.compact(policy)).unwrap();
    assert_eq!(report.records_removed, 1, "{report:?}");
    let mut in_memory = log.producer_states().clone();
    assert_eq!(in_memory.check(&retry_of_a), Verdict::Duplicate { base_offset: Offset(0), last_offset: Offset(0) });
    assert_eq!(in_memory.get(ProducerId(1)).unwrap().last_timestamp_ms, 900);
    drop(log);
    let log = open(&disk, &config);
    let mut rebuilt = log.producer_states().clone();
    assert_eq!(rebuilt.get(ProducerId(1)), in_memory.get(ProducerId(1)));
    assert_eq!(rebuilt.check(&retry_of_a), Verdict::Duplicate { base_offset: Offset(0), last_offset: Offset(0) });
    assert_eq!(rebuilt.get(ProducerId(1)).unwrap().last_timestamp_ms, 900);
    assert_eq!((in_memory.expire(1_000, 850), rebuilt.expire(1_000, 850)), (0, 0), "expiry measures alike");
}

/// A read from inside a filler (a follower whose log ends at a boundary of the batches the filler
/// replaced) starts exactly at the offset asked for: the filler's tail, no records, its epoch; every
/// batch after it as stored.
#[test]
fn a_read_from_inside_a_filler_starts_at_the_offset_asked_for() {
    let disk = SimDisk::new(1);
    let config = LogConfig { segment_bytes_max: 400, index_interval_bytes: 0, clean_close_min_bytes: 0 };
    let spec = |key: u8| BatchSpec {
        records: vec![RecordSpec { key: Some(key), value: Some(b"v".to_vec()), timestamp_delta_ms: 0, header: false }],
        base_timestamp_ms: 100,
        producer: None,
        new_epoch: false,
        compression: Compression::None,
        sync_after: false,
    };
    // Four values of key 1, then its latest and more keys, rolling past the first segment.
    let specs: Vec<BatchSpec> = [1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10].into_iter().map(spec).collect();
    let (mut log, _, _) = write_log(&disk, &config, &specs);
    sync(&mut log);
    let policy = CompactionPolicy { clean_below: log.log_end_offset(), now_ms: 0, delete_retention_ms: 0 };
    let report = block_on(log.compact(policy)).unwrap();
    assert!(report.records_removed >= 4, "{report:?}");
    let whole = read_batches(&log);
    let filler = whole.first().unwrap();
    assert_eq!((filler.base_offset(), filler.record_count()), (Offset(0), 0), "the emptied run is one filler");
    assert!(filler.next_offset() >= Offset(4), "{filler:?}");
    for offset in 1..filler.next_offset().0 {
        let mut bytes = log.read(Offset(offset), 1 << 20, log.log_end_offset()).unwrap();
        let first = Batch::split_first(&mut bytes).unwrap().unwrap();
        assert_eq!((first.base_offset(), first.next_offset()), (Offset(offset), filler.next_offset()));
        assert_eq!((first.record_count(), first.leader_epoch()), (0, filler.leader_epoch()));
        let rest: Vec<Batch> = std::iter::from_fn(|| Batch::split_first(&mut bytes).unwrap()).collect();
        assert_eq!(rest.as_slice(), &whole[1..1 + rest.len()], "the batches after it are as stored");
    }
}
