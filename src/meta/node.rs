//! The Raft driver: the shell around raft-rs's `RawNode` for the metadata group.
//!
//! One task owns the `RawNode`, the [`RaftStore`] and the [`MetadataState`]. In: ticks from runtime
//! time, raft messages from peers, proposals and read barriers from the broker. Out: persisted log
//! and hard state, messages to peers (through [`Transport`]), applied commands, answered proposals.
//!
//! # The Ready loop (raft-rs's contract, in the order this code follows)
//! 1. `messages()`: sent at once (a leader may send appends before persisting its own entries).
//! 2. A snapshot from the leader: persisted, then the state machine is restored from it.
//! 3. `committed_entries()`: applied to the state machine in order; proposals made here are answered.
//! 4. New `entries()` and the `HardState`: persisted together in one synced batch
//!    ([`RaftStore::persist`]).
//! 5. Only then `persisted_messages()` (votes, append responses) are sent: a vote never leaves
//!    before the hard state that records it is durable.
//! 6. `advance`, then the light ready's messages and committed entries, then `advance_apply`.
//!
//! # Determinism
//! raft-rs 0.7 draws election timeouts from rand 0.8's `thread_rng`, which madsim cannot seed.
//! After `RawNode::new` and after every call that could reset the election timer (a change of term or
//! role, or the elapsed counter going back), this driver redraws the timeout itself with the
//! runtime's RNG (seeded under madsim) in `[election_tick, 2 * election_tick)` through
//! `set_randomized_election_timeout`, and the tick timer starts at a random phase (ADR 0006).
//!
//! # Proposals
//! A proposal carries `(origin node, boot nonce, request id)` in the entry context (the nonce tells
//! this incarnation's proposals from those of earlier ones, see `encode_context`). Every node applies every
//! entry; the origin node answers its waiter when it applies the entry, so a proposal made on a
//! follower (raft-rs forwards it to the leader) returns after it is applied locally: a read on that
//! node afterwards sees it. A proposal whose entry never shows up within `proposal_timeout` is
//! answered `Timeout` (ambiguous: it may still commit).
//!
//! # Peers and untrusted messages (ADR 0007)
//! [`NodeHandle::step`] takes a Raft message from a connection that identified itself as voter
//! `peer` (the server refuses Raft traffic on any other connection). raft-rs trusts its input: it
//! panics on some messages no correct peer sends (a heartbeat committing past the end of the log,
//! an empty proposal, entries that are not contiguous, ...). So a message is checked first: its
//! sender and recipient must be the identified peer and this node, its shape must be one a correct
//! peer produces ([`check_peer_message`]), and, in the Raft task, it must fit this node's log
//! (`Node::check_against_log`). A message that fails is refused (typed [`PeerError`]) or
//! dropped, like a lost packet. These checks cover the raft-rs 0.7 panics found by reading its step
//! paths (each rule names its panic); they do not make Raft tolerate a malicious voter (nothing
//! does: Raft is not Byzantine fault tolerant), and the drop guard below stays the backstop.
//!
//! # The task's end is always seen
//! Whether the Raft task returns (shutdown, a storage failure) or panics (an input raft-rs did not
//! expect, a bug), a drop guard closes the status cell: [`NodeHandle::stopped`] resolves, the
//! status reports the role `stopped` (never the last role it had), and the broker shuts down.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use raft::{RawNode, StateRole};
use rand::Rng as _;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::raft_store::RaftStore;
use super::state::{decode_command, encode_command, MetaCommand, MetaResult, MetadataState};
use super::store::{MetaStore, MetaStoreError};
pub use crate::peer::Transport;
use crate::types::NodeId;
use keel_model::fnv::fnv1a_64;

/// Commands queued for the Raft task before callers wait.
pub const NODE_MAILBOX_MAX: usize = 4096;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Every voter (this node included) and its address.
    pub peers: BTreeMap<NodeId, String>,
    pub tick: Duration,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Applied entries after the last snapshot before a new one is taken and the log compacted.
    pub snapshot_interval_entries: u64,
    pub proposal_timeout: Duration,
}

impl NodeConfig {
    pub fn new(node_id: NodeId, peers: BTreeMap<NodeId, String>) -> NodeConfig {
        NodeConfig {
            node_id,
            peers,
            tick: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_interval_entries: 1000,
            proposal_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("no Raft leader is known; try again")]
    NoLeader,
    /// The outcome is unknown: the proposal may still commit.
    #[error("no answer within the proposal timeout; the command may or may not have been applied")]
    Timeout,
    /// The Raft leader changed while the proposal was in flight: it may still commit (ambiguous).
    #[error("the Raft leader changed while the command was in flight; it may or may not have been applied")]
    LeaderChanged,
    /// The node is not running: the request was not proposed.
    #[error("the metadata node is shutting down")]
    ShuttingDown,
    /// The node stopped with the proposal in flight: it may still commit (ambiguous).
    #[error("the metadata node stopped with the command in flight; it may or may not have been applied")]
    StoppedInFlight,
    #[error("metadata storage failed: {0}")]
    Storage(#[from] MetaStoreError),
    #[error("raft: {0}")]
    Raft(String),
}

/// Why a peer's Raft message (or its handshake) was refused or dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("node {node} is not another voter of the metadata group (this node is {this}, voters {voters:?})")]
    UnknownPeer { node: NodeId, this: NodeId, voters: Vec<NodeId> },
    #[error("the message is addressed to node {to}, but this is node {this}")]
    WrongRecipient { to: NodeId, this: NodeId },
    #[error("the connection identified itself as node {peer}, but the message claims to be from node {from}, which it cannot relay")]
    WrongSender { peer: NodeId, from: NodeId },
    #[error("undecodable raft message: {0}")]
    Undecodable(String),
    #[error("raft message refused: {0}")]
    Malformed(String),
    /// The node's mailbox is full: the message is dropped (Raft retransmits).
    #[error("the metadata node is saturated; the message was dropped")]
    Saturated,
    #[error("the metadata node is not running")]
    Stopped,
}

/// What one node reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    /// [`RaftRole::Stopped`] once the Raft task has ended.
    pub role: RaftRole,
    pub term: u64,
    /// The leader this node knows of; `None` when it knows none (or has stopped).
    pub leader_id: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    /// The first log index still held (after compaction).
    pub first_index: u64,
    /// How many times this node has learned of a new leader since it started (`keel_raft_leader_changes`).
    pub leader_changes: u64,
}

/// [`NodeHandle::state_hash`]: the hash of the applied metadata and the index it was applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateHash {
    pub applied_index: u64,
    pub hash: u64,
}

/// A node's Raft state as the invariant checkers want it (see `keel_model::raft_checker`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftView {
    pub node_id: NodeId,
    pub term: u64,
    pub is_leader: bool,
    pub commit_index: u64,
    /// `(index, term, FNV-1a of the data)` of every entry the node holds (after its snapshot).
    pub log: Vec<(u64, u64, u64)>,
    /// `(index, FNV-1a of the data)` of entries applied since the previous `observe`, in order.
    /// Recorded in the simulation only (empty in the normal build, see `OBSERVATION_RECORDED`).
    pub applied: Vec<(u64, u64)>,
    /// Snapshots from the leader installed since the previous `observe`, as `(position, snapshot
    /// index)`: the install came after the first `position` entries of `applied`. Applied indices
    /// jump only here (and at a restart), never on local compaction.
    pub snapshots_installed: Vec<(usize, u64)>,
}

/// A node's role in the metadata Raft group, as its status reports it.
///
/// Printed (and serialized) as `leader`, `follower`, `candidate`, `pre-candidate` and `stopped`:
/// the names `keel cluster status` has always shown, and what [`NodeStatusInfo::role`] carries on
/// the wire.
///
/// [`NodeStatusInfo::role`]: crate::protocol::NodeStatusInfo::role
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RaftRole {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
    /// The Raft task has ended, however it ended: the node is no member of anything any more.
    Stopped,
}

impl RaftRole {
    pub const ALL: [RaftRole; 5] =
        [RaftRole::Follower, RaftRole::PreCandidate, RaftRole::Candidate, RaftRole::Leader, RaftRole::Stopped];

    pub fn as_str(self) -> &'static str {
        match self {
            RaftRole::Follower => "follower",
            RaftRole::PreCandidate => "pre-candidate",
            RaftRole::Candidate => "candidate",
            RaftRole::Leader => "leader",
            RaftRole::Stopped => "stopped",
        }
    }

    /// The role a status line names (case-insensitive); `None` for anything else (an empty role:
    /// the node was not reached).
    pub fn parse(name: &str) -> Option<RaftRole> {
        RaftRole::ALL.into_iter().find(|role| role.as_str().eq_ignore_ascii_case(name))
    }

    pub fn is_leader(self) -> bool {
        self == RaftRole::Leader
    }
}

impl std::fmt::Display for RaftRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<StateRole> for RaftRole {
    fn from(role: StateRole) -> RaftRole {
        match role {
            StateRole::Follower => RaftRole::Follower,
            StateRole::PreCandidate => RaftRole::PreCandidate,
            StateRole::Candidate => RaftRole::Candidate,
            StateRole::Leader => RaftRole::Leader,
        }
    }
}

/// Applied entries remembered for `observe` before the oldest are dropped.
pub const APPLIED_LOG_MAX: usize = 100_000;

/// Whether the Raft task records what it applies and installs for [`NodeHandle::observe`]: only in
/// the simulation, whose checkers read it. In the normal build the record is never written (the
/// view's `applied` and `snapshots_installed` stay empty), so the hook costs production nothing:
/// no hashing of applied entries, no memory.
const OBSERVATION_RECORDED: bool = cfg!(madsim);

enum Command {
    Step(Message),
    Propose { command: MetaCommand, reply: oneshot::Sender<Result<MetaResult, NodeError>> },
    ReadBarrier { reply: oneshot::Sender<Result<(), NodeError>> },
    TransferLeadership { reply: oneshot::Sender<()> },
    Observe { reply: oneshot::Sender<RaftView> },
}

/// The node's latest status, a version that bumps on every change, and a `Notify` for waiters.
///
/// Not `tokio::sync::watch`: a watch receiver waits on one of eight shards picked with tokio's own
/// RNG, which madsim does not seed and which lives on across simulations in one process, so the
/// order in which waiters woke (and with it the whole run) depended on the simulations that ran
/// before. Found by the Raft scenarios: the same seed hashed differently alone and after another
/// scenario. `Notify::notify_waiters` wakes in registration order.
#[derive(Default)]
struct StatusCell {
    /// (version, status, the node task has ended)
    value: std::sync::Mutex<(u64, NodeStatus, bool)>,
    changed: Notify,
}

impl StatusCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, NodeStatus, bool)> {
        self.value.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, status: NodeStatus) {
        {
            let mut value = self.lock();
            if value.1 == status {
                return;
            }
            value.0 += 1;
            value.1 = status;
        }
        self.changed.notify_waiters();
    }

    /// Marks the task as ended. The status keeps the last term and indexes but no longer claims a
    /// role or a leader: a dead node that reported `leader` would be believed by `cluster status`.
    fn close(&self) {
        {
            let mut value = self.lock();
            value.0 += 1;
            value.1.role = RaftRole::Stopped;
            value.1.leader_id = None;
            value.2 = true;
        }
        self.changed.notify_waiters();
    }
}

/// Closes the status cell when the Raft task ends, by return or by panic. Without it, a panic in
/// raft-rs (issue 7: a forged heartbeat made `commit_to` panic) skipped the close at the end of
/// `Node::run`: the broker never noticed, `cluster status` kept showing the dead node as leader, and
/// every metadata request failed with "shutting down" until someone restarted the process.
///
/// The task can also end without returning or panicking: its runtime (or, in the simulation, its
/// node) drops it. That is not an error, so only a panic is logged.
struct CloseOnDrop {
    status: Arc<StatusCell>,
    node_id: NodeId,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(node = %self.node_id, "the metadata Raft task panicked; the node is stopped");
        }
        self.status.close();
    }
}

/// A handle to the running node: cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    node_id: NodeId,
    /// Every voter of the metadata group (this node included), sorted. Membership is static.
    voters: Arc<[NodeId]>,
    commands: mpsc::Sender<Command>,
    state: Arc<RwLock<MetadataState>>,
    status: Arc<StatusCell>,
    /// The status version this handle has seen (for `status_changed`).
    seen_version: u64,
    /// The snapshot index this incarnation started from (see [`NodeHandle::boot_snapshot_index`]).
    boot_snapshot_index: u64,
}

impl NodeHandle {
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Checks a peer handshake: `node` must be another voter and `to` this node.
    pub fn check_peer(&self, node: NodeId, to: NodeId) -> Result<(), PeerError> {
        if node == self.node_id || !self.voters.contains(&node) {
            return Err(PeerError::UnknownPeer { node, this: self.node_id, voters: self.voters.to_vec() });
        }
        if to != self.node_id {
            return Err(PeerError::WrongRecipient { to, this: self.node_id });
        }
        Ok(())
    }

    /// Hands a raft message from `peer` (the voter its connection identified itself as) to the
    /// node. The message must come from `peer` (or, for the kinds raft-rs relays, from any voter),
    /// be addressed to this node and have a shape that a
    /// correct peer produces ([`check_peer_message`]); otherwise it is refused and never reaches
    /// raft-rs. A full mailbox drops it: Raft treats a lost message like a lost packet.
    pub fn step(&self, peer: NodeId, envelope: &crate::protocol::RaftMessage) -> Result<(), PeerError> {
        self.check_peer(peer, self.node_id)?;
        if NodeId(envelope.from) != peer {
            return Err(PeerError::WrongSender { peer, from: NodeId(envelope.from) });
        }
        if NodeId(envelope.to) != self.node_id {
            return Err(PeerError::WrongRecipient { to: NodeId(envelope.to), this: self.node_id });
        }
        let message =
            Message::parse_from_bytes(&envelope.message).map_err(|error| PeerError::Undecodable(error.to_string()))?;
        // raft-rs relays proposals, read-index requests and leadership-transfer requests towards
        // the leader it knows and keeps their original sender (a follower that has a stale leader
        // forwards a proposal it got forwarded; the leader answers a read or picks the transferee
        // by that sender). Those may name any voter; everything else is from the peer itself.
        // Found by the Raft scenarios, which refused relayed proposals when only `peer` passed.
        let relayed = matches!(
            message.get_msg_type(),
            MessageType::MsgPropose | MessageType::MsgReadIndex | MessageType::MsgTransferLeader
        );
        let from = NodeId(message.from);
        let sender_allowed = if relayed { self.voters.contains(&from) } else { from == peer };
        if !sender_allowed {
            return Err(PeerError::WrongSender { peer, from });
        }
        if NodeId(message.to) != self.node_id {
            return Err(PeerError::WrongRecipient { to: NodeId(message.to), this: self.node_id });
        }
        check_peer_message(&message, &self.voters).map_err(PeerError::Malformed)?;
        self.commands.try_send(Command::Step(message)).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => PeerError::Saturated,
            mpsc::error::TrySendError::Closed(_) => PeerError::Stopped,
        })
    }

    /// Proposes a command and waits until it is applied on this node.
    pub async fn propose(&self, command: MetaCommand) -> Result<MetaResult, NodeError> {
        let (reply, receiver) = oneshot::channel();
        self.commands.send(Command::Propose { command, reply }).await.map_err(|_| NodeError::ShuttingDown)?;
        // Handed to the node: from here on a vanished answer means "unknown", not "no".
        receiver.await.map_err(|_| NodeError::StoppedInFlight)?
    }

    /// Waits until this node has applied everything committed before the call (Raft ReadIndex):
    /// a read of [`NodeHandle::state`] afterwards is linearizable.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let (reply, receiver) = oneshot::channel();
        self.commands.send(Command::ReadBarrier { reply }).await.map_err(|_| NodeError::ShuttingDown)?;
        receiver.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// Reads the applied metadata (not linearizable on its own: see `read_barrier`).
    pub fn with_state<T>(&self, read: impl FnOnce(&MetadataState) -> T) -> T {
        read(&self.state.read().expect("metadata state lock"))
    }

    pub fn status(&self) -> NodeStatus {
        self.status.lock().1.clone()
    }

    /// The applied metadata's index and [`MetadataState::state_hash`], computed when asked: a hash
    /// serializes the whole state, too much to do on every applied entry (each heartbeat is one)
    /// with thousands of partitions.
    pub fn state_hash(&self) -> StateHash {
        self.with_state(|state| StateHash { applied_index: state.applied_index(), hash: state.state_hash() })
    }

    /// The index of the snapshot this incarnation booted from (0 without one): the node applies
    /// the committed entries after it, starting at `boot_snapshot_index + 1`. Fixed at start, unlike
    /// the status's `first_index`, which compaction moves (the simulation's restart check needs it).
    pub fn boot_snapshot_index(&self) -> u64 {
        self.boot_snapshot_index
    }

    /// Resolves when the node's task has ended (shutdown, or a metadata storage failure).
    pub async fn stopped(&self) {
        loop {
            let notified = self.status.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.status.lock().2 {
                return;
            }
            notified.await;
        }
    }

    /// Waits for the next status change.
    pub async fn status_changed(&mut self) -> Result<NodeStatus, NodeError> {
        loop {
            let notified = self.status.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let value = self.status.lock();
                if value.0 != self.seen_version {
                    self.seen_version = value.0;
                    return Ok(value.1.clone());
                }
                if value.2 {
                    return Err(NodeError::ShuttingDown);
                }
            }
            notified.await;
        }
    }

    /// The node's Raft state for the simulation's invariant checkers. `None` if the node stopped.
    pub async fn observe(&self) -> Option<RaftView> {
        let (reply, receiver) = oneshot::channel();
        self.commands.send(Command::Observe { reply }).await.ok()?;
        receiver.await.ok()
    }

    /// If this node leads, hands leadership to the most up-to-date follower (graceful shutdown).
    pub async fn transfer_leadership(&self) {
        let (reply, receiver) = oneshot::channel();
        if self.commands.send(Command::TransferLeadership { reply }).await.is_ok() {
            let _ = receiver.await;
        }
    }
}

/// The state machine as of the store's snapshot (empty without one).
fn restore_state(raft_store: &RaftStore) -> Result<MetadataState, NodeError> {
    let data = raft_store.snapshot_ref().get_data();
    if data.is_empty() {
        return Ok(MetadataState::new());
    }
    MetadataState::restore(data).map_err(|error| NodeError::Storage(MetaStoreError::Corrupt(error.to_string())))
}

/// raft-rs's configuration for this node, which has applied everything up to `applied`.
fn raft_config(config: &NodeConfig, applied: u64) -> raft::Config {
    raft::Config {
        id: config.node_id.0,
        election_tick: config.election_tick,
        heartbeat_tick: config.heartbeat_tick,
        applied,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: RAFT_MESSAGE_BYTES_MAX,
        max_inflight_msgs: RAFT_INFLIGHT_MESSAGES_MAX,
        ..raft::Config::default()
    }
}

/// Largest append raft-rs sends in one message (its `max_size_per_msg`).
pub const RAFT_MESSAGE_BYTES_MAX: u64 = 1024 * 1024;
/// Appends raft-rs keeps in flight to one follower (its `max_inflight_msgs`).
pub const RAFT_INFLIGHT_MESSAGES_MAX: usize = 256;

/// Starts the node: loads (or initialises) the log from `store`, rebuilds the state machine from
/// the snapshot, and spawns the task. Committed entries after the snapshot are re-applied by the
/// first `Ready`s.
pub fn start_node<S: MetaStore, T: Transport>(
    config: NodeConfig,
    store: S,
    transport: T,
    shutdown: CancellationToken,
) -> Result<NodeHandle, NodeError> {
    let voters: Vec<NodeId> = config.peers.keys().copied().collect();
    assert!(voters.contains(&config.node_id), "node {} is not among the voters {voters:?}", config.node_id);
    let raft_voters: Vec<u64> = voters.iter().map(|voter| voter.0).collect();
    let raft_store = RaftStore::load(&store, &raft_voters)?;
    let snapshot_index = raft_store.snapshot_index();
    let state = restore_state(&raft_store)?;
    let raft_config = raft_config(&config, snapshot_index);
    raft_config.validate().map_err(|error| NodeError::Raft(error.to_string()))?;
    let logger = slog::Logger::root(TracingDrain, slog::o!("raft_id" => config.node_id.0));
    let raw = RawNode::new(&raft_config, raft_store, &logger).map_err(|error| NodeError::Raft(error.to_string()))?;
    let state = Arc::new(RwLock::new(state));
    let status = Arc::new(StatusCell::default());
    let (commands, mailbox) = mpsc::channel(NODE_MAILBOX_MAX);
    let mut node = Node {
        config,
        raw,
        store,
        transport,
        state: state.clone(),
        status: status.clone(),
        proposals: BTreeMap::new(),
        reads: BTreeMap::new(),
        boot_nonce: crate::random::rng().random(),
        next_request: 1,
        timer_view: TimerView::default(),
        rng_timeout: 0,
        applied_log: Vec::new(),
        snapshots_installed: Vec::new(),
    };
    node.redraw_election_timeout();
    if voters == [node.config.node_id] {
        // A one-voter group needs no election timeout to elect itself.
        node.raw.campaign().map_err(|error| NodeError::Raft(error.to_string()))?;
        node.redraw_if_timer_reset();
    }
    let node_id = node.config.node_id;
    // The status is true from the start (term, snapshot, applied index as loaded), not a default
    // until the task's first turn.
    node.publish_status();
    tokio::spawn(node.run(mailbox, shutdown));
    Ok(NodeHandle {
        node_id,
        voters: voters.into(),
        commands,
        state,
        status,
        seen_version: 0,
        boot_snapshot_index: snapshot_index,
    })
}

/// Checks that a Raft message from a peer has a shape a correct peer produces, before raft-rs sees
/// it. Each rule names the raft-rs 0.7 panic (or the broken invariant) it keeps away; none of them
/// refuses a message that a correct raft-rs peer of this group sends.
pub fn check_peer_message(message: &Message, voters: &[NodeId]) -> Result<(), String> {
    let kind = message.get_msg_type();
    match kind {
        // Local to a node; raft-rs refuses them too, but say so before it has to.
        MessageType::MsgHup
        | MessageType::MsgBeat
        | MessageType::MsgUnreachable
        | MessageType::MsgSnapStatus
        | MessageType::MsgCheckQuorum => return Err(format!("{kind:?} is local to a node, never sent by a peer")),
        // raft-rs: `fatal!("stepped empty MsgProp")` on the leader.
        MessageType::MsgPropose if message.entries.is_empty() => return Err("a proposal without entries".into()),
        // raft-rs indexes `entries[0]` (the read's context) on the leader.
        MessageType::MsgReadIndex if message.entries.len() != 1 => {
            return Err(format!("a read index request with {} entries (expected 1)", message.entries.len()))
        }
        _ => {}
    }
    // Keel's membership is static: no configuration change ever enters the log, so one from a peer
    // (proposed or appended) would change the voter set behind the operator's back.
    if let Some(entry) = message.entries.iter().find(|entry| entry.get_entry_type() != EntryType::EntryNormal) {
        return Err(format!("a {:?} entry (membership is static)", entry.get_entry_type()));
    }
    if kind == MessageType::MsgAppend {
        // raft-rs slices `entries[conflict - (index + 1)..]` assuming the entries follow `index`
        // one by one; a gap panics with an out-of-range slice. A leader's entries also never carry
        // a term above its own, and terms never decrease along a log.
        let mut previous_term = message.log_term;
        for (position, entry) in message.entries.iter().enumerate() {
            let expected = message.index.checked_add(position as u64 + 1);
            if expected != Some(entry.index) {
                return Err(format!(
                    "appended entry {position} has index {}, expected {expected:?} (entries follow index {})",
                    entry.index, message.index
                ));
            }
            if entry.term < previous_term || entry.term > message.term {
                return Err(format!(
                    "appended entry {} has term {} (previous {previous_term}, message term {})",
                    entry.index, entry.term, message.term
                ));
            }
            previous_term = entry.term;
        }
    }
    if kind == MessageType::MsgSnapshot {
        let metadata = message.get_snapshot().get_metadata();
        let conf = metadata.get_conf_state();
        let mut snapshot_voters: Vec<NodeId> = conf.voters.iter().copied().map(NodeId).collect();
        snapshot_voters.sort_unstable();
        // raft-rs: `fatal!("unable to restore config ...")` on an inconsistent configuration; and a
        // snapshot with other voters would change the static membership.
        if snapshot_voters != voters
            || !conf.learners.is_empty()
            || !conf.voters_outgoing.is_empty()
            || !conf.learners_next.is_empty()
            || conf.auto_leave
        {
            return Err(format!("a snapshot whose configuration {conf:?} is not the voter set {voters:?}"));
        }
        if metadata.index == 0 {
            return Err("a snapshot at index 0".into());
        }
        // Once accepted, a snapshot is persisted before it is applied: undecodable data would stop
        // this node now and again at every start.
        MetadataState::restore(message.get_snapshot().get_data())
            .map_err(|error| format!("a snapshot whose metadata cannot be restored: {error}"))?;
    }
    Ok(())
}

/// What raft-rs's election timer looked like after our last call, to detect resets.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
struct TimerView {
    term: u64,
    role: RaftRole,
    election_elapsed: usize,
}

struct Waiting<T> {
    reply: oneshot::Sender<Result<T, NodeError>>,
    deadline: tokio::time::Instant,
    /// The Raft term when the request was made: a later term means the leader it went to may be gone.
    term: u64,
}

struct Node<S: MetaStore, T: Transport> {
    config: NodeConfig,
    raw: RawNode<RaftStore>,
    store: S,
    transport: T,
    state: Arc<RwLock<MetadataState>>,
    status: Arc<StatusCell>,
    proposals: BTreeMap<u64, Waiting<MetaResult>>,
    reads: BTreeMap<u64, (Waiting<()>, Option<u64>)>,
    /// Drawn at start and carried in every proposal's context next to the request id, so that an
    /// entry proposed by an earlier incarnation of this node never answers a waiter of this one.
    boot_nonce: u64,
    next_request: u64,
    timer_view: TimerView,
    rng_timeout: usize,
    /// Applied (index, data fingerprint) since the last `observe`.
    applied_log: Vec<(u64, u64)>,
    /// Snapshots installed since the last `observe` (see `RaftView::snapshots_installed`).
    snapshots_installed: Vec<(usize, u64)>,
}

/// Proposal context: origin node, the origin incarnation's boot nonce and request id, 24 bytes
/// (the layout of `Node::read_context`).
///
/// Root cause of three failures of the Raft scenarios (issue 7: `raft_3_voters_swarm` seed 900045,
/// duplicate creates; `raft_3_voters_power_loss` seed 900231, not linearizable;
/// `raft_3_voters_leader_kill_and_restart` seed 900234, a phantom topic and no create succeeding
/// after the heal): the context was only `(node, request id)`, and request ids restart at 1 in every
/// incarnation. A restarted node re-applies the committed entries after its snapshot, and learns
/// later of entries its previous incarnation forwarded that committed after the crash; it answered
/// its new waiters with the results of those old entries (a create got another create's `Ok`, or
/// "already exists" while its own entry created the topic). A probe confirmed such a match in each
/// of the three seeds; `tests/meta_node.rs` shows it on one node (a producer-id block handed out
/// twice). The nonce, drawn per incarnation (64 random bits), tells incarnations apart.
fn encode_context(node: NodeId, boot_nonce: u64, request: u64) -> Vec<u8> {
    let mut context = node.0.to_be_bytes().to_vec();
    context.extend_from_slice(&boot_nonce.to_be_bytes());
    context.extend_from_slice(&request.to_be_bytes());
    context
}

/// `(origin node, boot nonce, request id)`, or `None` for any other context (e.g. the 16-byte
/// contexts of older versions, which no live waiter can be waiting for).
fn decode_context(context: &[u8]) -> Option<(u64, u64, u64)> {
    if context.len() != 24 {
        return None;
    }
    let word = |at: usize| context[at..at + 8].try_into().ok().map(u64::from_be_bytes);
    Some((word(0)?, word(8)?, word(16)?))
}

impl<S: MetaStore, T: Transport> Node<S, T> {
    async fn run(mut self, mut mailbox: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        // Closes the status when this future ends or is dropped; a panic drops it while unwinding.
        let _closer = CloseOnDrop { status: self.status.clone(), node_id: self.config.node_id };
        // A random phase for the first tick: without it, nodes started together tick in lockstep and
        // split votes are far more frequent (measured in DESIGN.md).
        let phase = Duration::from_micros(crate::random::rng().random_range(0..self.config.tick.as_micros() as u64));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    self.raw.tick();
                }
                command = mailbox.recv() => match command {
                    None => break,
                    Some(command) => self.handle(command),
                },
                _ = crate::clock::sleep_until_opt(deadline), if deadline.is_some() => self.expire_waiters(),
            }
            self.redraw_if_timer_reset();
            if let Err(error) = self.on_ready() {
                // Metadata storage failing is not survivable for a Raft member: its promises
                // (votes, acknowledged entries) can no longer be kept. Stop serving.
                tracing::error!(node = %self.config.node_id, %error, "metadata storage failed; stopping the Raft node");
                break;
            }
            self.redraw_if_timer_reset();
            self.fail_requests_of_old_terms();
            self.publish_status();
        }
        // A proposal may already have reached the leader and commit without us: ambiguous.
        for (_, waiting) in std::mem::take(&mut self.proposals) {
            let _ = waiting.reply.send(Err(NodeError::StoppedInFlight));
        }
        for (_, (waiting, _)) in std::mem::take(&mut self.reads) {
            let _ = waiting.reply.send(Err(NodeError::ShuttingDown));
        }
    }

    /// Checks a peer's message against this node's log: the messages below are ones no correct
    /// peer sends, and raft-rs panics on them. Dropped like a lost packet.
    fn check_against_log(&self, message: &Message) -> Result<(), String> {
        let last_index = self.raw.raft.raft_log.last_index();
        match message.get_msg_type() {
            // A leader attaches `min(matched, committed)` to a heartbeat, never past what this node
            // holds; raft-rs's `commit_to` panics on more ("to_commit .. is out of range", issue 7).
            MessageType::MsgHeartbeat if message.commit > last_index => {
                Err(format!("a heartbeat committing index {} past this node's last index {last_index}", message.commit))
            }
            _ => Ok(()),
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Step(message) => self.on_step(message),
            Command::Propose { command, reply } => self.on_propose(&command, reply),
            Command::ReadBarrier { reply } => self.on_read_barrier(reply),
            Command::TransferLeadership { reply } => {
                self.transfer_leadership();
                let _ = reply.send(());
            }
            Command::Observe { reply } => {
                let _ = reply.send(self.observe());
            }
        }
    }

    fn on_step(&mut self, message: Message) {
        if let Err(reason) = self.check_against_log(&message) {
            tracing::warn!(node = %self.config.node_id, from = message.from, %reason, "dropped a raft message");
            return;
        }
        // Stale terms and the like are raft's to judge; its errors are drops.
        if let Err(error) = self.raw.step(message) {
            tracing::trace!(node = %self.config.node_id, %error, "raft step rejected a message");
        }
    }

    fn on_propose(&mut self, command: &MetaCommand, reply: oneshot::Sender<Result<MetaResult, NodeError>>) {
        let request = self.next_request;
        self.next_request += 1;
        let context = encode_context(self.config.node_id, self.boot_nonce, request);
        match self.raw.propose(context, encode_command(command)) {
            Ok(()) => {
                let deadline = tokio::time::Instant::now() + self.config.proposal_timeout;
                let term = self.raw.raft.term;
                self.proposals.insert(request, Waiting { reply, deadline, term });
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(NodeError::NoLeader));
            }
            Err(error) => {
                let _ = reply.send(Err(NodeError::Raft(error.to_string())));
            }
        }
    }

    fn on_read_barrier(&mut self, reply: oneshot::Sender<Result<(), NodeError>>) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            // raft-rs silently drops a ReadIndex without a leader; say so at once instead.
            let _ = reply.send(Err(NodeError::NoLeader));
            return;
        }
        let request = self.next_request;
        self.next_request += 1;
        self.raw.read_index(self.read_context(request));
        let deadline = tokio::time::Instant::now() + self.config.proposal_timeout;
        let term = self.raw.raft.term;
        self.reads.insert(request, (Waiting { reply, deadline, term }, None));
    }

    /// If this node leads, hands leadership to the most up-to-date follower.
    fn transfer_leadership(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        let me = self.config.node_id;
        let best = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me.0)
            .max_by_key(|(id, progress)| (progress.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id);
        if let Some(transferee) = best {
            tracing::info!(node = %me, transferee, "transferring Raft leadership before shutdown");
            self.raw.transfer_leader(transferee);
        }
    }

    /// The view the simulation's checkers read; takes what was recorded since the last call.
    fn observe(&mut self) -> RaftView {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let first = store.snapshot_index() + 1;
        let last = raft::Storage::last_index(store).unwrap_or(0);
        let log = raft::Storage::entries(store, first, last + 1, None, raft::GetEntriesContext::empty(false))
            .unwrap_or_default()
            .iter()
            .map(|entry| (entry.index, entry.term, fnv1a_64(&entry.data)))
            .collect();
        RaftView {
            node_id: self.config.node_id,
            term: raft.term,
            is_leader: raft.state == StateRole::Leader,
            commit_index: raft.raft_log.committed,
            log,
            applied: std::mem::take(&mut self.applied_log),
            snapshots_installed: std::mem::take(&mut self.snapshots_installed),
        }
    }

    /// A proposal or read made in an earlier term may have gone to a leader that is gone, and raft-rs
    /// would never tell: answer it now (ambiguously for proposals) so the caller can retry, instead of
    /// waiting out the timeout.
    fn fail_requests_of_old_terms(&mut self) {
        let term = self.raw.raft.term;
        self.proposals.retain(|_, waiting| {
            if waiting.term >= term {
                return true;
            }
            let _ = std::mem::replace(&mut waiting.reply, oneshot::channel().0).send(Err(NodeError::LeaderChanged));
            false
        });
        self.reads.retain(|_, (waiting, _)| {
            if waiting.term >= term {
                return true;
            }
            let _ = std::mem::replace(&mut waiting.reply, oneshot::channel().0).send(Err(NodeError::NoLeader));
            false
        });
    }

    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        let proposals = self.proposals.values().map(|waiting| waiting.deadline);
        let reads = self.reads.values().map(|(waiting, _)| waiting.deadline);
        proposals.chain(reads).min()
    }

    fn expire_waiters(&mut self) {
        let now = tokio::time::Instant::now();
        self.proposals.retain(|_, waiting| {
            if waiting.deadline > now {
                return true;
            }
            let _ = std::mem::replace(&mut waiting.reply, oneshot::channel().0).send(Err(NodeError::Timeout));
            false
        });
        self.reads.retain(|_, (waiting, _)| {
            if waiting.deadline > now {
                return true;
            }
            let _ = std::mem::replace(&mut waiting.reply, oneshot::channel().0).send(Err(NodeError::Timeout));
            false
        });
    }

    fn on_ready(&mut self) -> Result<(), NodeError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        self.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.raw.mut_store().apply_snapshot(&self.store, &snapshot)?;
            let restored = MetadataState::restore(snapshot.get_data())
                .map_err(|error| NodeError::Storage(MetaStoreError::Corrupt(error.to_string())))?;
            *self.state.write().expect("metadata state lock") = restored;
            crate::sometimes::hit(crate::sometimes::Sometimes::RaftSnapshotInstalled);
            if OBSERVATION_RECORDED && self.snapshots_installed.len() < APPLIED_LOG_MAX {
                self.snapshots_installed.push((self.applied_log.len(), snapshot.get_metadata().index));
            }
        }
        self.apply(ready.take_committed_entries())?;
        let entries = ready.take_entries();
        let hard_state = ready.hs().cloned();
        self.raw.mut_store().persist(&self.store, &entries, hard_state.as_ref())?;
        self.send(ready.take_persisted_messages());
        for read_state in ready.take_read_states() {
            self.read_index_known(&read_state.request_ctx, read_state.index);
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            let mut hard_state = self.raw.store().hard_state().clone();
            hard_state.commit = commit;
            self.raw.mut_store().persist(&self.store, &[], Some(&hard_state))?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.answer_reads();
        self.maybe_compact()?;
        Ok(())
    }

    fn send(&mut self, messages: Vec<Message>) {
        let mut snapshots_sent = Vec::new();
        for message in messages {
            let to = message.to;
            if message.get_msg_type() == MessageType::MsgSnapshot {
                snapshots_sent.push(to);
            }
            match message.write_to_bytes() {
                Ok(bytes) => self.transport.send(NodeId(to), Bytes::from(bytes)),
                Err(error) => tracing::error!(%error, "cannot encode a raft message"),
            }
        }
        // The transport is lossy and cannot tell whether a snapshot arrived. raft-rs keeps a
        // follower in snapshot state (no more appends) until the application reports; reporting
        // "finished" at once moves it to probing, and if the snapshot was in fact lost the
        // follower rejects the next append and the leader sends a new snapshot. Found by the
        // simulation: a lost snapshot left a follower behind forever (raft_5_voters_swarm, seed 7006,
        // snapshot interval 8).
        for to in snapshots_sent {
            self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        for entry in entries {
            let index = entry.index;
            if OBSERVATION_RECORDED && self.applied_log.len() < APPLIED_LOG_MAX {
                self.applied_log.push((index, fnv1a_64(&entry.data)));
            }
            let result = if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                // Leader no-op entries (and conf changes, which Keel does not use: membership is
                // static) carry no command.
                None
            } else {
                let mut state = self.state.write().expect("metadata state lock");
                Some(match decode_command(&entry.data) {
                    Ok(command) => state.apply(index, &command),
                    Err(error) => {
                        // Every node sees the same bytes, so every node skips it alike.
                        tracing::error!(index, %error, "undecodable metadata command in the Raft log");
                        MetaResult::Error {
                            code: crate::protocol::ErrorCode::Internal,
                            message: format!("undecodable command: {error}"),
                        }
                    }
                })
            };
            if let (Some(result), Some((origin, boot_nonce, request))) = (result, decode_context(&entry.context)) {
                if origin == self.config.node_id.0 && boot_nonce == self.boot_nonce {
                    if let Some(waiting) = self.proposals.remove(&request) {
                        let _ = waiting.reply.send(Ok(result));
                    }
                }
            }
        }
        Ok(())
    }

    /// The context of a read barrier: this node, this incarnation, the request; 24 bytes.
    ///
    /// raft-rs keys pending reads by their context, and an acknowledgement of a heartbeat round
    /// carrying a context confirms whichever read holds that context when it arrives. The context
    /// used to be the request id alone, which every node (and every incarnation) counts from 1: a
    /// late acknowledgement of another node's earlier read with the same id answered this node's
    /// barrier without any acknowledgement given after it began, a stale read. Found by
    /// `raft_3_voters_leader_kill_and_restart` (seed 7700004 with `RUST_LOG=keel=debug`).
    fn read_context(&self, request: u64) -> Vec<u8> {
        let mut context = self.config.node_id.0.to_be_bytes().to_vec();
        context.extend_from_slice(&self.boot_nonce.to_be_bytes());
        context.extend_from_slice(&request.to_be_bytes());
        context
    }

    fn read_index_known(&mut self, context: &[u8], index: u64) {
        let Some(request) = context.get(16..).and_then(|bytes| <[u8; 8]>::try_from(bytes).ok()) else { return };
        let request = u64::from_be_bytes(request);
        if context != self.read_context(request).as_slice() {
            return;
        }
        if let Some((_, read_index)) = self.reads.get_mut(&request) {
            *read_index = Some(index);
        }
    }

    fn answer_reads(&mut self) {
        let applied = self.raw.raft.raft_log.applied;
        self.reads.retain(|_, (waiting, read_index)| match read_index {
            Some(index) if *index <= applied => {
                let _ = std::mem::replace(&mut waiting.reply, oneshot::channel().0).send(Ok(()));
                false
            }
            _ => true,
        });
    }

    fn maybe_compact(&mut self) -> Result<(), NodeError> {
        let applied = self.raw.raft.raft_log.applied;
        let snapshot_index = self.raw.store().snapshot_index();
        if applied < snapshot_index + self.config.snapshot_interval_entries {
            return Ok(());
        }
        let data = self.state.read().expect("metadata state lock").snapshot();
        self.raw.mut_store().compact(&self.store, applied, data)?;
        tracing::debug!(node = %self.config.node_id, applied, "metadata snapshot taken; log compacted");
        Ok(())
    }

    fn publish_status(&mut self) {
        let applied = self.raw.raft.raft_log.applied;
        let raft = &self.raw.raft;
        let leader_id = (raft.leader_id != raft::INVALID_ID).then_some(NodeId(raft.leader_id));
        let (last_leader, leader_changes) = {
            let last = self.status.lock();
            (last.1.leader_id, last.1.leader_changes)
        };
        let status = NodeStatus {
            node_id: self.config.node_id,
            role: RaftRole::from(raft.state),
            term: raft.term,
            leader_id,
            leader_changes: leader_changes + u64::from(leader_id.is_some() && leader_id != last_leader),
            commit_index: raft.raft_log.committed,
            applied_index: applied,
            first_index: self.raw.store().snapshot_index() + 1,
        };
        self.status.publish(status);
    }

    fn redraw_election_timeout(&mut self) {
        let election_tick = self.config.election_tick;
        let timeout = crate::random::rng().random_range(election_tick..2 * election_tick);
        self.raw.raft.set_randomized_election_timeout(timeout);
        self.rng_timeout = timeout;
        self.timer_view = self.current_timer_view();
    }

    fn current_timer_view(&self) -> TimerView {
        TimerView {
            term: self.raw.raft.term,
            role: RaftRole::from(self.raw.raft.state),
            election_elapsed: self.raw.raft.election_elapsed,
        }
    }

    /// raft-rs redraws its timeout (from an unseeded RNG) whenever it resets the election timer.
    /// Every such reset changes the term or the role or sets the elapsed counter back, so redraw
    /// with our RNG whenever any of those happened, or the timeout is not the one we drew.
    fn redraw_if_timer_reset(&mut self) {
        let now = self.current_timer_view();
        let reset = now.term != self.timer_view.term
            || now.role != self.timer_view.role
            || now.election_elapsed < self.timer_view.election_elapsed
            || self.raw.raft.randomized_election_timeout() != self.rng_timeout;
        if reset {
            self.redraw_election_timeout();
        } else {
            self.timer_view = now;
        }
    }
}

/// Forwards raft-rs's slog records to `tracing` (raft's info is Keel's debug: it is chatty).
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, _values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{}", record.msg()),
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::debug!(target: "raft", "{}", record.msg()),
            slog::Level::Debug | slog::Level::Trace => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_roles_print_as_cluster_status_always_showed_them() {
        let names: Vec<String> = RaftRole::ALL.iter().map(RaftRole::to_string).collect();
        assert_eq!(names, ["follower", "pre-candidate", "candidate", "leader", "stopped"]);
        for role in RaftRole::ALL {
            assert_eq!(RaftRole::parse(role.as_str()), Some(role));
            assert_eq!(RaftRole::parse(&role.as_str().to_uppercase()), Some(role));
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{role}\""));
        }
        assert_eq!(RaftRole::parse(""), None, "an unreached node reports no role");
        assert!(RaftRole::Leader.is_leader() && !RaftRole::Stopped.is_leader());
        for (raft_rs, role) in [
            (StateRole::Follower, RaftRole::Follower),
            (StateRole::PreCandidate, RaftRole::PreCandidate),
            (StateRole::Candidate, RaftRole::Candidate),
            (StateRole::Leader, RaftRole::Leader),
        ] {
            assert_eq!(RaftRole::from(raft_rs), role);
        }
    }
}
