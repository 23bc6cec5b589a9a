//! Replication between brokers, the shell side of ADR 0011: what a partition actor's
//! [`ReplicaNet`] does on a real broker, and the leader's answer to a follower's fetch.
//!
//! - A follower's fetch goes to its leader as a `ReplicaFetchRequest` over the peer transport (one
//!   connection per other voter, ADR 0010), bounded by the fetch's long-poll wait plus
//!   [`REPLICA_FETCH_TIMEOUT_MS`]. Batches come back as stored bytes; parsing them checks each CRC and
//!   never re-encodes.
//! - ISR changes go to the controller as `ChangeIsr` (fenced by leader epoch and partition epoch);
//!   their outcome comes back to the actor as a new partition state through the reconciler.
//! - A leader's resignation proposes `ResignLeadership`.
//! - The leader side (`serve_replica_fetch`) is reached only from a connection identified as the
//!   fetching replica (`PeerHello`), so one peer cannot fetch, or move a HW, as another.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;

use crate::batch::Batch;
use crate::meta::node::NodeHandle;
use crate::meta::state::{MetaCommand, MetaResult};
use crate::partition::actor::ReplicaNet;
use crate::partition::replica::{FetchRequest, FetchResponse, FetchResult, IsrChange};
use crate::peer::PeerTransport;
use crate::protocol::{Body, DivergingEpoch, ErrorCode, ErrorInfo, ReplicaFetchRequest, ReplicaFetchResponse};
use crate::types::{LeaderEpoch, NodeId, Offset, PartitionId};

/// How long a follower's fetch may go unanswered beyond its long-poll wait.
pub const REPLICA_FETCH_TIMEOUT_MS: u64 = 2_000;
/// How long an ISR change or resignation proposal waits for the controller.
pub const CONTROLLER_PROPOSAL_TIMEOUT_MS: u64 = 3_000;

/// One partition's link to its leader and to the controller.
pub struct PartitionNet {
    pub topic: String,
    pub partition: PartitionId,
    pub transport: PeerTransport,
    pub node: NodeHandle,
}

impl ReplicaNet for PartitionNet {
    fn fetch(&self, leader: NodeId, request: FetchRequest) -> BoxFuture<'static, Result<FetchResponse, String>> {
        let timeout = Duration::from_millis(u64::from(request.wait_ms_max) + REPLICA_FETCH_TIMEOUT_MS);
        let body = Body::ReplicaFetchRequest(request_to_wire(&self.topic, self.partition, &request));
        let transport = self.transport.clone();
        Box::pin(async move {
            match transport.call(leader, body, Some(timeout)).await {
                Ok(Body::ReplicaFetchResponse(response)) => Ok(response_from_wire(response)),
                Ok(Body::ErrorResponse(error)) => {
                    let info = error.error.unwrap_or_else(|| ErrorInfo::new(ErrorCode::Internal, "no error info"));
                    Err(format!("leader {leader} refused the fetch: {:?}: {}", info.error_code(), info.message))
                }
                Ok(_) => Err(format!("leader {leader} answered a fetch with another message")),
                Err(error) => Err(error.to_string()),
            }
        })
    }

    fn change_isr(&self, change: IsrChange) -> BoxFuture<'static, ()> {
        let command = MetaCommand::ChangeIsr {
            topic: self.topic.clone(),
            partition: self.partition.0,
            leader: change.leader,
            leader_epoch: change.leader_epoch,
            partition_epoch: change.partition_epoch,
            isr: change.new_isr,
        };
        propose(self.node.clone(), command, format!("{}/{}", self.topic, self.partition))
    }

    fn resign(&self, leader: NodeId, leader_epoch: LeaderEpoch) -> BoxFuture<'static, ()> {
        let command = MetaCommand::ResignLeadership {
            topic: self.topic.clone(),
            partition: self.partition.0,
            leader,
            leader_epoch,
        };
        propose(self.node.clone(), command, format!("{}/{}", self.topic, self.partition))
    }
}

/// Proposes a partition command, bounded; the outcome reaches the actor as a new partition state, so
/// only failures are logged here.
fn propose(node: NodeHandle, command: MetaCommand, partition: String) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let timeout = Duration::from_millis(CONTROLLER_PROPOSAL_TIMEOUT_MS);
        match tokio::time::timeout(timeout, node.propose(command)).await {
            Ok(Ok(MetaResult::Error { code, message })) => {
                tracing::info!(%partition, ?code, %message, "the controller refused a partition proposal");
            }
            Ok(Ok(result)) => tracing::debug!(%partition, ?result, "partition proposal applied"),
            Ok(Err(error)) => tracing::info!(%partition, %error, "partition proposal failed; the core retries"),
            Err(_) => tracing::info!(%partition, "partition proposal timed out; the core retries"),
        }
    })
}

pub fn request_to_wire(topic: &str, partition: PartitionId, request: &FetchRequest) -> ReplicaFetchRequest {
    ReplicaFetchRequest {
        topic: topic.to_owned(),
        partition: partition.0,
        fetch_id: request.fetch_id,
        replica: request.replica.0,
        leader_epoch: request.leader_epoch.0,
        fetch_offset: request.fetch_offset.0,
        last_fetched_epoch: request.last_fetched_epoch.map(|epoch| epoch.0),
        durable_end: request.durable_end.0,
        max_bytes: request.bytes_max,
        max_wait_ms: request.wait_ms_max,
    }
}

/// The wire request as the core's, or why it is malformed.
pub fn request_from_wire(request: &ReplicaFetchRequest) -> Result<FetchRequest, String> {
    if request.fetch_offset < 0 || request.durable_end < 0 || request.durable_end > request.fetch_offset {
        return Err(format!(
            "fetch offset {} / durable end {} out of range",
            request.fetch_offset, request.durable_end
        ));
    }
    Ok(FetchRequest {
        fetch_id: request.fetch_id,
        replica: NodeId(request.replica),
        leader_epoch: LeaderEpoch(request.leader_epoch),
        fetch_offset: Offset(request.fetch_offset),
        last_fetched_epoch: request.last_fetched_epoch.map(LeaderEpoch),
        durable_end: Offset(request.durable_end),
        bytes_max: request.max_bytes,
        wait_ms_max: request.max_wait_ms,
    })
}

pub fn response_to_wire(response: FetchResponse) -> ReplicaFetchResponse {
    let mut wire = ReplicaFetchResponse {
        error: None,
        fetch_id: response.fetch_id,
        leader_epoch: response.leader_epoch.0,
        high_watermark: response.high_watermark.0,
        diverging: None,
        records: Bytes::new(),
        log_start_offset: response.log_start.map_or(0, |start| start.0),
    };
    match response.result {
        FetchResult::Data { batches } => {
            let mut records = BytesMut::with_capacity(batches.iter().map(Batch::len).sum());
            for batch in &batches {
                records.extend_from_slice(batch.as_bytes());
            }
            wire.records = records.freeze();
        }
        FetchResult::Diverging { epoch, end_offset } => {
            wire.diverging = Some(DivergingEpoch { epoch: epoch.map(|epoch| epoch.0), end_offset: end_offset.0 });
        }
        FetchResult::Error { code, message } => wire.error = Some(ErrorInfo::new(code, message)),
    }
    wire
}

/// The leader's answer as the core's. Batches that do not parse (a bad CRC on the way) make the
/// whole answer an error: nothing corrupt is appended, and the follower asks again.
pub fn response_from_wire(response: ReplicaFetchResponse) -> FetchResponse {
    let result = if let Some(error) = response.error {
        FetchResult::Error { code: error.error_code(), message: error.message }
    } else if let Some(diverging) = response.diverging {
        FetchResult::Diverging { epoch: diverging.epoch.map(LeaderEpoch), end_offset: Offset(diverging.end_offset) }
    } else {
        parse_batches(response.records)
    };
    FetchResponse {
        fetch_id: response.fetch_id,
        leader_epoch: LeaderEpoch(response.leader_epoch),
        high_watermark: Offset(response.high_watermark),
        log_start: Some(Offset(response.log_start_offset.max(0))),
        result,
    }
}

fn parse_batches(mut records: Bytes) -> FetchResult {
    let mut batches = Vec::new();
    loop {
        match Batch::split_first(&mut records) {
            Ok(Some(batch)) => batches.push(batch),
            Ok(None) => return FetchResult::Data { batches },
            Err(error) => {
                return FetchResult::Error {
                    code: ErrorCode::CorruptBatch,
                    message: format!("a replicated batch does not parse: {error}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode_batch, ProducerFields, Record};

    #[test]
    fn a_fetch_request_and_each_kind_of_response_survive_the_wire() {
        let request = FetchRequest {
            fetch_id: 7,
            replica: NodeId(2),
            leader_epoch: LeaderEpoch(3),
            fetch_offset: Offset(10),
            last_fetched_epoch: Some(LeaderEpoch(2)),
            durable_end: Offset(9),
            bytes_max: 1000,
            wait_ms_max: 500,
        };
        assert_eq!(request_from_wire(&request_to_wire("t", PartitionId(1), &request)), Ok(request));

        let batch = Batch::parse(encode_batch(&[Record::value("v")], 0, ProducerFields::NONE))
            .unwrap()
            .stamped(Offset(10), LeaderEpoch(3));
        for result in [
            FetchResult::Data { batches: vec![batch.clone(), batch.clone().stamped(Offset(11), LeaderEpoch(3))] },
            FetchResult::Data { batches: Vec::new() },
            FetchResult::Diverging { epoch: Some(LeaderEpoch(1)), end_offset: Offset(4) },
            FetchResult::Diverging { epoch: None, end_offset: Offset(0) },
            FetchResult::Error { code: ErrorCode::FencedLeaderEpoch, message: "old".into() },
        ] {
            let response = FetchResponse {
                fetch_id: 7,
                leader_epoch: LeaderEpoch(3),
                high_watermark: Offset(8),
                log_start: Some(Offset(2)),
                result,
            };
            assert_eq!(response_from_wire(response_to_wire(response.clone())), response);
        }
    }

    #[test]
    fn malformed_wire_fetches_and_corrupt_batches_are_refused() {
        let mut wire = request_to_wire(
            "t",
            PartitionId(0),
            &FetchRequest {
                fetch_id: 1,
                replica: NodeId(2),
                leader_epoch: LeaderEpoch(0),
                fetch_offset: Offset(5),
                last_fetched_epoch: None,
                durable_end: Offset(5),
                bytes_max: 1,
                wait_ms_max: 0,
            },
        );
        wire.durable_end = 6;
        assert!(request_from_wire(&wire).is_err(), "a durable end past the fetch offset is malformed");
        wire.fetch_offset = -1;
        assert!(request_from_wire(&wire).is_err());

        let batch = encode_batch(&[Record::value("v")], 0, ProducerFields::NONE);
        let mut flipped = batch.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let response = response_from_wire(ReplicaFetchResponse {
            error: None,
            fetch_id: 1,
            leader_epoch: 0,
            high_watermark: 0,
            diverging: None,
            records: Bytes::from(flipped),
            log_start_offset: 0,
        });
        assert!(
            matches!(response.result, FetchResult::Error { code: ErrorCode::CorruptBatch, .. }),
            "{:?}",
            response.result
        );
    }
}
