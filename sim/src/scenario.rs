//! A scenario is a config plus a workload plus checkers; this module holds the type and the
//! catalogue of every scenario, and the regression seeds CI replays first.
//!
//! In: nothing (the catalogue is static). Out: [`Scenario`]s for [`crate::driver::run`], found by
//! name with [`by_name`].
//!
//! A scenario says which brokers to start (how many, which fsync policy), which fault classes its
//! nemesis uses and how ([`Use`]; the targets follow from the class and the cluster, see
//! [`crate::nemesis`]), which workload runs, and which checkers judge the run. Everything else (the
//! workload's shape, fault rates, outage lengths, overlap) is drawn per seed in [`crate::swarm`].

use std::time::Duration;

use keel::partition::FsyncPolicy;

use crate::swarm::{FaultClass, Use};

/// Which workload drives the brokers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// Producers, consumers at the tails and a final reader on one topic ([`crate::workload`]).
    Queue,
    /// The queue workload with idempotent producers ([`crate::workload::Idempotence`], drawn per
    /// seed): short request timeouts, so many writes become ambiguous and are sent again, a
    /// delivery timeout that mostly rides out the faults, several batches of a partition in flight,
    /// and processes with several sends outstanding. Unknown outcomes are still recorded `info`.
    IdempotentQueue,
    /// Admin processes creating, deleting, describing and listing topics ([`crate::meta_workload`]).
    Metadata,
}

/// Which checkers judge a run (see [`crate::outcome`]). Every scenario also fails on the
/// harness's violations: unexplained broker exits, missed liveness bounds, required faults that
/// were not injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checker {
    /// `keel_model::queue_checker` over the queue history, plus the workload's durability
    /// invariants checked during the run.
    Queue,
    /// [`Checker::Queue`] in its exactly-once mode (with [`WorkloadKind::IdempotentQueue`]): a
    /// send acknowledged `ok` appears exactly once, one whose outcome is unknown at most once, and
    /// each process's sends to a partition sit in the log in the order it sent them. The history
    /// file says so, so that it is judged the same way when read back.
    ExactlyOnce,
    /// `keel_model::metadata_checker` over the metadata history and the final topic list.
    Metadata,
    /// `keel_model::raft_checker` fed during the run by the observers of [`crate::monitor`], whose
    /// supervisor also judges every stopped Raft node.
    Raft,
    /// After the final read: every in-sync replica's log holds the leader's batches, byte for byte,
    /// below the high watermark ([`crate::replicas`]).
    Replicas,
    /// No send invoked while the controller's ISR of its partition was below `min_insync_replicas`
    /// is acknowledged while it stays there ([`crate::isr_watch::acks_under_min_isr`], over the ISR
    /// timeline an observer records during the run). Sound only without network faults (see there).
    MinIsrAcks,
    /// After the final read, within the liveness bound: every partition has a leader and every
    /// replica back in its ISR ([`crate::isr_watch::wait_full_isr`]).
    FullIsr,
}

/// One scenario: config (cluster and faults), workload, checkers.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The `#[madsim::test]` name in `sim/tests/scenarios.rs`.
    pub name: &'static str,
    /// Brokers, all voters of the metadata group (one broker: a group of one).
    pub brokers: usize,
    /// The queue workload's topic's replication factor (its min ISR is the broker default,
    /// `min(2, replication)`).
    pub replication: u32,
    pub fsync: FsyncPolicy,
    /// The fault classes the nemesis may use, in draw order.
    pub faults: Vec<(FaultClass, Use)>,
    pub workload: WorkloadKind,
    pub checkers: &'static [Checker],
    /// Simulated time of the faulty phase.
    pub duration: Duration,
    /// Whether the queue workload's producers compress their batches, one codec drawn per producer
    /// node (none among them); off keeps a scenario's draws what they were before codecs existed.
    pub compression: bool,
    /// Whether the queue workload's topic has retention (small segments, a size and/or time limit
    /// drawn per seed): consumers and the final reader go on from the log start, and the checkers
    /// count what is below the final log start as expired, not lost (ADR 0019).
    pub retention: bool,
    /// Whether the queue workload's topic is compacted (ADR 0022): small segments, every value
    /// keyed by `queue_checker::compaction_key` among a few keys drawn per seed, and the queue
    /// checker excuses what a later record of the same key supersedes.
    pub compact: bool,
    /// Whether members of a consumer group consume the queue workload's topic (crashing, leaving and
    /// rejoining), judged by `keel_model::group_checker` after they catch up (ADR 0020).
    pub groups: bool,
    /// Whether subscribers read the queue workload's topic through push subscriptions (one per
    /// partition, small credit windows), their pushes recorded as polls (ADR 0021).
    pub push: bool,
    /// The queue workload's topic's partitions, instead of the few drawn per seed.
    pub partitions: Option<u32>,
    /// The brokers' `open_files_max` (partition files open at once); their simulated disks refuse
    /// opens (EMFILE) past it plus `SIM_DESCRIPTOR_SLACK`, as a process's open-file limit would.
    pub open_files_max: Option<usize>,
    /// The full campaign (every scenario, as CI runs it) runs this scenario on one of every
    /// `campaign_stride` of its new seeds (1: all of them). The scenarios with thousands of
    /// partitions cost 3 to 9 times a plain one; CI thins them so that its campaign fits its time
    /// bound. A campaign of chosen scenarios (`KEEL_SIM_SCENARIOS`) runs every seed.
    pub campaign_stride: u64,
    /// Whether every broker also runs a Kafka listener and some producer nodes speak Kafka to it
    /// ([`crate::kafka_workload`], ADR 0026) instead of the native protocol.
    pub kafka: bool,
}

/// The full campaign's stride for the many-partition scenarios (1.1 and 1.8 s of wall time a run
/// against 0.2-0.6 s for the others): CI's 100 new seeds a scenario become 25 for them. It was 10
/// while a run cost 5 to 9 s (before the reconciler stopped walking every partition at each
/// heartbeat); the campaign's time stayed the same.
pub const CAMPAIGN_STRIDE_HEAVY: u64 = 4;

/// Descriptors a simulated disk allows beyond the broker's `open_files_max`: none, since the budget
/// is a bound (module `keel::storage::handles`) and every partition file goes through it. An open
/// past it fails with EMFILE (the partition reports a storage error and retries) and the run fails
/// (`driver` `check_file_budget`).
pub const SIM_DESCRIPTOR_SLACK: usize = 0;

impl Scenario {
    /// How the scenario uses `class` (`Off` when it does not list it).
    pub fn use_of(&self, class: FaultClass) -> Use {
        self.faults.iter().find(|(listed, _)| *listed == class).map_or(Use::Off, |(_, use_)| *use_)
    }

    pub fn uses(&self, class: FaultClass) -> bool {
        self.use_of(class).enabled()
    }

    /// The classes the scenario is named for: each is injected on every seed, or the seed fails.
    pub fn required(&self) -> Vec<FaultClass> {
        self.faults.iter().filter(|(_, use_)| *use_ == Use::Always).map(|(class, _)| *class).collect()
    }

    pub fn checks(&self, checker: Checker) -> bool {
        self.checkers.contains(&checker)
    }

    /// Whether every acked record must survive: with fsync=always, or when no fault can drop the
    /// page cache (without power loss or a failed fsync even fsync=never keeps everything acked).
    pub fn durable(&self) -> bool {
        self.fsync == FsyncPolicy::Always
            || !(self.uses(FaultClass::PowerLoss)
                || self.uses(FaultClass::AllPowerLoss)
                || self.uses(FaultClass::FailedFsync))
    }
}

/// The faulty phase of the single-broker scenarios, in simulated time.
pub const QUEUE_DURATION: Duration = Duration::from_secs(10);
/// The faulty phase of the Raft scenarios, in simulated time.
pub const RAFT_DURATION: Duration = Duration::from_secs(12);

const QUEUE_CHECKERS: &[Checker] = &[Checker::Queue];
const RAFT_CHECKERS: &[Checker] = &[Checker::Metadata, Checker::Raft];

/// The classes every scenario adds on some seeds (swarm testing: each left out on some seeds, so
/// other faults get seeds without them): wall-clock jumps and, where `network` (the scenario's
/// checkers hold under any message timing), packet loss.
fn with_background(mut faults: Vec<(FaultClass, Use)>, network: bool) -> Vec<(FaultClass, Use)> {
    if network {
        faults.push((FaultClass::PacketLoss, Use::Sometimes));
    }
    faults.push((FaultClass::ClockSkew, Use::Sometimes));
    faults
}

fn single_broker(name: &'static str, fsync: FsyncPolicy, faults: Vec<(FaultClass, Use)>) -> Scenario {
    Scenario {
        name,
        brokers: 1,
        replication: 1,
        fsync,
        faults: with_background(faults, true),
        workload: WorkloadKind::Queue,
        checkers: QUEUE_CHECKERS,
        duration: QUEUE_DURATION,
        compression: false,
        retention: false,
        compact: false,
        groups: false,
        push: false,
        partitions: None,
        open_files_max: None,
        campaign_stride: 1,
        kafka: false,
    }
}

fn raft(name: &'static str, voters: usize, faults: Vec<(FaultClass, Use)>) -> Scenario {
    Scenario {
        name,
        brokers: voters,
        replication: 1,
        fsync: FsyncPolicy::Always,
        faults: with_background(faults, true),
        workload: WorkloadKind::Metadata,
        checkers: RAFT_CHECKERS,
        duration: RAFT_DURATION,
        compression: false,
        retention: false,
        compact: false,
        groups: false,
        push: false,
        partitions: None,
        open_files_max: None,
        campaign_stride: 1,
        kafka: false,
    }
}

use FaultClass::*;
use Use::{Always, Sometimes};

/// Single broker, power loss on every seed and process restarts: with fsync=always no acked record
/// may ever be lost; with fsync=never the checker must notice lost records (the teeth test).
pub fn single_broker_power_loss(fsync: FsyncPolicy) -> Scenario {
    let name = if fsync == FsyncPolicy::Always {
        "single_broker_power_loss_fsync_always"
    } else {
        "single_broker_power_loss_fsync_never"
    };
    single_broker(
        name,
        fsync,
        vec![(PowerLoss, Always), (Kill, Sometimes), (CleanRestart, Sometimes), (SlowFsync, Sometimes)],
    )
}

/// Single broker whose fsyncs are slow and fail, with occasional write errors and power loss.
pub fn single_broker_slow_and_failing_fsync() -> Scenario {
    single_broker(
        "single_broker_slow_and_failing_fsync",
        FsyncPolicy::Always,
        vec![(PowerLoss, Sometimes), (SlowFsync, Always), (FailedFsync, Always), (FailedWrite, Sometimes)],
    )
}

/// Single broker that is paused (a GC or VM stall) and cut off the network, plus process crashes.
pub fn single_broker_pause_and_clog() -> Scenario {
    single_broker(
        "single_broker_pause_and_clog",
        FsyncPolicy::Always,
        vec![(Kill, Sometimes), (CleanRestart, Sometimes), (Pause, Always), (Clog, Always)],
    )
}

/// Every single-broker fault class at once, rates drawn per seed.
pub fn single_broker_swarm() -> Scenario {
    single_broker(
        "single_broker_swarm",
        FsyncPolicy::Always,
        vec![
            (PowerLoss, Sometimes),
            (Kill, Sometimes),
            (CleanRestart, Sometimes),
            (SlowFsync, Sometimes),
            (FailedFsync, Sometimes),
            (FailedWrite, Sometimes),
            (Pause, Sometimes),
            (Clog, Sometimes),
        ],
    )
}

/// Single broker with `fsync = "never"` whose disk fails writes (EIO, ENOSPC), with process crashes
/// and clean restarts but no power loss and no failed fsync: the page cache survives all of these,
/// so no acked record may be lost even though nothing is fsynced (issue 7: a failed write was acked).
pub fn single_broker_write_errors_fsync_never() -> Scenario {
    single_broker(
        "single_broker_write_errors_fsync_never",
        FsyncPolicy::Never,
        vec![(Kill, Sometimes), (CleanRestart, Sometimes), (FailedWrite, Always)],
    )
}

/// 3 voters; the leader is killed and restarted again and again, plus crashes and pauses of others.
pub fn raft_3_voters_leader_kill_and_restart() -> Scenario {
    raft("raft_3_voters_leader_kill_and_restart", 3, vec![(LeaderKill, Always), (Kill, Sometimes), (Pause, Sometimes)])
}

/// 3 voters; power loss (an abrupt stop; the metadata store has no unsynced batch to drop, see
/// [`crate::monitor`]) on every seed and metadata-store write errors, on the leader or anyone, with
/// leader kills and minority partitions on top.
pub fn raft_3_voters_power_loss() -> Scenario {
    raft(
        "raft_3_voters_power_loss",
        3,
        vec![(LeaderKill, Sometimes), (PowerLoss, Always), (Partition, Sometimes), (MetaWriteErrors, Always)],
    )
}

/// Every Raft fault class, rates and mix drawn per seed.
fn raft_swarm_faults() -> Vec<(FaultClass, Use)> {
    [LeaderKill, Kill, PowerLoss, Partition, Bridge, OneWay, Pause, Delay, MetaWriteErrors]
        .into_iter()
        .map(|class| (class, Sometimes))
        .collect()
}

/// 3 voters; every fault class (bridges with one broker on each side), rates drawn per seed.
pub fn raft_3_voters_swarm() -> Scenario {
    raft("raft_3_voters_swarm", 3, raft_swarm_faults())
}

/// 5 voters; minority/majority and bridge partitions, one-way clogs and message delay.
pub fn raft_5_voters_partitions_and_clogs() -> Scenario {
    raft(
        "raft_5_voters_partitions_and_clogs",
        5,
        vec![(Partition, Always), (Bridge, Sometimes), (OneWay, Sometimes), (Delay, Sometimes)],
    )
}

/// 5 voters; every fault class, rates and mix drawn per seed.
pub fn raft_5_voters_swarm() -> Scenario {
    raft("raft_5_voters_swarm", 5, raft_swarm_faults())
}

/// The faulty phase of the ISR scenarios, in simulated time.
pub const ISR_DURATION: Duration = Duration::from_secs(15);

const ISR_CHECKERS: &[Checker] = &[Checker::Queue, Checker::Replicas];

/// Replicated partitions (RF 3, min ISR 2, fsync=always, acks=all): the queue workload through
/// every broker, judged by the queue checker and the replica convergence check.
fn isr(name: &'static str, brokers: usize, faults: Vec<(FaultClass, Use)>) -> Scenario {
    Scenario {
        name,
        brokers,
        replication: 3,
        fsync: FsyncPolicy::Always,
        faults: with_background(faults, true),
        workload: WorkloadKind::Queue,
        checkers: ISR_CHECKERS,
        duration: ISR_DURATION,
        compression: false,
        retention: false,
        compact: false,
        groups: false,
        push: false,
        partitions: None,
        open_files_max: None,
        campaign_stride: 1,
        kafka: false,
    }
}

/// Partition leaders (any broker leads some partition) killed again and again during produce, with
/// power loss and graceful restarts on top: elections from the ISR only, nothing acked lost.
pub fn isr_3_leader_kill() -> Scenario {
    isr("isr_3_leader_kill", 3, vec![(Kill, Always), (PowerLoss, Sometimes), (LeaderKill, Sometimes)])
}

/// Every broker loses power at the same moment (unsynced writes dropped everywhere), again and again:
/// an `acks=all` acknowledgement means fsynced on every ISR member, so nothing acknowledged is lost.
pub fn isr_3_all_power_loss() -> Scenario {
    isr("isr_3_all_power_loss", 3, vec![(AllPowerLoss, Always), (Kill, Sometimes)])
}

/// Leaders cut off from the controller but reachable by clients (one-way clogs and partitions): a
/// zombie leader cannot shrink its ISR, so it cannot advance its HW or acknowledge alone.
pub fn isr_3_zombie_leader() -> Scenario {
    isr("isr_3_zombie_leader", 3, vec![(Partition, Always), (OneWay, Sometimes), (Bridge, Sometimes)])
}

/// Clogged brokers, paused brokers, message delay and slow fsyncs: followers fall behind, leave the
/// ISR and come back.
pub fn isr_3_clogs_pauses_delay() -> Scenario {
    isr(
        "isr_3_clogs_pauses_delay",
        3,
        vec![(Clog, Always), (Pause, Always), (Delay, Sometimes), (SlowFsync, Sometimes)],
    )
}

/// Bit rot in the durable segments of one broker (a minority), with graceful restarts and crashes
/// that make recovery scan it and pauses that move leadership: the corruption is detected (on read
/// or recovery), never served or replicated, the log is cut there and fetched again from the leader;
/// a leader that finds it resigns, and a replica whose recovery cut below its checkpointed high
/// watermark resigns when it is elected (the eligible leader replicas then lead). Nothing acked lost.
pub fn isr_3_bit_flips() -> Scenario {
    isr(
        "isr_3_bit_flips",
        3,
        vec![
            (BitFlip, Always),
            (MisdirectedWrite, Sometimes),
            (CleanRestart, Sometimes),
            (Pause, Sometimes),
            (Kill, Sometimes),
        ],
    )
}

/// The ISR scenarios with their own checks of the ISR: the controller's ISR is watched during the
/// run (no ack while it is below the minimum) and must be whole again after the heal.
const ISR_WATCHED_CHECKERS: &[Checker] = &[Checker::Queue, Checker::Replicas, Checker::MinIsrAcks, Checker::FullIsr];
/// Retention: every replica back in its ISR after the heal too (a follower that fell below its
/// leader's log start must start over and catch up, not fetch in vain for ever).
const RETENTION_CHECKERS: &[Checker] = &[Checker::Queue, Checker::Replicas, Checker::FullIsr];

/// The faulty phase of `isr_3_double_failover`: a failover takes the fencing timeout (6 s) and the
/// forced one starts by the middle of the phase, so its second crash lands before the end.
pub const DOUBLE_FAILOVER_DURATION: Duration = Duration::from_secs(30);

/// Two failovers in quick succession (KIP-101's case), again and again: a partition's leader
/// crashes (kill or power loss), the controller elects another from the ISR, and that one crashes
/// within 0-2 s, while the first is still down or just back; both come back later. With RF 3 and
/// min ISR 2, the last replica standing must refuse `acks=all` (`NotEnoughReplicas`) until another
/// rejoins, never acknowledge alone; a replica that comes back truncates by leader epoch, never to
/// its HW; nothing acknowledged is lost.
pub fn isr_3_double_failover() -> Scenario {
    Scenario {
        checkers: ISR_WATCHED_CHECKERS,
        duration: DOUBLE_FAILOVER_DURATION,
        compression: false,
        retention: false,
        compact: false,
        groups: false,
        push: false,
        faults: with_background(vec![(DoubleFailover, Always)], false),
        ..isr("isr_3_double_failover", 3, Vec::new())
    }
}

/// The faulty phase of `isr_3_slow_follower`: a stall lasts `replica_lag_ms_max` (10 s) plus 3.5-5.5
/// s, and the forced one starts by the middle of the phase, so it ends (and its follower rejoins)
/// before the heal.
pub const SLOW_FOLLOWER_DURATION: Duration = Duration::from_secs(40);

/// A slow follower: one broker's follower replicas stop completing syncs for longer than
/// `replica_lag_ms_max`, its leaders drop it from their ISRs (a shrink through the controller), then
/// it catches up and rejoins (an expansion); stalls on other brokers may overlap, leaving a leader
/// alone (below min ISR: no acks). Each seed must see a follower leave an ISR and come back
/// (counted by the nemesis from the controller's metadata), and every ISR whole after the heal.
pub fn isr_3_slow_follower() -> Scenario {
    Scenario {
        checkers: ISR_WATCHED_CHECKERS,
        duration: SLOW_FOLLOWER_DURATION,
        compression: false,
        retention: false,
        compact: false,
        groups: false,
        push: false,
        faults: with_background(vec![(SlowFollower, Always)], false),
        ..isr("isr_3_slow_follower", 3, Vec::new())
    }
}

/// Graceful restarts one after another under load (leadership moves away first).
pub fn isr_3_rolling_restart() -> Scenario {
    isr("isr_3_rolling_restart", 3, vec![(CleanRestart, Always)])
}

/// 5 brokers, every fault class the ISR scenarios use, rates drawn per seed.
pub fn isr_5_swarm() -> Scenario {
    let faults = [
        Kill,
        PowerLoss,
        AllPowerLoss,
        CleanRestart,
        Pause,
        Clog,
        Partition,
        Bridge,
        OneWay,
        Delay,
        SlowFsync,
        BitFlip,
        MisdirectedWrite,
    ]
    .into_iter()
    .map(|class| (class, Sometimes))
    .collect();
    Scenario { compression: true, ..isr("isr_5_swarm", 5, faults) }
}

/// The idempotent-producer scenarios' checkers: the exactly-once queue checker and the replica
/// convergence check.
const IDEMPOTENT_CHECKERS: &[Checker] = &[Checker::Queue, Checker::ExactlyOnce, Checker::Replicas];

/// Idempotent producers (exactly-once append per partition) against replicated partitions (RF 3,
/// min ISR 2, fsync=always, acks=all), judged in exactly-once mode.
fn idempotent(name: &'static str, faults: Vec<(FaultClass, Use)>) -> Scenario {
    Scenario { workload: WorkloadKind::IdempotentQueue, checkers: IDEMPOTENT_CHECKERS, ..isr(name, 3, faults) }
}

/// Partition leaders killed mid-batch again and again (plus kills of any broker, power losses and
/// graceful restarts on some seeds): batches in flight to a dead leader are sent again to the
/// next one, which may already hold them (replicated before the crash): each record appended
/// once, in order.
pub fn idempotent_leader_kill() -> Scenario {
    idempotent(
        "idempotent_leader_kill",
        vec![(PartitionLeaderKill, Always), (Kill, Sometimes), (PowerLoss, Sometimes), (CleanRestart, Sometimes)],
    )
}

/// Producers cut off from a partition leader mid-batch (both ways, or only its answers: appended
/// and unanswered, then sent again), and leaders cut off from their followers and the controller
/// (partitions, bridges, one-way clogs, whole-node clogs): the copies a producer sends again, and
/// the stale requests a link delivers when it opens, are recognised.
pub fn idempotent_partitions() -> Scenario {
    idempotent(
        "idempotent_partitions",
        vec![
            (ProducerLeaderCut, Always),
            (Partition, Always),
            (Bridge, Sometimes),
            (OneWay, Sometimes),
            (Clog, Sometimes),
            (Delay, Sometimes),
        ],
    )
}

/// Every broker loses power at the same moment, again and again (fsync=always): the producers'
/// dedup state comes back from the logs, so the batches sent again after the restart are
/// recognised.
pub fn idempotent_all_power_loss() -> Scenario {
    idempotent("idempotent_all_power_loss", vec![(AllPowerLoss, Always), (Kill, Sometimes), (PowerLoss, Sometimes)])
}

/// Retention (ADR 0019) under crashes, power loss, partitions and pauses: every replica deletes
/// whole segments by the topic's drawn size and time limits, followers follow the leader's log start,
/// and a follower cut off long enough starts over at it. Nothing acknowledged at or above the final
/// log start is lost; in-sync replicas agree byte for byte above their log starts.
pub fn isr_3_retention() -> Scenario {
    // A slow follower (its syncs stall past `replica_lag_ms_max`) leaves the ISR, so the high
    // watermark, and retention with it, move past its log end: when it comes back it must start over
    // at the leader's log start. Within the ISR nothing can be deleted that a member lacks.
    let faults = vec![
        (SlowFollower, Sometimes),
        (Partition, Sometimes),
        (Kill, Sometimes),
        (PowerLoss, Sometimes),
        (AllPowerLoss, Sometimes),
        (CleanRestart, Sometimes),
        (Pause, Sometimes),
        (Clog, Sometimes),
        (Delay, Sometimes),
    ];
    Scenario {
        retention: true,
        compact: false,
        groups: false,
        push: false,
        duration: SLOW_FOLLOWER_DURATION,
        checkers: RETENTION_CHECKERS,
        ..isr("isr_3_retention", 3, faults)
    }
}

/// The checkers of a compacted topic: the queue checker (compacted: a record a later one of its key
/// supersedes may be gone) and the full-ISR check; not the byte-for-byte replica check, since each
/// replica compacts its own log at its own pace.
const COMPACT_CHECKERS: &[Checker] = &[Checker::Queue, Checker::FullIsr];

/// Compaction (ADR 0022) under crashes, power loss, partitions and pauses: keyed records on a
/// compacted topic with small segments, every replica compacting below its high watermark while
/// leaders move and followers fetch compacted ranges. Nothing acknowledged is lost unless a later
/// record of its key supersedes it; reads pass over removed records in order.
pub fn compact_3() -> Scenario {
    let faults = vec![
        (Kill, Sometimes),
        (PartitionLeaderKill, Sometimes),
        (PowerLoss, Sometimes),
        (AllPowerLoss, Sometimes),
        (CleanRestart, Sometimes),
        (Pause, Sometimes),
        (Clog, Sometimes),
        (Partition, Sometimes),
        (Delay, Sometimes),
    ];
    Scenario { compact: true, checkers: COMPACT_CHECKERS, ..isr("compact_3", 3, faults) }
}

/// Every fault class that applies to 3 replicated brokers and idempotent producers, rates drawn
/// per seed.
pub fn idempotent_swarm() -> Scenario {
    let faults = [
        PartitionLeaderKill,
        ProducerLeaderCut,
        Kill,
        PowerLoss,
        AllPowerLoss,
        CleanRestart,
        Pause,
        Clog,
        Partition,
        Bridge,
        OneWay,
        Delay,
        SlowFsync,
        BitFlip,
        MisdirectedWrite,
        DoubleFailover,
    ]
    .into_iter()
    .map(|class| (class, Sometimes))
    .collect();
    Scenario { compression: true, ..idempotent("idempotent_swarm", faults) }
}

/// Consumer groups (ADR 0020): members of one group consume the replicated topic while they crash
/// (their sessions expire), leave and rejoin, and brokers crash, lose power, pause and are cut off,
/// so group coordinators move with the leadership of their `__consumer_offsets` partitions and
/// rebuild from it. The group checker: no partition owned twice in a generation, committed offsets
/// never go back, and every acknowledged record below the final committed offsets was consumed by a
/// member of a then-current generation.
pub fn groups_3() -> Scenario {
    let faults = vec![
        (Kill, Sometimes),
        (PartitionLeaderKill, Sometimes),
        (PowerLoss, Sometimes),
        (CleanRestart, Sometimes),
        (Pause, Sometimes),
        (Clog, Sometimes),
        (Partition, Sometimes),
        (Delay, Sometimes),
    ];
    Scenario { groups: true, ..isr("groups_3", 3, faults) }
}

/// Push subscriptions (ADR 0021): subscribers with small credit windows and slow processing read
/// every partition as its leader pushes, while leaders are killed, lose power, restart, pause and
/// are cut off; each subscription reopens at the new leader where it stopped. The queue checker
/// holds the pushes to what it holds polls to (no skip, no duplicate, nothing unsent, nothing
/// committed lost), and every subscriber reaches the final high watermark after the heal.
pub fn push_3() -> Scenario {
    let faults = vec![
        (PartitionLeaderKill, Always),
        (Kill, Sometimes),
        (PowerLoss, Sometimes),
        (CleanRestart, Sometimes),
        (Pause, Sometimes),
        (Clog, Sometimes),
        (Partition, Sometimes),
        (Delay, Sometimes),
    ];
    Scenario { push: true, ..isr("push_3", 3, faults) }
}

/// Many partitions on one broker with a small open-file budget (issue 15): 3,000 partitions in one
/// topic (the driver raises the broker's `partitions_per_topic_max`), 96 partition files open at
/// once (each partition has at least 5 files; the disk refuses a 97th descriptor, which fails the
/// run), so handles are closed and opened again all the time, partitions open lazily after each
/// restart, and syncs coalesce, under power loss, crashes, graceful restarts and slow fsyncs.
/// Nothing acknowledged is lost. (With 32 files, a sync group holds at most 16 handles: at 500 ms
/// an fsync, a graceful stop of every partition opened took past the 30 s bound, seed 99900099.)
pub fn many_partitions_small_file_budget() -> Scenario {
    let faults = vec![(PowerLoss, Always), (Kill, Sometimes), (CleanRestart, Sometimes), (SlowFsync, Sometimes)];
    Scenario {
        partitions: Some(3_000),
        open_files_max: Some(96),
        campaign_stride: CAMPAIGN_STRIDE_HEAVY,
        ..single_broker("many_partitions_small_file_budget", FsyncPolicy::Always, faults)
    }
}

/// Many replicated partitions with a small open-file budget on every broker (issue 15 "must hold for
/// replicas too"): 3 brokers, 300 partitions of 3 replicas, 32 partition files open per broker (each
/// disk refuses a 33rd descriptor, which fails the run), so followers' background opens and fetches, leaders' appends
/// and the HW checkpoints all compete for handles while partition leaders are killed, brokers crash,
/// lose power, restart gracefully and fsync slowly. Checked like the other ISR scenarios: nothing
/// acknowledged with acks=all is lost.
pub fn isr_3_many_partitions_small_file_budget() -> Scenario {
    let faults = vec![
        (PartitionLeaderKill, Always),
        (Kill, Sometimes),
        (PowerLoss, Sometimes),
        (CleanRestart, Sometimes),
        (SlowFsync, Sometimes),
    ];
    Scenario {
        partitions: Some(300),
        open_files_max: Some(32),
        campaign_stride: CAMPAIGN_STRIDE_HEAVY,
        ..isr("isr_3_many_partitions_small_file_budget", 3, faults)
    }
}

/// Idempotent producers speaking Kafka's wire protocol (ADR 0026) beside the native ones, into the
/// same replicated topic (RF 3, min ISR 2), while partition leaders are killed, brokers crash, lose
/// power or restart gracefully and the network partitions: each Kafka producer sends a record again
/// (same producer id and sequence) after every retriable error or broken connection, so the
/// listener's translation of dedup answers (a duplicate still in flight, a leader that moved) is
/// judged exactly-once with the rest.
pub fn kafka_idempotent_failover() -> Scenario {
    let faults = vec![
        (PartitionLeaderKill, Always),
        (Kill, Sometimes),
        (PowerLoss, Sometimes),
        (CleanRestart, Sometimes),
        (Partition, Sometimes),
    ];
    Scenario { kafka: true, ..idempotent("kafka_idempotent_failover", faults) }
}

/// Every scenario of `sim/tests/scenarios.rs`.
pub fn all() -> Vec<Scenario> {
    vec![
        single_broker_power_loss(FsyncPolicy::Always),
        single_broker_slow_and_failing_fsync(),
        single_broker_write_errors_fsync_never(),
        single_broker_pause_and_clog(),
        single_broker_swarm(),
        raft_3_voters_leader_kill_and_restart(),
        raft_3_voters_power_loss(),
        raft_3_voters_swarm(),
        raft_5_voters_partitions_and_clogs(),
        raft_5_voters_swarm(),
        isr_3_leader_kill(),
        isr_3_all_power_loss(),
        isr_3_zombie_leader(),
        isr_3_double_failover(),
        isr_3_clogs_pauses_delay(),
        isr_3_slow_follower(),
        isr_3_rolling_restart(),
        isr_3_retention(),
        isr_3_bit_flips(),
        isr_5_swarm(),
        idempotent_leader_kill(),
        idempotent_partitions(),
        idempotent_all_power_loss(),
        idempotent_swarm(),
        groups_3(),
        compact_3(),
        push_3(),
        many_partitions_small_file_budget(),
        isr_3_many_partitions_small_file_budget(),
        kafka_idempotent_failover(),
    ]
}

/// The scenario called `name`, if there is one.
pub fn by_name(name: &str) -> Option<Scenario> {
    all().into_iter().find(|scenario| scenario.name == name)
}

/// A seed that found a bug: one line of `sim/failing-seeds.jsonl`, the committed file CI replays
/// before exploring new seeds ([`crate::campaign`]; `raft_regression_seeds` in
/// `sim/tests/scenarios.rs` replays it too).
///
/// Add a line when a seed finds a bug (before fixing it, check that it fails): the scenario, the
/// seed, the commit it failed on, and what it found and where the fix is; once fixed, its
/// `trace_hash` (16 hex digits) is the passing run's. A seed replays its run only while nothing it
/// depends on changes (every random draw of the harness and the broker, every message); the hash
/// tells when it drifted (printed as a note): the seed still runs and must pass, but it may no
/// longer replay the run that found its bug. Most hashes drifted with the one-driver refactor (ADR
/// 0009) and again with the swarm of issue 11 (BUGGIFY, packet loss, clock skew, snapshot
/// intervals on every scenario).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegressionSeed {
    /// A name [`by_name`] knows.
    pub scenario: String,
    pub seed: u64,
    /// The commit the seed failed on (abbreviated hash).
    pub commit: String,
    /// The passing run's trace hash when it was last checked.
    pub trace_hash: u64,
    /// What the seed found, and where the fix is.
    pub found: String,
}

/// The committed failing-seeds file, compiled in.
pub const FAILING_SEEDS_JSONL: &str = include_str!("../failing-seeds.jsonl");

/// Every line of `sim/failing-seeds.jsonl`, in file order. Panics on a malformed line (naming it) or
/// an unknown scenario: the file is part of the harness.
pub fn regression_seeds() -> Vec<RegressionSeed> {
    FAILING_SEEDS_JSONL
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            parse_regression_seed(line)
                .unwrap_or_else(|error| panic!("sim/failing-seeds.jsonl line {}: {error}", index + 1))
        })
        .collect()
}

fn parse_regression_seed(line: &str) -> Result<RegressionSeed, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|error| error.to_string())?;
    let text = |field: &str| value[field].as_str().map(str::to_owned).ok_or_else(|| format!("no string {field:?}"));
    let seed = value["seed"].as_u64().ok_or("no integer \"seed\"")?;
    let trace_hash = u64::from_str_radix(&text("trace_hash")?, 16).map_err(|error| format!("trace_hash: {error}"))?;
    let entry = RegressionSeed {
        scenario: text("scenario")?,
        seed,
        commit: text("commit")?,
        trace_hash,
        found: text("found")?,
    };
    if by_name(&entry.scenario).is_none() {
        return Err(format!("unknown scenario {:?}", entry.scenario));
    }
    Ok(entry)
}
