//! Keel's deterministic simulation: the real broker, under madsim, with injected faults.
//!
//! In: a scenario and a seed. Out: recorded histories judged by the model's checkers
//! (`keel_model::queue_checker`, `metadata_checker`, `raft_checker`), invariants checked during the
//! run, and a last line `seed=<n> trace_hash=<16 hex digits>` that is the same every time the same
//! seed runs.
//!
//! # Shape (TigerBeetle's VOPR)
//! One driver runs every scenario; a scenario is a config (brokers, fsync policy, fault classes),
//! a workload and the checkers that judge it; each seed draws its own mix ("swarm") of workload
//! shape and fault rates; one nemesis injects overlapping faults; one verdict.
//!
//! # Layout
//! - `campaign` (madsim only): many seeds over every scenario on every core, with the coverage
//!   table CI prints and enforces (`sim/tests/campaign.rs`).
//! - `scenario` (madsim only): the `Scenario` type, the catalogue of every scenario, and the
//!   regression seeds CI replays first.
//! - `driver` (madsim only): the one driver: setup, workload, nemesis, heal, liveness (within one
//!   bound, `driver::LIVENESS_MS_MAX`), verdict; `run_seed` for plain `#[test]`s.
//! - `swarm` (madsim only): what each seed draws; the harness's one weighted draw.
//! - `nemesis` (madsim only): one fault engine with overlapping faults, targets chosen per fault
//!   class among the scenario's nodes, and required faults forced, counted and enforced.
//! - `outcome` (madsim only): the checkers' verdicts, the `Outcome` of one seed
//!   and its one `assert_valid`.
//! - `monitor` (madsim only): the Raft observers feeding `raft_checker` during the run, and the
//!   supervisor that judges every Raft node that stopped (a checker, not a driver).
//! - `replicas` (madsim only): the ISR scenarios' convergence check (every in-sync replica holds
//!   the leader's bytes below the high watermark).
//! - `isr_watch` (madsim only): the controller's partition records as the harness reads them (the
//!   nemesis's partition-aware faults use them), the ISR timeline recorded during a run, and the
//!   min-ISR and full-ISR checks.
//! - `cluster` (madsim only): named nodes running `keel::server::run_broker` over a `SimDisk` and
//!   a `SimKv` that outlive restarts; kill, power loss, restart, clean restart, pause, clog, link
//!   clogs, latency, disk and metadata-store faults, heal; every broker exit judged by its cause.
//! - [`workload`]: the queue workload (producers, consumers at the tails, the final reader),
//!   recording one history and checking durability invariants during the run.
//! - [`kafka_workload`]: idempotent producers speaking Kafka's wire protocol to the brokers' Kafka
//!   listeners, beside the queue workload's native ones (ADR 0026).
//! - [`meta_workload`]: admin processes creating, deleting, describing and listing topics through
//!   random brokers, recorded for `keel_model::metadata_checker`.
//! - [`history_file`]: the JSON Lines history every scenario writes with `KEEL_SIM_HISTORY`, and
//!   its reader.
//! - [`trace`]: the harness's event log and the stable (FNV-1a) trace hash.
//!
//! # Randomness
//! The driver, the swarm and the nemesis draw from madsim's seeded RNG. The workloads take an
//! injected RNG (a `rand::rngs::StdRng` seeded from the swarm's draw) and use only the keel client
//! and tokio, so [`workload`], [`meta_workload`], [`history_file`] and [`trace`] also build without
//! `--cfg madsim`, where a harness outside the simulation (the Docker tests of `jepsen/`) can reuse
//! them with real time and its own seed.
//!
//! # Running
//! The scenarios live in `sim/tests/scenarios.rs`. `sim/.cargo/config.toml` builds with
//! `--cfg madsim` into `target/sim`, so run them from `sim/`:
//!
//! ```text
//! cd sim
//! cargo test                                   # every scenario, one (time-based) seed each
//! MADSIM_TEST_NUM=20 cargo test --release      # 20 consecutive seeds per scenario
//! MADSIM_TEST_SEED=42 cargo test single_broker_power_loss_fsync_always -- --nocapture
//! MADSIM_TEST_CHECK_DETERMINISM=1 cargo test   # runs each seed twice, compares every random draw
//! RUST_LOG=info MADSIM_TEST_SEED=42 cargo test single_broker_swarm -- --nocapture   # with logs
//! MADSIM_TEST_SEED=1 MADSIM_TEST_NUM=200 cargo test --release raft_3_voters_power_loss  # 200 seeds
//! KEEL_SIM_TRACE=1 ...                         # also print every nemesis action with its time
//! KEEL_SIM_HISTORY=/tmp ...                    # write each run's history as JSON Lines
//! ```
//!
//! A failing seed panics with the checkers' reports, the violations, the tail of the trace and the
//! command that reproduces it.

use std::sync::{Mutex, MutexGuard};

#[cfg(madsim)]
pub mod campaign;
#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod driver;
pub mod durable_acks;
pub mod group_workload;
pub mod history_file;
#[cfg(madsim)]
pub mod isr_watch;
pub mod kafka_workload;
pub mod meta_workload;
#[cfg(madsim)]
pub mod monitor;
#[cfg(madsim)]
pub mod nemesis;
#[cfg(madsim)]
pub mod outcome;
pub mod push_workload;
pub mod replayer;
#[cfg(madsim)]
pub mod replicas;
#[cfg(madsim)]
pub mod scenario;
#[cfg(madsim)]
pub mod swarm;
pub mod trace;
pub mod workload;

/// Installs a `tracing` subscriber when `RUST_LOG` is set (timestamps are simulated time).
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    }
}

/// Locks a harness mutex; a poisoned lock only happens in a test that already panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
