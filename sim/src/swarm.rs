//! What each seed draws (TigerBeetle VOPR-style swarm testing): the workload's shape, which of the
//! scenario's fault classes run and at what rates, how long faults last and how many overlap.
//!
//! In: a [`crate::scenario::Scenario`]'s fault classes (each [`Use::Off`], `Sometimes` or `Always`)
//! and workload kind, and madsim's seeded RNG. Out: a [`Swarm`], printed at the top of the trace.
//!
//! Every seed runs a different mix: a fault class the scenario uses `Sometimes` gets weight 0 on
//! one seed in four (so other classes get seeds of their own); one it uses `Always` always gets a
//! weight, and the nemesis also forces it (see [`crate::nemesis`]). The one weighted draw of the
//! harness is [`pick_weighted`].

use madsim::rand::{thread_rng, Rng};

use keel::compression::Compression;

use crate::scenario::{Scenario, WorkloadKind};
use crate::workload::Idempotence;

/// Whether a scenario's nemesis uses a fault class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    Off,
    /// The swarm draw leaves it out on some seeds (so other faults get seeds of their own).
    Sometimes,
    /// Every seed injects it (at least once, on a node that matters): it is what the scenario is about.
    Always,
}

impl Use {
    pub fn enabled(self) -> bool {
        self != Use::Off
    }
}

/// A class of fault the nemesis can inject. Each lasts an outage drawn per fault (a clean restart
/// is over when the broker is back), and faults of different classes overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultClass {
    /// Power loss: the process stops at once and the disk drops unsynced writes. Where the scenario
    /// also has slow fsyncs, three in four first stall the syncs and cut the power mid-sync.
    PowerLoss,
    /// Process crash of any broker (the page cache survives), restarted after the outage.
    Kill,
    /// Every broker loses power at the same moment (only when none is already down or paused), and
    /// all restart after the outage.
    AllPowerLoss,
    /// Kill whichever broker leads the metadata group (a kill that hits the leader counts too).
    LeaderKill,
    /// Kill the broker that leads a partition of the workload's topic (drawn among the partitions
    /// whose leader, per the controller's metadata, serves), restarted after the outage: the
    /// producers' batches in flight to it are cut mid-request and go to the next leader. Counted
    /// when it hit a serving partition leader.
    PartitionLeaderKill,
    /// Graceful restart (ctrl-c, bounded wait for the exit, restart).
    CleanRestart,
    /// The broker stops being scheduled (a GC or VM stall).
    Pause,
    /// A node cut off the network: a broker, or a client node of the workload. Only broker clogs
    /// count as injected (clogging an idle node tests nothing).
    Clog,
    /// Two groups of brokers that cannot talk to each other (the leader on either side).
    Partition,
    /// Two groups that cannot talk to each other and one broker that talks to both.
    Bridge,
    /// One-way link clogs (e.g. a leader that can send but not hear, or the reverse).
    OneWay,
    /// A producer's client node cut off from the leader of a partition it writes to, which keeps
    /// talking to every other node: both directions, only the answers (requests arrive and are
    /// appended, answers are held, so the producer times out and sends again) or only the
    /// requests. Held data is delivered when the link opens (madsim never breaks a connection on a
    /// clog), so stale requests reach the leader late. Counted when the leader served.
    ProducerLeaderCut,
    /// Slower messages (madsim's send latency).
    Delay,
    /// Lost messages on every link (0-30% per seed, drawn per fault up to the seed's maximum).
    /// madsim resends a lost message of a TCP stream after a doubling backoff, so streams stay
    /// reliable and ordered: loss means latency bursts and head-of-line blocking, and failed
    /// connects.
    PacketLoss,
    /// A broker's wall clock jumps forwards or backwards (up to the seed's maximum skew) for an
    /// outage, then back ([`keel::clock::skew`]): heartbeats, record timestamps and producer expiry
    /// read it; timeouts and ticks run on the monotonic clock and do not.
    ClockSkew,
    /// Slow fsyncs on the data disk (counted when a sync waited).
    SlowFsync,
    /// Failing fsyncs on the data disk (counted when a sync failed).
    FailedFsync,
    /// EIO and ENOSPC data writes (counted when a write failed).
    FailedWrite,
    /// The metadata store fails writes (the Raft node stops; the supervisor restarts the broker).
    MetaWriteErrors,
    /// Bit rot: one bit of a synced partition segment (`*.log`) flips on a broker's disk. Over the
    /// whole run at most `(k - 1) / 2` distinct brokers are hit, `k` the smaller of the broker count
    /// and the replication factor (none below three), so every partition keeps an intact copy on a
    /// majority of its replicas; on a single-copy partition a flip
    /// legitimately loses data, so no scenario whose checkers assume one copy may use it. Counted per
    /// flip; instantaneous (nothing to end).
    BitFlip,
    /// Misdirected writes: for an outage, writes to one broker's partition segments (`*.log`) land
    /// 4-16 KiB away from where they were aimed (probability drawn per fault), leaving the aimed-at
    /// bytes stale: a firmware bug the CRCs must catch. Only on the brokers bit flips may hit (one
    /// minority for both classes, so every partition keeps intact copies on a majority). Counted per
    /// misdirected write the disk reports.
    MisdirectedWrite,
    /// Two failovers in quick succession (KIP-101's case): the leader of a partition whose ISR holds
    /// every replica (with every broker serving) crashes; once the controller has elected another
    /// leader, that one crashes too after a delay drawn per fault, while the first is still down or
    /// just back (also drawn). Each crash is a kill or a power loss (drawn); both come back later.
    /// Reads the controller's metadata; counted when the second crash hit the partition's serving
    /// leader. One at a time.
    DoubleFailover,
    /// A slow follower: the syncs of one broker's follower replicas (every partition whose ISR it is
    /// in without leading it) stall for longer than `replica_lag_ms_max`, so the leaders drop it from
    /// their ISRs; then the stall ends, it catches up and rejoins. Counted when the controller's
    /// metadata showed it leave an ISR and then be back in every ISR it left. Not started when the
    /// stall (and the rejoin) cannot end before the faulty phase does. Overlaps on other brokers.
    SlowFollower,
}

/// The seed's draw.
#[derive(Clone, Debug, PartialEq)]
pub struct Swarm {
    pub nemesis: NemesisSwarm,
    pub workload: WorkloadSwarm,
    /// Whether the run enables the shell's BUGGIFY points ([`keel::buggify`]; half the seeds).
    pub buggify: bool,
    /// Applied metadata entries between snapshots of the metadata group: small values make voters
    /// compact their logs, so lagging or restarted ones catch up by snapshot instead of by log.
    pub snapshot_interval_entries: u64,
}

/// The nemesis's rates, drawn per seed.
#[derive(Clone, Debug, PartialEq)]
pub struct NemesisSwarm {
    /// Mean simulated time between two fault starts.
    pub interval_ms: u64,
    /// Longest one fault lasts.
    pub outage_ms_max: u64,
    /// How many faults may be active at once.
    pub concurrent_faults_max: usize,
    /// The scenario's fault classes with their weights (0 = not this seed), in the scenario's order.
    pub weights: Vec<(FaultClass, u32)>,
    /// Upper bound of a slow sync's latency (0 when the scenario has no slow fsyncs).
    pub fsync_latency_ms_max: u64,
    /// Upper bound of the fsync error probability (0 when the scenario has no failing fsyncs).
    pub fsync_error_probability_max: f64,
    /// Upper bound of each of the EIO and ENOSPC write error probabilities (0 = no write errors).
    pub write_error_probability_max: f64,
    /// Upper bound of the metadata store's write error probability.
    pub meta_write_error_probability_max: f64,
    /// Upper bound of a packet-loss fault's rate (0 when the scenario has no packet loss).
    pub packet_loss_max: f64,
    /// Upper bound of a clock skew's size, either way (0 when the scenario has no clock skew).
    pub clock_skew_ms_max: u64,
}

/// The workload's shape, drawn per seed.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkloadSwarm {
    Queue(QueueSwarm),
    /// The queue workload with idempotent producers set up as the second field says.
    IdempotentQueue(QueueSwarm, Idempotence),
    Metadata(MetaSwarm),
}

/// The queue workload's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSwarm {
    pub partitions: u32,
    pub producer_nodes: u32,
    pub processes_per_node: u32,
    pub linger_ms: u64,
    pub think_ms_max: u64,
    /// Consumer processes, each on its own client node, polling partitions at their tails.
    pub consumers: u32,
    /// Longest a consumer's poll waits for records (drawn per poll up to this).
    pub poll_wait_ms_max: u64,
    /// Seed of the workload's own RNG (workloads take an injected RNG; see [`crate::workload`]).
    pub rng_seed: u64,
    /// The producers' batch limit: small ones split lingering records over many batches.
    pub batch_bytes_max: usize,
    /// Percent of sends to partition 0 (key skew; the rest spread evenly).
    pub hot_partition_percent: u32,
    /// The codec of each producer node's batches, in node order (empty: all uncompressed).
    pub compression: Vec<Compression>,
    /// The topic's log settings (scenarios with retention; `None`: the defaults, nothing deleted in
    /// a run's time).
    pub log: Option<TopicLog>,
    /// A compacted topic: every value carries one of this many keys (scenarios with compaction).
    pub compaction_keys: Option<u64>,
}

/// A topic's retention as a seed draws it (at least one limit set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicLog {
    pub segment_bytes: u64,
    /// -1: no size limit.
    pub retention_bytes: i64,
    /// -1: no time limit.
    pub retention_ms: i64,
    /// The cleanup policy is compact (ADR 0022) rather than delete.
    pub compact: bool,
}

/// Draws retention small enough to delete many segments in a run: segments of 1-16 KiB, a size
/// limit of 4-64 KiB and a time limit of 1-8 s, each limit left out on some seeds (never both).
fn draw_topic_log(rng: &mut impl Rng) -> TopicLog {
    let segment_bytes = [1_024, 4_096, 16_384][rng.gen_range(0..3)];
    let mut retention_bytes = [-1, 4_096, 16_384, 65_536][rng.gen_range(0..4)];
    let retention_ms = [-1, 1_000, 3_000, 8_000][rng.gen_range(0..4)];
    if retention_bytes == -1 && retention_ms == -1 {
        retention_bytes = 16_384;
    }
    TopicLog { segment_bytes, retention_bytes, retention_ms, compact: false }
}

/// Producer request timeouts the idempotent scenarios draw from: short, so that a slow answer (an
/// fsync, a replica behind, a delayed link) already makes a write ambiguous and the producer sends
/// it again, and the broker has to recognise the copy.
pub const IDEMPOTENT_REQUEST_TIMEOUTS_MS: [u64; 4] = [100, 200, 400, 1_000];
/// Delivery timeouts the idempotent scenarios draw from: mostly longer than the faulty phase, so a
/// record rides out every fault and ends `ok` (or definitely failed); one draw in four is short, so
/// records also expire with attempts in flight (their outcome is then unknown: at most once).
pub const IDEMPOTENT_DELIVERY_TIMEOUTS_MS: [u64; 4] = [4_000, 30_000, 30_000, 30_000];
/// The idempotent producers' `in_flight_max` (requests over all partitions; at most
/// `keel::client::producer::IDEMPOTENT_IN_FLIGHT_MAX` per partition whatever it is).
pub const IDEMPOTENT_IN_FLIGHT_MAX_CHOICES: [usize; 4] = [1, 2, 5, 16];
/// How many sends one idempotent producer process keeps outstanding. Several let one process have
/// several batches of a partition in flight, whose order the exactly-once checker then judges.
pub const IDEMPOTENT_SENDS_OUTSTANDING_CHOICES: [usize; 4] = [1, 2, 5, 10];

fn draw_idempotence(rng: &mut impl Rng) -> Idempotence {
    Idempotence {
        request_timeout_ms: IDEMPOTENT_REQUEST_TIMEOUTS_MS[rng.gen_range(0..4)],
        delivery_timeout_ms: IDEMPOTENT_DELIVERY_TIMEOUTS_MS[rng.gen_range(0..4)],
        in_flight_max: IDEMPOTENT_IN_FLIGHT_MAX_CHOICES[rng.gen_range(0..4)],
        sends_outstanding_max: IDEMPOTENT_SENDS_OUTSTANDING_CHOICES[rng.gen_range(0..4)],
    }
}

/// The metadata workload's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaSwarm {
    pub admin_processes: u64,
    /// How many distinct topic names the processes pick from (small pools make creates and
    /// deletes collide on purpose).
    pub names_pool: usize,
    pub think_ms_max: u64,
    /// Relative weights of create, delete, describe, list.
    pub op_weights: [u32; 4],
    /// Seed of the workload's own RNG.
    pub rng_seed: u64,
}

/// A fault class's weight for this seed.
fn draw_weight(rng: &mut impl Rng, use_: Use) -> u32 {
    match use_ {
        Use::Off => 0,
        Use::Sometimes if rng.gen_bool(0.25) => 0,
        Use::Sometimes | Use::Always => rng.gen_range(1..=4),
    }
}

/// The harness's one weighted draw: an item with probability proportional to its weight, `None`
/// when every weight is 0.
pub fn pick_weighted<T: Copy>(rng: &mut impl Rng, weighted: &[(T, u32)]) -> Option<T> {
    let total: u32 = weighted.iter().map(|(_, weight)| weight).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rng.gen_range(0..total);
    for &(item, weight) in weighted {
        if ticket < weight {
            return Some(item);
        }
        ticket -= weight;
    }
    None
}

impl Swarm {
    /// Draws the seed's parameters from madsim's seeded RNG.
    pub fn draw(scenario: &Scenario) -> Swarm {
        let mut rng = thread_rng();
        let weights = scenario.faults.iter().map(|&(class, use_)| (class, draw_weight(&mut rng, use_))).collect();
        let nemesis = NemesisSwarm {
            interval_ms: rng.gen_range(200..=2_000),
            outage_ms_max: rng.gen_range(300..=4_000),
            concurrent_faults_max: rng.gen_range(1..=3),
            weights,
            fsync_latency_ms_max: if scenario.uses(FaultClass::SlowFsync) {
                [1, 5, 20, 100, 500][rng.gen_range(0..5)]
            } else {
                0
            },
            fsync_error_probability_max: if scenario.uses(FaultClass::FailedFsync) {
                [0.01, 0.05, 0.2, 0.5][rng.gen_range(0..4)]
            } else {
                0.0
            },
            write_error_probability_max: if scenario.uses(FaultClass::FailedWrite) {
                [0.01, 0.05, 0.2, 0.5][rng.gen_range(0..4)]
            } else {
                0.0
            },
            meta_write_error_probability_max: [0.05, 0.3, 1.0][rng.gen_range(0..3)],
            packet_loss_max: if scenario.uses(FaultClass::PacketLoss) {
                [0.01, 0.05, 0.15, 0.3][rng.gen_range(0..4)]
            } else {
                0.0
            },
            clock_skew_ms_max: if scenario.uses(FaultClass::ClockSkew) {
                [100, 2_000, 10_000, 120_000][rng.gen_range(0..4)]
            } else {
                0
            },
        };
        let workload = match scenario.workload {
            WorkloadKind::Queue | WorkloadKind::IdempotentQueue => {
                let mut queue = QueueSwarm {
                    partitions: rng.gen_range(1..=4),
                    producer_nodes: rng.gen_range(1..=3),
                    processes_per_node: rng.gen_range(1..=4),
                    linger_ms: [0, 1, 2, 5, 10][rng.gen_range(0..5)],
                    think_ms_max: [0, 2, 10, 50][rng.gen_range(0..4)],
                    consumers: rng.gen_range(1..=3),
                    poll_wait_ms_max: [0, 5, 20, 200][rng.gen_range(0..4)],
                    rng_seed: rng.gen(),
                    batch_bytes_max: [256, 2_048, 65_536, 262_144][rng.gen_range(0..4)],
                    hot_partition_percent: [0, 0, 50, 90][rng.gen_range(0..4)],
                    compression: Vec::new(),
                    log: None,
                    compaction_keys: None,
                };
                // Drawn last, so that the plain queue scenarios draw exactly what they drew before.
                if scenario.retention {
                    queue.log = Some(draw_topic_log(&mut rng));
                }
                if scenario.compact {
                    let segment_bytes = [1_024, 4_096][rng.gen_range(0..2)];
                    queue.log = Some(TopicLog { segment_bytes, retention_bytes: -1, retention_ms: -1, compact: true });
                    queue.compaction_keys = Some([2, 8, 32][rng.gen_range(0..3)]);
                }
                if let Some(partitions) = scenario.partitions {
                    queue.partitions = partitions;
                }
                if scenario.compression {
                    queue.compression = (0..queue.producer_nodes)
                        .map(|_| Compression::ALL[rng.gen_range(0..Compression::ALL.len())])
                        .collect();
                }
                if scenario.workload == WorkloadKind::IdempotentQueue {
                    WorkloadSwarm::IdempotentQueue(queue, draw_idempotence(&mut rng))
                } else {
                    WorkloadSwarm::Queue(queue)
                }
            }
            WorkloadKind::Metadata => WorkloadSwarm::Metadata(MetaSwarm {
                admin_processes: rng.gen_range(2..=5),
                names_pool: [2, 4, 8, 64][rng.gen_range(0..4)],
                think_ms_max: [0, 5, 20, 100][rng.gen_range(0..4)],
                op_weights: [rng.gen_range(1..=4), rng.gen_range(0..=3), rng.gen_range(1..=3), rng.gen_range(0..=2)],
                rng_seed: rng.gen(),
            }),
        };
        let buggify = rng.gen_bool(0.5);
        let snapshot_interval_entries = [8, 32, 128, 1_000, 10_000][rng.gen_range(0..5)];
        Swarm { nemesis, workload, buggify, snapshot_interval_entries }
    }
}
