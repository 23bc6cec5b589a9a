//! Cluster status: one node's answer to a `ClusterStatusRequest`, with the fan-out to its peers.
//!
//! In: this node's own Raft status and what it knows about the others (the voters of its
//! configuration, the brokers registered in the metadata). Out: one [`NodeStatusInfo`] per node,
//! sorted by node id. With `fan_out`, every other node with a known address is asked (with
//! `fan_out = false`, so there is no recursion) concurrently, each with [`STATUS_PEER_TIMEOUT`];
//! a node that does not answer in time is reported `reachable: false` with the reason.
//!
//! It lives in the client because asking a peer is a client request; the broker's dispatch calls it.
//! Architecture invariant: read-only; it never changes any node's state.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;

use super::{Client, ClientConfig};
use crate::protocol::{ClusterStatusResponse, NodeStatusInfo};

/// How long the answering node waits for each peer's status (connect + answer).
pub const STATUS_PEER_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Nodes one status answer covers at most (voters and registered brokers together).
pub const STATUS_NODES_MAX: usize = 64;

/// Builds the status answer. `known` holds what this node knows about every node (including
/// itself): address, voter, registered, fenced; `own` is this node's live status.
pub async fn gather(
    own: NodeStatusInfo,
    mut known: BTreeMap<u64, NodeStatusInfo>,
    fan_out: bool,
) -> ClusterStatusResponse {
    let answered_by = own.node_id;
    let entry = known.entry(own.node_id).or_default();
    let (voter, registered, fenced) = (entry.voter, entry.registered, entry.fenced);
    let addr = if own.addr.is_empty() { entry.addr.clone() } else { own.addr.clone() };
    *entry = NodeStatusInfo { addr, voter, registered, fenced, reachable: true, ..own };
    while known.len() > STATUS_NODES_MAX {
        known.pop_last();
    }
    if fan_out {
        let peers: Vec<(u64, String)> = known
            .values()
            .filter(|node| node.node_id != answered_by)
            .map(|node| (node.node_id, node.addr.clone()))
            .collect();
        let answers = join_all(peers.into_iter().map(|(node_id, addr)| async move {
            let answer =
                if addr.is_empty() { Err("no known address".to_owned()) } else { ask_peer(node_id, &addr).await };
            (node_id, answer)
        }))
        .await;
        for (node_id, answer) in answers {
            let entry = known.get_mut(&node_id).expect("peers come from known");
            match answer {
                Ok(status) => {
                    *entry = NodeStatusInfo {
                        node_id,
                        addr: entry.addr.clone(),
                        voter: entry.voter,
                        registered: entry.registered,
                        fenced: entry.fenced,
                        reachable: true,
                        error: String::new(),
                        ..status
                    };
                }
                Err(reason) => {
                    entry.reachable = false;
                    entry.error = reason;
                }
            }
        }
    }
    ClusterStatusResponse { nodes: known.into_values().collect(), answered_by, ..Default::default() }
}

/// Asks one peer for its own status (no fan-out, one attempt, short timeouts).
async fn ask_peer(node_id: u64, addr: &str) -> Result<NodeStatusInfo, String> {
    let config = ClientConfig {
        connect_timeout: STATUS_PEER_TIMEOUT,
        request_timeout: STATUS_PEER_TIMEOUT,
        retries: 0,
        ..ClientConfig::default()
    };
    let client = Client::new(addr, config);
    let ask = async {
        // `cluster_status` goes to the bootstrap first and only moves on when it cannot connect;
        // with no other broker known, this asks exactly `addr`.
        let response = client.cluster_status(false).await.map_err(|error| error.to_string())?;
        response
            .nodes
            .into_iter()
            .find(|node| node.node_id == node_id && node.reachable)
            .ok_or_else(|| format!("the node at {addr} did not report node {node_id}'s status"))
    };
    match tokio::time::timeout(STATUS_PEER_TIMEOUT * 2, ask).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer within {:?}", STATUS_PEER_TIMEOUT * 2)),
    }
}
