//! Kafka requests to native requests, native answers to Kafka responses: pure functions, one pair
//! per API (ADR 0026). A Kafka request names many partitions (or topics, or group members); the
//! native protocol one each, so a request becomes a list of native requests whose answers come back
//! in the same order. Every response is built for the request's version: a field the version does
//! not carry stays at its default (the crate refuses to encode anything else).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{OffsetFetchResponsePartition, OffsetFetchResponseTopic};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::errors::{self, code_of, message_of};
use super::{split_host_port, str_bytes, versions, Request, Response, CLUSTER_ID};
use crate::protocol as native;
use crate::protocol::{Acks, ErrorCode, LIST_OFFSETS_EARLIEST};

/// A Kafka error for one item of a request, decided without asking the broker.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub code: i16,
    pub message: String,
}

impl Refusal {
    pub fn new(code: i16, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into() }
    }
}

fn topic(name: &TopicName) -> String {
    name.0.to_string()
}

fn topic_name(name: &str) -> TopicName {
    TopicName(str_bytes(name))
}

/// Groups `(topic, item)` pairs by topic, keeping the first appearance order of topics and the
/// order of items within each.
fn by_topic<T>(items: Vec<(String, T)>) -> Vec<(String, Vec<T>)> {
    let mut out: Vec<(String, Vec<T>)> = Vec::new();
    for (name, item) in items {
        match out.iter_mut().find(|(existing, _)| *existing == name) {
            Some((_, list)) => list.push(item),
            None => out.push((name, vec![item])),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// ApiVersions

pub fn api_versions(version: i16) -> ApiVersionsResponse {
    let keys = versions::SERVED
        .iter()
        .map(|(api, min, max)| {
            ApiVersion::default().with_api_key(*api as i16).with_min_version(*min).with_max_version(*max)
        })
        .collect();
    let response = ApiVersionsResponse::default().with_api_keys(keys);
    if version >= 3 {
        response.with_finalized_features_epoch(-1)
    } else {
        response
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata

/// The native request: every topic (Kafka's null list, and its empty list, whose answer lists
/// none but still needs the brokers), or the ones named.
pub fn metadata_request(request: &MetadataRequest) -> native::MetadataRequest {
    let topics = request.topics.iter().flatten().filter_map(|t| t.name.as_ref().map(topic)).collect();
    native::MetadataRequest { topics }
}

/// The Kafka metadata for a native answer. Only brokers with a Kafka listener are listed; this
/// broker (`node_id`) is named the controller, since any broker creates and deletes topics.
pub fn metadata_response(
    request: &MetadataRequest,
    version: i16,
    node_id: u64,
    answer: Result<native::MetadataResponse, native::ErrorInfo>,
) -> MetadataResponse {
    let mut response = MetadataResponse::default();
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            // No metadata (no Raft leader reachable): every named topic gets the error, retriable.
            let code = if version >= 1 { errors::LEADER_NOT_AVAILABLE } else { errors::kafka_code(error.error_code()) };
            response.topics = metadata_request(request)
                .topics
                .iter()
                .map(|name| MetadataResponseTopic::default().with_name(Some(topic_name(name))).with_error_code(code))
                .collect();
            return with_metadata_header(response, version, node_id);
        }
    };
    response.brokers = answer
        .brokers
        .iter()
        .filter_map(|broker| {
            let (host, port) = split_host_port(&broker.kafka_addr)?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(broker.node_id as i32))
                    .with_host(str_bytes(host))
                    .with_port(port),
            )
        })
        .collect();
    let none_asked = matches!(&request.topics, Some(topics) if topics.is_empty());
    if !none_asked {
        response.topics = answer.topics.iter().map(|info| metadata_topic(info, version)).collect();
    }
    with_metadata_header(response, version, node_id)
}

fn with_metadata_header(mut response: MetadataResponse, version: i16, node_id: u64) -> MetadataResponse {
    if version >= 1 {
        response.controller_id = BrokerId(node_id as i32);
    }
    if version >= 2 {
        response.cluster_id = Some(str_bytes(CLUSTER_ID));
    }
    response
}

fn metadata_topic(info: &native::TopicInfo, version: i16) -> MetadataResponseTopic {
    let mut topic =
        MetadataResponseTopic::default().with_name(Some(topic_name(&info.name))).with_error_code(code_of(&info.error));
    if version >= 1 {
        topic.is_internal = crate::group::is_internal_topic(&info.name);
    }
    topic.partitions = info
        .partitions
        .iter()
        .map(|p| {
            let ids = |nodes: &[u64]| nodes.iter().map(|n| BrokerId(*n as i32)).collect::<Vec<_>>();
            let mut partition = MetadataResponsePartition::default()
                .with_partition_index(p.partition as i32)
                .with_leader_id(BrokerId(if p.leader == 0 { -1 } else { p.leader as i32 }))
                .with_replica_nodes(ids(&p.replicas))
                .with_isr_nodes(ids(&p.isr))
                .with_error_code(if p.leader == 0 { errors::LEADER_NOT_AVAILABLE } else { errors::NONE });
            if version >= 7 {
                partition.leader_epoch = p.leader_epoch;
            }
            partition
        })
        .collect();
    topic
}

// ---------------------------------------------------------------------------------------------
// Produce

/// The native acks for Kafka's `acks` (0, 1, -1).
pub fn produce_acks(acks: i16) -> Option<Acks> {
    match acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    }
}

/// Splits a produce's `records` into its record batches (each is one native produce). A batch is
/// `base_offset: i64, batch_length: i32` then `batch_length` bytes.
pub fn split_batches(records: &Bytes) -> Result<Vec<Bytes>, Refusal> {
    let mut batches = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let header = records
            .get(at..at + 12)
            .ok_or_else(|| Refusal::new(errors::CORRUPT_MESSAGE, "a record batch is cut short"))?;
        let length = (&header[8..12]).get_i32();
        let end = usize::try_from(length).ok().and_then(|length| (at + 12).checked_add(length));
        match end {
            Some(end) if length > 0 && end <= records.len() => {
                batches.push(records.slice(at..end));
                at = end;
            }
            _ => return Err(Refusal::new(errors::CORRUPT_MESSAGE, format!("a record batch claims {length} bytes"))),
        }
    }
    if batches.is_empty() {
        return Err(Refusal::new(errors::CORRUPT_MESSAGE, "no record batch"));
    }
    Ok(batches)
}

/// One partition of a produce: its native requests (one per batch), or why there are none.
pub struct PartitionProduce {
    pub topic: String,
    pub partition: i32,
    pub requests: Result<Vec<native::ProduceRequest>, Refusal>,
}

pub fn produce_requests(request: &ProduceRequest) -> Vec<PartitionProduce> {
    let acks = produce_acks(request.acks);
    let mut out = Vec::new();
    for topic_data in &request.topic_data {
        let name = topic(&topic_data.name);
        for data in &topic_data.partition_data {
            let requests = (|| {
                let acks = acks.ok_or_else(|| {
                    Refusal::new(
                        errors::INVALID_REQUIRED_ACKS,
                        format!("acks must be 0, 1 or -1, got {}", request.acks),
                    )
                })?;
                if request.transactional_id.is_some() {
                    return Err(Refusal::new(errors::INVALID_REQUEST, "Keel does not support transactions"));
                }
                let partition = u32::try_from(data.index).map_err(|_| {
                    Refusal::new(errors::UNKNOWN_TOPIC_OR_PARTITION, format!("partition {}", data.index))
                })?;
                let records = data.records.clone().unwrap_or_default();
                let batches = split_batches(&records)?;
                Ok(batches
                    .into_iter()
                    .map(|batch| native::ProduceRequest {
                        topic: name.clone(),
                        partition,
                        acks: acks as i32,
                        batch,
                        timeout_ms: request.timeout_ms.max(0) as u32,
                    })
                    .collect())
            })();
            out.push(PartitionProduce { topic: name.clone(), partition: data.index, requests });
        }
    }
    out
}

/// The answer of one partition: the native answers of its batches, in order (the first error, or
/// the first batch's offset, is the partition's).
pub fn produce_response(
    version: i16,
    parts: Vec<(String, i32, Result<Vec<native::ProduceResponse>, Refusal>)>,
) -> ProduceResponse {
    let partitions = parts.into_iter().map(|(name, index, answer)| {
        let (code, base_offset, message) = match answer {
            Err(refusal) => (refusal.code, -1, Some(refusal.message)),
            Ok(answers) => match answers.iter().find(|answer| answer.error.is_some()) {
                Some(failed) => (code_of(&failed.error), -1, message_of(&failed.error)),
                None => (errors::NONE, answers.first().map_or(-1, |answer| answer.base_offset), None),
            },
        };
        let mut partition =
            PartitionProduceResponse::default().with_index(index).with_error_code(code).with_base_offset(base_offset);
        if version >= 8 {
            partition.error_message = message.map(str_bytes);
        }
        (name, partition)
    });
    let responses = by_topic(partitions.collect())
        .into_iter()
        .map(|(name, partitions)| {
            TopicProduceResponse::default().with_name(topic_name(&name)).with_partition_responses(partitions)
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

// ---------------------------------------------------------------------------------------------
// Fetch

/// One partition of a fetch.
pub struct PartitionFetch {
    pub topic: String,
    pub partition: i32,
    pub request: Result<native::FetchRequest, Refusal>,
}

/// The fetch's partitions as native fetches that wait at most `wait_ms` each; `Err`: the whole
/// request is refused with this top-level code (a fetch session Keel never handed out).
pub fn fetch_requests(request: &FetchRequest, wait_ms: u32) -> Result<Vec<PartitionFetch>, i16> {
    if request.session_id != 0 {
        return Err(errors::FETCH_SESSION_ID_NOT_FOUND);
    }
    let mut out = Vec::new();
    for fetch_topic in &request.topics {
        let name = topic(&fetch_topic.topic);
        for p in &fetch_topic.partitions {
            let native = u32::try_from(p.partition)
                .map(|partition| native::FetchRequest {
                    topic: name.clone(),
                    partition,
                    offset: p.fetch_offset,
                    max_bytes: p.partition_max_bytes.max(1) as u32,
                    max_wait_ms: wait_ms,
                    min_bytes: 1,
                    leader_epoch: (p.current_leader_epoch >= 0).then_some(p.current_leader_epoch),
                })
                .map_err(|_| Refusal::new(errors::UNKNOWN_TOPIC_OR_PARTITION, format!("partition {}", p.partition)));
            out.push(PartitionFetch { topic: name.clone(), partition: p.partition, request: native });
        }
    }
    Ok(out)
}

/// Bytes of records in native fetch answers.
pub fn fetched_bytes(answers: &[Result<native::FetchResponse, Refusal>]) -> usize {
    answers.iter().map(|answer| answer.as_ref().map_or(0, |answer| answer.records.len())).sum()
}

/// Whether a fetch answer is final: some partition has records or an error.
pub fn fetch_has_news(answers: &[Result<native::FetchResponse, Refusal>]) -> bool {
    answers.iter().any(|answer| match answer {
        Ok(answer) => answer.error.is_some() || !answer.records.is_empty(),
        Err(_) => true,
    })
}

/// The Kafka fetch response. Records beyond the request's `max_bytes` are left out (that
/// partition answers with none, and is fetched again), except the first partition's that has any.
pub fn fetch_response(
    version: i16,
    max_bytes: i32,
    parts: Vec<(String, i32, Result<native::FetchResponse, Refusal>)>,
) -> FetchResponse {
    let mut budget = max_bytes.max(0) as usize;
    let mut first = true;
    let partitions = parts.into_iter().map(|(name, index, answer)| {
        let mut data = PartitionData::default().with_partition_index(index);
        match answer {
            Err(refusal) => data.error_code = refusal.code,
            Ok(answer) if answer.error.is_some() => data.error_code = code_of(&answer.error),
            Ok(answer) => {
                data.high_watermark = answer.high_watermark;
                data.last_stable_offset = answer.high_watermark;
                if version >= 5 {
                    data.log_start_offset = answer.log_start_offset;
                }
                let fits = answer.records.len() <= budget;
                if !answer.records.is_empty() && (fits || first) {
                    budget = budget.saturating_sub(answer.records.len());
                    first = false;
                    data.records = Some(answer.records);
                }
            }
        }
        if data.error_code != errors::NONE {
            data.high_watermark = -1;
        }
        (name, data)
    });
    let responses = by_topic(partitions.collect())
        .into_iter()
        .map(|(name, partitions)| {
            FetchableTopicResponse::default().with_topic(topic_name(&name)).with_partitions(partitions)
        })
        .collect();
    FetchResponse::default().with_responses(responses)
}

/// A fetch refused as a whole (`code` at the top level, v7+; below it, on every partition).
pub fn fetch_refused(request: &FetchRequest, version: i16, code: i16) -> FetchResponse {
    if version >= 7 {
        return FetchResponse::default().with_error_code(code);
    }
    let parts = request
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (topic(&t.topic), p.partition, Err(Refusal::new(code, "")))))
        .collect();
    fetch_response(version, 0, parts)
}

// ---------------------------------------------------------------------------------------------
// ListOffsets

pub struct PartitionListOffsets {
    pub topic: String,
    pub partition: i32,
    pub request: Result<native::ListOffsetsRequest, Refusal>,
}

pub fn list_offsets_requests(request: &ListOffsetsRequest) -> Vec<PartitionListOffsets> {
    let mut out = Vec::new();
    for t in &request.topics {
        let name = topic(&t.name);
        for p in &t.partitions {
            let native = match (u32::try_from(p.partition_index), p.timestamp) {
                (Err(_), _) => Err(Refusal::new(errors::UNKNOWN_TOPIC_OR_PARTITION, "negative partition")),
                (Ok(partition), timestamp_ms) if timestamp_ms >= LIST_OFFSETS_EARLIEST => {
                    Ok(native::ListOffsetsRequest { topic: name.clone(), partition, timestamp_ms })
                }
                (Ok(_), other) => Err(Refusal::new(
                    errors::UNSUPPORTED_VERSION,
                    format!("timestamp selector {other} (max timestamp, earliest local, ...) is not served"),
                )),
            };
            out.push(PartitionListOffsets { topic: name.clone(), partition: p.partition_index, request: native });
        }
    }
    out
}

pub fn list_offsets_response(
    parts: Vec<(String, i32, Result<native::ListOffsetsResponse, Refusal>)>,
) -> ListOffsetsResponse {
    let partitions = parts.into_iter().map(|(name, index, answer)| {
        let partition = ListOffsetsPartitionResponse::default().with_partition_index(index);
        let partition = match answer {
            Err(refusal) => partition.with_error_code(refusal.code).with_offset(-1).with_timestamp(-1),
            Ok(answer) if answer.error.is_some() => {
                partition.with_error_code(code_of(&answer.error)).with_offset(-1).with_timestamp(-1)
            }
            Ok(answer) => partition.with_offset(answer.offset).with_timestamp(answer.timestamp_ms),
        };
        (name, partition)
    });
    let topics = by_topic(partitions.collect())
        .into_iter()
        .map(|(name, partitions)| {
            ListOffsetsTopicResponse::default().with_name(topic_name(&name)).with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

// ---------------------------------------------------------------------------------------------
// CreateTopics, DeleteTopics

/// Partitions and replicas of a topic created without them (Kafka's `-1`): Kafka's defaults.
pub const DEFAULT_PARTITIONS: u32 = 1;
pub const DEFAULT_REPLICATION: u32 = 1;

pub fn create_topic_requests(
    request: &CreateTopicsRequest,
) -> Vec<(String, Result<native::CreateTopicRequest, Refusal>)> {
    request.topics.iter().map(|t| (topic(&t.name), create_topic_request(t, request.validate_only))).collect()
}

fn create_topic_request(t: &CreatableTopic, validate_only: bool) -> Result<native::CreateTopicRequest, Refusal> {
    if validate_only {
        return Err(Refusal::new(errors::INVALID_REQUEST, "validate_only is not supported"));
    }
    if !t.assignments.is_empty() {
        return Err(Refusal::new(errors::INVALID_REQUEST, "manual replica assignments are not supported"));
    }
    let count = |value: i64, default: u32, what: &str, code: i16| match value {
        -1 => Ok(default),
        v if v > 0 => Ok(v as u32),
        v => Err(Refusal::new(code, format!("{what} must be positive or -1, got {v}"))),
    };
    let mut native = native::CreateTopicRequest {
        name: topic(&t.name),
        partitions: count(
            i64::from(t.num_partitions),
            DEFAULT_PARTITIONS,
            "num_partitions",
            errors::INVALID_PARTITIONS,
        )?,
        replication: count(
            i64::from(t.replication_factor),
            DEFAULT_REPLICATION,
            "replication_factor",
            errors::INVALID_REPLICATION_FACTOR,
        )?,
        ..Default::default()
    };
    for config in &t.configs {
        apply_topic_config(&mut native, config.name.as_str(), config.value.as_ref().map(|v| v.as_str()))?;
    }
    Ok(native)
}

/// Applies one of Kafka's topic configs; any other is refused with `INVALID_CONFIG`.
fn apply_topic_config(topic: &mut native::CreateTopicRequest, name: &str, value: Option<&str>) -> Result<(), Refusal> {
    let invalid = |why: &str| Refusal::new(errors::INVALID_CONFIG, format!("config {name}={value:?}: {why}"));
    let value = value.ok_or_else(|| invalid("no value"))?;
    let number = || value.parse::<i64>().map_err(|_| invalid("not an integer"));
    let log = topic.log.get_or_insert_with(Default::default);
    match name {
        "retention.ms" => log.retention_ms = Some(number()?),
        "retention.bytes" => log.retention_bytes = Some(number()?),
        "segment.bytes" => log.segment_bytes = Some(u64::try_from(number()?).map_err(|_| invalid("negative"))?),
        "delete.retention.ms" => log.delete_retention_ms = Some(number()?),
        "cleanup.policy" => log.cleanup_policy = Some(value.to_owned()),
        "min.insync.replicas" => {
            topic.min_insync_replicas = Some(u32::try_from(number()?).map_err(|_| invalid("negative"))?)
        }
        "unclean.leader.election.enable" => {
            topic.unclean_leader_election = value.parse::<bool>().map_err(|_| invalid("not true or false"))?
        }
        _ => return Err(invalid("not a config Keel knows")),
    }
    Ok(())
}

pub fn create_topics_response(
    version: i16,
    results: Vec<(String, Result<native::CreateTopicRequest, Refusal>)>,
) -> CreateTopicsResponse {
    let topics = results
        .into_iter()
        .map(|(name, result)| {
            let result_topic = CreatableTopicResult::default().with_name(topic_name(&name));
            match result {
                Ok(created) => {
                    let mut result_topic = result_topic.with_error_message(None);
                    if version >= 5 {
                        result_topic.num_partitions = created.partitions as i32;
                        result_topic.replication_factor = created.replication as i16;
                    }
                    result_topic
                }
                Err(refusal) => {
                    result_topic.with_error_code(refusal.code).with_error_message(Some(str_bytes(refusal.message)))
                }
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

/// The topic names a delete names (by name: v1-5 in a list, v6 in structs; ids are not served).
pub fn delete_topic_names(request: &DeleteTopicsRequest) -> Vec<Result<String, Refusal>> {
    let mut names: Vec<Result<String, Refusal>> = request.topic_names.iter().map(|n| Ok(topic(n))).collect();
    names.extend(request.topics.iter().map(|state| {
        state
            .name
            .as_ref()
            .map(topic)
            .ok_or_else(|| Refusal::new(errors::UNSUPPORTED_VERSION, "topic ids are not served"))
    }));
    names
}

pub fn delete_topics_response(
    version: i16,
    results: Vec<(Option<String>, Result<(), Refusal>)>,
) -> DeleteTopicsResponse {
    let responses = results
        .into_iter()
        .map(|(name, result)| {
            let mut topic = DeletableTopicResult::default().with_name(name.map(|n| topic_name(&n)));
            if let Err(refusal) = result {
                topic.error_code = refusal.code;
                if version >= 5 {
                    topic.error_message = Some(str_bytes(refusal.message));
                }
            }
            topic
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

// ---------------------------------------------------------------------------------------------
// InitProducerId

pub fn init_producer_id_refusal(request: &InitProducerIdRequest) -> Option<Refusal> {
    match &request.transactional_id {
        Some(id) if !id.0.is_empty() => {
            Some(Refusal::new(errors::INVALID_REQUEST, "Keel does not support transactions"))
        }
        _ => None,
    }
}

pub fn init_producer_id_response(answer: Result<native::InitProducerIdResponse, Refusal>) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default().with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
    match answer {
        Err(refusal) => response.with_error_code(refusal.code),
        Ok(answer) if answer.error.is_some() => response.with_error_code(code_of(&answer.error)),
        Ok(answer) => {
            response.with_producer_id(ProducerId(answer.producer_id)).with_producer_epoch(answer.producer_epoch as i16)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// FindCoordinator

/// The group ids a find asks about (v0-3: one key; v4: a list), each with its refusal if it is not
/// a group key (Keel has no transaction coordinator).
pub fn find_coordinator_keys(request: &FindCoordinatorRequest, version: i16) -> Vec<(String, Option<Refusal>)> {
    let refusal = (request.key_type != 0).then(|| {
        Refusal::new(errors::INVALID_REQUEST, format!("key type {} (transactions) is not served", request.key_type))
    });
    if version >= 4 {
        request.coordinator_keys.iter().map(|key| (key.to_string(), refusal.clone())).collect()
    } else {
        vec![(request.key.to_string(), refusal)]
    }
}

/// The coordinator's Kafka address, or why there is none.
fn coordinator(answer: &Result<native::FindCoordinatorResponse, Refusal>) -> Result<(i32, String, i32), Refusal> {
    let answer = answer.as_ref().map_err(Clone::clone)?;
    if answer.error.is_some() {
        return Err(Refusal::new(code_of(&answer.error), message_of(&answer.error).unwrap_or_default()));
    }
    let (host, port) = split_host_port(&answer.kafka_addr).ok_or_else(|| {
        Refusal::new(
            errors::COORDINATOR_NOT_AVAILABLE,
            format!("coordinator broker {} has no Kafka listener", answer.node_id),
        )
    })?;
    Ok((answer.node_id as i32, host, port))
}

pub fn find_coordinator_response(
    version: i16,
    answers: Vec<(String, Result<native::FindCoordinatorResponse, Refusal>)>,
) -> FindCoordinatorResponse {
    let mut response = FindCoordinatorResponse::default();
    if version >= 4 {
        response.error_message = None;
        response.coordinators = answers
            .iter()
            .map(|(key, answer)| {
                let entry = Coordinator::default().with_key(str_bytes(key.clone()));
                match coordinator(answer) {
                    Ok((node, host, port)) => {
                        entry.with_node_id(BrokerId(node)).with_host(str_bytes(host)).with_port(port)
                    }
                    Err(refusal) => entry
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(refusal.code)
                        .with_error_message(Some(str_bytes(refusal.message))),
                }
            })
            .collect();
        return response;
    }
    let answer = answers.into_iter().next().map(|(_, answer)| answer);
    let found = answer.as_ref().map_or_else(|| Err(Refusal::new(errors::INVALID_REQUEST, "no key")), coordinator);
    response.error_message = (version >= 1).then(|| str_bytes(""));
    match found {
        Ok((node, host, port)) => response.with_node_id(BrokerId(node)).with_host(str_bytes(host)).with_port(port),
        Err(refusal) => {
            let response = response.with_error_code(refusal.code).with_node_id(BrokerId(-1)).with_port(-1);
            if version >= 1 {
                response.with_error_message(Some(str_bytes(refusal.message)))
            } else {
                response
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The consumer protocol (the bytes inside JoinGroup and SyncGroup)

/// The topics of a consumer's subscription (`ConsumerProtocolSubscription`: an int16 version,
/// then the struct; a version above the crate's is read as its highest, as Kafka's rule says).
pub fn subscription_topics(metadata: &Bytes) -> Option<Vec<String>> {
    let mut bytes = metadata.clone();
    if bytes.len() < 2 {
        return None;
    }
    let version = bytes.get_i16();
    if version < 0 {
        return None;
    }
    let subscription = ConsumerProtocolSubscription::decode(&mut bytes, version.min(3)).ok()?;
    Some(subscription.topics.iter().map(|t| t.to_string()).collect())
}

/// A subscription of `topics` in the consumer protocol (version 0), as DescribeGroups shows it.
pub fn encode_subscription(topics: &[String]) -> Bytes {
    let subscription =
        ConsumerProtocolSubscription::default().with_topics(topics.iter().map(|t| str_bytes(t.clone())).collect());
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    // Encoding a default-built v0 struct cannot fail: every field it sets exists in v0.
    if subscription.encode(&mut buf, 0).is_err() {
        return Bytes::new();
    }
    buf.freeze()
}

/// An assignment in the consumer protocol (version 0).
pub fn encode_assignment(assignment: &[native::TopicPartitions]) -> Bytes {
    let partitions = assignment
        .iter()
        .map(|tp| {
            TopicPartition::default()
                .with_topic(topic_name(&tp.topic))
                .with_partitions(tp.partitions.iter().map(|p| *p as i32).collect())
        })
        .collect();
    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(partitions);
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    if assignment.encode(&mut buf, 0).is_err() {
        return Bytes::new();
    }
    buf.freeze()
}

// ---------------------------------------------------------------------------------------------
// Groups

/// The native join for a Kafka join. Keel's coordinator assigns (ADR 0020): the member's
/// subscription is read from its protocol metadata, and the protocol names are its assignors.
pub fn join_group_request(request: &JoinGroupRequest, client_id: &str) -> Result<native::JoinGroupRequest, Refusal> {
    if request.protocol_type.as_str() != "consumer" {
        return Err(Refusal::new(
            errors::INCONSISTENT_GROUP_PROTOCOL,
            format!("protocol type {:?}", request.protocol_type.as_str()),
        ));
    }
    if request.group_instance_id.is_some() {
        return Err(Refusal::new(
            errors::UNSUPPORTED_VERSION,
            "static membership (group.instance.id) is not supported",
        ));
    }
    let topics =
        request.protocols.iter().find_map(|protocol| subscription_topics(&protocol.metadata)).ok_or_else(|| {
            Refusal::new(errors::INCONSISTENT_GROUP_PROTOCOL, "no protocol carries a readable subscription")
        })?;
    let assignors: Vec<String> = request.protocols.iter().map(|p| p.name.to_string()).collect();
    if !assignors.iter().any(|name| crate::group::assignor::Assignor::parse(name).is_some()) {
        return Err(Refusal::new(
            errors::INCONSISTENT_GROUP_PROTOCOL,
            format!("assignors {assignors:?}: Keel's coordinator assigns with range or roundrobin"),
        ));
    }
    Ok(native::JoinGroupRequest {
        group: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        client_id: client_id.to_owned(),
        session_timeout_ms: request.session_timeout_ms.max(0) as u32,
        topics,
        assignors,
    })
}

/// The Kafka join response. Nobody is told it leads (the coordinator assigned already): every
/// member sends an empty SyncGroup and gets its assignment in the answer.
pub fn join_group_response(version: i16, answer: Result<native::JoinGroupResponse, Refusal>) -> JoinGroupResponse {
    let mut response = JoinGroupResponse::default();
    let (code, answer) = match answer {
        Err(refusal) => (refusal.code, None),
        Ok(answer) => (code_of(&answer.error), Some(answer)),
    };
    response.error_code = code;
    if let Some(answer) = answer {
        response.member_id = str_bytes(answer.member_id.clone());
        if code == errors::NONE {
            response.generation_id = answer.generation;
            response.protocol_name = Some(str_bytes(answer.assignor.clone()));
            if version >= 7 {
                response.protocol_type = Some(str_bytes("consumer"));
            }
        }
    }
    response.generation_id = if code == errors::NONE { response.generation_id } else { -1 };
    if version < 7 && response.protocol_name.is_none() {
        response.protocol_name = Some(str_bytes(""));
    }
    response
}

pub fn sync_group_response(
    request: &SyncGroupRequest,
    version: i16,
    answer: Result<native::SyncGroupResponse, Refusal>,
) -> SyncGroupResponse {
    let mut response = SyncGroupResponse::default();
    match answer {
        Err(refusal) => response.error_code = refusal.code,
        Ok(answer) if answer.error.is_some() => response.error_code = code_of(&answer.error),
        Ok(answer) => response.assignment = encode_assignment(&answer.assignment),
    }
    if version >= 5 && response.error_code == errors::NONE {
        response.protocol_type = Some(str_bytes("consumer"));
        response.protocol_name = request.protocol_name.clone();
    }
    response
}

/// The members a leave names: v0-2 one, v3+ a list.
pub fn leave_group_members(request: &LeaveGroupRequest, version: i16) -> Vec<String> {
    if version >= 3 {
        request.members.iter().map(|m| m.member_id.to_string()).collect()
    } else {
        vec![request.member_id.to_string()]
    }
}

pub fn leave_group_response(
    version: i16,
    answers: Vec<(String, Result<native::LeaveGroupResponse, Refusal>)>,
) -> LeaveGroupResponse {
    let code = |answer: &Result<native::LeaveGroupResponse, Refusal>| match answer {
        Err(refusal) => refusal.code,
        Ok(answer) => code_of(&answer.error),
    };
    let mut response = LeaveGroupResponse::default();
    if version >= 3 {
        response.members = answers
            .iter()
            .map(|(member, answer)| {
                MemberResponse::default().with_member_id(str_bytes(member.clone())).with_error_code(code(answer))
            })
            .collect();
        // The top-level error is for the request as a whole: set when every member failed alike.
        let codes: Vec<i16> = answers.iter().map(|(_, answer)| code(answer)).collect();
        if codes.len() == 1 || codes.windows(2).all(|w| w[0] == w[1]) {
            response.error_code = codes.first().copied().unwrap_or(errors::NONE);
        }
    } else {
        response.error_code = answers.first().map_or(errors::NONE, |(_, answer)| code(answer));
    }
    response
}

pub fn offset_commit_request(request: &OffsetCommitRequest) -> Result<native::OffsetCommitRequest, Refusal> {
    let mut offsets = Vec::new();
    for t in &request.topics {
        for p in &t.partitions {
            let partition = u32::try_from(p.partition_index)
                .map_err(|_| Refusal::new(errors::UNKNOWN_TOPIC_OR_PARTITION, "negative partition"))?;
            offsets.push(native::PartitionOffset { topic: topic(&t.name), partition, offset: p.committed_offset });
        }
    }
    Ok(native::OffsetCommitRequest {
        group: request.group_id.0.to_string(),
        generation: request.generation_id_or_member_epoch,
        member_id: request.member_id.to_string(),
        offsets,
    })
}

/// Keel commits all of a request or none: every partition gets the one answer.
pub fn offset_commit_response(
    request: &OffsetCommitRequest,
    answer: Result<native::OffsetCommitResponse, Refusal>,
) -> OffsetCommitResponse {
    let code = match answer {
        Err(refusal) => refusal.code,
        Ok(answer) => code_of(&answer.error),
    };
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// The committed offsets a fetch asks for (every committed one when it names no topics), from
/// the group's committed offsets; a partition without one answers -1.
pub fn offset_fetch_response(
    request: &OffsetFetchRequest,
    version: i16,
    answer: Result<native::OffsetFetchResponse, Refusal>,
) -> OffsetFetchResponse {
    let (code, committed) = match answer {
        Err(refusal) => (refusal.code, Vec::new()),
        Ok(answer) => (code_of(&answer.error), answer.offsets),
    };
    let offset_of = |name: &str, partition: i32| {
        committed.iter().find(|o| o.topic == name && o.partition as i32 == partition).map_or(-1, |o| o.offset)
    };
    let partition = |index: i32, offset: i64| {
        let entry = OffsetFetchResponsePartition::default()
            .with_partition_index(index)
            .with_committed_offset(offset)
            .with_metadata(Some(str_bytes("")));
        if version < 2 {
            entry.with_error_code(code)
        } else {
            entry
        }
    };
    let topics: Vec<(String, Vec<OffsetFetchResponsePartition>)> = match &request.topics {
        Some(topics) => topics
            .iter()
            .map(|t| {
                let name = topic(&t.name);
                let partitions = t.partition_indexes.iter().map(|p| partition(*p, offset_of(&name, *p))).collect();
                (name, partitions)
            })
            .collect(),
        None => {
            by_topic(committed.iter().map(|o| (o.topic.clone(), partition(o.partition as i32, o.offset))).collect())
        }
    };
    let mut response = OffsetFetchResponse::default().with_topics(
        topics
            .into_iter()
            .map(|(name, partitions)| {
                OffsetFetchResponseTopic::default().with_name(topic_name(&name)).with_partitions(partitions)
            })
            .collect(),
    );
    if version >= 2 {
        response.error_code = code;
    }
    response
}

/// Kafka's name for a native group state.
pub fn group_state(native_state: &str) -> &'static str {
    match native_state {
        "empty" => "Empty",
        "preparing-rebalance" => "PreparingRebalance",
        "completing-rebalance" => "CompletingRebalance",
        "stable" => "Stable",
        _ => "Dead",
    }
}

pub fn list_groups_response(
    request: &ListGroupsRequest,
    version: i16,
    answer: Result<native::ListGroupsResponse, Refusal>,
) -> ListGroupsResponse {
    let answer = match answer {
        Err(refusal) => return ListGroupsResponse::default().with_error_code(refusal.code),
        Ok(answer) if answer.error.is_some() => {
            return ListGroupsResponse::default().with_error_code(code_of(&answer.error))
        }
        Ok(answer) => answer,
    };
    let wanted = |state: &str| {
        request.states_filter.is_empty() || request.states_filter.iter().any(|s| s.as_str().eq_ignore_ascii_case(state))
    };
    let groups = answer
        .groups
        .iter()
        .map(|g| (g, group_state(&g.state)))
        .filter(|(_, state)| wanted(state))
        .map(|(g, state)| {
            let listed = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(g.group.clone())))
                .with_protocol_type(str_bytes("consumer"));
            if version >= 4 {
                listed.with_group_state(str_bytes(state))
            } else {
                listed
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub fn described_group(name: &str, answer: Result<native::DescribeGroupResponse, Refusal>) -> DescribedGroup {
    let group = DescribedGroup::default().with_group_id(GroupId(str_bytes(name)));
    let answer = match answer {
        Err(refusal) => return group.with_error_code(refusal.code),
        // Kafka describes a group it does not know as Dead, without an error.
        Ok(answer) if answer.error.as_ref().is_some_and(|e| e.error_code() == ErrorCode::UnknownGroup) => {
            return group.with_group_state(str_bytes("Dead"))
        }
        Ok(answer) if answer.error.is_some() => return group.with_error_code(code_of(&answer.error)),
        Ok(answer) => answer,
    };
    let state = answer.summary.as_ref().map_or("Dead", |summary| group_state(&summary.state));
    let members = answer
        .members
        .iter()
        .map(|m| {
            DescribedGroupMember::default()
                .with_member_id(str_bytes(m.member_id.clone()))
                .with_client_id(str_bytes(m.client_id.clone()))
                .with_member_metadata(encode_subscription(&m.topics))
                .with_member_assignment(encode_assignment(&m.assignment))
        })
        .collect();
    group
        .with_group_state(str_bytes(state))
        .with_protocol_type(str_bytes("consumer"))
        .with_protocol_data(str_bytes(answer.assignor.clone()))
        .with_members(members)
}

// ---------------------------------------------------------------------------------------------
// A request at a version Keel does not serve

/// The answer to a request Keel decoded but does not serve at its version: `code` on every item it
/// names (or at the top, where the response has no items), built by the same functions as the
/// served answers. The connection goes on; a client that asked at such a version ignored
/// `ApiVersions`, and gets a definite refusal instead of a closed connection.
pub fn refuse_all(request: &Request, version: i16, node_id: u64, code: i16) -> Response {
    let no = || Refusal::new(code, format!("version {version} of this API is not served"));
    match request {
        Request::ApiVersions(_) => Response::ApiVersions(ApiVersionsResponse::default().with_error_code(code)),
        Request::Metadata(r) => {
            let info = native::ErrorInfo::new(ErrorCode::UnsupportedVersion, no().message);
            let mut response = metadata_response(r, version, node_id, Err(info));
            response.topics.iter_mut().for_each(|topic| topic.error_code = code);
            Response::Metadata(response)
        }
        Request::Produce(r) => {
            let parts = r
                .topic_data
                .iter()
                .flat_map(|t| t.partition_data.iter().map(move |p| (topic(&t.name), p.index, Err(no()))));
            Response::Produce(produce_response(version, parts.collect()))
        }
        Request::Fetch(r) => Response::Fetch(fetch_refused(r, version, code)),
        Request::ListOffsets(r) => {
            let parts = r
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(move |p| (topic(&t.name), p.partition_index, Err(no()))));
            Response::ListOffsets(list_offsets_response(parts.collect()))
        }
        Request::CreateTopics(r) => Response::CreateTopics(create_topics_response(
            version,
            r.topics.iter().map(|t| (topic(&t.name), Err(no()))).collect(),
        )),
        Request::DeleteTopics(r) => {
            let names = delete_topic_names(r).into_iter().map(|name| (name.ok(), Err(no()))).collect();
            Response::DeleteTopics(delete_topics_response(version, names))
        }
        Request::InitProducerId(_) => Response::InitProducerId(init_producer_id_response(Err(no()))),
        Request::FindCoordinator(r) => {
            let keys = find_coordinator_keys(r, version).into_iter().map(|(key, _)| (key, Err(no()))).collect();
            Response::FindCoordinator(find_coordinator_response(version, keys))
        }
        Request::JoinGroup(_) => Response::JoinGroup(join_group_response(version, Err(no()))),
        Request::SyncGroup(r) => Response::SyncGroup(sync_group_response(r, version, Err(no()))),
        Request::Heartbeat(_) => Response::Heartbeat(HeartbeatResponse::default().with_error_code(code)),
        Request::LeaveGroup(r) => {
            let members = leave_group_members(r, version).into_iter().map(|member| (member, Err(no()))).collect();
            Response::LeaveGroup(leave_group_response(version, members))
        }
        Request::OffsetCommit(r) => Response::OffsetCommit(offset_commit_response(r, Err(no()))),
        Request::OffsetFetch(r) => Response::OffsetFetch(offset_fetch_response(r, version, Err(no()))),
        Request::ListGroups(r) => Response::ListGroups(list_groups_response(r, version, Err(no()))),
        Request::DescribeGroups(r) => Response::DescribeGroups(
            DescribeGroupsResponse::default()
                .with_groups(r.groups.iter().map(|g| described_group(g.0.as_str(), Err(no()))).collect()),
        ),
    }
}
