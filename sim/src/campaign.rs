//! The campaign: many seeds over every scenario, on every core, judged as one run with a coverage
//! table (what CI runs; `sim/tests/campaign.rs`).
//!
//! In: the seeds of `sim/failing-seeds.jsonl` (replayed first), a range of new seeds run on every
//! scenario, and how many runs go at once. Out: a [`CampaignReport`]: every failure with the command
//! that replays it, how often each fault class, interesting state ([`keel::sometimes`]) and BUGGIFY
//! point ([`keel::buggify`]) happened, simulated seconds per wall second, and the line
//! `simulation: N seeds in S s (seeds A..B)`.
//!
//! A campaign fails when a seed fails, when a run hangs (no verdict within [`SEED_WALL_MAX`] of
//! wall time: the simulation spins without simulated time passing, or loops), or when something
//! listed never happened over all its runs: a fault class some scenario uses, an interesting state,
//! a BUGGIFY point. A check that never sees its interesting state proves nothing, so CI's seed set
//! must reach every one.
//!
//! Each run is [`crate::driver::run_seed_with`] on its own OS thread (madsim keeps a simulation's
//! state in thread-locals); `jobs` worker threads pull runs from one queue.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel::buggify::Point;
use keel::sometimes::Sometimes;

use crate::driver::{run_seed_with, RunOptions};
use crate::lock;
use crate::scenario::{RegressionSeed, Scenario};
use crate::swarm::FaultClass;

/// Longest one run may take in wall time before the campaign calls it hung (the slowest scenarios
/// take about a second in a release build).
pub const SEED_WALL_MAX: Duration = Duration::from_secs(300);

/// What to run.
pub struct CampaignConfig {
    pub scenarios: Vec<Scenario>,
    /// New seeds: every scenario runs each of `first_seed..first_seed + seeds_per_scenario`.
    pub first_seed: u64,
    pub seeds_per_scenario: u64,
    /// Replayed before the new seeds.
    pub regressions: Vec<RegressionSeed>,
    /// Whether each scenario runs one of every [`Scenario::campaign_stride`] new seeds (the full
    /// campaign, as CI runs it) rather than all of them.
    pub strided: bool,
    /// Runs at once (one core each).
    pub jobs: usize,
}

/// One run to do.
#[derive(Clone)]
struct Job {
    scenario: Scenario,
    seed: u64,
    /// The trace hash `sim/failing-seeds.jsonl` lists, for a replayed seed.
    listed_hash: Option<u64>,
}

/// What one run gave.
pub struct RunResult {
    pub scenario: &'static str,
    pub seed: u64,
    pub replayed: bool,
    pub wall: Duration,
    pub simulated_ms: u64,
    pub brokers: usize,
    /// The failure text (checker reports, violations, trace tail, replay command), if it failed.
    pub failure: Option<String>,
    /// For a replayed seed whose trace hash is not the listed one.
    pub drift: Option<String>,
    pub faults: BTreeMap<FaultClass, u64>,
    pub coverage: Vec<(Sometimes, u64)>,
    pub buggify_fired: Vec<(Point, u64)>,
}

/// Everything a campaign found.
pub struct CampaignReport {
    pub results: Vec<RunResult>,
    pub wall: Duration,
    pub first_seed: u64,
    pub last_seed: u64,
    /// Fault classes some scenario uses (the ones that must happen).
    pub classes_used: BTreeSet<FaultClass>,
    /// Runs that did not end within [`SEED_WALL_MAX`]: `(scenario, seed)`.
    pub hung: Vec<(&'static str, u64)>,
}

/// Runs the campaign.
pub fn run(config: CampaignConfig) -> CampaignReport {
    let started = Instant::now();
    let classes_used = config
        .scenarios
        .iter()
        .flat_map(|scenario| scenario.faults.iter().filter(|(_, use_)| use_.enabled()).map(|(class, _)| *class))
        .collect();
    let mut queue: VecDeque<Job> = config
        .regressions
        .iter()
        .filter_map(|entry| {
            let scenario = crate::scenario::by_name(&entry.scenario)?;
            Some(Job { scenario, seed: entry.seed, listed_hash: Some(entry.trace_hash) })
        })
        .collect();
    let last_seed = config.first_seed + config.seeds_per_scenario.saturating_sub(1);
    for seed in config.first_seed..=last_seed {
        for scenario in &config.scenarios {
            let stride = if config.strided { scenario.campaign_stride.max(1) } else { 1 };
            if (seed - config.first_seed).is_multiple_of(stride) {
                queue.push_back(Job { scenario: scenario.clone(), seed, listed_hash: None });
            }
        }
    }
    let total = queue.len();
    let (results, hung) = run_jobs(queue, config.jobs.max(1), total);
    CampaignReport { results, wall: started.elapsed(), first_seed: config.first_seed, last_seed, classes_used, hung }
}

/// Per worker, the run it is on: scenario, seed, since when.
type Running = BTreeMap<usize, (&'static str, u64, Instant)>;

/// Runs `total` jobs from `queue` on `jobs` workers; returns the results and the hung runs (the
/// campaign stops waiting at the first hang and leaves its thread behind).
fn run_jobs(queue: VecDeque<Job>, jobs: usize, total: usize) -> (Vec<RunResult>, Vec<(&'static str, u64)>) {
    let queue = Arc::new(Mutex::new(queue));
    let running: Arc<Mutex<Running>> = Arc::default();
    let (sender, receiver) = mpsc::channel();
    for worker in 0..jobs {
        let (queue, running, sender) = (queue.clone(), running.clone(), sender.clone());
        std::thread::spawn(move || loop {
            let Some(job) = lock(&queue).pop_front() else { return };
            lock(&running).insert(worker, (job.scenario.name, job.seed, Instant::now()));
            let result = run_one(job);
            lock(&running).remove(&worker);
            if sender.send(result).is_err() {
                return;
            }
        });
    }
    drop(sender);
    let mut results = Vec::with_capacity(total);
    while results.len() < total {
        match receiver.recv_timeout(Duration::from_secs(1)) {
            Ok(result) => results.push(result),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let hung: Vec<(&'static str, u64)> = lock(&running)
                    .values()
                    .filter(|(_, _, since)| since.elapsed() > SEED_WALL_MAX)
                    .map(|(name, seed, _)| (*name, *seed))
                    .collect();
                if !hung.is_empty() {
                    lock(&queue).clear();
                    return (results, hung);
                }
            }
        }
    }
    (results, Vec::new())
}

/// One run, quiet; a panic (a harness bug, or a broker task's) is a failure like any other.
fn run_one(job: Job) -> RunResult {
    let started = Instant::now();
    let (name, seed, brokers) = (job.scenario.name, job.seed, job.scenario.brokers);
    let options = RunOptions { quiet: true, cut: None, ..RunOptions::from_env() };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run_seed_with(job.scenario, seed, options)));
    let wall = started.elapsed();
    let mut result = RunResult {
        scenario: name,
        seed,
        replayed: job.listed_hash.is_some(),
        wall,
        simulated_ms: 0,
        brokers,
        failure: None,
        drift: None,
        faults: BTreeMap::new(),
        coverage: Vec::new(),
        buggify_fired: Vec::new(),
    };
    match outcome {
        Ok(outcome) => {
            result.failure = outcome.failure();
            result.drift = job.listed_hash.filter(|listed| *listed != outcome.trace_hash).map(|listed| {
                format!("{name} seed {seed} drifted (trace hash {:016x}, listed {listed:016x})", outcome.trace_hash)
            });
            result.simulated_ms = outcome.simulated_ms;
            result.faults = outcome.faults;
            result.coverage = outcome.coverage;
            result.buggify_fired = outcome.buggify_fired;
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned());
            result.failure = Some(format!(
                "scenario {name} PANICKED with seed {seed} (reproduce: sim/replay {name} {seed}): {message}"
            ));
        }
    }
    result
}

impl CampaignReport {
    /// Runs of new seeds plus replayed ones.
    pub fn runs(&self) -> usize {
        self.results.len()
    }

    /// The failure texts, replayed seeds first.
    pub fn failures(&self) -> Vec<&str> {
        let mut failed: Vec<&RunResult> = self.results.iter().filter(|result| result.failure.is_some()).collect();
        failed.sort_by_key(|result| (!result.replayed, result.scenario, result.seed));
        failed.iter().filter_map(|result| result.failure.as_deref()).collect()
    }

    /// What never happened over the whole campaign although it is listed: fault classes some
    /// scenario uses, interesting states, BUGGIFY points.
    pub fn never_happened(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for class in &self.classes_used {
            if !self.results.iter().any(|result| result.faults.get(class).is_some_and(|count| *count > 0)) {
                missing.push(format!("fault {class:?}"));
            }
        }
        for (state, runs, _) in self.coverage_rows() {
            if runs == 0 {
                missing.push(format!("state {}", state.name()));
            }
        }
        for (point, runs, _) in self.buggify_rows() {
            if runs == 0 {
                missing.push(format!("buggify {}", point.name()));
            }
        }
        missing
    }

    /// Per interesting state: the runs that reached it and the total hits.
    pub fn coverage_rows(&self) -> Vec<(Sometimes, usize, u64)> {
        tally(&self.results, &Sometimes::ALL, |result| &result.coverage)
    }

    /// Per BUGGIFY point: the runs where it fired and the total fires.
    pub fn buggify_rows(&self) -> Vec<(Point, usize, u64)> {
        tally(&self.results, &Point::ALL, |result| &result.buggify_fired)
    }

    /// Simulated seconds per wall second of the runs with `brokers` brokers (`None`: every run).
    pub fn speed(&self, brokers: Option<usize>) -> f64 {
        let chosen = self.results.iter().filter(|result| brokers.is_none_or(|brokers| result.brokers == brokers));
        let (simulated_ms, wall) = chosen
            .fold((0u64, 0.0f64), |(sim, wall), result| (sim + result.simulated_ms, wall + result.wall.as_secs_f64()));
        if wall == 0.0 {
            0.0
        } else {
            simulated_ms as f64 / 1000.0 / wall
        }
    }

    /// The tables: faults, interesting states, BUGGIFY points, speed per scenario.
    pub fn table(&self) -> String {
        let mut text = String::from("fault class                     runs  injected\n");
        for class in &self.classes_used {
            let counts = self.results.iter().map(|result| result.faults.get(class).copied().unwrap_or(0));
            let (runs, hits) = counts.fold((0, 0), |(runs, hits), count| (runs + usize::from(count > 0), hits + count));
            text.push_str(&format!("  {:<30}{runs:>5}{hits:>10}\n", format!("{class:?}")));
        }
        text.push_str("interesting state               runs      hits\n");
        for (state, runs, hits) in self.coverage_rows() {
            text.push_str(&format!("  {:<30}{runs:>5}{hits:>10}\n", state.name()));
        }
        text.push_str("buggify point                   runs     fired\n");
        for (point, runs, hits) in self.buggify_rows() {
            text.push_str(&format!("  {:<30}{runs:>5}{hits:>10}\n", point.name()));
        }
        text.push_str(&self.speed_table());
        text
    }

    fn speed_table(&self) -> String {
        let mut per_scenario: BTreeMap<&str, (usize, u64, f64)> = BTreeMap::new();
        for result in &self.results {
            let entry = per_scenario.entry(result.scenario).or_default();
            *entry = (entry.0 + 1, entry.1 + result.simulated_ms, entry.2 + result.wall.as_secs_f64());
        }
        let mut text =
            String::from("scenario                            runs  sim s/run  wall ms/run  sim s per wall s\n");
        for (name, (runs, simulated_ms, wall)) in per_scenario {
            text.push_str(&format!(
                "  {name:<34}{runs:>5}{:>11.1}{:>13.0}{:>18.0}\n",
                simulated_ms as f64 / 1000.0 / runs as f64,
                wall * 1000.0 / runs as f64,
                simulated_ms as f64 / 1000.0 / wall.max(1e-9),
            ));
        }
        text.push_str(&format!(
            "simulated seconds per wall second: {:.0} over every run, {:.0} with 3 brokers\n",
            self.speed(None),
            self.speed(Some(3))
        ));
        text
    }

    /// `simulation: N seeds in S s (seeds A..B)`, N counting every run (replayed seeds too).
    pub fn summary_line(&self) -> String {
        format!(
            "simulation: {} seeds in {} s (seeds {}..{})",
            self.runs(),
            self.wall.as_secs(),
            self.first_seed,
            self.last_seed
        )
    }
}

/// Per item: the runs whose `counts` show it at least once, and its total over every run.
fn tally<T: PartialEq + Copy>(
    results: &[RunResult],
    items: &[T],
    counts: impl Fn(&RunResult) -> &[(T, u64)],
) -> Vec<(T, usize, u64)> {
    items
        .iter()
        .map(|&item| {
            let per_run = results.iter().map(|result| count_of(counts(result), item));
            let (runs, total) =
                per_run.fold((0, 0), |(runs, total), count| (runs + usize::from(count > 0), total + count));
            (item, runs, total)
        })
        .collect()
}

fn count_of<T: PartialEq + Copy>(counts: &[(T, u64)], what: T) -> u64 {
    counts.iter().find(|(item, _)| *item == what).map_or(0, |(_, count)| *count)
}
