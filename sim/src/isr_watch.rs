//! The controller's view of the queue topic's partitions, as the harness reads it, and the ISR checks
//! built on it.
//!
//! In: the brokers' metadata Raft nodes (each one's applied `MetadataState`, through the cluster's
//! [`MetaSlot`]s), the queue history. Out: [`TopicView`]s (who leads each partition, who is in its
//! ISR) for the nemesis's partition-aware faults; the [`IsrWatch`] timeline recorded during the run;
//! and the violations of two checkers:
//! - **acks only at min ISR** ([`acks_under_min_isr`], `Checker::MinIsrAcks`): a send invoked while
//!   the controller's ISR of its partition had fewer than `min_insync_replicas` members, and
//!   acknowledged while the harness still saw that ISR, is a violation. The leader must refuse
//!   (`NotEnoughReplicas` before appending, an indeterminate `NotEnoughReplicasAfterAppend` after),
//!   never acknowledge.
//! - **full ISR after the heal** ([`wait_full_isr`], `Checker::FullIsr`): within the liveness bound
//!   every partition has a leader and every replica in its ISR, so every follower that left rejoined.
//!
//! # The freshest record
//! A broker applies the controller's decisions once it learns they are committed. Per partition, the
//! harness takes the record with the highest partition epoch any broker has applied: the current
//! incarnation's, or the last one of a broker that is down (its state stays readable until the broker
//! restarts). The partition epoch bumps on every leader or ISR change, so that record is the latest
//! decision the cluster knows of. Reading it sends nothing and changes nothing in the run.
//!
//! # Why the min-ISR check raises no false alarm
//! A leader answers `acks=all` only when the ISR it knows has at least `min_insync_replicas` members,
//! counting neither pending additions nor members a pending change removes (`partition::replica`),
//! and it knows only decisions it has applied, which no broker applies before they are committed. An
//! ack at time `a` therefore needs a record at the minimum applied somewhere before `a`; if a sample at
//! or after `a` still shows the small ISR as the freshest record, there was none. The one way left is
//! a leader that has not applied the decision that shrank its ISR yet (it still counts the members the
//! decision removed, which must all hold the batch for it to be committed): the check only covers
//! sends invoked [`START_MARGIN_MS`] after the harness first saw the small ISR, longer than a broker
//! takes to apply a committed decision when no network fault separates it from the controller (the
//! metadata leader sends the new commit index at once, and heartbeats every 200 ms). So the scenarios
//! that use it have no network faults. Stretches shorter than the margin are not judged: a follower
//! that comes back catches up in tens of milliseconds, so the double failover's stretches below the
//! minimum are mostly that short; overlapping slow followers make long ones.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::meta::node::NodeHandle as MetaNodeHandle;
use keel::meta::state::PartitionRecord;
use keel_model::history::{EventKind, History, Op, Partition};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, MetaSlot};
use crate::lock;

/// How often the watch samples the brokers' metadata (simulated milliseconds).
pub const SAMPLE_INTERVAL_MS: u64 = 20;
/// Sends invoked this soon after the harness first saw an ISR below the minimum are not judged (a
/// leader may not have applied the shrink yet).
pub const START_MARGIN_MS: u64 = 200;
/// How often [`wait_full_isr`] looks again.
pub const FULL_ISR_POLL_MS: u64 = 50;

/// One topic as the freshest records show it.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicView {
    pub min_isr: usize,
    /// Partition `i` at index `i`.
    pub partitions: Vec<PartitionRecord>,
}

impl TopicView {
    pub fn partition(&self, partition: u32) -> Option<&PartitionRecord> {
        self.partitions.get(partition as usize)
    }
}

/// The freshest view of `topic` over the metadata nodes given; `None` while no node knows the topic.
pub fn freshest(nodes: impl IntoIterator<Item = MetaNodeHandle>, topic: &str) -> Option<TopicView> {
    let mut view: Option<TopicView> = None;
    for node in nodes {
        let Some(seen) = node.with_state(|state| {
            state.topic(topic).map(|record| TopicView {
                min_isr: record.min_insync_replicas as usize,
                partitions: record.partitions.clone(),
            })
        }) else {
            continue;
        };
        match &mut view {
            None => view = Some(seen),
            Some(view) => {
                for (known, candidate) in view.partitions.iter_mut().zip(seen.partitions) {
                    if candidate.partition_epoch > known.partition_epoch {
                        *known = candidate;
                    }
                }
            }
        }
    }
    view
}

/// The freshest view of `topic` over every broker's metadata node.
pub fn topic_view(cluster: &Cluster, topic: &str) -> Option<TopicView> {
    freshest((0..cluster.broker_count()).filter_map(|index| cluster.meta_slot(index).node), topic)
}

/// A partition's record while it was the freshest the harness saw: from its first to its last sample.
#[derive(Clone, Debug)]
pub struct Stretch {
    pub first_ns: u64,
    pub last_ns: u64,
    pub record: PartitionRecord,
}

/// What the watch recorded: per partition, one stretch per partition epoch, in epoch order.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub min_isr: Option<usize>,
    pub partitions: BTreeMap<u32, Vec<Stretch>>,
}

impl Timeline {
    fn record(&mut self, now_ns: u64, view: TopicView) {
        self.min_isr = Some(view.min_isr);
        for record in view.partitions {
            let stretches = self.partitions.entry(record.partition).or_default();
            match stretches.last_mut() {
                Some(last) if last.record.partition_epoch == record.partition_epoch => last.last_ns = now_ns,
                // An older record than one already seen (a restarted broker replaying): not news.
                Some(last) if last.record.partition_epoch > record.partition_epoch => {}
                _ => stretches.push(Stretch { first_ns: now_ns, last_ns: now_ns, record }),
            }
        }
    }
}

/// An observer that samples the freshest view of one topic every [`SAMPLE_INTERVAL_MS`] during the
/// run, on the supervising node (never killed).
pub struct IsrWatch {
    timeline: Arc<Mutex<Timeline>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl IsrWatch {
    /// Starts watching `topic` (it may not exist yet); times are nanoseconds since `start`.
    pub fn start(cluster: &Cluster, topic: &str, start: Instant) -> IsrWatch {
        let slots: Vec<Arc<Mutex<MetaSlot>>> =
            (0..cluster.broker_count()).map(|index| cluster.meta_slot_shared(index)).collect();
        let timeline = Arc::new(Mutex::new(Timeline::default()));
        let stop = CancellationToken::new();
        let task = {
            let (timeline, stop, topic) = (timeline.clone(), stop.clone(), topic.to_owned());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(SAMPLE_INTERVAL_MS)).await;
                    let nodes = slots.iter().filter_map(|slot| lock(slot).node.clone());
                    if let Some(view) = freshest(nodes, &topic) {
                        lock(&timeline).record(start.elapsed().as_nanos() as u64, view);
                    }
                }
            })
        };
        IsrWatch { timeline, stop, task }
    }

    /// Stops the watch and returns what it saw.
    pub async fn finish(self) -> Timeline {
        self.stop.cancel();
        let _ = self.task.await;
        std::mem::take(&mut *lock(&self.timeline))
    }
}

/// What [`acks_under_min_isr`] found.
#[derive(Clone, Debug, Default)]
pub struct MinIsrReport {
    /// Sends judged: invoked inside a stretch with the ISR below the minimum (after the margin).
    pub sends_judged: usize,
    /// Of those, sends refused with a definite error (e.g. `NotEnoughReplicas`).
    pub sends_failed: usize,
    /// Stretches with the ISR below the minimum, over all partitions, in words.
    pub stretches_under_min: Vec<String>,
    pub violations: Vec<String>,
}

/// The acks-only-at-min-ISR check (see the module doc) over the queue history of `topic`.
pub fn acks_under_min_isr(history: &History, topic: &str, timeline: &Timeline) -> MinIsrReport {
    let mut report = MinIsrReport::default();
    let Some(min_isr) = timeline.min_isr else { return report };
    let margin_ns = START_MARGIN_MS * 1_000_000;
    let under: BTreeMap<Partition, Vec<&Stretch>> = timeline
        .partitions
        .iter()
        .map(|(partition, stretches)| {
            let small = stretches.iter().filter(|stretch| stretch.record.isr.len() < min_isr).collect();
            (Partition::of_topic(topic, *partition), small)
        })
        .collect();
    report.stretches_under_min = under
        .iter()
        .flat_map(|(partition, small)| {
            small.iter().map(move |stretch| {
                format!(
                    "{partition} isr {:?} leader {:?} epoch {} from {:.3} to {:.3} ms",
                    stretch.record.isr,
                    stretch.record.leader,
                    stretch.record.partition_epoch,
                    stretch.first_ns as f64 / 1e6,
                    stretch.last_ns as f64 / 1e6
                )
            })
        })
        .collect();
    // Values are unique per send: an invoke and its completion share one.
    let mut invoked_ns = BTreeMap::new();
    for event in history.events() {
        let Op::Send { partition, value, offset } = &event.op else { continue };
        if event.kind == EventKind::Invoke {
            invoked_ns.insert(value.clone(), event.time_ns);
            continue;
        }
        let Some(&invoke_ns) = invoked_ns.get(value) else { continue };
        let Some(stretch) = under.get(partition).and_then(|small| {
            small.iter().find(|stretch| invoke_ns >= stretch.first_ns + margin_ns && invoke_ns <= stretch.last_ns)
        }) else {
            continue;
        };
        report.sends_judged += 1;
        match event.kind {
            EventKind::Fail => report.sends_failed += 1,
            EventKind::Ok if event.time_ns <= stretch.last_ns => report.violations.push(format!(
                "min ISR: send of {value} to {partition} invoked at {:.3} ms was acknowledged (offset {offset:?}) at \
                 {:.3} ms, while the controller's ISR {:?} (partition epoch {}, seen from {:.3} to {:.3} ms) had \
                 fewer than {min_isr} members",
                invoke_ns as f64 / 1e6,
                event.time_ns as f64 / 1e6,
                stretch.record.isr,
                stretch.record.partition_epoch,
                stretch.first_ns as f64 / 1e6,
                stretch.last_ns as f64 / 1e6,
            )),
            _ => {}
        }
    }
    report
}

/// Waits up to `bound` until every partition of `topic` has a leader and all its replicas in its
/// ISR; otherwise returns the last view seen, in words.
pub async fn wait_full_isr(cluster: &Cluster, topic: &str, bound: Duration) -> Result<TopicView, String> {
    let deadline = Instant::now() + bound;
    loop {
        let view = topic_view(cluster, topic);
        let full = view.as_ref().is_some_and(|view| {
            view.partitions.iter().all(|record| {
                record.leader.is_some()
                    && record.isr.len() == record.replicas.len()
                    && record.replicas.iter().all(|replica| record.isr.contains(replica))
            })
        });
        match view {
            Some(view) if full => return Ok(view),
            _ if Instant::now() >= deadline => {
                return Err(format!(
                    "full ISR: not every replica was back in its partition's ISR {} ms after the heal: {view:?}",
                    bound.as_millis()
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(FULL_ISR_POLL_MS)).await,
        }
    }
}
