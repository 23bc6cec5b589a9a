//! The nemesis: one fault engine for every scenario, with overlapping faults.
//!
//! In: the scenario's fault classes and the seed's [`NemesisSwarm`] (weights, rates, outage length,
//! how many faults may be active at once), the cluster, the client nodes the workload runs on, and
//! optionally the Raft [`Supervisor`]. Out: faults started and ended on the cluster (each traced by
//! the cluster as a `nemesis ...` line), and [`FaultCounts`]: how many faults of each class hit.
//!
//! # The engine
//! Every drawn interval (mean `interval_ms`) one fault class is drawn by weight
//! ([`crate::swarm::pick_weighted`]) and started, unless `concurrent_faults_max` faults are already
//! active. Each fault lasts an outage drawn up to `outage_ms_max`, then ends (a killed broker is
//! restarted, a link opens, a disk fault is lifted). Faults of different classes overlap and
//! compose: link clogs are counted per link by the cluster, and the data-disk faults of one broker
//! (slow syncs, failing syncs, write errors, a power-loss stall) are kept as separate components
//! here and written to the disk together.
//!
//! # Targets
//! The class chooses its target among the scenario's nodes: a kill hits any broker, a leader kill
//! the metadata leader, a power loss or a pause the leader half of the time (always the leader when
//! forced), a clog a broker or (half the time, where the workload runs on client nodes) a workload
//! client, a metadata write error any broker. Partitions put the leader on either side; one-way
//! clogs cut the leader's sending or hearing half of the time. With one broker every target is it.
//! A partition leader kill hits the leader of a partition of the workload's topic, and a producer
//! cut clogs the link between a producer's client node and such a leader (both ways, or only its
//! answers, or only its requests), both read from the controller's metadata
//! ([`crate::isr_watch::topic_view`]) and drawn among the partitions whose leader serves.
//! A bit flip hits a synced `.log` segment of a broker from a minority fixed as the run goes: the
//! first `(k - 1) / 2` distinct brokers it hits, then only those ([`bit_flip_target`]), where `k` is
//! the smaller of the broker count and the replication factor, so every partition keeps an intact
//! copy on a majority of its replicas (with 5 brokers and RF 3, two rotten brokers could hold two of
//! one partition's three replicas: `isr_5_swarm` seed 30017); with `k < 3` it never fires.
//!
//! Two classes follow the controller's decisions, read from the brokers' applied metadata
//! ([`crate::isr_watch::topic_view`]) every [`METADATA_POLL_MS`], and run as a sequence of steps
//! rather than one outage: a double failover crashes the leader of a partition whose ISR holds every
//! replica, waits until the controller has elected another leader, crashes that one within
//! [`SECOND_CRASH_MS_MAX`] and brings both back at drawn times; a slow follower stalls the syncs of
//! one broker's follower replicas ([`keel::storage::sim::FsyncStall`]) for longer than
//! `replica_lag_ms_max` and watches it leave the ISRs and come back.
//!
//! # Required faults
//! A class the scenario uses `Always` is injected at least once on every seed, on a node that
//! matters: it is due at a time drawn in the first half of the phase; from then on no drawn fault
//! starts until it happened, and it is forced (tried again every [`FORCED_FAULT_RETRY_MS`] while
//! there is no leader or the target is busy). What counts: a crash or power loss of a serving
//! broker (one that hit the leader is a leader kill too); a clog of a broker; a slow, failed sync or
//! a failed write that the broker's disk reports; a bit flipped in a synced segment; a double
//! failover's second crash of a serving partition leader; a slow follower seen leaving an ISR and
//! then back in every ISR it left. A seed whose required fault never counted fails.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use keel::partition::replica::ReplicaConfig;
use keel::storage::sim::{FsyncStall, SimDiskFaults};
use keel::types::{LeaderEpoch, NodeId};
use madsim::rand::{thread_rng, Rng};
use tokio::time::Instant;

use crate::cluster::{BrokerState, Cluster};
use crate::driver::TOPIC;
use crate::isr_watch::topic_view;
use crate::monitor::{leader, Supervisor};
use crate::scenario::Scenario;
use crate::swarm::{pick_weighted, FaultClass, NemesisSwarm};

/// How long a forced disk fault may take to show (a slow or a failed sync, a failed write) before
/// the nemesis moves on. The workload keeps the broker writing, so this is only reached when the
/// broker cannot write at all.
pub const FORCED_DISK_FAULT_MS_MAX: u64 = 3_000;
/// How often a forced fault that could not be injected (no leader, target busy) is tried again.
pub const FORCED_FAULT_RETRY_MS: u64 = 100;
/// Which files a bit flip rots: partition segments (their indexes are rebuilt by recovery, so a flip
/// there tests little).
pub const BIT_FLIP_SUFFIX: &str = ".log";
/// How often a fault that follows the controller's decisions (a double failover, a slow follower)
/// reads the metadata again.
pub const METADATA_POLL_MS: u64 = 100;
/// Double failover: how long the controller may take to elect another leader after the first crash
/// (it fences a dead broker after `broker_fence_after_ms`, 6 s by default) before the nemesis gives up
/// on this one and brings the broker back.
pub const FAILOVER_ELECTION_MS_MAX: u64 = 15_000;
/// Double failover: the new leader crashes up to this long after the harness saw it elected (drawn).
pub const SECOND_CRASH_MS_MAX: u64 = 2_000;
/// Double failover: the first victim comes back up to this long after the election (drawn), so it is
/// sometimes back before the second crash and sometimes not.
pub const FIRST_BACK_MS_MAX: u64 = 3_000;
/// Double failover: how long the second crash waits for the partition's leader to serve.
pub const SECOND_CRASH_WAIT_MS_MAX: u64 = 5_000;
/// Double failover: the second victim's outage, drawn in this range (shorter and longer than the
/// controller's fencing timeout).
pub const SECOND_OUTAGE_MS: (u64, u64) = (200, 9_000);
/// Slow follower: the stall lasts `replica_lag_ms_max` plus a time drawn in this range, enough for a
/// leader to notice the lag (it checks at least every `replica_lag_ms_max / 4`) and for the
/// controller to apply the shrink before the stall ends.
pub const SLOW_FOLLOWER_OVER_LAG_MS: (u64, u64) = (3_500, 5_500);
/// Slow follower: how long after the stall the follower has to be back in every ISR it left.
pub const SLOW_FOLLOWER_REJOIN_MS_MAX: u64 = 3_000;

/// How many faults of each class hit during the nemesis phase. For the data-disk classes these are
/// the disk's own counters (syncs that waited, syncs that failed, writes that failed).
pub type FaultCounts = BTreeMap<FaultClass, u64>;

/// A fault the nemesis started and will end.
#[derive(Clone, Debug)]
enum Fault {
    /// Killed or powered off; `stalled` when a power loss first stalled the disk's syncs.
    Down {
        broker: usize,
        stalled: bool,
    },
    Paused(usize),
    ClogBroker(usize),
    ClogClient(usize),
    Links(Vec<(usize, usize)>),
    /// Directions of client-broker links: `(client index, broker index, toward the broker)`.
    ClientLinks(Vec<(usize, usize, bool)>),
    Latency,
    PacketLoss,
    ClockSkew(usize),
    MetaWriteErrors(usize),
    Disk(usize, DiskFault),
    /// Advanced by [`Nemesis::step_double_failover`] rather than ended.
    DoubleFailover(DoubleFailover),
    /// Advanced by [`Nemesis::step_slow_follower`] rather than ended.
    SlowFollower(SlowFollower),
}

/// A double failover in progress ([`FaultClass::DoubleFailover`]).
#[derive(Clone, Debug)]
struct DoubleFailover {
    partition: u32,
    /// The leader that crashed first, the leader epoch it led, and when it crashed.
    first: usize,
    first_epoch: LeaderEpoch,
    first_crashed_at: Instant,
    first_down: bool,
    /// Set when the harness saw another leader elected: when the first victim comes back, and when
    /// the second crash is due.
    first_back_at: Option<Instant>,
    second_crash_at: Option<Instant>,
    /// The second victim, and when it comes back.
    second: Option<(usize, Instant)>,
    second_down: bool,
    /// The election or the second crash did not happen in time: only the returns are left.
    given_up: bool,
}

impl DoubleFailover {
    fn is_down(&self, index: usize) -> bool {
        (self.first_down && self.first == index) || (self.second_down && self.second.is_some_and(|(s, _)| s == index))
    }
}

/// A slow follower in progress ([`FaultClass::SlowFollower`]).
#[derive(Clone, Debug)]
struct SlowFollower {
    target: usize,
    /// The partitions whose ISR it was in, without leading them, when the stall began.
    watched: Vec<u32>,
    /// When its stalled syncs complete.
    stall_end: Instant,
    /// Partitions whose ISR the harness saw it leave, and whether it was seen back since.
    left: BTreeMap<u32, bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DiskFault {
    SlowFsync,
    FailedFsync,
    FailedWrite,
    Misdirected,
}

struct ActiveFault {
    fault: Fault,
    end: Instant,
}

/// One broker's data-disk fault components; the disk gets their composition.
#[derive(Clone, Debug, Default)]
struct DiskComponents {
    latency_ms: Option<(u64, u64)>,
    /// A power-loss stall: every sync waits this long (overrides `latency_ms`).
    stall_ms: Option<u64>,
    /// A slow follower's stalled replicas.
    follower_stall: Option<FsyncStall>,
    fsync_error_probability: f64,
    write_eio_probability: f64,
    write_enospc_probability: f64,
    misdirected_write_probability: f64,
    /// Write errors off while a forced failed fsync waits for a sync (a partition whose writes
    /// keep failing may not reach one: seed 12285686 of `single_broker_slow_and_failing_fsync`).
    writes_held: bool,
}

impl DiskComponents {
    fn faults(&self) -> SimDiskFaults {
        let latency = self.stall_ms.map(|stall| (stall, stall)).or(self.latency_ms).unwrap_or((0, 0));
        let (eio, enospc) =
            if self.writes_held { (0.0, 0.0) } else { (self.write_eio_probability, self.write_enospc_probability) };
        SimDiskFaults {
            fsync_error_probability: self.fsync_error_probability,
            fsync_latency_ms: latency,
            write_eio_probability: eio,
            write_enospc_probability: enospc,
            fsync_stall: self.follower_stall.clone(),
            misdirected_write_probability: self.misdirected_write_probability,
            ..SimDiskFaults::default()
        }
    }
}

/// A fault class the nemesis must inject at least once.
#[derive(Clone, Copy, Debug)]
struct RequiredFault {
    class: FaultClass,
    /// From then on the fault is forced, and no drawn fault starts until it happened.
    due: Instant,
    /// The next forced attempt.
    next_attempt: Instant,
}

pub struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    swarm: &'a NemesisSwarm,
    /// Power losses stall the syncs first (three in four) where the scenario has slow fsyncs.
    stall_before_power_loss: bool,
    supervisor: Option<&'a mut Supervisor>,
    /// Client nodes that run the workload (clogging an idle node would test nothing).
    workload_clients: Vec<usize>,
    /// The workload's client nodes that run producers (the targets of a producer cut).
    producer_clients: Vec<usize>,
    active: Vec<ActiveFault>,
    disks: Vec<DiskComponents>,
    injected: BTreeMap<FaultClass, u64>,
    required: Vec<RequiredFault>,
    /// Brokers a bit flip hit so far (never more than `(n - 1) / 2`).
    bit_flipped: BTreeSet<usize>,
    /// How many distinct brokers bit flips may hit over the run ([`bit_flip_brokers_max`]).
    bit_flip_brokers_max: usize,
    /// The end of the faulty phase (a slow follower that cannot end before it is not started).
    deadline: Instant,
    /// Stop injecting this long into the phase, planned as if it ran whole (`sim/shrink`).
    cut: Option<Duration>,
}

impl<'a> Nemesis<'a> {
    pub fn new(
        cluster: &'a mut Cluster,
        scenario: &Scenario,
        swarm: &'a NemesisSwarm,
        supervisor: Option<&'a mut Supervisor>,
        workload_clients: Vec<usize>,
    ) -> Nemesis<'a> {
        // A forced fault lands in the first half of the run (after the first tenth), so that the
        // cluster lives with it and recovers from it before the heal.
        let now = Instant::now();
        let duration_ms = scenario.duration.as_millis() as u64;
        let required = scenario
            .required()
            .into_iter()
            .map(|class| {
                let due = now + Duration::from_millis(thread_rng().gen_range(duration_ms / 10..=duration_ms / 2));
                RequiredFault { class, due, next_attempt: due }
            })
            .collect();
        let disks = vec![DiskComponents::default(); cluster.broker_count()];
        let cluster_brokers = cluster.broker_count();
        Nemesis {
            cluster,
            swarm,
            stall_before_power_loss: scenario.uses(FaultClass::SlowFsync),
            supervisor,
            workload_clients,
            producer_clients: Vec::new(),
            active: Vec::new(),
            disks,
            injected: BTreeMap::new(),
            required,
            bit_flipped: BTreeSet::new(),
            bit_flip_brokers_max: bit_flip_brokers_max(cluster_brokers, scenario.replication as usize),
            deadline: now + scenario.duration,
            cut: None,
        }
    }

    /// Ends the phase `cut` into it, while every decision before is taken as for the whole phase
    /// (the same draws, the same plan), so the run up to `cut` is the whole run's prefix: what
    /// `sim/shrink` needs to find the shortest failing prefix of a seed.
    pub fn cut(mut self, cut: Option<Duration>) -> Nemesis<'a> {
        self.cut = cut;
        self
    }

    /// Names the client nodes that run producers (by default none: no producer cut can start).
    pub fn producer_clients(mut self, clients: Vec<usize>) -> Nemesis<'a> {
        self.producer_clients = clients;
        self
    }

    /// Runs the nemesis for `duration`; returns how many faults of each class hit.
    pub async fn run(mut self, duration: Duration) -> FaultCounts {
        self.deadline = Instant::now() + duration;
        let deadline = Instant::now() + self.cut.map_or(duration, |cut| cut.min(duration));
        let mut next_start = Instant::now() + self.interval();
        loop {
            self.sleep_until_next_event(next_start, deadline).await;
            let now = Instant::now();
            self.end_due_faults(now);
            if now >= deadline {
                return self.counts();
            }
            // While a required fault is overdue, no new drawn fault starts: the ones active end, the
            // cluster recovers (e.g. elects the leader a forced leader kill needs), and the forced
            // fault lands. Without this, pauses and kills kept a leader from existing for the whole
            // window on some seeds (e.g. `raft_3_voters_leader_kill_and_restart` seed 7619461).
            let forcing = self.required.iter().any(|required| !self.happened(required.class) && now >= required.due);
            if now >= next_start {
                next_start = now + self.interval();
                if !forcing && self.active.len() < self.swarm.concurrent_faults_max {
                    if let Some(class) = pick_weighted(&mut thread_rng(), &self.swarm.weights) {
                        self.start(class, false).await;
                    }
                }
            }
            self.force_required(now).await;
        }
    }

    async fn sleep_until_next_event(&self, next_start: Instant, deadline: Instant) {
        let now = Instant::now();
        let forced = self.required.iter().filter(|required| !self.happened(required.class));
        let wake = self
            .active
            .iter()
            .map(|active| active.end)
            .chain(forced.map(|required| required.next_attempt))
            .chain([next_start, deadline])
            .min()
            .unwrap_or(deadline);
        if wake > now {
            tokio::time::sleep(wake - now).await;
        }
    }

    /// Ends the faults whose outage is over; lets the supervisor judge stopped Raft nodes.
    fn end_due_faults(&mut self, now: Instant) {
        let (ended, active): (Vec<ActiveFault>, Vec<ActiveFault>) =
            std::mem::take(&mut self.active).into_iter().partition(|active| active.end <= now);
        self.active = active;
        for active in ended {
            let next = match active.fault {
                Fault::DoubleFailover(failover) => self.step_double_failover(failover, now),
                Fault::SlowFollower(slow) => self.step_slow_follower(slow, now),
                fault => {
                    self.end(fault);
                    None
                }
            };
            self.active.extend(next);
        }
        let down = self.down();
        if let Some(supervisor) = self.supervisor.as_deref_mut() {
            supervisor.restart_stopped_raft_nodes(self.cluster, &down);
        }
    }

    async fn force_required(&mut self, now: Instant) {
        for required_idx in 0..self.required.len() {
            let RequiredFault { class, next_attempt, .. } = self.required[required_idx];
            if self.happened(class) || now < next_attempt {
                continue;
            }
            if self.start(class, true).await {
                self.note(format!("nemesis forced {class:?}: the scenario requires it and no draw had injected it"));
            } else {
                self.required[required_idx].next_attempt = now + Duration::from_millis(FORCED_FAULT_RETRY_MS);
            }
        }
    }

    fn interval(&self) -> Duration {
        let mean = self.swarm.interval_ms;
        Duration::from_millis(thread_rng().gen_range(mean / 2..=mean * 3 / 2))
    }

    /// What hit so far: counted injections, and the disks' own counters for the disk classes.
    pub fn counts(&self) -> FaultCounts {
        let mut counts = self.injected.clone();
        let (mut delayed, mut failed_syncs, mut failed_writes, mut misdirected) = (0, 0, 0, 0);
        for index in 0..self.cluster.broker_count() {
            let stats = self.cluster.broker(index).disk.stats();
            delayed += stats.delayed_syncs;
            failed_syncs += stats.sync_errors;
            failed_writes += stats.write_errors;
            misdirected += stats.misdirected_writes;
        }
        for (class, count) in [
            (FaultClass::SlowFsync, delayed),
            (FaultClass::FailedFsync, failed_syncs),
            (FaultClass::FailedWrite, failed_writes),
            (FaultClass::MisdirectedWrite, misdirected),
        ] {
            if count > 0 {
                counts.insert(class, count);
            }
        }
        counts
    }

    fn happened(&self, class: FaultClass) -> bool {
        self.counts().get(&class).is_some_and(|count| *count > 0)
    }

    fn down(&self) -> BTreeSet<usize> {
        (0..self.cluster.broker_count())
            .filter(|&index| {
                self.active.iter().any(|active| match &active.fault {
                    Fault::Down { broker, .. } => *broker == index,
                    Fault::DoubleFailover(failover) => failover.is_down(index),
                    _ => false,
                })
            })
            .collect()
    }

    fn busy(&self, index: usize) -> bool {
        self.active.iter().any(|active| match &active.fault {
            Fault::Down { broker, .. } | Fault::Paused(broker) => *broker == index,
            Fault::DoubleFailover(failover) => failover.is_down(index),
            _ => false,
        })
    }

    fn is_active(&self, is: impl Fn(&Fault) -> bool) -> bool {
        self.active.iter().any(|active| is(&active.fault))
    }

    fn random_broker(&self) -> usize {
        thread_rng().gen_range(0..self.cluster.broker_count())
    }

    /// The leader with probability one half (when there is one), otherwise a random broker.
    fn leader_or_random(&self) -> usize {
        match leader(self.cluster) {
            Some(index) if thread_rng().gen_bool(0.5) => index,
            _ => self.random_broker(),
        }
    }

    /// Starts one fault of `class`; returns whether one was injected and counted (see the module
    /// doc for what counts).
    async fn start(&mut self, class: FaultClass, forced: bool) -> bool {
        let outage = Duration::from_millis(thread_rng().gen_range(50..=self.swarm.outage_ms_max.max(50)));
        let started = match class {
            FaultClass::LeaderKill | FaultClass::PartitionLeaderKill | FaultClass::Kill | FaultClass::PowerLoss => {
                self.crash(class, forced).await
            }
            FaultClass::AllPowerLoss => self.all_power_loss(outage),
            FaultClass::CleanRestart => self.clean_restart(forced).await,
            FaultClass::Pause => self.pause(),
            FaultClass::Clog => self.clog(forced),
            FaultClass::Partition | FaultClass::Bridge | FaultClass::OneWay => self.links(class),
            FaultClass::ProducerLeaderCut => self.producer_leader_cut(),
            FaultClass::Delay => self.delay(),
            FaultClass::PacketLoss => self.packet_loss(),
            FaultClass::ClockSkew => self.clock_skew(),
            FaultClass::MetaWriteErrors => self.meta_write_errors(),
            FaultClass::SlowFsync => self.slow_fsync(forced).await,
            FaultClass::FailedFsync => self.failed_fsync(forced).await,
            FaultClass::FailedWrite => self.failed_write(forced).await,
            FaultClass::BitFlip => self.bit_flip(),
            FaultClass::MisdirectedWrite => self.misdirected_write(),
            FaultClass::DoubleFailover => self.double_failover(),
            FaultClass::SlowFollower => self.slow_follower(),
        };
        let Some((fault, counted)) = started else { return false };
        if let Some(fault) = fault {
            self.active.push(ActiveFault { fault, end: Instant::now() + outage });
        }
        if counted {
            *self.injected.entry(class).or_default() += 1;
        }
        counted || self.happened(class)
    }

    /// A kill, leader kill, partition leader kill or power loss. Counted when its target was
    /// serving; one that hit the metadata leader also counts as a leader kill, whichever draw chose
    /// it.
    async fn crash(&mut self, class: FaultClass, forced: bool) -> Option<(Option<Fault>, bool)> {
        let target = match class {
            FaultClass::LeaderKill => leader(self.cluster),
            FaultClass::PartitionLeaderKill => {
                let (partition, target) = self.serving_partition_leader()?;
                self.note(format!("nemesis partition_leader_kill broker-{} leads {TOPIC}/{partition}", target + 1));
                Some(target)
            }
            FaultClass::Kill => Some(self.random_broker()),
            _ if forced => leader(self.cluster).or_else(|| Some(self.random_broker())),
            _ => Some(self.leader_or_random()),
        };
        let target = target.filter(|&target| !self.busy(target))?;
        let counted = self.cluster.broker_state(target) == BrokerState::Serving;
        let leader_killed = leader(self.cluster) == Some(target);
        let mut stalled = false;
        if class == FaultClass::PowerLoss {
            stalled = self.stall_before_power_loss && thread_rng().gen_bool(0.75);
            if stalled {
                self.stall_syncs(target).await;
            }
            self.cluster.power_loss(target);
        } else {
            self.cluster.kill(target);
        }
        if counted && leader_killed && class != FaultClass::LeaderKill {
            *self.injected.entry(FaultClass::LeaderKill).or_default() += 1;
        }
        Some((Some(Fault::Down { broker: target, stalled }), counted))
    }

    /// Every broker loses power at once; each is a `Down` fault that ends after `outage`. Counted when
    /// every broker was serving.
    fn all_power_loss(&mut self, outage: Duration) -> Option<(Option<Fault>, bool)> {
        let n = self.cluster.broker_count();
        if (0..n).any(|index| self.busy(index) || !self.cluster.is_up(index)) {
            return None;
        }
        let counted = (0..n).all(|index| self.cluster.broker_state(index) == BrokerState::Serving);
        for index in 0..n {
            self.cluster.power_loss(index);
        }
        for index in 1..n {
            let fault = Fault::Down { broker: index, stalled: false };
            self.active.push(ActiveFault { fault, end: Instant::now() + outage });
        }
        Some((Some(Fault::Down { broker: 0, stalled: false }), counted))
    }

    /// Stalls `broker`'s syncs and waits until one is likely in flight, with records written but not
    /// durable: a broker that served those to the consumers at the tail is caught by the power loss.
    async fn stall_syncs(&mut self, broker: usize) {
        let stall_ms = thread_rng().gen_range(20..=200);
        self.disks[broker].stall_ms = Some(stall_ms);
        self.apply_disk(broker);
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(stall_ms / 2..=stall_ms * 2))).await;
    }

    /// A graceful restart; the nemesis waits for the shutdown (bounded by `CLEAN_SHUTDOWN_MS_MAX`),
    /// so a drawn one waits until every required fault has happened: a broker that recovers its logs
    /// over a slow disk when asked to stop can take most of the phase to do so, and the required
    /// fault could not land meanwhile (`single_broker_power_loss_fsync_always` seed 50334: a ctrl-c
    /// during a startup with 500 ms fsyncs took 8.4 s).
    async fn clean_restart(&mut self, forced: bool) -> Option<(Option<Fault>, bool)> {
        if !forced && self.required.iter().any(|required| !self.happened(required.class)) {
            return None;
        }
        let target = self.random_broker();
        if self.busy(target) || !self.cluster.is_up(target) {
            return None;
        }
        self.cluster.clean_restart(target).await;
        if let Some(supervisor) = self.supervisor.as_deref_mut() {
            supervisor.restarted(self.cluster, target);
        }
        Some((None, true))
    }

    fn pause(&mut self) -> Option<(Option<Fault>, bool)> {
        let target = self.leader_or_random();
        if self.busy(target) || !self.cluster.is_up(target) {
            return None;
        }
        self.cluster.pause(target);
        Some((Some(Fault::Paused(target)), true))
    }

    /// A broker half of the time (always when forced or when no client runs the workload),
    /// otherwise a workload client. Only a broker clog counts.
    fn clog(&mut self, forced: bool) -> Option<(Option<Fault>, bool)> {
        if forced || self.workload_clients.is_empty() || thread_rng().gen_bool(0.5) {
            let target = self.random_broker();
            if self.is_active(|fault| matches!(fault, Fault::ClogBroker(index) if *index == target)) {
                return None;
            }
            self.cluster.clog_broker(target);
            Some((Some(Fault::ClogBroker(target)), true))
        } else {
            let target = self.workload_clients[thread_rng().gen_range(0..self.workload_clients.len())];
            if self.is_active(|fault| matches!(fault, Fault::ClogClient(index) if *index == target)) {
                return None;
            }
            self.cluster.clog_client(target);
            Some((Some(Fault::ClogClient(target)), false))
        }
    }

    /// A partition, a bridge or one-way clogs between brokers (at least three of them).
    fn links(&mut self, class: FaultClass) -> Option<(Option<Fault>, bool)> {
        let n = self.cluster.broker_count();
        if n < 3 {
            return None;
        }
        let links = match class {
            FaultClass::Partition => self.partition_links(n),
            FaultClass::Bridge => self.bridge_links(n),
            _ => self.one_way_links(n),
        };
        for &(from, to) in &links {
            self.cluster.clog_link(from, to);
        }
        Some((Some(Fault::Links(links)), true))
    }

    fn partition_links(&self, n: usize) -> Vec<(usize, usize)> {
        let mut order = shuffled(n);
        let minority = thread_rng().gen_range(1..=(n - 1) / 2);
        // The leader ends up in the minority half of the time.
        if let Some(leader) = leader(self.cluster) {
            let position = order.iter().position(|&index| index == leader).expect("the leader is a broker");
            let target = if thread_rng().gen_bool(0.5) { 0 } else { n - 1 };
            order.swap(position, target);
        }
        let (left, right) = order.split_at(minority);
        self.note(format!("nemesis partition {:?} | {:?}", names(left), names(right)));
        links_between(left, right)
    }

    fn bridge_links(&self, n: usize) -> Vec<(usize, usize)> {
        let order = shuffled(n);
        let bridge = order[0];
        let rest = &order[1..];
        let split = thread_rng().gen_range(1..rest.len());
        let (left, right) = rest.split_at(split);
        self.note(format!("nemesis bridge {:?} | {} | {:?}", names(left), names(&[bridge])[0], names(right)));
        links_between(left, right)
    }

    fn one_way_links(&self, n: usize) -> Vec<(usize, usize)> {
        let mut rng = thread_rng();
        let links: Vec<(usize, usize)> = match leader(self.cluster) {
            Some(leader) if rng.gen_bool(0.5) => {
                // The leader can only send, or only hear.
                let outbound = rng.gen_bool(0.5);
                (0..n)
                    .filter(|&other| other != leader)
                    .map(|other| if outbound { (leader, other) } else { (other, leader) })
                    .collect()
            }
            _ => {
                let count = rng.gen_range(1..n);
                let mut links = BTreeSet::new();
                while links.len() < count {
                    let from = rng.gen_range(0..n);
                    let to = rng.gen_range(0..n);
                    if from != to {
                        links.insert((from, to));
                    }
                }
                links.into_iter().collect()
            }
        };
        self.note(format!("nemesis one_way {links:?}"));
        links
    }

    /// The leader of a partition of the workload's topic, per the freshest controller metadata,
    /// drawn among the partitions whose leader serves: `(partition, broker index)`.
    fn serving_partition_leader(&self) -> Option<(u32, usize)> {
        let view = topic_view(self.cluster, TOPIC)?;
        let leaders: Vec<(u32, usize)> = view
            .partitions
            .iter()
            .filter_map(|record| Some((record.partition, broker_index(record.leader?))))
            .filter(|(_, index)| self.serving(*index))
            .collect();
        (!leaders.is_empty()).then(|| leaders[thread_rng().gen_range(0..leaders.len())])
    }

    /// Cuts a producer's client node off from a serving partition leader: only the leader's
    /// answers half of the time (requests arrive and are appended, the producer hears nothing and
    /// sends them again), both directions a quarter, only the requests a quarter. Counted when
    /// injected.
    fn producer_leader_cut(&mut self) -> Option<(Option<Fault>, bool)> {
        if self.producer_clients.is_empty() {
            return None;
        }
        let (partition, leader) = self.serving_partition_leader()?;
        let mut rng = thread_rng();
        let client = self.producer_clients[rng.gen_range(0..self.producer_clients.len())];
        let (directions, what): (&[bool], &str) = match rng.gen_range(0..4) {
            0 => (&[true, false], "both ways"),
            1 => (&[true], "its requests"),
            _ => (&[false], "its answers"),
        };
        self.note(format!(
            "nemesis producer_leader_cut client-{} from broker-{} (leads {TOPIC}/{partition}): {what}",
            client + 1,
            leader + 1
        ));
        let links: Vec<(usize, usize, bool)> =
            directions.iter().map(|&toward_broker| (client, leader, toward_broker)).collect();
        for &(client, broker, toward_broker) in &links {
            self.cluster.clog_client_link(client, broker, toward_broker);
        }
        Some((Some(Fault::ClientLinks(links)), true))
    }

    fn delay(&mut self) -> Option<(Option<Fault>, bool)> {
        if self.is_active(|fault| matches!(fault, Fault::Latency)) {
            return None;
        }
        let max_ms = [20, 50, 200, 500][thread_rng().gen_range(0..4)];
        let min_ms = thread_rng().gen_range(1..max_ms);
        self.cluster.set_send_latency(Duration::from_millis(min_ms), Duration::from_millis(max_ms));
        Some((Some(Fault::Latency), true))
    }

    /// Loses a drawn share of every link's messages (one loss fault at a time).
    fn packet_loss(&mut self) -> Option<(Option<Fault>, bool)> {
        if self.is_active(|fault| matches!(fault, Fault::PacketLoss)) {
            return None;
        }
        let rate = thread_rng().gen_range(0.0..=self.swarm.packet_loss_max).max(0.001);
        self.cluster.set_packet_loss(rate);
        Some((Some(Fault::PacketLoss), true))
    }

    /// Jumps a broker's wall clock forwards or backwards by up to the seed's maximum skew.
    fn clock_skew(&mut self) -> Option<(Option<Fault>, bool)> {
        let target = self.random_broker();
        if self.is_active(|fault| matches!(fault, Fault::ClockSkew(index) if *index == target)) {
            return None;
        }
        let size = thread_rng().gen_range(1..=self.swarm.clock_skew_ms_max.max(1)) as i64;
        let offset = if thread_rng().gen_bool(0.5) { size } else { -size };
        self.cluster.set_clock_skew(target, offset);
        Some((Some(Fault::ClockSkew(target)), true))
    }

    fn meta_write_errors(&mut self) -> Option<(Option<Fault>, bool)> {
        let target = self.random_broker();
        if self.is_active(|fault| matches!(fault, Fault::MetaWriteErrors(index) if *index == target)) {
            return None;
        }
        let probability = thread_rng().gen_range(0.0..=self.swarm.meta_write_error_probability_max);
        self.cluster.set_meta_write_errors(target, probability.max(0.001));
        Some((Some(Fault::MetaWriteErrors(target)), true))
    }

    /// A broker for a data-disk fault of `kind`, unless one of that kind is active on it. A forced
    /// one waits (bounded) for the disk to report it, so its target must be serving: a broker that is
    /// down writes nothing, and the wait would also hold back the restart that ends its outage
    /// (`single_broker_write_errors_fsync_never` seed 50065). The forcing tries again shortly.
    fn disk_target(&self, kind: DiskFault, forced: bool) -> Option<usize> {
        let target = self.random_broker();
        let active =
            self.is_active(|fault| matches!(fault, Fault::Disk(index, active) if *index == target && *active == kind));
        (!active && (!forced || self.serving(target))).then_some(target)
    }

    /// Slow syncs. Forced: wait (bounded) until a sync was delayed.
    async fn slow_fsync(&mut self, forced: bool) -> Option<(Option<Fault>, bool)> {
        let target = self.disk_target(DiskFault::SlowFsync, forced)?;
        let latency_max = self.swarm.fsync_latency_ms_max.max(1);
        let latency_min = thread_rng().gen_range(1..=latency_max);
        self.disks[target].latency_ms = Some((latency_min, latency_max));
        self.apply_disk(target);
        if forced {
            self.wait_for_disk(target, |stats| stats.delayed_syncs).await;
        }
        Some((Some(Fault::Disk(target, DiskFault::SlowFsync)), false))
    }

    /// Failing syncs. Forced: fail the next sync for certain (write errors held meanwhile), then go
    /// on with a drawn probability.
    async fn failed_fsync(&mut self, forced: bool) -> Option<(Option<Fault>, bool)> {
        let target = self.disk_target(DiskFault::FailedFsync, forced)?;
        if forced {
            self.disks[target].fsync_error_probability = 1.0;
            self.disks[target].writes_held = true;
            self.apply_disk(target);
            self.wait_for_disk(target, |stats| stats.sync_errors).await;
            self.disks[target].writes_held = false;
        }
        let probability = thread_rng().gen_range(0.0..=self.swarm.fsync_error_probability_max);
        self.disks[target].fsync_error_probability = probability;
        self.apply_disk(target);
        Some((Some(Fault::Disk(target, DiskFault::FailedFsync)), false))
    }

    /// EIO and ENOSPC writes. Forced: fail the next data write for certain (EIO), then go on with
    /// drawn probabilities.
    async fn failed_write(&mut self, forced: bool) -> Option<(Option<Fault>, bool)> {
        let target = self.disk_target(DiskFault::FailedWrite, forced)?;
        if forced {
            self.disks[target].write_eio_probability = 1.0;
            self.apply_disk(target);
            self.wait_for_disk(target, |stats| stats.write_errors).await;
        }
        let max = self.swarm.write_error_probability_max;
        let mut rng = thread_rng();
        self.disks[target].write_eio_probability = rng.gen_range(0.0..=max);
        self.disks[target].write_enospc_probability = if rng.gen_bool(0.5) { rng.gen_range(0.0..=max) } else { 0.0 };
        self.apply_disk(target);
        Some((Some(Fault::Disk(target, DiskFault::FailedWrite)), false))
    }

    /// One bit of a synced segment of a broker of the minority ([`bit_flip_target`]). Not injected
    /// (retried when forced) while that broker has no synced segment.
    fn bit_flip(&mut self) -> Option<(Option<Fault>, bool)> {
        let target =
            bit_flip_target(self.cluster.broker_count(), self.bit_flip_brokers_max, &self.bit_flipped, |bound| {
                thread_rng().gen_range(0..bound)
            })?;
        self.cluster.flip_durable_bit(target, BIT_FLIP_SUFFIX)?;
        self.bit_flipped.insert(target);
        Some((None, true))
    }

    /// Misdirected writes on a broker of the bit-flip minority ([`bit_flip_target`]), for an outage.
    /// Counted by the disk, per write that went astray.
    fn misdirected_write(&mut self) -> Option<(Option<Fault>, bool)> {
        let target =
            bit_flip_target(self.cluster.broker_count(), self.bit_flip_brokers_max, &self.bit_flipped, |bound| {
                thread_rng().gen_range(0..bound)
            })?;
        let active = |fault: &Fault| matches!(fault, Fault::Disk(index, DiskFault::Misdirected) if *index == target);
        if self.is_active(active) {
            return None;
        }
        self.bit_flipped.insert(target);
        let probability = [0.01, 0.05, 0.2][thread_rng().gen_range(0..3)];
        self.disks[target].misdirected_write_probability = probability;
        self.note(format!("nemesis misdirected_writes broker-{} p={probability}", target + 1));
        self.apply_disk(target);
        Some((Some(Fault::Disk(target, DiskFault::Misdirected)), false))
    }

    fn apply_disk(&mut self, broker: usize) {
        let faults = self.disks[broker].faults();
        self.cluster.set_disk_faults(broker, faults);
    }

    /// Waits (bounded) until the disk counter `counter` of `broker` moves: a forced disk fault took.
    async fn wait_for_disk(&self, broker: usize, counter: impl Fn(&keel::storage::sim::SimDiskStats) -> u64) {
        let disk = &self.cluster.broker(broker).disk;
        let before = counter(&disk.stats());
        let deadline = Instant::now() + Duration::from_millis(FORCED_DISK_FAULT_MS_MAX);
        while counter(&disk.stats()) == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn end(&mut self, fault: Fault) {
        match fault {
            Fault::Down { broker, stalled } => {
                if stalled {
                    self.disks[broker].stall_ms = None;
                    self.apply_disk(broker);
                }
                self.cluster.restart(broker);
                if let Some(supervisor) = self.supervisor.as_deref_mut() {
                    supervisor.restarted(self.cluster, broker);
                }
            }
            Fault::Paused(index) => self.cluster.resume(index),
            Fault::ClogBroker(index) => self.cluster.unclog_broker(index),
            Fault::ClogClient(index) => self.cluster.unclog_client(index),
            Fault::Links(links) => {
                for (from, to) in links {
                    self.cluster.unclog_link(from, to);
                }
            }
            Fault::ClientLinks(links) => {
                for (client, broker, toward_broker) in links {
                    self.cluster.unclog_client_link(client, broker, toward_broker);
                }
            }
            Fault::Latency => self.cluster.reset_send_latency(),
            Fault::PacketLoss => self.cluster.set_packet_loss(0.0),
            Fault::ClockSkew(index) => self.cluster.set_clock_skew(index, 0),
            Fault::MetaWriteErrors(index) => self.cluster.set_meta_write_errors(index, 0.0),
            Fault::Disk(broker, kind) => {
                let disk = &mut self.disks[broker];
                match kind {
                    DiskFault::SlowFsync => disk.latency_ms = None,
                    DiskFault::FailedFsync => disk.fsync_error_probability = 0.0,
                    DiskFault::FailedWrite => {
                        disk.write_eio_probability = 0.0;
                        disk.write_enospc_probability = 0.0;
                    }
                    DiskFault::Misdirected => disk.misdirected_write_probability = 0.0,
                }
                self.apply_disk(broker);
            }
            // Advanced step by step instead (`end_due_faults`); what they leave at the end of the
            // phase (a broker down, a stall) the heal ends.
            Fault::DoubleFailover(_) | Fault::SlowFollower(_) => {}
        }
    }

    /// Whether broker `index` serves and no fault holds it (for the faults that need a healthy target).
    fn serving(&self, index: usize) -> bool {
        self.cluster.is_up(index)
            && !self.cluster.is_paused(index)
            && !self.busy(index)
            && self.cluster.broker_state(index) == BrokerState::Serving
    }

    /// A crash of `index` for a double failover: a kill or (half the time) a power loss.
    fn failover_crash(&mut self, index: usize) {
        if thread_rng().gen_bool(0.5) {
            self.cluster.power_loss(index);
        } else {
            self.cluster.kill(index);
        }
    }

    /// Starts a double failover ([`FaultClass::DoubleFailover`]): crashes the leader of a partition
    /// whose ISR holds every replica, on a cluster where every broker serves. Not started (retried
    /// when forced) while another runs, a broker is not serving, or no partition qualifies.
    fn double_failover(&mut self) -> Option<(Option<Fault>, bool)> {
        let n = self.cluster.broker_count();
        if n < 3 || self.is_active(|fault| matches!(fault, Fault::DoubleFailover(_))) {
            return None;
        }
        if !(0..n).all(|index| self.serving(index)) {
            return None;
        }
        let view = topic_view(self.cluster, TOPIC)?;
        let candidates: Vec<_> = view
            .partitions
            .iter()
            .filter(|record| record.replicas.len() >= 3 && record.isr.len() == record.replicas.len())
            .filter_map(|record| Some((record.partition, record.leader?, record.leader_epoch, record.isr.clone())))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (partition, leader, first_epoch, isr) = candidates[thread_rng().gen_range(0..candidates.len())].clone();
        let first = broker_index(leader);
        self.note(format!(
            "nemesis double_failover {TOPIC}/{partition}: crash its leader broker-{} (leader epoch {first_epoch}, isr \
             {isr:?})",
            first + 1
        ));
        self.failover_crash(first);
        let now = Instant::now();
        let failover = DoubleFailover {
            partition,
            first,
            first_epoch,
            first_crashed_at: now,
            first_down: true,
            first_back_at: None,
            second_crash_at: None,
            second: None,
            second_down: false,
            given_up: false,
        };
        let end = now + Duration::from_millis(METADATA_POLL_MS);
        self.active.push(ActiveFault { fault: Fault::DoubleFailover(failover), end });
        Some((None, false))
    }

    /// One step of a double failover: brings victims back when due, waits for the controller to
    /// elect another leader, crashes that one when due. Returns the fault while steps are left.
    fn step_double_failover(&mut self, mut failover: DoubleFailover, now: Instant) -> Option<ActiveFault> {
        let partition = failover.partition;
        if failover.first_down && failover.first_back_at.is_some_and(|at| now >= at) {
            self.cluster.restart(failover.first);
            failover.first_down = false;
        }
        if let Some((second, back_at)) = failover.second {
            if failover.second_down && now >= back_at {
                self.cluster.restart(second);
                failover.second_down = false;
            }
        }
        let record = topic_view(self.cluster, TOPIC).and_then(|view| view.partition(partition).cloned());
        let mut polling = false;
        if failover.first_back_at.is_none() && !failover.given_up {
            let elected = record.as_ref().and_then(|record| {
                record.leader.filter(|leader| {
                    broker_index(*leader) != failover.first && record.leader_epoch > failover.first_epoch
                })
            });
            if let Some(new_leader) = elected {
                let second_crash_ms = thread_rng().gen_range(0..=SECOND_CRASH_MS_MAX);
                let first_back_ms = thread_rng().gen_range(0..=FIRST_BACK_MS_MAX);
                failover.second_crash_at = Some(now + Duration::from_millis(second_crash_ms));
                failover.first_back_at = Some(now + Duration::from_millis(first_back_ms));
                let (epoch, isr) = record.as_ref().map(|r| (r.leader_epoch, r.isr.clone())).unwrap_or_default();
                self.note(format!(
                    "nemesis double_failover {TOPIC}/{partition}: broker-{new_leader} leads (leader epoch {epoch}, isr \
                     {isr:?}) {} ms after the first crash; crash it in {second_crash_ms} ms, broker-{} back in \
                     {first_back_ms} ms",
                    (now - failover.first_crashed_at).as_millis(),
                    failover.first + 1
                ));
            } else if now >= failover.first_crashed_at + Duration::from_millis(FAILOVER_ELECTION_MS_MAX) {
                self.note(format!(
                    "nemesis double_failover {TOPIC}/{partition}: no other leader {FAILOVER_ELECTION_MS_MAX} ms after \
                     the first crash ({record:?}); giving up"
                ));
                failover.given_up = true;
                failover.first_back_at = Some(now);
                if failover.first_down {
                    self.cluster.restart(failover.first);
                    failover.first_down = false;
                }
            } else {
                polling = true;
            }
        }
        if let (Some(crash_at), None, false) = (failover.second_crash_at, failover.second, failover.given_up) {
            if now >= crash_at {
                let target = record.as_ref().and_then(|record| record.leader).map(broker_index);
                match target {
                    Some(target) if target != failover.first || !failover.first_down => {
                        if self.serving(target) {
                            let outage_ms = thread_rng().gen_range(SECOND_OUTAGE_MS.0..=SECOND_OUTAGE_MS.1);
                            self.note(format!(
                                "nemesis double_failover {TOPIC}/{partition}: crash its new leader broker-{}, back in \
                                 {outage_ms} ms",
                                target + 1
                            ));
                            self.failover_crash(target);
                            failover.second = Some((target, now + Duration::from_millis(outage_ms)));
                            failover.second_down = true;
                            *self.injected.entry(FaultClass::DoubleFailover).or_default() += 1;
                        } else {
                            polling = true;
                        }
                    }
                    _ => polling = true,
                }
                if polling && now >= crash_at + Duration::from_millis(SECOND_CRASH_WAIT_MS_MAX) {
                    self.note(format!(
                        "nemesis double_failover {TOPIC}/{partition}: no serving leader to crash {SECOND_CRASH_WAIT_MS_MAX} \
                         ms after the second crash was due ({record:?}); giving up"
                    ));
                    failover.given_up = true;
                    polling = false;
                }
            }
        }
        let mut wakes: Vec<Instant> = Vec::new();
        if failover.first_down {
            wakes.extend(failover.first_back_at);
        }
        if failover.second_down {
            wakes.extend(failover.second.map(|(_, back_at)| back_at));
        }
        // A second crash that is due but waits for a serving leader polls (below): its due time is in
        // the past, and a wake in the past would spin the nemesis without simulated time passing
        // (`idempotent_swarm` seed 36, a double failover among other faults).
        if failover.second.is_none() && !failover.given_up {
            wakes.extend(failover.second_crash_at.filter(|crash_at| *crash_at > now));
        }
        if polling {
            wakes.push(now + Duration::from_millis(METADATA_POLL_MS));
        }
        let end = wakes.into_iter().min()?;
        Some(ActiveFault { fault: Fault::DoubleFailover(failover), end })
    }

    /// Starts a slow follower ([`FaultClass::SlowFollower`]): stalls the syncs of every follower
    /// replica of a serving broker that is in the ISR of a partition it does not lead. Not started
    /// (retried when forced) when no broker qualifies or the stall and the rejoin cannot end before
    /// the phase does.
    fn slow_follower(&mut self) -> Option<(Option<Fault>, bool)> {
        let lag_ms = ReplicaConfig::default().replica_lag_ms_max.max(0) as u64;
        let stall_ms = lag_ms + thread_rng().gen_range(SLOW_FOLLOWER_OVER_LAG_MS.0..=SLOW_FOLLOWER_OVER_LAG_MS.1);
        let now = Instant::now();
        let stall_end = now + Duration::from_millis(stall_ms);
        if stall_end + Duration::from_millis(SLOW_FOLLOWER_REJOIN_MS_MAX) > self.deadline {
            return None;
        }
        let view = topic_view(self.cluster, TOPIC)?;
        let stalled: BTreeSet<usize> = self
            .active
            .iter()
            .filter_map(|active| match &active.fault {
                Fault::SlowFollower(slow) => Some(slow.target),
                _ => None,
            })
            .collect();
        let candidates: Vec<(usize, Vec<u32>)> = (0..self.cluster.broker_count())
            .filter(|index| !stalled.contains(index) && self.serving(*index))
            .filter_map(|index| {
                let node = NodeId(index as u64 + 1);
                let watched: Vec<u32> = view
                    .partitions
                    .iter()
                    .filter(|record| record.leader.is_some_and(|leader| leader != node) && record.isr.contains(&node))
                    .map(|record| record.partition)
                    .collect();
                (!watched.is_empty()).then_some((index, watched))
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (target, watched) = candidates[thread_rng().gen_range(0..candidates.len())].clone();
        let topic_dir = crate::durable_acks::topic_dir(&self.cluster.broker(target).disk, TOPIC)?;
        let path_prefixes = watched.iter().map(|partition| format!("{topic_dir}/{partition}/")).collect();
        self.note(format!(
            "nemesis slow_follower broker-{}: its replicas of {TOPIC} partitions {watched:?} sync no sooner than in \
             {stall_ms} ms",
            target + 1
        ));
        self.disks[target].follower_stall = Some(FsyncStall { path_prefixes, until: stall_end });
        self.apply_disk(target);
        let slow = SlowFollower { target, watched, stall_end, left: BTreeMap::new() };
        let end = now + Duration::from_millis(METADATA_POLL_MS);
        self.active.push(ActiveFault { fault: Fault::SlowFollower(slow), end });
        Some((None, false))
    }

    /// One step of a slow follower: lifts the stall once it is over, notes every ISR the follower
    /// leaves and rejoins, counts the fault once it is back in every ISR it left. Returns the fault
    /// while it is not done.
    fn step_slow_follower(&mut self, mut slow: SlowFollower, now: Instant) -> Option<ActiveFault> {
        let target = slow.target;
        if now >= slow.stall_end && self.disks[target].follower_stall.is_some() {
            self.disks[target].follower_stall = None;
            self.apply_disk(target);
        }
        let node = NodeId(target as u64 + 1);
        if let Some(view) = topic_view(self.cluster, TOPIC) {
            for &partition in &slow.watched {
                let Some(record) = view.partition(partition) else { continue };
                let in_isr = record.isr.contains(&node);
                let back = slow.left.get(&partition).copied();
                if !in_isr && back.is_none() {
                    slow.left.insert(partition, false);
                    self.note(format!(
                        "nemesis slow_follower broker-{}: left the ISR of {TOPIC}/{partition} ({:?}, partition epoch {})",
                        target + 1,
                        record.isr,
                        record.partition_epoch
                    ));
                } else if in_isr && back == Some(false) {
                    slow.left.insert(partition, true);
                    self.note(format!(
                        "nemesis slow_follower broker-{}: back in the ISR of {TOPIC}/{partition} ({:?}, partition epoch \
                         {})",
                        target + 1,
                        record.isr,
                        record.partition_epoch
                    ));
                }
            }
        }
        let rejoined = !slow.left.is_empty() && slow.left.values().all(|back| *back);
        if rejoined && now >= slow.stall_end {
            *self.injected.entry(FaultClass::SlowFollower).or_default() += 1;
            return None;
        }
        if now >= slow.stall_end + Duration::from_millis(SLOW_FOLLOWER_REJOIN_MS_MAX) {
            self.note(format!(
                "nemesis slow_follower broker-{}: not counted: left {:?} (partition: back) within {} ms of the stall's \
                 end",
                target + 1,
                slow.left,
                SLOW_FOLLOWER_REJOIN_MS_MAX
            ));
            return None;
        }
        let mut end = now + Duration::from_millis(METADATA_POLL_MS);
        if self.disks[target].follower_stall.is_some() {
            end = end.min(slow.stall_end);
        }
        Some(ActiveFault { fault: Fault::SlowFollower(slow), end })
    }

    fn note(&self, what: String) {
        self.cluster.trace().record(self.cluster.now_ns(), what);
    }
}

/// The broker a bit flip hits, given those hit before (`hit`): any broker while fewer than
/// `(n - 1) / 2` were hit, then one of them; `None` with fewer than three brokers. So over a whole
/// run the flips stay on a minority. `random_below(bound)` draws a number in `0..bound`.
/// A minority of a partition's replicas: `(k - 1) / 2` for `k` the smaller of the broker count and
/// the replication factor (any broker may hold a replica of any partition).
pub fn bit_flip_brokers_max(n_brokers: usize, replication: usize) -> usize {
    n_brokers.min(replication).saturating_sub(1) / 2
}

pub fn bit_flip_target(
    n_brokers: usize,
    minority_max: usize,
    hit: &BTreeSet<usize>,
    mut random_below: impl FnMut(usize) -> usize,
) -> Option<usize> {
    if minority_max == 0 {
        return None;
    }
    if hit.len() < minority_max {
        return Some(random_below(n_brokers));
    }
    hit.iter().nth(random_below(hit.len())).copied()
}

/// The broker index of a node id (broker `i` is node `i + 1`).
fn broker_index(node: NodeId) -> usize {
    node.0 as usize - 1
}

fn shuffled(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = thread_rng();
    for i in (1..n).rev() {
        let j = rng.gen_range(0..=i);
        order.swap(i, j);
    }
    order
}

/// Every directed link between the two groups.
fn links_between(left: &[usize], right: &[usize]) -> Vec<(usize, usize)> {
    let mut links = Vec::new();
    for &a in left {
        for &b in right {
            links.push((a, b));
            links.push((b, a));
        }
    }
    links
}

fn names(indices: &[usize]) -> Vec<String> {
    indices.iter().map(|index| format!("broker-{}", index + 1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator for the draws (the nemesis uses madsim's seeded RNG).
    fn draws(seed: u64) -> impl FnMut(usize) -> usize {
        let mut state = seed;
        move |bound| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) as usize) % bound
        }
    }

    #[test]
    fn bit_flips_stay_on_a_minority_of_brokers_over_a_run() {
        for n_brokers in 0..=7 {
            for replication in 1..=5 {
                for seed in 0..50 {
                    let mut random_below = draws(seed);
                    let mut hit = BTreeSet::new();
                    let minority_max = bit_flip_brokers_max(n_brokers, replication);
                    for _ in 0..200 {
                        if let Some(target) = bit_flip_target(n_brokers, minority_max, &hit, &mut random_below) {
                            assert!(target < n_brokers);
                            hit.insert(target);
                        }
                    }
                    assert_eq!(hit.len(), minority_max, "{n_brokers} brokers, seed {seed}: hit {hit:?}");
                    // A minority of the brokers, and of any partition's replicas.
                    assert!(2 * hit.len() < n_brokers.max(1), "a minority of brokers");
                    assert!(2 * hit.len() < replication.min(n_brokers).max(1), "a minority of replicas");
                }
            }
        }
    }
}
