//! The one simulation driver: runs any [`Scenario`] for one seed.
//!
//! In: a scenario (config, workload, checkers) and madsim's seed. Out: an [`Outcome`], printed
//! with the checkers' reports and, last, `seed=<n> trace_hash=<hex>`; with `KEEL_SIM_HISTORY=DIR`
//! the run's history in `DIR/<scenario>-<seed>.jsonl` ([`crate::history_file`]).
//!
//! # Phases
//! 1. Setup: draw the [`Swarm`]; start the brokers (all voters of one metadata group, each over a
//!    `SimDisk` and a `SimKv` that outlive restarts) and, for the Raft checker, the observers; wait
//!    until every broker serves (and, for the metadata workload, a leader exists), within
//!    [`SETUP_MS_MAX`].
//! 2. Workload: the queue workload creates its topic and starts producers and consumers on client
//!    nodes; the metadata workload starts its admin processes.
//! 3. Nemesis ([`crate::nemesis`]) for the scenario's `duration`, then the required faults are
//!    checked: one that did not count fails the seed.
//! 4. Heal: the supervisor (if any) judges exits first, then every fault ends and every broker is up.
//! 5. Liveness, each within [`LIVENESS_MS_MAX`]: queue: the broker serves, sends are acked in the
//!    [`AFTER_HEAL_MS`] after the heal (or, if none was yet, before the liveness bound), the final reader reads every partition to its high
//!    watermark; metadata: a leader, a create through every broker, every node converged, the
//!    final topic list read.
//! 6. Verdict ([`crate::outcome`]): the checkers over the histories, the Raft checker, every
//!    violation recorded during the run.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::config::BrokerConfig;
use keel::partition::FsyncPolicy;
use keel_model::history::{Offset as HistoryOffset, Partition, ProcessId};
use madsim::rand::{thread_rng, Rng};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::{BrokerState, Cluster, BROKER_PORT};
use crate::durable_acks::ReplicaDisk;
use crate::group_workload::{self, GroupRecorder, MemberProcess};
use crate::history_file::{self, HistoryFile, NemesisEvent};
use crate::isr_watch::{self, IsrWatch};
use crate::meta_workload::{self, AdminProcess, MetaRecorder};
use crate::monitor::{leader, wait_converged, RaftMonitor, Supervisor};
use crate::nemesis::{FaultCounts, Nemesis};
use crate::outcome::{acked_operations, Outcome, Verdicts, TRACE_TAIL_LINES};
use crate::scenario::{Checker, Scenario, WorkloadKind};
use crate::swarm::{MetaSwarm, QueueSwarm, Swarm, TopicLog, WorkloadSwarm};
use crate::trace::Trace;
use crate::workload::{client_config, Consumer, DurableAcks, Idempotence, ProducerNode, Recorder};

/// How long the setup may take (every broker serving, a first leader elected), simulated time.
pub const SETUP_MS_MAX: u64 = 10_000;
/// The liveness bound, simulated milliseconds: after the heal (and after the workload stopped),
/// everything the scenario's liveness phase asks for must happen within it.
pub const LIVENESS_MS_MAX: u64 = 10_000;
/// The final reader reads the partitions one after another; beyond a few, each may first have to
/// be opened (recovered: a scan and a few fsyncs) at that request, since a broker opens an idle
/// leader's log lazily (issue 15). This much more liveness bound per partition.
pub const FINAL_READ_MS_PER_PARTITION: u64 = 500;

/// The final read's liveness bound: `LIVENESS_MS_MAX`, plus `FINAL_READ_MS_PER_PARTITION` per
/// partition beyond the 4 the other scenarios draw at most.
fn final_read_bound(partitions: u32) -> Duration {
    let extra = u64::from(partitions.saturating_sub(4)) * FINAL_READ_MS_PER_PARTITION;
    Duration::from_millis(LIVENESS_MS_MAX + extra)
}

/// How long the queue workload keeps running after the heal (acks must resume in it).
pub const AFTER_HEAL_MS: u64 = 2_000;
/// How long the workload may take to stop after it is told to (an operation takes at most a few
/// request timeouts), simulated milliseconds.
pub const WORKLOAD_STOP_MS_MAX: u64 = 15_000;
/// The queue workload's topic.
pub const TOPIC: &str = "t";
/// How often the simulated brokers apply retention (the scenarios with retention delete segments
/// within seconds; the default, 30 s, is longer than a run).
pub const RETENTION_CHECK_INTERVAL_MS: u64 = 200;

/// Where a run writes its history (`KEEL_SIM_HISTORY` by default).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub history_dir: Option<PathBuf>,
    /// Print nothing (the campaign prints its own table and only the failures).
    pub quiet: bool,
    /// End the faulty phase this far into it (`KEEL_SIM_CUT_MS`; `sim/shrink`): the run up to
    /// there is the whole run's prefix, then the heal and the checks as usual. A required fault
    /// may not have come yet, so that check is skipped.
    pub cut: Option<Duration>,
}

impl RunOptions {
    pub fn from_env() -> RunOptions {
        let cut = std::env::var("KEEL_SIM_CUT_MS").ok().map(|ms| {
            Duration::from_millis(ms.parse().unwrap_or_else(|_| panic!("KEEL_SIM_CUT_MS={ms:?}: not a number of ms")))
        });
        RunOptions { history_dir: std::env::var_os("KEEL_SIM_HISTORY").map(PathBuf::from), quiet: false, cut }
    }
}

/// Runs `scenario` in the current madsim runtime and prints its reports and, last,
/// `seed=<n> trace_hash=<hex>`. Does not assert: see [`Outcome::assert_valid`].
pub async fn run(scenario: &Scenario) -> Outcome {
    run_with(scenario, RunOptions::from_env()).await
}

pub async fn run_with(scenario: &Scenario, options: RunOptions) -> Outcome {
    let mut run = Run::setup(scenario).await;
    let mut workload = run.start_workload().await;
    run.nemesis(workload.clients(), workload.producer_clients(), options.cut).await;
    run.heal();
    match &mut workload {
        Workload::Queue(queue) => run.queue_liveness(queue).await,
        Workload::Metadata(metadata) => run.metadata_liveness(metadata).await,
    }
    run.finish(workload, &options).await
}

/// Runs `scenario` for `seed` in a fresh madsim runtime on a fresh OS thread (madsim keeps its state
/// in thread-locals), for plain `#[test]`s that loop over seeds.
pub fn run_seed(scenario: Scenario, seed: u64) -> Outcome {
    run_seed_with(scenario, seed, RunOptions::from_env())
}

pub fn run_seed_with(scenario: Scenario, seed: u64, options: RunOptions) -> Outcome {
    std::thread::spawn(move || {
        let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        runtime.block_on(async move { run_with(&scenario, options).await })
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// One run's state, from setup to verdict.
struct Run {
    scenario: Scenario,
    seed: u64,
    start: Instant,
    trace: Trace,
    swarm: Swarm,
    cluster: Cluster,
    monitor: Option<RaftMonitor>,
    supervisor: Option<Supervisor>,
    /// The controller's ISR timeline, for the min-ISR checker.
    isr_watch: Option<IsrWatch>,
    violations: Vec<String>,
    faults: FaultCounts,
    nemesis_actions: usize,
}

/// The running workload.
enum Workload {
    /// Boxed: the workload's RNG makes it large.
    Queue(Box<QueueRun>),
    Metadata(MetaRun),
}

struct QueueRun {
    swarm: QueueSwarm,
    recorder: Arc<Recorder>,
    rng: StdRng,
    stop: CancellationToken,
    workers: Vec<JoinHandle<()>>,
    next_process: u64,
    clients: Vec<usize>,
    /// The client nodes of `clients` that run producers.
    producer_clients: Vec<usize>,
    /// Each partition's log start as the final read saw it (all 0 without retention).
    log_starts: std::collections::BTreeMap<u32, i64>,
    /// The consumer group's members and observer, when the scenario has them.
    group: Option<GroupRun>,
    /// The push subscribers, when the scenario has them.
    push: Option<PushRun>,
}

/// Longest the push subscribers may take to catch up after the final read while they move.
const PUSH_CATCH_UP_MS_MAX: u64 = 60_000;

struct PushRun {
    stop: CancellationToken,
    hurry: Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    positions: Arc<Mutex<std::collections::BTreeMap<u32, i64>>>,
}

struct GroupRun {
    recorder: Arc<GroupRecorder>,
    stop: CancellationToken,
    workers: Vec<JoinHandle<()>>,
}

struct MetaRun {
    recorder: MetaRecorder,
    stop: CancellationToken,
    workers: Vec<JoinHandle<()>>,
    final_topics: Option<Vec<String>>,
}

impl Workload {
    /// Client nodes that run the workload (the nemesis may clog them).
    fn clients(&self) -> Vec<usize> {
        match self {
            Workload::Queue(queue) => queue.clients.clone(),
            Workload::Metadata(_) => Vec::new(),
        }
    }

    /// The client nodes among [`Workload::clients`] that run producers.
    fn producer_clients(&self) -> Vec<usize> {
        match self {
            Workload::Queue(queue) => queue.producer_clients.clone(),
            Workload::Metadata(_) => Vec::new(),
        }
    }
}

impl Run {
    async fn setup(scenario: &Scenario) -> Run {
        let seed = madsim::runtime::Handle::current().seed();
        let start = Instant::now();
        let trace = Trace::new();
        let swarm = Swarm::draw(scenario);
        // Coverage counts and BUGGIFY live per thread: start this run's afresh.
        let _ = keel::sometimes::take();
        keel::buggify::enable(swarm.buggify);
        let what = format!(
            "scenario {} seed {seed} brokers {} fsync {:?} swarm {swarm:?}",
            scenario.name, scenario.brokers, scenario.fsync
        );
        trace.record(0, what);
        let mut cluster = Cluster::new(trace.clone(), start);
        for config in broker_configs(scenario, &swarm) {
            let disk_seed = thread_rng().gen::<u64>();
            cluster.add_broker(config, disk_seed);
        }
        let monitor = scenario.checks(Checker::Raft).then(|| RaftMonitor::start(&cluster, &trace, start));
        let isr_watch = scenario.checks(Checker::MinIsrAcks).then(|| IsrWatch::start(&cluster, TOPIC, start));
        let mut run = Run {
            scenario: scenario.clone(),
            seed,
            start,
            trace,
            swarm,
            cluster,
            monitor,
            supervisor: None,
            isr_watch,
            violations: Vec::new(),
            faults: FaultCounts::new(),
            nemesis_actions: 0,
        };
        run.wait_ready().await;
        run
    }

    /// Every broker serves and, for the metadata workload, a leader exists: before any fault.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(SETUP_MS_MAX);
        for index in 0..self.cluster.broker_count() {
            if !self.cluster.wait_serving(index, deadline.saturating_duration_since(Instant::now())).await {
                self.violations.push(format!("setup: broker-{} did not start serving", index + 1));
            }
        }
        if self.scenario.workload != WorkloadKind::Metadata && self.scenario.brokers == 1 {
            return;
        }
        while leader(&self.cluster).is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match leader(&self.cluster) {
            Some(index) => self.note(format!("setup: broker-{} leads", index + 1)),
            None => self.violations.push(format!("setup: no Raft leader within {SETUP_MS_MAX} ms")),
        }
    }

    fn note(&self, what: String) {
        self.trace.record(self.cluster.now_ns(), what);
    }

    async fn start_workload(&mut self) -> Workload {
        match self.swarm.workload.clone() {
            WorkloadSwarm::Queue(swarm) => Workload::Queue(Box::new(self.start_queue(swarm, None).await)),
            WorkloadSwarm::IdempotentQueue(swarm, idempotence) => {
                Workload::Queue(Box::new(self.start_queue(swarm, Some(idempotence)).await))
            }
            WorkloadSwarm::Metadata(swarm) => Workload::Metadata(self.start_metadata(&swarm)),
        }
    }

    /// Creates the topic (before any fault), then starts the producers (idempotent ones with
    /// `idempotence`) and the consumers, each client node with its own RNG seeded from the
    /// workload's.
    async fn start_queue(&mut self, swarm: QueueSwarm, idempotence: Option<Idempotence>) -> QueueRun {
        let addr = self.bootstrap();
        let replication = self.scenario.replication;
        let recorder = Recorder::new(self.start, self.trace.clone(), self.scenario.durable());
        if self.scenario.fsync == FsyncPolicy::Always {
            let disks = (0..self.cluster.broker_count())
                .map(|index| {
                    let broker = self.cluster.broker(index);
                    ReplicaDisk { disk: broker.disk.clone(), rotted: broker.rotted.clone() }
                })
                .collect();
            let min_isr = replication.min(2) as usize;
            recorder.check_durable_acks(DurableAcks { disks, topic: TOPIC.to_owned(), min_isr });
        }
        let admin = self.cluster.add_client();
        let partitions = swarm.partitions;
        let created = admin
            .spawn(create_topic(addr.clone(), partitions, replication, swarm.log))
            .await
            .expect("the admin task is never killed");
        if let Err(error) = created {
            self.violations.push(format!("could not create the topic: {error}"));
        }
        let what = format!(
            "topic {TOPIC} created with {partitions} partitions, replication {replication}, log {:?}",
            swarm.log
        );
        self.trace.record(recorder.now_ns(), what);
        let mut queue = QueueRun {
            rng: StdRng::seed_from_u64(swarm.rng_seed),
            swarm,
            recorder,
            stop: CancellationToken::new(),
            workers: Vec::new(),
            next_process: 0,
            clients: Vec::new(),
            producer_clients: Vec::new(),
            log_starts: std::collections::BTreeMap::new(),
            group: None,
            push: None,
        };
        for index in 0..queue.swarm.producer_nodes {
            let node = self.cluster.add_client();
            let processes = (0..queue.swarm.processes_per_node).map(|_| queue.next_process()).collect();
            // Half the producer nodes (the first among them) speak Kafka when the scenario says so.
            if self.scenario.kafka && index % 2 == 0 {
                let kafka_node = crate::kafka_workload::KafkaProducerNode {
                    bootstrap: (0..self.cluster.broker_count()).map(crate::cluster::kafka_addr).collect(),
                    topic: TOPIC.to_owned(),
                    partitions,
                    processes,
                    think_ms_max: queue.swarm.think_ms_max,
                    hot_partition_percent: queue.swarm.hot_partition_percent,
                    rng: StdRng::seed_from_u64(queue.rng.random()),
                };
                queue.workers.push(node.spawn(kafka_node.run(queue.recorder.clone(), queue.stop.clone())));
                queue.producer_clients.push(self.cluster.client_count() - 1);
                continue;
            }
            let producer_node = ProducerNode {
                addr: addr.clone(),
                topic: TOPIC.to_owned(),
                partitions,
                processes,
                linger: Duration::from_millis(queue.swarm.linger_ms),
                think_ms_max: queue.swarm.think_ms_max,
                batch_bytes_max: queue.swarm.batch_bytes_max,
                compression: queue.swarm.compression.get(index as usize).copied().unwrap_or_default(),
                hot_partition_percent: queue.swarm.hot_partition_percent,
                compaction_keys: queue.swarm.compaction_keys,
                idempotence,
                rng: StdRng::seed_from_u64(queue.rng.random()),
            };
            queue.workers.push(node.spawn(producer_node.run(queue.recorder.clone(), queue.stop.clone())));
            queue.producer_clients.push(self.cluster.client_count() - 1);
        }
        for _ in 0..queue.swarm.consumers {
            let node = self.cluster.add_client();
            let consumer = Consumer {
                addr: addr.clone(),
                topic: TOPIC.to_owned(),
                partitions,
                process: queue.next_process(),
                max_wait_max: Duration::from_millis(queue.swarm.poll_wait_ms_max),
                rng: StdRng::seed_from_u64(queue.rng.random()),
                retained: queue.swarm.log.is_some(),
            };
            queue.workers.push(node.spawn(consumer.run(queue.recorder.clone(), queue.stop.clone())));
        }
        if idempotence.is_some() {
            let node = self.cluster.add_client();
            let replayer = crate::replayer::Replayer {
                addr: addr.clone(),
                topic: TOPIC.to_owned(),
                partitions,
                rng: StdRng::seed_from_u64(queue.rng.random()),
            };
            queue.workers.push(node.spawn(replayer.run(queue.recorder.clone(), queue.stop.clone())));
        }
        if self.scenario.groups {
            queue.group = Some(self.start_group(&mut queue, &addr));
        }
        if self.scenario.push {
            queue.push = Some(self.start_push(&mut queue, &addr));
        }
        // Every client node but the admin's (index 0, idle from here on) runs the workload.
        queue.clients = (1..self.cluster.client_count()).collect();
        queue
    }

    /// The consumer group's member processes (2-4, each on its own client node, drawn from the
    /// workload's RNG after everything else so other scenarios' draws stay as they were) and its
    /// observer.
    fn start_group(&mut self, queue: &mut QueueRun, addr: &str) -> GroupRun {
        let recorder = GroupRecorder::new(self.start, self.trace.clone());
        let stop = CancellationToken::new();
        let mut workers = Vec::new();
        let members = queue.rng.random_range(2..=4);
        let assignor = if queue.rng.random_bool(0.5) { "range" } else { "roundrobin" };
        let session_timeout_ms = queue.rng.random_range(600..=3_000);
        self.note(format!(
            "group: {members} member processes, assignor {assignor}, session timeout {session_timeout_ms} ms"
        ));
        for _ in 0..members {
            let node = self.cluster.add_client();
            let member = MemberProcess {
                addr: addr.to_owned(),
                topic: TOPIC.to_owned(),
                process: queue.next_process().0,
                session_timeout_ms,
                assignor,
                crash_percent: 30,
                lifetime_ms_max: 8_000,
                zombie_percent: 25,
                rng: StdRng::seed_from_u64(queue.rng.random()),
            };
            workers.push(node.spawn(member.run(recorder.clone(), stop.clone())));
        }
        let node = self.cluster.add_client();
        let interval = Duration::from_millis(200);
        workers.push(node.spawn(group_workload::observe(
            addr.to_owned(),
            TOPIC.to_owned(),
            interval,
            recorder.clone(),
            stop.clone(),
        )));
        GroupRun { recorder, stop, workers }
    }

    /// One subscriber process per partition, on one client node, with a window and think time
    /// drawn from the workload's RNG after everything else (other scenarios' draws stay as they
    /// were).
    fn start_push(&mut self, queue: &mut QueueRun, addr: &str) -> PushRun {
        let (window, think_ms_max) = crate::push_workload::draw_window(&mut queue.rng);
        self.note(format!("push: a subscriber per partition, window {window:?}, think up to {think_ms_max} ms"));
        let stop = CancellationToken::new();
        let positions = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let hurry = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let node = self.cluster.add_client();
        let mut workers = Vec::new();
        for partition in 0..queue.swarm.partitions {
            let subscriber = crate::push_workload::Subscriber {
                addr: addr.to_owned(),
                topic: TOPIC.to_owned(),
                partition,
                process: queue.next_process(),
                window,
                think_ms_max,
                retained: queue.swarm.log.is_some(),
                rng: StdRng::seed_from_u64(queue.rng.random()),
                positions: positions.clone(),
                hurry: hurry.clone(),
            };
            workers.push(node.spawn(subscriber.run(queue.recorder.clone(), stop.clone())));
        }
        PushRun { stop, hurry, workers, positions }
    }

    /// After the final read: every subscriber, thinking no more, reaches its partition's final high
    /// watermark; a subscriber that stands still for [`LIVENESS_MS_MAX`] (or is not there after
    /// [`PUSH_CATCH_UP_MS_MAX`]) is a violation. Then they stop, before the queue history is checked.
    async fn push_catch_up(
        &mut self,
        queue: &mut QueueRun,
        high_watermarks: Option<&std::collections::BTreeMap<u32, i64>>,
    ) {
        let Some(push) = queue.push.take() else { return };
        push.hurry.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(high_watermarks) = high_watermarks {
            let behind = || {
                let positions = crate::lock(&push.positions);
                let behind: Vec<(u32, i64, i64)> = high_watermarks
                    .iter()
                    .map(|(partition, hw)| (*partition, positions.get(partition).copied().unwrap_or(0), *hw))
                    .filter(|(_, position, hw)| position < hw)
                    .collect();
                behind
            };
            let started = Instant::now();
            let (mut last, mut moved_at) = (behind(), Instant::now());
            while !last.is_empty()
                && moved_at.elapsed() < Duration::from_millis(LIVENESS_MS_MAX)
                && started.elapsed() < Duration::from_millis(PUSH_CATCH_UP_MS_MAX)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = behind();
                if now != last {
                    (last, moved_at) = (now, Instant::now());
                }
            }
            if last.is_empty() {
                let waited = started.elapsed().as_millis();
                self.note(format!("push: every subscriber reached the final high watermark after {waited} ms"));
            } else {
                self.violations.push(format!(
                    "push: subscribers (partition, position, final high watermark) {last:?} behind {} ms after the final read",
                    started.elapsed().as_millis()
                ));
            }
        }
        push.stop.cancel();
        self.stop_workers(push.workers, "a subscriber hung").await;
    }

    /// After the final read: the group's members keep consuming until the committed offsets reach
    /// the final high watermarks (within the liveness bound), then leave; the group checker judges
    /// what they recorded.
    async fn group_catch_up(&mut self, queue: &mut QueueRun, high_watermarks: &std::collections::BTreeMap<u32, i64>) {
        let Some(group) = queue.group.take() else { return };
        let deadline = Instant::now() + Duration::from_millis(LIVENESS_MS_MAX);
        let caught_up = |latest: &std::collections::BTreeMap<u32, i64>| {
            high_watermarks.iter().all(|(partition, hw)| latest.get(partition).copied().unwrap_or(0) >= *hw)
        };
        while !caught_up(&group.recorder.latest()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let latest = group.recorder.latest();
        if !caught_up(&latest) {
            self.violations.push(format!(
                "group: committed offsets {latest:?} short of the high watermarks {high_watermarks:?} {LIVENESS_MS_MAX} ms after the final read"
            ));
        }
        group.stop.cancel();
        self.stop_workers(group.workers, "a group member or the observer hung").await;
        let node = self.cluster.add_client();
        let bound = Duration::from_millis(LIVENESS_MS_MAX);
        let read = node.spawn(group_workload::final_committed(self.bootstrap(), TOPIC.to_owned(), bound));
        let final_committed = match read.await.expect("the reader task is never killed") {
            Ok(committed) => committed,
            Err(error) => return self.violations.push(format!("group: {error}")),
        };
        let mut history = group.recorder.history();
        history.final_committed = final_committed;
        history.log_starts = queue.log_starts.clone();
        history.acked = acked_offsets(&queue.recorder.history(), queue.swarm.partitions);
        let report = keel_model::group_checker::check(&history);
        self.note(format!(
            "group: checked {} generations, {} polls counted ({} a zombie's), {} commits acked, {} records; anomalies {:?}",
            report.generations, report.polls_counted, report.polls_zombie, report.commits_ok, report.records_checked, report.anomalies
        ));
        for (anomaly, examples) in report.anomalies {
            self.violations.push(format!("group: {anomaly}: {examples:?}"));
        }
    }

    /// Starts the admin processes, each on its own client node with its own RNG.
    fn start_metadata(&mut self, swarm: &MetaSwarm) -> MetaRun {
        let addrs: Vec<String> =
            (0..self.cluster.broker_count()).map(|index| self.cluster.broker_addr(index)).collect();
        let recorder = MetaRecorder::new(self.start);
        let names: Arc<Vec<String>> = Arc::new((0..swarm.names_pool).map(|n| format!("topic-{n}")).collect());
        let stop = CancellationToken::new();
        let mut rng = StdRng::seed_from_u64(swarm.rng_seed);
        let mut workers = Vec::new();
        for process in 1..=swarm.admin_processes {
            let node = self.cluster.add_client();
            let admin = AdminProcess {
                rng: StdRng::seed_from_u64(rng.random()),
                process,
                addrs: addrs.clone(),
                names: names.clone(),
                think_ms_max: swarm.think_ms_max,
                weights: swarm.op_weights,
            };
            workers.push(node.spawn(admin.run(recorder.clone(), stop.clone())));
        }
        MetaRun { recorder, stop, workers, final_topics: None }
    }

    /// The nemesis phase, then the check that every required fault counted.
    async fn nemesis(&mut self, workload_clients: Vec<usize>, producer_clients: Vec<usize>, cut: Option<Duration>) {
        self.supervisor = self.monitor.as_ref().map(|monitor| monitor.supervisor(&self.cluster));
        let Run { scenario, swarm, cluster, supervisor, .. } = self;
        let nemesis = Nemesis::new(cluster, scenario, &swarm.nemesis, supervisor.as_mut(), workload_clients)
            .producer_clients(producer_clients)
            .cut(cut);
        self.faults = nemesis.run(self.scenario.duration).await;
        self.nemesis_actions = self.trace.count_prefixed("nemesis");
        self.note(format!("faults injected {:?}", self.faults));
        if let Some(cut) = cut.filter(|cut| *cut < self.scenario.duration) {
            self.note(format!("faulty phase cut at {} ms (required faults not checked)", cut.as_millis()));
            return;
        }
        for class in self.scenario.required() {
            if self.faults.get(&class).copied().unwrap_or(0) == 0 {
                let message = format!(
                    "scenario {} is about {class:?} faults, but the nemesis injected none that counts",
                    self.scenario.name
                );
                self.note(format!("violation {message}"));
                self.violations.push(message);
            }
        }
    }

    /// Ends every fault. Exits that happened just before are judged first (the heal restarts
    /// exited brokers).
    fn heal(&mut self) {
        let Some(supervisor) = self.supervisor.as_mut() else {
            self.cluster.heal();
            return;
        };
        supervisor.restart_stopped_raft_nodes(&mut self.cluster, &Default::default());
        let restarted_by_heal: Vec<usize> = (0..self.cluster.broker_count())
            .filter(|&index| {
                !self.cluster.is_up(index) || matches!(self.cluster.broker_state(index), BrokerState::Exited(_))
            })
            .collect();
        self.cluster.heal();
        for index in restarted_by_heal {
            supervisor.restarted(&self.cluster, index);
        }
    }

    /// Queue liveness: the broker serves, sends are acked again, the final read finishes.
    async fn queue_liveness(&mut self, queue: &mut QueueRun) {
        let deadline = Instant::now() + Duration::from_millis(LIVENESS_MS_MAX);
        for index in 0..self.cluster.broker_count() {
            if !self.cluster.wait_serving(index, deadline.saturating_duration_since(Instant::now())).await {
                let name = index + 1;
                self.violations.push(format!("broker-{name} not serving {LIVENESS_MS_MAX} ms after the heal"));
            }
        }
        let acked_at_heal = queue.recorder.sends_acked();
        tokio::time::sleep(Duration::from_millis(AFTER_HEAL_MS)).await;
        // Replicated partitions may need longer (a metadata leader, registrations, followers back in
        // the ISR): keep the workload going until a send is acked, within the liveness bound.
        while queue.recorder.sends_acked() == acked_at_heal && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        queue.stop.cancel();
        self.stop_workers(std::mem::take(&mut queue.workers), "a send or poll hung").await;
        let acked_after_heal = queue.recorder.sends_acked() - acked_at_heal;
        self.trace.record(
            queue.recorder.now_ns(),
            format!("workload stopped; {acked_after_heal} sends acked after the heal"),
        );
        if acked_after_heal == 0 {
            self.violations.push(format!("no send was acked in the {LIVENESS_MS_MAX} ms after the heal"));
        }
        let high_watermarks = self.final_read(queue).await;
        let stats = self.cluster.broker(0).disk.stats();
        self.trace.record(queue.recorder.now_ns(), format!("disk stats {stats:?}"));
        self.check_file_budget();
        if self.scenario.checks(Checker::FullIsr) {
            match isr_watch::wait_full_isr(&self.cluster, TOPIC, Duration::from_millis(LIVENESS_MS_MAX)).await {
                Ok(view) => self.note(format!("full ISR: every replica in its partition's ISR {view:?}")),
                Err(violation) => self.violations.push(violation),
            }
        }
        self.push_catch_up(queue, high_watermarks.as_ref()).await;
        if let Some(high_watermarks) = &high_watermarks {
            self.group_catch_up(queue, high_watermarks).await;
        }
        if let (Some(high_watermarks), true) = (high_watermarks, self.scenario.checks(Checker::Replicas)) {
            self.check_replicas(&high_watermarks).await;
        }
    }

    /// With an open-file budget, no simulated disk may have refused a descriptor: the disks refuse
    /// past the budget (plus `SIM_DESCRIPTOR_SLACK`), which `keel::storage::handles` holds as a bound.
    fn check_file_budget(&mut self) {
        let Some(files_max) = self.scenario.open_files_max else { return };
        for index in 0..self.cluster.broker_count() {
            let stats = self.cluster.broker(index).disk.stats();
            if stats.open_files_refused > 0 {
                self.violations.push(format!(
                    "file budget: broker-{}'s disk refused {} opens (EMFILE): {} descriptors open at once, budget {files_max}",
                    index + 1,
                    stats.open_files_refused,
                    stats.open_files_peak
                ));
            }
        }
    }

    /// Every broker's address, the clients' bootstrap list.
    fn bootstrap(&self) -> String {
        (0..self.cluster.broker_count()).map(|index| self.cluster.broker_addr(index)).collect::<Vec<_>>().join(",")
    }

    /// The replica convergence check ([`crate::replicas`]), after the final read.
    async fn check_replicas(&mut self, high_watermarks: &std::collections::BTreeMap<u32, i64>) {
        let node = self.cluster.add_client();
        let bound = Duration::from_millis(LIVENESS_MS_MAX);
        let described = node
            .spawn(crate::replicas::describe(self.bootstrap(), TOPIC.to_owned(), bound))
            .await
            .expect("the describe task is never killed");
        let described = match described {
            Ok(described) => described,
            Err(error) => return self.violations.push(format!("replicas: {error}")),
        };
        self.note(format!("replicas: described {described:?}"));
        let violations = crate::replicas::check(&mut self.cluster, TOPIC, &described, high_watermarks).await;
        self.note(format!("replicas: {} violations", violations.len()));
        self.violations.extend(violations);
    }

    async fn stop_workers(&mut self, workers: Vec<JoinHandle<()>>, what_hung: &str) {
        let stopped = tokio::time::timeout(Duration::from_millis(WORKLOAD_STOP_MS_MAX), async {
            for worker in workers {
                let _ = worker.await;
            }
        })
        .await;
        if stopped.is_err() {
            self.violations.push(format!(
                "the workload did not stop within {WORKLOAD_STOP_MS_MAX} ms after the heal ({what_hung})"
            ));
        }
    }

    /// The final reader reads every partition from 0 to its high watermark; with durability, every
    /// acked offset is below it.
    async fn final_read(&mut self, queue: &mut QueueRun) -> Option<std::collections::BTreeMap<u32, i64>> {
        let reader_node = self.cluster.add_client();
        let reader = crate::workload::FinalReader {
            addr: self.bootstrap(),
            topic: TOPIC.to_owned(),
            partitions: queue.swarm.partitions,
            process: queue.next_process(),
            bound: final_read_bound(queue.swarm.partitions),
            retained: queue.swarm.log.is_some(),
        };
        let final_read =
            reader_node.spawn(reader.run(queue.recorder.clone())).await.expect("the reader task is never killed");
        let high_watermarks = match final_read {
            Ok(read) => {
                queue.log_starts = read.log_starts;
                read.high_watermarks
            }
            Err(error) => {
                self.violations.push(format!("liveness: {error}"));
                return None;
            }
        };
        let what = format!("final read done; high watermarks {high_watermarks:?}, log starts {:?}", queue.log_starts);
        self.trace.record(queue.recorder.now_ns(), what);
        if !self.scenario.durable() {
            return Some(high_watermarks);
        }
        for (partition, acked_max) in queue.recorder.acked_max() {
            let high_watermark = high_watermarks.get(&partition).copied().unwrap_or(0);
            if high_watermark <= acked_max {
                self.violations.push(format!(
                    "partition {partition}: final high watermark {high_watermark} but offset {acked_max} was acked"
                ));
            }
        }
        Some(high_watermarks)
    }

    /// Metadata liveness: the workload stops, then within [`LIVENESS_MS_MAX`] every broker serves,
    /// a leader exists, a create through every broker succeeds, every node converges, and the final
    /// topic list is read.
    async fn metadata_liveness(&mut self, metadata: &mut MetaRun) {
        metadata.stop.cancel();
        self.stop_workers(std::mem::take(&mut metadata.workers), "an admin operation hung").await;
        let heal_at = Instant::now();
        self.note("liveness: workload stopped".to_owned());
        let deadline = heal_at + Duration::from_millis(LIVENESS_MS_MAX);
        for index in self.wait_all_serving(deadline).await {
            let message = format!("liveness: broker-{} not serving {LIVENESS_MS_MAX} ms after the heal", index + 1);
            self.violations.push(message);
        }
        self.wait_for_leader(deadline).await;
        let admin = self.cluster.add_client();
        for index in 0..self.cluster.broker_count() {
            let create = meta_workload::create_until_ok(
                self.cluster.broker_addr(index),
                index,
                metadata.recorder.clone(),
                deadline,
            );
            let mut create = admin.spawn(create);
            // Supervised meanwhile: a store that failed just before the heal may stop a node only
            // now (`raft_5_voters_swarm` seed 18694330: broker-4 exited 200 ms after the heal,
            // during these creates, and nobody restarted it).
            let created = loop {
                tokio::select! {
                    biased;
                    created = &mut create => break created.expect("the admin task is never killed"),
                    () = tokio::time::sleep(Duration::from_millis(5)) => self.supervise(),
                }
            };
            if !created {
                let message = format!("liveness: no create through broker-{} succeeded after the heal", index + 1);
                self.violations.push(message);
            }
        }
        self.wait_converged(deadline, heal_at).await;
        let final_topics = admin
            .spawn(meta_workload::final_topics(self.cluster.broker_addr(0)))
            .await
            .expect("the admin task is never killed");
        if final_topics.is_none() {
            self.violations.push("liveness: the final topic list could not be read".to_owned());
        }
        self.note(format!("final topics {:?}", final_topics.clone().unwrap_or_default()));
        metadata.final_topics = final_topics;
    }

    /// Waits until every broker serves; returns those that do not by `deadline`. Meanwhile the
    /// supervisor restarts a broker whose Raft node stopped after an injected storage fault, as a
    /// process supervisor would: a store that failed just before the heal may stop the node just
    /// after it (`raft_3_voters_swarm` seed 50389: broker-1 exited 215 ms after the heal and nobody
    /// restarted it).
    async fn wait_all_serving(&mut self, deadline: Instant) -> Vec<usize> {
        loop {
            if let Some(supervisor) = self.supervisor.as_mut() {
                supervisor.restart_stopped_raft_nodes(&mut self.cluster, &Default::default());
            }
            let not_serving: Vec<usize> = (0..self.cluster.broker_count())
                .filter(|&index| self.cluster.broker_state(index) != BrokerState::Serving)
                .collect();
            if not_serving.is_empty() || Instant::now() >= deadline {
                return not_serving;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for a leader, restarting brokers whose Raft node stopped after a storage fault.
    async fn wait_for_leader(&mut self, deadline: Instant) {
        loop {
            if let Some(supervisor) = self.supervisor.as_mut() {
                supervisor.restart_stopped_raft_nodes(&mut self.cluster, &Default::default());
            }
            if leader(&self.cluster).is_some() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match leader(&self.cluster) {
            Some(index) => self.note(format!("liveness: broker-{} leads", index + 1)),
            None => self.violations.push(format!("liveness: no Raft leader {LIVENESS_MS_MAX} ms after the heal")),
        }
    }

    /// The supervisor's round (see [`Self::wait_all_serving`]), if the scenario has one.
    fn supervise(&mut self) {
        if let Some(supervisor) = self.supervisor.as_mut() {
            supervisor.restart_stopped_raft_nodes(&mut self.cluster, &Default::default());
        }
    }

    /// [`wait_converged`], supervised between its polls.
    async fn wait_converged(&mut self, deadline: Instant, heal_at: Instant) {
        let converged = loop {
            self.supervise();
            let step = (Instant::now() + Duration::from_millis(10)).min(deadline);
            match wait_converged(&self.cluster, step).await {
                Err(_) if Instant::now() < deadline => continue,
                result => break result,
            }
        };
        match converged {
            Ok((status, state_hash)) => self.note(format!(
                "liveness: converged at applied {} commit {} state_hash {state_hash:016x} in {} ms",
                status.applied_index,
                status.commit_index,
                heal_at.elapsed().as_millis()
            )),
            Err(statuses) => self.violations.push(format!(
                "liveness: nodes did not converge within {LIVENESS_MS_MAX} ms of the heal; statuses {statuses:?}"
            )),
        }
    }

    /// The min-ISR checker over the ISR timeline the watch recorded ([`isr_watch::acks_under_min_isr`]).
    async fn check_min_isr_acks(&mut self, watch: IsrWatch, recorder: &Recorder) {
        let timeline = watch.finish().await;
        if std::env::var_os("KEEL_SIM_TRACE").is_some() {
            for (partition, stretches) in &timeline.partitions {
                for stretch in stretches {
                    let record = &stretch.record;
                    println!(
                        "isr timeline: {TOPIC}/{partition} {:>10.3}..{:>10.3} ms partition epoch {} leader {:?} (epoch {}) \
                         isr {:?}",
                        stretch.first_ns as f64 / 1e6,
                        stretch.last_ns as f64 / 1e6,
                        record.partition_epoch,
                        record.leader,
                        record.leader_epoch,
                        record.isr
                    );
                }
            }
        }
        let report = isr_watch::acks_under_min_isr(&recorder.history(), TOPIC, &timeline);
        self.note(format!(
            "min ISR: stretches below min ISR {:?}: {:?}; {} sends invoked in them judged, {} refused, {} acked \
             while below; send errors by code {:?}",
            timeline.min_isr,
            report.stretches_under_min,
            report.sends_judged,
            report.sends_failed,
            report.violations.len(),
            recorder.send_errors()
        ));
        self.violations.extend(report.violations);
    }

    /// The verdict: checkers, violations, trace hash; the history file; the printed report.
    async fn finish(mut self, workload: Workload, options: &RunOptions) -> Outcome {
        let raft = match self.monitor.take() {
            Some(monitor) => {
                let (checker, violation) = monitor.finish().await;
                self.violations.extend(violation);
                Some(checker)
            }
            None => None,
        };
        self.violations.extend(self.cluster.violations());
        if let Some(supervisor) = self.supervisor.as_mut() {
            self.violations.append(&mut supervisor.violations);
        }
        let (mut file, fingerprint, expected_anomalies) = match &workload {
            Workload::Queue(queue) => {
                if let Some(watch) = self.isr_watch.take() {
                    self.check_min_isr_acks(watch, &queue.recorder).await;
                }
                self.violations.extend(queue.recorder.violations());
                let history = queue.recorder.history();
                let fingerprint = history.fingerprint();
                let exactly_once = self.scenario.checks(Checker::ExactlyOnce);
                let log_starts = queue
                    .log_starts
                    .iter()
                    .filter(|(_, start)| **start > 0)
                    .map(|(partition, start)| (Partition::of_topic(TOPIC, *partition), HistoryOffset(*start as u64)))
                    .collect();
                let compaction_keys = queue.swarm.compaction_keys;
                let file = HistoryFile {
                    queue: Some(history),
                    exactly_once,
                    compaction_keys,
                    log_starts,
                    ..HistoryFile::default()
                };
                (file, fingerprint, queue.recorder.expected_anomalies())
            }
            Workload::Metadata(metadata) => {
                let file = HistoryFile {
                    metadata: metadata.recorder.entries(),
                    final_topics: Some(metadata.final_topics.clone().unwrap_or_default()),
                    ..HistoryFile::default()
                };
                (file, metadata.recorder.fingerprint(), 0)
            }
        };
        let verdicts = Verdicts::judge(&file);
        let acked = acked_operations(&verdicts, &file.metadata);
        if let Some(raft) = &raft {
            self.note(format!(
                "checked: {} metadata ops ({acked} writes ok), {} raft observations, commit index max {}",
                file.metadata.len(),
                raft.observations_count(),
                raft.commit_index_max()
            ));
        }
        let trace_hash = self.trace.hash(fingerprint);
        file.nemesis =
            self.trace.events().iter().filter_map(|e| NemesisEvent::of_trace_line(e.time_ns, &e.what)).collect();
        let outcome = Outcome {
            scenario: self.scenario.name,
            seed: self.seed,
            swarm: self.swarm,
            verdicts,
            raft,
            violations: self.violations,
            expected_anomalies,
            acked,
            nemesis_actions: self.nemesis_actions,
            faults: self.faults,
            coverage: keel::sometimes::take(),
            buggify_fired: keel::buggify::fired(),
            simulated_ms: self.start.elapsed().as_millis() as u64,
            trace_hash,
            trace_tail: self.trace.tail(TRACE_TAIL_LINES),
        };
        if std::env::var_os("KEEL_SIM_TRACE").is_some() && !options.quiet {
            print!("trace:\n{}", self.trace.tail(usize::MAX));
        }
        if let Some(dir) = &options.history_dir {
            write_history(dir, &outcome, &file);
        }
        if !options.quiet {
            outcome.print();
        }
        self.cluster.release();
        tokio::task::yield_now().await; // the killed nodes' tasks are dropped as the executor pops them
        outcome
    }
}

/// Per partition, the offsets of the sends acknowledged `ok` in `history`.
fn acked_offsets(history: &keel_model::history::History, partitions: u32) -> std::collections::BTreeMap<u32, Vec<i64>> {
    use keel_model::history::{EventKind, Op};
    let names: std::collections::BTreeMap<Partition, u32> =
        (0..partitions).map(|index| (Partition::of_topic(TOPIC, index), index)).collect();
    let mut acked: std::collections::BTreeMap<u32, Vec<i64>> = std::collections::BTreeMap::new();
    for event in history.events().iter().filter(|event| event.kind == EventKind::Ok) {
        if let Op::Send { partition, offset: Some(offset), .. } = &event.op {
            if let Some(index) = names.get(partition) {
                acked.entry(*index).or_default().push(offset.0 as i64);
            }
        }
    }
    acked
}

impl QueueRun {
    fn next_process(&mut self) -> ProcessId {
        self.next_process += 1;
        ProcessId(self.next_process)
    }
}

/// Every broker's config: the scenario's fsync policy, small segments, and with more than one broker
/// the full `peers` map (one metadata group of all voters).
fn broker_configs(scenario: &Scenario, swarm: &Swarm) -> Vec<BrokerConfig> {
    let peers: std::collections::BTreeMap<String, String> = if scenario.brokers > 1 {
        (1..=scenario.brokers).map(|number| (number.to_string(), format!("10.0.1.{number}:{BROKER_PORT}"))).collect()
    } else {
        Default::default()
    };
    (0..scenario.brokers)
        .map(|number| BrokerConfig {
            // The Kafka listener's address (ADR 0026): the broker's own IP (see `Cluster::add_broker`).
            kafka_listen: scenario.kafka.then(|| crate::cluster::kafka_addr(number).parse().expect("an address")),
            fsync: scenario.fsync,
            segment_bytes_max: 64 * 1024,
            // The simulation's logs are KiBs: every one gets a clean-close record at a graceful
            // stop, so restarts go through that path (ADR 0025).
            clean_close_min_bytes: 0,
            peers: peers.clone(),
            metadata_snapshot_interval_entries: swarm.snapshot_interval_entries,
            retention_check_interval_ms: RETENTION_CHECK_INTERVAL_MS,
            // The smallest segments: the offsets topic's roll and get compacted in a short run.
            offsets_topic_segment_bytes: 1024,
            open_files_max: scenario.open_files_max,
            partitions_per_topic_max: scenario
                .partitions
                .map_or(BrokerConfig::default().partitions_per_topic_max, |partitions| partitions.max(1024)),
            ..BrokerConfig::default()
        })
        .collect()
}

/// Creates the queue workload's topic, retrying (the first leader may still be coming). The harness
/// is the topic's only creator, so "already exists" after an attempt whose outcome was unknown (a
/// timeout) means that attempt created it.
async fn create_topic(addr: String, partitions: u32, replication: u32, log: Option<TopicLog>) -> Result<(), String> {
    use keel::client::{ClientError, TopicSpec};
    use keel::protocol::{ErrorCode, LogSettingsInfo};

    let client = keel::client::Client::new(addr, client_config());
    let log = log.map_or_else(LogSettingsInfo::default, |log| LogSettingsInfo {
        retention_ms: Some(log.retention_ms),
        retention_bytes: Some(log.retention_bytes),
        segment_bytes: Some(log.segment_bytes),
        cleanup_policy: log.compact.then(|| "compact".to_owned()),
        ..LogSettingsInfo::default()
    });
    let spec = TopicSpec { partitions, replication, log, ..TopicSpec::default() };
    let mut last_error = String::new();
    let mut ambiguous = false;
    for _ in 0..20 {
        match client.create_topic_with(TOPIC, &spec).await {
            Ok(()) => return Ok(()),
            Err(ClientError::Server { code: ErrorCode::TopicAlreadyExists, .. }) if ambiguous => return Ok(()),
            Err(error) => {
                ambiguous |= error.is_ambiguous();
                last_error = error.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last_error)
}

/// Writes the run's history file (the test harness writing its output, not simulated broker I/O).
fn write_history(dir: &std::path::Path, outcome: &Outcome, file: &HistoryFile) {
    let path = dir.join(format!("{}-{}.jsonl", outcome.scenario, outcome.seed));
    match std::fs::write(&path, history_file::write(file)) {
        Ok(()) => println!("history written to {}", path.display()),
        Err(error) => println!("could not write the history to {}: {error}", path.display()),
    }
}
