//! Cluster status: one node's answer to a `ClusterStatusRequest`, with the fan-out to its peers.
//!
//! In: this node's own Raft status and what it knows about the others (the voters of its
//! configuration, the brokers registered in the metadata). Out: one [`NodeStatusInfo`] per node,
//! sorted by node id. With `fan_out`, every other node with a known address is asked (with
//! `fan_out = false`, so there is no recursion) concurrently, each with [`STATUS_PEER_TIMEOUT_MS`];
//! a node that does not answer in time is reported `reachable: false` with the reason.
//!
//! The broker's dispatch calls it; asking a peer takes one short-lived connection (a plain request,
//! no peer handshake: registered brokers that are not voters are asked too), so neither the server
//! nor this module needs the client.
//! Architecture invariant: read-only; it never changes any node's state.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use futures::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

use crate::protocol::{frame_codec, Body, ClusterStatusRequest, ClusterStatusResponse, Frame, NodeStatusInfo};
use crate::types::NodeId;

/// How long the answering node waits for each peer's status (connect + answer).
pub const STATUS_PEER_TIMEOUT_MS: u64 = 1_000;
/// Nodes one status answer covers at most (voters and registered brokers together).
pub const STATUS_NODES_MAX: usize = 64;

/// Builds the status answer. `known` holds what this node knows about every node (including
/// itself): address, voter, registered, fenced; `own` is this node's live status.
pub async fn gather(
    own: NodeStatusInfo,
    mut known: BTreeMap<NodeId, NodeStatusInfo>,
    fan_out: bool,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> ClusterStatusResponse {
    let answered_by = own.node_id;
    let entry = known.entry(NodeId(own.node_id)).or_default();
    let (voter, registered, fenced) = (entry.voter, entry.registered, entry.fenced);
    let addr = if own.addr.is_empty() { entry.addr.clone() } else { own.addr.clone() };
    *entry = NodeStatusInfo { addr, voter, registered, fenced, reachable: true, ..own };
    while known.len() > STATUS_NODES_MAX {
        known.pop_last();
    }
    if fan_out {
        let peers: Vec<(NodeId, String)> = known
            .values()
            .filter(|node| node.node_id != answered_by)
            .map(|node| (NodeId(node.node_id), node.addr.clone()))
            .collect();
        let answers = join_all(peers.into_iter().map(|(node_id, addr)| async move {
            let answer =
                if addr.is_empty() { Err("no known address".to_owned()) } else { ask_peer(node_id, &addr, tls).await };
            (node_id, answer)
        }))
        .await;
        for (node_id, answer) in answers {
            let entry = known.get_mut(&node_id).expect("peers come from known");
            match answer {
                Ok(status) => {
                    *entry = NodeStatusInfo {
                        node_id: node_id.0,
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
async fn ask_peer(
    node_id: NodeId,
    addr: &str,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Result<NodeStatusInfo, String> {
    let request = Body::ClusterStatusRequest(ClusterStatusRequest { fan_out: false });
    let response = match ask_once(addr, request, Duration::from_millis(STATUS_PEER_TIMEOUT_MS), tls).await? {
        Body::ClusterStatusResponse(response) => response,
        Body::ErrorResponse(response) => {
            let error = response.error.map(|error| error.message).unwrap_or_default();
            return Err(format!("the node at {addr} refused the status request: {error}"));
        }
        _ => return Err(format!("the node at {addr} sent an unexpected answer to a status request")),
    };
    response
        .nodes
        .into_iter()
        .find(|node| node.node_id == node_id.0 && node.reachable)
        .ok_or_else(|| format!("the node at {addr} did not report node {node_id}'s status"))
}

/// One request on a fresh connection to `addr`: at most `timeout` to connect, and `timeout` more
/// for the answer. The connection is dropped afterwards.
async fn ask_once(
    addr: &str,
    request: Body,
    timeout: Duration,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Body, String> {
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(format!("cannot connect to {addr}: {error}")),
        Err(_) => return Err(format!("no connection to {addr} within {timeout:?}")),
    };
    // Every socket Keel opens sets TCP_NODELAY (tests/tcp_nodelay.rs).
    let _ = stream.set_nodelay(true);
    let stream = crate::tls::connect(tls, addr, stream)
        .await
        .map_err(|error| format!("TLS handshake with {addr} failed: {error}"))?;
    let mut framed = Framed::new(stream, frame_codec());
    const CORRELATION_ID: u64 = 1;
    let exchange = async {
        framed.send(Frame::new(CORRELATION_ID, request).encode_to_bytes()).await.map_err(|error| error.to_string())?;
        loop {
            let bytes = match framed.next().await {
                Some(Ok(bytes)) => bytes,
                Some(Err(error)) => return Err(error.to_string()),
                None => return Err("the connection closed before the answer".to_owned()),
            };
            let frame = Frame::decode_bytes(bytes.freeze()).map_err(|error| format!("undecodable answer: {error}"))?;
            if frame.correlation_id == CORRELATION_ID {
                return frame.body.ok_or_else(|| "an answer without a body".to_owned());
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(answer) => answer.map_err(|error| format!("{addr}: {error}")),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
