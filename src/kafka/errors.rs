//! Keel's error codes as Kafka's (ADR 0026). The match is exhaustive: a new native code does not
//! compile until it has its Kafka code.

use crate::protocol::{ErrorCode, ErrorInfo};

pub const NONE: i16 = 0;
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const LEADER_NOT_AVAILABLE: i16 = 5;
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub const REQUEST_TIMED_OUT: i16 = 7;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const NOT_COORDINATOR: i16 = 16;
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub const NOT_ENOUGH_REPLICAS: i16 = 19;
pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
pub const INVALID_REQUIRED_ACKS: i16 = 21;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub const INVALID_GROUP_ID: i16 = 24;
pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
pub const REBALANCE_IN_PROGRESS: i16 = 27;
pub const INVALID_TIMESTAMP: i16 = 32;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const INVALID_PARTITIONS: i16 = 37;
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
pub const INVALID_CONFIG: i16 = 40;
pub const INVALID_REQUEST: i16 = 42;
pub const POLICY_VIOLATION: i16 = 44;
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
pub const KAFKA_STORAGE_ERROR: i16 = 56;
pub const UNKNOWN_PRODUCER_ID: i16 = 59;
pub const NON_EMPTY_GROUP: i16 = 68;
pub const GROUP_ID_NOT_FOUND: i16 = 69;
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
pub const FENCED_LEADER_EPOCH: i16 = 74;
pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
pub const MEMBER_ID_REQUIRED: i16 = 79;
pub const INVALID_RECORD: i16 = 87;
pub const RESOURCE_NOT_FOUND: i16 = 91;

/// The Kafka error code for a native one.
pub fn kafka_code(code: ErrorCode) -> i16 {
    match code {
        ErrorCode::None => NONE,
        ErrorCode::UnknownTopic | ErrorCode::UnknownPartition => UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode::InvalidRequest
        | ErrorCode::UnknownSubscription
        | ErrorCode::TooManySubscriptions
        | ErrorCode::PeerNotIdentified
        | ErrorCode::UnknownPeer => INVALID_REQUEST,
        ErrorCode::CorruptBatch => CORRUPT_MESSAGE,
        ErrorCode::MessageTooLarge => MESSAGE_TOO_LARGE,
        ErrorCode::TopicAlreadyExists => TOPIC_ALREADY_EXISTS,
        ErrorCode::InvalidTopicName | ErrorCode::InternalTopic => INVALID_TOPIC_EXCEPTION,
        ErrorCode::InvalidPartitions => INVALID_PARTITIONS,
        // Retriable in Kafka; an idempotent producer's retry of an indeterminate write is safe.
        ErrorCode::StorageError | ErrorCode::StorageIndeterminate | ErrorCode::DiskFull => KAFKA_STORAGE_ERROR,
        // Both send the client to refresh its metadata and find the new leader.
        ErrorCode::NotLeader | ErrorCode::NotLeaderAfterAppend | ErrorCode::ShuttingDown => NOT_LEADER_OR_FOLLOWER,
        // A retry of a batch appended but not yet committed: the client retries, and once it is
        // committed the retry gets the original offsets (librdkafka treats a timeout as "possibly
        // persisted", which it is).
        ErrorCode::Timeout | ErrorCode::Busy | ErrorCode::DuplicatePending => REQUEST_TIMED_OUT,
        ErrorCode::OffsetOutOfRange => OFFSET_OUT_OF_RANGE,
        ErrorCode::Internal => UNKNOWN_SERVER_ERROR,
        ErrorCode::InvalidReplication => INVALID_REPLICATION_FACTOR,
        ErrorCode::UnsupportedVersion => UNSUPPORTED_VERSION,
        ErrorCode::InvalidAcks => INVALID_REQUIRED_ACKS,
        ErrorCode::InvalidTimestamp => INVALID_TIMESTAMP,
        ErrorCode::NotEnoughReplicas => NOT_ENOUGH_REPLICAS,
        ErrorCode::NotEnoughReplicasAfterAppend => NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        ErrorCode::FencedLeaderEpoch => FENCED_LEADER_EPOCH,
        ErrorCode::UnknownLeaderEpoch => UNKNOWN_LEADER_EPOCH,
        ErrorCode::LeaderNotReady => LEADER_NOT_AVAILABLE,
        ErrorCode::OutOfOrderSequence => OUT_OF_ORDER_SEQUENCE_NUMBER,
        ErrorCode::ProducerFenced => INVALID_PRODUCER_EPOCH,
        ErrorCode::UnknownProducerId => UNKNOWN_PRODUCER_ID,
        ErrorCode::UnsupportedCompression => UNSUPPORTED_COMPRESSION_TYPE,
        ErrorCode::InvalidConfig => INVALID_CONFIG,
        ErrorCode::NotCoordinator => NOT_COORDINATOR,
        ErrorCode::CoordinatorLoadInProgress => COORDINATOR_LOAD_IN_PROGRESS,
        ErrorCode::CoordinatorNotAvailable => COORDINATOR_NOT_AVAILABLE,
        // A commit of a partition the member's generation does not give it: its view is stale,
        // as after a generation change.
        ErrorCode::IllegalGeneration | ErrorCode::PartitionNotAssigned => ILLEGAL_GENERATION,
        ErrorCode::UnknownMemberId => UNKNOWN_MEMBER_ID,
        ErrorCode::RebalanceInProgress => REBALANCE_IN_PROGRESS,
        ErrorCode::GroupNotEmpty => NON_EMPTY_GROUP,
        // Kafka lets a commit go backwards; Keel refuses it (ADR 0020): the request is refused.
        ErrorCode::OffsetRegression => INVALID_REQUEST,
        ErrorCode::InvalidGroupId => INVALID_GROUP_ID,
        ErrorCode::InvalidSessionTimeout => INVALID_SESSION_TIMEOUT,
        ErrorCode::UnknownGroup => GROUP_ID_NOT_FOUND,
        ErrorCode::MemberIdRequired => MEMBER_ID_REQUIRED,
        ErrorCode::InvalidRecord => INVALID_RECORD,
        ErrorCode::TooManyPartitions => POLICY_VIOLATION,
        ErrorCode::UnknownUser => RESOURCE_NOT_FOUND,
    }
}

/// The Kafka code of a native response's error field (`None`: no error).
pub fn code_of(error: &Option<ErrorInfo>) -> i16 {
    error.as_ref().map_or(NONE, |error| kafka_code(error.error_code()))
}

/// The message of a native response's error field, for the Kafka fields that carry one.
pub fn message_of(error: &Option<ErrorInfo>) -> Option<String> {
    error.as_ref().map(|error| error.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_success_maps_to_none_and_every_code_maps_somewhere_kafka_knows() {
        for raw in 0..=200 {
            let Ok(code) = ErrorCode::try_from(raw) else { continue };
            let kafka = kafka_code(code);
            assert_eq!(kafka == NONE, code == ErrorCode::None, "{code:?}");
            assert!((-1..=133).contains(&kafka), "{code:?} -> {kafka}");
        }
        assert_eq!(kafka_code(ErrorCode::NotLeader), NOT_LEADER_OR_FOLLOWER);
        assert_eq!(kafka_code(ErrorCode::OutOfOrderSequence), OUT_OF_ORDER_SEQUENCE_NUMBER);
    }
}
