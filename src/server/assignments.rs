//! The broker's partition assignments: the metadata Raft node, and the partition actors this
//! broker runs because the applied metadata assigns them to it.
//!
//! Topic admin goes through Raft: `create_topic` proposes `CreateTopic` (from any node; raft-rs
//! forwards the proposal to the leader) and returns once the command is applied **on this node**,
//! so a describe here afterwards sees it; a describe on another node first waits for a Raft
//! read barrier (ReadIndex), which makes it linearizable too.
//!
//! A reconciler follows the applied metadata: it starts an actor for every partition this broker
//! leads and stops (and deletes the data of) partitions whose topic is gone. Partition data lives in
//! `data/<topic>@<created index>/<partition>/`: `@` cannot appear in a topic name, and the Raft index
//! of the `CreateTopic` tells a re-created topic from its deleted predecessor.
//!
//! Background duties: register this broker, heartbeat, and (on the leader) fence brokers whose
//! heartbeats stopped. Fencing moves leadership in the same metadata entry (ADR 0012), so the fence
//! decision is guarded: the leader never fences itself, and it fences a broker only when the
//! broker's heartbeat stamp has stood still for the whole fence timeout of the leader's own
//! monotonic clock, while it was leader and ticking without a gap (`meta::fence_watch`, ADR 0015:
//! the brokers' wall clocks, which stamp the heartbeats, are never compared with the leader's; a
//! paused leader would otherwise see every broker's heartbeats as missed at once and fence them
//! all, as a freshly elected KRaft controller gives every broker a fresh session for the same
//! reason).
//!
//! Graceful shutdown: [`Cluster::controlled_shutdown`] proposes `ControlledShutdown`, which moves the
//! leadership of this broker's partitions to other ISR members before the broker stops.
//!
//! Lock order: `reconciling` (tokio mutex, held across awaits by `reconcile` only) before
//! `partitions` (std RwLock, never held across an await); the node's state lock is never held
//! together with either (`NodeHandle::with_state` returns owned data).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::group::OFFSETS_TOPIC;
use crate::log::LogConfig;
use crate::meta::fence_watch::FenceWatch;
use crate::meta::node::{NodeError, NodeHandle};
use crate::meta::state::{
    CleanupPolicy, LogSettingsChange, MetaCommand, MetaResult, MetadataState, PartitionRecord, TopicRecord,
};
use crate::partition::replica::{PartitionState, ReplicaConfig};
use crate::partition::retention::{LogPolicy, Retention};
use crate::partition::{spawn_partition, PartitionHandle, PartitionSpec};
use crate::peer::PeerTransport;
use crate::protocol::{
    AlterTopicRequest, BrokerInfo, CreateTopicRequest, ErrorCode, ErrorInfo, LogSettingsInfo, MetadataResponse,
    PartitionHealthInfo, PartitionInfo, TopicInfo, UpsertUserRequest, UserInfo, STATUS_PARTITIONS_MAX,
};
use crate::server::replication::PartitionNet;
use crate::server::topics::{validate_topic_name, TopicError};
use crate::storage::Disk;
use crate::types::{LeaderEpoch, NodeId, PartitionId, ProducerId};

/// How often this broker heartbeats into the metadata log.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
/// How long a graceful shutdown waits for its `ControlledShutdown` to apply before it stops anyway.
pub const CONTROLLED_SHUTDOWN_TIMEOUT_MS: u64 = 3_000;
/// Between two proposals of a command that found no Raft leader or lost it (graceful shutdown).
const PROPOSAL_RETRY_MS: u64 = 20;
/// A gap between two heartbeat ticks longer than this means this process was paused (or its clock
/// jumped): the fence watch starts over.
const TICK_GAP_MS_MAX: u64 = 3_000;

/// The time left until `deadline` (madsim's `tokio::time` has no `timeout_at`).
fn until(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}

/// Identity of one partition incarnation: topic, its `CreateTopic` index, partition.
type PartitionKey = (String, u64, PartitionId);

/// The addresses this broker registers under: its native listener's, and its Kafka listener's
/// (ADR 0026; empty when it has none).
#[derive(Clone, Debug, Default)]
pub struct Advertised {
    pub addr: String,
    pub kafka_addr: String,
}

/// The bounds an [`Assignments`] enforces (from the broker config).
#[derive(Debug, Clone, Copy)]
pub struct AssignmentLimits {
    pub partitions_per_topic_max: u32,
    pub topics_max: usize,
    /// Partition replicas one broker may host (admission, issue 15).
    pub partitions_max: u64,
    pub fence_after_ms: u64,
    /// The partition files this broker keeps open (sizes how many partitions open at once).
    pub files_max: usize,
}

pub struct Assignments<D: Disk> {
    pub node_id: NodeId,
    pub node: NodeHandle,
    transport: PeerTransport,
    disk: D,
    log_config: LogConfig,
    replica_config: ReplicaConfig,
    partitions_per_topic_max: u32,
    /// Topics this broker lets the cluster grow to (its `topics_max`; the state machine's own bound,
    /// `TOPICS_MAX`, holds whatever the brokers are configured with).
    topics_max: usize,
    /// Partition replicas a broker may host (this broker's `partitions_max`, assumed of every broker).
    partitions_max: u64,
    /// How many of this broker's partitions open at once (lazy start-up, issue 15).
    opens: crate::partition::actor::OpenGates,
    /// Each running replica, with the partition state it was last given.
    partitions: RwLock<BTreeMap<PartitionKey, (PartitionHandle, PartitionState)>>,
    /// Serialises `reconcile` (it awaits while starting and stopping actors; two overlapping runs
    /// would open one partition twice), and holds what the last one brought the replicas in line
    /// with: the state's `topics_changed_at` and `registered`, which are all `desired` reads.
    reconciling: tokio::sync::Mutex<Option<(u64, bool)>>,
    /// This incarnation's `RegisterBroker` is applied. Until then this broker leads nothing: the
    /// metadata it replayed at startup may name it leader in an epoch it led before it restarted, and
    /// a broker never leads such an epoch again (the registration moves its partitions to a new one;
    /// ADR 0011, the replica core's contract).
    registered: AtomicBool,
    /// Set by `stop_partitions`: `reconcile` opens nothing any more.
    partitions_stopped: AtomicBool,
    /// Until when this broker may serve the partitions it leads (ADR 0014): a heartbeat sent at `t`
    /// and applied means the controller fences this broker no earlier than `t + fence_after_ms`, so
    /// no other broker can lead its partitions before then. `None` until the registration applies.
    lease_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// How long a lease lasts from the heartbeat that granted it (`fence_after_ms` less a margin for
    /// clock skew between this broker and the controller).
    lease_ms: u64,
    /// Set by `controlled_shutdown` before it proposes `ControlledShutdown`: that entry gives this
    /// broker's partitions new leaders at once, not a fence timeout after its last heartbeat, so from
    /// then on the lease no longer holds, whatever heartbeats apply (ADR 0014).
    lease_revoked: AtomicBool,
    /// The rest of the producer-id block this broker took from the metadata group: `[next, end)`.
    producer_ids: tokio::sync::Mutex<(i64, i64)>,
    /// The broker's metrics, handed to every partition actor.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Partitions a stopping broker closes at once.
const PARTITION_STOPS_MAX: usize = 64;

/// Producer ids a broker takes from the metadata group at a time (one Raft write per block).
pub const PRODUCER_ID_BLOCK: u64 = 1000;

fn node_error(error: NodeError) -> TopicError {
    let code = match error {
        NodeError::NoLeader => ErrorCode::NotLeader,
        NodeError::Timeout | NodeError::LeaderChanged | NodeError::StoppedInFlight => ErrorCode::Timeout,
        NodeError::ShuttingDown => ErrorCode::ShuttingDown,
        NodeError::Storage(_) | NodeError::Raft(_) => ErrorCode::Internal,
    };
    TopicError { code, message: error.to_string() }
}

fn result_error(result: MetaResult) -> Result<MetaResult, TopicError> {
    match result {
        MetaResult::Error { code, message } => Err(TopicError { code, message }),
        other => Ok(other),
    }
}

/// The lease a heartbeat grants: the fence timeout less a third of it, the margin for clock skew
/// between this broker and the controller (fencing compares the heartbeat's wall-clock time with the
/// controller's).
fn lease_ms(fence_after_ms: u64) -> u64 {
    fence_after_ms - fence_after_ms / 3
}

fn now_ms() -> i64 {
    crate::clock::wall_clock_ms()
}

impl<D: Disk> Assignments<D> {
    pub fn new(
        node_id: NodeId,
        node: NodeHandle,
        transport: PeerTransport,
        disk: D,
        (log_config, replica_config): (LogConfig, ReplicaConfig),
        limits: AssignmentLimits,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Assignments<D>> {
        let AssignmentLimits { partitions_per_topic_max, topics_max, partitions_max, fence_after_ms, files_max } =
            limits;
        Arc::new(Assignments {
            node_id,
            node,
            transport,
            disk,
            log_config,
            replica_config,
            partitions_per_topic_max,
            topics_max,
            partitions_max,
            opens: crate::partition::actor::OpenGates::for_budget(files_max),
            partitions: RwLock::new(BTreeMap::new()),
            reconciling: tokio::sync::Mutex::new(None),
            registered: AtomicBool::new(false),
            partitions_stopped: AtomicBool::new(false),
            lease_until: std::sync::Mutex::new(None),
            lease_ms: lease_ms(fence_after_ms),
            lease_revoked: AtomicBool::new(false),
            producer_ids: tokio::sync::Mutex::new((0, 0)),
            metrics,
        })
    }

    /// What a scrape and `/readyz` need from this broker's metadata node and applied metadata.
    pub fn view(&self) -> crate::metrics::BrokerView {
        let status = self.node.status();
        let registered = self.registered.load(Ordering::Acquire);
        let desired: Vec<PartitionKey> = self.desired(registered).into_iter().map(|(key, _)| key).collect();
        let running = {
            let partitions = self.partitions.read().expect("partitions lock");
            desired.iter().filter(|key| partitions.contains_key(*key)).count()
        };
        let (offline, under_replicated) = self.node.with_state(|state| {
            let partitions = state.topics().flat_map(|topic| topic.partitions.iter());
            partitions.fold((0, 0), |(offline, under), p| {
                (offline + u64::from(p.is_offline()), under + u64::from(p.is_under_replicated()))
            })
        });
        crate::metrics::BrokerView {
            node_id: self.node_id.0,
            raft_role: status.role.to_string(),
            raft_term: status.term,
            raft_commit_index: status.commit_index,
            raft_applied_index: status.applied_index,
            raft_leader: status.leader_id.map(|leader| leader.0),
            raft_leader_changes: status.leader_changes,
            registered,
            holds_lease: self.holds_lease(),
            replicas_assigned: desired.len() as u64,
            replicas_running: running as u64,
            offline_partitions: offline,
            under_replicated_partitions: under_replicated,
        }
    }

    /// A new idempotent producer identity (ADR 0015): the next id of this broker's block, taking a
    /// new block of [`PRODUCER_ID_BLOCK`] ids through Raft when it runs out (so no two brokers, and no
    /// two incarnations of one, ever hand out the same id), and epoch 0. Needs a metadata majority
    /// only once per block.
    pub async fn init_producer_id(&self) -> Result<ProducerId, TopicError> {
        let mut block = self.producer_ids.lock().await;
        if block.0 >= block.1 {
            let command = MetaCommand::AllocateProducerIds { count: PRODUCER_ID_BLOCK };
            match self.node.propose(command).await.map_err(node_error)? {
                MetaResult::ProducerIds { first, count } => *block = (first.0, first.0 + count as i64),
                MetaResult::Error { code, message } => return Err(TopicError { code, message }),
                other => {
                    let message = format!("allocating producer ids: unexpected answer {other:?}");
                    return Err(TopicError { code: ErrorCode::Internal, message });
                }
            }
        }
        let id = ProducerId(block.0);
        block.0 += 1;
        Ok(id)
    }

    pub async fn create_topic(&self, request: &CreateTopicRequest) -> Result<(), TopicError> {
        let (name, partitions) = (request.name.as_str(), request.partitions);
        validate_topic_name(name)?;
        if partitions == 0 || partitions > self.partitions_per_topic_max {
            return Err(TopicError {
                code: ErrorCode::InvalidPartitions,
                message: format!(
                    "partitions must be between 1 and {}, got {partitions}",
                    self.partitions_per_topic_max
                ),
            });
        }
        // Checked against the applied state before proposing: a limit for this broker's clients, not
        // a linearizable bound (two creates through two brokers may both pass it; `TOPICS_MAX` in the
        // state machine is the hard one).
        let topics = self.node.with_state(|state| state.topics().count());
        if topics >= self.topics_max {
            return Err(TopicError {
                code: ErrorCode::InvalidRequest,
                message: format!("the cluster has {topics} topics; this broker's topics_max is {}", self.topics_max),
            });
        }
        // Replication 0 is the protobuf default of an old client that did not set it: 1, as before.
        self.admit_partitions(partitions, request.replication.max(1))?;
        let command = MetaCommand::CreateTopic {
            name: name.to_owned(),
            partitions,
            replication: request.replication.max(1),
            min_insync_replicas: request.min_insync_replicas,
            unclean_leader_election: request.unclean_leader_election,
            log: log_change(request.log.as_deref())?,
        };
        result_error(self.node.propose(command).await.map_err(node_error)?)?;
        self.reconcile().await;
        Ok(())
    }

    /// Refuses a create that would place more than `partitions_max` replicas on some broker (where
    /// the state machine would place them now), so a topic is never accepted half-hosted. Like
    /// `topics_max`, checked against the applied state: two creates at once may both pass.
    fn admit_partitions(&self, partitions: u32, replication: u32) -> Result<(), TopicError> {
        let over = self.node.with_state(|state| {
            // A placement the state machine refuses is refused by it, with its own error.
            let placement = state.assign_replicas(partitions, replication).ok()?;
            let mut hosted = state.replicas_per_broker();
            for replica in placement.iter().flat_map(|assignment| &assignment.replicas) {
                *hosted.entry(*replica).or_insert(0) += 1;
            }
            hosted.into_iter().filter(|(_, count)| *count > self.partitions_max).max_by_key(|(_, count)| *count)
        });
        match over {
            None => Ok(()),
            Some((node, count)) => Err(TopicError {
                code: ErrorCode::TooManyPartitions,
                message: format!(
                    "creating {partitions} partitions x {replication} replicas would place {count} partition replicas \
                     on broker {node}; a broker hosts at most {} (partitions_max)",
                    self.partitions_max
                ),
            }),
        }
    }

    /// Changes a topic's log settings; every replica's actor gets them at the next reconcile.
    pub async fn alter_topic(&self, request: &AlterTopicRequest) -> Result<(), TopicError> {
        validate_topic_name(&request.name)?;
        let command = MetaCommand::AlterTopic { name: request.name.clone(), log: log_change(request.log.as_ref())? };
        result_error(self.node.propose(command).await.map_err(node_error)?)?;
        self.reconcile().await;
        Ok(())
    }

    /// `keel user create` (ADR 0029): the credential as the client derived it.
    pub async fn upsert_user(&self, request: &UpsertUserRequest) -> Result<(), TopicError> {
        let credential = crate::auth::scram::Credential {
            salt: request.salt.clone(),
            iterations: request.iterations,
            stored_key: request.stored_key.clone(),
            server_key: request.server_key.clone(),
        };
        let command = MetaCommand::UpsertUser { name: request.name.clone(), credential };
        result_error(self.node.propose(command).await.map_err(node_error)?)?;
        Ok(())
    }

    pub async fn delete_user(&self, name: &str) -> Result<(), TopicError> {
        let command = MetaCommand::DeleteUser { name: name.to_owned() };
        result_error(self.node.propose(command).await.map_err(node_error)?)?;
        Ok(())
    }

    /// Every user (names and iteration counts only), after a read barrier (as `metadata`).
    pub async fn list_users(&self) -> Result<Vec<UserInfo>, TopicError> {
        self.node.read_barrier().await.map_err(node_error)?;
        Ok(self.node.with_state(|state| {
            let users = state.users().map(|(name, credential)| UserInfo {
                name: name.clone(),
                mechanism: crate::auth::scram::MECHANISM.to_owned(),
                iterations: credential.iterations,
            });
            users.collect()
        }))
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), TopicError> {
        validate_topic_name(name)?;
        let command = MetaCommand::DeleteTopic { name: name.to_owned() };
        result_error(self.node.propose(command).await.map_err(node_error)?)?;
        self.reconcile().await;
        Ok(())
    }

    /// Linearizable metadata: waits for a Raft read barrier, then reads the applied state.
    pub async fn metadata(&self, topics: &[String]) -> Result<MetadataResponse, TopicError> {
        self.node.read_barrier().await.map_err(node_error)?;
        Ok(self.node.with_state(|state| describe(state, topics)))
    }

    /// The local actor of a partition this broker leads, or why not (client requests). The actor
    /// itself refuses with `NotLeader` if leadership moved since the applied state said so.
    pub fn partition(&self, topic: &str, partition: PartitionId) -> Result<PartitionHandle, TopicError> {
        let (key, record) = self.lookup(topic, partition)?;
        if record.leader != Some(self.node_id) {
            let leader = record.leader.map_or("none (offline)".to_owned(), |leader| leader.to_string());
            return Err(TopicError {
                code: ErrorCode::NotLeader,
                message: format!("broker {} does not lead {topic}/{partition}; its leader is {leader}", self.node_id),
            });
        }
        if self.lease_revoked.load(Ordering::Acquire) {
            return Err(TopicError {
                code: ErrorCode::NotLeader,
                message: format!(
                    "broker {} is shutting down and handing {topic}/{partition} to another replica: refresh metadata",
                    self.node_id
                ),
            });
        }
        if !self.holds_lease() {
            return Err(TopicError {
                code: ErrorCode::NotLeader,
                message: format!(
                    "broker {} has not heartbeated to the controller for {} ms; {topic}/{partition} may have \
                     another leader now: refresh metadata",
                    self.node_id, self.lease_ms
                ),
            });
        }
        self.running(&key).ok_or_else(|| TopicError {
            code: ErrorCode::NotLeader,
            message: format!("{topic}/{partition} is being opened on broker {}; retry", self.node_id),
        })
    }

    /// The `__consumer_offsets` partition `group` maps to, with its local actor and leader epoch when
    /// this broker leads it under a live lease (ADR 0020): `NotCoordinator` if another broker leads
    /// it, `CoordinatorNotAvailable` while the offsets topic does not exist.
    pub fn coordinator_for(&self, group: &str) -> Result<(u32, PartitionHandle, LeaderEpoch), TopicError> {
        let count = self.node.with_state(|state| state.topic(OFFSETS_TOPIC).map(|topic| topic.partitions.len() as u32));
        let Some(count) = count.filter(|count| *count > 0) else {
            return Err(TopicError {
                code: ErrorCode::CoordinatorNotAvailable,
                message: format!("the {OFFSETS_TOPIC} topic does not exist yet: find the coordinator first"),
            });
        };
        let partition = crate::group::coordinator_partition(group, count);
        let (_, record) = self.lookup(OFFSETS_TOPIC, PartitionId(partition))?;
        let handle = self.partition(OFFSETS_TOPIC, PartitionId(partition)).map_err(|error| TopicError {
            code: if error.code == ErrorCode::NotLeader { ErrorCode::NotCoordinator } else { error.code },
            message: format!("not the coordinator of group {group:?}: {}", error.message),
        })?;
        Ok((partition, handle, record.leader_epoch))
    }

    /// The leader epoch of an offsets partition this broker leads under a live lease, if it does.
    pub fn leads_offsets_partition(&self, partition: u32) -> Option<LeaderEpoch> {
        let (_, record) = self.lookup(OFFSETS_TOPIC, PartitionId(partition)).ok()?;
        self.partition(OFFSETS_TOPIC, PartitionId(partition)).ok()?;
        Some(record.leader_epoch)
    }

    /// The cleanup policy of `topic` in the applied metadata (`None`: no such topic). The produce
    /// path refuses keyless records for a compacted topic with it.
    pub fn cleanup_policy(&self, topic: &str) -> Option<CleanupPolicy> {
        self.node.with_state(|state| state.topic(topic).map(|record| record.log.cleanup_policy))
    }

    /// The partition count of each of `topics` that exists.
    pub fn partition_counts<'a>(&self, topics: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, u32> {
        self.node.with_state(|state| {
            topics
                .into_iter()
                .filter_map(|name| state.topic(name).map(|topic| (name.clone(), topic.partitions.len() as u32)))
                .collect()
        })
    }

    /// Where `group`'s coordinator is, from the applied metadata: the offsets partition, its leader
    /// and the leader's address. Creates the offsets topic the first time any group needs it
    /// (`partitions`, replication `min(replication, alive brokers)`; compacted and never deleted by
    /// time, as Kafka's: a group's latest commit must outlive any retention), answering
    /// `CoordinatorNotAvailable` meanwhile.
    pub async fn find_coordinator(
        &self,
        group: &str,
        offsets_topic: OffsetsTopic,
    ) -> Result<(u32, NodeId, (String, String)), TopicError> {
        let unavailable = |message: String| TopicError { code: ErrorCode::CoordinatorNotAvailable, message };
        let found = self.node.with_state(|state| {
            let topic = state.topic(OFFSETS_TOPIC)?;
            let partition = crate::group::coordinator_partition(group, topic.partitions.len() as u32);
            let leader = topic.partitions[partition as usize].leader;
            let addr = leader.and_then(|leader| {
                state
                    .brokers()
                    .find(|b| b.node_id == leader && b.is_alive())
                    .map(|b| (b.addr.clone(), b.kafka_addr.clone()))
            });
            Some((partition, leader, addr))
        });
        match found {
            Some((partition, Some(leader), Some(addr))) => Ok((partition, leader, addr)),
            Some((partition, _, _)) => {
                Err(unavailable(format!("{OFFSETS_TOPIC}/{partition} has no leader right now; retry")))
            }
            None => {
                let alive = self.node.with_state(|state| state.brokers().filter(|b| b.is_alive()).count() as u32);
                let request = CreateTopicRequest {
                    name: OFFSETS_TOPIC.to_owned(),
                    partitions: offsets_topic.partitions,
                    replication: offsets_topic.replication.min(alive).max(1),
                    log: Some(Box::new(LogSettingsInfo {
                        retention_ms: Some(-1),
                        segment_bytes: Some(offsets_topic.segment_bytes),
                        cleanup_policy: Some(CleanupPolicy::Compact.as_str().to_owned()),
                        ..LogSettingsInfo::default()
                    })),
                    ..CreateTopicRequest::default()
                };
                match self.create_topic(&request).await {
                    Ok(()) => {}
                    Err(error) if error.code == ErrorCode::TopicAlreadyExists => {}
                    Err(error) => return Err(unavailable(format!("creating {OFFSETS_TOPIC}: {}", error.message))),
                }
                Err(unavailable(format!("{OFFSETS_TOPIC} was just created; retry once its partitions have leaders")))
            }
        }
    }

    /// Whether this broker's controller lease is current (see `lease_until`): a broker that has not
    /// heartbeated for a fence timeout may have been fenced and its partitions given new leaders, so
    /// it answers no client from them (a deposed leader would serve stale reads; `isr_3_clogs_
    /// pauses_delay` seed 248 read a high watermark of 0 for a second after 111 offsets were acked).
    pub fn holds_lease(&self) -> bool {
        let until = *self.lease_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        until.is_some_and(|until| tokio::time::Instant::now() < until)
    }

    /// A heartbeat (or the registration) sent at `sent` has applied here, and `reconcile` has passed
    /// what it applied to the partitions: the lease runs to `sent + lease_ms`.
    fn renew_lease(&self, sent: tokio::time::Instant) {
        let until = sent + Duration::from_millis(self.lease_ms);
        let mut lease = self.lease_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *lease = Some(lease.map_or(until, |current| current.max(until)));
    }

    /// The local actor of a partition this broker is a replica of (a follower's fetch reaches the
    /// leader's; the actor checks the epochs and its role).
    pub fn replica(&self, topic: &str, partition: PartitionId) -> Result<PartitionHandle, TopicError> {
        let (key, _) = self.lookup(topic, partition)?;
        self.running(&key).ok_or_else(|| TopicError {
            code: ErrorCode::NotLeader,
            message: format!("broker {} has no replica of {topic}/{partition} open", self.node_id),
        })
    }

    fn running(&self, key: &PartitionKey) -> Option<PartitionHandle> {
        self.partitions.read().expect("partitions lock").get(key).map(|(handle, _)| handle.clone())
    }

    fn lookup(&self, topic: &str, partition: PartitionId) -> Result<(PartitionKey, PartitionRecord), TopicError> {
        let record = self.node.with_state(|state| {
            state.topic(topic).map(|record| {
                (record.created_index, record.partitions.len(), record.partitions.get(partition.0 as usize).cloned())
            })
        });
        let Some((created_index, count, record)) = record else {
            return Err(TopicError { code: ErrorCode::UnknownTopic, message: format!("unknown topic {topic:?}") });
        };
        let Some(record) = record else {
            return Err(TopicError {
                code: ErrorCode::UnknownPartition,
                message: format!("topic {topic:?} has {count} partitions; there is no partition {partition}"),
            });
        };
        Ok(((topic.to_owned(), created_index, partition), record))
    }

    /// The replicas this broker should run, with what the controller decided for each.
    fn desired(&self, registered: bool) -> Vec<(PartitionKey, PartitionState)> {
        self.node.with_state(|state| {
            let mut desired = Vec::new();
            for topic in state.topics() {
                for record in topic.partitions.iter().filter(|record| record.replicas.contains(&self.node_id)) {
                    let key = (topic.name.clone(), topic.created_index, PartitionId(record.partition));
                    let mut partition = partition_state(topic, record);
                    if !registered && partition.leader == Some(self.node_id) {
                        partition.leader = None; // not yet: see `registered`
                    }
                    desired.push((key, partition));
                }
            }
            desired
        })
    }

    /// Brings the running replicas in line with the applied metadata: starts missing ones, hands each
    /// running one the controller's latest decision, and stops (and deletes the data of) partitions
    /// whose topic is gone.
    ///
    /// Nothing to do when no topic changed since the last run (most applied entries are heartbeats):
    /// the desired state of every replica is a function of the topics and `registered`, and only
    /// this function changes the running set. Without the check, each heartbeat cost a walk over
    /// every partition of the broker (24% of a 3,000-partition simulation's time, issue 15).
    pub async fn reconcile(&self) {
        let mut reconciled = self.reconciling.lock().await;
        if self.partitions_stopped.load(Ordering::Acquire) {
            return; // the broker is stopping: nothing is opened again (see `stop_partitions`)
        }
        // Read before `desired`, which may see a later state: then the next run does the work again.
        let inputs = (self.node.with_state(MetadataState::topics_changed_at), self.registered.load(Ordering::Acquire));
        if *reconciled == Some(inputs) {
            return;
        }
        let desired = self.desired(inputs.1);
        let wanted: BTreeSet<&PartitionKey> = desired.iter().map(|(key, _)| key).collect();
        let stale: Vec<(PartitionKey, PartitionHandle)> = {
            let mut partitions = self.partitions.write().expect("partitions lock");
            let keys: Vec<PartitionKey> = partitions.keys().filter(|key| !wanted.contains(key)).cloned().collect();
            keys.into_iter().filter_map(|key| partitions.remove(&key).map(|(handle, _)| (key, handle))).collect()
        };
        for ((topic, created_index, partition), handle) in stale {
            self.stop_stale(&topic, created_index, partition, handle).await;
        }
        for (key, state) in desired {
            let running = self.partitions.read().expect("partitions lock").get(&key).cloned();
            match running {
                Some((_, given)) if given == state => {}
                Some((handle, _)) => {
                    handle.set_state(state.clone()).await;
                    if let Some(entry) = self.partitions.write().expect("partitions lock").get_mut(&key) {
                        entry.1 = state;
                    }
                }
                None => {
                    let handle = spawn_partition(self.spec(&key, state.clone())).await;
                    self.partitions.write().expect("partitions lock").insert(key, (handle, state));
                }
            }
        }
        *reconciled = Some(inputs);
    }

    fn spec(&self, key: &PartitionKey, state: PartitionState) -> PartitionSpec<D> {
        let (topic, created_index, partition) = key;
        let net = PartitionNet {
            topic: topic.clone(),
            partition: *partition,
            transport: self.transport.clone(),
            node: self.node.clone(),
        };
        PartitionSpec {
            disk: self.disk.clone(),
            dir: format!("data/{topic}@{created_index}/{partition}"),
            name: format!("{topic}/{partition}"),
            log_config: LogConfig {
                segment_bytes_max: state.log.segment_bytes_max.unwrap_or(self.log_config.segment_bytes_max),
                ..self.log_config.clone()
            },
            config: self.replica_config.clone(),
            me: self.node_id,
            state,
            net: Arc::new(net),
            opens: self.opens.clone(),
            metrics: self.metrics.clone(),
        }
    }

    async fn stop_stale(&self, topic: &str, created_index: u64, partition: PartitionId, handle: PartitionHandle) {
        if let Err(error) = handle.stop().await {
            tracing::warn!(%topic, %partition, %error, "partition did not stop cleanly");
        }
        let gone = self.node.with_state(|state| state.topic(topic).is_none_or(|t| t.created_index != created_index));
        if gone {
            let dir = format!("data/{topic}@{created_index}");
            if let Err(error) = self.disk.remove_dir_all(&dir) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%dir, %error, "cannot remove a deleted topic's data");
                }
            }
        }
    }

    /// Graceful shutdown, before the partitions stop: hands over the metadata group's leadership if
    /// this node holds it, then proposes `ControlledShutdown` for this broker's current incarnation, so
    /// leadership of its partitions moves to other ISR members (and it leaves the ISRs it is in) while
    /// it still serves, then brings the partition actors in line. Skipped when no other broker is
    /// eligible (nobody could take over; a one-broker cluster keeps its partitions led by itself
    /// across a restart). Bounded by [`CONTROLLED_SHUTDOWN_TIMEOUT_MS`]; returns whether it was applied.
    ///
    /// Why the Raft leadership moves first: a partition leader that sees this broker leave its ISR,
    /// then sees it still caught up, proposes re-adding it (the controller refuses: KIP-841) and counts
    /// it toward its high watermark until it hears the answer. A Raft leader that transfers its
    /// leadership drops the proposals it is handed meanwhile, and those come again only after
    /// `isr_change_retry_ms`: when the transfer came after the `ControlledShutdown`, acks=all stalled
    /// for a second on every partition this broker followed (`tests/cluster_process.rs`, rolling
    /// restart: 4 of 9 restarts of the Raft leader; 2 more stalled 7 s, the transfer waiting for a
    /// 5 s drain of in-flight requests while this node, still leading, read no Raft traffic).
    pub async fn controlled_shutdown(&self) -> bool {
        let me = self.node_id;
        let registration = self.node.with_state(|state| {
            let others_eligible = state.brokers().any(|broker| broker.node_id != me && broker.is_eligible());
            let own = state.broker(me).filter(|broker| broker.is_eligible()).map(|broker| broker.registered_index);
            own.filter(|_| others_eligible)
        });
        let Some(registered_index) = registration else { return false };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(CONTROLLED_SHUTDOWN_TIMEOUT_MS);
        self.hand_over_raft_leadership(deadline).await;
        // From here on another broker may lead this one's partitions as soon as the entry applies,
        // which this broker may not hear for a while (cut off from the metadata group): it stops
        // answering clients on them first (`idempotent_swarm` seed 4022: a broker that proposed its
        // shutdown and was then cut off served a stale high watermark for 2.6 s).
        self.lease_revoked.store(true, Ordering::Release);
        let command = MetaCommand::ControlledShutdown { node_id: me, registered_index };
        let applied = self.propose_until(command, deadline).await;
        let done = matches!(applied, Ok(Ok(MetaResult::Ok)));
        if done {
            self.reconcile().await;
        } else {
            tracing::warn!(?applied, "controlled shutdown did not apply; stopping without moving leadership");
        }
        done
    }

    /// If this node leads the metadata group, transfers that leadership and waits (at most
    /// [`super::LEADERSHIP_TRANSFER_WAIT_MS`], and not past `deadline`) for another node to lead.
    /// Past that, the `ControlledShutdown` is proposed anyway (raft-rs gives up a transfer that does
    /// not finish within an election timeout and takes proposals again).
    async fn hand_over_raft_leadership(&self, deadline: tokio::time::Instant) {
        let mut node = self.node.clone();
        if !node.status().role.is_leader() {
            return;
        }
        let transfer_deadline = tokio::time::Instant::now() + Duration::from_millis(super::LEADERSHIP_TRANSFER_WAIT_MS);
        node.transfer_leadership().await;
        let moved = async {
            while node.status().leader_id.is_none_or(|leader| leader == self.node_id) {
                if node.status_changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(until(deadline.min(transfer_deadline)), moved).await.is_err() {
            tracing::warn!("the metadata group's leadership did not move before the controlled shutdown");
        }
    }

    /// Proposes `command` until it is answered, or until `deadline`, again after the answers that
    /// leave it unapplied or unknown (no leader, the leader changed). Only for idempotent commands.
    async fn propose_until(
        &self,
        command: MetaCommand,
        deadline: tokio::time::Instant,
    ) -> Result<Result<MetaResult, NodeError>, tokio::time::error::Elapsed> {
        let pause = Duration::from_millis(PROPOSAL_RETRY_MS);
        loop {
            let answer = tokio::time::timeout(until(deadline), self.node.propose(command.clone())).await;
            let unapplied = matches!(answer, Ok(Err(NodeError::NoLeader | NodeError::LeaderChanged)));
            // The deadline is checked here, not left to the timeout: a node that answers at once
            // (no leader) would otherwise keep beating a zero timeout in simulated time, for ever.
            if !unapplied || until(deadline) <= pause {
                return answer;
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// One heartbeat tick: the registration until it applied (awaited: nothing is led before it),
    /// then a heartbeat, not awaited (the node answers within its timeout). Each that applies renews
    /// the controller lease from when it was sent. Returns whether this incarnation is registered.
    async fn heartbeat(self: &Arc<Self>, registered: bool, advertised: &Advertised) -> bool {
        let sent = tokio::time::Instant::now();
        if registered {
            let command = MetaCommand::BrokerHeartbeat { node_id: self.node_id, now_ms: now_ms() };
            let this = self.clone();
            tokio::spawn(async move {
                if matches!(this.node.propose(command).await, Ok(MetaResult::Ok)) {
                    this.reconcile().await;
                    this.renew_lease(sent);
                }
            });
            return true;
        }
        let command = MetaCommand::RegisterBroker {
            node_id: self.node_id,
            addr: advertised.addr.clone(),
            kafka_addr: advertised.kafka_addr.clone(),
            now_ms: now_ms(),
        };
        let registered = matches!(self.node.propose(command).await, Ok(MetaResult::Ok));
        if registered {
            self.registered.store(true, Ordering::Release);
            self.reconcile().await;
            self.renew_lease(sent);
        }
        registered
    }

    /// Follows the applied metadata until `shutdown`; heartbeats and fences brokers meanwhile.
    pub async fn run_background(
        self: Arc<Self>,
        advertised: Advertised,
        fence_after_ms: i64,
        shutdown: CancellationToken,
    ) {
        let mut node = self.node.clone();
        let mut registered = false;
        let mut heartbeat = tokio::time::interval(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_applied = 0;
        // The failure detector, on this node's monotonic clock (module doc, ADR 0015).
        let mut fence_watch = FenceWatch::new();
        let mut last_tick = tokio::time::Instant::now();
        let watch_epoch = last_tick;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                changed = node.status_changed() => {
                    let Ok(status) = changed else { return };
                    if status.applied_index != last_applied {
                        last_applied = status.applied_index;
                        self.reconcile().await;
                    }
                }
                _ = heartbeat.tick() => {
                    registered = self.heartbeat(registered, &advertised).await;
                    let tick_at = tokio::time::Instant::now();
                    let gap = tick_at.duration_since(last_tick);
                    last_tick = tick_at;
                    if self.node.status().leader_id != Some(self.node_id) || gap > Duration::from_millis(TICK_GAP_MS_MAX) {
                        fence_watch.reset();
                    }
                    if self.node.status().leader_id == Some(self.node_id) {
                        let watched_ms = tick_at.duration_since(watch_epoch).as_millis() as u64;
                        self.fence_silent_brokers(&mut fence_watch, watched_ms, fence_after_ms as u64);
                    }
                }
            }
        }
    }

    /// On the controller: proposes `FenceBroker` for every other broker whose heartbeat stamp stood
    /// still for longer than the fence timeout at `now_ms` of this node's monotonic clock.
    fn fence_silent_brokers(&self, watch: &mut FenceWatch, now_ms: u64, fence_after_ms: u64) {
        let alive = self.node.with_state(|state| state.alive_heartbeat_stamps());
        for (node_id, stamp) in watch.observe(&alive, now_ms, fence_after_ms) {
            if node_id == self.node_id {
                continue;
            }
            tracing::warn!(broker = %node_id, "fencing a broker that stopped heartbeating");
            let proposer = self.node.clone();
            tokio::spawn(async move {
                let _ = proposer.propose(MetaCommand::FenceBroker { node_id, now_ms: stamp }).await;
            });
        }
    }

    /// The broker is stopping: no partition of it opens any more (see `OpenGates::close`).
    pub fn stop_opening(&self) {
        self.opens.close();
    }

    /// Stops every partition actor (each fsyncs what it wrote).
    pub async fn stop_partitions(&self) -> Result<(), String> {
        // No reconcile runs meanwhile or afterwards: one (after a heartbeat, or a newly applied entry)
        // reopened a stopped partition, which then led its epoch a second time in one incarnation
        // (`single_broker_swarm` seed 81818 panicked on the epoch cache).
        let _one_at_a_time = self.reconciling.lock().await;
        self.partitions_stopped.store(true, Ordering::Release);
        let handles: Vec<_> =
            std::mem::take(&mut *self.partitions.write().expect("partitions lock")).into_iter().collect();
        // Many at once (issue 15): an idle partition's stop syncs nothing, a busy one's is one fsync.
        use futures::StreamExt as _;
        let mut stops =
            futures::stream::iter(handles.into_iter().map(|(_, (handle, _))| async move { handle.stop().await }))
                .buffer_unordered(PARTITION_STOPS_MAX);
        let mut first_error = None;
        while let Some(result) = stops.next().await {
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// What `__consumer_offsets` is created with (broker config), by the first group request that needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetsTopic {
    pub partitions: u32,
    pub replication: u32,
    pub segment_bytes: u64,
}

/// What the controller decided for one partition, as the replica core takes it.
pub fn partition_state(topic: &TopicRecord, record: &PartitionRecord) -> PartitionState {
    PartitionState {
        leader: record.leader,
        leader_epoch: record.leader_epoch,
        partition_epoch: record.partition_epoch,
        isr: record.isr.clone(),
        replicas: record.replicas.clone(),
        // Format-1 metadata has no min ISR (0): one.
        min_isr: (topic.min_insync_replicas as usize).max(1),
        log: LogPolicy {
            retention: Retention { retention_ms: topic.log.retention_ms, retention_bytes: topic.log.retention_bytes },
            segment_bytes_max: topic.log.segment_bytes,
            compact: topic.log.cleanup_policy == CleanupPolicy::Compact,
            delete_retention_ms: topic.log.delete_retention_ms,
        },
    }
}

/// The metadata response for `topics` (all when empty) from the applied state.
pub fn describe(state: &MetadataState, topics: &[String]) -> MetadataResponse {
    let brokers = state
        .brokers()
        .filter(|broker| broker.is_alive())
        .map(|broker| BrokerInfo {
            node_id: broker.node_id.0,
            addr: broker.addr.clone(),
            kafka_addr: broker.kafka_addr.clone(),
        })
        .collect();
    let info = |record: &crate::meta::state::TopicRecord| TopicInfo {
        name: record.name.clone(),
        error: None,
        partitions: record
            .partitions
            .iter()
            .map(|partition| PartitionInfo {
                partition: partition.partition,
                leader: partition.leader.map_or(0, |leader| leader.0),
                replicas: partition.replicas.iter().map(|replica| replica.0).collect(),
                // The controller's ISR (issue 8): what elections choose from and what the replica
                // core keeps up to date through `ChangeIsr`.
                isr: partition.isr.iter().map(|member| member.0).collect(),
                leader_epoch: partition.leader_epoch.0,
                partition_epoch: partition.partition_epoch.0,
                unclean_elections: partition.unclean_elections,
                elr: partition.elr.iter().map(|member| member.0).collect(),
            })
            .collect(),
        min_insync_replicas: record.min_insync_replicas,
        unclean_leader_election: record.unclean_leader_election,
        log: Some(LogSettingsInfo {
            retention_ms: Some(record.log.retention_ms),
            retention_bytes: Some(record.log.retention_bytes),
            segment_bytes: record.log.segment_bytes,
            cleanup_policy: Some(record.log.cleanup_policy.as_str().to_owned()),
            delete_retention_ms: Some(record.log.delete_retention_ms),
        }),
    };
    let topics = if topics.is_empty() {
        state.topics().map(info).collect()
    } else {
        topics
            .iter()
            .map(|name| match state.topic(name) {
                Some(record) => info(record),
                None => TopicInfo {
                    name: name.clone(),
                    error: Some(ErrorInfo::new(ErrorCode::UnknownTopic, format!("unknown topic {name:?}"))),
                    partitions: Vec::new(),
                    min_insync_replicas: 0,
                    unclean_leader_election: false,
                    log: None,
                },
            })
            .collect()
    };
    MetadataResponse { brokers, topics }
}

/// The offline and under-replicated partitions of the applied state, sorted by topic and partition,
/// at most [`STATUS_PARTITIONS_MAX`], and how many more there are.
pub fn unhealthy_partitions(state: &MetadataState) -> (Vec<PartitionHealthInfo>, u64) {
    let mut listed = Vec::new();
    let mut omitted = 0u64;
    for topic in state.topics() {
        for partition in topic.partitions.iter().filter(|p| p.is_offline() || p.is_under_replicated()) {
            if listed.len() >= STATUS_PARTITIONS_MAX {
                omitted += 1;
                continue;
            }
            listed.push(PartitionHealthInfo {
                topic: topic.name.clone(),
                partition: partition.partition,
                leader: partition.leader.map_or(0, |leader| leader.0),
                leader_epoch: partition.leader_epoch.0,
                partition_epoch: partition.partition_epoch.0,
                replicas: partition.replicas.iter().map(|replica| replica.0).collect(),
                isr: partition.isr.iter().map(|member| member.0).collect(),
                min_insync_replicas: topic.min_insync_replicas,
                offline: partition.is_offline(),
                under_replicated: partition.is_under_replicated(),
            });
        }
    }
    (listed, omitted)
}

/// The settings a request sets (absent: unchanged, or the default). An unknown cleanup policy is
/// `InvalidConfig` here; the ranges are the state machine's to check (`LogSettings::validate`).
fn log_change(info: Option<&LogSettingsInfo>) -> Result<LogSettingsChange, TopicError> {
    let Some(info) = info else { return Ok(LogSettingsChange::default()) };
    let cleanup_policy = info
        .cleanup_policy
        .as_deref()
        .map(CleanupPolicy::parse)
        .transpose()
        .map_err(|message| TopicError { code: ErrorCode::InvalidConfig, message })?;
    Ok(LogSettingsChange {
        retention_ms: info.retention_ms,
        retention_bytes: info.retention_bytes,
        segment_bytes: info.segment_bytes,
        cleanup_policy,
        delete_retention_ms: info.delete_retention_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's cleanup policy is parsed here (an unknown one is `InvalidConfig`, with the
    /// parser's message); the ranges are left to the state machine.
    #[test]
    fn log_change_parses_the_cleanup_policy() {
        assert_eq!(log_change(None).unwrap(), LogSettingsChange::default());
        let info = LogSettingsInfo {
            retention_ms: Some(-1),
            cleanup_policy: Some("compact".to_owned()),
            delete_retention_ms: Some(-7),
            ..LogSettingsInfo::default()
        };
        let change = log_change(Some(&info)).unwrap();
        assert_eq!(
            change,
            LogSettingsChange {
                retention_ms: Some(-1),
                cleanup_policy: Some(CleanupPolicy::Compact),
                delete_retention_ms: Some(-7),
                ..LogSettingsChange::default()
            }
        );
        let unknown =
            LogSettingsInfo { cleanup_policy: Some("compact,delete".to_owned()), ..LogSettingsInfo::default() };
        let error = log_change(Some(&unknown)).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidConfig);
        assert_eq!(error.message, r#"unknown cleanup policy "compact,delete" (expected delete or compact)"#);
    }

    /// The settings reach the metadata response and the replicas' `LogPolicy`.
    #[test]
    fn describe_and_partition_state_carry_the_cleanup_policy() {
        let mut state = MetadataState::new();
        let register = MetaCommand::RegisterBroker {
            node_id: NodeId(1),
            addr: "b1:9092".into(),
            kafka_addr: String::new(),
            now_ms: 0,
        };
        assert_eq!(state.apply(1, &register), MetaResult::Ok);
        let info = LogSettingsInfo {
            cleanup_policy: Some("compact".to_owned()),
            delete_retention_ms: Some(5000),
            ..LogSettingsInfo::default()
        };
        let create = MetaCommand::CreateTopic {
            name: "users".into(),
            partitions: 1,
            replication: 1,
            min_insync_replicas: None,
            unclean_leader_election: false,
            log: log_change(Some(&info)).unwrap(),
        };
        assert!(matches!(state.apply(2, &create), MetaResult::TopicCreated { .. }));
        let described = describe(&state, &["users".to_owned()]);
        let log = described.topics[0].log.clone().unwrap();
        assert_eq!((log.cleanup_policy.as_deref(), log.delete_retention_ms), (Some("compact"), Some(5000)));
        let topic = state.topic("users").unwrap();
        let policy = partition_state(topic, &topic.partitions[0]).log;
        assert!(policy.compact);
        assert_eq!(policy.delete_retention_ms, 5000);
    }
}
