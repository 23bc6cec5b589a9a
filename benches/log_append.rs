//! Partition log append throughput: 16-record batches of 1 KiB values.
//!
//! - `sim_disk_sync_every_64_batches`: the in-memory SimDisk (a sync every 64 batches keeps its pending lists short);
//! - `file_disk_fsync_every_batch`: real files, one `begin_sync` + await per batch (acks=all
//!   without group commit);
//! - `file_disk_fsync_every_64_batches`: real files, group commit of 64 batches per fsync.
//!
//! One timed iteration appends a chunk of batches to a fresh log (and temp dir) and ends with a
//! sync; opening the log and stamping the batches happen before the clock starts, dropping them
//! after, so memory and disk use stay bounded. Run: `cargo bench --bench log_append -- --warm-up-time 1 --measurement-time 3`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use keel::batch::{encode_batch, Batch, ProducerFields, Record};
use keel::log::{LogConfig, PartitionLog};
use keel::storage::file::FileDisk;
use keel::storage::sim::SimDisk;
use keel::storage::Disk;
use keel::types::{LeaderEpoch, Offset};
use tokio::runtime::Runtime;

const RECORDS_PER_BATCH: usize = 16;
const VALUE_BYTES: usize = 1024;

fn template() -> Batch {
    let records: Vec<Record> =
        (0..RECORDS_PER_BATCH).map(|index| Record::value(Bytes::from(vec![index as u8; VALUE_BYTES]))).collect();
    Batch::parse(encode_batch(&records, 1_700_000_000_000, ProducerFields::NONE)).unwrap()
}

/// One timed iteration's input: a fresh log and the batches to append, already stamped.
struct Chunk<D: Disk> {
    log: PartitionLog<D>,
    batches: Vec<Batch>,
    _temp_dir: Option<tempfile::TempDir>,
}

fn chunk<D: Disk>(
    runtime: &Runtime,
    template: &Batch,
    n_batches: usize,
    disk: D,
    temp_dir: Option<tempfile::TempDir>,
) -> Chunk<D> {
    let (log, _) = runtime.block_on(PartitionLog::open(disk, "bench/p-0", LogConfig::default())).unwrap();
    let batches = (0..n_batches)
        .map(|index| template.clone().stamped(Offset((index * RECORDS_PER_BATCH) as i64), LeaderEpoch(0)))
        .collect();
    Chunk { log, batches, _temp_dir: temp_dir }
}

/// Appends the chunk's batches, awaiting a sync every `sync_every` batches and at the end. Returns
/// the chunk so that dropping it (and its temp dir) happens outside the timed part.
fn append_all<D: Disk>(runtime: &Runtime, mut chunk: Chunk<D>, sync_every: usize) -> Chunk<D> {
    for (index, batch) in chunk.batches.iter().enumerate() {
        chunk.log.append(batch).unwrap();
        if (index + 1) % sync_every == 0 {
            let covered = runtime.block_on(chunk.log.begin_sync()).unwrap();
            chunk.log.mark_durable(covered);
        }
    }
    let covered = runtime.block_on(chunk.log.begin_sync()).unwrap();
    chunk.log.mark_durable(covered);
    chunk
}

fn log_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let template = template();
    let batch_bytes = template.len() as u64;
    let file_disk = || {
        let temp_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        (FileDisk::new(temp_dir.path()), Some(temp_dir))
    };
    let mut group = c.benchmark_group("log_append");
    group.sample_size(10);

    let n_sim = 1024;
    group.throughput(Throughput::Bytes(batch_bytes * n_sim as u64));
    group.bench_function("sim_disk_sync_every_64_batches", |b| {
        b.iter_batched(
            || chunk(&runtime, &template, n_sim, SimDisk::new(1), None),
            |input| append_all(&runtime, input, 64),
            BatchSize::PerIteration,
        )
    });

    let n_every = 32;
    group.throughput(Throughput::Bytes(batch_bytes * n_every as u64));
    group.bench_function("file_disk_fsync_every_batch", |b| {
        b.iter_batched(
            || {
                let (disk, temp_dir) = file_disk();
                chunk(&runtime, &template, n_every, disk, temp_dir)
            },
            |input| append_all(&runtime, input, 1),
            BatchSize::PerIteration,
        )
    });

    let n_group = 1024;
    group.throughput(Throughput::Bytes(batch_bytes * n_group as u64));
    group.bench_function("file_disk_fsync_every_64_batches", |b| {
        b.iter_batched(
            || {
                let (disk, temp_dir) = file_disk();
                chunk(&runtime, &template, n_group, disk, temp_dir)
            },
            |input| append_all(&runtime, input, 64),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, log_append);
criterion_main!(benches);
