//! The Kafka listener against bad input, through raw sockets to a real `keel broker --kafka-listen`
//! (ADR 0026): an `ApiVersions` at a version it does not serve gets Kafka's v0 answer and the
//! connection goes on, as does a request at a version past Keel's that the crate reads, or of an API
//! Keel does not serve whose response has a top-level error code (both answered with
//! `UNSUPPORTED_VERSION`); a hostile array length, a frame shorter than a header, an unknown API, an
//! undecodable body and an oversized length prefix each close only their own connection, while the
//! broker keeps serving Kafka and native clients; a produce with acks 0 gets no answer (the next
//! answer is the next request's); bad acks and unknown topics get Kafka's error codes.

#![cfg(not(madsim))]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use keel::process::free_loopback_addr;
use support::cli::{ok, start_broker_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on every read: an answer, or the broker closing the connection.
const READ_WAIT_MAX: Duration = Duration::from_secs(20);

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

fn frame<R: Encodable>(api: ApiKey, version: i16, correlation_id: i32, request: &R) -> Bytes {
    let mut body = BytesMut::new();
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(s("raw")));
    header.encode(&mut body, api.request_header_version(version)).unwrap();
    request.encode(&mut body, version).unwrap();
    raw(&body)
}

/// A length-prefixed frame around `body`.
fn raw(body: &[u8]) -> Bytes {
    let mut framed = BytesMut::new();
    framed.put_i32(body.len() as i32);
    framed.put_slice(body);
    framed.freeze()
}

/// The next response frame (without its length), or `None` when the broker closed the connection.
async fn read_frame(stream: &mut TcpStream) -> Option<Bytes> {
    let read = async {
        let length = stream.read_i32().await.ok()?;
        let mut body = vec![0; usize::try_from(length).ok()?];
        stream.read_exact(&mut body).await.ok()?;
        Some(Bytes::from(body))
    };
    tokio::time::timeout(READ_WAIT_MAX, read).await.expect("an answer or a close within the bound")
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect to the Kafka listener")
}

/// Sends one request and decodes its answer (header v0 or v1 by the API's rules).
async fn ask<R: Encodable, A: Decodable>(stream: &mut TcpStream, api: ApiKey, version: i16, id: i32, request: &R) -> A {
    stream.write_all(&frame(api, version, id, request)).await.unwrap();
    let mut answer = read_frame(stream).await.expect("an answer, not a closed connection");
    let header = ResponseHeader::decode(&mut answer, api.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, id);
    A::decode(&mut answer, version).unwrap()
}

/// Sends `bytes` on a new connection and checks that the broker closes it without answering.
async fn closes_without_answer(addr: SocketAddr, bytes: &[u8], what: &str) {
    let mut stream = connect(addr).await;
    stream.write_all(bytes).await.unwrap();
    assert_eq!(read_frame(&mut stream).await, None, "{what}: the connection must close without an answer");
    println!("checked: {what} closes only its connection");
}

async fn api_versions_still_served(addr: SocketAddr) {
    let mut stream = connect(addr).await;
    let answer: ApiVersionsResponse = ask(&mut stream, ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default()).await;
    assert_eq!(answer.error_code, 0);
    assert!(answer.api_keys.len() >= 17, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_its_connection_and_the_broker_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = free_loopback_addr().unwrap();
    let kafka_arg = kafka.to_string();
    let broker = start_broker_with(dir.path(), Duration::from_secs(30), &["--kafka-listen", &kafka_arg]).await;
    let native = broker.addr().to_string();
    ok(&native, &["topic", "create", "orders", "--partitions", "2"]).await;

    // ApiVersions at a version Keel does not serve: the v0 answer, and the connection goes on.
    let mut stream = connect(kafka).await;
    let mut too_new = BytesMut::new();
    too_new.put_i16(ApiKey::ApiVersions as i16);
    too_new.put_i16(99);
    too_new.put_i32(5);
    stream.write_all(&raw(&too_new)).await.unwrap();
    let mut answer = read_frame(&mut stream).await.expect("the v0 fallback");
    assert_eq!(answer.get_i32(), 5);
    let fallback = ApiVersionsResponse::decode(&mut answer, 0).unwrap();
    assert_eq!(fallback.error_code, 35, "UNSUPPORTED_VERSION");
    let answer: ApiVersionsResponse = ask(&mut stream, ApiKey::ApiVersions, 3, 6, &ApiVersionsRequest::default()).await;
    assert_eq!(answer.error_code, 0);
    println!("checked: ApiVersions v99 gets the v0 UNSUPPORTED_VERSION answer; v3 on the same connection then works");

    // Metadata v13 (past Keel's 12, a version the crate reads): every topic it names is refused with
    // UNSUPPORTED_VERSION, in v13's format, and the connection goes on.
    let topics = vec![metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(s("orders"))))];
    let refused: MetadataResponse =
        ask(&mut stream, ApiKey::Metadata, 13, 7, &MetadataRequest::default().with_topics(Some(topics))).await;
    assert_eq!(refused.topics[0].error_code, 35);
    let answer: ApiVersionsResponse = ask(&mut stream, ApiKey::ApiVersions, 3, 8, &ApiVersionsRequest::default()).await;
    assert_eq!(answer.error_code, 0);
    println!("checked: Metadata v13 gets UNSUPPORTED_VERSION on its topic, in v13's format; the connection goes on");

    // Metadata v0 whose topic array claims 2^31 - 16 topics, in 14 bytes: the decoder asks for
    // tens of gigabytes up front (keel::reserving_alloc); the broker must not abort.
    let mut hostile = vec![0, 3, 0, 0, 0, 0, 0, 9, 0xff, 0xff];
    hostile.extend_from_slice(&0x7fff_fff0i32.to_be_bytes());
    closes_without_answer(kafka, &raw(&hostile), "a Metadata frame with a hostile array length").await;
    closes_without_answer(kafka, &raw(&[0, 3, 0]), "a 3-byte frame").await;
    let mut unknown = BytesMut::new();
    unknown.put_i16(999);
    unknown.put_i16(0);
    unknown.put_i32(1);
    closes_without_answer(kafka, &raw(&unknown), "an unknown API key").await;
    let mut acls = BytesMut::new();
    acls.put_i16(ApiKey::CreateAcls as i16);
    acls.put_i16(1);
    acls.put_i32(1);
    closes_without_answer(kafka, &raw(&acls), "an API Keel does not serve and does not parse (CreateAcls)").await;
    // An API Keel does not serve whose response has a top-level error code: UNSUPPORTED_VERSION, in
    // its own format, and the connection goes on.
    let mut stream = connect(kafka).await;
    let sasl = SaslHandshakeRequest::default().with_mechanism(s("SCRAM-SHA-256"));
    let refused: SaslHandshakeResponse = ask(&mut stream, ApiKey::SaslHandshake, 1, 21, &sasl).await;
    assert_eq!(refused.error_code, 35);
    let end = EndTxnRequest::default().with_transactional_id(TransactionalId(s("tx")));
    let refused: EndTxnResponse = ask(&mut stream, ApiKey::EndTxn, 3, 22, &end).await;
    assert_eq!(refused.error_code, 35);
    let resource = describe_configs_request::DescribeConfigsResource::default()
        .with_resource_type(2)
        .with_resource_name(s("orders"));
    let configs = DescribeConfigsRequest::default().with_resources(vec![resource]);
    let refused: DescribeConfigsResponse = ask(&mut stream, ApiKey::DescribeConfigs, 4, 24, &configs).await;
    assert_eq!((refused.results[0].error_code, refused.results[0].resource_name.as_str()), (35, "orders"));
    let answer: ApiVersionsResponse =
        ask(&mut stream, ApiKey::ApiVersions, 3, 23, &ApiVersionsRequest::default()).await;
    assert_eq!(answer.error_code, 0);
    println!(
        "checked: SaslHandshake, EndTxn and DescribeConfigs (not served) get UNSUPPORTED_VERSION, per resource where \
         the answer has resources; the connection goes on"
    );
    let mut cut = frame(ApiKey::Metadata, 4, 2, &MetadataRequest::default().with_topics(None)).to_vec();
    cut.truncate(cut.len() - 1);
    let body_length = (cut.len() - 4) as i32;
    cut[..4].copy_from_slice(&body_length.to_be_bytes());
    closes_without_answer(kafka, &cut, "a Metadata body cut short").await;
    closes_without_answer(kafka, &(100 * 1024 * 1024i32).to_be_bytes(), "a 100 MiB length prefix").await;

    api_versions_still_served(kafka).await;
    assert!(ok(&native, &["topic", "list"]).await.contains("orders"));
    println!("checked: after all of that the broker serves Kafka and native clients");

    produce_answers(kafka).await;
}

fn produce(acks: i16, topic: &str, records: Bytes) -> ProduceRequest {
    ProduceRequest::default().with_acks(acks).with_timeout_ms(5000).with_topic_data(vec![
        produce_request::TopicProduceData::default().with_name(TopicName(s(topic))).with_partition_data(vec![
            produce_request::PartitionProduceData::default().with_index(0).with_records(Some(records)),
        ]),
    ])
}

/// acks 0 is not answered; bad acks and an unknown topic get Kafka's codes; a good batch its offset.
async fn produce_answers(kafka: SocketAddr) {
    let batch = |value: &str| {
        keel::batch::encode_batch(&[keel::batch::Record::value(value.to_owned())], 0, keel::batch::ProducerFields::NONE)
    };
    let mut stream = connect(kafka).await;
    stream.write_all(&frame(ApiKey::Produce, 9, 10, &produce(0, "orders", batch("fire and forget")))).await.unwrap();
    let answer: ProduceResponse =
        ask(&mut stream, ApiKey::Produce, 9, 11, &produce(-1, "orders", batch("acked"))).await;
    let partition = &answer.responses[0].partition_responses[0];
    assert_eq!((partition.error_code, partition.base_offset), (0, 1), "the acks=0 batch took offset 0, unanswered");
    let answer: ProduceResponse = ask(&mut stream, ApiKey::Produce, 9, 12, &produce(5, "orders", batch("x"))).await;
    assert_eq!(answer.responses[0].partition_responses[0].error_code, 21, "INVALID_REQUIRED_ACKS");
    let answer: ProduceResponse = ask(&mut stream, ApiKey::Produce, 9, 13, &produce(1, "nope", batch("x"))).await;
    assert_eq!(answer.responses[0].partition_responses[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    let answer: ProduceResponse =
        ask(&mut stream, ApiKey::Produce, 9, 14, &produce(1, "orders", Bytes::from_static(b"not a batch at all")))
            .await;
    assert_eq!(answer.responses[0].partition_responses[0].error_code, 2, "CORRUPT_MESSAGE");
    println!("checked: acks=0 unanswered (the next answer is the next request's); acks 5 -> 21, unknown topic -> 3, junk -> 2");
}
