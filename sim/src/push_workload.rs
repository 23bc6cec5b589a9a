//! The push workload (ADR 0021): subscribers that read the queue workload's topic through push
//! subscriptions, one process per partition, recording every push as a poll of the queue history.
//!
//! Each subscriber has a small credit window and a drawn think time per push, so the broker runs
//! out of credit and waits for grants; its subscription rides out leader kills, restarts, pauses
//! and cuts by reopening at the new leader from its position. The queue checker then holds the
//! pushes to what it holds polls to: no value read twice at two offsets, none that was never sent or
//! failed, no offset skipped or read backwards within one subscriber (a reopen must go on exactly
//! where the last push ended), no committed offset later seen lost.
//!
//! Checked here, during the run:
//! - a push's records are below its high watermark, and one subscriber's high watermarks never go
//!   back (each push's read starts after the previous one's ended);
//! - the client's own checks of the broker (a push at another position than asked, a push past the
//!   granted credit) surface as protocol errors: violations;
//! - liveness: after the final read, every subscriber (thinking no more) reaches the final high
//!   watermark of its partition, never standing still for the liveness bound.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::client::{Client, ClientError, Pushed, Subscription, SubscriptionConfig};
use keel::protocol::ErrorCode;
use keel::types::Offset as KeelOffset;
use keel_model::history::{Offset, Partition, PollReads, ProcessId};
use rand::rngs::StdRng;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::lock;
use crate::workload::{client_config, log_start, value_of, Recorder};

/// One subscriber process: a push subscription to one partition.
pub struct Subscriber {
    pub addr: String,
    pub topic: String,
    pub partition: u32,
    pub process: ProcessId,
    pub window: SubscriptionConfig,
    /// Longest pause after a push before the next call (a slow consumer runs out of credit).
    pub think_ms_max: u64,
    /// The topic has retention: a position below the log start was deleted, not lost.
    pub retained: bool,
    pub rng: StdRng,
    /// Where each subscriber stands (the offset after its last record), for the catch-up check.
    pub positions: Arc<Mutex<BTreeMap<u32, i64>>>,
    /// Set for the catch-up after the final read: no more thinking between pushes.
    pub hurry: Arc<AtomicBool>,
}

impl Subscriber {
    /// Reads pushes until `stop`.
    pub async fn run(mut self, recorder: Arc<Recorder>, stop: CancellationToken) {
        let client = Client::new(self.addr.clone(), client_config());
        let partition = Partition::of_topic(&self.topic, self.partition);
        lock(&recorder.history).assign(self.process, recorder.now_ns(), vec![partition.clone()]);
        let mut subscription =
            Subscription::new(client.clone(), &self.topic, self.partition, KeelOffset(0), self.window);
        let mut high_watermark_max = -1i64;
        while !stop.is_cancelled() {
            let pending = lock(&recorder.history).invoke_poll(self.process, recorder.now_ns());
            let result = tokio::select! {
                biased;
                _ = stop.cancelled() => None,
                result = subscription.next() => Some(result),
            };
            let now_ns = recorder.now_ns();
            let pushed = match result {
                // Stopped while waiting: nothing was handed over, so nothing was consumed.
                None => {
                    lock(&recorder.history).poll_fail(pending, now_ns);
                    break;
                }
                Some(Ok(pushed)) => pushed,
                Some(Err(error)) => {
                    lock(&recorder.history).poll_fail(pending, now_ns);
                    self.on_error(&client, &mut subscription, &recorder, error).await;
                    continue;
                }
            };
            let reads = self.check(&recorder, &pushed, &mut high_watermark_max);
            let mut poll_reads = PollReads::new();
            poll_reads.insert(partition.clone(), reads);
            lock(&recorder.history).poll_ok(pending, now_ns, poll_reads);
            lock(&self.positions).insert(self.partition, subscription.position().0);
            let think_ms = self.rng.random_range(0..=self.think_ms_max);
            if think_ms > 0 && !self.hurry.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(think_ms)).await;
            }
        }
        let stats = subscription.stats();
        recorder.note(format!(
            "subscriber of partition {}: {} pushes, {} grants, {} streams opened, at {}",
            self.partition,
            stats.pushes,
            stats.grants,
            stats.opened,
            subscription.position()
        ));
    }

    /// The reads of one push, checked against its high watermark and the subscriber's earlier ones.
    fn check(
        &self,
        recorder: &Recorder,
        pushed: &Pushed,
        high_watermark_max: &mut i64,
    ) -> Vec<(Offset, keel_model::history::Value)> {
        let partition = self.partition;
        if pushed.high_watermark.0 < *high_watermark_max {
            recorder.violation(format!(
                "subscriber: partition {partition}: a push reported high watermark {} after one reported {}",
                pushed.high_watermark.0, high_watermark_max
            ));
        }
        *high_watermark_max = (*high_watermark_max).max(pushed.high_watermark.0);
        let mut reads = Vec::with_capacity(pushed.records.len());
        for record in &pushed.records {
            if record.offset.0 >= pushed.high_watermark.0 {
                recorder.violation(format!(
                    "subscriber: partition {partition}: pushed offset {} at or past its high watermark {}",
                    record.offset.0, pushed.high_watermark.0
                ));
            }
            reads.push((Offset(record.offset.0.max(0) as u64), value_of(record.value.as_ref())));
        }
        reads
    }

    /// A subscription that gave up: out of range (retention, or a log that lost records), a broken
    /// protocol (a violation), or reopens that kept failing (tried again after a pause).
    async fn on_error(
        &self,
        client: &Client,
        subscription: &mut Subscription,
        recorder: &Recorder,
        error: ClientError,
    ) {
        let partition = self.partition;
        let position = subscription.position().0;
        let reassign = || {
            let assigned = vec![Partition::of_topic(&self.topic, partition)];
            lock(&recorder.history).assign(self.process, recorder.now_ns(), assigned);
        };
        match error.code() {
            Some(ErrorCode::OffsetOutOfRange) => match log_start(client, &self.topic, partition).await {
                Some(start) if self.retained && position < start => {
                    subscription.seek(KeelOffset(start));
                    reassign();
                }
                Some(_) => {
                    recorder
                        .durability_break(format!("subscriber: partition {partition} position {position}: {error}"));
                    subscription.seek(KeelOffset(0));
                    reassign();
                }
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            _ if matches!(error, ClientError::Protocol(_) | ClientError::Corrupt(_)) => {
                recorder.violation(format!("subscriber: partition {partition}: {error}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Draws the subscribers' settings: a window of 1-16 KiB and 1-64 records, and up to 50 ms of
/// thought per push.
pub fn draw_window(rng: &mut StdRng) -> (SubscriptionConfig, u64) {
    let window = SubscriptionConfig {
        window_bytes: rng.random_range(1024..=16 * 1024),
        window_records: rng.random_range(1..=64),
    };
    (window, rng.random_range(0..=50))
}
