//! Scenarios: a cluster, a workload, a nemesis with per-seed fault parameters, a liveness phase
//! and the checkers.
//!
//! In: a [`ScenarioConfig`] (which fault classes, fsync policy, how long). Out: an [`Outcome`] with
//! the checker's report, the violations seen during the run, and the trace hash.
//!
//! # Phases
//! 1. Draw the [`Swarm`] parameters from the seed (TigerBeetle VOPR-style swarm testing: every seed
//!    runs a different mix and rate of faults and a different workload shape).
//! 2. Start one broker, create the topic, start the producers and the consumers.
//! 3. Nemesis: for `duration`, inject the enabled faults at the drawn rates. A fault class the
//!    scenario is named for ([`Use::Always`]) is injected on every seed, on the broker: if the draw
//!    has not injected it by a time drawn for it, the nemesis does. At the end of the phase the
//!    injected faults are counted (from the trace and the disk's counters) and written to the trace,
//!    and a named fault that did not happen fails the seed.
//! 4. Liveness: heal everything; the broker must serve again, producers must get acks again, and the
//!    final reader must read every partition from 0 to its high watermark, all within bounds.
//! 5. Check: `queue_checker::check` over the history, plus the invariants checked during the run
//!    (the workload's, and the harness's: a broker exit no injected fault explains is a violation).
//!
//! # Reads before durability
//! A broker that served records before they were durable shows it only if a consumer reads them and
//! power fails before the fsync that covers them completes. So consumers poll at the tail with short
//! waits, and three in four power losses (where the scenario allows slow fsyncs) first slow the disk's
//! syncs to a stall and cut the power while one is in flight.

use std::time::Duration;

use keel::config::BrokerConfig;
use keel::partition::FsyncPolicy;
use keel::storage::sim::SimDiskFaults;
use keel_model::history::ProcessId;
use keel_model::queue_checker::{self, AnomalyKind, QueueReport};
use madsim::rand::{thread_rng, Rng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::trace::{summary_line, Trace};
use crate::workload::{run_consumer, run_final_reader, ProducerNode, Recorder, OPERATION_MS_MAX};

/// How long a forced disk fault may take to show (a slow or a failed sync) before the nemesis moves on.
/// The producers keep the broker syncing, so this is only reached when the broker cannot sync at all.
pub const FORCED_DISK_FAULT_MS_MAX: u64 = 3_000;

pub const TOPIC: &str = "t";
/// How long after the heal the broker has to serve again, and the final read has to finish.
pub const LIVENESS_MS_MAX: u64 = 30_000;
/// How long the workload keeps running after the heal (acks must resume in it).
pub const AFTER_HEAL_MS: u64 = 2_000;

/// Whether a scenario's nemesis uses a fault class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    Off,
    /// The swarm draw leaves it out on some seeds (so other faults get seeds of their own).
    Sometimes,
    /// Every seed uses it: it is what the scenario is about.
    Always,
}

impl Use {
    fn enabled(self) -> bool {
        self != Use::Off
    }
}

/// Which fault classes a scenario's nemesis may use; the rates are drawn per seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultClasses {
    pub power_loss: Use,
    /// Process crash (kill) and graceful restart (ctrl-c): the disk keeps its page cache.
    pub process_restart: Use,
    pub slow_fsync: Use,
    pub failing_fsync: Use,
    /// Injected write errors (EIO and ENOSPC) on the partition data disk.
    pub failing_write: Use,
    pub pause: Use,
    pub clog: Use,
}

#[derive(Clone, Debug)]
pub struct ScenarioConfig {
    pub name: &'static str,
    pub fsync: FsyncPolicy,
    pub faults: FaultClasses,
    /// Simulated time of the faulty phase.
    pub duration: Duration,
}

/// The seed's draw of workload shape and fault rates.
#[derive(Clone, Debug, PartialEq)]
pub struct Swarm {
    pub partitions: u32,
    pub producer_nodes: u32,
    pub processes_per_node: u32,
    pub linger_ms: u64,
    pub think_ms_max: u64,
    /// Consumer processes, each on its own client node, polling partitions at their tails.
    pub consumers: u32,
    /// Longest a consumer's poll waits for records (drawn per poll up to this).
    pub poll_wait_ms_max: u64,
    /// Mean simulated time between two nemesis actions.
    pub nemesis_interval_ms: u64,
    /// Relative weights of the enabled actions (0 = disabled for this seed).
    pub weight_power_loss: u32,
    pub weight_kill: u32,
    pub weight_clean_restart: u32,
    pub weight_disk_faults: u32,
    pub weight_pause: u32,
    pub weight_clog: u32,
    /// Longest a broker stays down, paused or clogged in one action.
    pub outage_ms_max: u64,
    /// Upper bounds for the disk faults the nemesis draws.
    pub fsync_latency_ms_max: u64,
    pub fsync_error_probability_max: f64,
    /// Upper bound for each of the EIO and ENOSPC write error probabilities (0 = no write errors).
    pub write_error_probability_max: f64,
}

impl Swarm {
    /// Draws the parameters from madsim's seeded RNG. A fault class the scenario enables gets a
    /// weight of 0 with some probability, so some seeds run it alone or not at all.
    pub fn draw(faults: FaultClasses) -> Swarm {
        let mut rng = thread_rng();
        let mut weight = |use_: Use| match use_ {
            Use::Off => 0,
            Use::Sometimes if rng.gen_bool(0.25) => 0,
            Use::Sometimes | Use::Always => rng.gen_range(1..=4),
        };
        let weight_power_loss = weight(faults.power_loss);
        let weight_kill = weight(faults.process_restart);
        let weight_clean_restart = weight(faults.process_restart);
        let disk_use = match (faults.slow_fsync, faults.failing_fsync, faults.failing_write) {
            (Use::Always, _, _) | (_, Use::Always, _) | (_, _, Use::Always) => Use::Always,
            (Use::Off, Use::Off, Use::Off) => Use::Off,
            _ => Use::Sometimes,
        };
        let weight_disk_faults = weight(disk_use);
        let weight_pause = weight(faults.pause);
        let weight_clog = weight(faults.clog);
        let mut rng = thread_rng();
        Swarm {
            partitions: rng.gen_range(1..=4),
            producer_nodes: rng.gen_range(1..=3),
            processes_per_node: rng.gen_range(1..=4),
            linger_ms: [0, 1, 2, 5, 10][rng.gen_range(0..5)],
            think_ms_max: [0, 2, 10, 50][rng.gen_range(0..4)],
            consumers: rng.gen_range(1..=3),
            poll_wait_ms_max: [0, 5, 20, 200][rng.gen_range(0..4)],
            nemesis_interval_ms: rng.gen_range(200..=2_000),
            weight_power_loss,
            weight_kill,
            weight_clean_restart,
            weight_disk_faults,
            weight_pause,
            weight_clog,
            outage_ms_max: rng.gen_range(50..=3_000),
            fsync_latency_ms_max: if faults.slow_fsync.enabled() {
                [1, 5, 20, 100, 500][rng.gen_range(0..5)]
            } else {
                0
            },
            fsync_error_probability_max: if faults.failing_fsync.enabled() {
                [0.01, 0.05, 0.2, 0.5][rng.gen_range(0..4)]
            } else {
                0.0
            },
            // Drawn last and only when enabled, so scenarios without write errors draw as before.
            write_error_probability_max: if faults.failing_write.enabled() {
                [0.01, 0.05, 0.2, 0.5][rng.gen_range(0..4)]
            } else {
                0.0
            },
        }
    }

    fn total_weight(&self) -> u32 {
        self.weight_power_loss
            + self.weight_kill
            + self.weight_clean_restart
            + self.weight_disk_faults
            + self.weight_pause
            + self.weight_clog
    }
}

/// A fault class a scenario is named for ([`Use::Always`]): injected on every seed, on the broker,
/// and counted; the seed fails if it did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Required {
    PowerLoss,
    ProcessRestart,
    SlowFsync,
    FailedFsync,
    FailedWrite,
    Pause,
    BrokerClog,
}

impl Required {
    fn of(faults: FaultClasses) -> Vec<Required> {
        [
            (faults.power_loss, Required::PowerLoss),
            (faults.process_restart, Required::ProcessRestart),
            (faults.slow_fsync, Required::SlowFsync),
            (faults.failing_fsync, Required::FailedFsync),
            (faults.failing_write, Required::FailedWrite),
            (faults.pause, Required::Pause),
            (faults.clog, Required::BrokerClog),
        ]
        .into_iter()
        .filter(|(use_, _)| *use_ == Use::Always)
        .map(|(_, required)| required)
        .collect()
    }
}

/// The faults that actually hit the broker during the nemesis phase: actions counted from the trace,
/// syncs from the broker's disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub power_losses: usize,
    pub kills: usize,
    /// Graceful restarts that reached the broker (a ctrl-c, not a restart of a broker already down).
    pub clean_restarts: usize,
    pub pauses: usize,
    pub broker_clogs: usize,
    /// Clogs of client nodes that run the workload.
    pub client_clogs: usize,
    /// Syncs that waited an injected latency.
    pub delayed_syncs: u64,
    /// Syncs that failed (injected).
    pub failed_syncs: u64,
    /// Data writes that failed (injected EIO or ENOSPC).
    pub failed_writes: u64,
}

impl FaultCounts {
    fn measure(cluster: &Cluster, broker: usize) -> FaultCounts {
        let name = &cluster.broker(broker).name;
        let trace = cluster.trace();
        let stats = cluster.broker(broker).disk.stats();
        FaultCounts {
            power_losses: trace.count_prefixed(&format!("nemesis power_loss {name}")),
            kills: trace.count_prefixed(&format!("nemesis kill {name}")),
            clean_restarts: trace.count_prefixed(&format!("nemesis ctrl_c {name}")),
            pauses: trace.count_prefixed(&format!("nemesis pause {name}")),
            broker_clogs: trace.count_prefixed(&format!("nemesis clog {name}")),
            client_clogs: trace.count_prefixed("nemesis clog client-"),
            delayed_syncs: stats.delayed_syncs,
            failed_syncs: stats.sync_errors,
            failed_writes: stats.write_errors,
        }
    }

    fn has(&self, required: Required) -> bool {
        match required {
            Required::PowerLoss => self.power_losses > 0,
            Required::ProcessRestart => self.kills + self.clean_restarts > 0,
            Required::SlowFsync => self.delayed_syncs > 0,
            Required::FailedFsync => self.failed_syncs > 0,
            Required::FailedWrite => self.failed_writes > 0,
            Required::Pause => self.pauses > 0,
            Required::BrokerClog => self.broker_clogs > 0,
        }
    }
}

/// What one seed of one scenario produced.
#[derive(Debug)]
pub struct Outcome {
    pub scenario: &'static str,
    pub seed: u64,
    pub swarm: Swarm,
    pub report: QueueReport,
    /// Invariants broken during the run (by the broker, the harness's bounds or the workload's checks).
    pub violations: Vec<String>,
    /// Durability breaks seen during the run that the fsync policy allows (fsync=never).
    pub expected_anomalies: usize,
    pub acked: usize,
    pub nemesis_actions: usize,
    /// The faults the nemesis phase injected.
    pub faults: FaultCounts,
    pub trace_hash: u64,
    pub trace_tail: String,
}

impl Outcome {
    pub fn lost_acked_writes(&self) -> usize {
        self.report.count(AnomalyKind::LostWrite) + self.report.count(AnomalyKind::Unseen)
    }

    pub fn is_valid(&self) -> bool {
        self.report.is_valid() && self.violations.is_empty() && self.acked > 0
    }

    pub fn summary_line(&self) -> String {
        summary_line(self.seed, self.trace_hash)
    }

    /// Panics with the report, the violations, the trace's tail and the seed unless the run is valid.
    pub fn assert_valid(&self) {
        if self.is_valid() {
            return;
        }
        panic!(
            "scenario {} FAILED with seed {} (reproduce: MADSIM_TEST_SEED={} cargo test {} -- --nocapture)\n\
             swarm: {:?}\nacked sends: {}\n{}violations during the run ({}):\n{}\nlast trace events:\n{}",
            self.scenario,
            self.seed,
            self.seed,
            self.scenario,
            self.swarm,
            self.acked,
            self.report,
            self.violations.len(),
            self.violations.iter().map(|violation| format!("  {violation}\n")).collect::<String>(),
            self.trace_tail,
        );
    }
}

/// Runs one scenario in the current madsim runtime and prints its report and, last,
/// `seed=<n> trace_hash=<hex>`. Does not assert: see [`Outcome::assert_valid`].
pub async fn run(config: &ScenarioConfig) -> Outcome {
    let seed = madsim::runtime::Handle::current().seed();
    let start = Instant::now();
    let trace = Trace::new();
    let swarm = Swarm::draw(config.faults);
    trace.record(0, format!("scenario {} seed {seed} fsync {:?} swarm {swarm:?}", config.name, config.fsync));

    let mut cluster = Cluster::new(trace.clone(), start);
    let broker_config = BrokerConfig { fsync: config.fsync, segment_bytes_max: 64 * 1024, ..BrokerConfig::default() };
    let disk_seed = thread_rng().gen::<u64>();
    let broker = cluster.add_broker(broker_config, disk_seed);
    let addr = cluster.broker_addr(broker);
    // Acked records may be lost only to a power loss or a failed fsync (which may drop dirty pages)
    // when fsync=never; without those, even fsync=never keeps everything acked (the page cache
    // survives a process crash and a write error).
    let durable = config.fsync == FsyncPolicy::Always
        || !(config.faults.power_loss.enabled() || config.faults.failing_fsync.enabled());
    let recorder = Recorder::new(start, trace.clone(), durable);
    let mut violations = Vec::new();

    // Setup, before any fault: the broker serves and the topic exists.
    let admin = cluster.add_client();
    if !cluster.wait_serving(broker, Duration::from_millis(LIVENESS_MS_MAX)).await {
        violations.push("broker did not start serving".to_owned());
    }
    let partitions = swarm.partitions;
    let created = admin
        .spawn({
            let addr = addr.clone();
            async move {
                let client = keel::client::Client::new(addr, crate::workload::client_config());
                let mut last_error = String::new();
                for _ in 0..20 {
                    match client.create_topic(TOPIC, partitions, 1).await {
                        Ok(()) => return Ok(()),
                        Err(error) => last_error = error.to_string(),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(last_error)
            }
        })
        .await
        .expect("the admin task is never killed");
    if let Err(error) = created {
        violations.push(format!("could not create the topic: {error}"));
    }
    trace.record(recorder.now_ns(), format!("topic {TOPIC} created with {partitions} partitions"));

    // Workload.
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    let mut next_process = 0u64;
    for _ in 0..swarm.producer_nodes {
        let node = cluster.add_client();
        let processes: Vec<ProcessId> = (0..swarm.processes_per_node)
            .map(|_| {
                next_process += 1;
                ProcessId(next_process)
            })
            .collect();
        let producer_node = ProducerNode {
            addr: addr.clone(),
            topic: TOPIC.to_owned(),
            partitions,
            processes,
            linger: Duration::from_millis(swarm.linger_ms),
            think_ms_max: swarm.think_ms_max,
        };
        workers.push(node.spawn(producer_node.run(recorder.clone(), stop.clone())));
    }
    for _ in 0..swarm.consumers {
        let consumer_node = cluster.add_client();
        next_process += 1;
        workers.push(consumer_node.spawn(run_consumer(
            addr.clone(),
            TOPIC.to_owned(),
            partitions,
            ProcessId(next_process),
            Duration::from_millis(swarm.poll_wait_ms_max),
            recorder.clone(),
            stop.clone(),
        )));
    }
    // Every client node but the admin's (index 0, idle from here on) runs the workload.
    let workload_clients: Vec<usize> = (1..cluster.client_count()).collect();

    // Nemesis.
    let mut nemesis = Nemesis { cluster: &mut cluster, broker, swarm: &swarm, faults: config.faults, workload_clients };
    nemesis.run(config.duration).await;
    let nemesis_actions = trace.count_prefixed("nemesis");
    let faults = FaultCounts::measure(&cluster, broker);
    trace.record(recorder.now_ns(), format!("nemesis injected {faults:?}"));
    for required in Required::of(config.faults) {
        if !faults.has(required) {
            let message = format!("scenario {} is about {required:?}, but the nemesis injected none", config.name);
            trace.record(recorder.now_ns(), format!("violation {message}"));
            violations.push(message);
        }
    }

    // Liveness: heal, the broker serves again, acks resume, everything acked is readable.
    cluster.heal();
    if !cluster.wait_serving(broker, Duration::from_millis(LIVENESS_MS_MAX)).await {
        violations.push(format!("broker not serving {LIVENESS_MS_MAX} ms after the heal"));
    }
    let acked_at_heal = recorder.history().events().iter().filter(|event| is_send_ok(event)).count();
    tokio::time::sleep(Duration::from_millis(AFTER_HEAL_MS)).await;
    stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_millis(OPERATION_MS_MAX * 2), async {
        for worker in workers {
            let _ = worker.await;
        }
    })
    .await;
    if stopped.is_err() {
        violations.push("workload did not stop after the heal (a send or poll hung)".to_owned());
    }
    let acked_after_heal = recorder.history().events().iter().filter(|event| is_send_ok(event)).count() - acked_at_heal;
    trace.record(recorder.now_ns(), format!("workload stopped; {acked_after_heal} sends acked after the heal"));
    if acked_after_heal == 0 {
        violations.push(format!("no send was acked in the {AFTER_HEAL_MS} ms after the heal"));
    }

    let reader_node = cluster.add_client();
    next_process += 1;
    let final_read = reader_node
        .spawn(run_final_reader(
            addr.clone(),
            TOPIC.to_owned(),
            partitions,
            ProcessId(next_process),
            recorder.clone(),
            Duration::from_millis(LIVENESS_MS_MAX),
        ))
        .await
        .expect("the reader task is never killed");
    match final_read {
        Ok(high_watermarks) => {
            trace.record(recorder.now_ns(), format!("final read done; high watermarks {high_watermarks:?}"));
            for (partition, acked_max) in recorder.acked_max() {
                let high_watermark = high_watermarks.get(&partition).copied().unwrap_or(0);
                if durable && high_watermark <= acked_max {
                    violations.push(format!(
                        "partition {partition}: final high watermark {high_watermark} but offset {acked_max} was acked"
                    ));
                }
            }
        }
        Err(error) => violations.push(format!("liveness: {error}")),
    }

    trace.record(recorder.now_ns(), format!("disk stats {:?}", cluster.broker(broker).disk.stats()));

    // Check.
    let history = recorder.history();
    let report = queue_checker::check(&history);
    violations.extend(cluster.violations());
    violations.extend(recorder.violations());
    let acked = report.stats.sends_ok_with_offset;
    let trace_hash = trace.hash(history.fingerprint());
    let outcome = Outcome {
        scenario: config.name,
        seed,
        swarm,
        report,
        violations,
        expected_anomalies: recorder.expected_anomalies(),
        acked,
        nemesis_actions,
        faults,
        trace_hash,
        trace_tail: trace.tail(40),
    };
    if std::env::var_os("KEEL_SIM_TRACE").is_some() {
        print!("trace:\n{}", trace.tail(usize::MAX));
    }
    if let Some(dir) = std::env::var_os("KEEL_SIM_HISTORY") {
        // The history in shared/HISTORY-FORMAT.md's JSON Lines, for any outside checker. This is the
        // test harness writing its output, not simulated broker I/O.
        let path = std::path::Path::new(&dir).join(format!("{}-{seed}.jsonl", outcome.scenario));
        match std::fs::write(&path, history.to_jsonl()) {
            Ok(()) => println!("history written to {}", path.display()),
            Err(error) => println!("could not write the history to {}: {error}", path.display()),
        }
    }
    print!("{}", outcome.report);
    println!(
        "scenario {}: {} nemesis actions ({:?}), {} violations, {} expected durability anomalies",
        outcome.scenario,
        outcome.nemesis_actions,
        outcome.faults,
        outcome.violations.len(),
        outcome.expected_anomalies
    );
    println!("{}", outcome.summary_line());
    outcome
}

fn is_send_ok(event: &keel_model::history::Event) -> bool {
    event.kind == keel_model::history::EventKind::Ok && matches!(event.op, keel_model::history::Op::Send { .. })
}

#[derive(Clone, Copy, Debug)]
enum Action {
    PowerLoss,
    Kill,
    CleanRestart,
    DiskFaults,
    Pause,
    Clog,
    /// Forced (a scenario's named fault had not happened yet): disk faults with slow syncs.
    SlowFsync,
    /// Forced: disk faults that fail the next sync.
    FailedFsync,
    /// Forced: disk faults that fail the next data write.
    FailedWrite,
    /// Forced: the broker's network clogged.
    BrokerClog,
}

impl Action {
    fn forcing(required: Required) -> Action {
        match required {
            Required::PowerLoss => Action::PowerLoss,
            Required::ProcessRestart => Action::Kill,
            Required::SlowFsync => Action::SlowFsync,
            Required::FailedFsync => Action::FailedFsync,
            Required::FailedWrite => Action::FailedWrite,
            Required::Pause => Action::Pause,
            Required::BrokerClog => Action::BrokerClog,
        }
    }
}

fn pick_action(swarm: &Swarm) -> Option<Action> {
    let total = swarm.total_weight();
    if total == 0 {
        return None;
    }
    let mut ticket = thread_rng().gen_range(0..total);
    for (weight, action) in [
        (swarm.weight_power_loss, Action::PowerLoss),
        (swarm.weight_kill, Action::Kill),
        (swarm.weight_clean_restart, Action::CleanRestart),
        (swarm.weight_disk_faults, Action::DiskFaults),
        (swarm.weight_pause, Action::Pause),
        (swarm.weight_clog, Action::Clog),
    ] {
        if ticket < weight {
            return Some(action);
        }
        ticket -= weight;
    }
    None
}

/// The nemesis of the single-broker scenarios. Every action is traced by the cluster.
struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    broker: usize,
    swarm: &'a Swarm,
    faults: FaultClasses,
    /// Client nodes that run the workload (clogging an idle node would test nothing).
    workload_clients: Vec<usize>,
}

impl Nemesis<'_> {
    /// Injects faults for `duration` at the swarm's rates. Each fault the scenario is named for gets a
    /// time in the first 60% of the phase; if it has not happened by then, it is injected then. The
    /// phase does not end before every named fault was injected once.
    async fn run(&mut self, duration: Duration) {
        let start = Instant::now();
        let deadline = start + duration;
        let mut due: Vec<(Instant, Required)> = Required::of(self.faults)
            .into_iter()
            .map(|required| (start + duration.mul_f64(thread_rng().gen_range(0.1..0.6)), required))
            .collect();
        loop {
            let mean_ms = self.swarm.nemesis_interval_ms;
            let mut wait = Duration::from_millis(thread_rng().gen_range(mean_ms / 2..=mean_ms * 3 / 2));
            let counts = FaultCounts::measure(self.cluster, self.broker);
            due.retain(|(_, required)| !counts.has(*required));
            if let Some(next_due) = due.iter().map(|(at, _)| *at).min() {
                wait = wait.min(next_due.saturating_duration_since(Instant::now()));
            }
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
            let counts = FaultCounts::measure(self.cluster, self.broker);
            due.retain(|(_, required)| !counts.has(*required));
            let now = Instant::now();
            if now >= deadline && due.is_empty() {
                return;
            }
            let action = match due.iter().position(|(at, _)| now >= *at) {
                Some(position) => {
                    let (_, required) = due.remove(position);
                    let what = format!("nemesis forces {required:?}: the draw had not injected it yet");
                    self.cluster.trace().record(self.cluster.now_ns(), what);
                    Action::forcing(required)
                }
                None if now >= deadline => continue,
                None => match pick_action(self.swarm) {
                    Some(action) => action,
                    None => continue,
                },
            };
            self.perform(action).await;
        }
    }

    async fn perform(&mut self, action: Action) {
        let broker = self.broker;
        let outage = Duration::from_millis(thread_rng().gen_range(1..=self.swarm.outage_ms_max));
        match action {
            Action::PowerLoss => self.power_loss(outage).await,
            Action::Kill => {
                self.cluster.kill(broker);
                tokio::time::sleep(outage).await;
                self.cluster.restart(broker);
            }
            Action::CleanRestart => self.cluster.clean_restart(broker).await,
            Action::DiskFaults => {
                let faults = self.draw_disk_faults();
                self.cluster.set_disk_faults(broker, faults);
            }
            Action::SlowFsync => {
                let latency_max = self.swarm.fsync_latency_ms_max.max(1);
                let latency_min = thread_rng().gen_range(1..=latency_max);
                let faults = SimDiskFaults {
                    fsync_latency_ms: (latency_min, latency_max),
                    ..self.cluster.broker(broker).disk.faults()
                };
                self.cluster.set_disk_faults(broker, faults);
                self.wait_for_disk(|counts| counts.delayed_syncs).await;
            }
            Action::FailedFsync => {
                // Fail the next sync for certain, then go on with a drawn fault mix. Write errors are
                // off meanwhile: a partition whose writes keep failing may not reach a sync within the
                // wait (seed 12285686 of this scenario: EIO and ENOSPC at ~11% each, no sync in 3 s).
                let faults = SimDiskFaults {
                    fsync_error_probability: 1.0,
                    write_eio_probability: 0.0,
                    write_enospc_probability: 0.0,
                    ..self.cluster.broker(broker).disk.faults()
                };
                self.cluster.set_disk_faults(broker, faults);
                self.wait_for_disk(|counts| counts.failed_syncs).await;
                let faults = self.draw_disk_faults();
                self.cluster.set_disk_faults(broker, faults);
            }
            Action::FailedWrite => {
                // Fail the next data write for certain (EIO), then go on with a drawn fault mix.
                let faults = SimDiskFaults { write_eio_probability: 1.0, ..self.cluster.broker(broker).disk.faults() };
                self.cluster.set_disk_faults(broker, faults);
                self.wait_for_disk(|counts| counts.failed_writes).await;
                let faults = self.draw_disk_faults();
                self.cluster.set_disk_faults(broker, faults);
            }
            Action::Pause => {
                self.cluster.pause(broker);
                tokio::time::sleep(outage).await;
                self.cluster.resume(broker);
            }
            Action::Clog => {
                // The broker half of the time, otherwise a node of the workload.
                if self.workload_clients.is_empty() || thread_rng().gen_bool(0.5) {
                    self.clog_broker(outage).await;
                } else {
                    let target = self.workload_clients[thread_rng().gen_range(0..self.workload_clients.len())];
                    self.cluster.clog_client(target);
                    tokio::time::sleep(outage).await;
                    self.cluster.unclog_client(target);
                }
            }
            Action::BrokerClog => self.clog_broker(outage).await,
        }
    }

    async fn clog_broker(&mut self, outage: Duration) {
        self.cluster.clog_broker(self.broker);
        tokio::time::sleep(outage).await;
        self.cluster.unclog_broker(self.broker);
    }

    /// Power loss, then a restart after `outage`. Where the scenario allows slow fsyncs, three in four
    /// power losses first stall the disk's syncs and cut the power while one is in flight, with records
    /// written but not durable: a broker that served those to the consumers at the tail is caught.
    async fn power_loss(&mut self, outage: Duration) {
        let broker = self.broker;
        let mid_sync = self.faults.slow_fsync.enabled() && thread_rng().gen_bool(0.75);
        let faults_before = self.cluster.broker(broker).disk.faults();
        if mid_sync {
            let stall_ms = thread_rng().gen_range(20..=200);
            let stalled = SimDiskFaults { fsync_latency_ms: (stall_ms, stall_ms), ..faults_before.clone() };
            self.cluster.set_disk_faults(broker, stalled);
            tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(stall_ms / 2..=stall_ms * 2))).await;
        }
        self.cluster.power_loss(broker);
        tokio::time::sleep(outage).await;
        if mid_sync {
            self.cluster.set_disk_faults(broker, faults_before);
        }
        self.cluster.restart(broker);
    }

    fn draw_disk_faults(&self) -> SimDiskFaults {
        let mut rng = thread_rng();
        let latency_max =
            if self.swarm.fsync_latency_ms_max > 0 { rng.gen_range(0..=self.swarm.fsync_latency_ms_max) } else { 0 };
        let latency_min = rng.gen_range(0..=latency_max);
        let error_probability = if self.swarm.fsync_error_probability_max > 0.0 && rng.gen_bool(0.7) {
            rng.gen_range(0.0..=self.swarm.fsync_error_probability_max)
        } else {
            0.0
        };
        let (write_eio_probability, write_enospc_probability) =
            if self.swarm.write_error_probability_max > 0.0 && rng.gen_bool(0.7) {
                let max = self.swarm.write_error_probability_max;
                (rng.gen_range(0.0..=max), if rng.gen_bool(0.5) { rng.gen_range(0.0..=max) } else { 0.0 })
            } else {
                (0.0, 0.0)
            };
        if self.swarm.write_error_probability_max > 0.0 {
            let what =
                format!("nemesis write_errors eio_p={write_eio_probability} enospc_p={write_enospc_probability}");
            self.cluster.trace().record(self.cluster.now_ns(), what);
        }
        SimDiskFaults {
            fsync_error_probability: error_probability,
            fsync_latency_ms: (latency_min, latency_max),
            write_eio_probability,
            write_enospc_probability,
            ..SimDiskFaults::default()
        }
    }

    /// Waits (bounded) until the disk counter `counter` of the broker moves: a forced disk fault took.
    async fn wait_for_disk(&self, counter: impl Fn(&FaultCounts) -> u64) {
        let before = counter(&FaultCounts::measure(self.cluster, self.broker));
        let deadline = Instant::now() + Duration::from_millis(FORCED_DISK_FAULT_MS_MAX);
        while counter(&FaultCounts::measure(self.cluster, self.broker)) == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Runs `config` for `seed` in a fresh madsim runtime on a fresh OS thread (madsim keeps its state in
/// thread-locals), for plain `#[test]`s that loop over seeds.
pub fn run_seed(config: ScenarioConfig, seed: u64) -> Outcome {
    std::thread::spawn(move || {
        let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        runtime.block_on(async move { run(&config).await })
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The faulty phase every scenario runs, in simulated time.
pub const DURATION_DEFAULT: Duration = Duration::from_secs(10);

/// Single broker, fsync=always (the default), power loss and process restarts: no acked record may
/// ever be lost.
pub fn single_broker_power_loss(fsync: FsyncPolicy) -> ScenarioConfig {
    ScenarioConfig {
        name: if fsync == FsyncPolicy::Always {
            "single_broker_power_loss_fsync_always"
        } else {
            "single_broker_power_loss_fsync_never"
        },
        fsync,
        faults: FaultClasses {
            power_loss: Use::Always,
            process_restart: Use::Sometimes,
            slow_fsync: Use::Sometimes,
            failing_fsync: Use::Off,
            failing_write: Use::Off,
            pause: Use::Off,
            clog: Use::Off,
        },
        duration: DURATION_DEFAULT,
    }
}

/// Single broker whose fsyncs are slow and sometimes fail, with occasional power loss.
pub fn single_broker_slow_and_failing_fsync() -> ScenarioConfig {
    ScenarioConfig {
        name: "single_broker_slow_and_failing_fsync",
        fsync: FsyncPolicy::Always,
        faults: FaultClasses {
            power_loss: Use::Sometimes,
            process_restart: Use::Off,
            slow_fsync: Use::Always,
            failing_fsync: Use::Always,
            failing_write: Use::Sometimes,
            pause: Use::Off,
            clog: Use::Off,
        },
        duration: DURATION_DEFAULT,
    }
}

/// Single broker that is paused (a GC or VM stall) and cut off the network, plus process crashes.
pub fn single_broker_pause_and_clog() -> ScenarioConfig {
    ScenarioConfig {
        name: "single_broker_pause_and_clog",
        fsync: FsyncPolicy::Always,
        faults: FaultClasses {
            power_loss: Use::Off,
            process_restart: Use::Sometimes,
            slow_fsync: Use::Off,
            failing_fsync: Use::Off,
            failing_write: Use::Off,
            pause: Use::Always,
            clog: Use::Always,
        },
        duration: DURATION_DEFAULT,
    }
}

/// Every fault class at once, rates drawn per seed.
pub fn single_broker_swarm() -> ScenarioConfig {
    ScenarioConfig {
        name: "single_broker_swarm",
        fsync: FsyncPolicy::Always,
        faults: FaultClasses {
            power_loss: Use::Sometimes,
            process_restart: Use::Sometimes,
            slow_fsync: Use::Sometimes,
            failing_fsync: Use::Sometimes,
            failing_write: Use::Sometimes,
            pause: Use::Sometimes,
            clog: Use::Sometimes,
        },
        duration: DURATION_DEFAULT,
    }
}

/// Single broker with `fsync = "never"` whose disk fails writes (EIO, ENOSPC), with process crashes
/// and clean restarts but no power loss and no failed fsync: the page cache survives all of these,
/// so no acked record may be lost even though nothing is fsynced (issue 7: a failed write was acked).
pub fn single_broker_write_errors_fsync_never() -> ScenarioConfig {
    ScenarioConfig {
        name: "single_broker_write_errors_fsync_never",
        fsync: FsyncPolicy::Never,
        faults: FaultClasses {
            power_loss: Use::Off,
            process_restart: Use::Sometimes,
            slow_fsync: Use::Off,
            failing_fsync: Use::Off,
            failing_write: Use::Always,
            pause: Use::Off,
            clog: Use::Off,
        },
        duration: DURATION_DEFAULT,
    }
}
