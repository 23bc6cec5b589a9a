//! Batch encode / decode throughput: the per-batch CPU cost on the produce and fetch paths.
//!
//! Run: `cargo bench --bench batch`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use keel::batch::{encode_batch, Batch, ProducerFields, Record};
use keel::types::{LeaderEpoch, Offset};

fn records(count: usize, value_bytes: usize) -> Vec<Record> {
    (0..count).map(|_| Record::value(Bytes::from(vec![b'x'; value_bytes]))).collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch");
    for &(count, value_bytes) in &[(16usize, 1024usize), (256, 1024), (1024, 100)] {
        let input = records(count, value_bytes);
        let encoded = encode_batch(&input, 1_700_000_000_000, ProducerFields::NONE);
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        let label = format!("{count}x{value_bytes}B");
        group.bench_with_input(BenchmarkId::new("encode", &label), &input, |b, input| {
            b.iter(|| encode_batch(input, 1_700_000_000_000, ProducerFields::NONE))
        });
        group.bench_with_input(BenchmarkId::new("parse+validate", &label), &encoded, |b, encoded| {
            b.iter(|| Batch::parse(encoded.clone()).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("stamp", &label), &encoded, |b, encoded| {
            b.iter(|| Batch::parse(encoded.clone()).unwrap().stamped(Offset(42), LeaderEpoch(1)))
        });
        group.bench_with_input(BenchmarkId::new("iterate records", &label), &encoded, |b, encoded| {
            let batch = Batch::parse(encoded.clone()).unwrap();
            b.iter(|| batch.records().map(|r| r.unwrap().value.map_or(0, |v| v.len())).sum::<usize>())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
