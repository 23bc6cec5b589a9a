//! Keel's deterministic simulation: the real broker, under madsim, with injected faults.
//!
//! In: a seed. Out: a recorded history judged by `keel_model::queue_checker`, invariants checked
//! during the run, and a last line `seed=<n> trace_hash=<16 hex digits>` that is the same every time
//! the same seed runs.
//!
//! # Layout
//! - [`trace`]: the harness's event log and the stable (FNV-1a) trace hash. Builds everywhere.
//! - `cluster` (madsim only): named nodes running `keel::server::run_broker` over a `SimDisk` that
//!   outlives restarts; kill, power loss, restart, clean restart, pause, clog, disk faults, heal;
//!   every broker exit recorded with its cause (an exit no injected fault explains is a violation).
//! - `workload` (madsim only): producer processes, a consumer and the final reader, all recording
//!   one history; the durability invariants checked during the run.
//! - `scenario` (madsim only): swarm parameters drawn per seed, the nemesis, the liveness phase and
//!   the verdict.
//! - `meta_workload` (madsim only): admin processes creating, deleting, describing and listing topics
//!   through random brokers, recorded for `keel_model::metadata_checker`.
//! - `raft` (madsim only): the metadata Raft scenarios (3 and 5 voters): observers feeding
//!   `keel_model::raft_checker` during the run, a nemesis of crashes, power loss, store write errors,
//!   partitions, bridges, one-way clogs, pauses and delay, and a liveness phase that requires one
//!   leader, a create through every broker and identical metadata on every node.
//!
//! Everything random comes from madsim's seeded RNG (`madsim::rand::thread_rng()`); the disk's own
//! RNG is seeded from it.
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
//! A failing seed panics with the checker's report, the violations, the tail of the trace and the
//! command that reproduces it. From the repository root (no `--cfg madsim`) this crate compiles to
//! the trace module only and its scenarios to nothing.

#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod meta_workload;
#[cfg(madsim)]
pub mod raft;
#[cfg(madsim)]
pub mod scenario;
pub mod trace;
#[cfg(madsim)]
pub mod workload;

/// Installs a `tracing` subscriber when `RUST_LOG` is set (timestamps are simulated time).
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    }
}
