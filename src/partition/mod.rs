//! A partition: its sans-IO core ([`core`]) and the actor that drives it over a log ([`actor`]).

pub mod actor;
pub mod core;
pub mod replica;
pub mod retention;

pub use actor::{
    spawn_partition, ConsumerFetch, NoPeers, OffsetSpec, PartitionHandle, PartitionReply, PartitionSpec, ReplicaNet,
    ReplicaStatus,
};
pub use core::{CoreConfig, FsyncPolicy};
