//! The Raft monitor: observers that feed `keel_model::raft_checker` during the run, and the
//! process supervisor that judges every Raft node that stopped. A checker, not a driver: the
//! driver starts it for scenarios with [`crate::scenario::Checker::Raft`], the nemesis asks the
//! supervisor to judge after every fault it ends, and the liveness phase asks it once more.
//!
//! In: the cluster's metadata slots (each broker incarnation's Raft node handle). Out: a
//! [`RaftChecker`] fed with every node's view, and violations.
//!
//! # Observers
//! One task per broker, on the supervising node (never killed): every 20-50 ms of simulated time it
//! calls `observe()` on the broker's current Raft node and feeds the checker, telling it about
//! restarts (`node_restarted` with the snapshot index the incarnation booted from,
//! `NodeHandle::boot_snapshot_index`) and about the snapshot installs the node itself reports
//! (`RaftView::snapshots_installed`). Any other jump in a node's applied indices is a violation.
//!
//! # Power loss, as the metadata group sees it
//! Keel syncs every metadata write (entries with the hard state, snapshots, compaction), so the
//! metadata store never holds an unsynced batch for a power loss to drop. The power-loss fault is
//! therefore an abrupt stop whose store handles go stale at once, plus the data disk losing its
//! unsynced writes: it checks that nothing a node voted or acknowledged depended on a write the
//! store had not made durable, and that a node rebuilds its state from snapshot and log.
//!
//! # Harness policy: a Raft node that stopped
//! The driver stops its Raft node when the metadata store fails a write (its promises can no longer
//! be kept), and the broker then shuts down and exits with an error. The harness acts as the
//! process supervisor: it kills and restarts a broker that exited that way, but only if the nemesis
//! injected a store write error into it since its last restart. Any other exit (or a Raft node that
//! stopped without such an error) is a violation.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::meta::node::{NodeStatus, RaftView};
use keel_model::raft_checker::{RaftChecker, RaftObservation};
use madsim::rand::{thread_rng, Rng};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::{BrokerState, Cluster, MetaSlot};
use crate::lock;
use crate::trace::Trace;

/// Observers sample every node at a random interval in this range (simulated milliseconds).
pub const OBSERVE_INTERVAL_MS: (u64, u64) = (20, 50);
/// How long the observers may take for their last round after they are told to stop.
pub const OBSERVERS_STOP_MS_MAX: u64 = 5_000;

/// Shared between the observers and the supervisor: incarnations whose Raft node stopped while the
/// process kept running, as `(broker index, incarnation)`.
type Stopped = Arc<Mutex<BTreeSet<(usize, u64)>>>;

/// Feeds one node's view to the checker, telling it about each snapshot install the node reported
/// just where it happened among the applied entries. Returns the violations found (as text).
///
/// Only installs the node reports excuse a jump in its applied indices. (This used to excuse any
/// jump up to the node's current snapshot index, which local compaction also moves, so a node that
/// skipped entries and compacted soon after passed.)
pub fn feed_checker(checker: &mut RaftChecker, view: RaftView) -> Vec<String> {
    let RaftView {
        node_id: keel::types::NodeId(node_id),
        term,
        is_leader,
        commit_index,
        log,
        applied,
        snapshots_installed,
    } = view;
    // Runs of applied entries, each after the snapshot (if any) that the node installed before it.
    type Part = (Option<u64>, Vec<(u64, u64)>);
    let mut parts: Vec<Part> = vec![(None, Vec::new())];
    let mut installs = snapshots_installed.into_iter().peekable();
    for (position, entry) in applied.into_iter().enumerate() {
        while let Some((_, snapshot_index)) = installs.next_if(|(at, _)| *at <= position) {
            parts.push((Some(snapshot_index), Vec::new()));
        }
        parts.last_mut().expect("parts is never empty").1.push(entry);
    }
    parts.extend(installs.map(|(_, snapshot_index)| (Some(snapshot_index), Vec::new())));
    let mut found = Vec::new();
    for (snapshot, applied) in parts {
        if let Some(snapshot_index) = snapshot {
            checker.snapshot_installed(node_id, snapshot_index);
        }
        let observation = RaftObservation { node: node_id, term, is_leader, commit_index, log: log.clone(), applied };
        found.extend(checker.observe(&observation).into_iter().map(|violation| violation.to_string()));
    }
    found
}

/// The Raft checker, fed by one observer task per broker, and the supervisor's shared state.
pub struct RaftMonitor {
    checker: Arc<Mutex<RaftChecker>>,
    stopped: Stopped,
    stop: CancellationToken,
    observers: Vec<JoinHandle<()>>,
}

impl RaftMonitor {
    /// Starts one observer per broker on the supervising node (they are never killed).
    pub fn start(cluster: &Cluster, trace: &Trace, start: Instant) -> RaftMonitor {
        let checker = Arc::new(Mutex::new(RaftChecker::new()));
        let stopped: Stopped = Arc::default();
        let stop = CancellationToken::new();
        let observers = (0..cluster.broker_count())
            .map(|index| {
                let observer = Observer {
                    index,
                    node_id: index as u64 + 1,
                    slot: cluster.meta_slot_shared(index),
                    checker: checker.clone(),
                    stopped: stopped.clone(),
                    trace: trace.clone(),
                    start,
                };
                tokio::spawn(observer.run(stop.clone()))
            })
            .collect();
        RaftMonitor { checker, stopped, stop, observers }
    }

    /// The supervisor that judges stopped Raft nodes (see the module doc's harness policy).
    pub fn supervisor(&self, cluster: &Cluster) -> Supervisor {
        Supervisor::new(cluster, self.stopped.clone())
    }

    /// Stops the observers after one last round each; returns the checker and, if they did not
    /// finish within [`OBSERVERS_STOP_MS_MAX`], a violation.
    pub async fn finish(self) -> (RaftChecker, Option<String>) {
        self.stop.cancel();
        let observers = self.observers;
        let observed = tokio::time::timeout(Duration::from_millis(OBSERVERS_STOP_MS_MAX), async {
            for observer in observers {
                let _ = observer.await;
            }
        })
        .await;
        let violation = observed.is_err().then(|| "the Raft observers did not finish their last round".to_owned());
        (std::mem::take(&mut *lock(&self.checker)), violation)
    }
}

/// One broker's observer.
struct Observer {
    index: usize,
    node_id: u64,
    slot: Arc<Mutex<MetaSlot>>,
    checker: Arc<Mutex<RaftChecker>>,
    stopped: Stopped,
    trace: Trace,
    start: Instant,
}

impl Observer {
    /// Samples the broker's current Raft node until `stop`, then once more.
    async fn run(self, stop: CancellationToken) {
        let mut incarnation_seen = 0;
        loop {
            let last_round = stop.is_cancelled();
            if !last_round {
                let wait_ms = thread_rng().gen_range(OBSERVE_INTERVAL_MS.0..=OBSERVE_INTERVAL_MS.1);
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            }
            self.observe(&mut incarnation_seen).await;
            if last_round {
                return;
            }
        }
    }

    async fn observe(&self, incarnation_seen: &mut u64) {
        // Not the slot's `boot_snapshot_index`: the harness reads it from the status when the handle
        // arrives, which can be before the node's first status or after its first compaction. The
        // node's own boot index is exact, so the restart check is strict.
        let MetaSlot { incarnation, node, .. } = lock(&self.slot).clone();
        let Some(node) = node else { return };
        if incarnation != *incarnation_seen {
            lock(&self.checker).node_restarted(self.node_id, node.boot_snapshot_index());
            *incarnation_seen = incarnation;
        }
        if lock(&self.stopped).contains(&(self.index, incarnation)) {
            return;
        }
        let now_ns = || self.start.elapsed().as_nanos() as u64;
        match node.observe().await {
            None => {
                lock(&self.stopped).insert((self.index, incarnation));
                let what = format!("observer: broker-{} incarnation {incarnation} has no Raft node", self.node_id);
                self.trace.record(now_ns(), what);
            }
            Some(view) => {
                let found = feed_checker(&mut lock(&self.checker), view);
                for violation in found {
                    self.trace.record(now_ns(), format!("violation raft: {violation}"));
                }
            }
        }
    }
}

/// The statuses of the brokers that are up and have a Raft node (index, status).
pub fn statuses(cluster: &Cluster) -> Vec<(usize, NodeStatus)> {
    (0..cluster.broker_count())
        .filter(|&index| cluster.is_up(index))
        .filter_map(|index| cluster.meta_slot(index).node.map(|node| (index, node.status())))
        .collect()
}

/// The broker that leads the metadata group in the highest term, if any.
pub fn leader(cluster: &Cluster) -> Option<usize> {
    statuses(cluster)
        .into_iter()
        .filter(|(index, status)| status.role.is_leader() && !cluster.is_paused(*index))
        .max_by_key(|(_, status)| status.term)
        .map(|(index, _)| index)
}

/// The process supervisor (see the module doc's harness policy).
pub struct Supervisor {
    stopped: Stopped,
    /// Per broker: its metadata store's count of injected write errors when the harness last
    /// (re)started it. Only errors after that explain a stop of the current incarnation.
    write_errors_at_restart: Vec<u64>,
    /// Exits and stopped Raft nodes that no injected fault explains.
    pub violations: Vec<String>,
}

impl Supervisor {
    fn new(cluster: &Cluster, stopped: Stopped) -> Supervisor {
        let write_errors_at_restart =
            (0..cluster.broker_count()).map(|index| cluster.broker(index).kv.stats().write_errors).collect();
        Supervisor { stopped, write_errors_at_restart, violations: Vec::new() }
    }

    /// The harness (re)started broker `index`: faults before now explain nothing about its new
    /// incarnation.
    pub fn restarted(&mut self, cluster: &Cluster, index: usize) {
        self.write_errors_at_restart[index] = cluster.broker(index).kv.stats().write_errors;
    }

    /// Restarts (kill, then restart) every broker that exited, or that still serves while its
    /// current Raft node has stopped (the moment between the node stopping and the exit). A store
    /// write error injected since the broker's last restart explains it; anything else is recorded
    /// as a violation (and the broker is restarted all the same, so the run can go on).
    pub fn restart_stopped_raft_nodes(&mut self, cluster: &mut Cluster, down: &BTreeSet<usize>) {
        for index in 0..cluster.broker_count() {
            if !cluster.is_up(index) || cluster.is_paused(index) || down.contains(&index) {
                continue;
            }
            let incarnation = cluster.incarnation(index);
            let slot = cluster.meta_slot(index);
            let state = cluster.broker_state(index);
            let serving_without_node = state == BrokerState::Serving
                && slot.incarnation == incarnation
                && lock(&self.stopped).contains(&(index, incarnation));
            let what = match &state {
                BrokerState::Exited(Err(error)) => format!("exited with an error ({error})"),
                BrokerState::Exited(Ok(())) => "exited cleanly without being asked to".to_owned(),
                _ if serving_without_node => "lost its Raft node".to_owned(),
                _ => continue,
            };
            let write_errors = cluster.broker(index).kv.stats().write_errors;
            let explained = matches!(state, BrokerState::Exited(Err(_)) | BrokerState::Serving)
                && write_errors > self.write_errors_at_restart[index];
            let now_ns = cluster.now_ns();
            if explained {
                let note = format!(
                    "supervisor: broker-{} {what} after an injected metadata write error; restarting it",
                    index + 1
                );
                cluster.trace().record(now_ns, note);
            } else {
                let violation = format!(
                    "broker-{} incarnation {incarnation} {what}, but no metadata write error was injected into \
                     it since its last restart",
                    index + 1
                );
                cluster.trace().record(now_ns, format!("violation supervisor: {violation}"));
                self.violations.push(violation);
            }
            cluster.kill(index);
            cluster.restart(index);
            self.restarted(cluster, index);
        }
    }
}

/// Polls until every broker reports the same applied index, commit index and state hash (and has
/// applied everything it knows committed), or `deadline`. Returns the last statuses seen, and the
/// state hash they agree on.
pub async fn wait_converged(
    cluster: &Cluster,
    deadline: Instant,
) -> Result<(NodeStatus, u64), Vec<Option<NodeStatus>>> {
    loop {
        let nodes: Vec<_> = (0..cluster.broker_count()).map(|index| cluster.meta_slot(index).node).collect();
        let all: Vec<Option<NodeStatus>> = nodes.iter().map(|node| node.as_ref().map(|node| node.status())).collect();
        if let Some(Some(first)) = all.first() {
            let same_indexes = all.iter().all(|status| {
                status.as_ref().is_some_and(|status| {
                    status.applied_index == first.applied_index
                        && status.commit_index == first.commit_index
                        && status.applied_index == status.commit_index
                        && status.applied_index > 0
                })
            });
            // Hashed only then: a hash serializes the whole state (no await in between, so each
            // node's state is the one its status reports).
            if same_indexes {
                let hashes: Vec<u64> = nodes.iter().flatten().map(|node| node.state_hash().hash).collect();
                if hashes.iter().all(|hash| *hash == hashes[0]) {
                    return Ok((first.clone(), hashes[0]));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(all);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
