//! Node-to-node traffic: what this node sends to the other nodes of its cluster.
//!
//! - [`transport`]: one reconnecting, identified (`PeerHello`, ADR 0007), kept-alive connection per
//!   voter, carrying one-way Raft messages for the metadata driver and request/response calls by
//!   [`NodeId`](crate::types::NodeId) (the ISR follower fetcher's replica fetches, next). ADR 0010.
//! - [`status`]: the cluster-status fan-out: a node's own status plus what every other node it
//!   knows says about itself, asked over one short-lived connection each.
//!
//! Architecture invariant: this layer sits below everything that talks to peers (`meta::node`,
//! later `partition`'s fetcher, `server`): it imports only `protocol`, `types` and the shell's
//! clock and randomness, never `meta`, `partition`, `server` or `client` (tests/tidy.rs).

pub mod status;
pub mod transport;

pub use transport::{PeerCallError, PeerTransport, Transport};
