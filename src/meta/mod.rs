//! Cluster metadata: one Raft group (raft-rs) whose log is persisted in a [`store::MetaStore`]
//! and applied to the sans-IO metadata state machine ([`state`]).

pub mod fence_watch;
pub mod node;
pub mod raft_store;
pub mod state;
pub mod store;
#[cfg(not(madsim))]
pub mod store_rocks;
pub mod store_sim;
