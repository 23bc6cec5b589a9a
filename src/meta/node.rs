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

/// Commands queued for the Raft task before callers wait.
pub const NODE_MAILBOX_CAPACITY: usize = 4096;
/// Raft messages queued per peer before new ones are dropped (Raft retransmits).
pub const PEER_QUEUE_CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: u64,
    /// Every voter (this node included) and its address.
    pub peers: BTreeMap<u64, String>,
    pub tick: Duration,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Applied entries after the last snapshot before a new one is taken and the log compacted.
    pub snapshot_interval_entries: u64,
    pub proposal_timeout: Duration,
}

impl NodeConfig {
    pub fn new(node_id: u64, peers: BTreeMap<u64, String>) -> NodeConfig {
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
    UnknownPeer { node: u64, this: u64, voters: Vec<u64> },
    #[error("the message is addressed to node {to}, but this is node {this}")]
    WrongRecipient { to: u64, this: u64 },
    #[error("the connection identified itself as node {peer}, but the message claims to be from node {from}, which it cannot relay")]
    WrongSender { peer: u64, from: u64 },
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
    pub node_id: u64,
    /// `leader`, `follower`, `candidate`, `pre-candidate`, or [`ROLE_STOPPED`] once the Raft task
    /// has ended.
    pub role: String,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// The first log index still held (after compaction).
    pub first_index: u64,
    pub state_hash: u64,
}

/// A node's Raft state as the invariant checkers want it (see `keel_model::raft_checker`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftView {
    pub node_id: u64,
    pub term: u64,
    pub is_leader: bool,
    pub commit_index: u64,
    /// `(index, term, FNV-1a of the data)` of every entry the node holds (after its snapshot).
    pub log: Vec<(u64, u64, u64)>,
    /// `(index, FNV-1a of the data)` of entries applied since the previous `observe`, in order.
    pub applied: Vec<(u64, u64)>,
    /// Snapshots from the leader installed since the previous `observe`, as `(position, snapshot
    /// index)`: the install came after the first `position` entries of `applied`. Applied indices
    /// jump only here (and at a restart), never on local compaction.
    pub snapshots_installed: Vec<(usize, u64)>,
}

/// The role a node reports once its Raft task has ended, however it ended.
pub const ROLE_STOPPED: &str = "stopped";

/// Applied entries remembered for `observe` before the oldest are dropped.
pub const APPLIED_LOG_CAPACITY: usize = 100_000;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// Sends raft messages to peers. Lossy by design: Raft retransmits.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, to: u64, message: Bytes);
}

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
            value.1.role = ROLE_STOPPED.to_owned();
            value.1.leader_id = 0;
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
    node_id: u64,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(node = self.node_id, "the metadata Raft task panicked; the node is stopped");
        }
        self.status.close();
    }
}

/// A handle to the running node: cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    node_id: u64,
    /// Every voter of the metadata group (this node included), sorted. Membership is static.
    voters: Arc<[u64]>,
    commands: mpsc::Sender<Command>,
    state: Arc<RwLock<MetadataState>>,
    status: Arc<StatusCell>,
    /// The status version this handle has seen (for `status_changed`).
    seen_version: u64,
    /// The snapshot index this incarnation started from (see [`NodeHandle::boot_snapshot_index`]).
    boot_snapshot_index: u64,
}

impl NodeHandle {
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Checks a peer handshake: `node` must be another voter and `to` this node.
    pub fn check_peer(&self, node: u64, to: u64) -> Result<(), PeerError> {
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
    pub fn step(&self, peer: u64, envelope: &crate::protocol::RaftMessage) -> Result<(), PeerError> {
        self.check_peer(peer, self.node_id)?;
        if envelope.from != peer {
            return Err(PeerError::WrongSender { peer, from: envelope.from });
        }
        if envelope.to != self.node_id {
            return Err(PeerError::WrongRecipient { to: envelope.to, this: self.node_id });
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
        let sender_allowed = if relayed { self.voters.contains(&message.from) } else { message.from == peer };
        if !sender_allowed {
            return Err(PeerError::WrongSender { peer, from: message.from });
        }
        if message.to != self.node_id {
            return Err(PeerError::WrongRecipient { to: message.to, this: self.node_id });
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

/// Starts the node: loads (or initialises) the log from `store`, rebuilds the state machine from
/// the snapshot, and spawns the task. Committed entries after the snapshot are re-applied by the
/// first `Ready`s.
pub fn start_node<S: MetaStore, T: Transport>(
    config: NodeConfig,
    store: S,
    transport: T,
    shutdown: CancellationToken,
) -> Result<NodeHandle, NodeError> {
    let voters: Vec<u64> = config.peers.keys().copied().collect();
    assert!(voters.contains(&config.node_id), "node {} is not among the voters {voters:?}", config.node_id);
    let raft_store = RaftStore::load(&store, &voters)?;
    let snapshot_index = raft_store.snapshot_index();
    let state = if raft_store.snapshot_ref().get_data().is_empty() {
        MetadataState::new()
    } else {
        MetadataState::restore(raft_store.snapshot_ref().get_data())
            .map_err(|error| NodeError::Storage(MetaStoreError::Corrupt(error.to_string())))?
    };
    let raft_config = raft::Config {
        id: config.node_id,
        election_tick: config.election_tick,
        heartbeat_tick: config.heartbeat_tick,
        applied: snapshot_index,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        ..raft::Config::default()
    };
    raft_config.validate().map_err(|error| NodeError::Raft(error.to_string()))?;
    let logger = slog::Logger::root(TracingDrain, slog::o!("raft_id" => config.node_id));
    let raw = RawNode::new(&raft_config, raft_store, &logger).map_err(|error| NodeError::Raft(error.to_string()))?;
    let state = Arc::new(RwLock::new(state));
    let status = Arc::new(StatusCell::default());
    let (commands, mailbox) = mpsc::channel(NODE_MAILBOX_CAPACITY);
    let mut node = Node {
        config,
        raw,
        store,
        transport,
        state: state.clone(),
        status: status.clone(),
        hashed: (u64::MAX, 0),
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
pub fn check_peer_message(message: &Message, voters: &[u64]) -> Result<(), String> {
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
        let mut snapshot_voters = conf.voters.clone();
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
    role: u8,
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
    /// (applied index, state hash) of the last hash computed: hashing serializes the whole state,
    /// so it is redone only when something new was applied.
    hashed: (u64, u64),
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

fn role_code(role: StateRole) -> u8 {
    match role {
        StateRole::Follower => 0,
        StateRole::Candidate => 1,
        StateRole::Leader => 2,
        StateRole::PreCandidate => 3,
    }
}

fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::Leader => "leader",
        StateRole::PreCandidate => "pre-candidate",
    }
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
fn encode_context(node: u64, boot_nonce: u64, request: u64) -> Vec<u8> {
    let mut context = node.to_be_bytes().to_vec();
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
                _ = sleep_until_opt(deadline), if deadline.is_some() => self.expire_waiters(),
            }
            self.redraw_if_timer_reset();
            if let Err(error) = self.on_ready() {
                // Metadata storage failing is not survivable for a Raft member: its promises
                // (votes, acknowledged entries) can no longer be kept. Stop serving.
                tracing::error!(node = self.config.node_id, %error, "metadata storage failed; stopping the Raft node");
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
            Command::Step(message) => {
                if let Err(reason) = self.check_against_log(&message) {
                    tracing::warn!(node = self.config.node_id, from = message.from, %reason, "dropped a raft message");
                    return;
                }
                // Stale terms and the like are raft's to judge; its errors are drops.
                if let Err(error) = self.raw.step(message) {
                    tracing::trace!(node = self.config.node_id, %error, "raft step rejected a message");
                }
            }
            Command::Propose { command, reply } => {
                let request = self.next_request;
                self.next_request += 1;
                let context = encode_context(self.config.node_id, self.boot_nonce, request);
                match self.raw.propose(context, encode_command(&command)) {
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
            Command::ReadBarrier { reply } => {
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
            Command::TransferLeadership { reply } => {
                if self.raw.raft.state == StateRole::Leader {
                    let me = self.config.node_id;
                    let best = self
                        .raw
                        .raft
                        .prs()
                        .iter()
                        .filter(|(id, _)| **id != me)
                        .max_by_key(|(id, progress)| (progress.matched, std::cmp::Reverse(**id)))
                        .map(|(id, _)| *id);
                    if let Some(transferee) = best {
                        tracing::info!(node = me, transferee, "transferring Raft leadership before shutdown");
                        self.raw.transfer_leader(transferee);
                    }
                }
                let _ = reply.send(());
            }
            Command::Observe { reply } => {
                let raft = &self.raw.raft;
                let store = self.raw.store();
                let first = store.snapshot_index() + 1;
                let last = raft::Storage::last_index(store).unwrap_or(0);
                let log = raft::Storage::entries(store, first, last + 1, None, raft::GetEntriesContext::empty(false))
                    .unwrap_or_default()
                    .iter()
                    .map(|entry| (entry.index, entry.term, fnv1a(&entry.data)))
                    .collect();
                let view = RaftView {
                    node_id: self.config.node_id,
                    term: raft.term,
                    is_leader: raft.state == StateRole::Leader,
                    commit_index: raft.raft_log.committed,
                    log,
                    applied: std::mem::take(&mut self.applied_log),
                    snapshots_installed: std::mem::take(&mut self.snapshots_installed),
                };
                let _ = reply.send(view);
            }
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
            if self.snapshots_installed.len() < APPLIED_LOG_CAPACITY {
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
                Ok(bytes) => self.transport.send(to, Bytes::from(bytes)),
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
            if self.applied_log.len() < APPLIED_LOG_CAPACITY {
                self.applied_log.push((index, fnv1a(&entry.data)));
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
                if origin == self.config.node_id && boot_nonce == self.boot_nonce {
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
        let mut context = self.config.node_id.to_be_bytes().to_vec();
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
        tracing::debug!(node = self.config.node_id, applied, "metadata snapshot taken; log compacted");
        Ok(())
    }

    fn publish_status(&mut self) {
        let applied = self.raw.raft.raft_log.applied;
        if self.hashed.0 != applied {
            self.hashed = (applied, self.state.read().expect("metadata state lock").state_hash());
        }
        let raft = &self.raw.raft;
        let status = NodeStatus {
            node_id: self.config.node_id,
            role: role_name(raft.state).to_owned(),
            term: raft.term,
            leader_id: raft.leader_id,
            commit_index: raft.raft_log.committed,
            applied_index: applied,
            first_index: self.raw.store().snapshot_index() + 1,
            state_hash: self.hashed.1,
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
            role: role_code(self.raw.raft.state),
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

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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

/// Sends raft messages to peers over Keel's native protocol, one reconnecting connection per peer,
/// each behind a bounded queue: a slow or dead peer never blocks the Raft loop (its messages are
/// dropped when its queue is full, and Raft retransmits).
pub struct PeerTransport {
    queues: BTreeMap<u64, mpsc::Sender<Bytes>>,
}

impl PeerTransport {
    pub fn start(node_id: u64, peers: &BTreeMap<u64, String>, shutdown: CancellationToken) -> PeerTransport {
        let mut queues = BTreeMap::new();
        for (&peer, addr) in peers {
            if peer == node_id {
                continue;
            }
            let (queue, receiver) = mpsc::channel(PEER_QUEUE_CAPACITY);
            tokio::spawn(peer_sender(node_id, peer, addr.clone(), receiver, shutdown.clone()));
            queues.insert(peer, queue);
        }
        PeerTransport { queues }
    }
}

impl Transport for PeerTransport {
    fn send(&self, to: u64, message: Bytes) {
        if let Some(queue) = self.queues.get(&to) {
            let _ = queue.try_send(message);
        }
    }
}

/// How long a peer connection waits for the answer to its `PeerHello`.
pub const PEER_HELLO_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an established peer connection repeats its `PeerHello` as a keepalive.
pub const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// A keepalive unanswered this long means the connection no longer delivers: reconnect.
///
/// Raft traffic is one-way, so a write "succeeding" proves nothing: after a partition or a clog
/// the stream may hold data for a long time (madsim retries a held connection with backoff up to
/// 10 s, and so does a real TCP stack), and a sender that only writes never notices. Found by
/// `raft_5_voters_partitions_and_clogs` seed 7620132 and `raft_5_voters_swarm` seed 7632155: a
/// node heard no leader for over 10 s after the heal.
pub const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

async fn peer_sender(
    from: u64,
    peer: u64,
    addr: String,
    mut queue: mpsc::Receiver<Bytes>,
    shutdown: CancellationToken,
) {
    use futures::{SinkExt, StreamExt};
    use tokio_util::codec::Framed;

    use crate::protocol::{Body, Frame, PeerHello, RaftMessage, PEER_PROTOCOL_VERSION};

    let mut backoff = Duration::from_millis(50);
    loop {
        let connect = tokio::net::TcpStream::connect(addr.as_str());
        let stream = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            connected = tokio::time::timeout(Duration::from_secs(1), connect) => match connected {
                Ok(Ok(stream)) => Some(stream),
                _ => None,
            },
        };
        let mut framed = stream.map(|stream| {
            let _ = stream.set_nodelay(true);
            Framed::new(stream, crate::protocol::frame_codec())
        });
        // Identify as a peer before any Raft traffic (ADR 0007); the receiver refuses Raft
        // messages on a connection that has not.
        if let Some(connection) = framed.as_mut() {
            let hello = Frame::new(
                1,
                Body::PeerHello(PeerHello { node_id: from, to: peer, peer_version: PEER_PROTOCOL_VERSION }),
            );
            let answered = tokio::time::timeout(PEER_HELLO_TIMEOUT, async {
                connection.send(hello.encode_to_bytes()).await.ok()?;
                let reply = connection.next().await?.ok()?;
                Frame::decode_bytes(reply.freeze()).ok()
            });
            let accepted = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                answer = answered => match answer {
                    Ok(Some(Frame { body: Some(Body::PeerHelloResponse(response)), .. })) => match response.error {
                        None => true,
                        Some(error) => {
                            tracing::warn!(node = from, peer, %addr, error = %error.message, "peer refused the handshake");
                            false
                        }
                    },
                    Ok(Some(other)) => {
                        tracing::warn!(node = from, peer, %addr, answer = ?other.body, "peer did not accept the handshake");
                        false
                    }
                    _ => false,
                },
            };
            if !accepted {
                framed = None;
            }
        }
        let Some(mut framed) = framed else {
            // Drop what queued up meanwhile: stale raft messages are worthless.
            while queue.try_recv().is_ok() {}
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        };
        backoff = Duration::from_millis(50);
        let mut keepalive = tokio::time::interval(PEER_KEEPALIVE_INTERVAL);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.tick().await; // the first tick is immediate; the handshake just proved the link
        let mut keepalive_id = 1u64;
        // When the oldest unanswered keepalive was sent.
        let mut unanswered_since: Option<tokio::time::Instant> = None;
        loop {
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = keepalive.tick() => {
                    let now = tokio::time::Instant::now();
                    if unanswered_since.is_some_and(|since| now.duration_since(since) >= PEER_KEEPALIVE_TIMEOUT) {
                        tracing::debug!(node = from, peer, %addr, "peer connection stalled; reconnecting");
                        break;
                    }
                    keepalive_id += 1;
                    let hello = Frame::new(
                        keepalive_id,
                        Body::PeerHello(PeerHello { node_id: from, to: peer, peer_version: PEER_PROTOCOL_VERSION }),
                    );
                    match tokio::time::timeout(Duration::from_secs(2), framed.send(hello.encode_to_bytes())).await {
                        Ok(Ok(())) => {}
                        _ => break,
                    }
                    unanswered_since.get_or_insert(now);
                    continue;
                }
                // The receiver answers Raft traffic only to refuse it; read those answers so they
                // are seen (and never fill the socket).
                incoming = framed.next() => match incoming.map(|bytes| bytes.map(|bytes| Frame::decode_bytes(bytes.freeze()))) {
                    Some(Ok(Ok(Frame { body: Some(Body::ErrorResponse(response)), .. }))) => {
                        let error = response.error.map(|error| error.message).unwrap_or_default();
                        tracing::warn!(node = from, peer, %error, "peer refused a raft message");
                        continue;
                    }
                    Some(Ok(Ok(Frame { body: Some(Body::PeerHelloResponse(response)), .. }))) => {
                        if let Some(error) = response.error {
                            tracing::warn!(node = from, peer, error = %error.message, "peer refused a keepalive");
                            break;
                        }
                        unanswered_since = None;
                        continue;
                    }
                    Some(Ok(Ok(_))) => continue,
                    // Closed, broken, or undecodable: reconnect.
                    _ => break,
                },
                message = queue.recv() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            let frame = Frame::new(0, Body::RaftMessage(RaftMessage { from, to: peer, message }));
            // A write that does not finish in time means the peer is stuck: reconnect.
            match tokio::time::timeout(Duration::from_secs(2), framed.send(frame.encode_to_bytes())).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    }
}
