//! The group coordinator's shell (ADR 0020): one task per broker drives a
//! [`GroupCoordinator`] core for every `__consumer_offsets` partition this broker leads.
//!
//! A request is routed here only when this broker leads the group's offsets partition under a live
//! controller lease (`Assignments::coordinator_for`). The first request after this broker became
//! that partition's leader (a new leader epoch) starts a load: append a `Marker` record with
//! `acks=all` and wait until it is committed, so everything any earlier coordinator acknowledged
//! sits below it; read the partition from its start up to the marker; build the core. Meanwhile
//! requests get `CoordinatorLoadInProgress`. A core whose partition's leadership moved (checked on
//! every request and every tick) is dropped, its waiting requests answered `NotCoordinator`; so is
//! one whose append had an unknown outcome (`Ready::reload`), then loaded again.
//!
//! The core's appends become batches appended to the partition's actor with `acks=all`; their
//! outcomes come back as `Appended` (an append not answered within `APPEND_TIMEOUT` counts as
//! unknown). Time is this task's monotonic clock, handed to the core as an argument.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::batch::{encode_batch, Batch, ProducerFields, Record};
use crate::group::coordinator::{
    AppendOutcome, CoordinatorConfig, GroupCoordinator, Input, Ready, Reply, Request, RequestId,
};
use crate::group::records::GroupRecord;
use crate::partition::{OffsetSpec, PartitionHandle, PartitionReply};
use crate::protocol::{Acks, ErrorCode};
use crate::storage::Disk;
use crate::types::{LeaderEpoch, Offset};

use super::assignments::Assignments;

/// How often cores are ticked (session timeouts, rebalance deadlines) and leadership rechecked.
const TICK: Duration = Duration::from_millis(100);
/// An append to the offsets partition not answered by then has an unknown outcome.
const APPEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes asked for per fetch while loading.
const LOAD_FETCH_BYTES: u32 = 1024 * 1024;
/// Requests queued for the coordinator task before senders wait.
const MAILBOX_MAX: usize = 1024;

enum Command {
    Request {
        partition: u32,
        epoch: LeaderEpoch,
        handle: PartitionHandle,
        request: Request,
        reply: oneshot::Sender<Reply>,
    },
    Loaded {
        partition: u32,
        epoch: LeaderEpoch,
        result: Result<(Offset, Vec<GroupRecord>), String>,
    },
    Appended {
        partition: u32,
        incarnation: Offset,
        token: u64,
        outcome: AppendOutcome,
    },
}

/// The handle connections use.
#[derive(Clone)]
pub struct Coordinators {
    mailbox: mpsc::Sender<Command>,
}

impl Coordinators {
    /// Starts the coordinator task; it ends when `shutdown` is cancelled.
    pub fn start<D: Disk>(assignments: Arc<Assignments<D>>, shutdown: CancellationToken) -> Coordinators {
        let (mailbox, receiver) = mpsc::channel(MAILBOX_MAX);
        let task = Task {
            assignments,
            mailbox: mailbox.clone(),
            slots: BTreeMap::new(),
            started: tokio::time::Instant::now(),
        };
        tokio::spawn(task.run(receiver, shutdown));
        Coordinators { mailbox }
    }

    /// Hands `request` for `group` to its core, if this broker coordinates the group.
    pub async fn request<D: Disk>(&self, assignments: &Assignments<D>, group: &str, request: Request) -> Reply {
        let (partition, handle, epoch) = match assignments.coordinator_for(group) {
            Ok(found) => found,
            Err(error) => return Reply::Error { code: error.code, message: error.message },
        };
        let (reply, receiver) = oneshot::channel();
        if self.mailbox.send(Command::Request { partition, epoch, handle, request, reply }).await.is_err() {
            return Reply::Error { code: ErrorCode::ShuttingDown, message: "the broker is stopping".into() };
        }
        receiver.await.unwrap_or_else(|_| Reply::Error {
            code: ErrorCode::NotCoordinator,
            message: "the coordinator stopped before answering: find it again".into(),
        })
    }

    /// Every group of every offsets partition this broker leads and has loaded.
    pub async fn list<D: Disk>(&self, assignments: &Assignments<D>, partitions: u32) -> Vec<Reply> {
        let mut replies = Vec::new();
        for partition in 0..partitions {
            let Some(epoch) = assignments.leads_offsets_partition(partition) else { continue };
            let Ok(handle) = assignments.replica(crate::group::OFFSETS_TOPIC, crate::types::PartitionId(partition))
            else {
                continue;
            };
            let (reply, receiver) = oneshot::channel();
            let command = Command::Request { partition, epoch, handle, request: Request::List, reply };
            if self.mailbox.send(command).await.is_err() {
                break;
            }
            replies.extend(receiver.await.ok());
        }
        replies
    }
}

enum Slot {
    Loading { epoch: LeaderEpoch },
    Ready(Box<Loaded>),
}

struct Loaded {
    epoch: LeaderEpoch,
    handle: PartitionHandle,
    /// The marker's offset: names this load (member ids, stale append outcomes).
    incarnation: Offset,
    core: GroupCoordinator,
    waiting: BTreeMap<RequestId, oneshot::Sender<Reply>>,
    next_id: RequestId,
}

struct Task<D: Disk> {
    assignments: Arc<Assignments<D>>,
    mailbox: mpsc::Sender<Command>,
    slots: BTreeMap<u32, Slot>,
    started: tokio::time::Instant,
}

impl<D: Disk> Task<D> {
    fn now_ms(&self) -> i64 {
        self.started.elapsed().as_millis() as i64
    }

    async fn run(mut self, mut receiver: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                command = receiver.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                _ = tick.tick() => self.tick(),
            }
        }
        for partition in self.slots.keys().copied().collect::<Vec<_>>() {
            self.unload(partition);
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Request { partition, epoch, handle, request, reply } => {
                self.request(partition, epoch, handle, request, reply)
            }
            Command::Loaded { partition, epoch, result } => self.loaded(partition, epoch, result),
            Command::Appended { partition, incarnation, token, outcome } => {
                let Some(Slot::Ready(slot)) = self.slots.get_mut(&partition) else { return };
                if slot.incarnation != incarnation {
                    return; // an append of a core since dropped
                }
                slot.core.step(Input::Appended { token, outcome });
                self.perform(partition);
            }
        }
    }

    fn request(
        &mut self,
        partition: u32,
        epoch: LeaderEpoch,
        handle: PartitionHandle,
        request: Request,
        reply: oneshot::Sender<Reply>,
    ) {
        let current = match self.slots.get(&partition) {
            Some(Slot::Loading { epoch }) => Some(*epoch),
            Some(Slot::Ready(slot)) => Some(slot.epoch),
            None => None,
        };
        if current.is_some_and(|current| current < epoch) {
            self.unload(partition); // leadership moved away and back since it loaded
        }
        if current.is_some_and(|current| current > epoch) {
            let message = "the coordinator moved: find it again";
            let _ = reply.send(Reply::Error { code: ErrorCode::NotCoordinator, message: message.into() });
            return;
        }
        let now_ms = self.now_ms();
        match self.slots.get_mut(&partition) {
            Some(Slot::Ready(slot)) => {
                slot.next_id += 1;
                slot.waiting.insert(slot.next_id, reply);
                slot.core.step(Input::Request { id: slot.next_id, request, now_ms });
                self.perform(partition);
            }
            Some(Slot::Loading { .. }) => {
                let _ = reply.send(loading());
            }
            None => {
                self.slots.insert(partition, Slot::Loading { epoch });
                tokio::spawn(load(partition, epoch, handle, self.mailbox.clone()));
                let _ = reply.send(loading());
            }
        }
    }

    fn loaded(&mut self, partition: u32, epoch: LeaderEpoch, result: Result<(Offset, Vec<GroupRecord>), String>) {
        if !matches!(self.slots.get(&partition), Some(Slot::Loading { epoch: loading }) if *loading == epoch) {
            return;
        }
        match result {
            Err(message) => {
                tracing::warn!(partition, %message, "loading the consumer groups of an offsets partition failed; the next request retries");
                self.slots.remove(&partition);
            }
            Ok((marker, records)) => {
                let Ok(handle) =
                    self.assignments.replica(crate::group::OFFSETS_TOPIC, crate::types::PartitionId(partition))
                else {
                    self.slots.remove(&partition);
                    return;
                };
                let core = GroupCoordinator::load(CoordinatorConfig::default(), marker.0, &records, self.now_ms());
                tracing::info!(partition, %marker, records = records.len(), "consumer groups loaded");
                crate::sometimes::hit(crate::sometimes::Sometimes::GroupCoordinatorLoaded);
                let slot = Loaded { epoch, handle, incarnation: marker, core, waiting: BTreeMap::new(), next_id: 0 };
                self.slots.insert(partition, Slot::Ready(Box::new(slot)));
            }
        }
    }

    fn tick(&mut self) {
        let now_ms = self.now_ms();
        for partition in self.slots.keys().copied().collect::<Vec<_>>() {
            let leads = self.assignments.leads_offsets_partition(partition);
            match self.slots.get_mut(&partition) {
                Some(Slot::Ready(slot)) if leads == Some(slot.epoch) => {
                    slot.core.step(Input::Tick { now_ms });
                    self.perform(partition);
                }
                Some(Slot::Loading { epoch }) if leads == Some(*epoch) => {}
                _ => self.unload(partition),
            }
        }
    }

    /// Performs the core's `Ready`: appends (each awaited in its own task), then replies.
    fn perform(&mut self, partition: u32) {
        let Some(Slot::Ready(slot)) = self.slots.get_mut(&partition) else { return };
        let Ready { appends, replies, reload } = slot.core.take_ready();
        for append in appends {
            let records: Vec<Record> = append.records.iter().map(GroupRecord::to_record).collect();
            let batch = Batch::parse(encode_batch(&records, crate::clock::wall_clock_ms(), ProducerFields::NONE))
                .expect("a batch this code encoded parses");
            let (handle, mailbox, incarnation) = (slot.handle.clone(), self.mailbox.clone(), slot.incarnation);
            tokio::spawn(async move {
                let outcome = append_outcome(&handle, batch).await;
                let _ = mailbox.send(Command::Appended { partition, incarnation, token: append.token, outcome }).await;
            });
        }
        for (id, reply) in replies {
            if let Some(sender) = slot.waiting.remove(&id) {
                let _ = sender.send(reply);
            }
        }
        if reload {
            tracing::info!(partition, "an offsets append has an unknown outcome: reloading the partition's groups");
            self.unload(partition);
        }
    }

    fn unload(&mut self, partition: u32) {
        if let Some(Slot::Ready(mut slot)) = self.slots.remove(&partition) {
            for (id, reply) in slot.core.unload() {
                if let Some(sender) = slot.waiting.remove(&id) {
                    let _ = sender.send(reply);
                }
            }
            for (_, sender) in std::mem::take(&mut slot.waiting) {
                let message = "the coordinator moved: find it again";
                let _ = sender.send(Reply::Error { code: ErrorCode::NotCoordinator, message: message.into() });
            }
        }
    }
}

fn loading() -> Reply {
    Reply::Error {
        code: ErrorCode::CoordinatorLoadInProgress,
        message: "the coordinator is loading its groups: retry shortly".into(),
    }
}

/// Appends `batch` with `acks=all` and waits (bounded) for its outcome.
async fn append_outcome(handle: &PartitionHandle, batch: Batch) -> AppendOutcome {
    let pending = handle.append(batch, Acks::All).await;
    match tokio::time::timeout(APPEND_TIMEOUT, pending).await {
        Ok(Ok(PartitionReply::Produced { .. })) => AppendOutcome::Committed,
        Ok(Ok(PartitionReply::Error { code, message }))
            if code.is_indeterminate() || code == ErrorCode::ShuttingDown =>
        {
            AppendOutcome::Unknown { message }
        }
        Ok(Ok(PartitionReply::Error { code, message })) => AppendOutcome::Failed { code, message },
        Ok(Ok(other)) => AppendOutcome::Unknown { message: format!("unexpected partition reply {other:?}") },
        Ok(Err(_)) => AppendOutcome::Unknown { message: "the partition stopped before answering".into() },
        Err(_) => AppendOutcome::Unknown { message: format!("not committed within {APPEND_TIMEOUT:?}") },
    }
}

/// A new coordinator's load: a marker committed with `acks=all`, then every record below it.
async fn load(partition: u32, epoch: LeaderEpoch, handle: PartitionHandle, mailbox: mpsc::Sender<Command>) {
    let result = load_records(epoch, &handle).await;
    let _ = mailbox.send(Command::Loaded { partition, epoch, result }).await;
}

async fn load_records(epoch: LeaderEpoch, handle: &PartitionHandle) -> Result<(Offset, Vec<GroupRecord>), String> {
    let marker = GroupRecord::Marker { leader_epoch: epoch.0 }.to_record();
    let batch = Batch::parse(encode_batch(&[marker], crate::clock::wall_clock_ms(), ProducerFields::NONE))
        .expect("a batch this code encoded parses");
    let marker = match tokio::time::timeout(APPEND_TIMEOUT, handle.append(batch, Acks::All).await).await {
        Ok(Ok(PartitionReply::Produced { base_offset })) => base_offset,
        Ok(Ok(PartitionReply::Error { code, message })) => {
            return Err(format!("marker not appended: {code:?}: {message}"))
        }
        other => return Err(format!("marker not appended: {other:?}")),
    };
    let mut offset = match handle.list_offsets(OffsetSpec::Earliest).await.await {
        Ok(PartitionReply::Offset { offset, .. }) => offset.unwrap_or(Offset(0)),
        other => return Err(format!("no log start: {other:?}")),
    };
    let mut records = Vec::new();
    while offset < marker {
        let bytes = match handle.fetch(offset, LOAD_FETCH_BYTES, 0).await.await {
            Ok(PartitionReply::Fetched { records, .. }) if !records.is_empty() => records,
            other => return Err(format!("reading at {offset}: {other:?}")),
        };
        offset = decode_into(bytes, offset, marker, &mut records)?;
    }
    Ok((marker, records))
}

/// Appends the group records of `bytes` (whole batches) below `end` to `out`; returns the offset
/// after the last batch.
fn decode_into(mut bytes: Bytes, mut next: Offset, end: Offset, out: &mut Vec<GroupRecord>) -> Result<Offset, String> {
    while let Some(batch) = Batch::split_first(&mut bytes).map_err(|error| format!("at {next}: {error}"))? {
        for record in batch.records() {
            let record = record.map_err(|error| format!("in the batch at {}: {error}", batch.base_offset()))?;
            if record.offset >= end {
                break;
            }
            match GroupRecord::from_record(&record) {
                Ok(decoded) => out.push(decoded),
                // A record of a newer format: this broker cannot know its meaning; skipping it is
                // safer than refusing to coordinate every group of the partition.
                Err(error) => tracing::warn!(offset = %record.offset, %error, "skipping an offsets record"),
            }
        }
        next = batch.next_offset();
    }
    Ok(next)
}

/// The wire side: a group request's body in, its response's body out.
pub mod wire {
    use std::collections::BTreeSet;

    use super::*;
    use crate::group::assignor::{Assignor, TopicPartition};
    use crate::group::coordinator::{GroupDescription, JoinRequest};
    use crate::group::{validate_group_id, OFFSETS_TOPIC};
    use crate::protocol::*;

    fn info(code: ErrorCode, message: impl Into<String>) -> Option<ErrorInfo> {
        Some(ErrorInfo::new(code, message))
    }

    fn partitions_of(offsets: &[PartitionOffset]) -> Vec<(TopicPartition, i64)> {
        offsets.iter().map(|o| ((o.topic.clone(), o.partition), o.offset)).collect()
    }

    fn offsets_of(offsets: Vec<(TopicPartition, i64)>) -> Vec<PartitionOffset> {
        offsets.into_iter().map(|((topic, partition), offset)| PartitionOffset { topic, partition, offset }).collect()
    }

    /// Groups partitions by topic, in order.
    pub fn topic_partitions(assignment: &[TopicPartition]) -> Vec<TopicPartitions> {
        let mut out: Vec<TopicPartitions> = Vec::new();
        for (topic, partition) in assignment {
            match out.last_mut() {
                Some(last) if last.topic == *topic => last.partitions.push(*partition),
                _ => out.push(TopicPartitions { topic: topic.clone(), partitions: vec![*partition] }),
            }
        }
        out
    }

    fn summary(description: &GroupDescription, coordinator: u64) -> GroupSummaryInfo {
        GroupSummaryInfo {
            group: description.group.clone(),
            state: description.state.name().to_owned(),
            generation: description.generation,
            members: description.members.len() as u32,
            coordinator,
        }
    }

    /// The group id a request names (every group request names one, except `ListGroups`).
    fn group_of(body: &Body) -> Option<&str> {
        Some(match body {
            Body::JoinGroupRequest(r) => &r.group,
            Body::SyncGroupRequest(r) => &r.group,
            Body::HeartbeatRequest(r) => &r.group,
            Body::LeaveGroupRequest(r) => &r.group,
            Body::OffsetCommitRequest(r) => &r.group,
            Body::OffsetFetchRequest(r) => &r.group,
            Body::ResetOffsetsRequest(r) => &r.group,
            Body::DescribeGroupRequest(r) => &r.group,
            _ => return None,
        })
    }

    /// The core's request for a wire request (`Err`: the answer, without asking the core).
    fn to_request<D: Disk>(assignments: &Assignments<D>, body: Body) -> Result<Request, Reply> {
        Ok(match body {
            Body::JoinGroupRequest(r) => {
                let topics: BTreeSet<String> = r.topics.into_iter().collect();
                let assignors = r.assignors.iter().filter_map(|name| Assignor::parse(name)).collect();
                let partitions = assignments.partition_counts(&topics);
                if let Some(missing) = topics.iter().find(|topic| !partitions.contains_key(*topic)) {
                    return Err(Reply::Error {
                        code: ErrorCode::UnknownTopic,
                        message: format!("unknown topic {missing:?}"),
                    });
                }
                Request::Join(JoinRequest {
                    group: r.group,
                    member_id: r.member_id,
                    client_id: r.client_id,
                    session_timeout_ms: r.session_timeout_ms,
                    topics,
                    assignors,
                    partitions,
                })
            }
            Body::SyncGroupRequest(r) => {
                Request::Sync { group: r.group, generation: r.generation, member_id: r.member_id }
            }
            Body::HeartbeatRequest(r) => {
                Request::Heartbeat { group: r.group, generation: r.generation, member_id: r.member_id }
            }
            Body::LeaveGroupRequest(r) => Request::Leave { group: r.group, member_id: r.member_id },
            Body::OffsetCommitRequest(r) => Request::Commit {
                offsets: partitions_of(&r.offsets),
                group: r.group,
                generation: r.generation,
                member_id: r.member_id,
            },
            Body::OffsetFetchRequest(r) => Request::FetchOffsets { group: r.group },
            Body::ResetOffsetsRequest(r) => Request::Reset { offsets: partitions_of(&r.offsets), group: r.group },
            Body::DescribeGroupRequest(r) => Request::Describe { group: r.group },
            other => {
                return Err(Reply::Error {
                    code: ErrorCode::InvalidRequest,
                    message: format!("not a group request: {other:?}"),
                })
            }
        })
    }

    /// The response body of the request `kind` (a request body) for `reply`.
    fn response(kind: &Body, reply: Reply, node_id: u64) -> Body {
        let (error, reply) = match reply {
            Reply::Error { code, message } => (info(code, message), None),
            other => (None, Some(other)),
        };
        match (kind, reply) {
            (
                Body::JoinGroupRequest(_),
                Some(Reply::Joined { generation, member_id, leader_id, assignor, assignment }),
            ) => Body::JoinGroupResponse(JoinGroupResponse {
                error,
                generation,
                member_id,
                leader_id,
                assignor: assignor.name().to_owned(),
                assignment: topic_partitions(&assignment),
            }),
            (Body::JoinGroupRequest(_), Some(Reply::MemberIdRequired(member_id))) => {
                Body::JoinGroupResponse(JoinGroupResponse {
                    error: info(ErrorCode::MemberIdRequired, "join again with the member id given"),
                    member_id,
                    ..Default::default()
                })
            }
            (Body::JoinGroupRequest(_), _) => {
                Body::JoinGroupResponse(JoinGroupResponse { error, ..Default::default() })
            }
            (Body::SyncGroupRequest(_), reply) => Body::SyncGroupResponse(SyncGroupResponse {
                error,
                assignment: match reply {
                    Some(Reply::Assignment(assignment)) => topic_partitions(&assignment),
                    _ => Vec::new(),
                },
            }),
            (Body::HeartbeatRequest(_), _) => Body::HeartbeatResponse(HeartbeatResponse { error }),
            (Body::LeaveGroupRequest(_), _) => Body::LeaveGroupResponse(LeaveGroupResponse { error }),
            (Body::OffsetCommitRequest(_), _) => Body::OffsetCommitResponse(OffsetCommitResponse { error }),
            (Body::ResetOffsetsRequest(_), _) => Body::ResetOffsetsResponse(ResetOffsetsResponse { error }),
            (Body::OffsetFetchRequest(_), reply) => Body::OffsetFetchResponse(OffsetFetchResponse {
                error,
                offsets: match reply {
                    Some(Reply::Offsets(offsets)) => offsets_of(offsets),
                    _ => Vec::new(),
                },
            }),
            (_, Some(Reply::Described(description))) => {
                let members = description
                    .members
                    .iter()
                    .map(|m| GroupMemberInfo {
                        member_id: m.id.clone(),
                        client_id: m.client_id.clone(),
                        topics: m.topics.clone(),
                        assignment: topic_partitions(&m.assignment),
                    })
                    .collect();
                Body::DescribeGroupResponse(Box::new(DescribeGroupResponse {
                    error,
                    summary: Some(summary(&description, node_id)),
                    assignor: description.assignor.name().to_owned(),
                    members,
                    offsets: offsets_of(description.offsets),
                }))
            }
            (_, _) => Body::DescribeGroupResponse(Box::new(DescribeGroupResponse { error, ..Default::default() })),
        }
    }

    /// Serves one group request (any of Body tags 36-55). `offsets_topic`: what `__consumer_offsets`
    /// is created with, if this request is the first to need it.
    pub async fn serve<D: Disk>(
        coordinators: &Coordinators,
        assignments: &Assignments<D>,
        offsets_topic: crate::server::assignments::OffsetsTopic,
        body: Body,
    ) -> Body {
        let node_id = assignments.node_id.0;
        match body {
            Body::FindCoordinatorRequest(request) => {
                let error = |code, message: String| {
                    Body::FindCoordinatorResponse(FindCoordinatorResponse {
                        error: info(code, message),
                        ..Default::default()
                    })
                };
                if let Err(invalid) = validate_group_id(&request.group) {
                    return error(invalid.code, invalid.message);
                }
                match assignments.find_coordinator(&request.group, offsets_topic).await {
                    Ok((partition, leader, (addr, kafka_addr))) => {
                        Body::FindCoordinatorResponse(FindCoordinatorResponse {
                            error: None,
                            node_id: leader.0,
                            addr,
                            partition,
                            kafka_addr,
                        })
                    }
                    Err(failure) => error(failure.code, failure.message),
                }
            }
            Body::ListGroupsRequest(_) => {
                let partitions = assignments.partition_counts(&[OFFSETS_TOPIC.to_owned()]).get(OFFSETS_TOPIC).copied();
                let mut groups = Vec::new();
                for reply in coordinators.list(assignments, partitions.unwrap_or(0)).await {
                    if let Reply::Groups(list) = reply {
                        groups.extend(list.iter().map(|description| summary(description, node_id)));
                    }
                }
                Body::ListGroupsResponse(ListGroupsResponse { error: None, groups })
            }
            body => {
                let Some(group) = group_of(&body).map(str::to_owned) else {
                    let message = "not a group request";
                    return Body::ErrorResponse(ErrorResponse { error: info(ErrorCode::InvalidRequest, message) });
                };
                let kind = request_kind(&body);
                let reply = match validate_group_id(&group) {
                    Err(invalid) => Reply::Error { code: invalid.code, message: invalid.message },
                    Ok(()) => match to_request(assignments, body) {
                        Ok(request) => coordinators.request(assignments, &group, request).await,
                        Err(reply) => reply,
                    },
                };
                response(&kind, reply, node_id)
            }
        }
    }

    /// An empty request of the same kind (to pick the response type after the request moved).
    fn request_kind(body: &Body) -> Body {
        match body {
            Body::JoinGroupRequest(_) => Body::JoinGroupRequest(Default::default()),
            Body::SyncGroupRequest(_) => Body::SyncGroupRequest(Default::default()),
            Body::HeartbeatRequest(_) => Body::HeartbeatRequest(Default::default()),
            Body::LeaveGroupRequest(_) => Body::LeaveGroupRequest(Default::default()),
            Body::OffsetCommitRequest(_) => Body::OffsetCommitRequest(Default::default()),
            Body::OffsetFetchRequest(_) => Body::OffsetFetchRequest(Default::default()),
            Body::ResetOffsetsRequest(_) => Body::ResetOffsetsRequest(Default::default()),
            _ => Body::DescribeGroupRequest(Default::default()),
        }
    }
}
