//! The client against scripted fake brokers on loopback: what it sends and how it reacts to the
//! replication-era answers, without a real broker in the way.
//!
//! - fetches carry the cached leader epoch (KIP-320); `FencedLeaderEpoch` and `NotLeader` refresh the
//!   metadata and retry, `UnknownLeaderEpoch` retries the same leader after a backoff; a replica status
//!   request is routed the same way, and an inconsistent answer is a protocol error;
//! - a produce refused with `NotEnoughReplicas` (nothing appended) is retried within the producer's
//!   budget, but only while no later batch of its partition went out; `NotEnoughReplicasAfterAppend`
//!   and `NotLeaderAfterAppend` are ambiguous and never retried;
//! - a dead broker (refusing, or a blackhole that never answers a SYN) delays only the batches bound
//!   for it, and a dead first bootstrap entry costs one connect timeout, not one per metadata request.
//!
//! Each fake broker answers through a script: a function from (correlation id, request) to the
//! replies to write now, so a script can hold a request and answer it later. Every wait is bounded.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::batch::Record;
use keel::client::{delivered, Client, ClientConfig, ClientError, Producer, ProducerConfig};
use keel::protocol::*;
use support::fake_broker::fake_broker;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

const TOPIC: &str = "t";
/// Bound on any one wait of these tests: far above what each step needs.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// An address nothing listens on: connects are refused at once.
fn refusing_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// An address whose connects hang until they time out: a listener with a backlog of 0 whose one
/// queue slot is taken by a connection nobody accepts, so the kernel drops every further SYN. Keep
/// the returned sockets alive for as long as the blackhole is needed.
fn blackhole_addr() -> (SocketAddr, socket2::Socket, std::net::TcpStream) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    (addr, socket, filler)
}

/// Metadata naming `brokers` and topic `t` with one partition per `(leader, leader_epoch)`.
fn metadata(brokers: &[(u64, SocketAddr)], partitions: &[(u64, i32)]) -> Body {
    let partitions = partitions
        .iter()
        .enumerate()
        .map(|(index, &(leader, leader_epoch))| PartitionInfo {
            partition: index as u32,
            leader,
            replicas: vec![leader],
            isr: vec![leader],
            leader_epoch,
            partition_epoch: leader_epoch,
            unclean_elections: 0,
            elr: Vec::new(),
        })
        .collect();
    Body::MetadataResponse(MetadataResponse {
        brokers: brokers
            .iter()
            .map(|&(node_id, addr)| BrokerInfo { node_id, addr: addr.to_string(), kafka_addr: String::new() })
            .collect(),
        topics: vec![TopicInfo {
            name: TOPIC.into(),
            error: None,
            partitions,
            min_insync_replicas: 1,
            unclean_leader_election: false,
            log: None,
        }],
    })
}

fn fetched() -> Body {
    Body::FetchResponse(FetchResponse {
        error: None,
        high_watermark: 0,
        log_start_offset: 0,
        records: Default::default(),
    })
}

fn fetch_refused(code: ErrorCode) -> Body {
    Body::FetchResponse(FetchResponse {
        error: Some(ErrorInfo::new(code, "scripted")),
        high_watermark: -1,
        log_start_offset: -1,
        records: Default::default(),
    })
}

fn produced(base_offset: i64) -> Body {
    Body::ProduceResponse(ProduceResponse { error: None, base_offset, log_start_offset: 0 })
}

fn produce_refused(code: ErrorCode) -> Body {
    Body::ProduceResponse(ProduceResponse {
        error: Some(ErrorInfo::new(code, "scripted")),
        base_offset: -1,
        log_start_offset: -1,
    })
}

fn fast_client(bootstrap: impl Into<String>) -> Arc<Client> {
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        retry_backoff: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(200),
        tls: None,
        ..ClientConfig::default()
    };
    Client::new(bootstrap, config)
}

/// A producer without idempotence: these tests pin what it promises (nothing ambiguous is re-sent).
fn producer_config(retries: u32, retry_backoff: Duration) -> ProducerConfig {
    ProducerConfig { linger: Duration::ZERO, retries, retry_backoff, idempotent: false, ..ProducerConfig::default() }
}

/// What a fake broker saw: the leader epoch of every fetch (or replica status request), metadata
/// requests, produce requests.
#[derive(Default)]
struct Seen {
    fetch_epochs: Vec<Option<i32>>,
    metadata: usize,
    produces: usize,
}

type Shared = Arc<Mutex<Seen>>;

/// Two fake brokers whose metadata names broker 1 leader at epoch 5 until `moved` is set, then
/// broker 2 at epoch 6 (each metadata request counted in `seen`). Every other request is answered
/// by `answer(node, seen, moved, body)`.
async fn leadership_moving_brokers(
    seen: &Shared,
    answer: impl Fn(u64, &mut Seen, &Mutex<bool>, Body) -> Body + Clone + Send + 'static,
) -> Vec<SocketAddr> {
    let moved = Arc::new(Mutex::new(false));
    let addrs: Arc<Mutex<Vec<SocketAddr>>> = Default::default();
    let mut brokers = Vec::new();
    for node in 1..=2u64 {
        let (log, moved, addrs, answer) = (seen.clone(), moved.clone(), addrs.clone(), answer.clone());
        let addr = fake_broker(Box::new(move |id, body| {
            let mut seen = log.lock().unwrap();
            let addrs = addrs.lock().unwrap();
            let all = [(1, addrs[0]), (2, addrs[1])];
            let reply = match body {
                Body::MetadataRequest(_) => {
                    seen.metadata += 1;
                    metadata(&all, &[if *moved.lock().unwrap() { (2, 6) } else { (1, 5) }])
                }
                other => answer(node, &mut seen, &moved, other),
            };
            vec![(id, reply)]
        }))
        .await;
        brokers.push(addr);
    }
    *addrs.lock().unwrap() = brokers.clone();
    brokers
}

#[tokio::test]
async fn fetch_carries_the_leader_epoch_and_a_fenced_one_refreshes_the_metadata() {
    // The first metadata names epoch 3; the leader has moved on to 4, which later metadata names.
    let seen = Shared::default();
    let log = seen.clone();
    let addr_cell: Arc<Mutex<Option<SocketAddr>>> = Default::default();
    let cell = addr_cell.clone();
    let addr = fake_broker(Box::new(move |id, body| {
        let mut seen = log.lock().unwrap();
        let me = cell.lock().unwrap().expect("address set");
        let reply = match body {
            Body::MetadataRequest(_) => {
                seen.metadata += 1;
                metadata(&[(1, me)], &[(1, if seen.metadata == 1 { 3 } else { 4 })])
            }
            Body::FetchRequest(request) => {
                seen.fetch_epochs.push(request.leader_epoch);
                match request.leader_epoch {
                    Some(4) => fetched(),
                    _ => fetch_refused(ErrorCode::FencedLeaderEpoch),
                }
            }
            other => panic!("unexpected request {other:?}"),
        };
        vec![(id, reply)]
    }))
    .await;
    *addr_cell.lock().unwrap() = Some(addr);
    let client = fast_client(addr.to_string());
    let fetched = timeout(WAIT_MAX, client.fetch(TOPIC, 0, keel::types::Offset(0), 1024, Duration::ZERO)).await;
    fetched.unwrap().unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.fetch_epochs, vec![Some(3), Some(4)], "the fenced fetch is retried with the refreshed epoch");
    assert_eq!(seen.metadata, 2);
}

#[tokio::test]
async fn fetch_retries_an_unknown_leader_epoch_on_the_same_leader_and_follows_not_leader() {
    // Broker 1 leads at epoch 5 but has not applied it twice; then it loses the lead to broker 2
    // (epoch 6), which the metadata names once broker 1 said NotLeader.
    let seen = Shared::default();
    let brokers = leadership_moving_brokers(&seen, |node, seen, moved, body| match body {
        Body::FetchRequest(request) => {
            seen.fetch_epochs.push(request.leader_epoch);
            match (node, seen.fetch_epochs.len()) {
                (1, 1 | 2) => fetch_refused(ErrorCode::UnknownLeaderEpoch),
                (1, _) => {
                    *moved.lock().unwrap() = true;
                    fetch_refused(ErrorCode::NotLeader)
                }
                _ => fetched(),
            }
        }
        other => panic!("unexpected request {other:?}"),
    })
    .await;
    let client = fast_client(brokers[0].to_string());
    let fetched = timeout(WAIT_MAX, client.fetch(TOPIC, 0, keel::types::Offset(0), 1024, Duration::ZERO)).await;
    fetched.unwrap().unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.fetch_epochs, vec![Some(5), Some(5), Some(5), Some(6)]);
    assert_eq!(seen.metadata, 2, "UnknownLeaderEpoch keeps the metadata; NotLeader refreshes it");
}

/// A replica status as a leader at `leader_epoch` sends it: every replica at log end 3 but the last,
/// which has not fetched.
fn replica_status(node: u64, leader_epoch: i32) -> Body {
    let replica = |node_id, log_end_offset: Option<i64>| ReplicaLogInfo {
        node_id,
        log_end_offset,
        lag: log_end_offset.map(|end| 3 - end),
        in_isr: log_end_offset.is_some(),
    };
    Body::ReplicaStatusResponse(ReplicaStatusResponse {
        error: None,
        leader: node,
        leader_epoch,
        high_watermark: 3,
        log_start_offset: 0,
        log_end_offset: 3,
        durable_end_offset: 3,
        replicas: vec![replica(node, Some(3)), replica(9, None)],
        storage_failed: false,
        log_size_bytes: 120,
    })
}

fn replica_status_refused(code: ErrorCode) -> Body {
    Body::ReplicaStatusResponse(ReplicaStatusResponse {
        error: Some(ErrorInfo::new(code, "scripted")),
        ..ReplicaStatusResponse::default()
    })
}

#[tokio::test]
async fn replica_status_carries_the_leader_epoch_and_follows_not_leader() {
    // Broker 1 leads at epoch 5 in the first metadata but answers NotLeader; the refreshed metadata
    // names broker 2 at epoch 6, which answers.
    let seen = Shared::default();
    let brokers = leadership_moving_brokers(&seen, |node, seen, moved, body| match body {
        Body::ReplicaStatusRequest(request) => {
            assert_eq!((request.topic.as_str(), request.partition), (TOPIC, 0));
            seen.fetch_epochs.push(request.leader_epoch);
            if node == 1 {
                *moved.lock().unwrap() = true;
                replica_status_refused(ErrorCode::NotLeader)
            } else {
                replica_status(2, 6)
            }
        }
        other => panic!("unexpected request {other:?}"),
    })
    .await;
    let client = fast_client(brokers[0].to_string());
    let status = timeout(WAIT_MAX, client.replica_status(TOPIC, 0)).await.unwrap().unwrap();
    assert_eq!((status.leader, status.leader_epoch, status.high_watermark), (2, 6, keel::types::Offset(3)));
    let rows: Vec<_> =
        status.replicas.iter().map(|r| (r.node_id, r.log_end.map(|end| end.0), r.lag, r.in_isr)).collect();
    assert_eq!(rows, vec![(2, Some(3), Some(0), true), (9, None, None, false)]);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.fetch_epochs, vec![Some(5), Some(6)], "each attempt carries the epoch its metadata named");
    assert_eq!(seen.metadata, 2, "NotLeader refreshed the metadata");
}

#[tokio::test]
async fn an_inconsistent_replica_status_is_a_protocol_error() {
    let addr_cell: Arc<Mutex<Option<SocketAddr>>> = Default::default();
    let cell = addr_cell.clone();
    let addr = fake_broker(Box::new(move |id, body| {
        let me = cell.lock().unwrap().expect("address set");
        let reply = match body {
            Body::MetadataRequest(_) => metadata(&[(1, me)], &[(1, 0)]),
            Body::ReplicaStatusRequest(_) => {
                let Body::ReplicaStatusResponse(mut response) = replica_status(1, 0) else { unreachable!() };
                response.high_watermark = 4; // past the log end
                Body::ReplicaStatusResponse(response)
            }
            other => panic!("unexpected request {other:?}"),
        };
        vec![(id, reply)]
    }))
    .await;
    *addr_cell.lock().unwrap() = Some(addr);
    let client = fast_client(addr.to_string());
    let result = timeout(WAIT_MAX, client.replica_status(TOPIC, 0)).await.unwrap();
    assert!(matches!(result, Err(ClientError::Protocol(_))), "{result:?}");
}

/// A one-broker cluster whose produce answers come from `answer(n)` for the n-th produce (from 1).
async fn produce_broker(answer: impl Fn(usize) -> Body + Send + 'static) -> (SocketAddr, Shared) {
    let seen = Shared::default();
    let log = seen.clone();
    let addr_cell: Arc<Mutex<Option<SocketAddr>>> = Default::default();
    let cell = addr_cell.clone();
    let addr = fake_broker(Box::new(move |id, body| {
        let mut seen = log.lock().unwrap();
        let me = cell.lock().unwrap().expect("address set");
        let reply = match body {
            Body::MetadataRequest(_) => metadata(&[(1, me)], &[(1, 0)]),
            Body::ProduceRequest(_) => {
                seen.produces += 1;
                answer(seen.produces)
            }
            other => panic!("unexpected request {other:?}"),
        };
        vec![(id, reply)]
    }))
    .await;
    *addr_cell.lock().unwrap() = Some(addr);
    (addr, seen)
}

#[tokio::test]
async fn not_enough_replicas_is_retried_until_the_isr_recovers() {
    let (addr, seen) =
        produce_broker(|n| if n <= 2 { produce_refused(ErrorCode::NotEnoughReplicas) } else { produced(7) }).await;
    let producer = Producer::new(fast_client(addr.to_string()), producer_config(5, Duration::from_millis(10)));
    let delivery = producer.send(TOPIC, Some(0), Record::value("v")).await;
    let outcome = timeout(WAIT_MAX, delivered(delivery)).await.unwrap();
    assert_eq!(outcome.unwrap().offset, keel::types::Offset(7));
    assert_eq!(seen.lock().unwrap().produces, 3);
    assert_eq!(producer.stats().requests, 3);
}

#[tokio::test]
async fn not_enough_replicas_fails_definitely_once_the_retries_are_used_up() {
    let (addr, seen) = produce_broker(|_| produce_refused(ErrorCode::NotEnoughReplicas)).await;
    let producer = Producer::new(fast_client(addr.to_string()), producer_config(2, Duration::from_millis(10)));
    let delivery = producer.send(TOPIC, Some(0), Record::value("v")).await;
    let error = timeout(WAIT_MAX, delivered(delivery)).await.unwrap().unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotEnoughReplicas));
    assert!(!error.is_ambiguous(), "nothing was appended: a definite failure");
    assert_eq!(seen.lock().unwrap().produces, 3, "the first send and two retries");
}

#[tokio::test]
async fn after_append_errors_are_ambiguous_and_never_retried() {
    for code in [ErrorCode::NotEnoughReplicasAfterAppend, ErrorCode::NotLeaderAfterAppend] {
        let (addr, seen) = produce_broker(move |_| produce_refused(code)).await;
        let producer = Producer::new(fast_client(addr.to_string()), producer_config(5, Duration::from_millis(10)));
        let delivery = producer.send(TOPIC, Some(0), Record::value("v")).await;
        let error = timeout(WAIT_MAX, delivered(delivery)).await.unwrap().unwrap_err();
        assert_eq!(error.code(), Some(code));
        assert!(error.is_ambiguous(), "{code:?}: appended on the leader, perhaps lost: unknown");
        // The producer is idle after a flush: nothing more went out.
        timeout(WAIT_MAX, producer.flush()).await.unwrap();
        assert_eq!(seen.lock().unwrap().produces, 1, "{code:?} must not be retried");
        assert_eq!(producer.stats().requests, 1);
    }
}

/// A leader that answers `NotLeaderAfterAppend` has given up leadership (a controlled shutdown, a
/// rolling restart): the producer must look the leader up again for its next send, not aim it at
/// the broker that is going away (which answers nothing but `NotLeader` here, counted apart).
#[tokio::test]
async fn the_send_after_not_leader_after_append_goes_to_the_new_leader() {
    let seen = Shared::default();
    let brokers = leadership_moving_brokers(&seen, |node, seen, moved, body| match (node, body) {
        (1, Body::ProduceRequest(_)) => {
            seen.produces += 1;
            *moved.lock().unwrap() = true;
            produce_refused(if seen.produces == 1 { ErrorCode::NotLeaderAfterAppend } else { ErrorCode::NotLeader })
        }
        (_, Body::ProduceRequest(_)) => produced(9),
        (_, other) => panic!("unexpected request {other:?}"),
    })
    .await;
    let producer = Producer::new(fast_client(brokers[0].to_string()), producer_config(0, Duration::from_millis(10)));
    let first = timeout(WAIT_MAX, delivered(producer.send(TOPIC, Some(0), Record::value("a")).await)).await.unwrap();
    assert!(first.as_ref().is_err_and(ClientError::is_ambiguous), "{first:?}");
    let second = timeout(WAIT_MAX, delivered(producer.send(TOPIC, Some(0), Record::value("b")).await)).await.unwrap();
    assert_eq!(second.unwrap().offset, keel::types::Offset(9));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.produces, 1, "the second send went straight to the new leader");
    assert_eq!(seen.metadata, 2, "the leader was looked up again after NotLeaderAfterAppend");
}

#[tokio::test]
async fn a_refused_batch_is_not_retried_after_a_later_batch_of_its_partition_went_out() {
    // The broker holds the first produce until the second arrives, then refuses both with
    // NotEnoughReplicas; the retry of the second succeeds. Re-sending the first would put it after
    // the second, so it must fail instead.
    let (arrived, mut arrivals) = mpsc::unbounded_channel();
    let addr_cell: Arc<Mutex<Option<SocketAddr>>> = Default::default();
    let cell = addr_cell.clone();
    let mut held = Vec::new();
    let mut produces = 0;
    let addr = fake_broker(Box::new(move |id, body| match body {
        Body::MetadataRequest(_) => vec![(id, metadata(&[(1, cell.lock().unwrap().unwrap())], &[(1, 0)]))],
        Body::ProduceRequest(_) => {
            produces += 1;
            let _ = arrived.send(produces);
            match produces {
                1 => {
                    held.push(id);
                    Vec::new()
                }
                2 => {
                    held.push(id);
                    held.drain(..).map(|id| (id, produce_refused(ErrorCode::NotEnoughReplicas))).collect()
                }
                _ => vec![(id, produced(0))],
            }
        }
        other => panic!("unexpected request {other:?}"),
    }))
    .await;
    *addr_cell.lock().unwrap() = Some(addr);
    let producer = Producer::new(fast_client(addr.to_string()), producer_config(5, Duration::from_millis(10)));
    let first = producer.send(TOPIC, Some(0), Record::value("first")).await;
    assert_eq!(timeout(WAIT_MAX, arrivals.recv()).await.unwrap(), Some(1));
    let second = producer.send(TOPIC, Some(0), Record::value("second")).await;
    let first = timeout(WAIT_MAX, delivered(first)).await.unwrap().unwrap_err();
    assert_eq!(first.code(), Some(ErrorCode::NotEnoughReplicas));
    assert!(!first.is_ambiguous());
    let second = timeout(WAIT_MAX, delivered(second)).await.unwrap();
    assert_eq!(second.unwrap().offset, keel::types::Offset(0));
    assert_eq!(producer.stats().requests, 3, "first, second, and the second's retry");
}

/// Broker 1 (live, fake) leads partition 0; `dead` leads partition 1. Both are in the metadata.
async fn live_and_dead(dead: SocketAddr) -> SocketAddr {
    let addr_cell: Arc<Mutex<Option<SocketAddr>>> = Default::default();
    let cell = addr_cell.clone();
    let mut next_offset = 0;
    let live = fake_broker(Box::new(move |id, body| {
        let me = cell.lock().unwrap().expect("address set");
        let reply = match body {
            Body::MetadataRequest(_) => metadata(&[(1, me), (2, dead)], &[(1, 0), (2, 0)]),
            Body::ProduceRequest(_) => {
                next_offset += 1;
                produced(next_offset - 1)
            }
            other => panic!("unexpected request {other:?}"),
        };
        vec![(id, reply)]
    }))
    .await;
    *addr_cell.lock().unwrap() = Some(live);
    live
}

/// Sends one record to the dead broker's partition, then records to the live one's: the live ones
/// must be answered within `live_wait_max` (while the dead one is still unresolved), and the dead
/// one must fail definitely (it never left) within `WAIT_MAX`.
async fn live_partition_keeps_going(producer: &Producer, live_wait_max: Duration) {
    let mut dead = producer.send(TOPIC, Some(1), Record::value("to the dead broker")).await;
    let started = Instant::now();
    for n in 0..5 {
        let delivery = producer.send(TOPIC, Some(0), Record::value(format!("live {n}"))).await;
        let outcome = timeout(live_wait_max, delivered(delivery)).await;
        let outcome = outcome.unwrap_or_else(|_| panic!("live record {n} waited over {live_wait_max:?}"));
        assert_eq!(outcome.unwrap().partition, 0);
    }
    assert!(dead.try_recv().is_err(), "the dead broker's record is still being tried");
    let dead = timeout(WAIT_MAX, delivered(dead)).await.unwrap().unwrap_err();
    assert!(matches!(dead, ClientError::Connect { .. }), "{dead:?}");
    assert!(started.elapsed() < WAIT_MAX);
}

#[tokio::test]
async fn a_refusing_broker_delays_only_its_own_partitions() {
    let live = live_and_dead(refusing_addr()).await;
    // Retries to the dead broker take 100+200+400+800+1600 ms of backoff: the live partition's
    // records used to wait all of it behind the dead one's.
    let producer = Producer::new(fast_client(live.to_string()), producer_config(5, Duration::from_millis(100)));
    live_partition_keeps_going(&producer, Duration::from_millis(1_000)).await;
}

#[tokio::test]
async fn a_blackholed_broker_delays_only_its_own_partitions() {
    let (dead, _listener, _filler) = blackhole_addr();
    let live = live_and_dead(dead).await;
    // Each connect to the blackhole waits the whole connect timeout (2 s here).
    let producer = Producer::new(fast_client(live.to_string()), producer_config(1, Duration::from_millis(100)));
    live_partition_keeps_going(&producer, Duration::from_millis(1_000)).await;
}

#[tokio::test]
async fn a_blackholed_first_bootstrap_entry_costs_one_connect_timeout() {
    let (dead, _listener, _filler) = blackhole_addr();
    let live = live_and_dead(dead).await;
    let client = fast_client(format!("{dead},{live}"));
    // The first request waits out the connect timeout (2 s) on the blackhole, then asks the live one.
    timeout(WAIT_MAX, client.metadata(&[])).await.unwrap().unwrap();
    // Later ones go to the live broker first.
    for _ in 0..3 {
        let started = Instant::now();
        timeout(WAIT_MAX, client.metadata(&[])).await.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_millis(1_000), "took {:?}", started.elapsed());
    }
}

/// A cluster that lost its metadata majority: the live broker answers `NotLeader` (no Raft
/// leader), the other is dead. The error is the live broker's answer, whichever is tried last.
#[tokio::test]
async fn a_broker_without_a_raft_leader_is_reported_over_a_dead_one() {
    let dead = refusing_addr();
    let live = fake_broker(Box::new(|id, _body| {
        let info = ErrorInfo::new(ErrorCode::NotLeader, "no Raft leader is known; try again");
        vec![(id, Body::ErrorResponse(ErrorResponse { error: Some(info) }))]
    }))
    .await;
    for bootstrap in [format!("{live},{dead}"), format!("{dead},{live}")] {
        let client = fast_client(bootstrap.clone());
        for _ in 0..2 {
            let result = timeout(WAIT_MAX, client.metadata(&[])).await.unwrap();
            assert!(
                matches!(&result, Err(error) if error.code() == Some(ErrorCode::NotLeader)),
                "{bootstrap}: {result:?}"
            );
        }
    }
}

#[tokio::test]
async fn acks_none_waits_for_nothing_and_reports_no_broker_error() {
    let (addr, seen) = produce_broker(|_| produce_refused(ErrorCode::NotEnoughReplicas)).await;
    let config = ProducerConfig { acks: Acks::None, ..producer_config(5, Duration::from_millis(10)) };
    let producer = Producer::new(fast_client(addr.to_string()), config);
    let delivery = producer.send(TOPIC, Some(0), Record::value("v")).await;
    let outcome = timeout(WAIT_MAX, delivered(delivery)).await.unwrap();
    assert_eq!(outcome.unwrap().offset, keel::types::Offset(-1), "sent, offset unknown");
    timeout(WAIT_MAX, producer.flush()).await.unwrap();
    assert_eq!(seen.lock().unwrap().produces, 1, "the refusal is neither reported nor retried");
}

// ---- the idempotent producer -------------------------------------------------------------------

/// One produce an idempotent test's broker saw: the batch's producer fields and first value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeenBatch {
    producer_id: i64,
    epoch: i16,
    sequence: i32,
    value: String,
}

impl SeenBatch {
    /// The identity and first letter of a produced batch.
    fn of(request: &ProduceRequest) -> SeenBatch {
        let batch = keel::batch::Batch::parse(request.batch.clone()).expect("a well-formed batch");
        let fields = batch.producer();
        let value = batch.records().next().unwrap().unwrap().value.unwrap();
        SeenBatch {
            producer_id: fields.producer_id.0,
            epoch: fields.producer_epoch.0,
            sequence: fields.base_sequence.0,
            value: String::from_utf8_lossy(&value[..1]).into_owned(),
        }
    }
}

/// A one-broker cluster that hands out producer id 7 (epoch 0) and answers the n-th produce (from 1)
/// with `answer(n, batch)`; every produce's batch is recorded.
async fn idempotent_broker(
    answer: impl Fn(usize, &SeenBatch) -> Body + Send + 'static,
) -> (SocketAddr, Arc<Mutex<Vec<SeenBatch>>>) {
    let seen: Arc<Mutex<Vec<SeenBatch>>> = Default::default();
    let log = seen.clone();
    let addr_cell: Arc<Mutex<Option<SocketAddr>>> = Default::default();
    let cell = addr_cell.clone();
    let addr = fake_broker(Box::new(move |id, body| {
        let me = cell.lock().unwrap().expect("address set");
        let reply = match body {
            Body::MetadataRequest(_) => metadata(&[(1, me)], &[(1, 0)]),
            Body::InitProducerIdRequest(_) => {
                Body::InitProducerIdResponse(InitProducerIdResponse { error: None, producer_id: 7, producer_epoch: 0 })
            }
            Body::ProduceRequest(request) => {
                let seen_batch = SeenBatch::of(&request);
                let mut seen = log.lock().unwrap();
                seen.push(seen_batch.clone());
                answer(seen.len(), &seen_batch)
            }
            other => panic!("unexpected request {other:?}"),
        };
        vec![(id, reply)]
    }))
    .await;
    *addr_cell.lock().unwrap() = Some(addr);
    (addr, seen)
}

fn idempotent_config() -> ProducerConfig {
    ProducerConfig {
        linger: Duration::ZERO,
        retry_backoff: Duration::from_millis(10),
        delivery_timeout: Duration::from_secs(20),
        ..ProducerConfig::default()
    }
}

/// An idempotent producer whose batches hold one record of [`big_record`] each (records of about 224
/// bytes, batches of at most 360).
fn one_record_per_batch(addr: SocketAddr) -> Producer {
    let config = ProducerConfig { batch_bytes_max: 360, ..idempotent_config() };
    Producer::new(fast_client(addr.to_string()), config)
}

/// A record whose value starts with `letter` (the fake brokers tell batches apart by it).
fn big_record(letter: &str) -> Record {
    Record::value(format!("{letter}{}", "x".repeat(199)))
}

/// A batch whose outcome was unknown (appended, then the leader changed; a timeout) is re-sent with
/// the same producer id, epoch and sequence, so the broker can answer the retry with the original
/// offsets; the record is acknowledged, not reported unknown.
#[tokio::test]
async fn an_idempotent_producer_resends_an_ambiguous_batch_with_its_sequence() {
    let (addr, seen) = idempotent_broker(|n, _| match n {
        1 => produce_refused(ErrorCode::NotLeaderAfterAppend),
        2 => produce_refused(ErrorCode::Timeout),
        3 => produce_refused(ErrorCode::DuplicatePending),
        _ => produced(41),
    })
    .await;
    let producer = Producer::new(fast_client(addr.to_string()), idempotent_config());
    let outcome = timeout(WAIT_MAX, delivered(producer.send(TOPIC, Some(0), Record::value("a")).await)).await.unwrap();
    assert_eq!(outcome.unwrap().offset, keel::types::Offset(41));
    let second = timeout(WAIT_MAX, delivered(producer.send(TOPIC, Some(0), Record::value("b")).await)).await.unwrap();
    assert_eq!(second.unwrap().offset, keel::types::Offset(41));
    let seen = seen.lock().unwrap();
    let first = SeenBatch { producer_id: 7, epoch: 0, sequence: 0, value: "a".into() };
    assert_eq!(seen[..4], vec![first.clone(), first.clone(), first.clone(), first], "the same identity each time");
    assert_eq!(seen[4], SeenBatch { producer_id: 7, epoch: 0, sequence: 1, value: "b".into() });
}

/// A batch refused for good leaves a hole in the producer's sequence: the batches after it are
/// refused `OutOfOrderSequence`, and once every started batch is answered the partition's lane
/// starts a new epoch and numbers them again from 0 (KIP-360). Nothing already appended is re-sent
/// with a new sequence.
#[tokio::test]
async fn a_definite_failure_moves_the_later_batches_to_a_new_epoch() {
    let (addr, seen) = idempotent_broker(|_, batch| match (batch.value.as_str(), batch.epoch) {
        ("a", _) => produce_refused(ErrorCode::CorruptBatch),
        (_, 0) => produce_refused(ErrorCode::OutOfOrderSequence),
        _ => produced(i64::from(batch.sequence) + 100),
    })
    .await;
    let producer = one_record_per_batch(addr);
    let a = producer.send(TOPIC, Some(0), big_record("a")).await;
    let b = producer.send(TOPIC, Some(0), big_record("b")).await;
    let c = producer.send(TOPIC, Some(0), big_record("c")).await;
    let a = timeout(WAIT_MAX, delivered(a)).await.unwrap().unwrap_err();
    assert_eq!(a.code(), Some(ErrorCode::CorruptBatch));
    assert!(!a.is_ambiguous());
    let b = timeout(WAIT_MAX, delivered(b)).await.unwrap().unwrap();
    let c = timeout(WAIT_MAX, delivered(c)).await.unwrap().unwrap();
    let seen = seen.lock().unwrap();
    let in_epoch_1: Vec<(i32, String)> =
        seen.iter().filter(|batch| batch.epoch == 1).map(|batch| (batch.sequence, batch.value.clone())).collect();
    assert_eq!(in_epoch_1.first(), Some(&(0, "b".to_owned())), "b opens epoch 1 at sequence 0: {seen:?}");
    assert!(in_epoch_1.iter().all(|(_, value)| value != "a"), "a failed for good: never re-sent");
    assert!(b.offset < c.offset, "order kept: {b:?} {c:?}");
}

/// A batch that never gets a definite answer is re-sent until its delivery timeout, then reported
/// unknown (it may have been appended).
#[tokio::test]
async fn an_idempotent_batch_is_reported_unknown_only_after_its_delivery_timeout() {
    let (addr, seen) = idempotent_broker(|_, _| produce_refused(ErrorCode::NotLeaderAfterAppend)).await;
    let config = ProducerConfig { delivery_timeout: Duration::from_millis(600), ..idempotent_config() };
    let producer = Producer::new(fast_client(addr.to_string()), config);
    let started = Instant::now();
    let error = timeout(WAIT_MAX, delivered(producer.send(TOPIC, Some(0), Record::value("a")).await))
        .await
        .unwrap()
        .unwrap_err();
    assert!(error.is_ambiguous(), "{error:?}");
    assert!(started.elapsed() >= Duration::from_millis(600), "given up before its delivery timeout");
    assert!(seen.lock().unwrap().len() >= 3, "re-sent meanwhile: {:?}", seen.lock().unwrap());
}

/// The broker dedups a producer's last 5 batches, so while a batch's outcome is unknown the producer
/// gives sequences to at most 4 batches after it, acknowledged ones included: otherwise the retry of
/// the oldest could fall out of the broker's window and be refused `OutOfOrderSequence` although it
/// was appended (`idempotent_partitions` seed 20659).
#[tokio::test]
async fn no_batch_gets_a_sequence_past_the_window_of_an_unresolved_one() {
    let a_attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attempts = a_attempts.clone();
    let (addr, seen) = idempotent_broker(move |_, batch| {
        if batch.value == "a" && attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 3 {
            return produce_refused(ErrorCode::NotLeaderAfterAppend);
        }
        produced(i64::from(batch.sequence) + 100)
    })
    .await;
    let producer = one_record_per_batch(addr);
    let mut deliveries = Vec::new();
    for letter in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        deliveries.push(producer.send(TOPIC, Some(0), big_record(letter)).await);
    }
    for (index, delivery) in deliveries.into_iter().enumerate() {
        let metadata = timeout(WAIT_MAX, delivered(delivery)).await.unwrap().unwrap();
        assert_eq!(metadata.offset, keel::types::Offset(100 + index as i64), "each batch once, in order");
    }
    let seen = seen.lock().unwrap();
    let a_resolved = seen.iter().enumerate().filter(|(_, batch)| batch.value == "a").nth(3).expect("a sent 4 times").0;
    let before: Vec<&SeenBatch> = seen[..a_resolved].iter().collect();
    assert!(before.iter().all(|batch| batch.sequence < 5), "a sequence past a's window before a resolved: {seen:?}");
    assert!(seen.iter().any(|batch| batch.value == "f"), "the later batches went out after: {seen:?}");
}

/// An `OutOfOrderSequence` answer can overtake, on its way to the producer, the acknowledgement of
/// the earlier batch it was about: b was sent while a was unanswered, the broker refused b (a not
/// appended yet), then appended a. The producer reads a's acknowledgement first, so b is its oldest
/// unresolved batch when b's refusal comes; that is not a lost sequence (b was sent before a was
/// acknowledged): b is re-sent in the same epoch, not reported `SequenceLost`
/// (`idempotent_partitions` seed 98280204).
#[tokio::test]
async fn an_out_of_order_answer_that_overtook_the_earlier_acknowledgement_is_retried() {
    let seen: Arc<Mutex<Vec<SeenBatch>>> = Default::default();
    let log = seen.clone();
    let addr_cell: Arc<Mutex<Option<SocketAddr>>> = Default::default();
    let cell = addr_cell.clone();
    let mut held_a: Option<u64> = None;
    let addr = fake_broker(Box::new(move |id, body| {
        let me = cell.lock().unwrap().expect("address set");
        match body {
            Body::MetadataRequest(_) => vec![(id, metadata(&[(1, me)], &[(1, 0)]))],
            Body::InitProducerIdRequest(_) => vec![(
                id,
                Body::InitProducerIdResponse(InitProducerIdResponse { error: None, producer_id: 7, producer_epoch: 0 }),
            )],
            Body::ProduceRequest(request) => {
                let seen_batch = SeenBatch::of(&request);
                let mut seen = log.lock().unwrap();
                seen.push(seen_batch.clone());
                let b_sends = seen.iter().filter(|batch| batch.value == "b").count();
                match (seen_batch.value.as_str(), b_sends) {
                    // a's answer is held until b has been sent twice.
                    ("a", _) => {
                        held_a = Some(id);
                        vec![]
                    }
                    // b's first attempt may have been appended (so a wrong reset would report it).
                    ("b", 1) => vec![(id, produce_refused(ErrorCode::Timeout))],
                    // a is appended and acknowledged first, then b's refusal from before it.
                    ("b", 2) => {
                        let a = held_a.take().expect("a is held");
                        vec![(a, produced(100)), (id, produce_refused(ErrorCode::OutOfOrderSequence))]
                    }
                    _ => vec![(id, produced(101))],
                }
            }
            other => panic!("unexpected request {other:?}"),
        }
    }))
    .await;
    *addr_cell.lock().unwrap() = Some(addr);
    let producer = one_record_per_batch(addr);
    let a = producer.send(TOPIC, Some(0), big_record("a")).await;
    let b = producer.send(TOPIC, Some(0), big_record("b")).await;
    let a = timeout(WAIT_MAX, delivered(a)).await.unwrap();
    let b = timeout(WAIT_MAX, delivered(b)).await.unwrap();
    assert_eq!(a.unwrap().offset, keel::types::Offset(100));
    assert_eq!(b.expect("b is re-sent, not given up").offset, keel::types::Offset(101));
    let seen = seen.lock().unwrap();
    assert!(seen.iter().all(|batch| batch.epoch == 0), "no new epoch: {seen:?}");
    assert_eq!(seen.iter().filter(|batch| batch.value == "b").count(), 3, "{seen:?}");
    assert!(seen.iter().filter(|batch| batch.value == "b").all(|batch| batch.sequence == 1), "{seen:?}");
}
