//! Keel's native wire protocol: length-prefixed prost frames over TCP.
//!
//! Every frame on the wire is a 4-byte big-endian length followed by one [`Frame`]: a correlation id
//! and a oneof body. Requests and responses share the envelope; a response carries its request's
//! correlation id, so a connection can have many requests in flight and replies may come back in
//! any order. The same listener serves clients and peers.
//!
//! # Peers (ADR 0007)
//! Raft traffic is accepted only on a connection that identified itself as a peer: its first
//! frames carry a [`PeerHello`] naming the sending node, which must be another voter of the
//! metadata group, and the node it means to reach, which must be the receiving node. A `RaftMessage`
//! on any other connection is refused with [`ErrorCode::PeerNotIdentified`]; a hello naming a node
//! that is not another voter is refused with [`ErrorCode::UnknownPeer`]. The identity is claimed,
//! not proven, until TLS authenticates it: the check keeps clients (and a confused or forged
//! client frame) away from Raft, it does not stop a deliberate impostor.
//!
//! The message definitions are written with prost's derive macros instead of a `.proto` file plus a
//! code generator: no `protoc`, no build script, and the field tags below are the schema. The
//! equivalent `.proto` text is in docs/adr/0004-native-protocol.md (peer messages: 0007). Tags are
//! never reused.
//!
//! Limits: a frame is at most [`FRAME_BYTES_MAX`]; decoding untrusted bytes returns an error value
//! and never panics (prost's decoder does not panic on malformed input; the bolero target in
//! tests/decode_fuzz.rs holds it to that).

use bytes::Bytes;
use prost::Message;

use crate::batch::BATCH_BYTES_MAX;

/// Largest frame a peer may send: one maximal batch plus room for the envelope.
pub const FRAME_BYTES_MAX: usize = BATCH_BYTES_MAX + 64 * 1024;
/// Length prefix of every frame.
pub const FRAME_LENGTH_BYTES: usize = 4;

/// The codec every Keel connection uses (clients, the broker, the Raft peer transport): a 4-byte
/// big-endian length, then the frame, at most [`FRAME_BYTES_MAX`] bytes.
pub fn frame_codec() -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .length_field_length(FRAME_LENGTH_BYTES)
        .max_frame_length(FRAME_BYTES_MAX)
        .new_codec()
}
/// Current protocol version; a peer with another version gets `UnsupportedVersion`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Version of the peer protocol (the hello and what may follow it on a peer connection), carried in
/// [`PeerHello`] so that it can change without touching the client protocol's frame version.
pub const PEER_PROTOCOL_VERSION: u32 = 1;

/// Longest a push subscription stays silent (ADR 0021): the broker sends a push, with records or
/// without (a heartbeat), at least this often while the subscription is open and the broker
/// reaches its partition; a subscriber that hears nothing for much longer takes its connection
/// for dead.
pub const PUSH_WAIT_MS: u32 = 5_000;

/// Open push subscriptions one connection may have (`TooManySubscriptions` past it).
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 256;

/// Kafka's ListOffsets conventions for the `timestamp_ms` selector.
pub const LIST_OFFSETS_LATEST: i64 = -1;
pub const LIST_OFFSETS_EARLIEST: i64 = -2;

#[derive(Clone, PartialEq, Message)]
pub struct Frame {
    #[prost(uint64, tag = "1")]
    pub correlation_id: u64,
    #[prost(uint32, tag = "2")]
    pub version: u32,
    #[prost(
        oneof = "Body",
        tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, \
                38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, \
                62, 63, 64, 65, 66, 67"
    )]
    pub body: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    #[prost(message, tag = "10")]
    ProduceRequest(ProduceRequest),
    #[prost(message, tag = "11")]
    ProduceResponse(ProduceResponse),
    #[prost(message, tag = "12")]
    FetchRequest(FetchRequest),
    #[prost(message, tag = "13")]
    FetchResponse(FetchResponse),
    #[prost(message, tag = "14")]
    ListOffsetsRequest(ListOffsetsRequest),
    #[prost(message, tag = "15")]
    ListOffsetsResponse(ListOffsetsResponse),
    #[prost(message, tag = "16")]
    CreateTopicRequest(CreateTopicRequest),
    #[prost(message, tag = "17")]
    CreateTopicResponse(CreateTopicResponse),
    #[prost(message, tag = "18")]
    DeleteTopicRequest(DeleteTopicRequest),
    #[prost(message, tag = "19")]
    DeleteTopicResponse(DeleteTopicResponse),
    #[prost(message, tag = "20")]
    MetadataRequest(MetadataRequest),
    #[prost(message, tag = "21")]
    MetadataResponse(MetadataResponse),
    /// Sent by the server when it cannot decode a request well enough to answer it properly.
    #[prost(message, tag = "22")]
    ErrorResponse(ErrorResponse),
    /// One-way, peer to peer: a raft-rs message for the metadata group. Accepted only on a
    /// connection that identified itself with a `PeerHello`; answered only when refused (with an
    /// `ErrorResponse` carrying the frame's correlation id).
    #[prost(message, tag = "23")]
    RaftMessage(RaftMessage),
    /// Any node answers with the Raft status of every node it knows (voters and registered brokers).
    #[prost(message, tag = "24")]
    ClusterStatusRequest(ClusterStatusRequest),
    #[prost(message, tag = "25")]
    ClusterStatusResponse(ClusterStatusResponse),
    /// Peer to peer, the first request on a connection that will carry Raft traffic.
    #[prost(message, tag = "26")]
    PeerHello(PeerHello),
    #[prost(message, tag = "27")]
    PeerHelloResponse(PeerHelloResponse),
    /// Peer to peer: a follower replica's fetch from its partition leader (ADR 0011). Accepted only
    /// on a connection identified by a `PeerHello`, from the replica it names.
    #[prost(message, tag = "28")]
    ReplicaFetchRequest(ReplicaFetchRequest),
    #[prost(message, tag = "29")]
    ReplicaFetchResponse(ReplicaFetchResponse),
    /// The partition's leader answers with its replication state: high watermark, its own log ends
    /// and each replica's log end and lag (`keel topic describe`).
    #[prost(message, tag = "30")]
    ReplicaStatusRequest(ReplicaStatusRequest),
    #[prost(message, tag = "31")]
    ReplicaStatusResponse(ReplicaStatusResponse),
    /// Any broker hands out a new idempotent producer identity: a producer id never given before
    /// (from the blocks the metadata group allocates) and epoch 0 (ADR 0015).
    #[prost(message, tag = "32")]
    InitProducerIdRequest(InitProducerIdRequest),
    #[prost(message, tag = "33")]
    InitProducerIdResponse(InitProducerIdResponse),
    /// Changes a topic's log settings through the metadata group (ADR 0019).
    #[prost(message, tag = "34")]
    AlterTopicRequest(AlterTopicRequest),
    #[prost(message, tag = "35")]
    AlterTopicResponse(AlterTopicResponse),
    /// Consumer groups (ADR 0020). Any broker names a group's coordinator: the leader of the
    /// `__consumer_offsets` partition the group id hashes to (creating that topic on first use).
    #[prost(message, tag = "36")]
    FindCoordinatorRequest(FindCoordinatorRequest),
    #[prost(message, tag = "37")]
    FindCoordinatorResponse(FindCoordinatorResponse),
    /// The rest go to the group's coordinator; any other broker answers `NotCoordinator`.
    #[prost(message, tag = "38")]
    JoinGroupRequest(JoinGroupRequest),
    #[prost(message, tag = "39")]
    JoinGroupResponse(JoinGroupResponse),
    #[prost(message, tag = "40")]
    SyncGroupRequest(SyncGroupRequest),
    #[prost(message, tag = "41")]
    SyncGroupResponse(SyncGroupResponse),
    #[prost(message, tag = "42")]
    HeartbeatRequest(HeartbeatRequest),
    #[prost(message, tag = "43")]
    HeartbeatResponse(HeartbeatResponse),
    #[prost(message, tag = "44")]
    LeaveGroupRequest(LeaveGroupRequest),
    #[prost(message, tag = "45")]
    LeaveGroupResponse(LeaveGroupResponse),
    #[prost(message, tag = "46")]
    OffsetCommitRequest(OffsetCommitRequest),
    #[prost(message, tag = "47")]
    OffsetCommitResponse(OffsetCommitResponse),
    #[prost(message, tag = "48")]
    OffsetFetchRequest(OffsetFetchRequest),
    #[prost(message, tag = "49")]
    OffsetFetchResponse(OffsetFetchResponse),
    /// Moves an empty group's committed offsets anywhere, backwards included (`keel group
    /// reset-offsets`); refused with `GroupNotEmpty` while the group has members.
    #[prost(message, tag = "50")]
    ResetOffsetsRequest(ResetOffsetsRequest),
    #[prost(message, tag = "51")]
    ResetOffsetsResponse(ResetOffsetsResponse),
    /// Each broker lists the groups it coordinates; the client asks every broker.
    #[prost(message, tag = "52")]
    ListGroupsRequest(ListGroupsRequest),
    #[prost(message, tag = "53")]
    ListGroupsResponse(ListGroupsResponse),
    #[prost(message, tag = "54")]
    DescribeGroupRequest(DescribeGroupRequest),
    #[prost(message, tag = "55")]
    DescribeGroupResponse(Box<DescribeGroupResponse>),
    /// Opens a push subscription to one partition (ADR 0021). The broker answers with a stream of
    /// [`PushBatch`] frames, all carrying the subscribe request's correlation id, which is also the
    /// subscription's id on this connection; the last one has `end` set.
    #[prost(message, tag = "56")]
    SubscribeRequest(SubscribeRequest),
    #[prost(message, tag = "57")]
    PushBatch(PushBatch),
    /// Grants a subscription more credit.
    #[prost(message, tag = "58")]
    CreditRequest(CreditRequest),
    #[prost(message, tag = "59")]
    CreditResponse(CreditResponse),
    /// Ends a subscription: its stream ends with an `end` frame without error.
    #[prost(message, tag = "60")]
    UnsubscribeRequest(UnsubscribeRequest),
    #[prost(message, tag = "61")]
    UnsubscribeResponse(UnsubscribeResponse),
    /// Creates a user or replaces its SCRAM credential (`keel user create`, ADR 0029).
    #[prost(message, tag = "62")]
    UpsertUserRequest(UpsertUserRequest),
    #[prost(message, tag = "63")]
    UpsertUserResponse(UpsertUserResponse),
    #[prost(message, tag = "64")]
    DeleteUserRequest(DeleteUserRequest),
    #[prost(message, tag = "65")]
    DeleteUserResponse(DeleteUserResponse),
    #[prost(message, tag = "66")]
    ListUsersRequest(ListUsersRequest),
    #[prost(message, tag = "67")]
    ListUsersResponse(ListUsersResponse),
}

impl Body {
    /// The API a request or response belongs to, in snake case (`produce`, `join_group`): the
    /// `api` label of the request metrics.
    pub fn api_name(&self) -> &'static str {
        match self {
            Body::ProduceRequest(_) | Body::ProduceResponse(_) => "produce",
            Body::FetchRequest(_) | Body::FetchResponse(_) => "fetch",
            Body::ListOffsetsRequest(_) | Body::ListOffsetsResponse(_) => "list_offsets",
            Body::CreateTopicRequest(_) | Body::CreateTopicResponse(_) => "create_topic",
            Body::DeleteTopicRequest(_) | Body::DeleteTopicResponse(_) => "delete_topic",
            Body::MetadataRequest(_) | Body::MetadataResponse(_) => "metadata",
            Body::ErrorResponse(_) => "error",
            Body::RaftMessage(_) => "raft_message",
            Body::ClusterStatusRequest(_) | Body::ClusterStatusResponse(_) => "cluster_status",
            Body::PeerHello(_) | Body::PeerHelloResponse(_) => "peer_hello",
            Body::ReplicaFetchRequest(_) | Body::ReplicaFetchResponse(_) => "replica_fetch",
            Body::ReplicaStatusRequest(_) | Body::ReplicaStatusResponse(_) => "replica_status",
            Body::InitProducerIdRequest(_) | Body::InitProducerIdResponse(_) => "init_producer_id",
            Body::AlterTopicRequest(_) | Body::AlterTopicResponse(_) => "alter_topic",
            Body::UpsertUserRequest(_) | Body::UpsertUserResponse(_) => "upsert_user",
            Body::DeleteUserRequest(_) | Body::DeleteUserResponse(_) => "delete_user",
            Body::ListUsersRequest(_) | Body::ListUsersResponse(_) => "list_users",
            Body::FindCoordinatorRequest(_) | Body::FindCoordinatorResponse(_) => "find_coordinator",
            Body::JoinGroupRequest(_) | Body::JoinGroupResponse(_) => "join_group",
            Body::SyncGroupRequest(_) | Body::SyncGroupResponse(_) => "sync_group",
            Body::HeartbeatRequest(_) | Body::HeartbeatResponse(_) => "heartbeat",
            Body::LeaveGroupRequest(_) | Body::LeaveGroupResponse(_) => "leave_group",
            Body::OffsetCommitRequest(_) | Body::OffsetCommitResponse(_) => "offset_commit",
            Body::OffsetFetchRequest(_) | Body::OffsetFetchResponse(_) => "offset_fetch",
            Body::ResetOffsetsRequest(_) | Body::ResetOffsetsResponse(_) => "reset_offsets",
            Body::ListGroupsRequest(_) | Body::ListGroupsResponse(_) => "list_groups",
            Body::DescribeGroupRequest(_) | Body::DescribeGroupResponse(_) => "describe_group",
            Body::SubscribeRequest(_) => "subscribe",
            Body::PushBatch(_) => "push_batch",
            Body::CreditRequest(_) | Body::CreditResponse(_) => "credit",
            Body::UnsubscribeRequest(_) | Body::UnsubscribeResponse(_) => "unsubscribe",
        }
    }

    /// The error a response carries (`None` for a success, and for a request).
    pub fn error(&self) -> Option<&ErrorInfo> {
        match self {
            Body::ProduceResponse(response) => response.error.as_ref(),
            Body::FetchResponse(response) => response.error.as_ref(),
            Body::ListOffsetsResponse(response) => response.error.as_ref(),
            Body::CreateTopicResponse(response) => response.error.as_ref(),
            Body::DeleteTopicResponse(response) => response.error.as_ref(),
            Body::ErrorResponse(response) => response.error.as_ref(),
            Body::PeerHelloResponse(response) => response.error.as_ref(),
            Body::ReplicaFetchResponse(response) => response.error.as_ref(),
            Body::ReplicaStatusResponse(response) => response.error.as_ref(),
            Body::InitProducerIdResponse(response) => response.error.as_ref(),
            Body::AlterTopicResponse(response) => response.error.as_ref(),
            Body::UpsertUserResponse(response) => response.error.as_ref(),
            Body::DeleteUserResponse(response) => response.error.as_ref(),
            Body::ListUsersResponse(response) => response.error.as_ref(),
            Body::FindCoordinatorResponse(response) => response.error.as_ref(),
            Body::JoinGroupResponse(response) => response.error.as_ref(),
            Body::SyncGroupResponse(response) => response.error.as_ref(),
            Body::HeartbeatResponse(response) => response.error.as_ref(),
            Body::LeaveGroupResponse(response) => response.error.as_ref(),
            Body::OffsetCommitResponse(response) => response.error.as_ref(),
            Body::OffsetFetchResponse(response) => response.error.as_ref(),
            Body::ResetOffsetsResponse(response) => response.error.as_ref(),
            Body::ListGroupsResponse(response) => response.error.as_ref(),
            Body::DescribeGroupResponse(response) => response.error.as_ref(),
            Body::PushBatch(response) => response.error.as_ref(),
            Body::CreditResponse(response) => response.error.as_ref(),
            Body::UnsubscribeResponse(response) => response.error.as_ref(),
            _ => None,
        }
    }

    /// The code of [`Body::error`].
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.error().map(ErrorInfo::error_code)
    }
}

impl Frame {
    pub fn new(correlation_id: u64, body: Body) -> Frame {
        Frame { correlation_id, version: PROTOCOL_VERSION, body: Some(body) }
    }

    pub fn encode_to_bytes(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }

    /// Decodes a frame body (without its length prefix). Never panics on untrusted bytes.
    pub fn decode_bytes(bytes: Bytes) -> Result<Frame, prost::DecodeError> {
        Frame::decode(bytes)
    }
}

/// Error codes carried in every response. Numbers are part of the protocol; never reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ErrorCode {
    None = 0,
    UnknownTopic = 1,
    UnknownPartition = 2,
    InvalidRequest = 3,
    CorruptBatch = 4,
    MessageTooLarge = 5,
    TopicAlreadyExists = 6,
    InvalidTopicName = 7,
    InvalidPartitions = 8,
    /// The write definitely did not happen (nothing reached the disk).
    StorageError = 9,
    /// The disk failed while the write was in flight: it may or may not survive. Retrying may
    /// duplicate it, unless the producer is idempotent.
    StorageIndeterminate = 10,
    NotLeader = 11,
    Timeout = 12,
    ShuttingDown = 13,
    OffsetOutOfRange = 14,
    Busy = 15,
    Internal = 16,
    InvalidReplication = 17,
    UnsupportedVersion = 18,
    InvalidAcks = 19,
    InvalidTimestamp = 20,
    /// The partition's disk is full (ENOSPC): the write definitely did not happen, and nothing
    /// acknowledged before was lost. Retry after space is freed.
    DiskFull = 21,
    /// Raft traffic on a connection that has not identified itself as a peer (`PeerHello`).
    PeerNotIdentified = 22,
    /// A peer handshake or Raft message names a node that is not another voter of the metadata
    /// group, is addressed to another node, or claims a sender other than the identified peer.
    UnknownPeer = 23,
    /// `acks=all` with fewer than `min_insync_replicas` in the ISR: definitely not appended.
    NotEnoughReplicas = 24,
    /// Appended on the leader, but the ISR shrank below `min_insync_replicas` before the batch was
    /// committed: the outcome is unknown (it may still be committed, or lost in a failover).
    NotEnoughReplicasAfterAppend = 25,
    /// Appended on the leader, which then lost its leadership before the batch was committed: the
    /// outcome is unknown.
    NotLeaderAfterAppend = 26,
    /// The request carried an older leader epoch than the replica's (KIP-320): refresh metadata.
    FencedLeaderEpoch = 27,
    /// The request carried a newer leader epoch than the replica knows: it has not caught up yet.
    UnknownLeaderEpoch = 28,
    /// A new partition leader has not yet confirmed the high watermark its predecessors reached, so
    /// it cannot answer a consumer without the high watermark seeming to go back: retry shortly.
    LeaderNotReady = 29,
    /// An idempotent producer's batch whose sequence is not the next one the partition expects (an
    /// earlier batch has not arrived, or was lost): not appended. Retried until the earlier batches
    /// land; a producer whose oldest unanswered batch gets it starts a new epoch.
    OutOfOrderSequence = 30,
    /// An idempotent producer's batch carries an older producer epoch than the partition has seen
    /// from that producer: not appended.
    ProducerFenced = 31,
    /// The partition holds no state for this producer (it expired, or its first batch never
    /// arrived) and the batch does not start at sequence 0: not appended. The producer starts a new
    /// epoch at sequence 0 (KIP-360); nothing of it is in this partition, so nothing is duplicated.
    UnknownProducerId = 32,
    /// A retry of a batch this partition already appended, not yet committed (acks=all) or durable
    /// (acks=leader): nothing appended now. Retry: once committed, the retry gets the original offsets.
    DuplicatePending = 33,
    /// A batch whose attributes name a compression codec this broker does not know (Kafka's ids
    /// 0-4 are known): not appended.
    UnsupportedCompression = 34,
    /// A topic setting out of its range (retention, segment size, delete retention) or unknown
    /// (cleanup policy): nothing was changed.
    InvalidConfig = 35,
    /// This broker is not the group's coordinator (any more): find the coordinator again.
    NotCoordinator = 36,
    /// The coordinator is reading its offsets partition after becoming its leader: retry shortly.
    CoordinatorLoadInProgress = 37,
    /// The offsets partition the group maps to has no leader (or the offsets topic is being
    /// created): retry shortly.
    CoordinatorNotAvailable = 38,
    /// The request names another generation than the group's current one: the member was removed
    /// or the group rebalanced; rejoin. A commit with it is refused (nothing committed).
    IllegalGeneration = 39,
    /// The coordinator does not know this member (its session expired, or it left): rejoin with
    /// no member id.
    UnknownMemberId = 40,
    /// The group is rebalancing: commit what was consumed (still allowed in this generation), then
    /// rejoin.
    RebalanceInProgress = 41,
    /// Offsets of a group with members cannot be reset: stop its consumers first.
    GroupNotEmpty = 42,
    /// A commit below the group's committed offset for a partition: refused, committed offsets
    /// never go back except by an explicit reset.
    OffsetRegression = 43,
    /// A member committed a partition its generation's assignment does not give it.
    PartitionNotAssigned = 44,
    /// An empty or overlong group id, or one with a control character.
    InvalidGroupId = 45,
    /// A session timeout outside the coordinator's bounds.
    InvalidSessionTimeout = 46,
    /// No such group (it has no members, generation or committed offsets).
    UnknownGroup = 47,
    /// Clients cannot create, alter, delete or produce to an internal topic (`__consumer_offsets`).
    InternalTopic = 48,
    /// A join without a member id: the response's `member_id` names the member; join again with it
    /// (KIP-394), and the member exists from then on.
    MemberIdRequired = 49,
    /// A credit grant or unsubscribe names no open subscription of this connection (it ended, or
    /// never existed), or a subscribe reuses the id of one still open.
    UnknownSubscription = 50,
    /// The connection already has as many open subscriptions as a connection may: end one first.
    TooManySubscriptions = 51,
    /// A produced record the topic cannot take: a record without a key on a compacted topic
    /// (`cleanup_policy` compact keeps the latest record per key, so every record needs one). The
    /// batch was not appended; sending it again gets the same answer.
    InvalidRecord = 52,
    /// A topic create (or partition increase) that would place more partition replicas on some broker
    /// than its `partitions_max`: nothing was created. Delete topics, add brokers or raise the limit.
    TooManyPartitions = 53,
    /// `keel user delete` of a name no user has (ADR 0029).
    UnknownUser = 54,
}

impl ErrorCode {
    /// True when the outcome of a write with this error is unknown.
    pub fn is_indeterminate(self) -> bool {
        matches!(
            self,
            ErrorCode::StorageIndeterminate
                | ErrorCode::Timeout
                | ErrorCode::NotEnoughReplicasAfterAppend
                | ErrorCode::NotLeaderAfterAppend
        )
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct ErrorInfo {
    #[prost(enumeration = "ErrorCode", tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

impl ErrorInfo {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorInfo {
        ErrorInfo { code: code as i32, message: message.into() }
    }

    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::try_from(self.code).unwrap_or(ErrorCode::Internal)
    }
}

/// How many acknowledgements a produce waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prost::Enumeration, serde::Serialize, serde::Deserialize)]
#[repr(i32)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    /// Durable on the in-sync replicas (fsynced unless the broker runs `fsync = "never"`). Default.
    All = 0,
    /// Appended by the leader, not yet durable.
    Leader = 1,
    /// No reply is waited for by the client; the server still answers so the connection stays in step.
    None = 2,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProduceRequest {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(uint32, tag = "2")]
    pub partition: u32,
    #[prost(enumeration = "Acks", tag = "3")]
    pub acks: i32,
    /// Exactly one RecordBatch v2 (see `batch`).
    #[prost(bytes = "bytes", tag = "4")]
    pub batch: Bytes,
    #[prost(uint32, tag = "5")]
    pub timeout_ms: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct InitProducerIdRequest {}

#[derive(Clone, PartialEq, Message)]
pub struct InitProducerIdResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    #[prost(int64, tag = "2")]
    pub producer_id: i64,
    #[prost(int32, tag = "3")]
    pub producer_epoch: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProduceResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    #[prost(int64, tag = "2")]
    pub base_offset: i64,
    #[prost(int64, tag = "3")]
    pub log_start_offset: i64,
}

/// The limit fields keep Kafka's FetchRequest names (`max_bytes`, `max_wait_ms`, `min_bytes`), as
/// the schema in ADR 0004 does; Keel's own code names limits units-last (`bytes_max`).
#[derive(Clone, PartialEq, Message)]
pub struct FetchRequest {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(uint32, tag = "2")]
    pub partition: u32,
    #[prost(int64, tag = "3")]
    pub offset: i64,
    /// Soft limit: at least one whole batch is returned even when it is larger.
    #[prost(uint32, tag = "4")]
    pub max_bytes: u32,
    /// Long poll: wait up to this long for `min_bytes` to become available.
    #[prost(uint32, tag = "5")]
    pub max_wait_ms: u32,
    #[prost(uint32, tag = "6")]
    pub min_bytes: u32,
    /// The partition's leader epoch as the client's metadata named it (KIP-320), or none to skip the
    /// check. The replica answers `FencedLeaderEpoch` (27) if this is older than its own epoch (the
    /// client's metadata is stale: refresh it) and `UnknownLeaderEpoch` (28) if newer (the replica
    /// has not caught up with the leader change yet: back off and retry).
    #[prost(int32, optional, tag = "7")]
    pub leader_epoch: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct FetchResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    /// Offsets below this are committed and readable.
    #[prost(int64, tag = "2")]
    pub high_watermark: i64,
    #[prost(int64, tag = "3")]
    pub log_start_offset: i64,
    /// Zero or more whole batches, concatenated, exactly as stored.
    #[prost(bytes = "bytes", tag = "4")]
    pub records: Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub struct ListOffsetsRequest {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(uint32, tag = "2")]
    pub partition: u32,
    /// `LIST_OFFSETS_LATEST`, `LIST_OFFSETS_EARLIEST`, or a timestamp in ms: the first offset
    /// whose timestamp is at or after it.
    #[prost(int64, tag = "3")]
    pub timestamp_ms: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ListOffsetsResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    /// -1 when no record has a timestamp at or after the one asked for.
    #[prost(int64, tag = "2")]
    pub offset: i64,
    #[prost(int64, tag = "3")]
    pub timestamp_ms: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct CreateTopicRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint32, tag = "2")]
    pub partitions: u32,
    #[prost(uint32, tag = "3")]
    pub replication: u32,
    /// Absent: `min(2, replication)`. Must be in `1..=replication` (else `InvalidReplication`).
    #[prost(uint32, optional, tag = "4")]
    pub min_insync_replicas: Option<u32>,
    /// Elect a replica outside the ISR when no ISR member can lead (loses acknowledged records).
    #[prost(bool, tag = "5")]
    pub unclean_leader_election: bool,
    /// The topic's log settings; absent ones get the defaults (`InvalidConfig` when out of range).
    /// Boxed: it would make this the largest request of [`Body`].
    #[prost(message, optional, boxed, tag = "6")]
    pub log: Option<Box<LogSettingsInfo>>,
}

/// A topic's retention, segment size and cleanup policy (ADR 0019). In a request an absent field
/// leaves the setting as it is (or at its default); in `TopicInfo` every field is present (from a
/// broker that predates a field, that field is absent).
#[derive(Clone, PartialEq, Eq, Message)]
pub struct LogSettingsInfo {
    /// Delete a sealed segment once its newest record is older than this; -1: keep forever.
    #[prost(int64, optional, tag = "1")]
    pub retention_ms: Option<i64>,
    /// Delete the oldest sealed segments while the log is larger than this; -1: no limit.
    #[prost(int64, optional, tag = "2")]
    pub retention_bytes: Option<i64>,
    /// Roll segments at this size; 0 in `TopicInfo`: the broker's `segment_bytes_max`.
    #[prost(uint64, optional, tag = "3")]
    pub segment_bytes: Option<u64>,
    /// Kafka's `cleanup.policy`: "delete" (only retention removes records; the default) or
    /// "compact" (sealed segments keep the latest record of each key; every produced record needs
    /// a key, `InvalidRecord` otherwise). Anything else is refused with `InvalidConfig`.
    #[prost(string, optional, tag = "4")]
    pub cleanup_policy: Option<String>,
    /// Kafka's `delete.retention.ms`: how long a tombstone (a record with a null value) of a
    /// compacted topic is kept after it was written before compaction may remove it; at least 0
    /// (default 86400000, a day).
    #[prost(int64, optional, tag = "5")]
    pub delete_retention_ms: Option<i64>,
}

/// A user's SCRAM-SHA-256 credential, derived by the client from the password (which is never sent).
#[derive(Clone, PartialEq, Message)]
pub struct UpsertUserRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub salt: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub iterations: u32,
    #[prost(bytes = "vec", tag = "4")]
    pub stored_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub server_key: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct UpsertUserResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeleteUserRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeleteUserResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ListUsersRequest {}

/// One user as `keel user list` shows it: never its keys or salt.
#[derive(Clone, PartialEq, Message)]
pub struct UserInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub mechanism: String,
    #[prost(uint32, tag = "3")]
    pub iterations: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct ListUsersResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    #[prost(message, repeated, tag = "2")]
    pub users: Vec<UserInfo>,
}

/// Changes a topic's log settings (`keel topic alter`).
#[derive(Clone, PartialEq, Message)]
pub struct AlterTopicRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub log: Option<LogSettingsInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AlterTopicResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CreateTopicResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeleteTopicRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeleteTopicResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetadataRequest {
    /// Empty means every topic.
    #[prost(string, repeated, tag = "1")]
    pub topics: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetadataResponse {
    #[prost(message, repeated, tag = "1")]
    pub brokers: Vec<BrokerInfo>,
    #[prost(message, repeated, tag = "2")]
    pub topics: Vec<TopicInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct BrokerInfo {
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
    #[prost(string, tag = "2")]
    pub addr: String,
    /// The broker's Kafka listener (`host:port`, ADR 0026); empty when it has none.
    #[prost(string, tag = "3")]
    pub kafka_addr: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct TopicInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub error: Option<ErrorInfo>,
    #[prost(message, repeated, tag = "3")]
    pub partitions: Vec<PartitionInfo>,
    /// 0 from a broker that predates the field.
    #[prost(uint32, tag = "4")]
    pub min_insync_replicas: u32,
    #[prost(bool, tag = "5")]
    pub unclean_leader_election: bool,
    /// Absent from a broker that predates log settings.
    #[prost(message, optional, tag = "6")]
    pub log: Option<LogSettingsInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PartitionInfo {
    #[prost(uint32, tag = "1")]
    pub partition: u32,
    #[prost(uint64, tag = "2")]
    pub leader: u64,
    #[prost(uint64, repeated, tag = "3")]
    pub replicas: Vec<u64>,
    #[prost(uint64, repeated, tag = "4")]
    pub isr: Vec<u64>,
    #[prost(int32, tag = "5")]
    pub leader_epoch: i32,
    /// Bumps on every leader or ISR change.
    #[prost(int32, tag = "6")]
    pub partition_epoch: i32,
    /// Unclean elections this partition has had (each may have lost acknowledged records).
    #[prost(uint64, tag = "7")]
    pub unclean_elections: u64,
    /// Eligible leader replicas (KIP-966): out of an ISR that fell below min ISR, holding every
    /// committed offset; elected when no ISR member can lead.
    #[prost(uint64, repeated, tag = "8")]
    pub elr: Vec<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RaftMessage {
    #[prost(uint64, tag = "1")]
    pub from: u64,
    #[prost(uint64, tag = "2")]
    pub to: u64,
    /// raft-rs's `eraftpb::Message`, protobuf-encoded.
    #[prost(bytes = "bytes", tag = "3")]
    pub message: Bytes,
}

/// A follower's fetch (`partition::replica::FetchRequest` on the wire).
#[derive(Clone, PartialEq, Message)]
pub struct ReplicaFetchRequest {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(uint32, tag = "2")]
    pub partition: u32,
    /// Echoed in the response.
    #[prost(uint64, tag = "3")]
    pub fetch_id: u64,
    /// The fetching replica; must be the peer the connection identified as.
    #[prost(uint64, tag = "4")]
    pub replica: u64,
    /// The leader epoch the follower believes current.
    #[prost(int32, tag = "5")]
    pub leader_epoch: i32,
    /// The follower's log end: the next offset it wants.
    #[prost(int64, tag = "6")]
    pub fetch_offset: i64,
    /// The epoch of the follower's last batch; absent for an empty log.
    #[prost(int32, optional, tag = "7")]
    pub last_fetched_epoch: Option<i32>,
    /// Everything below this is fsynced on the follower.
    #[prost(int64, tag = "8")]
    pub durable_end: i64,
    #[prost(uint32, tag = "9")]
    pub max_bytes: u32,
    #[prost(uint32, tag = "10")]
    pub max_wait_ms: u32,
}

/// Where the follower's log diverges from the leader's (KIP-320): the leader's largest epoch `<=`
/// the follower's last fetched epoch (absent: none) and where it ends on the leader.
#[derive(Clone, PartialEq, Message)]
pub struct DivergingEpoch {
    #[prost(int32, optional, tag = "1")]
    pub epoch: Option<i32>,
    #[prost(int64, tag = "2")]
    pub end_offset: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ReplicaFetchResponse {
    /// Set when the fetch failed (this node is not the leader, a stale or unknown epoch, storage).
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    #[prost(uint64, tag = "2")]
    pub fetch_id: u64,
    /// The leader's epoch when it answered.
    #[prost(int32, tag = "3")]
    pub leader_epoch: i32,
    #[prost(int64, tag = "4")]
    pub high_watermark: i64,
    /// Set when the follower must truncate before fetching again; `records` is then empty.
    #[prost(message, optional, tag = "5")]
    pub diverging: Option<DivergingEpoch>,
    /// Zero or more whole batches from the fetch offset, concatenated, exactly as stored.
    #[prost(bytes = "bytes", tag = "6")]
    pub records: Bytes,
    /// The leader's log start (retention moves it; ADR 0019). 0 from an older leader, whose logs
    /// all start there.
    #[prost(int64, tag = "7")]
    pub log_start_offset: i64,
}

/// Asks a partition's leader how its replicas are doing. Answered only by the leader: another
/// broker (or a broker that has not taken up the leadership yet) answers `NotLeader`; an unknown
/// topic or partition `UnknownTopic` / `UnknownPartition`.
#[derive(Clone, PartialEq, Message)]
pub struct ReplicaStatusRequest {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(uint32, tag = "2")]
    pub partition: u32,
    /// The leader epoch the client's metadata named, or none to skip the check; checked as
    /// [`FetchRequest::leader_epoch`] is (`FencedLeaderEpoch` if older, `UnknownLeaderEpoch` if newer).
    #[prost(int32, optional, tag = "3")]
    pub leader_epoch: Option<i32>,
}

/// A partition leader's replication state, as it was when the partition's actor answered. Small:
/// one entry per replica, and a partition has at most `meta::state::REPLICATION_FACTOR_MAX` of them.
#[derive(Clone, PartialEq, Message)]
pub struct ReplicaStatusResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    /// The node that answered: the leader.
    #[prost(uint64, tag = "2")]
    pub leader: u64,
    #[prost(int32, tag = "3")]
    pub leader_epoch: i32,
    /// Offsets below this are committed and readable by consumers.
    #[prost(int64, tag = "4")]
    pub high_watermark: i64,
    #[prost(int64, tag = "5")]
    pub log_start_offset: i64,
    /// The leader's log end: the offset its next append gets.
    #[prost(int64, tag = "6")]
    pub log_end_offset: i64,
    /// Everything below this is fsynced on the leader.
    #[prost(int64, tag = "7")]
    pub durable_end_offset: i64,
    /// Every replica of the partition, in the partition's replica order, the leader included.
    #[prost(message, repeated, tag = "8")]
    pub replicas: Vec<ReplicaLogInfo>,
    /// The leader's storage failed and is being recovered: the offsets are its last known ones.
    #[prost(bool, tag = "9")]
    pub storage_failed: bool,
    /// The bytes of the leader's log segments (batches as stored; no index files).
    #[prost(uint64, tag = "10")]
    pub log_size_bytes: u64,
}

/// One replica as its partition's leader sees it.
#[derive(Clone, PartialEq, Message)]
pub struct ReplicaLogInfo {
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
    /// The replica's log end: for a follower its latest fetch offset in the current leader epoch,
    /// absent if it has not fetched in this epoch; for the leader its own log end.
    #[prost(int64, optional, tag = "2")]
    pub log_end_offset: Option<i64>,
    /// The leader's log end minus `log_end_offset` (never negative); absent with it.
    #[prost(int64, optional, tag = "3")]
    pub lag: Option<i64>,
    /// In the ISR the leader works with (the controller's latest decision it has applied).
    #[prost(bool, tag = "4")]
    pub in_isr: bool,
}

/// A connection's claim to be a peer: the sending node and the node it means to reach. The receiver
/// accepts it when `node_id` is another voter of its metadata group, `to` is the receiver itself and
/// `peer_version` is [`PEER_PROTOCOL_VERSION`]; from then on the connection may carry Raft
/// messages from `node_id` (and only from it). A connection identifies itself at most once.
#[derive(Clone, PartialEq, Message)]
pub struct PeerHello {
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
    #[prost(uint64, tag = "2")]
    pub to: u64,
    #[prost(uint32, tag = "3")]
    pub peer_version: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct PeerHelloResponse {
    /// `None`: the connection is now a peer connection of `node_id`.
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    /// The node that answered.
    #[prost(uint64, tag = "2")]
    pub node_id: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ClusterStatusRequest {
    /// True: the answering node also asks every other node it knows (with `fan_out = false`, a short
    /// timeout, concurrently) and reports the ones that do not answer as unreachable. False: only
    /// the answering node's own entry is filled in from live state.
    #[prost(bool, tag = "1")]
    pub fan_out: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct ClusterStatusResponse {
    /// One entry per node, sorted by node id: the metadata group's voters (from the answering
    /// node's configuration) and the brokers registered in the metadata.
    #[prost(message, repeated, tag = "1")]
    pub nodes: Vec<NodeStatusInfo>,
    /// The node that answered.
    #[prost(uint64, tag = "2")]
    pub answered_by: u64,
    /// Partitions without a leader or with an ISR smaller than their replicas, from the answering
    /// node's applied metadata, sorted by topic and partition; at most
    /// [`STATUS_PARTITIONS_MAX`] of them.
    #[prost(message, repeated, tag = "3")]
    pub unhealthy_partitions: Vec<PartitionHealthInfo>,
    /// Unhealthy partitions left out of `unhealthy_partitions` by the limit.
    #[prost(uint64, tag = "4")]
    pub unhealthy_partitions_omitted: u64,
}

/// Most unhealthy partitions one `ClusterStatusResponse` lists.
pub const STATUS_PARTITIONS_MAX: usize = 1000;

/// A partition that is offline (no leader) or under-replicated (ISR smaller than its replicas).
#[derive(Clone, PartialEq, Message)]
pub struct PartitionHealthInfo {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(uint32, tag = "2")]
    pub partition: u32,
    /// 0: none (offline).
    #[prost(uint64, tag = "3")]
    pub leader: u64,
    #[prost(int32, tag = "4")]
    pub leader_epoch: i32,
    #[prost(int32, tag = "5")]
    pub partition_epoch: i32,
    #[prost(uint64, repeated, tag = "6")]
    pub replicas: Vec<u64>,
    #[prost(uint64, repeated, tag = "7")]
    pub isr: Vec<u64>,
    #[prost(uint32, tag = "8")]
    pub min_insync_replicas: u32,
    #[prost(bool, tag = "9")]
    pub offline: bool,
    #[prost(bool, tag = "10")]
    pub under_replicated: bool,
}

/// One node's Raft status as it reported it (or, when `reachable` is false, only what the answering
/// node knows about it).
#[derive(Clone, PartialEq, Message)]
pub struct NodeStatusInfo {
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
    #[prost(string, tag = "2")]
    pub addr: String,
    #[prost(bool, tag = "3")]
    pub reachable: bool,
    /// The Raft role as the node names it ("leader", "follower", "candidate", ...); empty if unknown.
    #[prost(string, tag = "4")]
    pub role: String,
    #[prost(uint64, tag = "5")]
    pub term: u64,
    /// The Raft leader this node knows of; 0 for none.
    #[prost(uint64, tag = "6")]
    pub leader_id: u64,
    #[prost(uint64, tag = "7")]
    pub commit_index: u64,
    #[prost(uint64, tag = "8")]
    pub applied_index: u64,
    /// Hash of the applied metadata state: equal on nodes that applied the same entries.
    #[prost(uint64, tag = "9")]
    pub state_hash: u64,
    /// A voter of the metadata Raft group (per the answering node's configuration).
    #[prost(bool, tag = "10")]
    pub voter: bool,
    /// Registered as a broker in the metadata.
    #[prost(bool, tag = "11")]
    pub registered: bool,
    /// Fenced in the metadata (missed its heartbeats).
    #[prost(bool, tag = "12")]
    pub fenced: bool,
    /// Why the node could not be asked, when `reachable` is false.
    #[prost(string, tag = "13")]
    pub error: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ErrorResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
}

// Consumer groups (ADR 0020). Generations are `int32` (Kafka's), -1 for "no generation" (a reset or
// a commit by a consumer outside any group, allowed only while the group has no members).

#[derive(Clone, PartialEq, Message)]
pub struct FindCoordinatorRequest {
    #[prost(string, tag = "1")]
    pub group: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct FindCoordinatorResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    #[prost(uint64, tag = "2")]
    pub node_id: u64,
    /// The coordinator's client address (`host:port`).
    #[prost(string, tag = "3")]
    pub addr: String,
    /// The `__consumer_offsets` partition that holds the group.
    #[prost(uint32, tag = "4")]
    pub partition: u32,
    /// The coordinator's Kafka listener (ADR 0026); empty when it has none.
    #[prost(string, tag = "5")]
    pub kafka_addr: String,
}

/// A topic and some of its partitions (an assignment).
#[derive(Clone, PartialEq, Eq, Message)]
pub struct TopicPartitions {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(uint32, repeated, tag = "2")]
    pub partitions: Vec<u32>,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct PartitionOffset {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(uint32, tag = "2")]
    pub partition: u32,
    #[prost(int64, tag = "3")]
    pub offset: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct JoinGroupRequest {
    #[prost(string, tag = "1")]
    pub group: String,
    /// Empty for a new member: the coordinator names it.
    #[prost(string, tag = "2")]
    pub member_id: String,
    #[prost(string, tag = "3")]
    pub client_id: String,
    #[prost(uint32, tag = "4")]
    pub session_timeout_ms: u32,
    #[prost(string, repeated, tag = "5")]
    pub topics: Vec<String>,
    /// Assignors the member supports, preferred first (`range`, `roundrobin`).
    #[prost(string, repeated, tag = "6")]
    pub assignors: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct GroupMemberInfo {
    #[prost(string, tag = "1")]
    pub member_id: String,
    #[prost(string, tag = "2")]
    pub client_id: String,
    #[prost(string, repeated, tag = "3")]
    pub topics: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    pub assignment: Vec<TopicPartitions>,
}

#[derive(Clone, PartialEq, Message)]
pub struct JoinGroupResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    #[prost(int32, tag = "2")]
    pub generation: i32,
    #[prost(string, tag = "3")]
    pub member_id: String,
    #[prost(string, tag = "4")]
    pub leader_id: String,
    #[prost(string, tag = "5")]
    pub assignor: String,
    /// The member's own assignment in this generation (the coordinator assigns; ADR 0020).
    #[prost(message, repeated, tag = "6")]
    pub assignment: Vec<TopicPartitions>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SyncGroupRequest {
    #[prost(string, tag = "1")]
    pub group: String,
    #[prost(int32, tag = "2")]
    pub generation: i32,
    #[prost(string, tag = "3")]
    pub member_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct SyncGroupResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    #[prost(message, repeated, tag = "2")]
    pub assignment: Vec<TopicPartitions>,
}

#[derive(Clone, PartialEq, Message)]
pub struct HeartbeatRequest {
    #[prost(string, tag = "1")]
    pub group: String,
    #[prost(int32, tag = "2")]
    pub generation: i32,
    #[prost(string, tag = "3")]
    pub member_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct HeartbeatResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct LeaveGroupRequest {
    #[prost(string, tag = "1")]
    pub group: String,
    #[prost(string, tag = "2")]
    pub member_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct LeaveGroupResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OffsetCommitRequest {
    #[prost(string, tag = "1")]
    pub group: String,
    #[prost(int32, tag = "2")]
    pub generation: i32,
    #[prost(string, tag = "3")]
    pub member_id: String,
    /// The next offset to consume, per partition. All or none are committed.
    #[prost(message, repeated, tag = "4")]
    pub offsets: Vec<PartitionOffset>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OffsetCommitResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OffsetFetchRequest {
    #[prost(string, tag = "1")]
    pub group: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct OffsetFetchResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    /// Every committed offset of the group (committed on the offsets partition's ISR).
    #[prost(message, repeated, tag = "2")]
    pub offsets: Vec<PartitionOffset>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResetOffsetsRequest {
    #[prost(string, tag = "1")]
    pub group: String,
    #[prost(message, repeated, tag = "2")]
    pub offsets: Vec<PartitionOffset>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResetOffsetsResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ListGroupsRequest {}

#[derive(Clone, PartialEq, Message)]
pub struct GroupSummaryInfo {
    #[prost(string, tag = "1")]
    pub group: String,
    /// `empty`, `preparing-rebalance`, `stable`.
    #[prost(string, tag = "2")]
    pub state: String,
    #[prost(int32, tag = "3")]
    pub generation: i32,
    #[prost(uint32, tag = "4")]
    pub members: u32,
    #[prost(uint64, tag = "5")]
    pub coordinator: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ListGroupsResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    #[prost(message, repeated, tag = "2")]
    pub groups: Vec<GroupSummaryInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DescribeGroupRequest {
    #[prost(string, tag = "1")]
    pub group: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct DescribeGroupResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    #[prost(message, optional, tag = "2")]
    pub summary: Option<GroupSummaryInfo>,
    #[prost(string, tag = "3")]
    pub assignor: String,
    #[prost(message, repeated, tag = "4")]
    pub members: Vec<GroupMemberInfo>,
    #[prost(message, repeated, tag = "5")]
    pub offsets: Vec<PartitionOffset>,
}

/// Opens a push subscription (ADR 0021): from `offset`, the partition's leader pushes batches as
/// they are committed, while the subscription has credit. Both credits must be positive; a push is
/// sent only while both are, and may overshoot either by its last batch (whole batches only, as a
/// fetch's `max_bytes` is soft).
#[derive(Clone, PartialEq, Message)]
pub struct SubscribeRequest {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(uint32, tag = "2")]
    pub partition: u32,
    #[prost(int64, tag = "3")]
    pub offset: i64,
    /// As in [`FetchRequest::leader_epoch`]: checked on every push's read.
    #[prost(int32, optional, tag = "4")]
    pub leader_epoch: Option<i32>,
    /// Bytes of batches the broker may push before it needs more credit.
    #[prost(uint64, tag = "5")]
    pub credit_bytes: u64,
    /// Records the broker may push before it needs more credit.
    #[prost(uint64, tag = "6")]
    pub credit_records: u64,
}

/// One push of a subscription, or its end. Records are whole batches exactly as stored, starting
/// at or before `offset` (the first batch may hold records before it); the next push starts at
/// `next_offset`. The `end` frame carries no records; with an error, the error ended it
/// (`NotLeader`, `FencedLeaderEpoch`, `OffsetOutOfRange`, `ShuttingDown`, ...: resubscribe, as a
/// fetch would be retried), without one, an unsubscribe did.
#[derive(Clone, PartialEq, Message)]
pub struct PushBatch {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
    #[prost(int64, tag = "2")]
    pub high_watermark: i64,
    #[prost(int64, tag = "3")]
    pub log_start_offset: i64,
    /// The position this push was read from.
    #[prost(int64, tag = "4")]
    pub offset: i64,
    /// The position the next push will be read from.
    #[prost(int64, tag = "5")]
    pub next_offset: i64,
    #[prost(bytes = "bytes", tag = "6")]
    pub records: Bytes,
    #[prost(bool, tag = "7")]
    pub end: bool,
}

/// Adds to a subscription's credit. Grants add up; a subscription waiting for credit resumes.
#[derive(Clone, PartialEq, Message)]
pub struct CreditRequest {
    /// The correlation id of the subscribe request.
    #[prost(uint64, tag = "1")]
    pub subscription_id: u64,
    #[prost(uint64, tag = "2")]
    pub bytes: u64,
    #[prost(uint64, tag = "3")]
    pub records: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct CreditResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct UnsubscribeRequest {
    #[prost(uint64, tag = "1")]
    pub subscription_id: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct UnsubscribeResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ErrorInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frame = Frame::new(
            7,
            Body::ProduceRequest(ProduceRequest {
                topic: "t".into(),
                partition: 3,
                acks: Acks::All as i32,
                batch: Bytes::from_static(b"abc"),
                timeout_ms: 1000,
            }),
        );
        let decoded = Frame::decode_bytes(frame.encode_to_bytes()).unwrap();
        assert_eq!(decoded, frame);
    }

    fn replica_status_response() -> ReplicaStatusResponse {
        let replica = |node_id, log_end_offset: Option<i64>, in_isr| ReplicaLogInfo {
            node_id,
            log_end_offset,
            lag: log_end_offset.map(|end| 12 - end),
            in_isr,
        };
        ReplicaStatusResponse {
            error: None,
            leader: 2,
            leader_epoch: 4,
            high_watermark: 9,
            log_start_offset: 0,
            log_end_offset: 12,
            durable_end_offset: 11,
            replicas: vec![replica(1, Some(9), true), replica(2, Some(12), true), replica(3, None, false)],
            storage_failed: false,
            log_size_bytes: 4096,
        }
    }

    #[test]
    fn replica_status_frames_round_trip() {
        for leader_epoch in [None, Some(0), Some(7)] {
            let request = ReplicaStatusRequest { topic: "orders".into(), partition: 2, leader_epoch };
            let frame = Frame::new(8, Body::ReplicaStatusRequest(request));
            assert_eq!(Frame::decode_bytes(frame.encode_to_bytes()).unwrap(), frame);
        }
        let frame = Frame::new(9, Body::ReplicaStatusResponse(replica_status_response()));
        let decoded = Frame::decode_bytes(frame.encode_to_bytes()).unwrap();
        assert_eq!(decoded, frame);
        // An unknown log end stays unknown: it does not come back as offset 0.
        let Some(Body::ReplicaStatusResponse(response)) = decoded.body else { panic!("{decoded:?}") };
        assert_eq!((response.replicas[2].log_end_offset, response.replicas[2].lag), (None, None));
        let error = ReplicaStatusResponse {
            error: Some(ErrorInfo::new(ErrorCode::NotLeader, "broker 1 does not lead orders/2")),
            ..ReplicaStatusResponse::default()
        };
        let frame = Frame::new(10, Body::ReplicaStatusResponse(error));
        assert_eq!(Frame::decode_bytes(frame.encode_to_bytes()).unwrap(), frame);
    }

    #[test]
    fn replica_status_fits_in_a_frame_with_more_replicas_than_allowed() {
        let mut response = replica_status_response();
        // More replicas than any replication factor allows (`meta::state::REPLICATION_FACTOR_MAX`).
        response.replicas = (0..64)
            .map(|node_id| ReplicaLogInfo {
                node_id: u64::MAX - node_id,
                log_end_offset: Some(i64::MAX),
                lag: Some(i64::MAX),
                in_isr: true,
            })
            .collect();
        let frame = Frame::new(u64::MAX, Body::ReplicaStatusResponse(response));
        let len = frame.encode_to_bytes().len();
        // A few KiB, against a frame limit of megabytes.
        assert!(len < 8192, "{len} bytes");
    }

    #[test]
    fn malformed_replica_status_frames_are_errors_not_panics() {
        let bytes = Frame::new(9, Body::ReplicaStatusResponse(replica_status_response())).encode_to_bytes();
        // Every truncation either fails to decode or decodes to some frame; none panics.
        let mut failed = 0;
        for len in 0..bytes.len() {
            failed += usize::from(Frame::decode_bytes(bytes.slice(..len)).is_err());
        }
        assert!(failed > 0, "a truncated response must not always decode");
        // Tag 31 (the response) as a length-delimited field whose length runs past the end.
        let past_the_end = Bytes::from_static(&[0xfa, 0x01, 0x10, 0x08]);
        assert!(Frame::decode_bytes(past_the_end).is_err());
        // Tag 30 (the request) with the wrong wire type (varint instead of length-delimited).
        let wrong_type = Bytes::from_static(&[0xf0, 0x01, 0x05]);
        assert!(Frame::decode_bytes(wrong_type).is_err());
        // A request whose leader epoch (a varint) comes as a length-delimited field.
        let request = ReplicaStatusRequest { topic: String::new(), partition: 0, leader_epoch: None };
        let mut inner = request.encode_to_vec();
        inner.extend_from_slice(&[0x1a, 0x01]); // leader_epoch (tag 3) as length-delimited, 1 byte
        inner.push(0x00);
        let mut frame = vec![0xf2, 0x01, inner.len() as u8];
        frame.extend_from_slice(&inner);
        assert!(Frame::decode_bytes(Bytes::from(frame)).is_err());
    }

    #[test]
    fn unknown_error_codes_map_to_internal() {
        let info = ErrorInfo { code: 9999, message: String::new() };
        assert_eq!(info.error_code(), ErrorCode::Internal);
    }
}
