//! The group client against a scripted fake coordinator on loopback: the answers a real coordinator
//! gives only under rare timing are forced here, and the requests the client sends after each are
//! checked.
//!
//! - `UnknownMemberId` on a heartbeat: no commit, rejoin with an empty member id;
//! - `IllegalGeneration`: no commit, rejoin with the same member id;
//! - `RebalanceInProgress`: commit the consumed positions in the current generation, then rejoin
//!   with the same member id;
//! - `NotCoordinator` on a commit: find the coordinator again and send the same commit (same
//!   generation) to the new one;
//! - `OffsetOutOfRange` on a fetch: the reset policy moves the position, and a notice says so (or,
//!   with the policy none, the poll fails).
//!
//! Every wait is bounded.

#![cfg(not(madsim))]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::batch::{encode_batch, Batch, ProducerFields, Record};
use keel::client::group::{GroupConsumer, GroupConsumerConfig, Offsets, TopicPartition};
use keel::client::{Client, ClientConfig};
use keel::protocol::*;
use keel::types::{LeaderEpoch, Offset};
use support::fake_broker::{fake_broker, one_reply};
use tokio::time::{timeout, Instant};

const TOPIC: &str = "t";
const GROUP: &str = "g";
/// Bound on any one wait of these tests.
const WAIT_MAX: Duration = Duration::from_secs(30);

fn info(code: ErrorCode) -> Option<ErrorInfo> {
    Some(ErrorInfo::new(code, "scripted"))
}

fn metadata(node_id: u64, addr: SocketAddr) -> Body {
    Body::MetadataResponse(MetadataResponse {
        brokers: vec![BrokerInfo { node_id, addr: addr.to_string(), kafka_addr: String::new() }],
        topics: vec![TopicInfo {
            name: TOPIC.into(),
            error: None,
            partitions: vec![PartitionInfo {
                partition: 0,
                leader: node_id,
                replicas: vec![node_id],
                isr: vec![node_id],
                leader_epoch: 1,
                partition_epoch: 1,
                unclean_elections: 0,
                elr: Vec::new(),
            }],
            min_insync_replicas: 1,
            unclean_leader_election: false,
            log: None,
        }],
    })
}

/// One record at `offset` (valued by its offset), as a fetch answers it.
fn record_at(offset: i64) -> Body {
    let batch = encode_batch(&[Record::value(offset.to_string())], 0, ProducerFields::NONE);
    let batch = Batch::parse(batch).unwrap().stamped(Offset(offset), LeaderEpoch(1));
    Body::FetchResponse(FetchResponse {
        error: None,
        high_watermark: offset + 1,
        log_start_offset: 0,
        records: batch.into_bytes(),
    })
}

fn assignment() -> Vec<TopicPartitions> {
    vec![TopicPartitions { topic: TOPIC.into(), partitions: vec![0] }]
}

/// What the fake coordinator of the rebalance test saw and what it answers next.
#[derive(Default)]
struct Coordinator {
    /// Every group request, in arrival order, as `(kind, generation, member id, offset)`.
    seen: Vec<(&'static str, i32, String, Option<i64>)>,
    generation: i32,
    members: u32,
    committed: Option<i64>,
    /// Error codes for the next heartbeats, in order; then success.
    heartbeats: Vec<ErrorCode>,
    /// Fetches below it are out of range (retention deleted those records).
    log_start: i64,
}

impl Coordinator {
    fn answer(&mut self, body: Body, addr: SocketAddr) -> Body {
        match body {
            Body::MetadataRequest(_) => metadata(1, addr),
            Body::FindCoordinatorRequest(_) => Body::FindCoordinatorResponse(FindCoordinatorResponse {
                error: None,
                node_id: 1,
                addr: addr.to_string(),
                partition: 0,
                kafka_addr: String::new(),
            }),
            Body::JoinGroupRequest(join) => {
                self.seen.push(("join", -1, join.member_id.clone(), None));
                self.generation += 1;
                let member_id = if join.member_id.is_empty() {
                    self.members += 1;
                    format!("m{}", self.members)
                } else {
                    join.member_id
                };
                Body::JoinGroupResponse(JoinGroupResponse {
                    error: None,
                    generation: self.generation,
                    leader_id: member_id.clone(),
                    member_id,
                    assignor: "range".into(),
                    assignment: assignment(),
                })
            }
            Body::SyncGroupRequest(_) => {
                Body::SyncGroupResponse(SyncGroupResponse { error: None, assignment: assignment() })
            }
            Body::OffsetFetchRequest(_) => Body::OffsetFetchResponse(OffsetFetchResponse {
                error: None,
                offsets: self
                    .committed
                    .map(|offset| PartitionOffset { topic: TOPIC.into(), partition: 0, offset })
                    .into_iter()
                    .collect(),
            }),
            Body::ListOffsetsRequest(list) => {
                let offset = if list.timestamp_ms == LIST_OFFSETS_EARLIEST { self.log_start } else { 0 };
                Body::ListOffsetsResponse(ListOffsetsResponse { error: None, offset, timestamp_ms: -1 })
            }
            Body::FetchRequest(fetch) if fetch.offset < self.log_start => Body::FetchResponse(FetchResponse {
                error: info(ErrorCode::OffsetOutOfRange),
                high_watermark: -1,
                log_start_offset: -1,
                records: Default::default(),
            }),
            Body::FetchRequest(fetch) => record_at(fetch.offset),
            Body::HeartbeatRequest(heartbeat) => {
                self.seen.push(("heartbeat", heartbeat.generation, heartbeat.member_id, None));
                let error = (!self.heartbeats.is_empty()).then(|| self.heartbeats.remove(0));
                Body::HeartbeatResponse(HeartbeatResponse { error: error.and_then(info) })
            }
            Body::OffsetCommitRequest(commit) => {
                let offset = commit.offsets[0].offset;
                self.seen.push(("commit", commit.generation, commit.member_id, Some(offset)));
                self.committed = Some(offset);
                Body::OffsetCommitResponse(OffsetCommitResponse { error: None })
            }
            Body::LeaveGroupRequest(leave) => {
                self.seen.push(("leave", -1, leave.member_id, None));
                Body::LeaveGroupResponse(LeaveGroupResponse { error: None })
            }
            other => panic!("unexpected request {other:?}"),
        }
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        retries: 3,
        retry_backoff: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(50),
        tls: None,
    }
}

/// Polls until the coordinator has seen `joins` joins; the records polled meanwhile.
async fn poll_until_joins(consumer: &mut GroupConsumer, coordinator: &Mutex<Coordinator>, joins: usize) -> usize {
    let deadline = Instant::now() + WAIT_MAX;
    let mut polled = 0;
    while coordinator.lock().unwrap().seen.iter().filter(|seen| seen.0 == "join").count() < joins {
        assert!(Instant::now() < deadline, "timed out waiting for {joins} joins");
        polled += consumer.poll(Duration::from_millis(20)).await.expect("poll").len();
    }
    polled
}

/// A fake broker that is its own group's coordinator, answering as `coordinator` says.
async fn fake_coordinator(coordinator: &Arc<Mutex<Coordinator>>) -> SocketAddr {
    // The script names its own address: it is handed over once the listener is bound.
    let own_addr = Arc::new(Mutex::new(None::<SocketAddr>));
    let (script_state, script_addr) = (coordinator.clone(), own_addr.clone());
    let addr = fake_broker(one_reply(move |body| {
        let addr = script_addr.lock().unwrap().expect("address set before the first request");
        script_state.lock().unwrap().answer(body, addr)
    }))
    .await;
    *own_addr.lock().unwrap() = Some(addr);
    addr
}

#[tokio::test]
async fn an_out_of_range_position_moves_by_the_reset_policy_and_says_so() {
    // The group committed 3, but retention has deleted everything below 10 since.
    let coordinator = Arc::new(Mutex::new(Coordinator { committed: Some(3), log_start: 10, ..Coordinator::default() }));
    let addr = fake_coordinator(&coordinator).await;
    let mut consumer = GroupConsumer::new(
        Client::new(addr.to_string(), client_config()),
        GroupConsumerConfig::new(GROUP, vec![TOPIC.into()]),
    );
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    consumer.on_notice(move |line| sink.lock().unwrap().push(line.to_owned()));
    timeout(WAIT_MAX, consumer.join()).await.unwrap().unwrap();
    assert_eq!(consumer.positions()[&TopicPartition::new(TOPIC, 0)], Offset(3), "from the committed offset");
    let deadline = Instant::now() + WAIT_MAX;
    let records = loop {
        let records = consumer.poll(Duration::from_millis(20)).await.unwrap();
        if !records.is_empty() || Instant::now() >= deadline {
            break records;
        }
    };
    assert_eq!(records[0].2.offset, Offset(10), "the earliest offset once 3 was out of range");
    let notices = notices.lock().unwrap().clone();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains("t/0: offset 3 is out of range"), "{notices:?}");
    assert!(notices[0].contains("going on from the earliest offset 10"), "{notices:?}");

    // With the policy none, the same position is an error.
    let mut strict = GroupConsumerConfig::new(GROUP, vec![TOPIC.into()]);
    strict.reset = keel::client::group::ResetPolicy::None;
    let mut consumer = GroupConsumer::new(Client::new(addr.to_string(), client_config()), strict);
    coordinator.lock().unwrap().committed = Some(3);
    timeout(WAIT_MAX, consumer.join()).await.unwrap().unwrap();
    let error = consumer.poll(Duration::ZERO).await.unwrap_err();
    assert!(error.to_string().contains("offset 3 is out of range"), "{error}");
}

#[tokio::test]
async fn a_member_rejoins_as_each_heartbeat_refusal_asks() {
    let coordinator = Arc::new(Mutex::new(Coordinator {
        heartbeats: vec![ErrorCode::UnknownMemberId, ErrorCode::IllegalGeneration, ErrorCode::RebalanceInProgress],
        ..Coordinator::default()
    }));
    let addr = fake_coordinator(&coordinator).await;
    let client = Client::new(addr.to_string(), client_config());
    let mut config = GroupConsumerConfig::new(GROUP, vec![TOPIC.into()]);
    // Heartbeats every 100 ms.
    config.session_timeout_ms = 300;
    let mut consumer = GroupConsumer::new(client, config);
    timeout(WAIT_MAX, consumer.join()).await.unwrap().unwrap();
    assert_eq!((consumer.generation(), consumer.member_id()), (1, "m1"));

    // UnknownMemberId, then IllegalGeneration, then RebalanceInProgress: four joins in all.
    let polled = poll_until_joins(&mut consumer, &coordinator, 4).await;
    assert!(polled > 0, "records were consumed between the rebalances");
    let seen = coordinator.lock().unwrap().seen.clone();
    let refusals: Vec<usize> = seen.iter().enumerate().filter(|(_, s)| s.0 == "heartbeat").map(|(i, _)| i).collect();
    let after = |index: usize| seen[index + 1..].iter().take_while(|s| s.0 != "heartbeat").cloned().collect::<Vec<_>>();
    assert_eq!(after(refusals[0]), vec![("join", -1, String::new(), None)], "UnknownMemberId: a new member, no commit");
    assert_eq!(seen[refusals[1]].1, 2, "the new member heartbeats in its generation");
    assert_eq!(after(refusals[1]), vec![("join", -1, "m2".into(), None)], "IllegalGeneration: same member, no commit");
    let rebalance = after(refusals[2]);
    assert_eq!(rebalance.len(), 2, "{rebalance:?}");
    let ("commit", 3, member, Some(offset)) = &rebalance[0] else { panic!("commit first: {rebalance:?}") };
    assert_eq!(member, "m2");
    assert_eq!(rebalance[1], ("join", -1, "m2".into(), None), "RebalanceInProgress: commit, then rejoin");

    // The positions after a rejoin come from the committed offsets: what was committed before the
    // rebalance, plus what was polled since.
    assert_eq!(consumer.generation(), 4);
    let position = consumer.positions()[&TopicPartition::new(TOPIC, 0)];
    assert!(position.0 >= *offset, "position {position} behind the commit {offset}");

    let committed = timeout(WAIT_MAX, consumer.leave()).await.unwrap().unwrap();
    let last = coordinator.lock().unwrap().seen.last().cloned().unwrap();
    assert_eq!(last, ("leave", -1, "m2".into(), None));
    if let Some(&offset) = committed.get(&TopicPartition::new(TOPIC, 0)) {
        assert_eq!(offset, position, "leave commits the position");
    }
}

#[tokio::test]
async fn a_commit_refused_by_a_former_coordinator_goes_to_the_new_one() {
    // Broker 2 is the new coordinator: it takes the commit.
    let taken = Arc::new(Mutex::new(Vec::new()));
    let taken_by_2 = taken.clone();
    let broker_2 = fake_broker(one_reply(move |body| match body {
        Body::OffsetCommitRequest(commit) => {
            taken_by_2.lock().unwrap().push((commit.generation, commit.member_id, commit.offsets));
            Body::OffsetCommitResponse(OffsetCommitResponse { error: None })
        }
        other => panic!("broker 2 got {other:?}"),
    }))
    .await;
    // Broker 1 is the bootstrap and the former coordinator: it refuses the commit with NotCoordinator.
    let finds = Arc::new(Mutex::new(0));
    let (finds_1, own_addr) = (finds.clone(), Arc::new(Mutex::new(None::<SocketAddr>)));
    let addr_1 = own_addr.clone();
    let broker_1 = fake_broker(one_reply(move |body| match body {
        Body::FindCoordinatorRequest(_) => {
            *finds_1.lock().unwrap() += 1;
            // The explicit find below and the commit's own find (`find_coordinator` does not fill
            // the cache) name broker 1; the find after NotCoordinator names broker 2.
            let (node_id, addr) =
                if *finds_1.lock().unwrap() <= 2 { (1, addr_1.lock().unwrap().unwrap()) } else { (2, broker_2) };
            Body::FindCoordinatorResponse(FindCoordinatorResponse {
                error: None,
                node_id,
                addr: addr.to_string(),
                partition: 3,
                kafka_addr: String::new(),
            })
        }
        Body::OffsetCommitRequest(_) => {
            Body::OffsetCommitResponse(OffsetCommitResponse { error: info(ErrorCode::NotCoordinator) })
        }
        other => panic!("broker 1 got {other:?}"),
    }))
    .await;
    *own_addr.lock().unwrap() = Some(broker_1);

    let client = Client::new(broker_1.to_string(), client_config());
    let found = client.find_coordinator(GROUP).await.unwrap();
    assert_eq!((found.node_id, found.partition), (1, 3));
    let offsets: Offsets = [(TopicPartition::new(TOPIC, 0), Offset(42))].into();
    timeout(WAIT_MAX, client.commit_offsets(GROUP, 7, "m1", &offsets)).await.unwrap().unwrap();
    assert_eq!(*finds.lock().unwrap(), 3, "the explicit find, the first commit's, the re-find");
    let wire = vec![PartitionOffset { topic: TOPIC.into(), partition: 0, offset: 42 }];
    assert_eq!(*taken.lock().unwrap(), vec![(7, "m1".to_owned(), wire)], "the same commit, same generation");
}
