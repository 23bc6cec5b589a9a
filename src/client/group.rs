//! Consumer groups, the client side (ADR 0020): the coordinator calls on [`Client`], and a
//! [`GroupConsumer`] that joins a group, consumes the partitions its coordinator assigns it, and
//! commits what it consumed.
//!
//! In: a group id, the topics to consume, the member's settings ([`GroupConsumerConfig`]). Out:
//! records with their topic and partition ([`GroupConsumer::poll`]), the offsets each commit wrote.
//!
//! # Routing
//! Every group lives on one coordinator, the leader of the `__consumer_offsets` partition its id
//! hashes to. `FindCoordinator` goes to any broker; every other group request goes to the
//! coordinator, whose address the client caches per group. An answer that says the coordinator
//! moved or is not ready (`NotCoordinator`, `CoordinatorLoadInProgress`, `CoordinatorNotAvailable`,
//! `NotLeader`, `ShuttingDown`), a commit that timed out before the offsets partition's ISR had it
//! (`Timeout`), or a connection that failed or broke forgets the cached coordinator: the request is
//! sent again, after a backoff, to the coordinator found anew (`Busy`: to the same one), until
//! `request_timeout` has passed since the first attempt (transport failures also count against
//! `retries`). Every group request may be repeated: a commit writes the same offsets again (for the same generation), a join of a
//! named member is the same join, a leave of a member already gone answers `UnknownMemberId`, which
//! means "left". (A join with no member id repeated after a lost answer leaves an orphan member
//! behind, which the coordinator drops after its session timeout.)
//!
//! # A member's life
//! [`GroupConsumer::join`] joins with no member id (the coordinator names the member and answers
//! once the rebalance is over), syncs to get its assignment, fetches the group's committed offsets
//! and starts each assigned partition at its committed offset, or where [`ResetPolicy`] says when
//! there is none. [`GroupConsumer::poll`] heartbeats every third of the session timeout and fetches
//! every assigned partition from its position. The coordinator's refusals are handled as Kafka's
//! consumer does ([`rejoin_for`]): `RebalanceInProgress` commits what was consumed (commits of the
//! current generation are still accepted) and rejoins as the same member; `IllegalGeneration` drops
//! the positions and rejoins as the same member; `UnknownMemberId` drops them and rejoins as a new
//! member. A fetch answered `OffsetOutOfRange` (retention deleted the records at the position) moves
//! the position by the reset policy and says so through the notice callback.
//!
//! # Invariants
//! - A position moves past a record only in the same synchronous step that hands the record to the
//!   caller, so a `poll` cancelled at any await (a signal arrived) never lets a commit cover a record
//!   nobody saw. Delivery is at least once: records after the last commit are consumed again by
//!   whoever owns their partition next.
//! - A commit carries the generation its positions were taken in. After a stale-member answer the
//!   positions are dropped and rebuilt from the committed offsets at the next join, so this member
//!   never commits a partition on another member's behalf.
//! - Only the runtime's clock (`tokio::time::Instant`), no threads, no RNG: the same code runs in the
//!   simulation.
//!
//! Lock order: the coordinator cache is a std mutex held only to read or write an entry, never
//! across an await and never with another of the client's locks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{unexpected, Client, ClientError};
use crate::batch::StoredRecord;
use crate::protocol::*;
use crate::types::Offset;

/// A member's session timeout when the config does not say (Kafka's `session.timeout.ms` is 45 s;
/// Keel's consumers are short-lived CLI processes, so a departed one is noticed sooner).
pub const SESSION_TIMEOUT_MS_DEFAULT: u32 = 10_000;
/// The assignors the coordinator knows, in the order a member prefers them by default.
pub const ASSIGNORS: [&str; 2] = ["range", "roundrobin"];
/// Groups whose coordinator address the client caches at most (beyond it, the cache starts over).
pub const COORDINATORS_CACHED_MAX: usize = 1024;
/// Bytes one fetch of one partition asks for at most.
pub const GROUP_FETCH_BYTES_MAX: u32 = 1024 * 1024;
/// How long `poll` waits before fetching again when a round found nothing.
pub const IDLE_POLL_INTERVAL_MS: u64 = 100;
/// Joins in a row a member tries while the group keeps rebalancing under it, before giving up.
pub const REJOIN_ATTEMPTS_MAX: u32 = 20;

/// One partition of one topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> TopicPartition {
        TopicPartition { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Offsets per partition: committed offsets and positions are both the NEXT offset to consume.
pub type Offsets = BTreeMap<TopicPartition, Offset>;
/// The partitions a member owns in one generation.
pub type Assignment = BTreeSet<TopicPartition>;
/// A record [`GroupConsumer::poll`] returns: its topic, its partition and the record.
pub type PolledRecord = (String, u32, StoredRecord);

pub fn assignment_from_wire(wire: &[TopicPartitions]) -> Assignment {
    wire.iter()
        .flat_map(|topic| topic.partitions.iter().map(|&partition| TopicPartition::new(topic.topic.clone(), partition)))
        .collect()
}

/// The assignment as the wire carries it: one entry per topic, partitions ascending.
pub fn assignment_to_wire(assignment: &Assignment) -> Vec<TopicPartitions> {
    let mut wire: Vec<TopicPartitions> = Vec::new();
    for tp in assignment {
        match wire.last_mut() {
            Some(last) if last.topic == tp.topic => last.partitions.push(tp.partition),
            _ => wire.push(TopicPartitions { topic: tp.topic.clone(), partitions: vec![tp.partition] }),
        }
    }
    wire
}

pub fn offsets_from_wire(wire: &[PartitionOffset]) -> Offsets {
    wire.iter().map(|entry| (TopicPartition::new(entry.topic.clone(), entry.partition), Offset(entry.offset))).collect()
}

pub fn offsets_to_wire(offsets: &Offsets) -> Vec<PartitionOffset> {
    offsets
        .iter()
        .map(|(tp, offset)| PartitionOffset { topic: tp.topic.clone(), partition: tp.partition, offset: offset.0 })
        .collect()
}

/// Where a group's coordinator is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coordinator {
    pub node_id: u64,
    /// Its client address, `host:port`.
    pub addr: String,
    /// The `__consumer_offsets` partition that holds the group.
    pub partition: u32,
}

/// A completed join: the generation, this member's id, and its assignment in that generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Joined {
    /// -1: not joined yet, only named (`MemberIdRequired`): join again with `member_id`.
    pub generation: i32,
    pub member_id: String,
    pub leader_id: String,
    pub assignor: String,
    pub assignment: Assignment,
}

/// What `DescribeGroup` says about a group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupDescription {
    pub summary: GroupSummaryInfo,
    pub assignor: String,
    pub members: Vec<GroupMemberInfo>,
    pub committed: Offsets,
}

/// The groups every broker coordinates, and the brokers that did not answer (their groups may be
/// missing from `groups`).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupListing {
    /// One entry per group, by name.
    pub groups: Vec<GroupSummaryInfo>,
    /// `(node id, address, error)` of each broker that could not be asked.
    pub unanswered: Vec<(u64, String, ClientError)>,
}

/// The client's cache of group coordinators' addresses (see "Lock order" in the module docs).
#[derive(Default)]
pub(super) struct Coordinators(Mutex<BTreeMap<String, String>>);

impl Coordinators {
    fn get(&self, group: &str) -> Option<String> {
        self.0.lock().expect("coordinators lock").get(group).cloned()
    }

    fn remember(&self, group: &str, addr: &str) {
        let mut cache = self.0.lock().expect("coordinators lock");
        if cache.len() >= COORDINATORS_CACHED_MAX && !cache.contains_key(group) {
            cache.clear();
        }
        cache.insert(group.to_owned(), addr.to_owned());
    }

    fn forget(&self, group: &str) {
        self.0.lock().expect("coordinators lock").remove(group);
    }
}

/// Answers that mean "not done here, and not done at all: find the coordinator and ask again".
pub fn is_coordinator_retriable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotCoordinator
            | ErrorCode::CoordinatorLoadInProgress
            | ErrorCode::CoordinatorNotAvailable
            | ErrorCode::NotLeader
            | ErrorCode::ShuttingDown
            | ErrorCode::Timeout
    )
}

/// What a member does after its coordinator refused a heartbeat, a sync or a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejoin {
    /// `RebalanceInProgress`: commit what was consumed (still accepted in this generation), then
    /// rejoin as the same member.
    AfterCommit,
    /// `IllegalGeneration`: this member's generation is over; drop the positions without
    /// committing and rejoin as the same member.
    SameMember,
    /// `UnknownMemberId`: the coordinator forgot this member (its session expired); drop the
    /// positions without committing and rejoin with no member id.
    NewMember,
}

/// The rejoin an error code asks for, if any (see [`Rejoin`]).
pub fn rejoin_for(code: ErrorCode) -> Option<Rejoin> {
    match code {
        ErrorCode::RebalanceInProgress => Some(Rejoin::AfterCommit),
        ErrorCode::IllegalGeneration => Some(Rejoin::SameMember),
        ErrorCode::UnknownMemberId => Some(Rejoin::NewMember),
        _ => None,
    }
}

/// How one group request's result routes: final, or "send it again after a backoff" (`refind`:
/// to the coordinator found anew; `transport`: the attempt failed in transport, which
/// `ClientConfig::retries` bounds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Done,
    Again { refind: bool, transport: bool },
}

fn route_of(result: &Result<Body, ClientError>) -> Route {
    let code = match result {
        Ok(body) => body.error_code(),
        Err(ClientError::Server { code, .. }) => Some(*code),
        Err(ClientError::Connect { .. }) | Err(ClientError::Ambiguous(_)) => {
            return Route::Again { refind: true, transport: true }
        }
        Err(_) => None,
    };
    match code {
        Some(code) if is_coordinator_retriable(code) => Route::Again { refind: true, transport: false },
        // The coordinator could not take it yet (a reset while a commit of the group is in flight).
        Some(ErrorCode::Busy) => Route::Again { refind: false, transport: false },
        _ => Route::Done,
    }
}

/// `Err` with the response's error, if it carries one.
fn checked(body: Body) -> Result<Body, ClientError> {
    match body.error() {
        Some(info) => Err(ClientError::server(info.clone())),
        None => Ok(body),
    }
}

/// Adds one broker's list to the union: one entry per group, the one with the highest generation
/// (a broker that just lost a group may still list its older state).
fn merge_listed(groups: &mut BTreeMap<String, GroupSummaryInfo>, listed: Vec<GroupSummaryInfo>) {
    for summary in listed {
        match groups.get(&summary.group) {
            Some(known) if known.generation >= summary.generation => {}
            _ => {
                groups.insert(summary.group.clone(), summary);
            }
        }
    }
}

impl Client {
    /// Asks any broker where `group`'s coordinator is. `CoordinatorNotAvailable` (the offsets topic
    /// is being created or the group's partition has no leader) is returned as an error; the group
    /// calls below retry it.
    pub async fn find_coordinator(&self, group: &str) -> Result<Coordinator, ClientError> {
        let body = Body::FindCoordinatorRequest(FindCoordinatorRequest { group: group.into() });
        match checked(self.request_retrying(body, Duration::ZERO).await?)? {
            Body::FindCoordinatorResponse(response) if response.addr.is_empty() => {
                Err(ClientError::Protocol(format!("coordinator of group {group:?} named without an address")))
            }
            Body::FindCoordinatorResponse(response) => {
                Ok(Coordinator { node_id: response.node_id, addr: response.addr, partition: response.partition })
            }
            other => Err(unexpected(other)),
        }
    }

    /// The cached coordinator of `group`, or the one a broker names now.
    async fn coordinator_addr(&self, group: &str) -> Result<String, ClientError> {
        if let Some(addr) = self.coordinators.get(group) {
            return Ok(addr);
        }
        let coordinator = self.find_coordinator(group).await?;
        self.coordinators.remember(group, &coordinator.addr);
        Ok(coordinator.addr)
    }

    /// Sends a group request to `group`'s coordinator, finding it again and retrying as the module
    /// docs say ("Routing"). `extra`: how much longer than `request_timeout` the answer may take (a
    /// join waits for the rebalance). Returns the last answer, which may carry an error.
    async fn group_request(&self, group: &str, body: Body, extra: Duration) -> Result<Body, ClientError> {
        let deadline = Instant::now() + self.config.request_timeout;
        let mut backoff = self.config.retry_backoff;
        let mut transport_failures = 0;
        loop {
            let result = match self.coordinator_addr(group).await {
                Ok(addr) => match self.start(&addr, body.clone()).await {
                    Ok(pending) => self.finish(&addr, pending, extra).await,
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            };
            let Route::Again { refind, transport } = route_of(&result) else { return result };
            if refind {
                self.coordinators.forget(group);
            }
            transport_failures += u32::from(transport);
            if transport_failures > self.config.retries || Instant::now() + backoff >= deadline {
                return result;
            }
            tracing::debug!(group, ?result, "group request: coordinator moved, loading or unreachable; retrying");
            tokio::time::sleep(backoff).await;
            backoff = self.next_backoff(backoff);
        }
    }

    /// Every group any broker coordinates: each broker in the metadata lists only its own groups, so
    /// all are asked and the answers merged (one entry per group, the highest generation).
    pub async fn list_groups(&self) -> Result<GroupListing, ClientError> {
        self.metadata(&[]).await?;
        let brokers = self.brokers();
        let asks = brokers.iter().map(|(&node_id, addr)| async move {
            let body = Body::ListGroupsRequest(ListGroupsRequest {});
            let result = match self.start(addr, body).await {
                Ok(pending) => self.finish(addr, pending, Duration::ZERO).await.and_then(checked),
                Err(error) => Err(error),
            };
            (node_id, addr.clone(), result)
        });
        let mut groups = BTreeMap::new();
        let mut unanswered = Vec::new();
        for (node_id, addr, result) in futures::future::join_all(asks).await {
            match result {
                Ok(Body::ListGroupsResponse(response)) => merge_listed(&mut groups, response.groups),
                Ok(other) => unanswered.push((node_id, addr, unexpected(other))),
                Err(error) => unanswered.push((node_id, addr, error)),
            }
        }
        Ok(GroupListing { groups: groups.into_values().collect(), unanswered })
    }

    /// The group's state, members with their assignments, and committed offsets; `UnknownGroup` for
    /// a group that never existed.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, ClientError> {
        let body = Body::DescribeGroupRequest(DescribeGroupRequest { group: group.into() });
        match checked(self.group_request(group, body, Duration::ZERO).await?)? {
            Body::DescribeGroupResponse(response) => {
                let response = *response;
                let summary = response
                    .summary
                    .ok_or_else(|| ClientError::Protocol(format!("description of group {group:?} has no summary")))?;
                Ok(GroupDescription {
                    summary,
                    assignor: response.assignor,
                    members: response.members,
                    committed: offsets_from_wire(&response.offsets),
                })
            }
            other => Err(unexpected(other)),
        }
    }

    /// Every committed offset of the group (none for a group that never committed).
    pub async fn committed_offsets(&self, group: &str) -> Result<Offsets, ClientError> {
        let body = Body::OffsetFetchRequest(OffsetFetchRequest { group: group.into() });
        match checked(self.group_request(group, body, Duration::ZERO).await?)? {
            Body::OffsetFetchResponse(response) => Ok(offsets_from_wire(&response.offsets)),
            other => Err(unexpected(other)),
        }
    }

    /// Sets committed offsets of a group without members, backwards included; `GroupNotEmpty` while
    /// it has members.
    pub async fn reset_offsets(&self, group: &str, offsets: &Offsets) -> Result<(), ClientError> {
        let body =
            Body::ResetOffsetsRequest(ResetOffsetsRequest { group: group.into(), offsets: offsets_to_wire(offsets) });
        match checked(self.group_request(group, body, Duration::ZERO).await?)? {
            Body::ResetOffsetsResponse(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Commits `offsets` (each the next offset to consume) for a member of `generation`; answered
    /// once the commit is on the offsets partition's ISR. All or none are committed.
    pub async fn commit_offsets(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        offsets: &Offsets,
    ) -> Result<(), ClientError> {
        let body = Body::OffsetCommitRequest(OffsetCommitRequest {
            group: group.into(),
            generation,
            member_id: member_id.into(),
            offsets: offsets_to_wire(offsets),
        });
        match checked(self.group_request(group, body, Duration::ZERO).await?)? {
            Body::OffsetCommitResponse(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Joins `request.group` (an empty `member_id` for a new member); answered when the rebalance
    /// completes, which may take the other members' session timeout, so the answer may take up to
    /// `request_timeout` plus this member's session timeout.
    pub async fn join_group(&self, request: JoinGroupRequest) -> Result<Joined, ClientError> {
        let group = request.group.clone();
        let extra = Duration::from_millis(u64::from(request.session_timeout_ms));
        let response = self.group_request(&group, Body::JoinGroupRequest(request), extra).await?;
        if let Body::JoinGroupResponse(JoinGroupResponse { error: Some(error), member_id, .. }) = &response {
            if error.error_code() == ErrorCode::MemberIdRequired && !member_id.is_empty() {
                return Ok(Joined { generation: -1, member_id: member_id.clone(), ..Joined::default() });
            }
        }
        match checked(response)? {
            Body::JoinGroupResponse(response) => Ok(Joined {
                generation: response.generation,
                member_id: response.member_id,
                leader_id: response.leader_id,
                assignor: response.assignor,
                assignment: assignment_from_wire(&response.assignment),
            }),
            other => Err(unexpected(other)),
        }
    }

    /// This member's assignment in `generation`.
    pub async fn sync_group(&self, group: &str, generation: i32, member_id: &str) -> Result<Assignment, ClientError> {
        let body =
            Body::SyncGroupRequest(SyncGroupRequest { group: group.into(), generation, member_id: member_id.into() });
        match checked(self.group_request(group, body, Duration::ZERO).await?)? {
            Body::SyncGroupResponse(response) => Ok(assignment_from_wire(&response.assignment)),
            other => Err(unexpected(other)),
        }
    }

    /// Keeps the member's session alive; the errors [`rejoin_for`] names mean the member must rejoin.
    pub async fn heartbeat(&self, group: &str, generation: i32, member_id: &str) -> Result<(), ClientError> {
        let body =
            Body::HeartbeatRequest(HeartbeatRequest { group: group.into(), generation, member_id: member_id.into() });
        match checked(self.group_request(group, body, Duration::ZERO).await?)? {
            Body::HeartbeatResponse(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Leaves the group at once (no session timeout to wait out). A member the coordinator does not
    /// know (`UnknownMemberId`) has already left: that is success.
    pub async fn leave_group(&self, group: &str, member_id: &str) -> Result<(), ClientError> {
        let body = Body::LeaveGroupRequest(LeaveGroupRequest { group: group.into(), member_id: member_id.into() });
        match checked(self.group_request(group, body, Duration::ZERO).await?) {
            Ok(Body::LeaveGroupResponse(_)) => Ok(()),
            Err(error) if error.code() == Some(ErrorCode::UnknownMemberId) => Ok(()),
            Ok(other) => Err(unexpected(other)),
            Err(error) => Err(error),
        }
    }
}

/// Where a partition with no usable committed offset starts (Kafka's `auto.offset.reset`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResetPolicy {
    /// The log start.
    #[default]
    Earliest,
    /// The log end: only records produced from now on.
    Latest,
    /// Fail ([`GroupError::NoCommittedOffset`], [`GroupError::OutOfRange`]).
    None,
}

#[derive(Clone, Debug)]
pub struct GroupConsumerConfig {
    pub group: String,
    pub topics: Vec<String>,
    /// Shown in `keel group describe`.
    pub client_id: String,
    pub session_timeout_ms: u32,
    /// Assignors this member supports, preferred first (see [`ASSIGNORS`]).
    pub assignors: Vec<String>,
    pub reset: ResetPolicy,
    pub fetch_bytes_max: u32,
}

impl GroupConsumerConfig {
    /// Defaults: client id `keel`, [`SESSION_TIMEOUT_MS_DEFAULT`], the range assignor, reset to the
    /// earliest offset.
    pub fn new(group: impl Into<String>, topics: Vec<String>) -> GroupConsumerConfig {
        GroupConsumerConfig {
            group: group.into(),
            topics,
            client_id: "keel".into(),
            session_timeout_ms: SESSION_TIMEOUT_MS_DEFAULT,
            assignors: vec![ASSIGNORS[0].to_owned()],
            reset: ResetPolicy::Earliest,
            fetch_bytes_max: GROUP_FETCH_BYTES_MAX,
        }
    }

    /// A third of the session timeout, as Kafka's `heartbeat.interval.ms` recommends: two
    /// heartbeats may be lost before the coordinator gives up on the member.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.session_timeout_ms / 3).max(1))
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GroupError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("group {group:?} has no committed offset for {partition}, and the reset policy is none")]
    NoCommittedOffset { group: String, partition: TopicPartition },
    #[error("{partition}: offset {offset} is out of range ({message}), and the reset policy is none")]
    OutOfRange { partition: TopicPartition, offset: Offset, message: String },
    #[error("could not join group {group:?} in {attempts} attempts (it kept rebalancing); last answer: {last}")]
    JoinFailed { group: String, attempts: u32, last: ClientError },
}

impl GroupError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            GroupError::Client(error) => error.code(),
            _ => None,
        }
    }

    pub fn is_ambiguous(&self) -> bool {
        matches!(self, GroupError::Client(error) if error.is_ambiguous())
    }
}

/// Called with one human-readable line when the consumer moves a position on its own (a reset).
pub type NoticeFn = Box<dyn Fn(&str) + Send + Sync>;

/// A member of a consumer group (see the module docs for its life and invariants).
pub struct GroupConsumer {
    client: Arc<Client>,
    config: GroupConsumerConfig,
    /// Empty until the coordinator names this member.
    member_id: String,
    /// -1 until joined.
    generation: i32,
    /// True from a completed join (with positions for the whole assignment) until the membership is
    /// found stale, or a join starts.
    joined: bool,
    /// A rejoin a commit's answer asked for ([`rejoin_for`]), done at the next `poll`.
    pending: Option<Rejoin>,
    assignment: Assignment,
    positions: Offsets,
    /// What this member last committed (or found committed at its join), per assigned partition.
    committed: Offsets,
    heartbeat_due: Instant,
    notice: NoticeFn,
}

impl GroupConsumer {
    pub fn new(client: Arc<Client>, config: GroupConsumerConfig) -> GroupConsumer {
        GroupConsumer {
            client,
            config,
            member_id: String::new(),
            generation: -1,
            joined: false,
            pending: None,
            assignment: Assignment::new(),
            positions: Offsets::new(),
            committed: Offsets::new(),
            heartbeat_due: Instant::now(),
            notice: Box::new(|line| tracing::warn!("{line}")),
        }
    }

    /// Where the consumer's notices go (by default: a `tracing` warning).
    pub fn on_notice(&mut self, notice: impl Fn(&str) + Send + Sync + 'static) {
        self.notice = Box::new(notice);
    }

    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    pub fn config(&self) -> &GroupConsumerConfig {
        &self.config
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// The next offset to consume per assigned partition (empty while not joined).
    pub fn positions(&self) -> &Offsets {
        &self.positions
    }

    /// What this member knows to be committed for its partitions.
    pub fn committed(&self) -> &Offsets {
        &self.committed
    }

    /// Moves the position of an assigned partition (e.g. back to the first record the caller did not
    /// process, so that the next commit covers exactly what it did). False if `tp` is not assigned.
    pub fn seek(&mut self, tp: &TopicPartition, offset: Offset) -> bool {
        match self.positions.get_mut(tp) {
            Some(position) if self.joined => {
                *position = offset;
                true
            }
            _ => false,
        }
    }

    /// Joins the group as a new member and sets a position for every assigned partition.
    pub async fn join(&mut self) -> Result<(), GroupError> {
        self.member_id.clear();
        self.pending = None;
        self.rejoin().await
    }

    /// Joins (as the member this consumer is, if any) until a join completes, at most
    /// [`REJOIN_ATTEMPTS_MAX`] times while the group keeps rebalancing under it. Attempts are spaced
    /// by the client's backoff: a join that arrives while the coordinator writes the next generation
    /// is refused with `RebalanceInProgress` ("join again shortly"), and asking again at once would
    /// use the attempts up before the write is committed.
    async fn rejoin(&mut self) -> Result<(), GroupError> {
        let mut last = None;
        let mut backoff = self.client.config.retry_backoff;
        for attempt in 0..REJOIN_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = self.client.next_backoff(backoff);
            }
            let error = match self.join_once().await {
                Ok(()) => return Ok(()),
                Err(GroupError::Client(error)) => error,
                Err(error) => return Err(error),
            };
            match error.code().and_then(rejoin_for) {
                Some(Rejoin::NewMember) => self.member_id.clear(),
                Some(Rejoin::SameMember | Rejoin::AfterCommit) => {}
                None => return Err(error.into()),
            }
            tracing::debug!(group = %self.config.group, %error, "join interrupted by a rebalance; joining again");
            last = Some(error);
        }
        let last = last.expect("at least one attempt");
        Err(GroupError::JoinFailed { group: self.config.group.clone(), attempts: REJOIN_ATTEMPTS_MAX, last })
    }

    /// One join, sync and offset fetch. The state changes in two synchronous steps (the member id
    /// and generation once joined; the assignment with its positions once they are all known), so a
    /// cancelled join leaves a consumer that holds no positions, and can still leave.
    async fn join_once(&mut self) -> Result<(), GroupError> {
        self.joined = false;
        self.assignment.clear();
        self.positions.clear();
        self.committed.clear();
        let request = JoinGroupRequest {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            client_id: self.config.client_id.clone(),
            session_timeout_ms: self.config.session_timeout_ms,
            topics: self.config.topics.clone(),
            assignors: self.config.assignors.clone(),
        };
        let mut joined = self.client.join_group(request.clone()).await?;
        if joined.generation < 0 {
            // Named by the coordinator (KIP-394): known from now, so a join cancelled from here on
            // can still leave; the member exists once this second join arrives.
            self.member_id = joined.member_id;
            let request = JoinGroupRequest { member_id: self.member_id.clone(), ..request };
            joined = self.client.join_group(request).await?;
        }
        self.member_id = joined.member_id;
        self.generation = joined.generation;
        let group = self.config.group.clone();
        let assignment = self.client.sync_group(&group, self.generation, &self.member_id).await?;
        let mut committed = self.client.committed_offsets(&group).await?;
        committed.retain(|tp, _| assignment.contains(tp));
        let mut positions = Offsets::new();
        for tp in &assignment {
            let position = match committed.get(tp) {
                Some(&offset) => offset,
                None => self.reset_offset(tp, None).await?,
            };
            positions.insert(tp.clone(), position);
        }
        tracing::info!(%group, generation = self.generation, member = %self.member_id, ?assignment, "joined");
        (self.assignment, self.positions, self.committed) = (assignment, positions, committed);
        self.joined = true;
        self.heartbeat_due = Instant::now() + self.config.heartbeat_interval();
        Ok(())
    }

    /// The reset policy's offset for `tp`: when it has no committed offset (`out_of_range` `None`),
    /// or when `(position, message)` was refused as out of range (said through the notice).
    async fn reset_offset(
        &self,
        tp: &TopicPartition,
        out_of_range: Option<(Offset, &str)>,
    ) -> Result<Offset, GroupError> {
        let (spec, name) = match self.config.reset {
            ResetPolicy::Earliest => (LIST_OFFSETS_EARLIEST, "earliest"),
            ResetPolicy::Latest => (LIST_OFFSETS_LATEST, "latest"),
            ResetPolicy::None => {
                return Err(match out_of_range {
                    None => GroupError::NoCommittedOffset { group: self.config.group.clone(), partition: tp.clone() },
                    Some((offset, message)) => {
                        GroupError::OutOfRange { partition: tp.clone(), offset, message: message.to_owned() }
                    }
                })
            }
        };
        let found = self.client.list_offsets(&tp.topic, tp.partition, spec).await?;
        let to = found.map_or(Offset(0), |(offset, _)| offset);
        if let Some((position, message)) = out_of_range {
            (self.notice)(&format!(
                "{tp}: offset {position} is out of range ({message}); records there were deleted by retention or \
                 never written; going on from the {name} offset {to} (reset policy {name})"
            ));
        }
        Ok(to)
    }

    /// Records from the assigned partitions, waiting up to `wait` for some. Heartbeats when due and
    /// rejoins when the coordinator asks for it (see the module docs); an empty assignment only
    /// heartbeats. Positions move past every record returned.
    pub async fn poll(&mut self, wait: Duration) -> Result<Vec<PolledRecord>, GroupError> {
        let deadline = Instant::now() + wait;
        loop {
            self.keep_membership().await?;
            let records = self.fetch_round().await?;
            let now = Instant::now();
            if !records.is_empty() || now >= deadline {
                return Ok(records);
            }
            let idle = now + Duration::from_millis(IDLE_POLL_INTERVAL_MS);
            tokio::time::sleep_until(idle.min(deadline).min(self.heartbeat_due.max(now))).await;
        }
    }

    /// Joins if not joined, handles a stale membership a commit found, and heartbeats when due.
    async fn keep_membership(&mut self) -> Result<(), GroupError> {
        if let Some(action) = self.pending.take() {
            return self.handle_rejoin(action).await;
        }
        if !self.joined {
            return self.rejoin().await;
        }
        if Instant::now() < self.heartbeat_due {
            return Ok(());
        }
        let group = self.config.group.clone();
        match self.client.heartbeat(&group, self.generation, &self.member_id).await {
            Ok(()) => {}
            Err(error) => match error.code().and_then(rejoin_for) {
                Some(action) => return self.handle_rejoin(action).await,
                None if error.code().is_some_and(is_coordinator_retriable)
                    || matches!(error, ClientError::Connect { .. } | ClientError::Ambiguous(_)) =>
                {
                    // The coordinator is moving or unreachable past the retries: keep consuming and
                    // try again next interval; if the session expires meanwhile, the next heartbeat
                    // says `UnknownMemberId` and the member rejoins.
                    tracing::warn!(%group, %error, "heartbeat failed; trying again at the next interval");
                }
                None => return Err(error.into()),
            },
        }
        self.heartbeat_due = Instant::now() + self.config.heartbeat_interval();
        Ok(())
    }

    async fn handle_rejoin(&mut self, action: Rejoin) -> Result<(), GroupError> {
        tracing::info!(group = %self.config.group, generation = self.generation, ?action, "rejoining the group");
        match action {
            Rejoin::AfterCommit => {
                if let Err(error) = self.commit().await {
                    (self.notice)(&format!(
                        "group {}: committing before the rebalance failed ({error}); the records consumed since \
                         the last commit will be consumed again",
                        self.config.group
                    ));
                    if error.code() == Some(ErrorCode::UnknownMemberId) {
                        self.member_id.clear();
                    }
                }
            }
            Rejoin::SameMember => {}
            Rejoin::NewMember => self.member_id.clear(),
        }
        self.pending = None;
        self.rejoin().await
    }

    /// One fetch of every assigned partition from its position, all at once, without waiting for
    /// records. A position out of range moves by the reset policy.
    async fn fetch_round(&mut self) -> Result<Vec<PolledRecord>, GroupError> {
        let client = &self.client;
        let bytes_max = self.config.fetch_bytes_max;
        let fetches = self.positions.iter().map(|(tp, &position)| async move {
            let fetched = client.fetch(&tp.topic, tp.partition, position, bytes_max, Duration::ZERO).await;
            (tp.clone(), position, fetched)
        });
        let mut fetched = Vec::new();
        for (tp, position, result) in futures::future::join_all(fetches).await {
            match result {
                Ok(slice) => fetched.push((tp, slice.records, slice.next_offset)),
                Err(ClientError::Server { code: ErrorCode::OffsetOutOfRange, message }) => {
                    let to = self.reset_offset(&tp, Some((position, &message))).await?;
                    if let Some(slot) = self.positions.get_mut(&tp) {
                        *slot = to;
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        // No await from here on: the positions move exactly past what is handed out.
        let mut records = Vec::new();
        for (tp, slice, next_offset) in fetched {
            // Every record of the slice is handed out: past its last batch, also one compaction
            // emptied (ADR 0022).
            let end = slice.last().map(|last| last.offset.next()).into_iter().chain([next_offset]).max();
            if let (Some(end), Some(position)) = (end, self.positions.get_mut(&tp)) {
                *position = (*position).max(end);
            }
            records.extend(slice.into_iter().map(|record| (tp.topic.clone(), tp.partition, record)));
        }
        Ok(records)
    }

    /// Commits every position that differs from what is committed (a partition never committed
    /// counts as differing). Returns what it committed. An answer that asks for a rejoin
    /// ([`rejoin_for`]: a stale membership, or a rebalance past the point where commits of this
    /// generation are accepted) is returned as the error and handled at the next `poll`.
    pub async fn commit(&mut self) -> Result<Offsets, GroupError> {
        if !self.joined {
            return Ok(Offsets::new());
        }
        let changed: Offsets = self
            .positions
            .iter()
            .filter(|(tp, position)| self.committed.get(*tp) != Some(*position))
            .map(|(tp, position)| (tp.clone(), *position))
            .collect();
        if changed.is_empty() {
            return Ok(changed);
        }
        let group = self.config.group.clone();
        match self.client.commit_offsets(&group, self.generation, &self.member_id, &changed).await {
            Ok(()) => {
                self.committed.extend(changed.iter().map(|(tp, offset)| (tp.clone(), *offset)));
                Ok(changed)
            }
            Err(error) => {
                if let Some(action) = error.code().and_then(rejoin_for) {
                    self.pending = Some(action);
                }
                Err(error.into())
            }
        }
    }

    /// Commits (unless the membership is already stale), then leaves the group, so its partitions
    /// go to the other members at once. Returns what it committed; a failed commit is returned after
    /// leaving.
    pub async fn leave(&mut self) -> Result<Offsets, GroupError> {
        let stale = matches!(self.pending, Some(Rejoin::SameMember | Rejoin::NewMember));
        let committed = if stale { Ok(Offsets::new()) } else { self.commit().await };
        let left = if self.member_id.is_empty() {
            Ok(())
        } else {
            self.client.leave_group(&self.config.group, &self.member_id).await
        };
        self.member_id.clear();
        self.generation = -1;
        self.joined = false;
        self.pending = None;
        self.assignment.clear();
        self.positions.clear();
        let committed = committed?;
        left?;
        Ok(committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(code: ErrorCode) -> Option<ErrorInfo> {
        Some(ErrorInfo::new(code, "scripted"))
    }

    #[test]
    fn coordinator_answers_refind_and_others_are_final() {
        for code in [
            ErrorCode::NotCoordinator,
            ErrorCode::CoordinatorLoadInProgress,
            ErrorCode::CoordinatorNotAvailable,
            ErrorCode::Timeout,
        ] {
            let body = Body::OffsetCommitResponse(OffsetCommitResponse { error: info(code) });
            assert_eq!(route_of(&Ok(body)), Route::Again { refind: true, transport: false }, "{code:?} in a response");
            let error = ClientError::Server { code, message: String::new() };
            assert_eq!(route_of(&Err(error)), Route::Again { refind: true, transport: false }, "{code:?} as an error");
        }
        for code in [
            ErrorCode::IllegalGeneration,
            ErrorCode::UnknownMemberId,
            ErrorCode::RebalanceInProgress,
            ErrorCode::GroupNotEmpty,
            ErrorCode::OffsetRegression,
            ErrorCode::PartitionNotAssigned,
            ErrorCode::UnknownGroup,
        ] {
            let body = Body::HeartbeatResponse(HeartbeatResponse { error: info(code) });
            assert_eq!(route_of(&Ok(body)), Route::Done, "{code:?}");
        }
        assert_eq!(route_of(&Ok(Body::HeartbeatResponse(HeartbeatResponse { error: None }))), Route::Done);
        let refused = ClientError::Connect { addr: "a:1".into(), reason: "refused".into() };
        assert_eq!(route_of(&Err(refused)), Route::Again { refind: true, transport: true });
        assert_eq!(
            route_of(&Err(ClientError::Ambiguous("lost".into()))),
            Route::Again { refind: true, transport: true }
        );
        assert_eq!(route_of(&Err(ClientError::Protocol("bad".into()))), Route::Done);
        let busy = Body::ResetOffsetsResponse(ResetOffsetsResponse { error: info(ErrorCode::Busy) });
        assert_eq!(route_of(&Ok(busy)), Route::Again { refind: false, transport: false }, "same coordinator, later");
    }

    #[test]
    fn stale_members_rejoin_as_kafka_consumers_do() {
        assert_eq!(rejoin_for(ErrorCode::RebalanceInProgress), Some(Rejoin::AfterCommit));
        assert_eq!(rejoin_for(ErrorCode::IllegalGeneration), Some(Rejoin::SameMember));
        assert_eq!(rejoin_for(ErrorCode::UnknownMemberId), Some(Rejoin::NewMember));
        for code in [ErrorCode::NotCoordinator, ErrorCode::OffsetRegression, ErrorCode::PartitionNotAssigned] {
            assert_eq!(rejoin_for(code), None, "{code:?}");
        }
    }

    #[test]
    fn group_listings_merge_by_name_keeping_the_highest_generation() {
        let summary = |group: &str, generation, coordinator| GroupSummaryInfo {
            group: group.into(),
            state: "stable".into(),
            generation,
            members: 1,
            coordinator,
        };
        let mut groups = BTreeMap::new();
        merge_listed(&mut groups, vec![summary("a", 3, 1), summary("b", 1, 1)]);
        merge_listed(&mut groups, vec![summary("a", 2, 2), summary("c", 1, 2), summary("b", 4, 2)]);
        let merged: Vec<_> = groups.values().map(|g| (g.group.as_str(), g.generation, g.coordinator)).collect();
        assert_eq!(merged, vec![("a", 3, 1), ("b", 4, 2), ("c", 1, 2)]);
    }

    #[test]
    fn assignments_and_offsets_round_trip_through_the_wire() {
        let assignment: Assignment =
            [TopicPartition::new("b", 2), TopicPartition::new("a", 1), TopicPartition::new("a", 0)].into();
        let wire = assignment_to_wire(&assignment);
        assert_eq!(
            wire,
            vec![
                TopicPartitions { topic: "a".into(), partitions: vec![0, 1] },
                TopicPartitions { topic: "b".into(), partitions: vec![2] },
            ]
        );
        assert_eq!(assignment_from_wire(&wire), assignment);
        let offsets: Offsets =
            [(TopicPartition::new("a", 0), Offset(7)), (TopicPartition::new("b", 2), Offset(0))].into();
        assert_eq!(offsets_from_wire(&offsets_to_wire(&offsets)), offsets);
    }

    #[test]
    fn heartbeats_go_three_times_per_session() {
        let mut config = GroupConsumerConfig::new("g", vec!["t".into()]);
        assert_eq!(config.heartbeat_interval(), Duration::from_millis(3_333));
        config.session_timeout_ms = 1;
        assert_eq!(config.heartbeat_interval(), Duration::from_millis(1), "never a zero interval");
    }

    #[test]
    fn responses_with_an_error_are_errors() {
        let refused = Body::ResetOffsetsResponse(ResetOffsetsResponse { error: info(ErrorCode::GroupNotEmpty) });
        assert_eq!(checked(refused).unwrap_err().code(), Some(ErrorCode::GroupNotEmpty));
        let fine = Body::ResetOffsetsResponse(ResetOffsetsResponse { error: None });
        assert!(checked(fine).is_ok());
    }
}
