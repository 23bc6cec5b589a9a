//! Push subscriptions (ADR 0021) against one in-process broker.
//!
//! Protocol-level tests speak frames over a raw socket (`Raw`): what is pushed, in which order,
//! within which credit; grants, unsubscribes and the typed errors of bad subscribes; the per
//! connection limit; heartbeats; a subscriber that does not read. Client-level tests drive
//! `keel::client::Subscription`: a small credit window, `OffsetOutOfRange` and `seek`, and a broker
//! restart ridden out without a record lost or repeated.
//!
//! Two tests look at what the tests above cannot see: the client against a scripted fake broker
//! that ignores its credit, and what ended subscriptions leave behind at the partition.
//!
//! Every wait is bounded. A few checks are about something that must *not* happen (no push past the
//! credit); those read for a short while (`ABSENCE_WAIT`) and say so where they do.

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use keel::batch::{encode_batch, peek_batch_span, Batch, BatchSpan, ProducerFields, Record, StoredRecord};
use keel::client::{decode_records, Client, ClientConfig, ClientError, Subscription, SubscriptionConfig};
use keel::protocol::*;
use keel::types::{LeaderEpoch, Offset};
use support::fake_broker::fake_broker;
use support::in_process::{free_addr, start};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Credit large enough never to run out in these tests.
const CREDIT_BYTES_BIG: u64 = 64 * 1024 * 1024;
const CREDIT_RECORDS_BIG: u64 = 1 << 30;
/// How long a check that something does *not* happen reads before it concludes.
const ABSENCE_WAIT: Duration = Duration::from_millis(500);
/// A frame that must come (a push of records already committed, an answer, an end) comes within this.
const FRAME_WAIT: Duration = Duration::from_secs(10);

// ---- the broker (support::in_process runs it) -----------------------------------------------------

/// Creates `topic` with one partition, waiting (bounded) for the broker to register with the
/// metadata group first, and produces nothing.
async fn create_topic(client: &Client, topic: &str) {
    create_topic_with(client, topic, 1).await;
}

async fn create_topic_with(client: &Client, topic: &str, partitions: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.create_topic(topic, partitions, 1).await {
            Ok(()) => return,
            Err(ClientError::Server { code: ErrorCode::InvalidReplication, .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("creating {topic}: {error}"),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Produces `values` as one batch to partition 0 of `topic` (acks=all) and returns its base offset.
async fn produce(client: &Client, topic: &str, values: &[String]) -> i64 {
    produce_to(client, topic, 0, values).await
}

/// Produces `values` as one batch to `partition` of `topic` (acks=all) and returns its base offset.
/// Retries (bounded) only answers that say the batch was not appended: a partition that is still
/// being opened, a broker that does not listen yet.
async fn produce_to(client: &Client, topic: &str, partition: u32, values: &[String]) -> i64 {
    let records: Vec<Record> = values.iter().map(|value| Record::value(value.clone())).collect();
    let batch = encode_batch(&records, now_ms(), ProducerFields::NONE);
    let body = |_leader_epoch| {
        Body::ProduceRequest(ProduceRequest {
            topic: topic.into(),
            partition,
            acks: Acks::All as i32,
            batch: batch.clone(),
            timeout_ms: 5_000,
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let outcome = client.request_partition(topic, partition, body, true, Duration::ZERO).await;
        let retry = match &outcome {
            Ok(Body::ProduceResponse(ProduceResponse { error: None, base_offset, .. })) => return *base_offset,
            Ok(Body::ProduceResponse(ProduceResponse { error: Some(info), .. })) => {
                matches!(info.error_code(), ErrorCode::NotLeader | ErrorCode::LeaderNotReady)
            }
            Err(ClientError::Connect { .. }) => true,
            Err(ClientError::Server { code: ErrorCode::NotLeader | ErrorCode::LeaderNotReady, .. }) => true,
            _ => false,
        };
        assert!(retry && Instant::now() < deadline, "producing {values:?} to {topic}/{partition}: {outcome:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Produces each value as its own single-record batch, in order; returns the values.
async fn produce_each(client: &Client, topic: &str, values: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut produced = Vec::new();
    for value in values {
        produce(client, topic, std::slice::from_ref(&value)).await;
        produced.push(value);
    }
    produced
}

// ---- a raw connection ---------------------------------------------------------------------------

/// A client connection that speaks frames directly, so that a test sees every push.
struct Raw {
    framed: Framed<TcpStream, LengthDelimitedCodec>,
    /// Frames read while looking for another correlation id, in arrival order.
    stash: VecDeque<Frame>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { framed: Framed::new(stream, frame_codec()), stash: VecDeque::new() }
    }

    async fn send(&mut self, id: u64, body: Body) {
        self.framed.send(Frame::new(id, body).encode_to_bytes()).await.unwrap();
    }

    async fn subscribe(&mut self, id: u64, request: SubscribeRequest) {
        self.send(id, Body::SubscribeRequest(request)).await;
    }

    /// The next frame with correlation id `id`, or `None` if none came within `wait`. Frames for
    /// other ids are kept for later calls.
    async fn frame_for(&mut self, id: u64, wait: Duration) -> Option<Frame> {
        if let Some(index) = self.stash.iter().position(|frame| frame.correlation_id == id) {
            return self.stash.remove(index);
        }
        let deadline = Instant::now() + wait;
        loop {
            let bytes = match timeout_at(deadline, self.framed.next()).await {
                Err(_) => return None,
                Ok(None) => panic!("the broker closed the connection while frame {id} was awaited"),
                Ok(Some(bytes)) => bytes.unwrap(),
            };
            let frame = Frame::decode_bytes(bytes.freeze()).unwrap();
            if frame.correlation_id == id {
                return Some(frame);
            }
            self.stash.push_back(frame);
        }
    }

    /// Sends a request and returns its answer.
    async fn request(&mut self, id: u64, body: Body) -> Body {
        self.send(id, body.clone()).await;
        let frame = self.frame_for(id, FRAME_WAIT).await;
        frame.unwrap_or_else(|| panic!("no answer to {body:?} within {FRAME_WAIT:?}")).body.unwrap()
    }

    /// The next frame of subscription `id` (a push, a heartbeat or the end), within `wait`.
    async fn push(&mut self, id: u64, wait: Duration) -> Option<PushBatch> {
        let frame = self.frame_for(id, wait).await?;
        match frame.body {
            Some(Body::PushBatch(push)) => Some(push),
            other => panic!("subscription {id} got a frame that is not a push: {other:?}"),
        }
    }

    /// The next push with records of subscription `id`, skipping heartbeats (each checked to stand
    /// at the subscription's position); panics on an end or when none comes within `wait`.
    async fn push_with_records(&mut self, id: u64, wait: Duration) -> PushBatch {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let push = self.push(id, left).await.unwrap_or_else(|| panic!("no push for {id} within {wait:?}"));
            assert!(!push.end, "subscription {id} ended: {push:?}");
            if !push.records.is_empty() {
                return push;
            }
            assert_eq!(push.offset, push.next_offset, "a heartbeat moves no position: {push:?}");
        }
    }

    /// The end frame of subscription `id`, skipping heartbeats; panics on a push with records.
    async fn end_of(&mut self, id: u64, wait: Duration) -> PushBatch {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let push = self.push(id, left).await.unwrap_or_else(|| panic!("no end frame for {id} within {wait:?}"));
            if push.end {
                assert!(push.records.is_empty(), "an end frame carries no records: {push:?}");
                return push;
            }
            assert!(push.records.is_empty(), "subscription {id} pushed records where its end was expected: {push:?}");
        }
    }

    /// Checks that subscription `id` pushes no records and does not end for `wait` (heartbeats are
    /// allowed). This is an absence check: it can only read for a while and conclude.
    async fn expect_no_records(&mut self, id: u64, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Some(push) = self.push(id, deadline.saturating_duration_since(Instant::now())).await {
            assert!(!push.end, "subscription {id} ended: {push:?}");
            assert!(push.records.is_empty(), "subscription {id} pushed past its credit: {push:?}");
        }
    }

    /// Whether the connection still serves ordinary requests.
    async fn assert_usable(&mut self, id: u64) {
        match self.request(id, Body::MetadataRequest(MetadataRequest { topics: vec![] })).await {
            Body::MetadataResponse(_) => {}
            other => panic!("a metadata request on this connection got {other:?}"),
        }
    }
}

fn subscribe(topic: &str, offset: i64, credit_bytes: u64, credit_records: u64) -> SubscribeRequest {
    SubscribeRequest { topic: topic.into(), partition: 0, offset, leader_epoch: None, credit_bytes, credit_records }
}

fn credit(subscription_id: u64, bytes: u64, records: u64) -> Body {
    Body::CreditRequest(CreditRequest { subscription_id, bytes, records })
}

fn unsubscribe(subscription_id: u64) -> Body {
    Body::UnsubscribeRequest(UnsubscribeRequest { subscription_id })
}

fn code(error: &Option<ErrorInfo>) -> Option<ErrorCode> {
    error.as_ref().map(ErrorInfo::error_code)
}

fn credit_error(body: Body) -> Option<ErrorCode> {
    match body {
        Body::CreditResponse(response) => code(&response.error),
        other => panic!("not a credit response: {other:?}"),
    }
}

fn unsubscribe_error(body: Body) -> Option<ErrorCode> {
    match body {
        Body::UnsubscribeResponse(response) => code(&response.error),
        other => panic!("not an unsubscribe response: {other:?}"),
    }
}

/// The batches of a push, as stored.
fn batches(push: &PushBatch) -> Vec<BatchSpan> {
    let mut spans = Vec::new();
    let mut at = 0;
    while at < push.records.len() {
        let span = peek_batch_span(&push.records[at..]).unwrap();
        at += span.bytes;
        spans.push(span);
    }
    spans
}

/// The records of a push from its `offset` on, each batch's CRC checked.
fn records(push: &PushBatch) -> Vec<StoredRecord> {
    decode_records(push.records.clone(), Offset(push.offset)).unwrap()
}

fn value_of(record: &StoredRecord) -> String {
    String::from_utf8(record.value.clone().unwrap().to_vec()).unwrap()
}

/// The offsets of `records`, checked to be exactly `from..from + records.len()`, in order.
fn assert_contiguous(records: &[StoredRecord], from: i64) {
    let offsets: Vec<i64> = records.iter().map(|record| record.offset.0).collect();
    let expected: Vec<i64> = (from..from + records.len() as i64).collect();
    assert_eq!(offsets, expected, "records skipped, repeated or out of order");
}

// ---- 1. delivery --------------------------------------------------------------------------------

/// Records already there and records produced after the subscribe all arrive, once each, in order;
/// each push starts where the previous one said the next would; the high watermark never goes back
/// and no push goes past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_deliver_every_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), free_addr()).await;
    let client = Client::new(broker.addr.to_string(), ClientConfig::default());
    create_topic(&client, "orders").await;
    let mut expected = Vec::new();
    for batch in 0..4 {
        let values: Vec<String> = (0..=batch).map(|index| format!("before-{batch}-{index}")).collect();
        produce(&client, "orders", &values).await;
        expected.extend(values);
    }
    let after: Vec<Vec<String>> =
        (0..20).map(|batch| (0..1 + batch % 3).map(|index| format!("after-{batch}-{index}")).collect()).collect();
    expected.extend(after.iter().flatten().cloned());

    let mut raw = Raw::connect(broker.addr).await;
    raw.subscribe(7, subscribe("orders", 0, CREDIT_BYTES_BIG, CREDIT_RECORDS_BIG)).await;
    let producer = {
        let client = client.clone();
        tokio::spawn(async move {
            for values in after {
                produce(&client, "orders", &values).await;
            }
        })
    };

    let mut received: Vec<StoredRecord> = Vec::new();
    let (mut position, mut high_watermark) = (0i64, -1i64);
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.len() < expected.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let push =
            raw.push(7, left).await.unwrap_or_else(|| panic!("{} of {} records", received.len(), expected.len()));
        assert!(!push.end, "the subscription ended: {push:?}");
        assert_eq!(push.offset, position, "a push must start where the previous one said the next would");
        assert!(push.high_watermark >= high_watermark, "the high watermark went back: {push:?} after {high_watermark}");
        assert!(push.next_offset <= push.high_watermark, "pushed past the high watermark: {push:?}");
        high_watermark = push.high_watermark;
        if push.records.is_empty() {
            assert_eq!(push.next_offset, push.offset, "a heartbeat moves no position");
            continue;
        }
        let pushed = records(&push);
        assert!(!pushed.is_empty(), "a push with batches but no records from its offset: {push:?}");
        assert_eq!(pushed.last().unwrap().offset.0 + 1, push.next_offset, "next_offset follows the last record");
        position = push.next_offset;
        received.extend(pushed);
    }
    producer.await.unwrap();
    assert_contiguous(&received, 0);
    let values: Vec<String> = received.iter().map(value_of).collect();
    assert_eq!(values, expected);
    // Absence check: nothing is pushed past the end of the log.
    raw.expect_no_records(7, Duration::from_millis(300)).await;
    drop(raw);
    broker.stop().await;
}

// ---- 2, 3. credit -------------------------------------------------------------------------------

/// A credit of one record lets one batch through; a grant of two lets exactly two more through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_in_records_bounds_the_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), free_addr()).await;
    let client = Client::new(broker.addr.to_string(), ClientConfig::default());
    create_topic(&client, "orders").await;
    let values = produce_each(&client, "orders", (0..5).map(|index| format!("v{index}"))).await;

    let mut raw = Raw::connect(broker.addr).await;
    raw.subscribe(1, subscribe("orders", 0, CREDIT_BYTES_BIG, 1)).await;
    let first = raw.push_with_records(1, FRAME_WAIT).await;
    assert_eq!(batches(&first).len(), 1, "one record of credit lets one batch through: {first:?}");
    let first_records = records(&first);
    assert_contiguous(&first_records, 0);
    assert_eq!(first_records.len(), 1);
    assert_eq!(first.next_offset, 1);
    // Absence check: with the credit used up, no more records come (heartbeats may).
    raw.expect_no_records(1, ABSENCE_WAIT).await;

    assert_eq!(credit_error(raw.request(2, credit(1, 0, 2)).await), None);
    let mut granted = Vec::new();
    let mut position = first.next_offset;
    while granted.len() < 2 {
        let push = raw.push_with_records(1, FRAME_WAIT).await;
        assert_eq!(push.offset, position);
        position = push.next_offset;
        granted.extend(records(&push));
    }
    assert_contiguous(&granted, 1);
    assert_eq!(granted.len(), 2, "single-record batches: a grant of 2 records lets exactly 2 through");
    assert_eq!(granted.iter().map(value_of).collect::<Vec<_>>(), values[1..3]);
    // Absence check: the grant is used up again.
    raw.expect_no_records(1, ABSENCE_WAIT).await;
    drop(raw);
    broker.stop().await;
}

/// A credit of one byte lets the first batch through (it is always sent, even when larger), then
/// nothing. The overshoot counts against later grants, as the client's accounting assumes: a grant
/// smaller than it does not resume the stream; one byte more than it lets exactly one batch through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_in_bytes_bounds_the_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), free_addr()).await;
    let client = Client::new(broker.addr.to_string(), ClientConfig::default());
    create_topic(&client, "orders").await;
    for batch in 0..3 {
        produce(&client, "orders", &[format!("a{batch}"), format!("b{batch}")]).await;
    }

    let mut raw = Raw::connect(broker.addr).await;
    raw.subscribe(1, subscribe("orders", 0, 1, CREDIT_RECORDS_BIG)).await;
    let first = raw.push_with_records(1, FRAME_WAIT).await;
    let spans = batches(&first);
    assert_eq!(spans.len(), 1, "one byte of credit lets exactly one batch through: {first:?}");
    assert_eq!((spans[0].base_offset, spans[0].next_offset), (Offset(0), Offset(2)));
    assert_eq!(first.next_offset, 2);
    let overshoot = spans[0].bytes as u64 - 1;
    // Absence check: no credit left.
    raw.expect_no_records(1, ABSENCE_WAIT).await;

    assert_eq!(credit_error(raw.request(2, credit(1, overshoot, 0)).await), None);
    // Absence check: that grant only paid the overshoot back.
    raw.expect_no_records(1, ABSENCE_WAIT).await;

    assert_eq!(credit_error(raw.request(3, credit(1, 1, 0)).await), None);
    let second = raw.push_with_records(1, FRAME_WAIT).await;
    let spans = batches(&second);
    assert_eq!(spans.len(), 1, "one byte of credit lets exactly one batch through: {second:?}");
    assert_eq!((second.offset, second.next_offset), (2, 4));
    // Absence check: used up again.
    raw.expect_no_records(1, ABSENCE_WAIT).await;
    drop(raw);
    broker.stop().await;
}

// ---- 4. unsubscribe -----------------------------------------------------------------------------

/// An unsubscribe is answered and ends the stream with an `end` frame without error, promptly,
/// whether the subscription is pushing, waiting for records or waiting for credit; the id is
/// unknown afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_ends_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), free_addr()).await;
    let client = Client::new(broker.addr.to_string(), ClientConfig::default());
    create_topic(&client, "orders").await;
    produce_each(&client, "orders", (0..2).map(|index| format!("v{index}"))).await;
    let mut raw = Raw::connect(broker.addr).await;

    // 1: has pushed everything and waits for records; 2: waits for credit.
    raw.subscribe(1, subscribe("orders", 0, CREDIT_BYTES_BIG, CREDIT_RECORDS_BIG)).await;
    raw.subscribe(2, subscribe("orders", 0, CREDIT_BYTES_BIG, 1)).await;
    let pushed = raw.push_with_records(1, FRAME_WAIT).await;
    if pushed.next_offset < 2 {
        raw.push_with_records(1, FRAME_WAIT).await;
    }
    raw.push_with_records(2, FRAME_WAIT).await;
    // Both now wait (for records, for credit) up to PUSH_WAIT_MS; the end must not wait that long.
    let prompt = Duration::from_millis(u64::from(PUSH_WAIT_MS) / 2);
    for (request_id, subscription_id) in [(11, 1), (12, 2)] {
        let started = Instant::now();
        assert_eq!(unsubscribe_error(raw.request(request_id, unsubscribe(subscription_id)).await), None);
        let end = raw.end_of(subscription_id, FRAME_WAIT).await;
        assert_eq!(code(&end.error), None, "an unsubscribe ends the stream without error: {end:?}");
        assert!(started.elapsed() < prompt, "the end of {subscription_id} took {:?}", started.elapsed());
    }

    assert_eq!(credit_error(raw.request(21, credit(1, 1, 1)).await), Some(ErrorCode::UnknownSubscription));
    assert_eq!(unsubscribe_error(raw.request(22, unsubscribe(1)).await), Some(ErrorCode::UnknownSubscription));
    assert_eq!(credit_error(raw.request(23, credit(999, 1, 1)).await), Some(ErrorCode::UnknownSubscription));
    assert_eq!(unsubscribe_error(raw.request(24, unsubscribe(999)).await), Some(ErrorCode::UnknownSubscription));
    // Absence check: nothing follows an end frame.
    assert!(raw.push(1, Duration::from_millis(300)).await.is_none());
    assert!(raw.push(2, Duration::ZERO).await.is_none());
    drop(raw);
    broker.stop().await;
}

// ---- 5. bad subscribes --------------------------------------------------------------------------

/// Each bad subscribe is answered by one end frame with its typed error, and the connection goes
/// on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscribes_end_at_once_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), free_addr()).await;
    let client = Client::new(broker.addr.to_string(), ClientConfig::default());
    create_topic(&client, "orders").await;
    produce_each(&client, "orders", (0..3).map(|index| format!("v{index}"))).await;
    let metadata = client.metadata(&["orders".to_owned()]).await.unwrap();
    let leader_epoch = metadata.topics[0].partitions[0].leader_epoch;

    let good = subscribe("orders", 0, CREDIT_BYTES_BIG, CREDIT_RECORDS_BIG);
    let cases = [
        ("unknown topic", SubscribeRequest { topic: "nope".into(), ..good.clone() }, ErrorCode::UnknownTopic),
        ("unknown partition", SubscribeRequest { partition: 5, ..good.clone() }, ErrorCode::UnknownPartition),
        ("zero byte credit", SubscribeRequest { credit_bytes: 0, ..good.clone() }, ErrorCode::InvalidRequest),
        ("zero record credit", SubscribeRequest { credit_records: 0, ..good.clone() }, ErrorCode::InvalidRequest),
        ("negative offset", SubscribeRequest { offset: -1, ..good.clone() }, ErrorCode::OffsetOutOfRange),
        ("offset past the log end", SubscribeRequest { offset: 13, ..good.clone() }, ErrorCode::OffsetOutOfRange),
        (
            "negative leader epoch",
            SubscribeRequest { leader_epoch: Some(-5), ..good.clone() },
            ErrorCode::FencedLeaderEpoch,
        ),
        (
            "older leader epoch",
            SubscribeRequest { leader_epoch: Some(leader_epoch - 1), ..good.clone() },
            ErrorCode::FencedLeaderEpoch,
        ),
        (
            "future leader epoch",
            SubscribeRequest { leader_epoch: Some(leader_epoch + 1000), ..good.clone() },
            ErrorCode::UnknownLeaderEpoch,
        ),
    ];
    let mut raw = Raw::connect(broker.addr).await;
    for (index, (name, request, expected)) in cases.into_iter().enumerate() {
        let id = 100 + index as u64;
        raw.subscribe(id, request).await;
        let end = raw.push(id, FRAME_WAIT).await.unwrap_or_else(|| panic!("{name}: no answer"));
        assert!(end.end, "{name}: the subscribe must be refused by an end frame, got {end:?}");
        assert!(end.records.is_empty(), "{name}: {end:?}");
        assert_eq!(code(&end.error), Some(expected), "{name}: {end:?}");
        raw.assert_usable(1_000 + id).await;
    }
    // The current epoch is accepted.
    raw.subscribe(200, SubscribeRequest { leader_epoch: Some(leader_epoch), ..good.clone() }).await;
    assert_eq!(records(&raw.push_with_records(200, FRAME_WAIT).await)[0].offset, Offset(0));

    // A subscribe reusing the id of an open subscription is refused on that id; the open one goes
    // on. (On the wire the refusal looks exactly like the open subscription's own end: the id is
    // the only name a stream has. A client must never reuse an open id.)
    raw.subscribe(300, subscribe("orders", 3, CREDIT_BYTES_BIG, CREDIT_RECORDS_BIG)).await;
    raw.subscribe(300, subscribe("orders", 0, CREDIT_BYTES_BIG, CREDIT_RECORDS_BIG)).await;
    let refused = raw.push(300, FRAME_WAIT).await.expect("the second subscribe 300 is answered");
    assert!(refused.end, "{refused:?}");
    assert_eq!(code(&refused.error), Some(ErrorCode::UnknownSubscription), "{refused:?}");
    produce(&client, "orders", &["v3".to_owned()]).await;
    let pushed = raw.push_with_records(300, FRAME_WAIT).await;
    assert_eq!((pushed.offset, records(&pushed)[0].offset), (3, Offset(3)), "the first subscription 300 goes on");
    raw.assert_usable(2_000).await;

    // Absence check: each refused id got exactly one frame (read for a while, then look).
    raw.expect_no_records(300, Duration::from_millis(300)).await;
    for index in 0..9 {
        assert!(raw.push(100 + index, Duration::ZERO).await.is_none(), "a second frame for {}", 100 + index);
    }
    drop(raw);
    broker.stop().await;
}

// ---- 6. the limit -------------------------------------------------------------------------------

/// A connection may have `SUBSCRIPTIONS_PER_CONNECTION_MAX` (256) open subscriptions: the next is
/// refused with `TooManySubscriptions`; once one has ended, a new one is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_has_at_most_256_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), free_addr()).await;
    let client = Client::new(broker.addr.to_string(), ClientConfig::default());
    create_topic(&client, "orders").await;
    produce(&client, "orders", &["v0".to_owned()]).await;
    assert_eq!(keel::protocol::SUBSCRIPTIONS_PER_CONNECTION_MAX, 256);

    let mut raw = Raw::connect(broker.addr).await;
    for id in 1..=256 {
        // At the log end: they wait for records and push nothing (but heartbeats).
        raw.subscribe(id, subscribe("orders", 1, CREDIT_BYTES_BIG, CREDIT_RECORDS_BIG)).await;
    }
    raw.subscribe(257, subscribe("orders", 0, CREDIT_BYTES_BIG, CREDIT_RECORDS_BIG)).await;
    let refused = raw.push(257, FRAME_WAIT).await.expect("the 257th subscribe is answered");
    assert!(refused.end, "{refused:?}");
    assert_eq!(code(&refused.error), Some(ErrorCode::TooManySubscriptions), "{refused:?}");
    for frame in &raw.stash {
        assert!(
            !matches!(&frame.body, Some(Body::PushBatch(push)) if push.end),
            "one of the 256 subscriptions ended: {frame:?}"
        );
    }

    assert_eq!(unsubscribe_error(raw.request(1_000, unsubscribe(1)).await), None);
    // The slot is free once the end frame was sent (a subscribe between the unsubscribe's answer
    // and the end frame may still be refused).
    let end = raw.end_of(1, FRAME_WAIT).await;
    assert_eq!(code(&end.error), None);
    raw.subscribe(258, subscribe("orders", 0, CREDIT_BYTES_BIG, CREDIT_RECORDS_BIG)).await;
    let pushed = raw.push_with_records(258, FRAME_WAIT).await;
    assert_eq!(records(&pushed)[0].offset, Offset(0));
    raw.subscribe(259, subscribe("orders", 0, CREDIT_BYTES_BIG, CREDIT_RECORDS_BIG)).await;
    let refused = raw.push(259, FRAME_WAIT).await.expect("the 257th subscribe is answered");
    assert_eq!(code(&refused.error), Some(ErrorCode::TooManySubscriptions), "{refused:?}");
    raw.assert_usable(2_000).await;
    drop(raw);
    broker.stop().await;
}

// ---- 7. heartbeats ------------------------------------------------------------------------------

/// A subscription at the log end with nothing new pushes a heartbeat within `PUSH_WAIT_MS`: no
/// records, its position unchanged, the partition's high watermark and log start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscription_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), free_addr()).await;
    let client = Client::new(broker.addr.to_string(), ClientConfig::default());
    create_topic(&client, "orders").await;
    produce_each(&client, "orders", (0..2).map(|index| format!("v{index}"))).await;

    let mut raw = Raw::connect(broker.addr).await;
    raw.subscribe(1, subscribe("orders", 2, CREDIT_BYTES_BIG, CREDIT_RECORDS_BIG)).await;
    let wait = Duration::from_millis(u64::from(PUSH_WAIT_MS)) + Duration::from_secs(3);
    let heartbeat = raw.push(1, wait).await.expect("no heartbeat within PUSH_WAIT_MS + 3 s");
    assert!(!heartbeat.end, "{heartbeat:?}");
    assert!(heartbeat.records.is_empty(), "{heartbeat:?}");
    assert_eq!((heartbeat.offset, heartbeat.next_offset), (2, 2), "{heartbeat:?}");
    assert_eq!((heartbeat.high_watermark, heartbeat.log_start_offset), (2, 0), "{heartbeat:?}");
    drop(raw);
    broker.stop().await;
}

/// A subscription out of credit heartbeats too, and its heartbeat, like every other push, carries
/// the partition's high watermark and log start: a subscriber that reads its lag from pushes must
/// not see the high watermark go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_out_of_credit_heartbeats_with_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), free_addr()).await;
    let client = Client::new(broker.addr.to_string(), ClientConfig::default());
    create_topic(&client, "orders").await;
    produce_each(&client, "orders", (0..2).map(|index| format!("v{index}"))).await;

    let mut raw = Raw::connect(broker.addr).await;
    raw.subscribe(1, subscribe("orders", 0, CREDIT_BYTES_BIG, 1)).await;
    let first = raw.push_with_records(1, FRAME_WAIT).await;
    assert_eq!((first.next_offset, first.high_watermark, first.log_start_offset), (1, 2, 0), "{first:?}");
    let wait = Duration::from_millis(u64::from(PUSH_WAIT_MS)) + Duration::from_secs(3);
    let heartbeat = raw.push(1, wait).await.expect("no heartbeat within PUSH_WAIT_MS + 3 s");
    assert!(!heartbeat.end && heartbeat.records.is_empty(), "{heartbeat:?}");
    assert_eq!((heartbeat.offset, heartbeat.next_offset), (1, 1), "{heartbeat:?}");
    assert_eq!(
        (heartbeat.high_watermark, heartbeat.log_start_offset),
        (2, 0),
        "a heartbeat while out of credit sent another high watermark and log start: {heartbeat:?}"
    );
    drop(raw);
    broker.stop().await;
}

// ---- 8. the client ------------------------------------------------------------------------------

/// `Subscription` with a window of 4 records reads 200 records produced in small batches, in
/// order, granting credit back as it goes, on one stream. A position past the end comes back as
/// `OffsetOutOfRange`; after `seek(0)` it goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_subscription_reads_with_a_small_window() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), free_addr()).await;
    let client = Client::new(broker.addr.to_string(), ClientConfig::default());
    create_topic(&client, "orders").await;
    // Batches of 1, 2, 3, 4 records, 20 times: 200 records, half of them produced while reading.
    let batches: Vec<Vec<String>> =
        (0..80).map(|batch| (0..1 + batch % 4).map(|index| format!("r{batch}-{index}")).collect()).collect();
    let expected: Vec<String> = batches.iter().flatten().cloned().collect();
    assert_eq!(expected.len(), 200);
    for values in &batches[..40] {
        produce(&client, "orders", values).await;
    }
    let producer = {
        let client = client.clone();
        let later = batches[40..].to_vec();
        tokio::spawn(async move {
            for values in later {
                produce(&client, "orders", &values).await;
            }
        })
    };

    let config = SubscriptionConfig { window_bytes: 1024 * 1024, window_records: 4 };
    let mut subscription = Subscription::new(client.clone(), "orders", 0, Offset(0), config);
    let mut received = Vec::new();
    let reading = async {
        while received.len() < expected.len() {
            let pushed = subscription.next().await.expect("the subscription failed");
            assert!(!pushed.records.is_empty());
            received.extend(pushed.records);
        }
    };
    timeout(Duration::from_secs(30), reading).await.expect("200 records did not arrive within 30 s");
    producer.await.unwrap();
    assert_contiguous(&received, 0);
    assert_eq!(received.iter().map(value_of).collect::<Vec<_>>(), expected);
    assert_eq!(subscription.position(), Offset(200));
    let stats = subscription.stats();
    assert_eq!(stats.opened, 1, "{stats:?}");
    assert!(stats.grants > 0, "{stats:?}");
    assert!(stats.pushes > 0, "{stats:?}");
    drop(subscription);

    let mut past = Subscription::new(client.clone(), "orders", 0, Offset(1_000), config);
    let error = timeout(FRAME_WAIT, past.next()).await.expect("no answer within 10 s").unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::OffsetOutOfRange), "{error:?}");
    past.seek(Offset(0));
    let pushed = timeout(FRAME_WAIT, past.next()).await.expect("no push after seek(0) within 10 s").unwrap();
    assert_eq!(pushed.records[0].offset, Offset(0));
    assert_contiguous(&pushed.records, 0);
    assert_eq!(past.position().0, pushed.records.last().unwrap().offset.0 + 1);
    drop(past);
    broker.stop().await;
}

// ---- 9. a broker restart ------------------------------------------------------------------------

/// A stopping broker ends its subscriptions with `ShuttingDown`; a client `Subscription` reopens
/// when the broker is back (same address, same data) and goes on from its position: every record,
/// before and after the restart, arrives exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_subscription_rides_out_a_broker_restart() {
    const BEFORE: usize = 30;
    const TOTAL: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let broker = start(dir.path(), addr).await;
    let client = Client::new(addr.to_string(), ClientConfig::default());
    create_topic(&client, "orders").await;
    let batches: Vec<Vec<String>> =
        (0..TOTAL / 3).map(|batch| (0..3).map(|index| format!("r{batch}-{index}")).collect()).collect();
    let expected: Vec<String> = batches.iter().flatten().cloned().collect();

    let test = async {
        for values in &batches[..BEFORE / 3] {
            produce(&client, "orders", values).await;
        }
        let (records_sender, mut records_receiver) = tokio::sync::mpsc::unbounded_channel();
        let consumer = {
            let client = Client::new(addr.to_string(), ClientConfig::default());
            tokio::spawn(async move {
                let config = SubscriptionConfig { window_bytes: 1024 * 1024, window_records: 16 };
                let mut subscription = Subscription::new(client, "orders", 0, Offset(0), config);
                let mut count = 0;
                while count < TOTAL {
                    let pushed = subscription.next().await?;
                    count += pushed.records.len();
                    for record in pushed.records {
                        records_sender.send(record).unwrap();
                    }
                }
                Ok::<_, ClientError>(subscription.stats())
            })
        };
        let mut received = Vec::new();
        while received.len() < BEFORE {
            received.push(records_receiver.recv().await.expect("the consumer stopped"));
        }

        // A raw subscription sees how the broker ends it.
        let mut raw = Raw::connect(addr).await;
        raw.subscribe(1, subscribe("orders", BEFORE as i64, CREDIT_BYTES_BIG, CREDIT_RECORDS_BIG)).await;
        raw.assert_usable(2).await;
        broker.stop().await;
        let end = raw.end_of(1, FRAME_WAIT).await;
        assert_eq!(code(&end.error), Some(ErrorCode::ShuttingDown), "{end:?}");
        drop(raw);

        let broker = start(dir.path(), addr).await;
        let producer_client = Client::new(addr.to_string(), ClientConfig::default());
        for values in &batches[BEFORE / 3..] {
            produce(&producer_client, "orders", values).await;
        }
        while received.len() < TOTAL {
            received.push(records_receiver.recv().await.expect("the consumer stopped"));
        }
        let stats = consumer.await.unwrap().expect("the subscription gave up");
        assert!(stats.opened >= 2, "the subscription did not reopen: {stats:?}");
        assert_contiguous(&received, 0);
        assert_eq!(received.iter().map(value_of).collect::<Vec<_>>(), expected);
        broker.stop().await;
    };
    timeout(Duration::from_secs(60), test).await.expect("the restart test did not finish within 60 s");
}

// ---- 10. a subscriber that does not read ---------------------------------------------------------

/// A subscriber that never reads its socket gets no more than its credit pushed while 1000 records
/// are produced: the broker does not read ahead for it (as far as a test can see from outside).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_gets_only_its_credit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), free_addr()).await;
    let client = Client::new(broker.addr.to_string(), ClientConfig::default());
    create_topic(&client, "orders").await;
    produce(&client, "orders", &["first".to_owned()]).await;

    let mut raw = Raw::connect(broker.addr).await;
    raw.subscribe(1, subscribe("orders", 1, CREDIT_BYTES_BIG, 3)).await;
    // The socket is not read while 1000 single-record batches are produced (by 4 writers at once).
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let client = client.clone();
            tokio::spawn(async move {
                produce_each(&client, "orders", (0..250).map(|index| format!("w{writer}-{index}"))).await;
            })
        })
        .collect();
    for writer in writers {
        timeout(Duration::from_secs(60), writer).await.expect("producing 1000 records took over 60 s").unwrap();
    }

    let mut pushed = Vec::new();
    let mut position = 1;
    // Absence check at the end: reads until no push with records has come for ABSENCE_WAIT.
    while let Some(push) = raw.push(1, ABSENCE_WAIT).await {
        assert!(!push.end, "{push:?}");
        assert_eq!(push.offset, position, "{push:?}");
        if push.records.is_empty() {
            continue;
        }
        assert!(batches(&push).iter().all(|span| span.record_count == 1));
        position = push.next_offset;
        pushed.extend(records(&push));
    }
    assert_contiguous(&pushed, 1);
    assert_eq!(pushed.len(), 3, "a credit of 3 records lets exactly 3 single-record batches through");
    drop(raw);
    broker.stop().await;
}

// ---- 11. the client's check of the broker's credit ----------------------------------------------

/// Metadata naming one broker, the leader (epoch 0) of topic `orders`' one partition.
fn fake_metadata(addr: SocketAddr) -> Body {
    Body::MetadataResponse(MetadataResponse {
        brokers: vec![BrokerInfo { node_id: 1, addr: addr.to_string(), kafka_addr: String::new() }],
        topics: vec![TopicInfo {
            name: "orders".into(),
            error: None,
            partitions: vec![PartitionInfo {
                partition: 0,
                leader: 1,
                replicas: vec![1],
                isr: vec![1],
                leader_epoch: 0,
                partition_epoch: 0,
                unclean_elections: 0,
                elr: Vec::new(),
            }],
            min_insync_replicas: 1,
            unclean_leader_election: false,
            log: None,
        }],
    })
}

/// A push of one stored single-record batch at `offset`.
fn fake_push(offset: i64) -> Body {
    let batch = encode_batch(&[Record::value(format!("v{offset}"))], now_ms(), ProducerFields::NONE);
    let stored = Batch::parse(batch).unwrap().stamped(Offset(offset), LeaderEpoch(0));
    Body::PushBatch(PushBatch {
        error: None,
        high_watermark: 20,
        log_start_offset: 0,
        offset,
        next_offset: offset + 1,
        records: stored.into_bytes(),
        end: false,
    })
}

/// A broker that ignores the credit (it pushes 20 single-record batches at once to a subscription
/// that granted 4 records, and has answered no grant before them) breaks the protocol, and the
/// module doc of `client::subscription` says the client reports it. Every push after the 4th came
/// before the broker could have seen any grant, so the client must fail by the 5th.
#[tokio::test]
async fn client_subscription_detects_a_broker_pushing_past_its_credit() {
    let addr_cell: Arc<Mutex<Option<SocketAddr>>> = Default::default();
    let cell = addr_cell.clone();
    let addr = fake_broker(Box::new(move |id, body| match body {
        Body::MetadataRequest(_) => vec![(id, fake_metadata(cell.lock().unwrap().unwrap()))],
        Body::SubscribeRequest(request) => {
            assert_eq!((request.offset, request.credit_records), (0, 4), "{request:?}");
            (0..20).map(|offset| (id, fake_push(offset))).collect()
        }
        Body::CreditRequest(_) => vec![(id, Body::CreditResponse(CreditResponse { error: None }))],
        Body::UnsubscribeRequest(_) => vec![(id, Body::UnsubscribeResponse(UnsubscribeResponse { error: None }))],
        other => panic!("unexpected request {other:?}"),
    }))
    .await;
    *addr_cell.lock().unwrap() = Some(addr);
    let client = Client::new(addr.to_string(), ClientConfig::default());
    let config = SubscriptionConfig { window_bytes: 1024 * 1024, window_records: 4 };
    let mut subscription = Subscription::new(client, "orders", 0, Offset(0), config);
    let mut returned = 0;
    let outcome = loop {
        match timeout(FRAME_WAIT, subscription.next()).await.expect("the subscription hung") {
            Ok(pushed) => {
                returned += pushed.records.len();
                if returned == 20 {
                    break None;
                }
            }
            Err(error) => break Some(error),
        }
    };
    assert!(
        matches!(outcome, Some(ClientError::Protocol(_))) && returned <= 4,
        "a broker that pushed 20 records on a credit of 4 was not caught: {returned} records returned, then \
         {outcome:?} (stats {:?})",
        subscription.stats()
    );
}

// ---- 12. what ended subscriptions leave behind --------------------------------------------------

/// A subscription at the log end waits for records in a long-poll read parked at the partition.
/// When the subscription ends (its connection closed here; an unsubscribe does the same), its read
/// must not stay parked: the partition parks at most `parked_fetches_max` (4096) reads, and every
/// read beyond that is answered at once, empty. Today the read stays for up to `PUSH_WAIT_MS`, so
/// 16 connections' worth of ended subscriptions turn every consumer's long-poll on the partition
/// (and every other subscription's wait, which then pushes a heartbeat every 100 ms) into busy
/// polling for 5 s, and a client that opens and ends subscriptions at that rate keeps it so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_subscriptions_leave_no_parked_reads_behind() {
    const CONNECTIONS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), free_addr()).await;
    let client = Client::new(broker.addr.to_string(), ClientConfig::default());
    create_topic(&client, "orders").await;
    produce(&client, "orders", &["v0".to_owned()]).await;
    let long_poll = Duration::from_millis(1_500);
    let timed_fetch = || async {
        let started = Instant::now();
        let fetched = client.fetch("orders", 0, Offset(1), 1024 * 1024, long_poll).await.unwrap();
        assert!(fetched.records.is_empty());
        started.elapsed()
    };
    // Control: a fetch at the log end waits for records.
    let before = timed_fetch().await;
    assert!(before >= long_poll / 2, "a fetch at the log end did not wait: {before:?}");

    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut raw = Raw::connect(broker.addr).await;
        for id in 1..=256 {
            raw.subscribe(id, subscribe("orders", 1, CREDIT_BYTES_BIG, CREDIT_RECORDS_BIG)).await;
        }
        raw.assert_usable(1_000).await;
        connections.push(raw);
    }
    let opened = Instant::now();
    // Gives every subscription time to park its read (nothing outside the broker can see it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(connections);
    // The broker notices the closed connections at once; give it a moment to end their streams.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_end = timed_fetch().await;

    // Once the ended subscriptions' reads expired (PUSH_WAIT_MS after they parked), long-polls work.
    let expired = opened + Duration::from_millis(u64::from(PUSH_WAIT_MS) + 500);
    tokio::time::sleep_until(expired).await;
    let after_expiry = timed_fetch().await;
    assert!(after_expiry >= long_poll / 2, "a fetch at the log end did not wait: {after_expiry:?}");
    assert!(
        after_end >= long_poll / 2,
        "after {} subscriptions ended, a fetch at the log end came back empty after {after_end:?} instead of \
         waiting up to {long_poll:?}: their reads were still parked at the partition",
        CONNECTIONS * 256
    );
    broker.stop().await;
}

// ---- 13. many subscriptions through one client ---------------------------------------------------

/// A connection may have 256 open subscriptions, and `keel consume --follow` opens one
/// `Subscription` per partition on one client, so following a topic with more partitions than that
/// led by one broker (the broker allows 1024 per topic) must still work: the client's pool opens
/// another connection, and the 257th subscription does not fail with `TooManySubscriptions`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_follows_more_than_256_partitions_of_one_broker() {
    const PARTITIONS: u32 = 257;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), free_addr()).await;
    let client = Client::new(broker.addr.to_string(), ClientConfig::default());
    create_topic_with(&client, "wide", PARTITIONS).await;
    for partition in 0..PARTITIONS {
        produce_to(&client, "wide", partition, &[format!("p{partition}")]).await;
    }
    // Each subscription's first push is read and the subscription kept (its stream stays open).
    let mut subscriptions = Vec::new();
    for partition in 0..PARTITIONS {
        let mut subscription =
            Subscription::new(client.clone(), "wide", partition, Offset(0), SubscriptionConfig::default());
        let pushed = timeout(FRAME_WAIT, subscription.next()).await.expect("no push within 10 s");
        match pushed {
            Ok(pushed) => assert_eq!(value_of(&pushed.records[0]), format!("p{partition}")),
            Err(error) => panic!(
                "the subscription to partition {partition} failed with {} open on the same client: {error}",
                subscriptions.len()
            ),
        }
        subscriptions.push(subscription);
    }
    drop(subscriptions);
    broker.stop().await;
}
