//! The leader's answer to a `ReplicaStatusRequest` (`keel topic describe`): its high watermark, its
//! own log ends, and each replica's log end and lag as it sees them.
//!
//! In: the partition actor's [`ReplicaStatus`] (one consistent snapshot, taken in the actor's loop)
//! and the request. Out: the wire response, or a typed refusal: `NotLeader` when the actor is not
//! (or no longer, or not yet) the leader, `FencedLeaderEpoch` / `UnknownLeaderEpoch` when the request
//! names an older / newer leader epoch than the actor's (as for a consumer fetch).
//!
//! A follower's log end is its latest fetch offset in the current leader epoch: a leader learns it
//! only from fetches, so a follower that has not fetched since the epoch began (a new leader, a dead
//! follower) has none, and a follower that stopped fetching keeps the last one it sent while the
//! leader's log end moves on (its lag grows). `in_isr` is the ISR the leader works with: the
//! controller's latest decision it has applied, which the metadata's ISR may be a step ahead of.

use crate::partition::replica::RoleKind;
use crate::partition::ReplicaStatus;
use crate::protocol::{ErrorCode, ErrorInfo, ReplicaLogInfo, ReplicaStatusResponse};
use crate::types::{NodeId, Offset};

/// A response carrying only an error.
pub fn refusal(code: ErrorCode, message: impl Into<String>) -> ReplicaStatusResponse {
    ReplicaStatusResponse {
        error: Some(ErrorInfo::new(code, message)),
        leader: 0,
        leader_epoch: -1,
        high_watermark: -1,
        log_start_offset: -1,
        log_end_offset: -1,
        durable_end_offset: -1,
        replicas: Vec::new(),
        storage_failed: false,
        log_size_bytes: 0,
    }
}

/// The answer of replica `me` of partition `name` from its `status`, for a request that named
/// `leader_epoch` (if any).
pub fn answer(me: NodeId, name: &str, leader_epoch: Option<i32>, status: &ReplicaStatus) -> ReplicaStatusResponse {
    match status.role {
        RoleKind::Leader => {}
        RoleKind::Follower { leader } => {
            let message = format!("broker {me} does not lead {name}; its leader is {leader}");
            return refusal(ErrorCode::NotLeader, message);
        }
        RoleKind::Offline => {
            return refusal(ErrorCode::NotLeader, format!("broker {me} does not lead {name}; it is offline here"));
        }
    }
    let epoch = status.leader_epoch.0;
    match leader_epoch {
        Some(asked) if asked < epoch => {
            let message = format!("leader epoch {asked} is older than {name}'s current epoch {epoch}");
            return refusal(ErrorCode::FencedLeaderEpoch, message);
        }
        Some(asked) if asked > epoch => {
            let message =
                format!("broker {me} has not caught up with leader epoch {asked} of {name} (it is at {epoch})");
            return refusal(ErrorCode::UnknownLeaderEpoch, message);
        }
        _ => {}
    }
    let log_end = status.log_end;
    let replica = |node_id: NodeId| {
        let end = if node_id == me {
            Some(log_end)
        } else {
            status.followers.iter().find(|(follower, _)| *follower == node_id).and_then(|(_, end)| *end)
        };
        ReplicaLogInfo {
            node_id: node_id.0,
            log_end_offset: end.map(|end| end.0),
            lag: end.map(|end| lag(log_end, end)),
            in_isr: status.isr.contains(&node_id),
        }
    };
    ReplicaStatusResponse {
        error: None,
        leader: me.0,
        leader_epoch: epoch,
        high_watermark: status.high_watermark.0,
        log_start_offset: status.log_start.0,
        log_end_offset: log_end.0,
        durable_end_offset: status.stable_end.0,
        replicas: status.replicas.iter().copied().map(replica).collect(),
        storage_failed: status.storage_failed,
        log_size_bytes: status.log_size_bytes,
    }
}

/// The lag of a replica at `end` behind a leader at `leader_end`. The core caps a follower's offset
/// at the leader's log end when that log shrinks, so it is never ahead; the floor keeps a bug there
/// from showing as a replica ahead of its leader.
pub fn lag(leader_end: Offset, end: Offset) -> i64 {
    (leader_end.0 - end.0).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LeaderEpoch;

    fn leader_status() -> ReplicaStatus {
        ReplicaStatus {
            role: RoleKind::Leader,
            leader_epoch: LeaderEpoch(3),
            high_watermark: Offset(7),
            log_start: Offset(2),
            log_end: Offset(10),
            stable_end: Offset(9),
            log_size_bytes: 1234,
            followers: vec![(NodeId(1), Some(Offset(7))), (NodeId(3), None)],
            replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
            isr: vec![NodeId(2), NodeId(1)],
            storage_failed: false,
        }
    }

    fn code(response: &ReplicaStatusResponse) -> Option<ErrorCode> {
        response.error.as_ref().map(ErrorInfo::error_code)
    }

    #[test]
    fn a_leader_reports_every_replica_in_replica_order() {
        let response = answer(NodeId(2), "t/0", None, &leader_status());
        assert_eq!(code(&response), None);
        assert_eq!(
            (response.leader, response.leader_epoch, response.high_watermark, response.log_start_offset),
            (2, 3, 7, 2)
        );
        assert_eq!((response.log_end_offset, response.durable_end_offset, response.log_size_bytes), (10, 9, 1234));
        let replicas: Vec<(u64, Option<i64>, Option<i64>, bool)> = response
            .replicas
            .iter()
            .map(|replica| (replica.node_id, replica.log_end_offset, replica.lag, replica.in_isr))
            .collect();
        assert_eq!(
            replicas,
            vec![(1, Some(7), Some(3), true), (2, Some(10), Some(0), true), (3, None, None, false)],
            "the leader is at its own log end; a follower that has not fetched is unknown"
        );
    }

    #[test]
    fn the_request_epoch_is_checked_like_a_fetch() {
        let status = leader_status();
        assert_eq!(code(&answer(NodeId(2), "t/0", Some(3), &status)), None);
        assert_eq!(code(&answer(NodeId(2), "t/0", Some(2), &status)), Some(ErrorCode::FencedLeaderEpoch));
        assert_eq!(code(&answer(NodeId(2), "t/0", Some(4), &status)), Some(ErrorCode::UnknownLeaderEpoch));
        assert_eq!(code(&answer(NodeId(2), "t/0", Some(-1), &status)), Some(ErrorCode::FencedLeaderEpoch));
    }

    #[test]
    fn only_the_leader_answers() {
        let follower = ReplicaStatus { role: RoleKind::Follower { leader: NodeId(1) }, ..leader_status() };
        let response = answer(NodeId(2), "t/0", None, &follower);
        assert_eq!(code(&response), Some(ErrorCode::NotLeader));
        assert!(response.error.unwrap().message.contains("its leader is 1"));
        assert!(response.replicas.is_empty());
        let offline = ReplicaStatus { role: RoleKind::Offline, ..leader_status() };
        assert_eq!(code(&answer(NodeId(2), "t/0", None, &offline)), Some(ErrorCode::NotLeader));
    }

    #[test]
    fn a_lag_is_never_negative() {
        assert_eq!(lag(Offset(10), Offset(4)), 6);
        assert_eq!(lag(Offset(10), Offset(12)), 0);
    }
}
