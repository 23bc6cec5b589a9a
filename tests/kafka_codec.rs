//! The Kafka listener's sans-IO half (src/kafka/, ADR 0026) at every version Keel serves: requests
//! encoded as a client would (the crate's client half) decode into the native requests they mean,
//! and every response the translation builds encodes at the request's version and decodes back to
//! what the native answer said.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use keel::kafka::translate::{self, Refusal};
use keel::kafka::{decode_request, encode_response, errors, versions, Request, Response};
use keel::protocol as native;
use keel::protocol::{ErrorCode, ErrorInfo};

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

/// A request frame as a client sends it (without the length prefix).
fn request_frame<R: Encodable>(api: ApiKey, version: i16, correlation_id: i32, request: &R) -> Bytes {
    let mut buf = BytesMut::new();
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(s("test-client")));
    header.encode(&mut buf, api.request_header_version(version)).unwrap();
    request.encode(&mut buf, version).unwrap();
    buf.freeze()
}

/// Encodes a response, checks its header, and decodes its body as a client would.
fn round_trip<R: Decodable>(version: i16, response: Response) -> R {
    let api = response.api();
    let mut bytes = encode_response(version, 41, &response).unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
    let header = ResponseHeader::decode(&mut bytes, api.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, 41);
    let decoded = R::decode(&mut bytes, version).unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
    assert!(!bytes.has_remaining(), "{api:?} v{version}: {} bytes left over", bytes.remaining());
    decoded
}

fn served(api: ApiKey) -> std::ops::RangeInclusive<i16> {
    let (_, min, max) = versions::SERVED.iter().find(|(served, _, _)| *served == api).unwrap();
    let min = if api == ApiKey::Produce { versions::PRODUCE_MIN_SERVED } else { *min };
    min..=*max
}

fn batch(records: &[&str]) -> Bytes {
    let records: Vec<keel::batch::Record> = records.iter().map(|v| keel::batch::Record::value(v.to_string())).collect();
    keel::batch::encode_batch(&records, 0, keel::batch::ProducerFields::NONE)
}

#[test]
fn api_versions_lists_every_served_api_at_every_version() {
    for version in served(ApiKey::ApiVersions) {
        let frame = request_frame(ApiKey::ApiVersions, version, 1, &ApiVersionsRequest::default());
        let decoded = decode_request(frame).unwrap();
        assert_eq!(decoded.client_id, "test-client");
        let response: ApiVersionsResponse =
            round_trip(version, Response::ApiVersions(translate::api_versions(version)));
        assert_eq!(response.error_code, 0);
        assert_eq!(response.api_keys.len(), versions::SERVED.len());
        let produce = response.api_keys.iter().find(|k| k.api_key == ApiKey::Produce as i16).unwrap();
        assert_eq!((produce.min_version, produce.max_version), (0, 12), "librdkafka compresses only with v0 listed");
    }
}

fn topic_info(name: &str, leaders: &[u64]) -> native::TopicInfo {
    native::TopicInfo {
        name: name.into(),
        partitions: leaders
            .iter()
            .enumerate()
            .map(|(index, leader)| native::PartitionInfo {
                partition: index as u32,
                leader: *leader,
                replicas: vec![1, 2],
                isr: vec![1, 2],
                leader_epoch: 3,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn metadata_lists_only_brokers_with_a_kafka_listener_and_marks_leaderless_partitions() {
    let answer = native::MetadataResponse {
        brokers: vec![
            native::BrokerInfo { node_id: 1, addr: "10.0.0.1:9400".into(), kafka_addr: "10.0.0.1:9092".into() },
            native::BrokerInfo { node_id: 2, addr: "10.0.0.2:9400".into(), kafka_addr: String::new() },
        ],
        topics: vec![topic_info("orders", &[1, 0])],
    };
    for version in served(ApiKey::Metadata) {
        let named = MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(s("orders")))),
        ]));
        let Request::Metadata(request) =
            decode_request(request_frame(ApiKey::Metadata, version, 2, &named)).unwrap().request
        else {
            panic!("not a metadata request")
        };
        assert_eq!(translate::metadata_request(&request).topics, vec!["orders".to_owned()]);
        let built = translate::metadata_response(&request, version, 1, Ok(answer.clone()));
        let response: MetadataResponse = round_trip(version, Response::Metadata(built));
        assert_eq!(response.brokers.len(), 1, "v{version}");
        assert_eq!((response.brokers[0].host.as_str(), response.brokers[0].port), ("10.0.0.1", 9092));
        let partitions = &response.topics[0].partitions;
        assert_eq!((partitions[0].leader_id.0, partitions[0].error_code), (1, 0));
        assert_eq!((partitions[1].leader_id.0, partitions[1].error_code), (-1, errors::LEADER_NOT_AVAILABLE));
        if version >= 1 {
            assert_eq!(response.controller_id.0, 1);
            // An empty topic list asks for no topics (v1+), but still gets the brokers.
            let none = MetadataRequest::default().with_topics(Some(Vec::new()));
            let built = translate::metadata_response(&none, version, 1, Ok(answer.clone()));
            let response: MetadataResponse = round_trip(version, Response::Metadata(built));
            assert!(response.topics.is_empty() && response.brokers.len() == 1);
        }
    }
}

#[test]
fn produce_splits_batches_maps_acks_and_answers_per_partition() {
    let two = [batch(&["a", "b"]), batch(&["c"])].concat();
    for version in served(ApiKey::Produce) {
        for (acks, native_acks) in [(0i16, native::Acks::None), (1, native::Acks::Leader), (-1, native::Acks::All)] {
            let request = ProduceRequest::default().with_acks(acks).with_timeout_ms(1500).with_topic_data(vec![
                produce_request::TopicProduceData::default().with_name(TopicName(s("orders"))).with_partition_data(
                    vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(Bytes::from(two.clone()))),
                        produce_request::PartitionProduceData::default()
                            .with_index(1)
                            .with_records(Some(Bytes::from_static(b"junk"))),
                    ],
                ),
            ]);
            let Request::Produce(request) =
                decode_request(request_frame(ApiKey::Produce, version, 3, &request)).unwrap().request
            else {
                panic!("not a produce")
            };
            let parts = translate::produce_requests(&request);
            let batches = parts[0].requests.as_ref().unwrap();
            assert_eq!(batches.len(), 2, "two batches, two native produces");
            assert!(batches
                .iter()
                .all(|b| b.acks == native_acks as i32 && b.timeout_ms == 1500 && b.topic == "orders"));
            assert_eq!(parts[1].requests.as_ref().unwrap_err().code, errors::CORRUPT_MESSAGE);
        }
        let answers = vec![
            (
                "orders".to_owned(),
                0,
                Ok(vec![native::ProduceResponse { error: None, base_offset: 7, log_start_offset: -1 }]),
            ),
            (
                "orders".to_owned(),
                1,
                Ok(vec![native::ProduceResponse {
                    error: Some(ErrorInfo::new(ErrorCode::OutOfOrderSequence, "seq 5, expected 3")),
                    base_offset: -1,
                    log_start_offset: -1,
                }]),
            ),
            ("other".to_owned(), 0, Err(Refusal::new(errors::INVALID_REQUIRED_ACKS, "acks"))),
        ];
        let response: ProduceResponse =
            round_trip(version, Response::Produce(translate::produce_response(version, answers)));
        assert_eq!(response.responses.len(), 2, "grouped by topic");
        let orders = &response.responses[0].partition_responses;
        assert_eq!((orders[0].error_code, orders[0].base_offset), (0, 7));
        assert_eq!(orders[1].error_code, errors::OUT_OF_ORDER_SEQUENCE_NUMBER);
        if version >= 8 {
            assert_eq!(orders[1].error_message.as_ref().unwrap().as_str(), "seq 5, expected 3");
        }
        assert_eq!(response.responses[1].partition_responses[0].error_code, errors::INVALID_REQUIRED_ACKS);
    }
}

#[test]
fn produce_refuses_bad_acks_and_cut_batches() {
    let request =
        ProduceRequest::default().with_acks(2).with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(s("t")))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default().with_records(Some(batch(&["x"])))
            ])]);
    assert_eq!(
        translate::produce_requests(&request)[0].requests.as_ref().unwrap_err().code,
        errors::INVALID_REQUIRED_ACKS
    );
    let whole = batch(&["x"]);
    for cut in 1..whole.len() {
        assert!(translate::split_batches(&whole.slice(..cut)).is_err(), "cut at {cut}");
    }
    assert!(translate::split_batches(&Bytes::new()).is_err(), "no batch at all");
    let mut negative = BytesMut::from(&whole[..]);
    negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
    assert!(translate::split_batches(&negative.freeze()).is_err());
}

#[test]
fn fetch_keeps_records_as_stored_and_cuts_at_max_bytes_after_the_first() {
    let records = batch(&["a", "b", "c"]);
    for version in served(ApiKey::Fetch) {
        let partition = |index: i32| {
            fetch_request::FetchPartition::default()
                .with_partition(index)
                .with_fetch_offset(4)
                .with_partition_max_bytes(1 << 20)
                .with_current_leader_epoch(if version >= 9 { 3 } else { -1 })
        };
        let request = FetchRequest::default().with_max_wait_ms(500).with_max_bytes(10).with_topics(vec![
            fetch_request::FetchTopic::default().with_topic(TopicName(s("orders"))).with_partitions(vec![
                partition(0),
                partition(1),
                partition(2),
            ]),
        ]);
        let Request::Fetch(request) =
            decode_request(request_frame(ApiKey::Fetch, version, 4, &request)).unwrap().request
        else {
            panic!("not a fetch")
        };
        let parts = translate::fetch_requests(&request, 0).unwrap();
        let native_request = parts[0].request.as_ref().unwrap();
        assert_eq!((native_request.offset, native_request.max_wait_ms), (4, 0));
        assert_eq!(native_request.leader_epoch, if version >= 9 { Some(3) } else { None });
        let answer = |error: Option<ErrorInfo>| native::FetchResponse {
            error,
            high_watermark: 9,
            log_start_offset: 2,
            records: records.clone(),
        };
        let answers = vec![
            ("orders".to_owned(), 0, Ok(answer(None))),
            ("orders".to_owned(), 1, Ok(answer(None))),
            ("orders".to_owned(), 2, Ok(answer(Some(ErrorInfo::new(ErrorCode::NotLeader, "moved"))))),
        ];
        let built = translate::fetch_response(version, request.max_bytes, answers);
        let response: FetchResponse = round_trip(version, Response::Fetch(built));
        let partitions = &response.responses[0].partitions;
        assert_eq!(
            partitions[0].records.as_ref().unwrap(),
            &records,
            "the first partition's records, whatever max_bytes"
        );
        assert_eq!(partitions[0].high_watermark, 9);
        assert!(partitions[1].records.as_ref().unwrap().is_empty(), "past max_bytes: none, never null");
        assert_eq!(partitions[2].error_code, errors::NOT_LEADER_OR_FOLLOWER);
        if version >= 5 {
            assert_eq!(partitions[0].log_start_offset, 2);
        }
        if version >= 7 {
            let with_session = FetchRequest::default().with_session_id(9);
            assert_eq!(translate::fetch_requests(&with_session, 0).err(), Some(errors::FETCH_SESSION_ID_NOT_FOUND));
            let refused: FetchResponse =
                round_trip(version, Response::Fetch(translate::fetch_refused(&with_session, version, 70)));
            assert_eq!(refused.error_code, errors::FETCH_SESSION_ID_NOT_FOUND);
        }
    }
}

#[test]
fn list_offsets_maps_selectors_and_errors() {
    for version in served(ApiKey::ListOffsets) {
        let partition = |index: i32, timestamp: i64| {
            list_offsets_request::ListOffsetsPartition::default().with_partition_index(index).with_timestamp(timestamp)
        };
        let request =
            ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![
                list_offsets_request::ListOffsetsTopic::default().with_name(TopicName(s("orders"))).with_partitions(
                    vec![partition(0, -1), partition(1, -2), partition(2, 1_700_000_000_000), partition(3, -3)],
                ),
            ]);
        let Request::ListOffsets(request) =
            decode_request(request_frame(ApiKey::ListOffsets, version, 5, &request)).unwrap().request
        else {
            panic!("not a list offsets")
        };
        let parts = translate::list_offsets_requests(&request);
        let selectors: Vec<i64> =
            parts.iter().filter_map(|p| p.request.as_ref().ok().map(|r| r.timestamp_ms)).collect();
        assert_eq!(selectors, vec![-1, -2, 1_700_000_000_000]);
        assert_eq!(parts[3].request.as_ref().unwrap_err().code, errors::UNSUPPORTED_VERSION);
        let answers = vec![
            ("orders".to_owned(), 0, Ok(native::ListOffsetsResponse { error: None, offset: 12, timestamp_ms: -1 })),
            (
                "orders".to_owned(),
                1,
                Ok(native::ListOffsetsResponse {
                    error: Some(ErrorInfo::new(ErrorCode::UnknownPartition, "no")),
                    offset: -1,
                    timestamp_ms: -1,
                }),
            ),
        ];
        let response: ListOffsetsResponse =
            round_trip(version, Response::ListOffsets(translate::list_offsets_response(answers)));
        let partitions = &response.topics[0].partitions;
        assert_eq!((partitions[0].offset, partitions[0].error_code), (12, 0));
        assert_eq!(partitions[1].error_code, errors::UNKNOWN_TOPIC_OR_PARTITION);
    }
}

#[test]
fn create_topics_takes_kafkas_configs_and_refuses_the_rest() {
    let config = |name: &str, value: &str| {
        create_topics_request::CreatableTopicConfig::default().with_name(s(name)).with_value(Some(s(value)))
    };
    let topic = |name: &str, configs| {
        create_topics_request::CreatableTopic::default()
            .with_name(TopicName(s(name)))
            .with_num_partitions(-1)
            .with_replication_factor(3)
            .with_configs(configs)
    };
    for version in served(ApiKey::CreateTopics) {
        let request = CreateTopicsRequest::default().with_topics(vec![
            topic(
                "a",
                vec![
                    config("cleanup.policy", "compact"),
                    config("retention.ms", "60000"),
                    config("min.insync.replicas", "2"),
                ],
            ),
            topic("b", vec![config("compression.type", "zstd")]),
            topic("c", vec![config("retention.ms", "soon")]),
        ]);
        let Request::CreateTopics(request) =
            decode_request(request_frame(ApiKey::CreateTopics, version, 6, &request)).unwrap().request
        else {
            panic!("not a create")
        };
        let creates = translate::create_topic_requests(&request);
        let a = creates[0].1.as_ref().unwrap();
        assert_eq!((a.partitions, a.replication, a.min_insync_replicas), (translate::DEFAULT_PARTITIONS, 3, Some(2)));
        let log = a.log.as_ref().unwrap();
        assert_eq!((log.cleanup_policy.as_deref(), log.retention_ms), (Some("compact"), Some(60_000)));
        assert_eq!(creates[1].1.as_ref().unwrap_err().code, errors::INVALID_CONFIG);
        assert_eq!(creates[2].1.as_ref().unwrap_err().code, errors::INVALID_CONFIG);
        let response: CreateTopicsResponse =
            round_trip(version, Response::CreateTopics(translate::create_topics_response(version, creates)));
        assert_eq!(response.topics[0].error_code, 0);
        assert_eq!(response.topics[1].error_code, errors::INVALID_CONFIG);
        assert!(response.topics[1].error_message.as_ref().unwrap().as_str().contains("compression.type"));
        if version >= 5 {
            assert_eq!((response.topics[0].num_partitions, response.topics[0].replication_factor), (1, 3));
        }
    }
}

#[test]
fn delete_topics_by_name_at_every_version() {
    for version in served(ApiKey::DeleteTopics) {
        let request = if version >= 6 {
            DeleteTopicsRequest::default().with_topics(vec![
                delete_topics_request::DeleteTopicState::default().with_name(Some(TopicName(s("gone"))))
            ])
        } else {
            DeleteTopicsRequest::default().with_topic_names(vec![TopicName(s("gone"))])
        };
        let Request::DeleteTopics(request) =
            decode_request(request_frame(ApiKey::DeleteTopics, version, 7, &request)).unwrap().request
        else {
            panic!("not a delete")
        };
        assert_eq!(translate::delete_topic_names(&request), vec![Ok("gone".to_owned())]);
        let results =
            vec![(Some("gone".to_owned()), Err(Refusal::new(errors::UNKNOWN_TOPIC_OR_PARTITION, "no such topic")))];
        let response: DeleteTopicsResponse =
            round_trip(version, Response::DeleteTopics(translate::delete_topics_response(version, results)));
        assert_eq!(response.responses[0].error_code, errors::UNKNOWN_TOPIC_OR_PARTITION);
    }
}

#[test]
fn init_producer_id_refuses_transactions() {
    for version in served(ApiKey::InitProducerId) {
        let transactional = InitProducerIdRequest::default().with_transactional_id(Some(TransactionalId(s("tx"))));
        assert_eq!(translate::init_producer_id_refusal(&transactional).unwrap().code, errors::INVALID_REQUEST);
        assert!(translate::init_producer_id_refusal(&InitProducerIdRequest::default()).is_none());
        let answer = native::InitProducerIdResponse { error: None, producer_id: 4096, producer_epoch: 0 };
        let response: InitProducerIdResponse =
            round_trip(version, Response::InitProducerId(translate::init_producer_id_response(Ok(answer))));
        assert_eq!((response.producer_id.0, response.producer_epoch, response.error_code), (4096, 0, 0));
    }
}

#[test]
fn find_coordinator_answers_with_the_kafka_address_or_a_retriable_error() {
    let found = native::FindCoordinatorResponse {
        error: None,
        node_id: 2,
        addr: "h:9400".into(),
        partition: 3,
        kafka_addr: "h:9092".into(),
    };
    let no_kafka = native::FindCoordinatorResponse { kafka_addr: String::new(), ..found.clone() };
    for version in served(ApiKey::FindCoordinator) {
        let request = if version >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g")])
        } else {
            FindCoordinatorRequest::default().with_key(s("g"))
        };
        let Request::FindCoordinator(request) =
            decode_request(request_frame(ApiKey::FindCoordinator, version, 8, &request)).unwrap().request
        else {
            panic!("not a find")
        };
        assert_eq!(translate::find_coordinator_keys(&request, version), vec![("g".to_owned(), None)]);
        for (answer, code) in [(found.clone(), 0), (no_kafka.clone(), errors::COORDINATOR_NOT_AVAILABLE)] {
            let built = translate::find_coordinator_response(version, vec![("g".to_owned(), Ok(answer))]);
            let response: FindCoordinatorResponse = round_trip(version, Response::FindCoordinator(built));
            let (error, node, port) = if version >= 4 {
                let c = &response.coordinators[0];
                (c.error_code, c.node_id.0, c.port)
            } else {
                (response.error_code, response.node_id.0, response.port)
            };
            assert_eq!(error, code, "v{version}");
            if code == 0 {
                assert_eq!((node, port), (2, 9092));
            }
        }
    }
}

fn subscription(topics: &[&str], version: i16) -> Bytes {
    let subscription = ConsumerProtocolSubscription::default().with_topics(topics.iter().map(|t| s(t)).collect());
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    subscription.encode(&mut buf, version.min(3)).unwrap();
    buf.freeze()
}

#[test]
fn joins_read_the_subscription_and_nobody_is_told_it_leads() {
    for version in served(ApiKey::JoinGroup) {
        let request = JoinGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_session_timeout_ms(10_000)
            .with_member_id(s(""))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![
                join_group_request::JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(subscription(&["a", "b"], 1)),
                join_group_request::JoinGroupRequestProtocol::default()
                    .with_name(s("roundrobin"))
                    .with_metadata(subscription(&["a", "b"], 1)),
            ]);
        let decoded = decode_request(request_frame(ApiKey::JoinGroup, version, 9, &request)).unwrap();
        let Request::JoinGroup(request) = decoded.request else { panic!("not a join") };
        let join = translate::join_group_request(&request, &decoded.client_id).unwrap();
        assert_eq!(
            (join.topics.clone(), join.assignors.clone()),
            (vec!["a".to_owned(), "b".to_owned()], vec!["range".to_owned(), "roundrobin".to_owned()])
        );
        assert_eq!((join.session_timeout_ms, join.client_id.as_str()), (10_000, "test-client"));
        let answer = native::JoinGroupResponse {
            error: None,
            generation: 4,
            member_id: "m-1".into(),
            leader_id: "m-1".into(),
            assignor: "range".into(),
            assignment: vec![native::TopicPartitions { topic: "a".into(), partitions: vec![0] }],
        };
        let response: JoinGroupResponse =
            round_trip(version, Response::JoinGroup(translate::join_group_response(version, Ok(answer))));
        assert_eq!((response.generation_id, response.member_id.as_str()), (4, "m-1"));
        assert_ne!(response.leader.as_str(), "m-1", "the coordinator assigns: no member leads");
        assert!(response.members.is_empty());
        assert_eq!(response.protocol_name.as_ref().unwrap().as_str(), "range");
        let refused =
            translate::join_group_response(version, Err(Refusal::new(errors::INCONSISTENT_GROUP_PROTOCOL, "x")));
        let response: JoinGroupResponse = round_trip(version, Response::JoinGroup(refused));
        assert_eq!((response.error_code, response.generation_id), (errors::INCONSISTENT_GROUP_PROTOCOL, -1));
    }
    let other_type = JoinGroupRequest::default().with_protocol_type(s("connect"));
    assert_eq!(translate::join_group_request(&other_type, "c").unwrap_err().code, errors::INCONSISTENT_GROUP_PROTOCOL);
    let sticky_only = JoinGroupRequest::default().with_protocol_type(s("consumer")).with_protocols(vec![
        join_group_request::JoinGroupRequestProtocol::default()
            .with_name(s("cooperative-sticky"))
            .with_metadata(subscription(&["a"], 3)),
    ]);
    assert_eq!(translate::join_group_request(&sticky_only, "c").unwrap_err().code, errors::INCONSISTENT_GROUP_PROTOCOL);
}

#[test]
fn sync_hands_out_the_coordinators_assignment_in_the_consumer_protocol() {
    for version in served(ApiKey::SyncGroup) {
        let request =
            SyncGroupRequest::default().with_protocol_name(if version >= 5 { Some(s("range")) } else { None });
        let answer = native::SyncGroupResponse {
            error: None,
            assignment: vec![
                native::TopicPartitions { topic: "a".into(), partitions: vec![0, 2] },
                native::TopicPartitions { topic: "b".into(), partitions: vec![1] },
            ],
        };
        let response: SyncGroupResponse =
            round_trip(version, Response::SyncGroup(translate::sync_group_response(&request, version, Ok(answer))));
        let mut assignment = response.assignment.clone();
        assert_eq!(assignment.get_i16(), 0);
        let decoded = ConsumerProtocolAssignment::decode(&mut assignment, 0).unwrap();
        let got: Vec<(String, Vec<i32>)> =
            decoded.assigned_partitions.iter().map(|tp| (tp.topic.0.to_string(), tp.partitions.clone())).collect();
        assert_eq!(got, vec![("a".to_owned(), vec![0, 2]), ("b".to_owned(), vec![1])]);
    }
}

#[test]
fn commits_fetches_leaves_lists_and_describes_at_every_version() {
    let committed = native::OffsetFetchResponse {
        error: None,
        offsets: vec![native::PartitionOffset { topic: "a".into(), partition: 1, offset: 17 }],
    };
    for version in served(ApiKey::OffsetFetch) {
        let request = OffsetFetchRequest::default().with_group_id(GroupId(s("g"))).with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(TopicName(s("a")))
                .with_partition_indexes(vec![0, 1]),
        ]));
        let response: OffsetFetchResponse = round_trip(
            version,
            Response::OffsetFetch(translate::offset_fetch_response(&request, version, Ok(committed.clone()))),
        );
        let offsets: Vec<i64> = response.topics[0].partitions.iter().map(|p| p.committed_offset).collect();
        assert_eq!(offsets, vec![-1, 17], "v{version}");
    }
    for version in served(ApiKey::OffsetCommit) {
        let request = OffsetCommitRequest::default().with_generation_id_or_member_epoch(3).with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default().with_name(TopicName(s("a"))).with_partitions(
                vec![offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(1)
                    .with_committed_offset(18)],
            ),
        ]);
        let commit = translate::offset_commit_request(&request).unwrap();
        assert_eq!((commit.generation, commit.offsets[0].offset), (3, 18));
        let refused = native::OffsetCommitResponse { error: Some(ErrorInfo::new(ErrorCode::IllegalGeneration, "old")) };
        let response: OffsetCommitResponse =
            round_trip(version, Response::OffsetCommit(translate::offset_commit_response(&request, Ok(refused))));
        assert_eq!(response.topics[0].partitions[0].error_code, errors::ILLEGAL_GENERATION);
    }
    for version in served(ApiKey::LeaveGroup) {
        let answers = vec![("m-1".to_owned(), Ok(native::LeaveGroupResponse { error: None }))];
        let response: LeaveGroupResponse =
            round_trip(version, Response::LeaveGroup(translate::leave_group_response(version, answers)));
        assert_eq!(response.error_code, 0);
    }
    let groups = native::ListGroupsResponse {
        error: None,
        groups: vec![native::GroupSummaryInfo { group: "g".into(), state: "stable".into(), ..Default::default() }],
    };
    for version in served(ApiKey::ListGroups) {
        let built = translate::list_groups_response(&ListGroupsRequest::default(), version, Ok(groups.clone()));
        let response: ListGroupsResponse = round_trip(version, Response::ListGroups(built));
        assert_eq!(response.groups[0].group_id.0.as_str(), "g");
        if version >= 4 {
            assert_eq!(response.groups[0].group_state.as_str(), "Stable");
        }
    }
    let described = native::DescribeGroupResponse {
        summary: Some(native::GroupSummaryInfo { group: "g".into(), state: "stable".into(), ..Default::default() }),
        assignor: "range".into(),
        members: vec![native::GroupMemberInfo {
            member_id: "m-1".into(),
            client_id: "c".into(),
            topics: vec!["a".into()],
            assignment: vec![native::TopicPartitions { topic: "a".into(), partitions: vec![0] }],
        }],
        ..Default::default()
    };
    for version in served(ApiKey::DescribeGroups) {
        let unknown = native::DescribeGroupResponse {
            error: Some(ErrorInfo::new(ErrorCode::UnknownGroup, "no")),
            ..Default::default()
        };
        let groups =
            vec![translate::described_group("g", Ok(described.clone())), translate::described_group("x", Ok(unknown))];
        let response: DescribeGroupsResponse =
            round_trip(version, Response::DescribeGroups(DescribeGroupsResponse::default().with_groups(groups)));
        assert_eq!((response.groups[0].group_state.as_str(), response.groups[0].members.len()), ("Stable", 1));
        assert_eq!(
            translate::subscription_topics(&response.groups[0].members[0].member_metadata),
            Some(vec!["a".to_owned()])
        );
        assert_eq!((response.groups[1].group_state.as_str(), response.groups[1].error_code), ("Dead", 0));
    }
}

/// A request at a version Keel does not serve, but the crate reads, is answered with
/// UNSUPPORTED_VERSION on everything it names, in that version's format; the connection goes on.
#[test]
fn unserved_versions_the_crate_reads_get_unsupported_version_answers() {
    fn frame_of<R: Encodable + Default>(api: ApiKey) -> impl Fn(i16) -> Option<Bytes> {
        move |version| {
            let mut buf = BytesMut::new();
            let header = RequestHeader::default()
                .with_request_api_key(api as i16)
                .with_request_api_version(version)
                .with_correlation_id(3);
            header.encode(&mut buf, api.request_header_version(version)).ok()?;
            R::default().encode(&mut buf, version).ok()?;
            Some(buf.freeze())
        }
    }
    type FrameAt = Box<dyn Fn(i16) -> Option<Bytes>>;
    let apis: Vec<(ApiKey, FrameAt)> = vec![
        (ApiKey::Metadata, Box::new(frame_of::<MetadataRequest>(ApiKey::Metadata))),
        (ApiKey::Produce, Box::new(frame_of::<ProduceRequest>(ApiKey::Produce))),
        (ApiKey::Fetch, Box::new(frame_of::<FetchRequest>(ApiKey::Fetch))),
        (ApiKey::ListOffsets, Box::new(frame_of::<ListOffsetsRequest>(ApiKey::ListOffsets))),
        (ApiKey::CreateTopics, Box::new(frame_of::<CreateTopicsRequest>(ApiKey::CreateTopics))),
        (ApiKey::DeleteTopics, Box::new(frame_of::<DeleteTopicsRequest>(ApiKey::DeleteTopics))),
        (ApiKey::InitProducerId, Box::new(frame_of::<InitProducerIdRequest>(ApiKey::InitProducerId))),
        (ApiKey::FindCoordinator, Box::new(frame_of::<FindCoordinatorRequest>(ApiKey::FindCoordinator))),
        (ApiKey::JoinGroup, Box::new(frame_of::<JoinGroupRequest>(ApiKey::JoinGroup))),
        (ApiKey::SyncGroup, Box::new(frame_of::<SyncGroupRequest>(ApiKey::SyncGroup))),
        (ApiKey::Heartbeat, Box::new(frame_of::<HeartbeatRequest>(ApiKey::Heartbeat))),
        (ApiKey::LeaveGroup, Box::new(frame_of::<LeaveGroupRequest>(ApiKey::LeaveGroup))),
        (ApiKey::OffsetCommit, Box::new(frame_of::<OffsetCommitRequest>(ApiKey::OffsetCommit))),
        (ApiKey::OffsetFetch, Box::new(frame_of::<OffsetFetchRequest>(ApiKey::OffsetFetch))),
        (ApiKey::ListGroups, Box::new(frame_of::<ListGroupsRequest>(ApiKey::ListGroups))),
        (ApiKey::DescribeGroups, Box::new(frame_of::<DescribeGroupsRequest>(ApiKey::DescribeGroups))),
    ];
    let mut answered = Vec::new();
    let mut unanswerable = Vec::new();
    for (api, frame) in &apis {
        let readable = api.valid_versions();
        for version in readable.min..=readable.max {
            if versions::accepts(*api, version) {
                continue;
            }
            let Some(bytes) = frame(version) else { continue };
            let decoded = decode_request(bytes).unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
            assert!(!decoded.served, "{api:?} v{version}");
            let response = translate::refuse_all(&decoded.request, version, 1, errors::UNSUPPORTED_VERSION);
            match encode_response(version, 3, &response) {
                Ok(_) => answered.push(format!("{api:?} v{version}")),
                Err(_) => unanswerable.push(format!("{api:?} v{version}")),
            }
        }
    }
    println!("answered with UNSUPPORTED_VERSION: {answered:?}");
    println!("closed instead (no answer in that version's format): {unanswerable:?}");
    assert!(answered.len() >= 15, "{answered:?}");
    // The versions past Keel's that the crate reads are answered, topic ids and all.
    for expected in ["Metadata v13", "Produce v13", "Fetch v13", "ListOffsets v8", "OffsetFetch v8"] {
        assert!(answered.iter().any(|a| a == expected), "{expected} not answered: {unanswerable:?}");
    }
    let heartbeat = Response::Heartbeat(HeartbeatResponse::default());
    assert!(encode_response(4, 1, &heartbeat).is_ok());
}
