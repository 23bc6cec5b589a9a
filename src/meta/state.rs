//! The metadata state machine: what every node computes from the committed metadata Raft log.
//!
//! In: committed [`MetaCommand`]s, one per Raft entry, with the entry's index, in log order
//! ([`MetadataState::apply`]). Out: a [`MetaResult`] per command (returned to whoever proposed it) and
//! the queryable state: brokers, topics (with their `min_insync_replicas` and unclean-election
//! setting) and their partitions' replicas, leader, leader epoch, partition epoch and ISR, and the
//! producer-id allocator. Time is an argument carried inside commands (`now_ms`, stamped by
//! the proposer), never read here, so every node that applies the same entries reaches the same state
//! ([`MetadataState::state_hash`] lets the simulation check that).
//!
//! Architecture invariant: this module never touches sockets, files, clocks, threads or an RNG, and
//! iterates only ordered collections (`BTreeMap`), so `apply` is a pure function of (state, command).
//!
//! # Rejections
//! A command that cannot apply (unknown topic, duplicate, invalid name, `replication` > live brokers,
//! stale leader epoch, ...) returns [`MetaResult::Error`] and changes nothing but `applied_index`. The
//! codes: `InvalidTopicName`, `TopicAlreadyExists`, `InvalidPartitions`, `InvalidReplication`,
//! `UnknownTopic`, `UnknownPartition`, `NotLeader` (an `expected_epoch` that is not the partition's
//! current leader epoch: the proposer's view of leadership is stale), and `InvalidRequest` for the rest
//! (unknown broker, a leader outside the ISR, an ISR outside the replicas, limits).
//! `min_insync_replicas` outside `1..=replication` is `InvalidReplication`.
//!
//! A partition leader's [`MetaCommand::ChangeIsr`] is fenced three ways and, when refused, gets
//! [`MetaResult::IsrChangeRejected`] with an [`IsrChangeRejection`] and the partition's current leader,
//! epochs and ISR, so the proposer can tell "I was replaced" (stale leader epoch, not the leader) from
//! "my view is behind" (stale partition epoch: refresh and retry) from "my request was wrong" (invalid
//! ISR). Accepted, it gets [`MetaResult::IsrChanged`] with the new partition epoch to fence its next one.
//! A leader's [`MetaCommand::ResignLeadership`] is fenced by leader and leader epoch alike and refused
//! the same way; accepted, it gets [`MetaResult::LeadershipResigned`].
//!
//! # Elections (ADR 0012)
//! A broker is *eligible* when it is neither fenced (missed heartbeats) nor in controlled shutdown.
//! When a broker stops being eligible (`FenceBroker`, `ControlledShutdown`), the same entry, for every
//! partition: removes it from the ISR unless it is the last member (the ISR then keeps it and the
//! partition waits for it, as KRaft does), and where it led, elects a new leader ([`elect_leader`]):
//! the first replica in replica order that is in the ISR and eligible; with none, and the topic's
//! `unclean_leader_election` on, the first eligible replica, with the ISR reset to it and the
//! partition's `unclean_elections` counted; otherwise no leader (offline). When a broker becomes
//! eligible again (`RegisterBroker`, or a heartbeat that unfences it), every offline partition is
//! offered an election the same way. A broker that registers again (a restart) keeps leading what
//! it leads, each in a new leader epoch: it never leads an epoch it led before it restarted. A leader
//! that resigns (it lost data it had sent to followers) leaves the ISR unless it is the last member,
//! and the rest elect; the last member keeps leading in a new epoch. Every leader change bumps the
//! leader epoch; every leader or ISR change bumps the partition epoch. Elections follow replica
//! order, not log length: the controller does not know the replicas' log ends, and every ISR member
//! holds every committed offset (the high watermark advances only when all of the ISR has the data
//! durably), so any ISR member is a safe leader.
//!
//! # Formats
//! Commands and snapshots travel in one envelope: a 4-byte magic (`KMCM` for a command, `KMSN` for a
//! snapshot), a format version byte, a JSON payload, and the CRC32C (big-endian) of everything before
//! it. Decoding checks length, magic, version and CRC before it parses, and never panics.
//!
//! # Invariants ([`MetadataState::check_invariants`]; after every `apply` in debug and simulation builds, on
//! the topics it changed and the rest of the state)
//! - every partition: replicas non-empty, distinct, registered brokers, as many as the topic's other
//!   partitions; `isr` non-empty, distinct, a subset of the replicas; `leader` (when some) in `isr`
//!   (an unclean election resets the ISR to the new leader, so it holds then too); `leader_epoch >= 0`,
//!   `partition_epoch >= 0`; partition `i` is at index `i`; the topic's `min_insync_replicas` is in
//!   `1..=replication`;
//! - across one `apply` (checked against a copy of the state before it): a partition's leader epoch
//!   and partition epoch never go down; a leader change bumps the leader epoch; a leader or ISR change
//!   bumps the partition epoch; a broker that registered again leads nothing in the epoch it led
//!   before; a resignation bumps the leader epoch and keeps the resigner in the ISR (or leading) only
//!   as the last member or by an unclean election (`validate_command_effect`);
//! - producer-id blocks are handed out from 0 upward, disjoint and increasing: the last block ends at
//!   `next_producer_id`;
//! - `applied_index` only grows (asserted by `apply`); every record's creation index is at most it;
//! - the counts stay within [`TOPICS_MAX`], [`BROKERS_MAX`], [`PARTITIONS_PER_TOPIC_MAX`],
//!   [`REPLICATION_FACTOR_MAX`].
//!
//! # Ordering hazards
//! `apply` must see every committed entry exactly once, in order: a driver that restores a snapshot at
//! index N replays from N + 1. Re-applying an index at or below `applied_index` is a programmer error
//! and panics. Raft entries that carry no command (empty entries, configuration changes) are simply
//! not passed to `apply`; `applied_index` then lags the Raft applied index until the next command.
//!
//! Fencing a broker or its controlled shutdown moves leadership and shrinks ISRs in the same entry
//! (KRaft writes the broker change and the partition changes in one atomic batch), so no reader ever
//! sees a fenced broker still leading, and no separate proposal can race the election. A leader's
//! `ChangeIsr` built before that entry carries the old partition epoch and is refused.
//!
//! # Formats, version 2
//! Version 2 (this build) added the topic's `min_insync_replicas` and `unclean_leader_election`, the
//! partition's `partition_epoch` and `unclean_elections`, the broker's `shutting_down`,
//! `ControlledShutdown`, and the fenced `ChangeIsr` (leader, leader epoch, partition epoch). Version 1
//! still decodes: its commands parse with the new fields at their defaults (a `CreateTopic` without
//! `min_insync_replicas` gets `min(2, replication)`), except its `ChangeIsr`, which carried no proposer
//! and no partition epoch and which no server code ever proposed: it is a typed `Retired` error, so a
//! node skips it like any undecodable entry. A version-1 snapshot restores with `min_insync_replicas =
//! min(2, replication)`, partition epochs 0 and nobody shutting down.
//!
//! # Formats, version 3
//! Commands went to version 3 (snapshots stay at 2: the state's shape did not change) for
//! `ResignLeadership` and for a change of meaning: a version-3 `RegisterBroker` of a broker that
//! registered before bumps the epochs of the partitions it leads. A version-1 or -2 `RegisterBroker`
//! decodes as [`MetaCommand::RegisterBrokerFormat2`] and applies as those builds applied it, so
//! replaying an old log reaches the state the old build reached (the `ChangeIsr`s after it were
//! fenced by the epochs it did not bump). A version-2 build refuses a version-3 entry as an
//! unsupported version (loudly, rather than applying it with the old meaning).
//!
//! # Formats, version 4 (commands) and 3 (snapshots)
//! A topic has log settings ([`LogSettings`]: retention time and size, segment size; ADR 0019),
//! set by `CreateTopic`'s `log` and changed by `AlterTopic`. A new topic without them gets Kafka's
//! defaults (seven days, no size limit); a topic from an older snapshot, and a `CreateTopic` from an
//! older entry, keeps everything (`retention_ms` -1), since the builds that wrote them deleted
//! nothing. An older build refuses a version-4 entry or a version-3 snapshot as an unsupported
//! version rather than dropping the settings.
//!
//! # Formats, version 5 (commands) and 4 (snapshots)
//! [`LogSettings`] gained the cleanup policy ([`CleanupPolicy`]: Kafka's `cleanup.policy`, `delete`
//! or `compact`) and `delete_retention_ms` (Kafka's `delete.retention.ms`: how long a tombstone is
//! kept after it was written before compaction may remove it), in `CreateTopic`'s and
//! `AlterTopic`'s `log` and in the topic records of a snapshot. An older entry or snapshot has
//! neither and decodes with `delete` and [`DELETE_RETENTION_MS_DEFAULT`]: those builds only
//! deleted. An older build would silently ignore the new fields (serde skips unknown ones), so a
//! compacted topic would become a deleting one there; the version bump makes it refuse them as an
//! unsupported version instead.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::ErrorCode;
use crate::types::{LeaderEpoch, NodeId, PartitionEpoch, ProducerId};
use keel_model::fnv::fnv1a_64;

/// Most partitions one topic may have: the state machine's bound. A broker refuses creates past its
/// `partitions_per_topic_max` (1,024 by default), which may be raised up to this (issue 15: one
/// broker serves 10,000 partitions; the simulation runs a topic of 3,000).
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 10_000;
/// Largest replication factor (bounds the cost of assignment: partitions x replicas x brokers).
pub const REPLICATION_FACTOR_MAX: u32 = 16;
/// Most topics in the cluster (the broker's default `topics_max`).
pub const TOPICS_MAX: usize = 10_000;
/// Most registered brokers (brokers are never unregistered, only fenced).
pub const BROKERS_MAX: usize = 1024;
/// Longest broker address.
pub const BROKER_ADDR_BYTES_MAX: usize = 256;
/// Most producer ids one `AllocateProducerIds` may take.
pub const PRODUCER_ID_BLOCK_COUNT_MAX: u64 = 1 << 20;
/// Largest encoded command `decode_command` accepts.
pub const COMMAND_BYTES_MAX: usize = 1 << 20;

const COMMAND_MAGIC: &[u8; 4] = b"KMCM";
/// Version 3 added `ResignLeadership` and the new-incarnation epoch bump of `RegisterBroker`;
/// version 4 the topics' log settings (`CreateTopic`'s `log`, `AlterTopic`); version 5 their
/// cleanup policy and `delete_retention_ms`.
const COMMAND_FORMAT_VERSION: u8 = 5;
const SNAPSHOT_MAGIC: &[u8; 4] = b"KMSN";
/// Version 3 added the topics' log settings; version 4 their cleanup policy and
/// `delete_retention_ms`.
const SNAPSHOT_FORMAT_VERSION: u8 = 4;
/// The oldest command and snapshot format this build still reads (module doc, "Formats, version 2"
/// and "Formats, version 3").
const FORMAT_VERSION_MIN: u8 = 1;
/// Magic, version byte, CRC32C.
const ENVELOPE_BYTES: usize = 4 + 1 + 4;

/// Most users the metadata keeps (ADR 0029).
pub const USERS_MAX: usize = 10_000;
/// Longest user name, in bytes.
pub const USER_NAME_BYTES_MAX: usize = 255;

/// A user name: 1 to 255 bytes of printable characters (no control characters, no spaces at the
/// ends), as SASL names are shown in logs and listings.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > USER_NAME_BYTES_MAX {
        return Err(format!("a user name is 1 to {USER_NAME_BYTES_MAX} bytes, got {}", name.len()));
    }
    if name.chars().any(char::is_control) || name.trim() != name {
        return Err(format!("user name {name:?} has control characters or spaces at an end"));
    }
    Ok(())
}

/// A command carried in a Raft entry. Versioned: the encoding starts with a version so the format can evolve.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MetaCommand {
    /// (Re)registration; marks the broker alive and records its address. A re-registration is a new
    /// incarnation (a restart): every partition the broker leads gets a new leader epoch (and
    /// partition epoch), and it keeps leading. A broker never leads an epoch it led before it
    /// restarted: it lost its page cache, and new batches at offsets its followers hold in the
    /// same epoch would be a divergence the epoch check cannot see (ADR 0012).
    RegisterBroker {
        node_id: NodeId,
        addr: String,
        /// The broker's Kafka listener address (ADR 0026); empty when it has none. Absent from the
        /// encoding when empty, so entries without it read (and hash) as before.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        kafka_addr: String,
        now_ms: i64,
    },
    BrokerHeartbeat {
        node_id: NodeId,
        now_ms: i64,
    },
    /// Proposed by the leader when a broker's heartbeat stamp stood still for longer than the fence
    /// timeout of the leader's own monotonic clock (`meta::fence_watch`); `now_ms` is one past the
    /// stamp it saw. Rejected when a heartbeat stamped at or after `now_ms` was applied since (the
    /// decision is stale): every applied heartbeat moves the stamp past the one before.
    FenceBroker {
        node_id: NodeId,
        now_ms: i64,
    },
    CreateTopic {
        name: String,
        partitions: u32,
        replication: u32,
        /// `None`: `min(2, replication)`. Must be in `1..=replication`.
        #[serde(default)]
        min_insync_replicas: Option<u32>,
        /// Allow electing a replica outside the ISR when no ISR member is eligible (loses acknowledged
        /// records). Off by default.
        #[serde(default)]
        unclean_leader_election: bool,
        /// Retention, segment size and cleanup policy; what is unset gets
        /// [`LogSettings::for_new_topic`]'s value. (A format-1..3 `CreateTopic` decodes with
        /// `retention_ms` -1: those builds kept all; a format-1..4 one with the `delete` policy.)
        #[serde(default)]
        log: LogSettingsChange,
    },
    DeleteTopic {
        name: String,
    },
    /// Changes a topic's log settings (format 4): what is set replaces the topic's value, after the
    /// same checks a create makes (`InvalidConfig`); an unknown topic is `UnknownTopic`.
    AlterTopic {
        name: String,
        log: LogSettingsChange,
    },
    AllocateProducerIds {
        count: u64,
    },
    /// Moves a partition's leadership (`None`: offline). Bumps the leader epoch when the leader changes.
    ChangePartitionLeader {
        topic: String,
        partition: u32,
        leader: Option<NodeId>,
        expected_epoch: LeaderEpoch,
    },
    /// Proposed by a partition's leader to shrink or expand its ISR. Applied only when `leader` is the
    /// partition's leader, `leader_epoch` and `partition_epoch` are the current ones, and `isr` is a
    /// non-empty, duplicate-free subset of the replicas that contains the leader and adds no broker
    /// that is fenced or shutting down; otherwise [`MetaResult::IsrChangeRejected`]. Bumps the
    /// partition epoch (not the leader epoch) when the ISR changes.
    ChangeIsr {
        topic: String,
        partition: u32,
        leader: NodeId,
        leader_epoch: LeaderEpoch,
        partition_epoch: PartitionEpoch,
        isr: Vec<NodeId>,
    },
    /// Proposed by a partition's leader that lost data it had already sent to followers (a storage
    /// failure or corruption cut its log below what it served: `partition::replica`'s `resign`).
    /// Fenced like `ChangeIsr` by the proposing leader and its leader epoch (not by the partition
    /// epoch: an ISR change since the leader's view does not make resigning wrong); refused with
    /// [`MetaResult::IsrChangeRejected`] (`StaleLeaderEpoch` or `NotLeader`). Applied: when the ISR
    /// has other members, the resigner leaves the ISR (the high watermark may cover what it lost, so
    /// it no longer holds every committed offset; it rejoins by catching up) and a leader is elected
    /// among the rest ([`elect_leader`]; offline when none is eligible); when it is the last ISR
    /// member it stays, and keeps leading if it is eligible. Either way the leader epoch and the
    /// partition epoch bump, so the resigner never writes on in the epoch its followers hold
    /// batches of. Answered with [`MetaResult::LeadershipResigned`].
    ResignLeadership {
        topic: String,
        partition: u32,
        leader: NodeId,
        leader_epoch: LeaderEpoch,
    },
    /// Creates a user, or replaces its credential (ADR 0029). The client derived the credential from
    /// the password: no password reaches a broker or the log.
    UpsertUser {
        name: String,
        credential: crate::auth::scram::Credential,
    },
    /// Deletes a user (`UnknownUser` when there is none of that name).
    DeleteUser {
        name: String,
    },
    /// A `RegisterBroker` read from a format-1 or format-2 entry, applied as those builds applied
    /// it: without bumping the leader epochs of the partitions a re-registering broker leads.
    /// Replaying an old log must reach the state the old build reached, since the `ChangeIsr`s and
    /// `ChangePartitionLeader`s after it in the log were fenced by those epochs. Never proposed:
    /// only [`decode_command`] makes it (module doc, "Formats, version 3").
    RegisterBrokerFormat2 {
        node_id: NodeId,
        addr: String,
        now_ms: i64,
    },
    /// Proposed by a broker on graceful shutdown, before it stops: it becomes ineligible (no
    /// leadership, no ISR membership, no new replicas) and leadership of its partitions moves in this
    /// entry. `registered_index` is the incarnation that asks (its `RegisterBroker` index): a request
    /// from an earlier incarnation, committed after the broker registered again, is refused. Cleared by
    /// the next `RegisterBroker`.
    ControlledShutdown {
        node_id: NodeId,
        registered_index: u64,
    },
}

/// What applying a command produced, for whoever proposed it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MetaResult {
    Ok,
    TopicCreated {
        assignment: Vec<PartitionAssignment>,
    },
    /// The block `[first, first + count)`, never handed out before and never again.
    ProducerIds {
        first: ProducerId,
        count: u64,
    },
    Error {
        #[serde(with = "error_code_as_i32")]
        code: ErrorCode,
        message: String,
    },
    /// A `ChangeIsr` applied (or asked for the ISR the partition already has): the partition's state
    /// now. The leader fences its next `ChangeIsr` with this `partition_epoch`.
    IsrChanged {
        leader_epoch: LeaderEpoch,
        partition_epoch: PartitionEpoch,
        isr: Vec<NodeId>,
    },
    /// A `ResignLeadership` applied: the partition's state now. `leader` is another ISR member, or
    /// the resigner itself in a new leader epoch (it was the last ISR member), or `None` (offline: no
    /// other ISR member is eligible; it waits for one).
    LeadershipResigned {
        leader: Option<NodeId>,
        leader_epoch: LeaderEpoch,
        partition_epoch: PartitionEpoch,
        isr: Vec<NodeId>,
    },
    /// A `ChangeIsr` or `ResignLeadership` refused, and why, with the partition's current state (the
    /// proposer's fresh view). A resign is only ever refused as `StaleLeaderEpoch` or `NotLeader`;
    /// a resign sent again after the first one applied is refused so, and the state returned shows
    /// what the first one did.
    IsrChangeRejected {
        reason: IsrChangeRejection,
        leader: Option<NodeId>,
        leader_epoch: LeaderEpoch,
        partition_epoch: PartitionEpoch,
        isr: Vec<NodeId>,
    },
}

/// Why a `ChangeIsr` (or a `ResignLeadership`) was refused. What the proposer does:
/// - `StaleLeaderEpoch`, `NotLeader`: it was replaced; stop acting as leader (no HW advance, no acks)
///   until the metadata it follows makes it leader again;
/// - `StalePartitionEpoch`: the controller changed the partition (an election or an ISR change of
///   its own) since the proposer's view; adopt the returned state and decide again;
/// - `InvalidIsr`: the request itself was wrong (a programmer error in the proposer, or it tried to
///   add an ineligible broker); do not retry it unchanged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IsrChangeRejection {
    /// The command's leader epoch is not the partition's.
    StaleLeaderEpoch,
    /// The leader epoch matches but the proposer is not the partition's leader (or it is offline).
    NotLeader,
    /// The command's partition epoch is not the partition's.
    StalePartitionEpoch,
    InvalidIsr {
        reason: String,
    },
}

impl MetaResult {
    pub fn is_error(&self) -> bool {
        matches!(self, MetaResult::Error { .. })
    }

    /// A refusal: the command changed nothing but `applied_index`.
    pub fn is_rejection(&self) -> bool {
        matches!(self, MetaResult::Error { .. } | MetaResult::IsrChangeRejected { .. })
    }
}

/// `ErrorCode` is a prost enumeration without serde: carry its protocol number.
mod error_code_as_i32 {
    use crate::protocol::ErrorCode;

    pub fn serialize<S: serde::Serializer>(code: &ErrorCode, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i32(*code as i32)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<ErrorCode, D::Error> {
        let number = <i32 as serde::Deserialize>::deserialize(deserializer)?;
        ErrorCode::try_from(number).map_err(|_| serde::de::Error::custom(format!("unknown error code {number}")))
    }
}

/// Where one partition of a new topic lives.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionAssignment {
    pub partition: u32,
    pub replicas: Vec<NodeId>,
    /// The first replica (the preferred leader).
    pub leader: NodeId,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrokerRecord {
    pub node_id: NodeId,
    pub addr: String,
    /// Fenced: missed heartbeats; gets no new replicas. A heartbeat or a re-registration unfences it.
    pub fenced: bool,
    /// The heartbeat stamp: the latest `now_ms` of a registration or heartbeat, and at least one
    /// more than the stamp before, so every applied heartbeat moves it forwards (a broker's wall
    /// clock may step back; the controller's failure detector watches for changes, ADR 0015).
    pub last_heartbeat_ms: i64,
    /// Raft index of the latest registration (the broker's incarnation).
    pub registered_index: u64,
    /// The broker's Kafka listener address (ADR 0026), from its latest registration; empty: none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kafka_addr: String,
    /// In controlled shutdown since a `ControlledShutdown` of this incarnation; cleared by the next
    /// registration (a heartbeat does not clear it: the broker heartbeats until it stops).
    #[serde(default)]
    pub shutting_down: bool,
}

impl BrokerRecord {
    /// Not fenced: listed to clients as a broker they may talk to.
    pub fn is_alive(&self) -> bool {
        !self.fenced
    }

    /// Neither fenced nor shutting down: may lead, join an ISR and get new replicas.
    pub fn is_eligible(&self) -> bool {
        !self.fenced && !self.shutting_down
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicRecord {
    pub name: String,
    /// Partition `i` is at index `i`.
    pub partitions: Vec<PartitionRecord>,
    /// Raft index of the `CreateTopic` (tells a re-created topic from its predecessor).
    pub created_index: u64,
    /// An `acks=all` produce needs at least this many ISR members. In `1..=replication`.
    #[serde(default)]
    pub min_insync_replicas: u32,
    /// Elect a replica outside the ISR when no ISR member is eligible (loses acknowledged records).
    #[serde(default)]
    pub unclean_leader_election: bool,
    /// Retention and segment size (snapshot format 3; older snapshots: keep everything), cleanup
    /// policy (format 4; older snapshots: `delete`).
    #[serde(default)]
    pub log: LogSettings,
}

/// Kafka's `retention.ms` default: seven days.
pub const RETENTION_MS_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;
/// Kafka's `delete.retention.ms` default: one day.
pub const DELETE_RETENTION_MS_DEFAULT: i64 = 24 * 60 * 60 * 1000;
/// The smallest `segment_bytes` a topic may set (Kafka's floor is 14 bytes; this keeps a topic from
/// turning every batch into three files).
pub const SEGMENT_BYTES_MIN: u64 = 1024;
/// The largest `segment_bytes` a topic may set (segment positions are 32-bit in the indexes).
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

/// A topic's cleanup policy, Kafka's `cleanup.policy`: what happens to its old records besides
/// retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    /// Only retention removes records (whole segments, by age and size; ADR 0019).
    #[default]
    Delete,
    /// Compaction keeps the latest record of each key in sealed segments, and removes a tombstone
    /// (a record with a null value) once it is older than `delete_retention_ms`. Every record needs
    /// a key.
    Compact,
}

impl CleanupPolicy {
    /// The policy's name, as Kafka spells it (and as [`CleanupPolicy::parse`] reads it).
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }

    /// Reads `delete` or `compact`; anything else is refused with a message naming both.
    pub fn parse(text: &str) -> Result<CleanupPolicy, String> {
        match text {
            "delete" => Ok(CleanupPolicy::Delete),
            "compact" => Ok(CleanupPolicy::Compact),
            other => Err(format!("unknown cleanup policy {other:?} (expected delete or compact)")),
        }
    }
}

/// A topic's log settings, Kafka's `retention.ms`, `retention.bytes`, `segment.bytes`,
/// `cleanup.policy` and `delete.retention.ms`: every replica deletes whole sealed segments from the
/// start of its log once their newest record is older than `retention_ms`, or while the log is
/// larger than `retention_bytes` (ADR 0019); a compacted topic's sealed segments also keep only the
/// latest record of each key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogSettings {
    /// -1: keep forever; else at least 1.
    pub retention_ms: i64,
    /// -1: no size limit; else at least 1.
    pub retention_bytes: i64,
    /// `None`: the broker's `segment_bytes_max`; else in `SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX`.
    pub segment_bytes: Option<u64>,
    /// Formats before command 5 / snapshot 4: `delete`.
    #[serde(default)]
    pub cleanup_policy: CleanupPolicy,
    /// How long compaction keeps a tombstone after it was written; at least 0. Formats before
    /// command 5 / snapshot 4: [`DELETE_RETENTION_MS_DEFAULT`].
    #[serde(default = "delete_retention_ms_default")]
    pub delete_retention_ms: i64,
}

fn delete_retention_ms_default() -> i64 {
    DELETE_RETENTION_MS_DEFAULT
}

impl Default for LogSettings {
    /// Keep everything: what a topic created before log settings existed keeps.
    fn default() -> LogSettings {
        LogSettings {
            retention_ms: -1,
            retention_bytes: -1,
            segment_bytes: None,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: DELETE_RETENTION_MS_DEFAULT,
        }
    }
}

impl LogSettings {
    /// A new topic's settings: Kafka's defaults (seven days, no size limit, the broker's segment
    /// size, `delete`, tombstones kept a day) with what `change` sets; a compacted topic has no time
    /// limit unless `change` sets one.
    pub fn for_new_topic(change: &LogSettingsChange) -> LogSettings {
        // A compacted topic keeps the latest record of each key for good unless a time limit is
        // asked for (Kafka's `compact` without `delete`).
        let compacted = change.cleanup_policy == Some(CleanupPolicy::Compact);
        let retention_ms = if compacted { -1 } else { RETENTION_MS_DEFAULT };
        let defaults = LogSettings { retention_ms, ..LogSettings::default() };
        defaults.with(change)
    }

    /// These settings with what `change` sets replaced.
    pub fn with(self, change: &LogSettingsChange) -> LogSettings {
        LogSettings {
            retention_ms: change.retention_ms.unwrap_or(self.retention_ms),
            retention_bytes: change.retention_bytes.unwrap_or(self.retention_bytes),
            segment_bytes: change.segment_bytes.or(self.segment_bytes),
            cleanup_policy: change.cleanup_policy.unwrap_or(self.cleanup_policy),
            delete_retention_ms: change.delete_retention_ms.unwrap_or(self.delete_retention_ms),
        }
    }

    /// The bounds of the type's doc, as a message for `InvalidConfig`.
    pub fn validate(&self) -> Result<(), String> {
        if self.retention_ms != -1 && self.retention_ms < 1 {
            return Err(format!("retention ms must be -1 (keep forever) or at least 1, got {}", self.retention_ms));
        }
        if self.retention_bytes != -1 && self.retention_bytes < 1 {
            return Err(format!("retention bytes must be -1 (no limit) or at least 1, got {}", self.retention_bytes));
        }
        if let Some(bytes) = self.segment_bytes {
            if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&bytes) {
                return Err(format!(
                    "segment bytes must be between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX}, got {bytes}"
                ));
            }
        }
        if self.delete_retention_ms < 0 {
            return Err(format!(
                "delete retention ms (how long a tombstone is kept) must be at least 0, got {}",
                self.delete_retention_ms
            ));
        }
        Ok(())
    }
}

/// The log settings a `CreateTopic` or `AlterTopic` sets; `None` leaves a setting as it is (or at
/// its default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogSettingsChange {
    #[serde(default)]
    pub retention_ms: Option<i64>,
    #[serde(default)]
    pub retention_bytes: Option<i64>,
    #[serde(default)]
    pub segment_bytes: Option<u64>,
    #[serde(default)]
    pub cleanup_policy: Option<CleanupPolicy>,
    #[serde(default)]
    pub delete_retention_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionRecord {
    pub partition: u32,
    /// Distinct; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// `None`: offline.
    pub leader: Option<NodeId>,
    pub leader_epoch: LeaderEpoch,
    /// In-sync replicas, in the order the last `ChangeIsr` gave (creation: the replicas' order).
    pub isr: Vec<NodeId>,
    /// Bumps on every leader or ISR change; fences `ChangeIsr`.
    #[serde(default)]
    pub partition_epoch: PartitionEpoch,
    /// Unclean elections this partition has had: each may have lost acknowledged records.
    #[serde(default)]
    pub unclean_elections: u64,
    /// Eligible leader replicas (KIP-966), in the order they left the ISR: members an ISR change
    /// dropped while leaving fewer than `min_insync_replicas` in it. A leader's HW does not move
    /// while its ISR is below that minimum (`partition::replica`), so each of them holds every
    /// committed offset and may lead when no ISR member can ([`elect_leader`]), or replace an ISR
    /// whose last member lost committed data (`ResignLeadership`). Emptied when the ISR is back at
    /// the minimum; never overlaps the ISR.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elr: Vec<NodeId>,
}

impl PartitionRecord {
    /// No leader: nobody can produce to or consume from it.
    pub fn is_offline(&self) -> bool {
        self.leader.is_none()
    }

    /// Fewer in-sync replicas than replicas.
    pub fn is_under_replicated(&self) -> bool {
        self.isr.len() < self.replicas.len()
    }
}

/// The outcome of [`elect_leader`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Election {
    /// An eligible ISR member: no committed record is lost.
    Clean(NodeId),
    /// No ISR member is eligible; an eligible leader replica (ELR) is: no committed record is lost.
    FromElr(NodeId),
    /// An eligible replica outside the ISR (only with unclean election on): may lose committed records.
    Unclean(NodeId),
    /// Nobody may lead: the partition is offline.
    Offline,
}

/// Chooses a partition's leader. Pure and deterministic: the first replica, in replica order (the
/// preferred leader first), that is in `isr` and `eligible`; failing that, the first in `elr` and
/// eligible; failing that, when `unclean_allowed`, the first eligible replica; failing that, nobody.
///
/// Replica order, not the longest log (KIP-966's preference), because the controller does not know
/// the replicas' log ends; it is safe because every ISR and ELR member holds every committed offset.
pub fn elect_leader(
    replicas: &[NodeId],
    isr: &[NodeId],
    elr: &[NodeId],
    eligible: impl Fn(NodeId) -> bool,
    unclean_allowed: bool,
) -> Election {
    if let Some(leader) = replicas.iter().copied().find(|node_id| isr.contains(node_id) && eligible(*node_id)) {
        return Election::Clean(leader);
    }
    if let Some(leader) = replicas.iter().copied().find(|node_id| elr.contains(node_id) && eligible(*node_id)) {
        return Election::FromElr(leader);
    }
    if unclean_allowed {
        if let Some(leader) = replicas.iter().copied().find(|node_id| eligible(*node_id)) {
            return Election::Unclean(leader);
        }
    }
    Election::Offline
}

/// The default `min_insync_replicas` for a replication factor: `min(2, replication)`.
pub fn default_min_insync_replicas(replication: u32) -> u32 {
    replication.clamp(1, 2)
}

/// The last producer-id block handed out, kept to check that blocks are disjoint and increasing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ProducerIdBlock {
    first: ProducerId,
    count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaStateError {
    #[error("truncated: {bytes} bytes is shorter than the {minimum}-byte envelope")]
    Truncated { bytes: usize, minimum: usize },
    #[error("{bytes} bytes is larger than the {max}-byte limit")]
    TooLarge { bytes: usize, max: usize },
    #[error("bad magic {found:?}, expected {expected:?}")]
    BadMagic { found: [u8; 4], expected: [u8; 4] },
    #[error("unsupported format version {version} (this build reads versions {FORMAT_VERSION_MIN} to {supported})")]
    UnsupportedVersion { version: u8, supported: u8 },
    #[error("a version-{version} {command} is no longer applied: {why}")]
    Retired { version: u8, command: &'static str, why: &'static str },
    #[error("CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("snapshot breaks an invariant: {0}")]
    InvalidSnapshot(String),
}

/// Brokers, topics and producer ids as of Raft index `applied_index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetadataState {
    applied_index: u64,
    brokers: BTreeMap<NodeId, BrokerRecord>,
    topics: BTreeMap<String, TopicRecord>,
    next_producer_id: ProducerId,
    last_producer_id_block: Option<ProducerIdBlock>,
    /// SCRAM users by name (ADR 0029). Absent from the encoding while empty, so a state without users
    /// snapshots and hashes as before they existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    users: BTreeMap<String, crate::auth::scram::Credential>,
    /// See [`MetadataState::topics_changed_at`]. Local bookkeeping, not replicated state.
    #[serde(skip)]
    topics_changed_at: ChangeMark,
}

/// The Raft index of the last applied entry that may have changed a topic. Not part of the state's
/// value: never serialized or hashed, and equal to every other mark, because two nodes holding the
/// same topics are in the same state whatever entries (or snapshot) brought them there.
#[derive(Clone, Copy, Debug, Default)]
struct ChangeMark(u64);

impl PartialEq for ChangeMark {
    fn eq(&self, _other: &ChangeMark) -> bool {
        true
    }
}

impl Eq for ChangeMark {}

/// A broker's next heartbeat stamp: its `now_ms`, but at least one past the previous stamp, so the
/// stamp moves on every applied heartbeat even when the broker's wall clock stepped back.
fn next_stamp(previous: i64, now_ms: i64) -> i64 {
    now_ms.max(previous.saturating_add(1))
}

fn reject(code: ErrorCode, message: impl Into<String>) -> MetaResult {
    MetaResult::Error { code, message: message.into() }
}

impl MetadataState {
    pub fn new() -> MetadataState {
        MetadataState::default()
    }

    /// Applies one committed command at Raft index `index`. Deterministic: the same sequence gives the
    /// same state on every node. Rejections are returned as [`MetaResult::Error`] and leave the state
    /// unchanged, except `applied_index`, which every command advances.
    ///
    /// Panics when `index` is not above `applied_index` (an entry applied twice or out of order).
    pub fn apply(&mut self, index: u64, command: &MetaCommand) -> MetaResult {
        assert!(
            index > self.applied_index,
            "metadata entry {index} applied after entry {}: committed entries must be applied once, in order",
            self.applied_index
        );
        // Debug and simulation builds keep the partitions as they were, to check that epochs only grow
        // and that every leader or ISR change bumped them.
        let topics_before = cfg!(any(debug_assertions, madsim)).then(|| self.topics.clone());
        let leaves_topics = self.leaves_topics(command);
        let result = self.apply_command(index, command);
        self.applied_index = index;
        // A rejection changes nothing but `applied_index`.
        if !leaves_topics && !matches!(result, MetaResult::Error { .. }) {
            self.topics_changed_at = ChangeMark(index);
        }
        if let Some(topics_before) = topics_before {
            if self.topics_changed_at.0 != index && self.topics != topics_before {
                panic!("metadata entry {index} ({command:?}) changed a topic but not topics_changed_at");
            }
            // The topics this entry left as they were still hold: no command removes a broker, and
            // the applied index only grows.
            let checked = self
                .validate_except(Some(&topics_before))
                .and_then(|()| self.validate_transition(&topics_before))
                .and_then(|()| self.validate_command_effect(&topics_before, command, &result));
            if let Err(broken) = checked {
                panic!("metadata entry {index} ({command:?}) breaks an invariant: {broken}");
            }
        }
        result
    }

    /// Whether `command` never touches a topic in this state: a heartbeat of a broker that is
    /// eligible already (one that comes back elects offline partitions) and a producer-id block.
    fn leaves_topics(&self, command: &MetaCommand) -> bool {
        match command {
            MetaCommand::BrokerHeartbeat { node_id, .. } => {
                self.brokers.get(node_id).is_some_and(BrokerRecord::is_eligible)
            }
            MetaCommand::AllocateProducerIds { .. }
            | MetaCommand::UpsertUser { .. }
            | MetaCommand::DeleteUser { .. } => true,
            _ => false,
        }
    }

    fn apply_command(&mut self, index: u64, command: &MetaCommand) -> MetaResult {
        match command {
            MetaCommand::RegisterBroker { node_id, addr, kafka_addr, now_ms } => {
                self.apply_register_broker(index, *node_id, (addr, kafka_addr), *now_ms, Incarnation::NewEpochs)
            }
            MetaCommand::RegisterBrokerFormat2 { node_id, addr, now_ms } => {
                self.apply_register_broker(index, *node_id, (addr, ""), *now_ms, Incarnation::SameEpochs)
            }
            MetaCommand::BrokerHeartbeat { node_id, now_ms } => self.apply_broker_heartbeat(*node_id, *now_ms),
            MetaCommand::FenceBroker { node_id, now_ms } => self.apply_fence_broker(*node_id, *now_ms),
            MetaCommand::ControlledShutdown { node_id, registered_index } => {
                self.apply_controlled_shutdown(*node_id, *registered_index)
            }
            MetaCommand::CreateTopic {
                name,
                partitions,
                replication,
                min_insync_replicas,
                unclean_leader_election,
                log,
            } => {
                let config = TopicConfig {
                    replication: *replication,
                    min_insync_replicas: *min_insync_replicas,
                    unclean_leader_election: *unclean_leader_election,
                    log: LogSettings::for_new_topic(log),
                };
                self.apply_create_topic(index, name, *partitions, config)
            }
            MetaCommand::DeleteTopic { name } => self.apply_delete_topic(name),
            MetaCommand::AlterTopic { name, log } => self.apply_alter_topic(name, log),
            MetaCommand::AllocateProducerIds { count } => self.apply_allocate_producer_ids(*count),
            MetaCommand::ChangePartitionLeader { topic, partition, leader, expected_epoch } => {
                self.apply_change_partition_leader(topic, *partition, *leader, *expected_epoch)
            }
            MetaCommand::ChangeIsr { topic, partition, leader, leader_epoch, partition_epoch, isr } => {
                let proposal =
                    IsrProposal { leader: *leader, leader_epoch: *leader_epoch, partition_epoch: *partition_epoch };
                self.apply_change_isr(topic, *partition, proposal, isr)
            }
            MetaCommand::ResignLeadership { topic, partition, leader, leader_epoch } => {
                self.apply_resign_leadership(topic, *partition, *leader, *leader_epoch)
            }
            MetaCommand::UpsertUser { name, credential } => self.apply_upsert_user(name, credential),
            MetaCommand::DeleteUser { name } => match self.users.remove(name) {
                Some(_) => MetaResult::Ok,
                None => reject(ErrorCode::UnknownUser, format!("no user named {name:?}")),
            },
        }
    }

    fn apply_upsert_user(&mut self, name: &str, credential: &crate::auth::scram::Credential) -> MetaResult {
        if let Err(why) = check_user_name(name) {
            return reject(ErrorCode::InvalidRequest, why);
        }
        if let Err(why) = credential.check() {
            return reject(ErrorCode::InvalidRequest, format!("user {name:?}: {why}"));
        }
        if !self.users.contains_key(name) && self.users.len() >= USERS_MAX {
            return reject(ErrorCode::InvalidRequest, format!("the cluster has {USERS_MAX} users, the most it keeps"));
        }
        self.users.insert(name.to_owned(), credential.clone());
        MetaResult::Ok
    }

    /// The SCRAM credential of user `name`.
    pub fn user(&self, name: &str) -> Option<&crate::auth::scram::Credential> {
        self.users.get(name)
    }

    /// Every user, by name.
    pub fn users(&self) -> impl Iterator<Item = (&String, &crate::auth::scram::Credential)> {
        self.users.iter()
    }

    /// Raft index of the last applied command (0: none yet).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Raft index of the last applied entry that may have changed a topic, or of the snapshot this
    /// state was restored from (0: none yet). Only grows; while it stays, every topic and partition
    /// record stays as it is, so a reader may skip work that depends on the topics alone (a broker
    /// reconciling its replicas after each heartbeat). Conservative: an entry that moves it may have
    /// left every topic as it was. Not replicated: ignored by equality, snapshots and the state hash.
    pub fn topics_changed_at(&self) -> u64 {
        self.topics_changed_at.0
    }

    /// Every registered broker, alive or fenced, sorted by node id.
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerRecord> {
        self.brokers.values()
    }

    pub fn broker(&self, node_id: NodeId) -> Option<&BrokerRecord> {
        self.brokers.get(&node_id)
    }

    pub fn topic(&self, name: &str) -> Option<&TopicRecord> {
        self.topics.get(name)
    }

    /// Partition replicas placed on each broker that hosts any.
    pub fn replicas_per_broker(&self) -> BTreeMap<NodeId, u64> {
        let mut count = BTreeMap::new();
        for replica in self.topics.values().flat_map(|topic| &topic.partitions).flat_map(|p| &p.replicas) {
            *count.entry(*replica).or_insert(0) += 1;
        }
        count
    }

    /// Every topic, sorted by name.
    pub fn topics(&self) -> impl Iterator<Item = &TopicRecord> {
        self.topics.values()
    }

    /// The first producer id the next `AllocateProducerIds` hands out.
    pub fn next_producer_id(&self) -> ProducerId {
        self.next_producer_id
    }

    /// Every partition with no leader, as (topic, partition), sorted.
    pub fn offline_partitions(&self) -> impl Iterator<Item = (&TopicRecord, &PartitionRecord)> {
        self.topics().flat_map(|topic| topic.partitions.iter().map(move |p| (topic, p))).filter(|(_, p)| p.is_offline())
    }

    /// Every partition whose ISR is smaller than its replica set, as (topic, partition), sorted.
    pub fn under_replicated_partitions(&self) -> impl Iterator<Item = (&TopicRecord, &PartitionRecord)> {
        self.topics()
            .flat_map(|topic| topic.partitions.iter().map(move |p| (topic, p)))
            .filter(|(_, p)| p.is_under_replicated())
    }

    /// Every partition with a replica on `node_id` (it leads or follows it), as (topic, partition),
    /// sorted by topic name, then partition. The topic gives the name, `created_index` (which
    /// incarnation of the name) and the min ISR; the partition its replicas, leader, epochs and ISR.
    /// Borrows, never clones: one pass over the partitions, each checking at most
    /// [`REPLICATION_FACTOR_MAX`] replicas.
    pub fn partitions_on(&self, node_id: NodeId) -> impl Iterator<Item = (&TopicRecord, &PartitionRecord)> {
        self.topics()
            .flat_map(|topic| topic.partitions.iter().map(move |p| (topic, p)))
            .filter(move |(_, p)| p.replicas.contains(&node_id))
    }

    /// One partition, if its topic exists and has it.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionRecord> {
        self.topics.get(topic)?.partitions.get(partition as usize)
    }

    /// The live (not fenced) brokers with their heartbeat stamps, for the controller's
    /// `meta::fence_watch::FenceWatch`. Sorted by node id.
    pub fn alive_heartbeat_stamps(&self) -> Vec<(NodeId, i64)> {
        self.brokers.values().filter(|broker| broker.is_alive()).map(|b| (b.node_id, b.last_heartbeat_ms)).collect()
    }

    /// Brokers whose heartbeat stamp is older than `fence_after_ms` at `now_ms` and are not fenced
    /// yet, on one clock (a model for the tests: the controller does not compare its wall clock with
    /// the brokers' stamps, see `meta::fence_watch`). Sorted by node id.
    pub fn brokers_to_fence(&self, now_ms: i64, fence_after_ms: i64) -> Vec<NodeId> {
        self.brokers
            .values()
            .filter(|broker| broker.is_alive() && now_ms.saturating_sub(broker.last_heartbeat_ms) > fence_after_ms)
            .map(|broker| broker.node_id)
            .collect()
    }

    /// The whole state, versioned and checksummed; [`MetadataState::restore`] reads it back.
    pub fn snapshot(&self) -> Vec<u8> {
        encode_envelope(SNAPSHOT_MAGIC, SNAPSHOT_FORMAT_VERSION, &self.canonical_payload())
    }

    /// Reads a [`MetadataState::snapshot`]. Never panics: bytes that decode to a state that breaks an
    /// invariant are an `InvalidSnapshot` error.
    pub fn restore(bytes: &[u8]) -> Result<MetadataState, MetaStateError> {
        let (version, payload) = decode_envelope(bytes, SNAPSHOT_MAGIC, SNAPSHOT_FORMAT_VERSION, usize::MAX)?;
        let mut state: MetadataState =
            serde_json::from_slice(payload).map_err(|error| MetaStateError::Malformed(error.to_string()))?;
        if version == 1 {
            // Version 1 had no min ISR; the defaulted fields (epoch 0, no unclean election, nobody
            // shutting down) are what version 1 meant.
            for topic in state.topics.values_mut() {
                let replication = topic.partitions.first().map_or(1, |p| p.replicas.len() as u32);
                topic.min_insync_replicas = default_min_insync_replicas(replication);
            }
        }
        state.validate().map_err(MetaStateError::InvalidSnapshot)?;
        // A snapshot may have changed anything; its index is above every entry applied before it.
        state.topics_changed_at = ChangeMark(state.applied_index);
        Ok(state)
    }

    /// A stable 64-bit hash of the whole state: FNV-1a over the snapshot payload (JSON of ordered
    /// maps, so equal states give equal bytes), independent of the process and of `RandomState`.
    pub fn state_hash(&self) -> u64 {
        fnv1a_64(&self.canonical_payload())
    }

    /// Panics, with context, when an invariant of the module doc is broken.
    pub fn check_invariants(&self) {
        if let Err(broken) = self.validate() {
            panic!("metadata state at index {} breaks an invariant: {broken}", self.applied_index);
        }
    }

    fn canonical_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("metadata state serializes to JSON")
    }

    fn validate(&self) -> Result<(), String> {
        self.validate_except(None)
    }

    /// [`MetadataState::validate`], skipping the topics that are as `unchanged` has them.
    fn validate_except(&self, unchanged: Option<&BTreeMap<String, TopicRecord>>) -> Result<(), String> {
        if self.brokers.len() > BROKERS_MAX {
            return Err(format!("{} brokers, more than {BROKERS_MAX}", self.brokers.len()));
        }
        for (node_id, broker) in &self.brokers {
            if *node_id != broker.node_id {
                return Err(format!("broker {} filed under node id {node_id}", broker.node_id));
            }
            if broker.addr.is_empty() || broker.addr.len() > BROKER_ADDR_BYTES_MAX {
                return Err(format!("broker {node_id} has a {}-byte address", broker.addr.len()));
            }
            if broker.kafka_addr.len() > BROKER_ADDR_BYTES_MAX {
                return Err(format!("broker {node_id} has a {}-byte Kafka address", broker.kafka_addr.len()));
            }
            if broker.registered_index > self.applied_index {
                return Err(format!(
                    "broker {node_id} registered at index {} after the applied index {}",
                    broker.registered_index, self.applied_index
                ));
            }
        }
        if self.topics.len() > TOPICS_MAX {
            return Err(format!("{} topics, more than {TOPICS_MAX}", self.topics.len()));
        }
        for (name, topic) in &self.topics {
            if unchanged.is_none_or(|unchanged| unchanged.get(name) != Some(topic)) {
                self.validate_topic(name, topic)?;
            }
        }
        if self.next_producer_id.0 < 0 {
            return Err(format!("next producer id {} is negative", self.next_producer_id));
        }
        match self.last_producer_id_block {
            None if self.next_producer_id.0 != 0 => {
                return Err(format!("next producer id is {} but no block was handed out", self.next_producer_id));
            }
            None => {}
            Some(block) => {
                let end = i64::try_from(block.count).ok().and_then(|count| block.first.0.checked_add(count));
                if block.first.0 < 0 || block.count == 0 || end != Some(self.next_producer_id.0) {
                    return Err(format!(
                        "last producer id block {}+{} does not end at the next producer id {}",
                        block.first, block.count, self.next_producer_id
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_topic(&self, name: &str, topic: &TopicRecord) -> Result<(), String> {
        if name != topic.name {
            return Err(format!("topic {:?} filed under {name:?}", topic.name));
        }
        crate::topic_name::validate_topic_name(name).map_err(|error| error.message)?;
        if topic.created_index > self.applied_index {
            return Err(format!(
                "topic {name:?} created at index {} after the applied index {}",
                topic.created_index, self.applied_index
            ));
        }
        let n_partitions = topic.partitions.len();
        if n_partitions == 0 || n_partitions > PARTITIONS_PER_TOPIC_MAX as usize {
            return Err(format!("topic {name:?} has {n_partitions} partitions"));
        }
        if let Err(message) = topic.log.validate() {
            return Err(format!("topic {name:?}: {message}"));
        }
        let replication = topic.partitions[0].replicas.len();
        if topic.min_insync_replicas == 0 || topic.min_insync_replicas as usize > replication {
            return Err(format!(
                "topic {name:?} has min_insync_replicas {} with replication {replication}",
                topic.min_insync_replicas
            ));
        }
        for (partition_idx, partition) in topic.partitions.iter().enumerate() {
            let at = PartitionAt(name, partition.partition);
            if partition.partition as usize != partition_idx {
                return Err(format!("partition {at} is at index {partition_idx}"));
            }
            if partition.replicas.is_empty() || partition.replicas.len() > REPLICATION_FACTOR_MAX as usize {
                return Err(format!("{at} has {} replicas", partition.replicas.len()));
            }
            if partition.replicas.len() != replication {
                return Err(format!("{at} has {} replicas, partition 0 has {replication}", partition.replicas.len()));
            }
            let replicas: BTreeSet<NodeId> = partition.replicas.iter().copied().collect();
            if replicas.len() != partition.replicas.len() {
                return Err(format!("{at} has duplicate replicas {:?}", partition.replicas));
            }
            if let Some(unknown) = replicas.iter().find(|node_id| !self.brokers.contains_key(node_id)) {
                return Err(format!("{at} has replica {unknown}, which is not a registered broker"));
            }
            validate_leadership(&at, partition, &replicas, topic.min_insync_replicas)?;
            if partition.leader_epoch.0 < 0 || partition.partition_epoch.0 < 0 {
                return Err(format!(
                    "{at} has a negative leader epoch {} or partition epoch {}",
                    partition.leader_epoch, partition.partition_epoch
                ));
            }
        }
        Ok(())
    }

    /// The invariants across one `apply`: for every partition of a topic incarnation that existed
    /// before, epochs never go down, a leader change bumps the leader epoch, and a leader or ISR change
    /// bumps the partition epoch.
    fn validate_transition(&self, topics_before: &BTreeMap<String, TopicRecord>) -> Result<(), String> {
        for (name, before) in topics_before {
            let Some(after) = self.topics.get(name).filter(|after| after.created_index == before.created_index) else {
                continue;
            };
            for (old, new) in before.partitions.iter().zip(&after.partitions) {
                let at = PartitionAt(name, new.partition);
                if new.leader_epoch < old.leader_epoch || new.partition_epoch < old.partition_epoch {
                    return Err(format!(
                        "{at}: epochs went back from leader {} / partition {} to {} / {}",
                        old.leader_epoch, old.partition_epoch, new.leader_epoch, new.partition_epoch
                    ));
                }
                if new.leader != old.leader && new.leader_epoch == old.leader_epoch {
                    return Err(format!(
                        "{at}: leader {:?} -> {:?} without a new leader epoch",
                        old.leader, new.leader
                    ));
                }
                if (new.leader != old.leader || new.isr != old.isr) && new.partition_epoch == old.partition_epoch {
                    return Err(format!(
                        "{at}: leader {:?} -> {:?}, ISR {:?} -> {:?} without a new partition epoch",
                        old.leader, new.leader, old.isr, new.isr
                    ));
                }
                if new.unclean_elections < old.unclean_elections {
                    return Err(format!("{at}: the unclean election count went back"));
                }
            }
        }
        Ok(())
    }

    /// What particular commands promise, across one `apply`: a re-registered broker leads nothing
    /// in an epoch it led before (ADR 0012), and an applied `ResignLeadership` came from the leader
    /// in its epoch, moved the partition to a new leader epoch, and left the resigner in the ISR (or
    /// leading) only as its last member or by an unclean election.
    fn validate_command_effect(
        &self,
        topics_before: &BTreeMap<String, TopicRecord>,
        command: &MetaCommand,
        result: &MetaResult,
    ) -> Result<(), String> {
        match (command, result) {
            (MetaCommand::RegisterBroker { node_id, .. }, MetaResult::Ok) => {
                for (name, before) in topics_before {
                    let Some(after) = self.topics.get(name) else { continue };
                    for (old, new) in before.partitions.iter().zip(&after.partitions) {
                        let led_on = old.leader == Some(*node_id) && new.leader == Some(*node_id);
                        if led_on && new.leader_epoch == old.leader_epoch {
                            return Err(format!(
                                "{name}/{}: broker {node_id} registered again and still leads epoch {}",
                                new.partition, new.leader_epoch
                            ));
                        }
                    }
                }
                Ok(())
            }
            (
                MetaCommand::ResignLeadership { topic, partition, leader, leader_epoch },
                MetaResult::LeadershipResigned { .. },
            ) => {
                let index = *partition as usize;
                let old = &topics_before[topic].partitions[index];
                let new = &self.topics[topic].partitions[index];
                let resigner_kept = new.isr.contains(leader) || new.leader == Some(*leader);
                let kept_rightly = old.isr == [*leader] || new.unclean_elections > old.unclean_elections;
                if old.leader != Some(*leader)
                    || old.leader_epoch != *leader_epoch
                    || new.leader_epoch <= old.leader_epoch
                    || (resigner_kept && !kept_rightly)
                {
                    return Err(format!("{topic}/{partition}: resignation of {leader} took {old:?} to {new:?}"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn apply_register_broker(
        &mut self,
        index: u64,
        node_id: NodeId,
        (addr, kafka_addr): (&str, &str),
        now_ms: i64,
        incarnation: Incarnation,
    ) -> MetaResult {
        if addr.is_empty() || addr.len() > BROKER_ADDR_BYTES_MAX {
            return reject(
                ErrorCode::InvalidRequest,
                format!("broker {node_id}: address must be 1-{BROKER_ADDR_BYTES_MAX} bytes, got {}", addr.len()),
            );
        }
        if kafka_addr.len() > BROKER_ADDR_BYTES_MAX {
            return reject(
                ErrorCode::InvalidRequest,
                format!(
                    "broker {node_id}: Kafka address must be 0-{BROKER_ADDR_BYTES_MAX} bytes, got {}",
                    kafka_addr.len()
                ),
            );
        }
        match self.brokers.get_mut(&node_id) {
            Some(broker) => {
                let was_eligible = broker.is_eligible();
                broker.addr = addr.to_owned();
                broker.kafka_addr = kafka_addr.to_owned();
                broker.fenced = false;
                broker.shutting_down = false;
                broker.last_heartbeat_ms = next_stamp(broker.last_heartbeat_ms, now_ms);
                broker.registered_index = index;
                if incarnation == Incarnation::NewEpochs {
                    self.restart_leaves_isrs(node_id);
                }
                if !was_eligible {
                    self.elect_offline_partitions();
                }
            }
            None => {
                if self.brokers.len() >= BROKERS_MAX {
                    return reject(ErrorCode::InvalidRequest, format!("the cluster already has {BROKERS_MAX} brokers"));
                }
                let broker = BrokerRecord {
                    node_id,
                    addr: addr.to_owned(),
                    fenced: false,
                    last_heartbeat_ms: now_ms,
                    registered_index: index,
                    kafka_addr: kafka_addr.to_owned(),
                    shutting_down: false,
                };
                self.brokers.insert(node_id, broker);
            }
        }
        MetaResult::Ok
    }

    fn apply_broker_heartbeat(&mut self, node_id: NodeId, now_ms: i64) -> MetaResult {
        let Some(broker) = self.brokers.get_mut(&node_id) else {
            return reject(
                ErrorCode::InvalidRequest,
                format!("heartbeat from unknown broker {node_id}: register first"),
            );
        };
        let was_eligible = broker.is_eligible();
        broker.fenced = false;
        broker.last_heartbeat_ms = next_stamp(broker.last_heartbeat_ms, now_ms);
        if !was_eligible && broker.is_eligible() {
            self.elect_offline_partitions();
        }
        MetaResult::Ok
    }

    fn apply_fence_broker(&mut self, node_id: NodeId, now_ms: i64) -> MetaResult {
        let Some(broker) = self.brokers.get_mut(&node_id) else {
            return reject(ErrorCode::InvalidRequest, format!("cannot fence unknown broker {node_id}"));
        };
        if broker.fenced {
            return MetaResult::Ok; // A new leader may propose the same fence again.
        }
        if broker.last_heartbeat_ms >= now_ms {
            return reject(
                ErrorCode::InvalidRequest,
                format!(
                    "not fencing broker {node_id}: it heartbeat at {} ms, not before the fence decision at {now_ms} ms",
                    broker.last_heartbeat_ms
                ),
            );
        }
        broker.fenced = true;
        crate::sometimes::hit(crate::sometimes::Sometimes::BrokerFenced);
        self.move_away_from(node_id);
        MetaResult::Ok
    }

    fn apply_controlled_shutdown(&mut self, node_id: NodeId, registered_index: u64) -> MetaResult {
        let Some(broker) = self.brokers.get_mut(&node_id) else {
            return reject(ErrorCode::InvalidRequest, format!("controlled shutdown of unknown broker {node_id}"));
        };
        if broker.registered_index != registered_index {
            return reject(
                ErrorCode::InvalidRequest,
                format!(
                    "stale controlled shutdown of broker {node_id}: asked by its incarnation registered at index \
                     {registered_index}, the broker registered again at index {}",
                    broker.registered_index
                ),
            );
        }
        broker.shutting_down = true;
        crate::sometimes::hit(crate::sometimes::Sometimes::ControlledShutdown);
        self.move_away_from(node_id);
        MetaResult::Ok
    }

    /// `node_id` stopped being eligible: take it out of every ISR it is in (unless it is the last
    /// member) and elect a new leader for every partition it leads. Idempotent.
    fn move_away_from(&mut self, node_id: NodeId) {
        let brokers = &self.brokers;
        let eligible = |candidate: NodeId| brokers.get(&candidate).is_some_and(BrokerRecord::is_eligible);
        for topic in self.topics.values_mut() {
            let min_isr = topic.min_insync_replicas;
            for partition in &mut topic.partitions {
                let mut changed = false;
                if partition.isr.len() > 1 && partition.isr.contains(&node_id) {
                    let before = std::mem::take(&mut partition.isr);
                    let after = before.iter().copied().filter(|member| *member != node_id).collect();
                    set_isr(partition, &before, after, min_isr);
                    changed = true;
                }
                if partition.leader == Some(node_id) {
                    elect_into(partition, &eligible, topic.unclean_leader_election, min_isr);
                    changed = true;
                }
                if changed {
                    bump_partition_epoch(partition);
                }
            }
        }
    }

    /// `node_id` registered again (it restarted): every partition it leads gets a new leader epoch and
    /// partition epoch, and it keeps leading (it is in the ISR and, registered, eligible). A
    /// restarted leader lost its page cache; writing new batches at offsets its followers hold in
    /// the epoch it led before would be a divergence the epoch check cannot see. Partitions it
    /// follows need nothing: a follower's log is checked against the leader's on its next fetch.
    /// An ineligible broker leads nothing, so this and [`Self::elect_offline_partitions`] never
    /// both touch one partition.
    /// A broker registered again (a restart, clean or not). Its log may have lost batches the HW
    /// covers (bit rot that recovery cut out), so it is no longer known to hold every committed
    /// offset. Where another eligible ISR member exists it leaves the ISR (leadership moves to that
    /// member, KIP-966's spirit for an unclean shutdown) and rejoins by catching up; where it is the
    /// only eligible member it stays, and leads in a new epoch (a broker never leads an epoch it led
    /// before a restart). Found by `isr_3_bit_flips` seed 2: a leader restarted with its log cut by
    /// corruption kept leading, and its followers truncated acknowledged records to match it.
    fn restart_leaves_isrs(&mut self, node_id: NodeId) {
        let brokers = &self.brokers;
        let eligible = |candidate: NodeId| brokers.get(&candidate).is_some_and(BrokerRecord::is_eligible);
        for topic in self.topics.values_mut() {
            let min_isr = topic.min_insync_replicas;
            for partition in topic.partitions.iter_mut().filter(|partition| partition.isr.contains(&node_id)) {
                if partition.isr.iter().any(|member| *member != node_id && eligible(*member)) {
                    let before = std::mem::take(&mut partition.isr);
                    let after = before.iter().copied().filter(|member| *member != node_id).collect();
                    set_isr(partition, &before, after, min_isr);
                    if partition.leader == Some(node_id) {
                        elect_into(partition, &eligible, false, min_isr);
                    }
                    bump_partition_epoch(partition);
                } else if partition.leader == Some(node_id) {
                    bump_leader_epoch(partition);
                    bump_partition_epoch(partition);
                }
            }
        }
    }

    /// A broker became eligible: offer every offline partition an election.
    fn elect_offline_partitions(&mut self) {
        let brokers = &self.brokers;
        let eligible = |candidate: NodeId| brokers.get(&candidate).is_some_and(BrokerRecord::is_eligible);
        for topic in self.topics.values_mut() {
            let min_isr = topic.min_insync_replicas;
            for partition in topic.partitions.iter_mut().filter(|partition| partition.is_offline()) {
                if elect_into(partition, &eligible, topic.unclean_leader_election, min_isr) {
                    bump_partition_epoch(partition);
                }
            }
        }
    }

    fn apply_create_topic(&mut self, index: u64, name: &str, partitions: u32, config: TopicConfig) -> MetaResult {
        if let Err(error) = crate::topic_name::validate_topic_name(name) {
            return reject(error.code, error.message);
        }
        if self.topics.contains_key(name) {
            return reject(ErrorCode::TopicAlreadyExists, format!("topic {name:?} already exists"));
        }
        if self.topics.len() >= TOPICS_MAX {
            return reject(ErrorCode::InvalidRequest, format!("the cluster already has {TOPICS_MAX} topics"));
        }
        if partitions == 0 || partitions > PARTITIONS_PER_TOPIC_MAX {
            return reject(
                ErrorCode::InvalidPartitions,
                format!("partitions must be between 1 and {PARTITIONS_PER_TOPIC_MAX}, got {partitions}"),
            );
        }
        let replication = config.replication;
        let assignment = match self.assign_replicas(partitions, replication) {
            Ok(assignment) => assignment,
            Err(rejection) => return rejection,
        };
        if let Err(message) = config.log.validate() {
            return reject(ErrorCode::InvalidConfig, message);
        }
        let min_insync_replicas = config.min_insync_replicas.unwrap_or(default_min_insync_replicas(replication));
        if min_insync_replicas == 0 || min_insync_replicas > replication {
            return reject(
                ErrorCode::InvalidReplication,
                format!(
                    "min insync replicas must be between 1 and the replication factor {replication}, got \
                     {min_insync_replicas}"
                ),
            );
        }
        let topic = TopicRecord {
            name: name.to_owned(),
            partitions: assignment
                .iter()
                .map(|assigned| PartitionRecord {
                    elr: Vec::new(),
                    partition: assigned.partition,
                    replicas: assigned.replicas.clone(),
                    leader: Some(assigned.leader),
                    leader_epoch: LeaderEpoch(0),
                    // Only the leader holds the partition's data until followers replicate it (issue
                    // 8's data path), so it alone is in sync: an election (fencing, controlled
                    // shutdown) can then never hand the partition to a replica that lacks its
                    // acknowledged records. Followers join through `ChangeIsr` once caught up.
                    isr: vec![assigned.leader],
                    partition_epoch: PartitionEpoch(0),
                    unclean_elections: 0,
                })
                .collect(),
            created_index: index,
            min_insync_replicas,
            unclean_leader_election: config.unclean_leader_election,
            log: config.log,
        };
        self.topics.insert(name.to_owned(), topic);
        MetaResult::TopicCreated { assignment }
    }

    fn apply_alter_topic(&mut self, name: &str, change: &LogSettingsChange) -> MetaResult {
        let Some(topic) = self.topics.get_mut(name) else {
            return reject(ErrorCode::UnknownTopic, format!("unknown topic {name:?}"));
        };
        let log = topic.log.with(change);
        if let Err(message) = log.validate() {
            return reject(ErrorCode::InvalidConfig, message);
        }
        topic.log = log;
        MetaResult::Ok
    }

    /// Places `partitions` x `replication` replicas on live brokers, least loaded first.
    ///
    /// Load counts every existing partition's replicas and preferred leaders (first replicas) on each
    /// live broker. Each partition's leader is the live broker with the fewest leaders, then the fewest
    /// replicas; each follower the remaining one with the fewest replicas, then the **most** leaders
    /// (a broker short of leaders will soon be picked as a leader and gain a replica that way), ties
    /// broken by node id. Counts are updated as partitions are placed, so one topic spreads evenly,
    /// successive small topics do not pile onto the lowest ids, and a new broker catches up.
    pub fn assign_replicas(&self, partitions: u32, replication: u32) -> Result<Vec<PartitionAssignment>, MetaResult> {
        let live: Vec<NodeId> =
            self.brokers.values().filter(|broker| broker.is_eligible()).map(|b| b.node_id).collect();
        if replication == 0 || replication > REPLICATION_FACTOR_MAX {
            return Err(reject(
                ErrorCode::InvalidReplication,
                format!("replication factor must be between 1 and {REPLICATION_FACTOR_MAX}, got {replication}"),
            ));
        }
        if replication as usize > live.len() {
            return Err(reject(
                ErrorCode::InvalidReplication,
                format!("replication factor {replication} is larger than the {} live brokers", live.len()),
            ));
        }
        // Per live broker: (leaders, replicas).
        let mut load: BTreeMap<NodeId, (u64, u64)> = live.iter().map(|node_id| (*node_id, (0, 0))).collect();
        for partition in self.topics.values().flat_map(|topic| &topic.partitions) {
            for (replica_idx, replica) in partition.replicas.iter().enumerate() {
                if let Some((leaders, replicas)) = load.get_mut(replica) {
                    *replicas += 1;
                    if replica_idx == 0 {
                        *leaders += 1;
                    }
                }
            }
        }
        let mut assignment = Vec::with_capacity(partitions as usize);
        for partition in 0..partitions {
            let leader = *load
                .iter()
                .min_by_key(|(node_id, (leaders, replicas))| (*leaders, *replicas, **node_id))
                .expect("at least one live broker")
                .0;
            let mut replicas = Vec::with_capacity(replication as usize);
            replicas.push(leader);
            let entry = load.get_mut(&leader).expect("leader is live");
            entry.0 += 1;
            entry.1 += 1;
            while replicas.len() < replication as usize {
                let follower = *load
                    .iter()
                    .filter(|(node_id, _)| !replicas.contains(node_id))
                    .min_by_key(|(node_id, (leaders, replicas))| (*replicas, Reverse(*leaders), **node_id))
                    .expect("replication <= live brokers")
                    .0;
                replicas.push(follower);
                load.get_mut(&follower).expect("follower is live").1 += 1;
            }
            assignment.push(PartitionAssignment { partition, replicas, leader });
        }
        Ok(assignment)
    }

    fn apply_delete_topic(&mut self, name: &str) -> MetaResult {
        match self.topics.remove(name) {
            Some(_) => MetaResult::Ok,
            None => reject(ErrorCode::UnknownTopic, format!("unknown topic {name:?}")),
        }
    }

    fn apply_allocate_producer_ids(&mut self, count: u64) -> MetaResult {
        if count == 0 || count > PRODUCER_ID_BLOCK_COUNT_MAX {
            return reject(
                ErrorCode::InvalidRequest,
                format!("producer id block size must be between 1 and {PRODUCER_ID_BLOCK_COUNT_MAX}, got {count}"),
            );
        }
        let first = self.next_producer_id;
        let Some(next) = first.0.checked_add(count as i64) else {
            return reject(ErrorCode::InvalidRequest, format!("producer ids exhausted: {count} more after {first}"));
        };
        self.next_producer_id = ProducerId(next);
        self.last_producer_id_block = Some(ProducerIdBlock { first, count });
        MetaResult::ProducerIds { first, count }
    }

    /// The partition a leader or ISR change addresses, if it exists and `expected_epoch` is current.
    fn partition_for_change(
        &mut self,
        topic: &str,
        partition: u32,
        expected_epoch: LeaderEpoch,
    ) -> Result<&mut PartitionRecord, MetaResult> {
        let (partition_record, _) = find_partition(&mut self.topics, topic, partition)?;
        if partition_record.leader_epoch != expected_epoch {
            return Err(reject(
                ErrorCode::NotLeader,
                format!(
                    "stale leader epoch for {topic}/{partition}: expected {expected_epoch}, the partition is at {}",
                    partition_record.leader_epoch
                ),
            ));
        }
        Ok(partition_record)
    }

    fn apply_change_partition_leader(
        &mut self,
        topic: &str,
        partition: u32,
        leader: Option<NodeId>,
        expected_epoch: LeaderEpoch,
    ) -> MetaResult {
        let leader_eligible = leader.map(|node_id| self.brokers.get(&node_id).is_some_and(BrokerRecord::is_eligible));
        let record = match self.partition_for_change(topic, partition, expected_epoch) {
            Ok(record) => record,
            Err(rejection) => return rejection,
        };
        if let Some(node_id) = leader {
            if !record.isr.contains(&node_id) {
                return reject(
                    ErrorCode::InvalidRequest,
                    format!("{topic}/{partition}: new leader {node_id} is not in ISR {:?}", record.isr),
                );
            }
            if leader_eligible != Some(true) {
                return reject(
                    ErrorCode::InvalidRequest,
                    format!("{topic}/{partition}: new leader {node_id} is fenced or shutting down"),
                );
            }
        }
        if record.leader == leader {
            return MetaResult::Ok;
        }
        if record.leader_epoch.0 == i32::MAX || record.partition_epoch.0 == i32::MAX {
            return reject(ErrorCode::InvalidRequest, format!("{topic}/{partition}: epochs exhausted"));
        }
        record.leader = leader;
        bump_leader_epoch(record);
        bump_partition_epoch(record);
        MetaResult::Ok
    }

    fn apply_change_isr(&mut self, topic: &str, partition: u32, proposal: IsrProposal, isr: &[NodeId]) -> MetaResult {
        let brokers = &self.brokers;
        let (record, settings) = match find_partition(&mut self.topics, topic, partition) {
            Ok(found) => found,
            Err(rejection) => return rejection,
        };
        let refuse = refuse_isr_change;
        if proposal.leader_epoch != record.leader_epoch {
            return refuse(IsrChangeRejection::StaleLeaderEpoch, record);
        }
        if record.leader != Some(proposal.leader) {
            return refuse(IsrChangeRejection::NotLeader, record);
        }
        if proposal.partition_epoch != record.partition_epoch {
            return refuse(IsrChangeRejection::StalePartitionEpoch, record);
        }
        let invalid =
            |reason: String, record: &PartitionRecord| refuse(IsrChangeRejection::InvalidIsr { reason }, record);
        let members: BTreeSet<NodeId> = isr.iter().copied().collect();
        if members.is_empty() || members.len() != isr.len() {
            return invalid(
                format!("{topic}/{partition}: ISR {isr:?} must be non-empty and without duplicates"),
                record,
            );
        }
        if let Some(outsider) = isr.iter().find(|node_id| !record.replicas.contains(node_id)) {
            let reason =
                format!("{topic}/{partition}: ISR member {outsider} is not a replica (replicas {:?})", record.replicas);
            return invalid(reason, record);
        }
        if !members.contains(&proposal.leader) {
            return invalid(
                format!("{topic}/{partition}: ISR {isr:?} leaves out the leader {}", proposal.leader),
                record,
            );
        }
        // KIP-841: a fenced or shutting-down broker may stay in the ISR, but it may not join it.
        let ineligible = isr.iter().find(|node_id| {
            !record.isr.contains(node_id) && !brokers.get(node_id).is_some_and(BrokerRecord::is_eligible)
        });
        if let Some(ineligible) = ineligible {
            let reason =
                format!("{topic}/{partition}: broker {ineligible} is fenced or shutting down; it cannot join the ISR");
            // The leader counts a pending expansion toward its HW (KIP-841's maximal ISR) until it
            // learns the outcome, and it may have re-sent this proposal. Bumping the partition epoch
            // fences every other copy and hands the leader a new partition state, which settles its
            // pending change: without it, acks=all stalled until the stopped broker came back
            // (tests/cluster_process.rs, SIGTERM under load).
            if record.partition_epoch.0 < i32::MAX {
                bump_partition_epoch(record);
            }
            return invalid(reason, record);
        }
        if record.isr != isr {
            if record.partition_epoch.0 == i32::MAX {
                return reject(ErrorCode::InvalidRequest, format!("{topic}/{partition}: partition epoch exhausted"));
            }
            let before = std::mem::take(&mut record.isr);
            set_isr(record, &before, isr.to_vec(), settings.min_insync_replicas);
            bump_partition_epoch(record);
        }
        MetaResult::IsrChanged {
            leader_epoch: record.leader_epoch,
            partition_epoch: record.partition_epoch,
            isr: record.isr.clone(),
        }
    }

    fn apply_resign_leadership(
        &mut self,
        topic: &str,
        partition: u32,
        leader: NodeId,
        leader_epoch: LeaderEpoch,
    ) -> MetaResult {
        let brokers = &self.brokers;
        let eligible = |candidate: NodeId| brokers.get(&candidate).is_some_and(BrokerRecord::is_eligible);
        let (record, settings) = match find_partition(&mut self.topics, topic, partition) {
            Ok(found) => found,
            Err(rejection) => return rejection,
        };
        let (unclean_allowed, min_isr) = (settings.unclean_leader_election, settings.min_insync_replicas);
        if leader_epoch != record.leader_epoch {
            return refuse_isr_change(IsrChangeRejection::StaleLeaderEpoch, record);
        }
        if record.leader != Some(leader) {
            return refuse_isr_change(IsrChangeRejection::NotLeader, record);
        }
        if record.leader_epoch.0 == i32::MAX || record.partition_epoch.0 == i32::MAX {
            return reject(ErrorCode::InvalidRequest, format!("{topic}/{partition}: epochs exhausted"));
        }
        // The resigner may have lost records the high watermark covers, so it is no longer known to
        // hold every committed offset: it leaves the ISR (never for the ELR). With other members,
        // the clean election cannot pick it; with none eligible the partition waits for them,
        // offline. As the last member it hands the ISR to the eligible leader replicas, which hold
        // every committed offset (KIP-966), and the partition waits, offline, for one of them if
        // none is eligible. With no ELR either it stays: nobody else is known to hold more.
        let before = std::mem::take(&mut record.isr);
        let after: Vec<NodeId> = if before.len() > 1 {
            before.iter().copied().filter(|member| *member != leader).collect()
        } else if !record.elr.is_empty() {
            let elr = std::mem::take(&mut record.elr);
            record.replicas.iter().copied().filter(|replica| elr.contains(replica)).collect()
        } else {
            before.clone()
        };
        let resigner_left = !after.contains(&leader);
        set_isr(record, &before, after, min_isr);
        if resigner_left {
            record.elr.retain(|member| *member != leader);
        }
        elect_into(record, &eligible, unclean_allowed, min_isr);
        // The last ISR member keeps leading (or an unclean election picked it again): in a new epoch
        // all the same, so it never writes on in the epoch its followers hold batches of.
        if record.leader_epoch == leader_epoch {
            bump_leader_epoch(record);
        }
        bump_partition_epoch(record);
        MetaResult::LeadershipResigned {
            leader: record.leader,
            leader_epoch: record.leader_epoch,
            partition_epoch: record.partition_epoch,
            isr: record.isr.clone(),
        }
    }
}

/// A partition's ISR, leader and ELR against its replicas (`validate_topic`).
/// `topic/partition` in an invariant's message, formatted only when one is broken (the checks run
/// over every partition after every applied entry in debug and simulation builds).
struct PartitionAt<'a>(&'a str, u32);

impl std::fmt::Display for PartitionAt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

fn validate_leadership(
    at: &PartitionAt<'_>,
    partition: &PartitionRecord,
    replicas: &BTreeSet<NodeId>,
    min_insync_replicas: u32,
) -> Result<(), String> {
    let isr: BTreeSet<NodeId> = partition.isr.iter().copied().collect();
    if isr.is_empty() || isr.len() != partition.isr.len() {
        return Err(format!("{at} has an empty ISR or duplicates in it: {:?}", partition.isr));
    }
    if !isr.is_subset(replicas) {
        return Err(format!("{at}: ISR {:?} is not within replicas {:?}", partition.isr, partition.replicas));
    }
    if let Some(leader) = partition.leader {
        if !isr.contains(&leader) {
            return Err(format!("{at}: leader {leader} is not in ISR {:?}", partition.isr));
        }
    }
    let elr: BTreeSet<NodeId> = partition.elr.iter().copied().collect();
    if elr.len() != partition.elr.len() || !elr.is_subset(replicas) || !elr.is_disjoint(&isr) {
        return Err(format!(
            "{at}: ELR {:?} repeats a member, leaves the replicas {:?} or overlaps the ISR {:?}",
            partition.elr, partition.replicas, partition.isr
        ));
    }
    if !elr.is_empty() && isr.len() as u32 >= min_insync_replicas {
        return Err(format!(
            "{at}: ELR {:?} kept beside an ISR {:?} at min_insync_replicas {}",
            partition.elr, partition.isr, min_insync_replicas
        ));
    }
    Ok(())
}

/// A topic's settings that partition changes need.
#[derive(Clone, Copy)]
struct TopicSettings {
    unclean_leader_election: bool,
    min_insync_replicas: u32,
}

/// The partition a leader or ISR change addresses, and its topic's settings.
fn find_partition<'a>(
    topics: &'a mut BTreeMap<String, TopicRecord>,
    topic: &str,
    partition: u32,
) -> Result<(&'a mut PartitionRecord, TopicSettings), MetaResult> {
    let Some(record) = topics.get_mut(topic) else {
        return Err(reject(ErrorCode::UnknownTopic, format!("unknown topic {topic:?}")));
    };
    let n_partitions = record.partitions.len();
    let settings = TopicSettings {
        unclean_leader_election: record.unclean_leader_election,
        min_insync_replicas: record.min_insync_replicas,
    };
    match record.partitions.get_mut(partition as usize) {
        Some(partition_record) => Ok((partition_record, settings)),
        None => Err(reject(
            ErrorCode::UnknownPartition,
            format!("topic {topic:?} has {n_partitions} partitions; there is no partition {partition}"),
        )),
    }
}

/// A refused `ChangeIsr` or `ResignLeadership`, with the partition's state as it is.
fn refuse_isr_change(reason: IsrChangeRejection, record: &PartitionRecord) -> MetaResult {
    MetaResult::IsrChangeRejected {
        reason,
        leader: record.leader,
        leader_epoch: record.leader_epoch,
        partition_epoch: record.partition_epoch,
        isr: record.isr.clone(),
    }
}

/// How a registration treats a broker that registered before (a new incarnation).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Incarnation {
    /// `RegisterBroker` (format 3): the partitions it leads get new epochs.
    NewEpochs,
    /// `RegisterBrokerFormat2`: as formats 1 and 2 applied it, epochs unchanged.
    SameEpochs,
}

/// A `CreateTopic`'s settings.
struct TopicConfig {
    replication: u32,
    min_insync_replicas: Option<u32>,
    unclean_leader_election: bool,
    log: LogSettings,
}

/// Who proposes a `ChangeIsr`, and the view it had.
#[derive(Clone, Copy)]
struct IsrProposal {
    leader: NodeId,
    leader_epoch: LeaderEpoch,
    partition_epoch: PartitionEpoch,
}

/// Runs [`elect_leader`] on `partition` and records the outcome (an ELR winner becomes the ISR and
/// the members it replaces join the ELR; an unclean winner resets the ISR to itself, empties the ELR and is counted). Bumps the leader epoch
/// when the leader changes; returns whether it did. The caller bumps the partition epoch.
fn elect_into(
    partition: &mut PartitionRecord,
    eligible: &impl Fn(NodeId) -> bool,
    unclean_allowed: bool,
    min_isr: u32,
) -> bool {
    let leader = match elect_leader(&partition.replicas, &partition.isr, &partition.elr, eligible, unclean_allowed) {
        Election::Clean(leader) => Some(leader),
        Election::FromElr(leader) => {
            // The ineligible ISR members it replaces hold every committed offset too: they go to
            // the ELR (below min ISR), as any member leaving such an ISR does.
            let before = std::mem::take(&mut partition.isr);
            set_isr(partition, &before, vec![leader], min_isr);
            Some(leader)
        }
        Election::Unclean(leader) => {
            partition.isr = vec![leader];
            partition.elr.clear();
            partition.unclean_elections += 1;
            Some(leader)
        }
        Election::Offline => None,
    };
    if leader == partition.leader {
        return false;
    }
    partition.leader = leader;
    bump_leader_epoch(partition);
    true
}

/// Replaces the partition's ISR (`before`, already taken out of it) with `after` and keeps the ELR
/// (KIP-966): a member that left while the ISR is below `min_isr` joins it (it holds every committed
/// offset: the HW stays put below the minimum); members of the new ISR leave it; an ISR back at the
/// minimum empties it (the HW moves on without them). The caller bumps the partition epoch.
fn set_isr(partition: &mut PartitionRecord, before: &[NodeId], after: Vec<NodeId>, min_isr: u32) {
    if (after.len() as u32) < min_isr {
        for left in before.iter().filter(|member| !after.contains(member)) {
            if !partition.elr.contains(left) {
                partition.elr.push(*left);
            }
        }
        partition.elr.retain(|member| !after.contains(member));
    } else {
        partition.elr.clear();
    }
    partition.isr = after;
}

/// Epochs are i32 (Kafka's width); two billion changes of one partition do not happen, and an epoch
/// that wrapped would un-fence every stale leader, so running out is a stop, not a wrap.
fn bump_leader_epoch(partition: &mut PartitionRecord) {
    partition.leader_epoch.0 = partition.leader_epoch.0.checked_add(1).expect("leader epoch exhausted");
}

fn bump_partition_epoch(partition: &mut PartitionRecord) {
    partition.partition_epoch.0 = partition.partition_epoch.0.checked_add(1).expect("partition epoch exhausted");
}

/// Encodes a command for a Raft entry: magic, version, JSON, CRC32C.
pub fn encode_command(command: &MetaCommand) -> Vec<u8> {
    let payload = serde_json::to_vec(command).expect("MetaCommand serializes to JSON");
    encode_envelope(COMMAND_MAGIC, COMMAND_FORMAT_VERSION, &payload)
}

/// Decodes a Raft entry's command. Never panics: garbage, corruption, an unknown version or an
/// oversized entry is a typed error.
pub fn decode_command(bytes: &[u8]) -> Result<MetaCommand, MetaStateError> {
    let (version, payload) = decode_envelope(bytes, COMMAND_MAGIC, COMMAND_FORMAT_VERSION, COMMAND_BYTES_MAX)?;
    if version == 1 && payload.starts_with(b"{\"ChangeIsr\"") {
        return Err(MetaStateError::Retired {
            version,
            command: "ChangeIsr",
            why: "it named no proposer and no partition epoch, and no server ever proposed it",
        });
    }
    let command = serde_json::from_slice(payload).map_err(|error| MetaStateError::Malformed(error.to_string()))?;
    match command {
        // Formats 1 and 2 applied a re-registration without new epochs; replaying an old entry must
        // do the same (module doc, "Formats, version 3").
        MetaCommand::RegisterBroker { node_id, addr, now_ms, .. } if version <= 2 => {
            Ok(MetaCommand::RegisterBrokerFormat2 { node_id, addr, now_ms })
        }
        MetaCommand::ResignLeadership { .. } | MetaCommand::RegisterBrokerFormat2 { .. } if version <= 2 => {
            Err(MetaStateError::Malformed(format!("a command format {version} did not have")))
        }
        MetaCommand::AlterTopic { .. } if version <= 3 => {
            Err(MetaStateError::Malformed(format!("a command format {version} did not have")))
        }
        // Formats 1 to 3 kept every record: an old create replays as "retain forever" (module doc,
        // "Formats, version 4"). Formats 1 to 4 had no cleanup policy: an old create or alter
        // replays as those builds applied it, `delete` (module doc, "Formats, version 5"; their
        // entries carry neither field, and those builds ignored fields they did not know).
        MetaCommand::CreateTopic { mut log, .. } | MetaCommand::AlterTopic { mut log, .. } if version <= 4 => {
            if version <= 3 {
                log.retention_ms = Some(-1);
                log.retention_bytes = Some(-1);
            }
            log.cleanup_policy = None;
            log.delete_retention_ms = None;
            Ok(command_with_log(command, log))
        }
        command => Ok(command),
    }
}

/// `command` with `log` as its log settings, if it is a `CreateTopic` or an `AlterTopic`.
fn command_with_log(mut command: MetaCommand, new_log: LogSettingsChange) -> MetaCommand {
    if let MetaCommand::CreateTopic { log, .. } | MetaCommand::AlterTopic { log, .. } = &mut command {
        *log = new_log;
    }
    command
}

fn encode_envelope(magic: &[u8; 4], version: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE_BYTES + payload.len());
    out.extend_from_slice(magic);
    out.push(version);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Checks and strips the envelope; returns the format version (`FORMAT_VERSION_MIN..=version`) and
/// the payload.
fn decode_envelope<'a>(
    bytes: &'a [u8],
    magic: &[u8; 4],
    version: u8,
    bytes_max: usize,
) -> Result<(u8, &'a [u8]), MetaStateError> {
    if bytes.len() < ENVELOPE_BYTES {
        return Err(MetaStateError::Truncated { bytes: bytes.len(), minimum: ENVELOPE_BYTES });
    }
    if bytes.len() > bytes_max {
        return Err(MetaStateError::TooLarge { bytes: bytes.len(), max: bytes_max });
    }
    let found: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    if &found != magic {
        return Err(MetaStateError::BadMagic { found, expected: *magic });
    }
    if !(FORMAT_VERSION_MIN..=version).contains(&bytes[4]) {
        return Err(MetaStateError::UnsupportedVersion { version: bytes[4], supported: version });
    }
    let (covered, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_be_bytes(crc_bytes.try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(covered);
    if stored != computed {
        return Err(MetaStateError::Checksum { stored, computed });
    }
    Ok((bytes[4], &covered[5..]))
}

/// Test helper: for every partition with a leader, the `ChangeIsr` that puts all its replicas in sync
/// (what the data path proposes once the followers have caught up).
#[cfg(test)]
pub(crate) fn sync_all_replicas_commands(state: &MetadataState) -> Vec<MetaCommand> {
    let mut commands = Vec::new();
    for topic in state.topics() {
        for partition in &topic.partitions {
            if let Some(leader) = partition.leader {
                commands.push(MetaCommand::ChangeIsr {
                    topic: topic.name.clone(),
                    partition: partition.partition,
                    leader,
                    leader_epoch: partition.leader_epoch,
                    partition_epoch: partition.partition_epoch,
                    isr: partition.replicas.clone(),
                });
            }
        }
    }
    commands
}

#[cfg(test)]
#[path = "state_election_tests.rs"]
mod election_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn register(state: &mut MetadataState, node_ids: &[u64]) {
        for node_id in node_ids {
            let index = state.applied_index() + 1;
            let command = MetaCommand::RegisterBroker {
                node_id: NodeId(*node_id),
                addr: format!("10.0.0.{node_id}:9092"),
                kafka_addr: String::new(),
                now_ms: 0,
            };
            assert_eq!(state.apply(index, &command), MetaResult::Ok);
        }
    }

    fn next(state: &mut MetadataState, command: MetaCommand) -> MetaResult {
        let index = state.applied_index() + 1;
        state.apply(index, &command)
    }

    fn create(state: &mut MetadataState, name: &str, partitions: u32, replication: u32) -> MetaResult {
        next(state, create_command(name, partitions, replication))
    }

    fn create_command(name: &str, partitions: u32, replication: u32) -> MetaCommand {
        MetaCommand::CreateTopic {
            name: name.into(),
            partitions,
            replication,
            min_insync_replicas: None,
            unclean_leader_election: false,
            log: Default::default(),
        }
    }

    fn code_of(result: &MetaResult) -> ErrorCode {
        match result {
            MetaResult::Error { code, .. } => *code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Applies `command` and checks it was rejected with `code` and changed nothing but the index.
    fn assert_rejected(state: &mut MetadataState, command: MetaCommand, code: ErrorCode) -> String {
        let mut before = state.clone();
        let result = next(state, command);
        assert_eq!(code_of(&result), code, "{result:?}");
        before.applied_index = state.applied_index;
        assert_eq!(*state, before, "a rejected command changed the state");
        match result {
            MetaResult::Error { message, .. } => message,
            _ => unreachable!(),
        }
    }

    /// Per broker: (partitions led, replicas held) over all topics.
    fn load(state: &MetadataState) -> BTreeMap<u64, (u32, u32)> {
        let mut load = BTreeMap::new();
        for partition in state.topics().flat_map(|topic| &topic.partitions) {
            for (replica_idx, replica) in partition.replicas.iter().enumerate() {
                let entry = load.entry(replica.0).or_insert((0, 0));
                entry.1 += 1;
                if replica_idx == 0 {
                    entry.0 += 1;
                }
            }
        }
        load
    }

    fn cluster(n_brokers: u64) -> MetadataState {
        let mut state = MetadataState::new();
        register(&mut state, &(1..=n_brokers).collect::<Vec<_>>());
        state
    }

    #[test]
    fn the_topics_change_mark_moves_with_every_topic_change_and_is_not_state() {
        let mut state = cluster(3);
        assert!(matches!(create(&mut state, "t", 3, 3), MetaResult::TopicCreated { .. }));
        let created_at = state.applied_index();
        assert_eq!(state.topics_changed_at(), created_at);
        // Heartbeats of eligible brokers, a producer-id block and a rejected create leave it.
        for node_id in [1, 2, 3] {
            assert_eq!(
                next(&mut state, MetaCommand::BrokerHeartbeat { node_id: NodeId(node_id), now_ms: 10 }),
                MetaResult::Ok
            );
        }
        assert!(matches!(
            next(&mut state, MetaCommand::AllocateProducerIds { count: 10 }),
            MetaResult::ProducerIds { .. }
        ));
        assert_rejected(&mut state, create_command("t", 1, 1), ErrorCode::TopicAlreadyExists);
        assert_eq!(state.topics_changed_at(), created_at);
        // Fencing a broker moves leaderships and ISRs: the mark moves.
        assert_eq!(next(&mut state, MetaCommand::FenceBroker { node_id: NodeId(1), now_ms: 1_000 }), MetaResult::Ok);
        assert_eq!(state.topics_changed_at(), state.applied_index());
        // The fenced broker's heartbeat brings it back (and may elect): the mark moves again.
        assert_eq!(
            next(&mut state, MetaCommand::BrokerHeartbeat { node_id: NodeId(1), now_ms: 1_001 }),
            MetaResult::Ok
        );
        assert_eq!(state.topics_changed_at(), state.applied_index());
        let mark = state.topics_changed_at();
        assert_eq!(
            next(&mut state, MetaCommand::BrokerHeartbeat { node_id: NodeId(1), now_ms: 1_002 }),
            MetaResult::Ok
        );
        assert_eq!(state.topics_changed_at(), mark);
        // Not part of the state: a restored snapshot is equal and hashes the same, and its mark is
        // the snapshot's index (anything may have changed up to it).
        let restored = MetadataState::restore(&state.snapshot()).unwrap();
        assert_eq!(restored, state);
        assert_eq!(restored.state_hash(), state.state_hash());
        assert_eq!(restored.topics_changed_at(), state.applied_index());
        assert_eq!(MetadataState::new().topics_changed_at(), 0);
    }

    #[test]
    fn register_heartbeat_and_fence() {
        let mut state = MetadataState::new();
        let register = MetaCommand::RegisterBroker {
            node_id: NodeId(1),
            addr: "a:1".into(),
            kafka_addr: String::new(),
            now_ms: 100,
        };
        assert_eq!(state.apply(5, &register), MetaResult::Ok);
        let broker = state.broker(NodeId(1)).unwrap();
        assert_eq!(
            (broker.addr.as_str(), broker.fenced, broker.last_heartbeat_ms, broker.registered_index),
            ("a:1", false, 100, 5)
        );

        assert_eq!(next(&mut state, MetaCommand::BrokerHeartbeat { node_id: NodeId(1), now_ms: 250 }), MetaResult::Ok);
        assert_eq!(state.broker(NodeId(1)).unwrap().last_heartbeat_ms, 250);
        // A lagging clock never moves the stamp backwards, and every heartbeat moves it forwards.
        assert_eq!(next(&mut state, MetaCommand::BrokerHeartbeat { node_id: NodeId(1), now_ms: 200 }), MetaResult::Ok);
        assert_eq!(state.broker(NodeId(1)).unwrap().last_heartbeat_ms, 251);
        // A fence decided on the stamp before a heartbeat is stale.
        let stale = MetaCommand::FenceBroker { node_id: NodeId(1), now_ms: 251 };
        assert!(matches!(next(&mut state, stale), MetaResult::Error { .. }));

        assert!(state.brokers_to_fence(1251, 1000).is_empty(), "exactly the timeout is not older than it");
        assert_eq!(state.brokers_to_fence(1252, 1000), vec![NodeId(1)]);
        assert_eq!(state.alive_heartbeat_stamps(), vec![(NodeId(1), 251)]);
        assert_eq!(next(&mut state, MetaCommand::FenceBroker { node_id: NodeId(1), now_ms: 252 }), MetaResult::Ok);
        assert!(state.alive_heartbeat_stamps().is_empty());
        assert!(state.broker(NodeId(1)).unwrap().fenced);
        assert!(state.brokers_to_fence(5000, 1000).is_empty(), "already fenced");
        // Fencing again (a new leader re-proposing) is a harmless no-op.
        assert_eq!(next(&mut state, MetaCommand::FenceBroker { node_id: NodeId(1), now_ms: 1300 }), MetaResult::Ok);

        // A heartbeat unfences.
        assert_eq!(next(&mut state, MetaCommand::BrokerHeartbeat { node_id: NodeId(1), now_ms: 1400 }), MetaResult::Ok);
        assert!(state.broker(NodeId(1)).unwrap().is_alive());
        // So does a re-registration, which may change the address.
        assert_eq!(next(&mut state, MetaCommand::FenceBroker { node_id: NodeId(1), now_ms: 3000 }), MetaResult::Ok);
        let reregister = MetaCommand::RegisterBroker {
            node_id: NodeId(1),
            addr: "b:2".into(),
            kafka_addr: String::new(),
            now_ms: 3100,
        };
        assert_eq!(state.apply(20, &reregister), MetaResult::Ok);
        let broker = state.broker(NodeId(1)).unwrap();
        assert_eq!((broker.addr.as_str(), broker.fenced, broker.registered_index), ("b:2", false, 20));
        assert_eq!(state.applied_index(), 20);
    }

    #[test]
    fn broker_rejections() {
        let mut state = cluster(1);
        let message = assert_rejected(
            &mut state,
            MetaCommand::BrokerHeartbeat { node_id: NodeId(9), now_ms: 1 },
            ErrorCode::InvalidRequest,
        );
        assert!(message.contains("unknown broker 9"), "{message}");
        assert_rejected(
            &mut state,
            MetaCommand::FenceBroker { node_id: NodeId(9), now_ms: 1 },
            ErrorCode::InvalidRequest,
        );
        assert_rejected(
            &mut state,
            MetaCommand::RegisterBroker {
                node_id: NodeId(2),
                addr: String::new(),
                kafka_addr: String::new(),
                now_ms: 1,
            },
            ErrorCode::InvalidRequest,
        );
        assert_rejected(
            &mut state,
            MetaCommand::RegisterBroker {
                node_id: NodeId(2),
                addr: "x".repeat(BROKER_ADDR_BYTES_MAX + 1),
                kafka_addr: String::new(),
                now_ms: 1,
            },
            ErrorCode::InvalidRequest,
        );
        // A fence decided before a heartbeat that was applied since is stale.
        assert_eq!(next(&mut state, MetaCommand::BrokerHeartbeat { node_id: NodeId(1), now_ms: 500 }), MetaResult::Ok);
        let message = assert_rejected(
            &mut state,
            MetaCommand::FenceBroker { node_id: NodeId(1), now_ms: 500 },
            ErrorCode::InvalidRequest,
        );
        assert!(message.contains("not fencing broker 1"), "{message}");
    }

    #[test]
    fn create_topic_happy_path() {
        let mut state = cluster(3);
        let result = create(&mut state, "orders", 2, 3);
        let MetaResult::TopicCreated { assignment } = result else { panic!("{result:?}") };
        let topic = state.topic("orders").unwrap();
        assert_eq!(topic.created_index, state.applied_index());
        assert_eq!(topic.partitions.len(), 2);
        for (assigned, partition) in assignment.iter().zip(&topic.partitions) {
            assert_eq!(assigned.partition, partition.partition);
            assert_eq!(assigned.replicas, partition.replicas);
            assert_eq!(assigned.leader, assigned.replicas[0]);
            assert_eq!(partition.leader, Some(assigned.leader));
            // Only the leader holds data at creation (followers join the ISR once caught up).
            assert_eq!(partition.isr, vec![assigned.leader]);
            assert_eq!(partition.leader_epoch, LeaderEpoch(0));
        }
        assert_ne!(assignment[0].leader, assignment[1].leader);
    }

    /// Log settings (format 4): a new topic gets Kafka's defaults plus what it sets, `AlterTopic`
    /// replaces what it sets after the same checks, an older create or snapshot keeps everything.
    #[test]
    fn log_settings_on_create_alter_and_from_older_formats() {
        let mut state = cluster(1);
        create(&mut state, "t", 1, 1);
        let expected = LogSettings { retention_ms: RETENTION_MS_DEFAULT, ..LogSettings::default() };
        assert_eq!(state.topic("t").unwrap().log, expected);
        let set =
            LogSettingsChange { retention_ms: Some(60_000), segment_bytes: Some(4096), ..LogSettingsChange::default() };
        let with_log = |name: &str, log: LogSettingsChange| command_with_log(create_command(name, 1, 1), log);
        let command = with_log("u", set);
        assert!(matches!(next(&mut state, command), MetaResult::TopicCreated { .. }));
        let u = state.topic("u").unwrap().log;
        assert_eq!((u.retention_ms, u.retention_bytes, u.segment_bytes), (60_000, -1, Some(4096)));

        let alter = |log| MetaCommand::AlterTopic { name: "u".into(), log };
        let bytes_only = LogSettingsChange { retention_bytes: Some(1 << 20), ..LogSettingsChange::default() };
        assert_eq!(next(&mut state, alter(bytes_only)), MetaResult::Ok);
        let u = state.topic("u").unwrap().log;
        assert_eq!((u.retention_ms, u.retention_bytes, u.segment_bytes), (60_000, 1 << 20, Some(4096)));
        for bad in [
            LogSettingsChange { retention_ms: Some(0), ..LogSettingsChange::default() },
            LogSettingsChange { retention_ms: Some(-2), ..LogSettingsChange::default() },
            LogSettingsChange { retention_bytes: Some(0), ..LogSettingsChange::default() },
            LogSettingsChange { segment_bytes: Some(SEGMENT_BYTES_MIN - 1), ..LogSettingsChange::default() },
            LogSettingsChange { segment_bytes: Some(SEGMENT_BYTES_MAX + 1), ..LogSettingsChange::default() },
        ] {
            assert_rejected(&mut state, alter(bad), ErrorCode::InvalidConfig);
            assert_rejected(&mut state, with_log("v", bad), ErrorCode::InvalidConfig);
        }
        assert_eq!(state.topic("u").unwrap().log.retention_bytes, 1 << 20, "a refused alter changes nothing");
        let unknown = MetaCommand::AlterTopic { name: "nope".into(), log: bytes_only };
        assert_rejected(&mut state, unknown, ErrorCode::UnknownTopic);
        let restored = MetadataState::restore(&state.snapshot()).unwrap();
        assert_eq!(restored.topic("u").unwrap().log, state.topic("u").unwrap().log);

        // A version-3 create (no `log`) replays as "retain forever"; a version-3 AlterTopic cannot exist.
        let v3 = encode_envelope(COMMAND_MAGIC, 3, br#"{"CreateTopic":{"name":"w","partitions":1,"replication":1}}"#);
        let MetaCommand::CreateTopic { log, .. } = decode_command(&v3).unwrap() else { panic!("not a create") };
        assert_eq!(LogSettings::for_new_topic(&log), LogSettings::default());
        let v3_alter = encode_envelope(COMMAND_MAGIC, 3, br#"{"AlterTopic":{"name":"w","log":{}}}"#);
        assert!(matches!(decode_command(&v3_alter), Err(MetaStateError::Malformed(_))));
        // A version-2 snapshot (no `log` in its topics) restores keeping everything.
        let payload = String::from_utf8(state.canonical_payload()).unwrap();
        let v2_payload = payload.replace(
            r#","log":{"retention_ms":60000,"retention_bytes":1048576,"segment_bytes":4096,"cleanup_policy":"delete","delete_retention_ms":86400000}"#,
            "",
        );
        assert_ne!(v2_payload, payload);
        let v2 = encode_envelope(SNAPSHOT_MAGIC, 2, v2_payload.as_bytes());
        assert_eq!(MetadataState::restore(&v2).unwrap().topic("u").unwrap().log, LogSettings::default());
    }

    /// Cleanup policy and `delete_retention_ms` (command format 5, snapshot format 4): a new topic
    /// gets `delete` and a day, `with` sets them, `validate` wants a tombstone time of at least 0.
    #[test]
    fn cleanup_policy_and_delete_retention_settings() {
        assert_eq!(CleanupPolicy::default(), CleanupPolicy::Delete);
        for policy in [CleanupPolicy::Delete, CleanupPolicy::Compact] {
            assert_eq!(CleanupPolicy::parse(policy.as_str()), Ok(policy));
        }
        assert_eq!(
            CleanupPolicy::parse("Compact"),
            Err(r#"unknown cleanup policy "Compact" (expected delete or compact)"#.to_owned())
        );
        let defaults = LogSettings::default();
        assert_eq!((defaults.cleanup_policy, defaults.delete_retention_ms), (CleanupPolicy::Delete, 86_400_000));
        let new_topic = LogSettings::for_new_topic(&LogSettingsChange::default());
        assert_eq!((new_topic.cleanup_policy, new_topic.delete_retention_ms), (CleanupPolicy::Delete, 86_400_000));

        // `with` replaces what is set and keeps the rest; `validate` wants a tombstone time >= 0.
        let compact =
            LogSettingsChange { cleanup_policy: Some(CleanupPolicy::Compact), ..LogSettingsChange::default() };
        let compacted = new_topic.with(&compact);
        assert_eq!(compacted, LogSettings { cleanup_policy: CleanupPolicy::Compact, ..new_topic });
        let tombstones = LogSettingsChange { delete_retention_ms: Some(0), ..LogSettingsChange::default() };
        assert_eq!(compacted.with(&tombstones), LogSettings { delete_retention_ms: 0, ..compacted });
        assert_eq!(compacted.with(&LogSettingsChange::default()), compacted);
        assert_eq!(compacted.with(&tombstones).validate(), Ok(()));
        let negative = LogSettings { delete_retention_ms: -1, ..compacted };
        let message = negative.validate().unwrap_err();
        assert!(message.contains("delete retention ms") && message.contains("got -1"), "{message}");
    }

    /// The same settings through the state machine and its encodings, and from older formats.
    #[test]
    fn cleanup_policy_through_the_state_machine_and_from_older_formats() {
        let compact =
            LogSettingsChange { cleanup_policy: Some(CleanupPolicy::Compact), ..LogSettingsChange::default() };
        let compacted = LogSettings::for_new_topic(&compact);
        let mut state = cluster(1);
        let create_compacted = command_with_log(create_command("c", 1, 1), compact);
        assert_eq!(decode_command(&encode_command(&create_compacted)).unwrap(), create_compacted);
        assert!(String::from_utf8_lossy(&encode_command(&create_compacted)).contains(r#""cleanup_policy":"compact""#));
        assert!(matches!(next(&mut state, create_compacted), MetaResult::TopicCreated { .. }));
        assert_eq!(state.topic("c").unwrap().log, compacted);
        let alter = |log| MetaCommand::AlterTopic { name: "c".into(), log };
        let bad = LogSettingsChange { delete_retention_ms: Some(-5), ..LogSettingsChange::default() };
        assert_rejected(&mut state, alter(bad), ErrorCode::InvalidConfig);
        let bad_create = command_with_log(create_command("d", 1, 1), bad);
        assert_rejected(&mut state, bad_create, ErrorCode::InvalidConfig);
        let alter_tombstones = alter(LogSettingsChange { delete_retention_ms: Some(1000), ..compact });
        assert_eq!(decode_command(&encode_command(&alter_tombstones)).unwrap(), alter_tombstones);
        assert_eq!(next(&mut state, alter_tombstones), MetaResult::Ok);
        let c = state.topic("c").unwrap().log;
        assert_eq!((c.cleanup_policy, c.delete_retention_ms), (CleanupPolicy::Compact, 1000));
        let restored = MetadataState::restore(&state.snapshot()).unwrap();
        assert_eq!(restored.topic("c").unwrap().log, c);

        // A version-4 create and alter (no policy, no tombstone time) read as `delete` and a day,
        // and as that build applied them: it ignored fields it did not know.
        let v4 = encode_envelope(
            COMMAND_MAGIC,
            4,
            br#"{"CreateTopic":{"name":"w","partitions":1,"replication":1,"log":{"retention_ms":60000}}}"#,
        );
        let MetaCommand::CreateTopic { log, .. } = decode_command(&v4).unwrap() else { panic!("not a create") };
        let w = LogSettings::for_new_topic(&log);
        assert_eq!(w, LogSettings { retention_ms: 60_000, ..LogSettings::default() });
        let v4_alter = encode_envelope(
            COMMAND_MAGIC,
            4,
            br#"{"AlterTopic":{"name":"c","log":{"retention_ms":5000,"cleanup_policy":"delete"}}}"#,
        );
        let MetaCommand::AlterTopic { log, .. } = decode_command(&v4_alter).unwrap() else { panic!("not an alter") };
        assert_eq!(log, LogSettingsChange { retention_ms: Some(5000), ..LogSettingsChange::default() });
        // A version-3 snapshot (no policy, no tombstone time in its topics) restores as `delete`.
        let payload = String::from_utf8(state.canonical_payload()).unwrap();
        let v3_payload = payload.replace(r#","cleanup_policy":"compact","delete_retention_ms":1000"#, "");
        assert_ne!(v3_payload, payload);
        let v3 = encode_envelope(SNAPSHOT_MAGIC, 3, v3_payload.as_bytes());
        let old = MetadataState::restore(&v3).unwrap().topic("c").unwrap().log;
        assert_eq!(old, LogSettings { cleanup_policy: CleanupPolicy::Delete, delete_retention_ms: 86_400_000, ..c });
    }

    #[test]
    fn create_topic_rejections() {
        let mut state = cluster(2);
        assert_eq!(
            create(&mut state, "t", 1, 1),
            MetaResult::TopicCreated {
                assignment: vec![PartitionAssignment { partition: 0, replicas: vec![NodeId(1)], leader: NodeId(1) }]
            }
        );
        let command = create_command;
        assert_rejected(&mut state, command("t", 1, 1), ErrorCode::TopicAlreadyExists);
        for bad_name in ["", ".", "..", "a b", "ü", &"x".repeat(250)] {
            assert_rejected(&mut state, command(bad_name, 1, 1), ErrorCode::InvalidTopicName);
        }
        assert_rejected(&mut state, command("u", 0, 1), ErrorCode::InvalidPartitions);
        assert_rejected(&mut state, command("u", PARTITIONS_PER_TOPIC_MAX + 1, 1), ErrorCode::InvalidPartitions);
        assert_rejected(&mut state, command("u", 1, 0), ErrorCode::InvalidReplication);
        let message = assert_rejected(&mut state, command("u", 1, 3), ErrorCode::InvalidReplication);
        assert_eq!(message, "replication factor 3 is larger than the 2 live brokers");
        // Fenced brokers do not count as live.
        assert_eq!(next(&mut state, MetaCommand::FenceBroker { node_id: NodeId(2), now_ms: 1 }), MetaResult::Ok);
        let message = assert_rejected(&mut state, command("u", 1, 2), ErrorCode::InvalidReplication);
        assert_eq!(message, "replication factor 2 is larger than the 1 live brokers");
        assert!(!create(&mut state, "u", PARTITIONS_PER_TOPIC_MAX, 1).is_error());
        assert!(state.topic("u").unwrap().partitions.iter().all(|p| p.replicas == vec![NodeId(1)]));
    }

    #[test]
    fn delete_topic() {
        let mut state = cluster(1);
        assert_rejected(&mut state, MetaCommand::DeleteTopic { name: "t".into() }, ErrorCode::UnknownTopic);
        create(&mut state, "t", 1, 1);
        let first_created = state.topic("t").unwrap().created_index;
        assert_eq!(next(&mut state, MetaCommand::DeleteTopic { name: "t".into() }), MetaResult::Ok);
        assert!(state.topic("t").is_none());
        assert_rejected(&mut state, MetaCommand::DeleteTopic { name: "t".into() }, ErrorCode::UnknownTopic);
        // A re-created topic is a new incarnation.
        create(&mut state, "t", 1, 1);
        assert!(state.topic("t").unwrap().created_index > first_created);
    }

    #[test]
    fn topics_are_sorted_by_name() {
        let mut state = cluster(1);
        for name in ["b", "c", "a"] {
            create(&mut state, name, 1, 1);
        }
        assert_eq!(state.topics().map(|topic| topic.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    }

    #[test]
    fn assignment_is_balanced_within_a_topic() {
        let mut state = cluster(3);
        let MetaResult::TopicCreated { assignment } = create(&mut state, "t", 6, 2) else { panic!() };
        for assigned in &assignment {
            let distinct: BTreeSet<_> = assigned.replicas.iter().collect();
            assert_eq!(distinct.len(), 2, "{assigned:?}");
        }
        assert_eq!(load(&state), BTreeMap::from([(1, (2, 4)), (2, (2, 4)), (3, (2, 4))]));
    }

    #[test]
    fn assignment_spreads_across_topics() {
        // One partition per topic must not pile onto broker 1.
        let mut state = cluster(4);
        for topic_idx in 0..8 {
            create(&mut state, &format!("t{topic_idx}"), 1, 2);
        }
        assert_eq!(load(&state), BTreeMap::from([(1, (2, 4)), (2, (2, 4)), (3, (2, 4)), (4, (2, 4))]));
        // Uneven sizes still end within one of each other.
        let mut state = cluster(3);
        for (topic_idx, partitions) in [5, 1, 2, 4, 3].into_iter().enumerate() {
            create(&mut state, &format!("t{topic_idx}"), partitions, 2);
        }
        let counts = load(&state);
        let leaders: Vec<u32> = counts.values().map(|(leaders, _)| *leaders).collect();
        let replicas: Vec<u32> = counts.values().map(|(_, replicas)| *replicas).collect();
        assert_eq!(leaders.iter().sum::<u32>(), 15);
        assert!(leaders.iter().max().unwrap() - leaders.iter().min().unwrap() <= 1, "{counts:?}");
        assert!(replicas.iter().max().unwrap() - replicas.iter().min().unwrap() <= 1, "{counts:?}");
    }

    #[test]
    fn assignment_stays_within_one_over_many_topic_mixes() {
        // Greedy placement keeps every broker within one leader and one replica of every other,
        // after every topic, for 1-6 brokers, every replication factor and pseudo-random topic sizes.
        for n_brokers in 1..=6u64 {
            for replication in 1..=n_brokers as u32 {
                for seed in 1..=60u64 {
                    let mut state = cluster(n_brokers);
                    let mut random = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    for topic_idx in 0..(1 + seed % 10) {
                        random ^= random << 13;
                        random ^= random >> 7;
                        random ^= random << 17;
                        let partitions = 1 + (random % 7) as u32;
                        assert!(!create(&mut state, &format!("t{topic_idx}"), partitions, replication).is_error());
                        let mut counts: BTreeMap<u64, (u32, u32)> =
                            (1..=n_brokers).map(|node| (node, (0, 0))).collect();
                        counts.extend(load(&state));
                        let spread = |pick: fn(&(u32, u32)) -> u32| {
                            let values: Vec<u32> = counts.values().map(pick).collect();
                            values.iter().max().unwrap() - values.iter().min().unwrap()
                        };
                        assert!(
                            spread(|(leaders, _)| *leaders) <= 1 && spread(|(_, replicas)| *replicas) <= 1,
                            "brokers={n_brokers} replication={replication} seed={seed}: {counts:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn assignment_uses_live_brokers_and_fills_a_new_one() {
        let mut state = cluster(3);
        next(&mut state, MetaCommand::FenceBroker { node_id: NodeId(2), now_ms: 1 });
        let MetaResult::TopicCreated { assignment } = create(&mut state, "a", 4, 2) else { panic!() };
        assert!(assignment.iter().all(|assigned| !assigned.replicas.contains(&NodeId(2))), "{assignment:?}");
        // A broker that joins later takes the next partitions until it catches up.
        register(&mut state, &[4]);
        let MetaResult::TopicCreated { assignment } = create(&mut state, "b", 2, 1) else { panic!() };
        assert_eq!(assignment.iter().map(|assigned| assigned.leader).collect::<Vec<_>>(), [NodeId(4), NodeId(4)]);
    }

    #[test]
    fn producer_ids_are_handed_out_upward_and_never_reused() {
        let mut state = MetadataState::new();
        assert_eq!(
            next(&mut state, MetaCommand::AllocateProducerIds { count: 10 }),
            MetaResult::ProducerIds { first: ProducerId(0), count: 10 }
        );
        assert_eq!(
            next(&mut state, MetaCommand::AllocateProducerIds { count: 5 }),
            MetaResult::ProducerIds { first: ProducerId(10), count: 5 }
        );
        assert_rejected(&mut state, MetaCommand::AllocateProducerIds { count: 0 }, ErrorCode::InvalidRequest);
        assert_rejected(
            &mut state,
            MetaCommand::AllocateProducerIds { count: PRODUCER_ID_BLOCK_COUNT_MAX + 1 },
            ErrorCode::InvalidRequest,
        );
        assert_eq!(state.next_producer_id(), ProducerId(15));
        // Exhaustion is a rejection, not an overflow.
        state.next_producer_id = ProducerId(i64::MAX - 1);
        state.last_producer_id_block = Some(ProducerIdBlock { first: ProducerId(i64::MAX - 2), count: 1 });
        assert_eq!(
            next(&mut state, MetaCommand::AllocateProducerIds { count: 1 }),
            MetaResult::ProducerIds { first: ProducerId(i64::MAX - 1), count: 1 }
        );
        assert_rejected(&mut state, MetaCommand::AllocateProducerIds { count: 1 }, ErrorCode::InvalidRequest);
    }

    #[test]
    fn change_partition_leader() {
        let mut state = cluster(3);
        create(&mut state, "t", 1, 3);
        for command in sync_all_replicas_commands(&state) {
            assert!(matches!(next(&mut state, command), MetaResult::IsrChanged { .. }));
        }
        let change = |leader: Option<u64>, epoch: i32| MetaCommand::ChangePartitionLeader {
            topic: "t".into(),
            partition: 0,
            leader: leader.map(NodeId),
            expected_epoch: LeaderEpoch(epoch),
        };
        let partition = |state: &MetadataState| state.topic("t").unwrap().partitions[0].clone();
        assert_eq!(partition(&state).leader, Some(NodeId(1)));

        assert_eq!(next(&mut state, change(Some(2), 0)), MetaResult::Ok);
        assert_eq!((partition(&state).leader, partition(&state).leader_epoch), (Some(NodeId(2)), LeaderEpoch(1)));
        // Offline, then back.
        assert_eq!(next(&mut state, change(None, 1)), MetaResult::Ok);
        assert_eq!((partition(&state).leader, partition(&state).leader_epoch), (None, LeaderEpoch(2)));
        assert_eq!(next(&mut state, change(Some(3), 2)), MetaResult::Ok);
        assert_eq!(partition(&state).leader_epoch, LeaderEpoch(3));
        // The same leader again changes nothing.
        assert_eq!(next(&mut state, change(Some(3), 3)), MetaResult::Ok);
        assert_eq!(partition(&state).leader_epoch, LeaderEpoch(3));

        let message = assert_rejected(&mut state, change(Some(1), 0), ErrorCode::NotLeader);
        assert!(message.contains("stale leader epoch"), "{message}");
        assert_rejected(&mut state, change(Some(9), 3), ErrorCode::InvalidRequest);
        let unknown_topic = MetaCommand::ChangePartitionLeader {
            topic: "nope".into(),
            partition: 0,
            leader: None,
            expected_epoch: LeaderEpoch(0),
        };
        assert_rejected(&mut state, unknown_topic, ErrorCode::UnknownTopic);
        let unknown_partition = MetaCommand::ChangePartitionLeader {
            topic: "t".into(),
            partition: 1,
            leader: None,
            expected_epoch: LeaderEpoch(3),
        };
        assert_rejected(&mut state, unknown_partition, ErrorCode::UnknownPartition);
        // A fenced broker cannot become leader (fencing took it out of the ISR), and a leader must be
        // in the ISR.
        next(&mut state, MetaCommand::FenceBroker { node_id: NodeId(1), now_ms: 10 });
        assert_eq!(partition(&state).isr, [NodeId(2), NodeId(3)]);
        assert_rejected(&mut state, change(Some(1), 3), ErrorCode::InvalidRequest);
        let shrink = MetaCommand::ChangeIsr {
            topic: "t".into(),
            partition: 0,
            leader: NodeId(3),
            leader_epoch: LeaderEpoch(3),
            partition_epoch: partition(&state).partition_epoch,
            isr: vec![NodeId(3)],
        };
        assert!(matches!(next(&mut state, shrink), MetaResult::IsrChanged { .. }));
        let message = assert_rejected(&mut state, change(Some(2), 3), ErrorCode::InvalidRequest);
        assert!(message.contains("not in ISR"), "{message}");
    }

    #[test]
    fn change_isr_unknown_topic_and_partition() {
        let mut state = cluster(3);
        create(&mut state, "t", 1, 3);
        let change = |topic: &str, partition| MetaCommand::ChangeIsr {
            topic: topic.into(),
            partition,
            leader: NodeId(1),
            leader_epoch: LeaderEpoch(0),
            partition_epoch: PartitionEpoch(0),
            isr: vec![NodeId(1)],
        };
        assert_rejected(&mut state, change("x", 0), ErrorCode::UnknownTopic);
        assert_rejected(&mut state, change("t", 1), ErrorCode::UnknownPartition);
    }

    #[test]
    #[should_panic(expected = "applied once, in order")]
    fn reapplying_an_index_panics() {
        let mut state = MetadataState::new();
        state.apply(3, &MetaCommand::AllocateProducerIds { count: 1 });
        state.apply(3, &MetaCommand::AllocateProducerIds { count: 1 });
    }

    fn sample_commands() -> Vec<MetaCommand> {
        vec![
            MetaCommand::RegisterBroker {
                node_id: NodeId(u64::MAX),
                addr: "h\"ost\u{1F600}:1".into(),
                kafka_addr: String::new(),
                now_ms: i64::MIN,
            },
            MetaCommand::RegisterBroker {
                node_id: NodeId(3),
                addr: "b3:9400".into(),
                kafka_addr: "b3:9092".into(),
                now_ms: 5,
            },
            MetaCommand::BrokerHeartbeat { node_id: NodeId(2), now_ms: 7 },
            MetaCommand::FenceBroker { node_id: NodeId(2), now_ms: i64::MAX },
            create_command("t", 3, 2),
            MetaCommand::CreateTopic {
                name: "u".into(),
                partitions: 1,
                replication: 3,
                min_insync_replicas: Some(3),
                unclean_leader_election: true,
                log: Default::default(),
            },
            MetaCommand::ControlledShutdown { node_id: NodeId(3), registered_index: 17 },
            MetaCommand::DeleteTopic { name: "t".into() },
            MetaCommand::AllocateProducerIds { count: u64::MAX },
            MetaCommand::ChangePartitionLeader {
                topic: "t".into(),
                partition: 1,
                leader: None,
                expected_epoch: LeaderEpoch(-1),
            },
            MetaCommand::ChangePartitionLeader {
                topic: "t".into(),
                partition: 1,
                leader: Some(NodeId(3)),
                expected_epoch: LeaderEpoch(4),
            },
            MetaCommand::ChangeIsr {
                topic: "t".into(),
                partition: 0,
                leader: NodeId(1),
                leader_epoch: LeaderEpoch(4),
                partition_epoch: PartitionEpoch(9),
                isr: vec![NodeId(1), NodeId(2)],
            },
            MetaCommand::ResignLeadership {
                topic: "t".into(),
                partition: 2,
                leader: NodeId(3),
                leader_epoch: LeaderEpoch(i32::MAX),
            },
            MetaCommand::RegisterBrokerFormat2 { node_id: NodeId(5), addr: "a:1".into(), now_ms: -1 },
        ]
    }

    #[test]
    fn command_round_trip_and_corruption() {
        for command in sample_commands() {
            let bytes = encode_command(&command);
            assert_eq!(decode_command(&bytes), Ok(command.clone()));
            for byte_idx in 0..bytes.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut corrupt = bytes.clone();
                    corrupt[byte_idx] ^= flip;
                    assert!(
                        decode_command(&corrupt).is_err(),
                        "flipping byte {byte_idx} of {command:?} went unnoticed"
                    );
                }
            }
            for len in 0..bytes.len() {
                assert!(decode_command(&bytes[..len]).is_err(), "truncation to {len} bytes went unnoticed");
            }
        }
    }

    #[test]
    fn decode_rejects_garbage_with_typed_errors() {
        assert!(matches!(decode_command(b""), Err(MetaStateError::Truncated { .. })));
        assert!(matches!(decode_command(b"garbage garbage"), Err(MetaStateError::BadMagic { .. })));
        let mut future = encode_command(&MetaCommand::DeleteTopic { name: "t".into() });
        future[4] = 6;
        assert_eq!(decode_command(&future), Err(MetaStateError::UnsupportedVersion { version: 6, supported: 5 }));
        future[4] = 0;
        assert_eq!(decode_command(&future), Err(MetaStateError::UnsupportedVersion { version: 0, supported: 5 }));
        // Valid envelope, payload that is not a command.
        let not_a_command = encode_envelope(COMMAND_MAGIC, COMMAND_FORMAT_VERSION, b"{\"Nope\":1}");
        assert!(matches!(decode_command(&not_a_command), Err(MetaStateError::Malformed(_))));
        // A snapshot is not a command.
        assert!(matches!(decode_command(&MetadataState::new().snapshot()), Err(MetaStateError::BadMagic { .. })));
        let huge = vec![0u8; COMMAND_BYTES_MAX + 1];
        assert!(matches!(decode_command(&huge), Err(MetaStateError::TooLarge { .. })));
        // Deterministic pseudo-random garbage never panics.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 8 * 8)) as u8).collect();
            if seed % 3 == 0 && bytes.len() >= 5 {
                bytes[..4].copy_from_slice(COMMAND_MAGIC);
                bytes[4] = COMMAND_FORMAT_VERSION;
            }
            let _ = decode_command(&bytes);
            let _ = MetadataState::restore(&bytes);
        }
    }

    fn busy_state() -> MetadataState {
        let mut state = cluster(3);
        create(&mut state, "a", 3, 2);
        create(&mut state, "b", 2, 3);
        next(&mut state, MetaCommand::AllocateProducerIds { count: 7 });
        next(
            &mut state,
            MetaCommand::ChangePartitionLeader {
                topic: "b".into(),
                partition: 1,
                leader: None,
                expected_epoch: LeaderEpoch(0),
            },
        );
        next(&mut state, MetaCommand::FenceBroker { node_id: NodeId(3), now_ms: 5 });
        state
    }

    #[test]
    fn snapshot_round_trip_and_corruption() {
        let state = busy_state();
        let bytes = state.snapshot();
        let restored = MetadataState::restore(&bytes).unwrap();
        assert_eq!(restored, state);
        assert_eq!(restored.state_hash(), state.state_hash());
        assert_eq!(MetadataState::restore(&MetadataState::new().snapshot()).unwrap(), MetadataState::new());
        for byte_idx in 0..bytes.len() {
            let mut corrupt = bytes.clone();
            corrupt[byte_idx] ^= 0x10;
            assert!(MetadataState::restore(&corrupt).is_err(), "flipping snapshot byte {byte_idx} went unnoticed");
        }
        let mut future = bytes.clone();
        future[4] = 9;
        assert_eq!(
            MetadataState::restore(&future),
            Err(MetaStateError::UnsupportedVersion { version: 9, supported: 4 })
        );
    }

    #[test]
    fn restore_rejects_a_well_formed_snapshot_that_breaks_an_invariant() {
        let mut state = busy_state();
        state.topics.get_mut("a").unwrap().partitions[0].isr.push(NodeId(42));
        let bytes = encode_envelope(SNAPSHOT_MAGIC, SNAPSHOT_FORMAT_VERSION, &serde_json::to_vec(&state).unwrap());
        assert!(matches!(MetadataState::restore(&bytes), Err(MetaStateError::InvalidSnapshot(_))));
    }

    #[test]
    fn users_are_kept_replaced_deleted_and_absent_from_the_encoding_while_there_are_none() {
        let mut state = MetadataState::new();
        let empty_payload = String::from_utf8(state.canonical_payload()).unwrap();
        assert!(!empty_payload.contains("users"), "no users, no key: {empty_payload}");
        let pencil = crate::auth::scram::Credential::derive("pencil", b"salt-salt-salt", 4096);
        let upsert = |name: &str, credential: &crate::auth::scram::Credential| MetaCommand::UpsertUser {
            name: name.into(),
            credential: credential.clone(),
        };
        assert_eq!(next(&mut state, upsert("alice", &pencil)), MetaResult::Ok);
        assert_eq!(state.user("alice"), Some(&pencil));
        let other = crate::auth::scram::Credential::derive("other", b"salt-salt-salt", 8192);
        assert_eq!(next(&mut state, upsert("alice", &other)), MetaResult::Ok, "a second create changes the password");
        assert_eq!(state.user("alice"), Some(&other));
        // The entry round-trips through the log encoding, and users through a snapshot.
        assert_eq!(decode_command(&encode_command(&upsert("bob", &pencil))).unwrap(), upsert("bob", &pencil));
        let restored = MetadataState::restore(&state.snapshot()).unwrap();
        assert_eq!(restored.user("alice"), Some(&other));
        assert_eq!(restored.state_hash(), state.state_hash());

        assert_rejected(&mut state, upsert("", &pencil), ErrorCode::InvalidRequest);
        assert_rejected(&mut state, upsert(" alice", &pencil), ErrorCode::InvalidRequest);
        let weak = crate::auth::scram::Credential { iterations: 100, ..pencil.clone() };
        let message = assert_rejected(&mut state, upsert("carol", &weak), ErrorCode::InvalidRequest);
        assert!(message.contains("iterations"), "{message}");
        assert_eq!(next(&mut state, MetaCommand::DeleteUser { name: "alice".into() }), MetaResult::Ok);
        assert_eq!(state.user("alice"), None);
        assert_rejected(&mut state, MetaCommand::DeleteUser { name: "alice".into() }, ErrorCode::UnknownUser);
        assert!(!String::from_utf8(state.canonical_payload()).unwrap().contains("users"));
    }

    #[test]
    fn state_hash_tells_states_apart() {
        let state = busy_state();
        assert_eq!(state.state_hash(), busy_state().state_hash());
        assert_eq!(state.state_hash(), state.clone().state_hash());
        let mut hashes = BTreeSet::from([state.state_hash(), MetadataState::new().state_hash()]);
        let mut variants = Vec::new();
        let mut other = state.clone();
        other.applied_index += 1;
        variants.push(other);
        let mut other = state.clone();
        other.topics.get_mut("a").unwrap().partitions[1].leader_epoch.0 += 1;
        variants.push(other);
        let mut other = state.clone();
        other.brokers.get_mut(&NodeId(1)).unwrap().last_heartbeat_ms += 1;
        variants.push(other);
        let mut other = state.clone();
        next(&mut other, MetaCommand::AllocateProducerIds { count: 1 });
        variants.push(other);
        for variant in &variants {
            assert_ne!(*variant, state);
            assert!(hashes.insert(variant.state_hash()), "hash collision for {variant:?}");
        }
        // Pinned: the hash must not depend on the process (no RandomState).
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn result_serde_round_trip() {
        for result in [
            MetaResult::Ok,
            MetaResult::ProducerIds { first: ProducerId(3), count: 2 },
            MetaResult::Error { code: ErrorCode::InvalidReplication, message: "m".into() },
            MetaResult::IsrChanged {
                leader_epoch: LeaderEpoch(1),
                partition_epoch: PartitionEpoch(2),
                isr: vec![NodeId(1)],
            },
            MetaResult::LeadershipResigned {
                leader: Some(NodeId(2)),
                leader_epoch: LeaderEpoch(3),
                partition_epoch: PartitionEpoch(4),
                isr: vec![NodeId(2), NodeId(3)],
            },
            MetaResult::IsrChangeRejected {
                reason: IsrChangeRejection::InvalidIsr { reason: "r".into() },
                leader: None,
                leader_epoch: LeaderEpoch(1),
                partition_epoch: PartitionEpoch(2),
                isr: vec![NodeId(1)],
            },
            MetaResult::TopicCreated {
                assignment: vec![PartitionAssignment { partition: 0, replicas: vec![NodeId(1)], leader: NodeId(1) }],
            },
        ] {
            let json = serde_json::to_string(&result).unwrap();
            assert_eq!(serde_json::from_str::<MetaResult>(&json).unwrap(), result);
        }
        assert!(serde_json::from_str::<MetaResult>(r#"{"Error":{"code":9999,"message":""}}"#).is_err());
    }

    #[test]
    fn partitions_on_lists_every_replica_a_broker_holds() {
        let mut state = cluster(4);
        create(&mut state, "b", 4, 2);
        create(&mut state, "a", 3, 3);
        for node_id in 1..=5u64 {
            let expected: Vec<(String, u64, u32)> = state
                .topics()
                .flat_map(|topic| topic.partitions.iter().map(move |p| (topic, p)))
                .filter(|(_, p)| p.replicas.contains(&NodeId(node_id)))
                .map(|(topic, p)| (topic.name.clone(), topic.created_index, p.partition))
                .collect();
            let listed: Vec<(String, u64, u32)> = state
                .partitions_on(NodeId(node_id))
                .map(|(topic, p)| (topic.name.clone(), topic.created_index, p.partition))
                .collect();
            assert_eq!(listed, expected, "broker {node_id}");
            let mut sorted = listed.clone();
            sorted.sort_by(|x, y| (&x.0, x.2).cmp(&(&y.0, y.2)));
            assert_eq!(listed, sorted, "sorted by topic, then partition");
        }
        // Leaders and followers alike: every replica of every partition is listed exactly once.
        let n_replicas: usize = (1..=4).map(|node_id| state.partitions_on(NodeId(node_id)).count()).sum();
        assert_eq!(n_replicas, 4 * 2 + 3 * 3);
        assert_eq!(state.partitions_on(NodeId(5)).count(), 0, "an unknown broker holds nothing");
        let (topic, partition) = state.partitions_on(NodeId(1)).next().unwrap();
        assert_eq!(state.partition(&topic.name, partition.partition), Some(partition));
        assert_eq!(state.partition("a", 3), None);
        assert_eq!(state.partition("nope", 0), None);
    }

    /// The data path's ISR life from creation: the leader alone, followers join one by one as they
    /// catch up, a lagging one leaves; every proposal is fenced by the partition epoch it saw.
    #[test]
    fn change_isr_grows_from_the_leader_alone() {
        let mut state = cluster(3);
        create(&mut state, "t", 1, 3);
        let created = state.partition("t", 0).unwrap().clone();
        let leader = created.leader.unwrap();
        let followers: Vec<NodeId> = created.replicas.iter().copied().filter(|r| *r != leader).collect();
        assert_eq!(
            (created.isr.clone(), created.leader_epoch, created.partition_epoch),
            (vec![leader], LeaderEpoch(0), PartitionEpoch(0))
        );
        let propose = |partition_epoch: i32, isr: Vec<NodeId>| MetaCommand::ChangeIsr {
            topic: "t".into(),
            partition: 0,
            leader,
            leader_epoch: LeaderEpoch(0),
            partition_epoch: PartitionEpoch(partition_epoch),
            isr,
        };
        let changed = |partition_epoch: i32, isr: &[NodeId]| MetaResult::IsrChanged {
            leader_epoch: LeaderEpoch(0),
            partition_epoch: PartitionEpoch(partition_epoch),
            isr: isr.to_vec(),
        };
        let one = vec![leader, followers[0]];
        let both = vec![leader, followers[0], followers[1]];
        assert_eq!(next(&mut state, propose(0, one.clone())), changed(1, &one));
        // Sent again after it applied (its answer was lost): refused as stale, and the state it
        // gets back shows the ISR it asked for.
        let refused = next(&mut state, propose(0, one.clone()));
        let MetaResult::IsrChangeRejected { reason, leader: now_leader, partition_epoch, isr, .. } = refused else {
            panic!("{refused:?}")
        };
        assert_eq!(
            (reason, now_leader, partition_epoch, &isr),
            (IsrChangeRejection::StalePartitionEpoch, Some(leader), PartitionEpoch(1), &one)
        );
        // A stale view of the second expansion is refused too, and changes nothing.
        let refused = next(&mut state, propose(0, both.clone()));
        assert!(
            matches!(refused, MetaResult::IsrChangeRejected { reason: IsrChangeRejection::StalePartitionEpoch, .. }),
            "{refused:?}"
        );
        assert_eq!(state.partition("t", 0).unwrap().isr, one);
        assert_eq!(next(&mut state, propose(1, both.clone())), changed(2, &both));
        assert!(!state.partition("t", 0).unwrap().is_under_replicated());
        // The leader must stay in its ISR.
        let refused = next(&mut state, propose(2, followers.clone()));
        assert!(
            matches!(refused, MetaResult::IsrChangeRejected { reason: IsrChangeRejection::InvalidIsr { .. }, .. }),
            "{refused:?}"
        );
        // A follower that fell behind leaves; it can come back.
        let without_last = vec![leader, followers[0]];
        assert_eq!(next(&mut state, propose(2, without_last.clone())), changed(3, &without_last));
        assert_eq!(next(&mut state, propose(3, both.clone())), changed(4, &both));
        // Down to the leader alone, at the current epoch.
        assert_eq!(next(&mut state, propose(4, vec![leader])), changed(5, &[leader]));
        assert_eq!(state.partition("t", 0).unwrap().leader_epoch, LeaderEpoch(0), "ISR changes keep the leader epoch");
    }
}
