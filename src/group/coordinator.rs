//! The group coordinator of one `__consumer_offsets` partition: a sans-IO core in raft-rs's
//! `RawNode`/`Ready` shape (ADR 0003, ADR 0020). The shell (`server::groups`) feeds it requests,
//! ticks and the outcome of the appends it asked for, with the time as an argument, and performs
//! what [`GroupCoordinator::take_ready`] hands back: appends to the offsets partition (`acks=all`),
//! then replies.
//!
//! # The group's life (Kafka's eager rebalance protocol, with the coordinator assigning)
//! - `Empty`: no members. Commits without a generation (-1) and resets are allowed.
//! - `Preparing`: a member joined, left, changed its subscription or missed its session timeout.
//!   Every member must join again (a heartbeat answers `RebalanceInProgress`); the round ends when
//!   every member has a join waiting, or at a deadline (the longest session timeout of the members
//!   from its start), when those that did not join are removed. Members may still commit in their
//!   current generation meanwhile.
//! - `Persisting`: the round ended and no commit of the group is in flight: the next generation
//!   (number, members, assignment) is appended as a `Generation` record. Commits are refused
//!   (`RebalanceInProgress`) until it is committed, then the waiting joins are answered, all at once.
//! - `Stable`: heartbeats keep members alive; a member missing its session timeout starts a round.
//!
//! # Invariants (checked by the tests below and the simulation)
//! - A generation number is handed out only after its `Generation` record is committed on the
//!   offsets partition's ISR, and never twice (a number whose append failed is skipped), so no two
//!   coordinators, one after the other, ever give one number to two memberships.
//! - One generation's assignment gives each partition to at most one member.
//! - A commit is accepted only from a member of the current generation, for partitions its
//!   assignment holds, and only before the next generation starts persisting; the next generation
//!   starts persisting only when no commit of the group is in flight, so its members read every
//!   offset the previous one committed.
//! - Committed offsets never go back, except by a reset (allowed only while the group has no
//!   members); loading a partition applies its records with the same rule.

use std::collections::{BTreeMap, BTreeSet};

use crate::group::assignor::{self, Assignor, TopicPartition};
use crate::group::records::{GroupRecord, MemberRecord};
use crate::protocol::ErrorCode;
use crate::sometimes::{self, Sometimes};

/// The shell's handle on one request.
pub type RequestId = u64;
/// Names one append the core asked for.
pub type AppendToken = u64;

/// Generation of a commit or reset from outside any generation.
pub const NO_GENERATION: i32 = -1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoordinatorConfig {
    pub session_timeout_ms_min: u32,
    pub session_timeout_ms_max: u32,
}

impl Default for CoordinatorConfig {
    fn default() -> CoordinatorConfig {
        CoordinatorConfig { session_timeout_ms_min: 100, session_timeout_ms_max: 300_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub group: String,
    /// Empty for a new member.
    pub member_id: String,
    pub client_id: String,
    pub session_timeout_ms: u32,
    pub topics: BTreeSet<String>,
    /// Preferred first; only known ones (the shell drops unknown names).
    pub assignors: Vec<Assignor>,
    /// The partition count of each subscribed topic that exists, as the shell's metadata has it.
    pub partitions: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Join(JoinRequest),
    Sync { group: String, generation: i32, member_id: String },
    Heartbeat { group: String, generation: i32, member_id: String },
    Leave { group: String, member_id: String },
    Commit { group: String, generation: i32, member_id: String, offsets: Vec<(TopicPartition, i64)> },
    Reset { group: String, offsets: Vec<(TopicPartition, i64)> },
    FetchOffsets { group: String },
    Describe { group: String },
    List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    Preparing,
    Persisting,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::Preparing | GroupState::Persisting => "preparing-rebalance",
            GroupState::Stable => "stable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub id: String,
    pub client_id: String,
    pub topics: Vec<String>,
    pub assignment: Vec<TopicPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group: String,
    pub state: GroupState,
    pub generation: i32,
    pub assignor: Assignor,
    pub members: Vec<MemberDescription>,
    pub offsets: Vec<(TopicPartition, i64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Joined {
        generation: i32,
        member_id: String,
        leader_id: String,
        assignor: Assignor,
        assignment: Vec<TopicPartition>,
    },
    /// A join without a member id: join again with this one.
    MemberIdRequired(String),
    Assignment(Vec<TopicPartition>),
    Done,
    Offsets(Vec<(TopicPartition, i64)>),
    Described(Box<GroupDescription>),
    Groups(Vec<GroupDescription>),
    Error {
        code: ErrorCode,
        message: String,
    },
}

fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::Error { code, message: message.into() }
}

/// The outcome of an append, as the shell learned it from the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Committed on the offsets partition's ISR.
    Committed,
    /// Definitely not appended.
    Failed { code: ErrorCode, message: String },
    /// Maybe appended: the core's view of the log is no longer certain; it asks to be reloaded.
    Unknown { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Request { id: RequestId, request: Request, now_ms: i64 },
    Appended { token: AppendToken, outcome: AppendOutcome },
    Tick { now_ms: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    pub token: AppendToken,
    pub records: Vec<GroupRecord>,
}

/// What the shell does next: the appends (each with `acks=all`, its outcome reported back as
/// `Appended`), then the replies. `reload`: an append's outcome is unknown, so this core may not
/// match the partition; the shell drops it (`unload`) and loads the partition again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ready {
    pub appends: Vec<Append>,
    pub replies: Vec<(RequestId, Reply)>,
    pub reload: bool,
}

#[derive(Debug, Clone)]
struct Member {
    client_id: String,
    topics: BTreeSet<String>,
    assignors: Vec<Assignor>,
    session_timeout_ms: u32,
    last_seen_ms: i64,
    assignment: Vec<TopicPartition>,
}

#[derive(Debug, Clone)]
struct Group {
    /// The current generation (0: none formed yet).
    generation: i32,
    /// The highest number ever attempted: the next generation is one past it.
    attempted: i32,
    state: GroupState,
    assignor: Assignor,
    members: BTreeMap<String, Member>,
    partitions: BTreeMap<String, u32>,
    /// Joins waiting for the round to end, by member.
    joins: BTreeMap<String, RequestId>,
    /// When a `Preparing` round ends even if not everyone joined.
    deadline_ms: i64,
    /// A round must start again once the generation being persisted is in place.
    again: bool,
    committed: BTreeMap<TopicPartition, i64>,
    /// Commits and resets in flight: (token, offsets).
    in_flight: BTreeMap<AppendToken, Vec<(TopicPartition, i64)>>,
}

impl Group {
    fn new() -> Group {
        Group {
            generation: 0,
            attempted: 0,
            state: GroupState::Empty,
            assignor: Assignor::Range,
            members: BTreeMap::new(),
            partitions: BTreeMap::new(),
            joins: BTreeMap::new(),
            deadline_ms: 0,
            again: false,
            committed: BTreeMap::new(),
            in_flight: BTreeMap::new(),
        }
    }

    /// The lowest offset a commit of `partition` may name now (committed or in flight).
    fn floor(&self, partition: &TopicPartition) -> i64 {
        let in_flight = self.in_flight.values().flatten().filter(|(p, _)| p == partition).map(|(_, offset)| *offset);
        in_flight.chain(self.committed.get(partition).copied()).max().unwrap_or(0)
    }
}

#[derive(Debug)]
enum Pending {
    Commit { id: RequestId, group: String, reset: bool },
    Generation { group: String, generation: i32, members: BTreeMap<String, Member>, assignor: Assignor },
}

pub struct GroupCoordinator {
    config: CoordinatorConfig,
    /// The offset of the marker this core was loaded behind: part of every member id it names, so
    /// ids never repeat across coordinators (nor across reloads of one).
    incarnation: i64,
    groups: BTreeMap<String, Group>,
    next_member: u64,
    /// Member ids handed to joins without one and not used yet: id -> (group, when it expires).
    named: BTreeMap<String, (String, i64)>,
    next_token: AppendToken,
    pending: BTreeMap<AppendToken, Pending>,
    now_ms: i64,
    ready: Ready,
}

impl GroupCoordinator {
    /// A coordinator for the offsets partition whose committed records below its marker (at offset
    /// `incarnation`) are `records`, in log order. Members of the generations it loads are alive as
    /// of `now_ms`.
    pub fn load(config: CoordinatorConfig, incarnation: i64, records: &[GroupRecord], now_ms: i64) -> GroupCoordinator {
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        for record in records {
            match record {
                GroupRecord::Offset { group, partition, offset, reset } => {
                    let committed = &mut groups.entry(group.clone()).or_insert_with(Group::new).committed;
                    let current = committed.entry(partition.clone()).or_insert(*offset);
                    *current = if *reset { *offset } else { (*current).max(*offset) };
                }
                GroupRecord::Generation { group, generation, assignor, members } => {
                    let entry = groups.entry(group.clone()).or_insert_with(Group::new);
                    entry.generation = *generation;
                    entry.attempted = entry.attempted.max(*generation);
                    entry.assignor = *assignor;
                    entry.members = members.iter().map(|member| loaded_member(member, *assignor, now_ms)).collect();
                    entry.state = if entry.members.is_empty() { GroupState::Empty } else { GroupState::Stable };
                }
                GroupRecord::Marker { .. } => {}
            }
        }
        GroupCoordinator {
            config,
            incarnation,
            groups,
            next_member: 0,
            named: BTreeMap::new(),
            next_token: 0,
            pending: BTreeMap::new(),
            now_ms,
            ready: Ready::default(),
        }
    }

    pub fn step(&mut self, input: Input) {
        match input {
            Input::Request { id, request, now_ms } => {
                self.now_ms = self.now_ms.max(now_ms);
                self.request(id, request);
            }
            Input::Appended { token, outcome } => self.appended(token, outcome),
            Input::Tick { now_ms } => {
                self.now_ms = self.now_ms.max(now_ms);
                self.tick();
            }
        }
    }

    pub fn take_ready(&mut self) -> Ready {
        std::mem::take(&mut self.ready)
    }

    /// The shell is dropping this core (leadership moved, or `reload`): every request it holds gets
    /// `NotCoordinator` (a commit in flight may still land: a retry at the next coordinator is
    /// accepted either way, offsets being idempotent).
    pub fn unload(mut self) -> Vec<(RequestId, Reply)> {
        let mut replies = std::mem::take(&mut self.ready.replies);
        let moved = || error(ErrorCode::NotCoordinator, "the coordinator moved: find it again");
        for group in self.groups.values() {
            replies.extend(group.joins.values().map(|id| (*id, moved())));
        }
        for pending in self.pending.values() {
            if let Pending::Commit { id, .. } = pending {
                replies.push((*id, moved()));
            }
        }
        replies
    }

    fn reply(&mut self, id: RequestId, reply: Reply) {
        self.ready.replies.push((id, reply));
    }

    fn request(&mut self, id: RequestId, request: Request) {
        match request {
            Request::Join(join) => self.join(id, join),
            Request::Sync { group, generation, member_id } => {
                let reply = match self.member_of(&group, generation, &member_id) {
                    Err(reply) => reply,
                    Ok((_, member)) => Reply::Assignment(member.assignment.clone()),
                };
                self.reply(id, reply);
            }
            Request::Heartbeat { group, generation, member_id } => self.heartbeat(id, &group, generation, &member_id),
            Request::Leave { group, member_id } => self.leave(id, &group, &member_id),
            Request::Commit { group, generation, member_id, offsets } => {
                self.commit(id, &group, generation, &member_id, offsets)
            }
            Request::Reset { group, offsets } => self.reset(id, &group, offsets),
            Request::FetchOffsets { group } => {
                let offsets =
                    self.groups.get(&group).map(|g| g.committed.clone().into_iter().collect()).unwrap_or_default();
                self.reply(id, Reply::Offsets(offsets));
            }
            Request::Describe { group } => {
                let reply = match self.groups.get(&group) {
                    Some(entry) => Reply::Described(Box::new(describe(&group, entry))),
                    None => error(ErrorCode::UnknownGroup, format!("no group {group:?}")),
                };
                self.reply(id, reply);
            }
            Request::List => {
                let groups = self.groups.iter().map(|(name, group)| describe(name, group)).collect();
                self.reply(id, Reply::Groups(groups));
            }
        }
    }

    /// The group's member in `generation`, or the error a stale or unknown member gets.
    fn member_of(&self, group: &str, generation: i32, member_id: &str) -> Result<(&Group, &Member), Reply> {
        let unknown =
            || error(ErrorCode::UnknownMemberId, format!("group {group:?} has no member {member_id:?}: rejoin"));
        let entry = self.groups.get(group).ok_or_else(unknown)?;
        let member = entry.members.get(member_id).ok_or_else(unknown)?;
        if generation != entry.generation {
            return Err(error(
                ErrorCode::IllegalGeneration,
                format!("group {group:?} is in generation {}, not {generation}: rejoin", entry.generation),
            ));
        }
        Ok((entry, member))
    }

    fn join(&mut self, id: RequestId, join: JoinRequest) {
        let timeout = join.session_timeout_ms;
        if !(self.config.session_timeout_ms_min..=self.config.session_timeout_ms_max).contains(&timeout) {
            let (min, max) = (self.config.session_timeout_ms_min, self.config.session_timeout_ms_max);
            let message = format!("session timeout {timeout} ms is outside {min}..={max} ms");
            return self.reply(id, error(ErrorCode::InvalidSessionTimeout, message));
        }
        if join.topics.is_empty() || join.assignors.is_empty() {
            let message = "a join names at least one topic and one known assignor (range, roundrobin)";
            return self.reply(id, error(ErrorCode::InvalidRequest, message));
        }
        if join.member_id.is_empty() {
            return self.name_member(id, &join);
        }
        let known = self.groups.get(&join.group).is_some_and(|group| group.members.contains_key(&join.member_id));
        let named = self.named.get(&join.member_id).is_some_and(|(group, _)| *group == join.group);
        if !known && !named {
            let message = format!("group {:?} has no member {:?}: join with no member id", join.group, join.member_id);
            return self.reply(id, error(ErrorCode::UnknownMemberId, message));
        }
        let now_ms = self.now_ms;
        let member_id = join.member_id.clone();
        let group = self.groups.entry(join.group.clone()).or_insert_with(Group::new);
        if group.state == GroupState::Persisting {
            let message = "the group's next generation is being written: join again shortly";
            return self.reply(id, error(ErrorCode::RebalanceInProgress, message));
        }
        group.partitions.extend(join.partitions.clone());
        let member = Member {
            client_id: join.client_id.clone(),
            topics: join.topics.clone(),
            assignors: join.assignors.clone(),
            session_timeout_ms: timeout,
            last_seen_ms: now_ms,
            assignment: Vec::new(),
        };
        match group.members.get_mut(&member_id) {
            Some(known) if group.state == GroupState::Stable && known.topics == member.topics => {
                // Nothing changed: this member's current generation stands.
                known.last_seen_ms = now_ms;
                let reply = joined(group, &member_id);
                return self.reply(id, reply);
            }
            Some(known) => {
                let assignment = std::mem::take(&mut known.assignment);
                *known = Member { assignment, ..member };
            }
            None => {
                group.members.insert(member_id.clone(), member);
                self.named.remove(&member_id);
            }
        }
        if let Some(replaced) = group.joins.insert(member_id, id) {
            let message = "a newer join from this member replaced this one";
            self.reply(replaced, error(ErrorCode::RebalanceInProgress, message));
        }
        self.prepare(&join.group);
    }

    /// A join without a member id gets one, and joins again with it (KIP-394): the member exists
    /// only from that second join, so a first answer lost on the way (a timeout, a client killed
    /// while it waited) leaves no member behind to wait a session timeout for. An id not used
    /// within the session timeout is forgotten.
    fn name_member(&mut self, id: RequestId, join: &JoinRequest) {
        self.next_member += 1;
        let member_id = format!("{}-{}-{}", join.client_id, self.incarnation, self.next_member);
        let expires_ms = self.now_ms + i64::from(join.session_timeout_ms);
        self.named.insert(member_id.clone(), (join.group.clone(), expires_ms));
        self.reply(id, Reply::MemberIdRequired(member_id));
    }

    /// Starts a round (if none is going) and ends it when it can.
    fn prepare(&mut self, name: &str) {
        let now_ms = self.now_ms;
        let Some(group) = self.groups.get_mut(name) else { return };
        match group.state {
            GroupState::Persisting => group.again = true,
            GroupState::Preparing => {}
            GroupState::Empty | GroupState::Stable => {
                group.state = GroupState::Preparing;
                let longest = group.members.values().map(|m| m.session_timeout_ms).max().unwrap_or(0);
                group.deadline_ms = now_ms + i64::from(longest);
            }
        }
        self.end_round_if_ready(name, false);
    }

    /// Ends a `Preparing` round when every member has a join waiting (or `deadline` passed: those
    /// without one are removed) and no commit of the group is in flight: persists the next
    /// generation.
    fn end_round_if_ready(&mut self, name: &str, deadline: bool) {
        let Some(group) = self.groups.get_mut(name) else { return };
        if group.state != GroupState::Preparing || !group.in_flight.is_empty() {
            return;
        }
        let everyone = group.members.keys().all(|id| group.joins.contains_key(id));
        if !everyone && !deadline {
            return;
        }
        group.members.retain(|id, _| group.joins.contains_key(id));
        let assignor = choose_assignor(&group.members);
        let subscriptions = group.members.iter().map(|(id, m)| (id.clone(), m.topics.clone())).collect();
        let assignment = assignor::assign(assignor, &subscriptions, &group.partitions);
        let mut members = group.members.clone();
        for (id, owned) in assignment {
            members.get_mut(&id).expect("assigned members are members").assignment = owned;
        }
        let generation = group.attempted + 1;
        group.attempted = generation;
        group.state = GroupState::Persisting;
        let record = GroupRecord::Generation {
            group: name.to_owned(),
            generation,
            assignor,
            members: members.iter().map(|(id, m)| member_record(id, m)).collect(),
        };
        let token = self.append(vec![record]);
        self.pending.insert(token, Pending::Generation { group: name.to_owned(), generation, members, assignor });
    }

    fn append(&mut self, records: Vec<GroupRecord>) -> AppendToken {
        self.next_token += 1;
        self.ready.appends.push(Append { token: self.next_token, records });
        self.next_token
    }

    fn heartbeat(&mut self, id: RequestId, name: &str, generation: i32, member_id: &str) {
        let reply = match self.member_of(name, generation, member_id) {
            Err(reply) => reply,
            Ok((group, _)) => match group.state {
                GroupState::Stable => Reply::Done,
                _ => {
                    error(ErrorCode::RebalanceInProgress, format!("group {name:?} is rebalancing: commit, then rejoin"))
                }
            },
        };
        if !matches!(reply, Reply::Error { code: ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration, .. }) {
            let now_ms = self.now_ms;
            let member =
                self.groups.get_mut(name).and_then(|g| g.members.get_mut(member_id)).expect("member_of found it");
            member.last_seen_ms = now_ms;
        }
        self.reply(id, reply);
    }

    fn leave(&mut self, id: RequestId, name: &str, member_id: &str) {
        let Some(group) = self.groups.get_mut(name).filter(|g| g.members.contains_key(member_id)) else {
            return self
                .reply(id, error(ErrorCode::UnknownMemberId, format!("group {name:?} has no member {member_id:?}")));
        };
        group.members.remove(member_id);
        if let Some(waiting) = group.joins.remove(member_id) {
            self.reply(waiting, error(ErrorCode::UnknownMemberId, "the member left"));
        }
        self.reply(id, Reply::Done);
        self.prepare(name);
    }

    fn commit(
        &mut self,
        id: RequestId,
        name: &str,
        generation: i32,
        member_id: &str,
        offsets: Vec<(TopicPartition, i64)>,
    ) {
        if let Err(reply) = self.check_commit(name, generation, member_id, &offsets) {
            if matches!(reply, Reply::Error { code: ErrorCode::IllegalGeneration | ErrorCode::UnknownMemberId, .. }) {
                sometimes::hit(Sometimes::GroupStaleCommitRefused);
            }
            return self.reply(id, reply);
        }
        self.write_offsets(id, name, offsets, false);
    }

    fn check_commit(
        &self,
        name: &str,
        generation: i32,
        member_id: &str,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<(), Reply> {
        let group = self.groups.get(name);
        if group.is_some_and(|g| g.members.is_empty() && g.state == GroupState::Persisting) {
            // The last member just left and the empty generation is being written: not members,
            // just a moment.
            return Err(error(ErrorCode::Busy, format!("group {name:?} is writing its empty generation: retry")));
        }
        if generation == NO_GENERATION && member_id.is_empty() {
            if group.is_some_and(|g| !g.members.is_empty() || g.state == GroupState::Persisting) {
                let message = format!("group {name:?} has members: only they commit, in their generation");
                return Err(error(ErrorCode::IllegalGeneration, message));
            }
        } else {
            let (group, member) = self.member_of(name, generation, member_id)?;
            if group.state == GroupState::Persisting {
                let message = format!("group {name:?} is starting generation {}: rejoin", group.attempted);
                return Err(error(ErrorCode::RebalanceInProgress, message));
            }
            if let Some((partition, _)) = offsets.iter().find(|(p, _)| !member.assignment.contains(p)) {
                let message = format!(
                    "{}/{} is not assigned to {member_id} in generation {generation}",
                    partition.0, partition.1
                );
                return Err(error(ErrorCode::PartitionNotAssigned, message));
            }
        }
        check_offsets(offsets)?;
        if let Some(group) = group {
            if let Some(((topic, partition), offset)) = offsets.iter().find(|(p, offset)| *offset < group.floor(p)) {
                let floor = group.floor(&(topic.clone(), *partition));
                let message = format!("{topic}/{partition}: commit of {offset} is below the committed {floor}");
                return Err(error(ErrorCode::OffsetRegression, message));
            }
        }
        Ok(())
    }

    fn reset(&mut self, id: RequestId, name: &str, offsets: Vec<(TopicPartition, i64)>) {
        let group = self.groups.get(name);
        if group.is_some_and(|g| g.members.is_empty() && g.state == GroupState::Persisting) {
            let message = format!("group {name:?} is writing its empty generation: retry");
            return self.reply(id, error(ErrorCode::Busy, message));
        }
        if group.is_some_and(|g| !g.members.is_empty() || g.state == GroupState::Persisting) {
            let message = format!("group {name:?} has members: stop its consumers first");
            return self.reply(id, error(ErrorCode::GroupNotEmpty, message));
        }
        if group.is_some_and(|g| !g.in_flight.is_empty()) {
            return self.reply(id, error(ErrorCode::Busy, format!("group {name:?} has a commit in flight: retry")));
        }
        if let Err(reply) = check_offsets(&offsets) {
            return self.reply(id, reply);
        }
        self.write_offsets(id, name, offsets, true);
    }

    fn write_offsets(&mut self, id: RequestId, name: &str, offsets: Vec<(TopicPartition, i64)>, reset: bool) {
        if offsets.is_empty() {
            return self.reply(id, Reply::Done); // nothing to write (an append holds at least one record)
        }
        let records = offsets
            .iter()
            .map(|(partition, offset)| GroupRecord::Offset {
                group: name.to_owned(),
                partition: partition.clone(),
                offset: *offset,
                reset,
            })
            .collect();
        let token = self.append(records);
        self.groups.entry(name.to_owned()).or_insert_with(Group::new).in_flight.insert(token, offsets);
        self.pending.insert(token, Pending::Commit { id, group: name.to_owned(), reset });
    }

    fn appended(&mut self, token: AppendToken, outcome: AppendOutcome) {
        let Some(pending) = self.pending.remove(&token) else { return };
        if let AppendOutcome::Unknown { .. } = outcome {
            self.ready.reload = true;
        }
        match pending {
            Pending::Commit { id, group: name, reset } => {
                let group = self.groups.get_mut(&name).expect("a group with a commit in flight");
                let offsets = group.in_flight.remove(&token).unwrap_or_default();
                let reply = match outcome {
                    AppendOutcome::Committed => {
                        for (partition, offset) in offsets {
                            let current = group.committed.entry(partition).or_insert(offset);
                            *current = if reset { offset } else { (*current).max(offset) };
                        }
                        Reply::Done
                    }
                    AppendOutcome::Failed { code, message } => error(code, format!("not committed: {message}")),
                    AppendOutcome::Unknown { message } => {
                        error(ErrorCode::Timeout, format!("commit outcome unknown: {message}"))
                    }
                };
                self.reply(id, reply);
                self.end_round_if_ready(&name, false);
            }
            Pending::Generation { group, generation, members, assignor } => {
                self.generation_appended(&group, generation, members, assignor, outcome)
            }
        }
    }

    fn generation_appended(
        &mut self,
        name: &str,
        generation: i32,
        members: BTreeMap<String, Member>,
        assignor: Assignor,
        outcome: AppendOutcome,
    ) {
        let now_ms = self.now_ms;
        let group = self.groups.get_mut(name).expect("a group persisting a generation");
        let joins = std::mem::take(&mut group.joins);
        if outcome != AppendOutcome::Committed {
            // The members join again; this number is not used again (`attempted` moved past it).
            group.state = GroupState::Preparing;
            group.deadline_ms = now_ms + members.values().map(|m| i64::from(m.session_timeout_ms)).max().unwrap_or(0);
            let message = format!("generation {generation} of group {name:?} was not written: join again");
            for id in joins.into_values() {
                self.reply(id, error(ErrorCode::RebalanceInProgress, message.clone()));
            }
            return;
        }
        group.generation = generation;
        group.assignor = assignor;
        // Members that left while it was written are gone; the rest are alive from now.
        group.members = members
            .into_iter()
            .filter(|(id, _)| group.members.contains_key(id))
            .map(|(id, member)| (id, Member { last_seen_ms: now_ms, ..member }))
            .collect();
        group.state = if group.members.is_empty() { GroupState::Empty } else { GroupState::Stable };
        if !group.members.is_empty() {
            sometimes::hit(Sometimes::GroupGenerationFormed);
        }
        let replies: Vec<_> = joins
            .into_iter()
            .map(|(member_id, id)| {
                let reply = if group.members.contains_key(&member_id) {
                    joined(group, &member_id)
                } else {
                    error(ErrorCode::UnknownMemberId, "the member left")
                };
                (id, reply)
            })
            .collect();
        let again = std::mem::take(&mut group.again);
        self.ready.replies.extend(replies);
        if again {
            self.prepare(name);
        }
    }

    fn tick(&mut self) {
        let now_ms = self.now_ms;
        self.named.retain(|_, (_, expires_ms)| *expires_ms > now_ms);
        let mut due = Vec::new();
        for (name, group) in &mut self.groups {
            match group.state {
                GroupState::Stable => {
                    let before = group.members.len();
                    group.members.retain(|_, m| m.last_seen_ms + i64::from(m.session_timeout_ms) > now_ms);
                    if group.members.len() < before {
                        sometimes::hit(Sometimes::GroupMemberExpired);
                        due.push((name.clone(), false));
                    }
                }
                GroupState::Preparing if now_ms >= group.deadline_ms => due.push((name.clone(), true)),
                _ => {}
            }
        }
        for (name, deadline) in due {
            if deadline {
                self.end_round_if_ready(&name, true);
            } else {
                self.prepare(&name);
            }
        }
    }
}

fn check_offsets(offsets: &[(TopicPartition, i64)]) -> Result<(), Reply> {
    if let Some(((topic, partition), offset)) = offsets.iter().find(|(_, offset)| *offset < 0) {
        return Err(error(ErrorCode::InvalidRequest, format!("{topic}/{partition}: offset {offset} is negative")));
    }
    let distinct: BTreeSet<&TopicPartition> = offsets.iter().map(|(p, _)| p).collect();
    if distinct.len() != offsets.len() {
        return Err(error(ErrorCode::InvalidRequest, "a partition is named twice"));
    }
    Ok(())
}

/// The first assignor of the lowest member id's list that every member supports (range if none).
fn choose_assignor(members: &BTreeMap<String, Member>) -> Assignor {
    let Some(first) = members.values().next() else { return Assignor::Range };
    first
        .assignors
        .iter()
        .copied()
        .find(|assignor| members.values().all(|m| m.assignors.contains(assignor)))
        .unwrap_or(Assignor::Range)
}

fn joined(group: &Group, member_id: &str) -> Reply {
    Reply::Joined {
        generation: group.generation,
        member_id: member_id.to_owned(),
        leader_id: group.members.keys().next().cloned().unwrap_or_default(),
        assignor: group.assignor,
        assignment: group.members[member_id].assignment.clone(),
    }
}

fn member_record(id: &str, member: &Member) -> MemberRecord {
    MemberRecord {
        id: id.to_owned(),
        client_id: member.client_id.clone(),
        topics: member.topics.iter().cloned().collect(),
        session_timeout_ms: member.session_timeout_ms,
        assignment: member.assignment.clone(),
    }
}

fn loaded_member(member: &MemberRecord, assignor: Assignor, now_ms: i64) -> (String, Member) {
    let loaded = Member {
        client_id: member.client_id.clone(),
        topics: member.topics.iter().cloned().collect(),
        assignors: vec![assignor],
        session_timeout_ms: member.session_timeout_ms,
        last_seen_ms: now_ms,
        assignment: member.assignment.clone(),
    };
    (member.id.clone(), loaded)
}

fn describe(name: &str, group: &Group) -> GroupDescription {
    GroupDescription {
        group: name.to_owned(),
        state: group.state,
        generation: group.generation,
        assignor: group.assignor,
        members: group
            .members
            .iter()
            .map(|(id, m)| MemberDescription {
                id: id.clone(),
                client_id: m.client_id.clone(),
                topics: m.topics.iter().cloned().collect(),
                assignment: m.assignment.clone(),
            })
            .collect(),
        offsets: group.committed.clone().into_iter().collect(),
    }
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
