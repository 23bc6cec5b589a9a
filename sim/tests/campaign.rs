//! The simulation campaign CI runs: the seeds of `sim/failing-seeds.jsonl` first, then a range of
//! new seeds on every scenario, on every core, with the coverage table ([`keel_sim::campaign`]).
//!
//! Ignored by a plain `cargo test` (it is long); run it from `sim/` with a release build:
//!
//! ```text
//! KEEL_SIM_SEEDS=5000..5039 cargo test --release --test campaign -- --ignored --nocapture
//! ```
//!
//! `KEEL_SIM_SEEDS=A..B` (inclusive; default 1..40) are the new seeds each scenario runs (the
//! many-partition scenarios one in `Scenario::campaign_stride` of them when every scenario runs),
//! `KEEL_SIM_SCENARIOS=a,b` limits the scenarios (default: all; each runs every seed), `KEEL_SIM_JOBS` the runs at once
//! (default: the cores). It fails on any failing or hung seed, and when a fault class a scenario
//! uses, an interesting state or a BUGGIFY point never happened (unless `KEEL_SIM_SCENARIOS` picked
//! a subset, where only failures count). Its last line is `simulation: N seeds in S s (seeds A..B)`.
#![cfg(madsim)]

use keel_sim::campaign::{self, CampaignConfig};
use keel_sim::scenario;

fn seed_range() -> (u64, u64) {
    let Ok(text) = std::env::var("KEEL_SIM_SEEDS") else { return (1, 40) };
    let parsed = text.split_once("..").and_then(|(first, last)| Some((first.parse().ok()?, last.parse().ok()?)));
    match parsed {
        Some((first, last)) if first <= last => (first, last - first + 1),
        _ => panic!("KEEL_SIM_SEEDS={text:?}: expected FIRST..LAST (inclusive), e.g. 1..40"),
    }
}

#[test]
#[ignore = "the CI campaign: run with --ignored (release build), see the module doc"]
fn campaign() {
    let (first_seed, seeds_per_scenario) = seed_range();
    let subset = std::env::var("KEEL_SIM_SCENARIOS").ok();
    let scenarios: Vec<_> = match &subset {
        Some(names) => names
            .split(',')
            .map(|name| {
                scenario::by_name(name.trim()).unwrap_or_else(|| panic!("KEEL_SIM_SCENARIOS: no scenario {name:?}"))
            })
            .collect(),
        None => scenario::all(),
    };
    let jobs = std::env::var("KEEL_SIM_JOBS")
        .ok()
        .and_then(|jobs| jobs.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |cores| cores.get()));
    let regressions = if subset.is_some() { Vec::new() } else { scenario::regression_seeds() };
    let strided = subset.is_none();
    let report =
        campaign::run(CampaignConfig { scenarios, first_seed, seeds_per_scenario, regressions, jobs, strided });

    print!("{}", report.table());
    for drift in report.results.iter().filter_map(|result| result.drift.as_deref()) {
        println!("note: {drift}: it no longer replays the run that found its bug");
    }
    let failures = report.failures();
    for failure in &failures {
        println!("{failure}\n");
    }
    let missing = if subset.is_some() { Vec::new() } else { report.never_happened() };
    println!("{}", report.summary_line());
    assert!(
        report.hung.is_empty(),
        "runs hung (no verdict within {:?} of wall time): {:?}",
        campaign::SEED_WALL_MAX,
        report.hung
    );
    assert!(
        failures.is_empty(),
        "{} of {} runs failed (each printed above with its replay command)",
        failures.len(),
        report.runs()
    );
    assert!(missing.is_empty(), "never happened over {} runs: {}", report.runs(), missing.join(", "));
}
