//! Keel's reference models and history checkers.
//!
//! Pure code: no I/O, no async, no clocks. Used by proptests (as the model the real code is compared
//! with), by the simulation and by the Jepsen harness (to judge recorded histories).

pub mod compaction;
pub mod fnv;
pub mod group_checker;
pub mod history;
pub mod idempotent;
pub mod metadata_checker;
pub mod partition_log;
pub mod queue_checker;
pub mod raft_checker;
pub mod replicated_log;
mod report;
