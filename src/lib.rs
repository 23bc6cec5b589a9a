//! Keel: a Kafka-model message broker whose server code runs unchanged on tokio and in a seeded
//! madsim simulation.
//!
//! # Layout
//! - [`types`], [`batch`], [`protocol`]: the data model and the wire format (pure).
//! - [`storage`]: the disk traits and their real and simulated implementations.
//! - [`log`]: a partition's segmented log over a [`storage::Disk`].
//! - [`meta`]: cluster metadata: the Raft log store, the metadata state machine.
//! - [`partition`]: the sans-IO partition core and the actor (shell) that drives it.
//! - [`server`]: the broker: listener, connections, topic registry, shutdown.
//! - [`client`]: the async Rust client (producer, consumer, admin) used by the CLI, sim and benches.
//! - [`config`]: broker configuration (flags and TOML); [`tls`]: TLS on every connection.
//! - [`metrics`]: the broker's Prometheus metrics; `admin`: the HTTP listener that serves them.
//! - [`sometimes`], [`buggify`]: the simulation's coverage counters and BUGGIFY points (no-ops in
//!   the normal build).
//! - `process` (normal build only): real `keel broker` processes for the real-process tests and
//!   `keel cluster up`.
//!
//! See docs/ARCHITECTURE.md for the code map and its invariants.

#[cfg(not(madsim))]
pub mod admin;
pub mod auth;
pub mod batch;
pub mod buggify;
pub mod cli;
pub mod client;
pub mod clock;
pub mod compression;
pub mod config;
pub mod group;
pub mod kafka;
pub mod leader_epochs;
pub mod log;
pub mod meta;
pub mod metrics;
pub mod partition;
pub mod peer;
#[cfg(not(madsim))]
pub mod process;
pub mod producer_state;
pub mod protocol;
pub mod random;
#[cfg(not(madsim))]
pub mod reserving_alloc;
pub mod server;
pub mod sometimes;
pub mod storage;
pub mod tls;
pub mod topic_name;
pub mod types;
