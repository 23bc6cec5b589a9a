//! The metadata Raft driver (`keel::meta::node`) across restarts, on a one-voter group over a
//! simulated store (no network: a single voter elects itself and commits alone).

use std::collections::BTreeMap;

use bytes::Bytes;
use keel::meta::node::{start_node, NodeConfig, NodeHandle, Transport};
use keel::meta::state::{MetaCommand, MetaResult};
use keel::meta::store_sim::SimKv;
use keel::types::{NodeId, ProducerId};
use tokio_util::sync::CancellationToken;

/// A one-voter group sends nothing.
struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, _to: NodeId, _message: Bytes) {}
}

fn start(kv: &SimKv, shutdown: &CancellationToken) -> NodeHandle {
    start_with(kv, shutdown, NodeConfig::new(NodeId(1), BTreeMap::from([(NodeId(1), "10.0.0.1:9400".to_owned())])))
}

fn start_with(kv: &SimKv, shutdown: &CancellationToken, config: NodeConfig) -> NodeHandle {
    start_node(config, kv.open(), NoPeers, shutdown.clone()).expect("the node starts")
}

/// A restarted node re-applies the committed entries after its snapshot, among them the ones its
/// previous incarnation proposed. Request ids restart at 1 in every incarnation, so before proposals
/// carried a per-incarnation nonce, the new incarnation's first proposal (request 1) was answered
/// with the result of the old incarnation's request 1: here the same producer-id block twice.
/// Found by the Raft simulation (`raft_3_voters_swarm` seed 900045 and two others).
#[tokio::test]
async fn a_restarted_node_answers_its_proposals_with_their_own_entries() {
    let kv = SimKv::new(7);
    let shutdown = CancellationToken::new();
    let node = start(&kv, &shutdown);
    let first = node.propose(MetaCommand::AllocateProducerIds { count: 10 }).await;
    assert_eq!(first, Ok(MetaResult::ProducerIds { first: ProducerId(0), count: 10 }));
    shutdown.cancel();
    node.stopped().await;

    let shutdown = CancellationToken::new();
    let node = start(&kv, &shutdown);
    assert_eq!(node.boot_snapshot_index(), 0);
    let second = node.propose(MetaCommand::AllocateProducerIds { count: 10 }).await;
    assert_eq!(second, Ok(MetaResult::ProducerIds { first: ProducerId(10), count: 10 }), "a block handed out twice");
    shutdown.cancel();
    node.stopped().await;
}

/// The snapshot a node boots from is known from the moment it starts: `boot_snapshot_index` and the
/// first status agree, and the node applies from the entry after it. (The simulation's observers
/// read the first status's `first_index` for the restart check; it used to be a default 0 until the
/// node task's first turn, which made the strict restart check never run.)
#[tokio::test]
async fn a_restarted_node_reports_the_snapshot_it_booted_from() {
    let kv = SimKv::new(8);
    let mut config = NodeConfig::new(NodeId(1), BTreeMap::from([(NodeId(1), "10.0.0.1:9400".to_owned())]));
    config.snapshot_interval_entries = 4;
    let shutdown = CancellationToken::new();
    let node = start_with(&kv, &shutdown, config.clone());
    for _ in 0..10 {
        node.propose(MetaCommand::AllocateProducerIds { count: 1 }).await.expect("applied");
    }
    let snapshot_index = node.status().first_index - 1;
    assert!(snapshot_index >= 8, "the node compacted every 4 entries: {:?}", node.status());
    shutdown.cancel();
    node.stopped().await;

    let shutdown = CancellationToken::new();
    let node = start_with(&kv, &shutdown, config);
    assert_eq!(node.boot_snapshot_index(), snapshot_index);
    let status = node.status();
    assert_eq!((status.first_index, status.applied_index), (snapshot_index + 1, snapshot_index), "{status:?}");
    let next = node.propose(MetaCommand::AllocateProducerIds { count: 1 }).await;
    assert_eq!(next, Ok(MetaResult::ProducerIds { first: ProducerId(10), count: 1 }));
    shutdown.cancel();
    node.stopped().await;
}
