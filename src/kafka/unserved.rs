//! Answers to Kafka APIs Keel does not serve (ADR 0026). A client that sends one ignored
//! `ApiVersions`, or has a feature configured that Keel lacks (SASL, transactions, ACLs, delegation
//! tokens, ...). Where the API's response has a top-level error code, the answer is that response,
//! empty, with `UNSUPPORTED_VERSION`, in the request's version: a definite refusal, and the
//! connection goes on. The admin APIs whose responses carry errors only per item (configs,
//! partition increases, group and record deletion, leader-epoch lookups) are parsed and every item
//! they name is refused the same way ([`answer_items`]). Any other API (ACL changes, the
//! controllers' and share groups' APIs, ...) has its connection closed.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::errors::UNSUPPORTED_VERSION;

/// The admin APIs answered item by item ([`answer_items`]).
const ITEM_APIS: &[ApiKey] = &[
    ApiKey::DescribeConfigs,
    ApiKey::AlterConfigs,
    ApiKey::IncrementalAlterConfigs,
    ApiKey::CreatePartitions,
    ApiKey::DeleteGroups,
    ApiKey::DeleteRecords,
    ApiKey::OffsetForLeaderEpoch,
];

macro_rules! unserved_apis {
    ($($api:ident => $response:ident;)*) => {
        /// Whether [`answer`] has an answer for `api` at `version`.
        pub fn answers(api: ApiKey, version: i16) -> bool {
            let range = api.valid_versions();
            (matches!(api, $(ApiKey::$api)|*) || ITEM_APIS.contains(&api)) && range.min <= version && version <= range.max
        }

        /// The encoded answer (without the length prefix) to `api` at `version`, whose whole frame
        /// is `frame`: its response with `UNSUPPORTED_VERSION`, or `None` when it has none, that
        /// version cannot carry it, or the frame does not decode.
        pub fn answer(api: ApiKey, version: i16, correlation_id: i32, frame: Bytes) -> Option<Bytes> {
            let mut buf = BytesMut::new();
            let header = ResponseHeader::default().with_correlation_id(correlation_id);
            header.encode(&mut buf, api.response_header_version(version)).ok()?;
            match api {
                $(ApiKey::$api => $response::default().with_error_code(UNSUPPORTED_VERSION).encode(&mut buf, version).ok()?,)*
                _ => answer_items(api, version, frame, &mut buf)?,
            }
            Some(buf.freeze())
        }
    };
}

fn refused() -> Option<StrBytes> {
    Some(StrBytes::from_static_str("Keel does not serve this API"))
}

/// Decodes an item API's request (header and body) and encodes its answer into `buf`: every
/// resource, topic, partition or group it names refused with `UNSUPPORTED_VERSION`.
fn answer_items(api: ApiKey, version: i16, mut frame: Bytes, buf: &mut BytesMut) -> Option<()> {
    RequestHeader::decode(&mut frame, api.request_header_version(version)).ok()?;
    let code = UNSUPPORTED_VERSION;
    match api {
        ApiKey::DescribeConfigs => {
            let request = DescribeConfigsRequest::decode(&mut frame, version).ok()?;
            let results = request.resources.iter().map(|r| {
                describe_configs_response::DescribeConfigsResult::default()
                    .with_error_code(code)
                    .with_error_message(refused())
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name.clone())
            });
            DescribeConfigsResponse::default().with_results(results.collect()).encode(buf, version).ok()
        }
        ApiKey::AlterConfigs => {
            let request = AlterConfigsRequest::decode(&mut frame, version).ok()?;
            let responses = request.resources.iter().map(|r| {
                alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_error_code(code)
                    .with_error_message(refused())
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name.clone())
            });
            AlterConfigsResponse::default().with_responses(responses.collect()).encode(buf, version).ok()
        }
        ApiKey::IncrementalAlterConfigs => {
            let request = IncrementalAlterConfigsRequest::decode(&mut frame, version).ok()?;
            let responses = request.resources.iter().map(|r| {
                incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_error_code(code)
                    .with_error_message(refused())
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name.clone())
            });
            IncrementalAlterConfigsResponse::default().with_responses(responses.collect()).encode(buf, version).ok()
        }
        ApiKey::CreatePartitions => {
            let request = CreatePartitionsRequest::decode(&mut frame, version).ok()?;
            let results = request.topics.iter().map(|t| {
                create_partitions_response::CreatePartitionsTopicResult::default()
                    .with_name(t.name.clone())
                    .with_error_code(code)
                    .with_error_message(refused())
            });
            CreatePartitionsResponse::default().with_results(results.collect()).encode(buf, version).ok()
        }
        _ => answer_more_items(api, version, frame, buf),
    }
}

fn answer_more_items(api: ApiKey, version: i16, mut frame: Bytes, buf: &mut BytesMut) -> Option<()> {
    let code = UNSUPPORTED_VERSION;
    match api {
        ApiKey::DeleteGroups => {
            let request = DeleteGroupsRequest::decode(&mut frame, version).ok()?;
            let results = request.groups_names.iter().map(|g| {
                delete_groups_response::DeletableGroupResult::default().with_group_id(g.clone()).with_error_code(code)
            });
            DeleteGroupsResponse::default().with_results(results.collect()).encode(buf, version).ok()
        }
        ApiKey::DeleteRecords => {
            let request = DeleteRecordsRequest::decode(&mut frame, version).ok()?;
            let topics = request.topics.iter().map(|t| {
                let partitions = t.partitions.iter().map(|p| {
                    delete_records_response::DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index)
                        .with_low_watermark(-1)
                        .with_error_code(code)
                });
                delete_records_response::DeleteRecordsTopicResult::default()
                    .with_name(t.name.clone())
                    .with_partitions(partitions.collect())
            });
            DeleteRecordsResponse::default().with_topics(topics.collect()).encode(buf, version).ok()
        }
        ApiKey::OffsetForLeaderEpoch => {
            let request = OffsetForLeaderEpochRequest::decode(&mut frame, version).ok()?;
            let topics = request.topics.iter().map(|t| {
                let partitions = t.partitions.iter().map(|p| {
                    offset_for_leader_epoch_response::EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_error_code(code)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1)
                });
                offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                    .with_topic(t.topic.clone())
                    .with_partitions(partitions.collect())
            });
            OffsetForLeaderEpochResponse::default().with_topics(topics.collect()).encode(buf, version).ok()
        }
        _ => None,
    }
}

unserved_apis! {
    SaslHandshake => SaslHandshakeResponse;
    SaslAuthenticate => SaslAuthenticateResponse;
    AddPartitionsToTxn => AddPartitionsToTxnResponse;
    AddOffsetsToTxn => AddOffsetsToTxnResponse;
    EndTxn => EndTxnResponse;
    DescribeAcls => DescribeAclsResponse;
    DescribeLogDirs => DescribeLogDirsResponse;
    CreateDelegationToken => CreateDelegationTokenResponse;
    RenewDelegationToken => RenewDelegationTokenResponse;
    ExpireDelegationToken => ExpireDelegationTokenResponse;
    DescribeDelegationToken => DescribeDelegationTokenResponse;
    ElectLeaders => ElectLeadersResponse;
    AlterPartitionReassignments => AlterPartitionReassignmentsResponse;
    ListPartitionReassignments => ListPartitionReassignmentsResponse;
    OffsetDelete => OffsetDeleteResponse;
    DescribeClientQuotas => DescribeClientQuotasResponse;
    DescribeUserScramCredentials => DescribeUserScramCredentialsResponse;
    DescribeCluster => DescribeClusterResponse;
    ListTransactions => ListTransactionsResponse;
    ConsumerGroupHeartbeat => ConsumerGroupHeartbeatResponse;
    GetTelemetrySubscriptions => GetTelemetrySubscriptionsResponse;
    PushTelemetry => PushTelemetryResponse;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, BufMut};

    #[test]
    fn sasl_and_transaction_apis_get_unsupported_version_in_their_own_format() {
        for version in 0..=1 {
            let mut bytes = answer(ApiKey::SaslHandshake, version, 9, Bytes::new()).unwrap();
            assert_eq!(bytes.get_i32(), 9);
            let response = SaslHandshakeResponse::decode(&mut bytes, version).unwrap();
            assert_eq!(response.error_code, UNSUPPORTED_VERSION);
        }
        let mut bytes = answer(ApiKey::EndTxn, 3, 4, Bytes::new()).unwrap();
        assert_eq!(bytes.get_i32(), 4);
        assert_eq!(bytes.get_u8(), 0, "EndTxn v3 is flexible: an empty tagged-field section");
        assert_eq!(EndTxnResponse::decode(&mut bytes, 3).unwrap().error_code, UNSUPPORTED_VERSION);
        assert!(!answers(ApiKey::CreateAcls, 1), "not answered: its connection closes");
        assert!(!answers(ApiKey::SaslHandshake, 7), "no such version");
        assert_eq!(
            answer(ApiKey::DescribeConfigs, 1, 1, Bytes::from_static(b"junk")),
            None,
            "a frame that does not decode"
        );
    }

    /// An item API's whole frame as a client sends it.
    fn frame<R: Encodable>(api: ApiKey, version: i16, request: &R) -> Bytes {
        let mut buf = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(2);
        header.encode(&mut buf, api.request_header_version(version)).unwrap();
        request.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn admin_apis_get_every_item_they_name_refused() {
        let resource = describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("orders"));
        let request = DescribeConfigsRequest::default().with_resources(vec![resource]);
        for version in 1..=4 {
            let mut bytes =
                answer(ApiKey::DescribeConfigs, version, 2, frame(ApiKey::DescribeConfigs, version, &request)).unwrap();
            assert_eq!(bytes.get_i32(), 2);
            if version >= 4 {
                bytes.get_u8();
            }
            let response = DescribeConfigsResponse::decode(&mut bytes, version).unwrap();
            assert_eq!(response.results.len(), 1);
            assert_eq!(
                (response.results[0].error_code, response.results[0].resource_name.as_str()),
                (UNSUPPORTED_VERSION, "orders")
            );
        }
        let groups = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(StrBytes::from_static_str("g"))]);
        let mut bytes = answer(ApiKey::DeleteGroups, 1, 2, frame(ApiKey::DeleteGroups, 1, &groups)).unwrap();
        bytes.get_i32();
        let response = DeleteGroupsResponse::decode(&mut bytes, 1).unwrap();
        assert_eq!(response.results[0].error_code, UNSUPPORTED_VERSION);
        let mut junk = BytesMut::new();
        junk.put_i16(ApiKey::DeleteGroups as i16);
        assert_eq!(answer(ApiKey::DeleteGroups, 1, 2, junk.freeze()), None);
    }

    #[test]
    fn every_listed_api_answers_at_every_version_its_schema_has_or_is_left_to_close() {
        let mut answered = 0;
        for key in 0..100 {
            let Ok(api) = ApiKey::try_from(key) else { continue };
            let range = api.valid_versions();
            for version in range.min..=range.max {
                if answers(api, version) && answer(api, version, 1, Bytes::new()).is_some() {
                    answered += 1;
                }
            }
        }
        assert!(answered >= 40, "{answered} API versions answered");
    }
}
