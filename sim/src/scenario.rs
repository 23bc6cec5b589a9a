//! Scenarios: a cluster, a workload, a nemesis with per-seed fault parameters, a liveness phase
//! and the checkers.
//!
//! In: a [`ScenarioConfig`] (which fault classes, fsync policy, how long). Out: an [`Outcome`] with
//! the checker's report, the violations seen during the run, and the trace hash.
//!
//! # Phases
//! 1. Draw the [`Swarm`] parameters from the seed (TigerBeetle VOPR-style swarm testing: every seed
//!    runs a different mix and rate of faults and a different workload shape).
//! 2. Start one broker, create the topic, start the producers and the consumer.
//! 3. Nemesis: for `duration`, inject the enabled faults at the drawn rates.
//! 4. Liveness: heal everything; the broker must serve again, producers must get acks again, and the
//!    final reader must read every partition from 0 to its high watermark, all within bounds.
//! 5. Check: `queue_checker::check` over the history, plus the invariants checked during the run.

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
    let consumer_node = cluster.add_client();
    next_process += 1;
    workers.push(consumer_node.spawn(run_consumer(
        addr.clone(),
        TOPIC.to_owned(),
        partitions,
        ProcessId(next_process),
        recorder.clone(),
        stop.clone(),
    )));

    // Nemesis.
    run_nemesis(&mut cluster, broker, &swarm, config.duration).await;
    let nemesis_actions = trace.count_prefixed("nemesis");

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
        "scenario {}: {} nemesis actions, {} violations, {} expected durability anomalies",
        outcome.scenario,
        outcome.nemesis_actions,
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

/// Injects faults for `duration` at the swarm's rates. Every action is traced by the cluster.
async fn run_nemesis(cluster: &mut Cluster, broker: usize, swarm: &Swarm, duration: Duration) {
    let deadline = Instant::now() + duration;
    loop {
        let wait_ms = thread_rng().gen_range(swarm.nemesis_interval_ms / 2..=swarm.nemesis_interval_ms * 3 / 2);
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        if Instant::now() >= deadline {
            return;
        }
        let Some(action) = pick_action(swarm) else { continue };
        let outage = Duration::from_millis(thread_rng().gen_range(1..=swarm.outage_ms_max));
        match action {
            Action::PowerLoss => {
                cluster.power_loss(broker);
                tokio::time::sleep(outage).await;
                cluster.restart(broker);
            }
            Action::Kill => {
                cluster.kill(broker);
                tokio::time::sleep(outage).await;
                cluster.restart(broker);
            }
            Action::CleanRestart => cluster.clean_restart(broker).await,
            Action::DiskFaults => {
                let mut rng = thread_rng();
                let latency_max =
                    if swarm.fsync_latency_ms_max > 0 { rng.gen_range(0..=swarm.fsync_latency_ms_max) } else { 0 };
                let latency_min = rng.gen_range(0..=latency_max);
                let error_probability = if swarm.fsync_error_probability_max > 0.0 && rng.gen_bool(0.7) {
                    rng.gen_range(0.0..=swarm.fsync_error_probability_max)
                } else {
                    0.0
                };
                let (write_eio_probability, write_enospc_probability) =
                    if swarm.write_error_probability_max > 0.0 && rng.gen_bool(0.7) {
                        let max = swarm.write_error_probability_max;
                        (rng.gen_range(0.0..=max), if rng.gen_bool(0.5) { rng.gen_range(0.0..=max) } else { 0.0 })
                    } else {
                        (0.0, 0.0)
                    };
                let faults = SimDiskFaults {
                    fsync_error_probability: error_probability,
                    fsync_latency_ms: (latency_min, latency_max),
                    write_eio_probability,
                    write_enospc_probability,
                    ..SimDiskFaults::default()
                };
                cluster.set_disk_faults(broker, faults);
                if swarm.write_error_probability_max > 0.0 {
                    let what = format!(
                        "nemesis write_errors eio_p={write_eio_probability} enospc_p={write_enospc_probability}"
                    );
                    cluster.trace().record(cluster.now_ns(), what);
                }
            }
            Action::Pause => {
                cluster.pause(broker);
                tokio::time::sleep(outage).await;
                cluster.resume(broker);
            }
            Action::Clog => {
                // Either the broker or one client node loses the network for a while.
                let clients = cluster.client_count();
                let target = thread_rng().gen_range(0..=clients);
                if target == clients {
                    cluster.clog_broker(broker);
                    tokio::time::sleep(outage).await;
                    cluster.unclog_broker(broker);
                } else {
                    cluster.clog_client(target);
                    tokio::time::sleep(outage).await;
                    cluster.unclog_client(target);
                }
            }
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
