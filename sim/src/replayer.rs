//! The stale-copy replayer of the idempotent scenarios: a network that delivers an old copy of a
//! produce request long after the producer moved on. Every so often it reads a partition's committed
//! batches and sends one of them again, byte for byte (producer id, epoch and sequences included),
//! as a new produce request to the partition's leader.
//!
//! A correct leader never appends such a copy: the batch is already in the log, so it is a duplicate
//! of a batch the producer state still holds (answered with the **original** offsets), a sequence
//! older than the dedup window (`OutOfOrderSequence`), or a batch of an epoch the producer has since
//! left (`ProducerFenced`). An answer with any other offset is a violation: the copy was written a
//! second time. The replayer prefers batches of an epoch their producer has left (a producer starts
//! a new epoch after giving a batch up), so the fencing of older epochs is exercised: a producer's
//! own retries never reach the broker after its new epoch has (they are answered first).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel::batch::Batch;
use keel::client::{Client, ClientError};
use keel::protocol::{Acks, Body, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse};
use rand::rngs::StdRng;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::workload::{client_config, Recorder};

/// Longest pause between two replays (drawn per replay from `[REPLAY_PAUSE_MS_MIN, this]`).
pub const REPLAY_PAUSE_MS_MAX: u64 = 400;
const REPLAY_PAUSE_MS_MIN: u64 = 50;
/// How much of a partition one replay reads (from offset 0; a run's partitions are smaller).
const REPLAY_FETCH_BYTES: u32 = 4 * 1024 * 1024;

/// The replayer's client node: where it sends, and its RNG.
pub struct Replayer {
    pub addr: String,
    pub topic: String,
    pub partitions: u32,
    pub rng: StdRng,
}

impl Replayer {
    /// Replays until `stop`.
    pub async fn run(mut self, recorder: Arc<Recorder>, stop: CancellationToken) {
        let client = Client::new(self.addr.clone(), client_config());
        while !stop.is_cancelled() {
            let pause = self.rng.random_range(REPLAY_PAUSE_MS_MIN..=REPLAY_PAUSE_MS_MAX);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let partition = self.rng.random_range(0..self.partitions);
            let Ok(batches) = committed_batches(&client, &self.topic, partition).await else { continue };
            let Some(batch) = pick(&batches, &mut self.rng) else { continue };
            replay(&client, &self.topic, partition, batch, &recorder).await;
        }
    }
}

/// The partition's idempotent batches from offset 0 up to its high watermark.
async fn committed_batches(client: &Client, topic: &str, partition: u32) -> Result<Vec<Batch>, ClientError> {
    let body = |leader_epoch| {
        Body::FetchRequest(FetchRequest {
            topic: topic.to_owned(),
            partition,
            offset: 0,
            max_bytes: REPLAY_FETCH_BYTES,
            max_wait_ms: 0,
            min_bytes: 0,
            leader_epoch: Some(leader_epoch),
        })
    };
    let mut records = match client.request_partition(topic, partition, body, false, Duration::ZERO).await? {
        Body::FetchResponse(FetchResponse { error: None, records, .. }) => records,
        _ => return Ok(Vec::new()),
    };
    let mut batches = Vec::new();
    while let Ok(Some(batch)) = Batch::split_first(&mut records) {
        if batch.producer().producer_id.0 >= 0 {
            batches.push(batch);
        }
    }
    Ok(batches)
}

/// A batch whose producer has since moved to a newer epoch, on half the draws that have one; else
/// any batch.
fn pick<'a>(batches: &'a [Batch], rng: &mut StdRng) -> Option<&'a Batch> {
    let mut newest_epoch = BTreeMap::new();
    for batch in batches {
        let fields = batch.producer();
        let newest = newest_epoch.entry(fields.producer_id).or_insert(fields.producer_epoch);
        *newest = (*newest).max(fields.producer_epoch);
    }
    let superseded: Vec<&Batch> = batches
        .iter()
        .filter(|batch| batch.producer().producer_epoch < newest_epoch[&batch.producer().producer_id])
        .collect();
    if !superseded.is_empty() && rng.random_bool(0.5) {
        return Some(superseded[rng.random_range(0..superseded.len())]);
    }
    (!batches.is_empty()).then(|| &batches[rng.random_range(0..batches.len())])
}

/// Sends `batch` again and judges the answer.
async fn replay(client: &Client, topic: &str, partition: u32, batch: &Batch, recorder: &Recorder) {
    let bytes: Bytes = batch.as_bytes().clone();
    let body = |_| {
        Body::ProduceRequest(ProduceRequest {
            topic: topic.to_owned(),
            partition,
            acks: Acks::All as i32,
            batch: bytes.clone(),
            timeout_ms: 1_000,
        })
    };
    let fields = batch.producer();
    let what = format!(
        "replayed batch of producer {} epoch {} sequence {} (offsets {}..={}) to partition {partition}",
        fields.producer_id.0,
        fields.producer_epoch.0,
        fields.base_sequence.0,
        batch.base_offset().0,
        batch.last_offset().0
    );
    match client.request_partition(topic, partition, body, true, Duration::ZERO).await {
        Ok(Body::ProduceResponse(ProduceResponse { error: None, base_offset, .. })) => {
            if base_offset == batch.base_offset().0 {
                recorder.note(format!("{what}: recognised, original offset {base_offset}"));
            } else {
                recorder.violation(format!("{what}: appended again at offset {base_offset}"));
            }
        }
        Ok(Body::ProduceResponse(ProduceResponse { error: Some(info), .. })) => {
            recorder.note(format!("{what}: refused, {:?}", info.error_code()));
        }
        Ok(_) => {}
        Err(error) => recorder.note(format!("{what}: {error}")),
    }
}
