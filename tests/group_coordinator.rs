//! The group coordinator over the wire, against one in-process broker (ADR 0020): find the
//! coordinator (which creates `__consumer_offsets`), join, sync, heartbeat, commit (acked once
//! committed, refused from a stale generation or backwards), a second member's rebalance, leave,
//! reset, describe and list; and the coordinator's state surviving a broker restart (it is rebuilt
//! from the offsets partition). Bad input gets typed errors.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use keel::client::{Client, ClientConfig};
use keel::protocol::*;
use support::in_process::{free_addr, start};

fn error_of(body: &Body) -> Option<ErrorCode> {
    let error = match body {
        Body::FindCoordinatorResponse(r) => &r.error,
        Body::JoinGroupResponse(r) => &r.error,
        Body::SyncGroupResponse(r) => &r.error,
        Body::HeartbeatResponse(r) => &r.error,
        Body::LeaveGroupResponse(r) => &r.error,
        Body::OffsetCommitResponse(r) => &r.error,
        Body::OffsetFetchResponse(r) => &r.error,
        Body::ResetOffsetsResponse(r) => &r.error,
        Body::ListGroupsResponse(r) => &r.error,
        Body::DescribeGroupResponse(r) => &r.error,
        Body::ProduceResponse(r) => &r.error,
        Body::CreateTopicResponse(r) => &r.error,
        other => panic!("not a group response: {other:?}"),
    };
    error.as_ref().map(ErrorInfo::error_code)
}

/// Sends `body` to the broker, retrying (bounded) while the coordinator is being created or loaded.
async fn send(client: &Client, addr: SocketAddr, body: Body) -> Body {
    let addr = addr.to_string();
    for _ in 0..200 {
        // A restarted broker may not listen yet.
        let pending = match client.start(&addr, body.clone()).await {
            Err(keel::client::ClientError::Connect { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            pending => pending.unwrap(),
        };
        let response = client.finish(&addr, pending, Duration::from_secs(5)).await.unwrap();
        match error_of(&response) {
            Some(
                ErrorCode::CoordinatorNotAvailable | ErrorCode::CoordinatorLoadInProgress | ErrorCode::NotCoordinator,
            ) => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => return response,
        }
    }
    panic!("the coordinator never became available for {body:?}");
}

fn join(member_id: &str) -> Body {
    Body::JoinGroupRequest(JoinGroupRequest {
        group: "readers".into(),
        member_id: member_id.into(),
        client_id: "test".into(),
        session_timeout_ms: 3_000,
        topics: vec!["orders".into()],
        assignors: vec!["roundrobin".into(), "range".into()],
    })
}

fn commit(generation: i32, member_id: &str, partition: u32, offset: i64) -> Body {
    Body::OffsetCommitRequest(OffsetCommitRequest {
        group: "readers".into(),
        generation,
        member_id: member_id.into(),
        offsets: vec![PartitionOffset { topic: "orders".into(), partition, offset }],
    })
}

fn heartbeat(generation: i32, member_id: &str) -> Body {
    Body::HeartbeatRequest(HeartbeatRequest { group: "readers".into(), generation, member_id: member_id.into() })
}

/// A new member's join: the coordinator names it first (`MemberIdRequired`, KIP-394), then it joins.
async fn join_new(client: &Client, addr: SocketAddr) -> Body {
    let Body::JoinGroupResponse(named) = send(client, addr, join("")).await else { panic!() };
    assert_eq!(named.error.as_ref().map(ErrorInfo::error_code), Some(ErrorCode::MemberIdRequired));
    assert!(!named.member_id.is_empty());
    send(client, addr, join(&named.member_id)).await
}

async fn committed(client: &Client, addr: SocketAddr) -> Vec<PartitionOffset> {
    match send(client, addr, Body::OffsetFetchRequest(OffsetFetchRequest { group: "readers".into() })).await {
        Body::OffsetFetchResponse(r) => r.offsets,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_join_commit_rebalance_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), free_addr()).await;
    let addr = broker.addr;
    let client = Client::new(addr.to_string(), ClientConfig::default());
    // The broker registers itself with the metadata group first.
    let mut created = client.create_topic("orders", 4, 1).await;
    for _ in 0..100 {
        match &created {
            Err(keel::client::ClientError::Server { code: ErrorCode::InvalidReplication, .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                created = client.create_topic("orders", 4, 1).await;
            }
            _ => break,
        }
    }
    created.unwrap();

    let found =
        send(&client, addr, Body::FindCoordinatorRequest(FindCoordinatorRequest { group: "readers".into() })).await;
    let Body::FindCoordinatorResponse(found) = found else { panic!("{found:?}") };
    assert_eq!((found.error, found.addr.as_str()), (None, addr.to_string().as_str()));
    let (a, generation) = first_member(&client, addr).await;

    // Commits: acknowledged once committed; backwards, stale or unassigned ones refused.
    assert_eq!(error_of(&send(&client, addr, commit(generation, &a, 0, 10)).await), None);
    assert_eq!(error_of(&send(&client, addr, commit(generation, &a, 0, 9)).await), Some(ErrorCode::OffsetRegression));
    assert_eq!(
        error_of(&send(&client, addr, commit(generation - 1, &a, 0, 11)).await),
        Some(ErrorCode::IllegalGeneration)
    );
    assert_eq!(
        error_of(&send(&client, addr, commit(generation, "nobody", 0, 11)).await),
        Some(ErrorCode::UnknownMemberId)
    );
    assert_eq!(
        committed(&client, addr).await,
        vec![PartitionOffset { topic: "orders".into(), partition: 0, offset: 10 }]
    );

    // A second member: the first learns of the rebalance by heartbeat, both rejoin, partitions split.
    let client_b = client.clone();
    let b_join = tokio::spawn(async move { join_new(&client_b, addr).await });
    let mut rebalancing = false;
    for _ in 0..100 {
        if error_of(&send(&client, addr, heartbeat(generation, &a)).await) == Some(ErrorCode::RebalanceInProgress) {
            rebalancing = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rebalancing, "the first member heard of the rebalance");
    let Body::JoinGroupResponse(a_again) = send(&client, addr, join(&a)).await else { panic!() };
    let Body::JoinGroupResponse(b) = b_join.await.unwrap() else { panic!() };
    assert_eq!((a_again.error.clone(), b.error.clone()), (None, None));
    assert_eq!((a_again.generation, b.generation), (generation + 1, generation + 1));
    let owned = |r: &JoinGroupResponse| r.assignment.iter().map(|t| t.partitions.len()).sum::<usize>();
    assert_eq!((owned(&a_again), owned(&b)), (2, 2));
    assert_eq!(a_again.assignor, "roundrobin");
    // The old generation can no longer commit.
    assert_eq!(error_of(&send(&client, addr, commit(generation, &a, 0, 12)).await), Some(ErrorCode::IllegalGeneration));

    let described =
        send(&client, addr, Body::DescribeGroupRequest(DescribeGroupRequest { group: "readers".into() })).await;
    let Body::DescribeGroupResponse(described) = described else { panic!() };
    assert_eq!(described.members.len(), 2);
    assert_eq!(described.summary.as_ref().unwrap().state, "stable");

    // Restart: the coordinator rebuilds generation, members and offsets from __consumer_offsets.
    broker.stop().await;
    let broker = start(dir.path(), addr).await;
    let client = Client::new(addr.to_string(), ClientConfig::default());
    assert_eq!(
        committed(&client, addr).await,
        vec![PartitionOffset { topic: "orders".into(), partition: 0, offset: 10 }]
    );
    assert_eq!(error_of(&send(&client, addr, heartbeat(generation + 1, &b.member_id)).await), None);

    // Both leave; then the group is empty and a reset may move offsets back.
    let reset = Body::ResetOffsetsRequest(ResetOffsetsRequest {
        group: "readers".into(),
        offsets: vec![PartitionOffset { topic: "orders".into(), partition: 0, offset: 0 }],
    });
    assert_eq!(error_of(&send(&client, addr, reset.clone()).await), Some(ErrorCode::GroupNotEmpty));
    for member in [&a, &b.member_id] {
        let leave =
            Body::LeaveGroupRequest(LeaveGroupRequest { group: "readers".into(), member_id: member.to_string() });
        assert_eq!(error_of(&send(&client, addr, leave).await), None);
    }
    let mut reset_done = false;
    for _ in 0..100 {
        match error_of(&send(&client, addr, reset.clone()).await) {
            None => {
                reset_done = true;
                break;
            }
            // The empty generation is still being written.
            Some(ErrorCode::Busy) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("{other:?}"),
        }
    }
    assert!(reset_done);
    assert_eq!(
        committed(&client, addr).await,
        vec![PartitionOffset { topic: "orders".into(), partition: 0, offset: 0 }]
    );
    let Body::ListGroupsResponse(list) = send(&client, addr, Body::ListGroupsRequest(ListGroupsRequest {})).await
    else {
        panic!()
    };
    assert_eq!(
        list.groups.iter().map(|g| (g.group.as_str(), g.state.as_str())).collect::<Vec<_>>(),
        [("readers", "empty")]
    );
    bad_input(&client, addr).await;
    broker.stop().await;
}

async fn first_member(client: &Client, addr: SocketAddr) -> (String, i32) {
    let Body::JoinGroupResponse(joined) = join_new(client, addr).await else { panic!() };
    assert_eq!(joined.error, None);
    assert_eq!(joined.assignment.iter().map(|t| t.partitions.len()).sum::<usize>(), 4);
    let sync = Body::SyncGroupRequest(SyncGroupRequest {
        group: "readers".into(),
        generation: joined.generation,
        member_id: joined.member_id.clone(),
    });
    let Body::SyncGroupResponse(synced) = send(client, addr, sync).await else { panic!() };
    assert_eq!(synced.assignment, joined.assignment);
    assert_eq!(error_of(&send(client, addr, heartbeat(joined.generation, &joined.member_id)).await), None);
    (joined.member_id, joined.generation)
}

async fn bad_input(client: &Client, addr: SocketAddr) {
    let find = |group: &str| Body::FindCoordinatorRequest(FindCoordinatorRequest { group: group.into() });
    assert_eq!(error_of(&send(client, addr, find("")).await), Some(ErrorCode::InvalidGroupId));
    let mut bad = join("");
    if let Body::JoinGroupRequest(r) = &mut bad {
        r.topics = vec!["no-such-topic".into()];
    }
    assert_eq!(error_of(&send(client, addr, bad).await), Some(ErrorCode::UnknownTopic));
    let mut bad = join("");
    if let Body::JoinGroupRequest(r) = &mut bad {
        r.session_timeout_ms = 1;
    }
    assert_eq!(error_of(&send(client, addr, bad).await), Some(ErrorCode::InvalidSessionTimeout));
    let describe = Body::DescribeGroupRequest(DescribeGroupRequest { group: "never".into() });
    assert_eq!(error_of(&send(client, addr, describe).await), Some(ErrorCode::UnknownGroup));
    // The offsets topic is the brokers' own.
    let produce = Body::ProduceRequest(ProduceRequest {
        topic: "__consumer_offsets".into(),
        partition: 0,
        acks: Acks::All as i32,
        batch: keel::batch::encode_batch(&[keel::batch::Record::value("x")], 0, keel::batch::ProducerFields::NONE),
        timeout_ms: 1000,
    });
    assert_eq!(error_of(&send(client, addr, produce).await), Some(ErrorCode::InternalTopic));
    for result in [
        client.create_topic("__mine", 1, 1).await,
        client.delete_topic("__consumer_offsets").await,
        client.alter_topic("__consumer_offsets", LogSettingsInfo::default()).await,
    ] {
        assert!(
            matches!(result, Err(keel::client::ClientError::Server { code: ErrorCode::InternalTopic, .. })),
            "{result:?}"
        );
    }
}
