//! The metadata Raft node against untrusted peer input, and the end of its task (issue 7, ADR 0007).
//!
//! A node (voters 1, 2, 3; only node 1 runs) is driven by this test acting as nodes 2 and 3: what
//! node 1 sends comes out of a channel transport, what "node 2" sends goes in through
//! `NodeHandle::step`, as the server hands it over from an identified peer connection.
//! - Messages raft-rs would panic on are refused (typed) or dropped, and the node keeps running.
//! - A Raft task that panics is seen: `stopped()` resolves and the status says `stopped`, never
//!   `leader`; and a broker whose Raft task panics shuts down with an error, even with connections
//!   open.
//! - A read barrier is answered only by acknowledgements given after it began.
//!
//! Every wait is bounded by `WAIT_MAX` (a liveness guard, not a sleep).

#![cfg(not(madsim))]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel::meta::node::{start_node, NodeConfig, NodeError, NodeHandle, PeerError, RaftRole, Transport};
use keel::meta::state::{MetaCommand, MetadataState};
use keel::meta::store::{KeyValues, MetaStore, MetaStoreError, WriteBatch};
use keel::meta::store_sim::{SimKv, SimKvHandle};
use keel::protocol::RaftMessage;
use keel::types::NodeId;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT_MAX: Duration = Duration::from_secs(20);

/// Hands every message node 1 sends to the test.
struct ChannelTransport(mpsc::UnboundedSender<Message>);

impl Transport for ChannelTransport {
    fn send(&self, _to: NodeId, bytes: Bytes) {
        let _ = self.0.send(Message::parse_from_bytes(&bytes).expect("node 1 sends valid messages"));
    }
}

/// A transport whose first send panics, as an unexpected input inside raft-rs would.
struct PanickingTransport;

impl Transport for PanickingTransport {
    fn send(&self, to: NodeId, _bytes: Bytes) {
        panic!("injected: the Raft task panics while sending to node {to}");
    }
}

fn three_voters() -> NodeConfig {
    let peers: BTreeMap<NodeId, String> = (1..=3).map(|id| (NodeId(id), format!("node-{id}"))).collect();
    let mut config = NodeConfig::new(NodeId(1), peers);
    config.tick = Duration::from_millis(10);
    config
}

fn start(transport: impl Transport) -> (NodeHandle, CancellationToken) {
    let shutdown = CancellationToken::new();
    let node = start_node(three_voters(), SimKv::new(7).open(), transport, shutdown.clone()).unwrap();
    (node, shutdown)
}

fn message(kind: MessageType, from: u64, term: u64) -> Message {
    let mut message = Message::default();
    message.set_msg_type(kind);
    message.from = from;
    message.to = 1;
    message.term = term;
    message
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, ..Default::default() }
}

fn envelope(message: &Message) -> RaftMessage {
    RaftMessage { from: message.from, to: message.to, message: Bytes::from(message.write_to_bytes().unwrap()) }
}

/// The envelope `sender` puts around a message it relays.
fn envelope_from(sender: u64, message: &Message) -> RaftMessage {
    RaftMessage { from: sender, ..envelope(message) }
}

/// Steps `message` as the server does for a connection identified as `message.from`.
fn step(node: &NodeHandle, message: &Message) -> Result<(), PeerError> {
    node.step(NodeId(message.from), &envelope(message))
}

/// True once the node has handled everything queued before the call and is still running
/// (`observe` is answered by the Raft task after the steps ahead of it in its mailbox).
async fn alive(node: &NodeHandle) -> bool {
    tokio::time::timeout(WAIT_MAX, node.observe()).await.expect("observe answered").is_some()
        && node.status().role != RaftRole::Stopped
}

/// Plays nodes 2 and 3 granting every (pre-)vote until node 1 leads; returns its term.
async fn elect_node_1(node: &NodeHandle, sent: &mut mpsc::UnboundedReceiver<Message>) -> u64 {
    tokio::time::timeout(WAIT_MAX, async {
        loop {
            let request = sent.recv().await.expect("node 1 is running");
            let reply_kind = match request.get_msg_type() {
                MessageType::MsgRequestPreVote => MessageType::MsgRequestPreVoteResponse,
                MessageType::MsgRequestVote => MessageType::MsgRequestVoteResponse,
                _ => {
                    if node.status().role == RaftRole::Leader {
                        return node.status().term;
                    }
                    continue;
                }
            };
            let mut reply = message(reply_kind, request.to, request.term);
            reply.reject = false;
            step(node, &reply).unwrap();
        }
    })
    .await
    .expect("node 1 elected with the votes of nodes 2 and 3")
}

#[tokio::test]
async fn a_raft_task_that_panics_is_seen_as_stopped_and_never_as_leader() {
    let (node, _shutdown) = start(PanickingTransport);
    // With three voters, node 1 campaigns after its election timeout and sends a pre-vote: the
    // transport panics inside the Raft task.
    tokio::time::timeout(WAIT_MAX, node.stopped()).await.expect("the panicked Raft task is seen as stopped");
    let status = node.status();
    assert_eq!(status.role, RaftRole::Stopped, "{status:?}");
    assert_eq!(status.leader_id, None, "a stopped node knows no leader: {status:?}");
    let proposed = node.propose(MetaCommand::DeleteTopic { name: "t".into() }).await;
    assert_eq!(proposed, Err(NodeError::ShuttingDown));
    let mut watcher = node.clone();
    assert!(watcher.status_changed().await.is_ok_and(|status| status.role == RaftRole::Stopped));
}

#[tokio::test]
async fn peer_messages_raft_rs_would_panic_on_are_refused_before_raft_sees_them() {
    let (sent, _received) = mpsc::unbounded_channel();
    let (node, _shutdown) = start(ChannelTransport(sent));

    // Who may send what: only another voter, as itself, to this node.
    let heartbeat = message(MessageType::MsgHeartbeat, 2, 1);
    assert!(matches!(node.step(NodeId(4), &envelope(&heartbeat)), Err(PeerError::UnknownPeer { node: NodeId(4), .. })));
    assert!(matches!(
        node.step(NodeId(3), &envelope(&heartbeat)),
        Err(PeerError::WrongSender { peer: NodeId(3), from: NodeId(2) })
    ));
    let mut to_other = heartbeat.clone();
    to_other.to = 3;
    assert!(matches!(step(&node, &to_other), Err(PeerError::WrongRecipient { to: NodeId(3), this: NodeId(1) })));
    // raft-rs relays proposals with their original sender: node 2 may pass on node 3's proposal
    // (or this node's own), but not one from a node outside the group.
    let mut relayed = message(MessageType::MsgPropose, 3, 0);
    relayed.entries = vec![entry(0, 0)].into();
    assert_eq!(node.step(NodeId(2), &envelope_from(2, &relayed)), Ok(()));
    relayed.from = 1;
    assert_eq!(node.step(NodeId(2), &envelope_from(2, &relayed)), Ok(()));
    relayed.from = 4;
    assert!(matches!(
        node.step(NodeId(2), &envelope_from(2, &relayed)),
        Err(PeerError::WrongSender { peer: NodeId(2), from: NodeId(4) })
    ));
    let mut vote = message(MessageType::MsgRequestVote, 3, 5);
    vote.log_term = 0;
    assert!(matches!(
        node.step(NodeId(2), &envelope_from(2, &vote)),
        Err(PeerError::WrongSender { peer: NodeId(2), from: NodeId(3) })
    ));
    let garbage = RaftMessage { from: 2, to: 1, message: Bytes::from_static(&[0xff; 16]) };
    assert!(matches!(node.step(NodeId(2), &garbage), Err(PeerError::Undecodable(_))));

    // Shapes a correct peer never sends; each panics raft-rs 0.7 or changes the static membership.
    let mut refused: Vec<(&str, Message)> = Vec::new();
    refused.push(("empty proposal", message(MessageType::MsgPropose, 2, 0)));
    refused.push(("read index without its context", message(MessageType::MsgReadIndex, 2, 0)));
    let mut gap = message(MessageType::MsgAppend, 2, 3);
    gap.entries = vec![entry(100, 3)].into();
    refused.push(("append with a gap", gap));
    let mut above_term = message(MessageType::MsgAppend, 2, 3);
    above_term.entries = vec![entry(1, 4)].into();
    refused.push(("entry term above the leader's", above_term));
    let mut conf_change = message(MessageType::MsgPropose, 2, 0);
    let mut change = entry(0, 0);
    change.set_entry_type(EntryType::EntryConfChange);
    conf_change.entries = vec![change].into();
    refused.push(("membership change", conf_change));
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 50;
    snapshot.mut_metadata().term = 3;
    snapshot.data = Bytes::from(MetadataState::new().snapshot());
    let confs = [
        ("snapshot with an inconsistent configuration", vec![1, 2, 3], vec![1]),
        ("snapshot with other voters", vec![1, 2], vec![]),
    ];
    for (what, voters, learners) in confs {
        snapshot.mut_metadata().set_conf_state(ConfState { voters, learners, ..Default::default() });
        let mut bad_conf = message(MessageType::MsgSnapshot, 2, 3);
        bad_conf.set_snapshot(snapshot.clone());
        refused.push((what, bad_conf));
    }
    snapshot.mut_metadata().set_conf_state(ConfState { voters: vec![1, 2, 3], ..Default::default() });
    snapshot.data = Bytes::from_static(b"not a metadata snapshot");
    let mut bad_data = message(MessageType::MsgSnapshot, 2, 3);
    bad_data.set_snapshot(snapshot);
    refused.push(("snapshot whose data does not restore", bad_data));
    refused.push(("a local message", message(MessageType::MsgHup, 2, 0)));
    for (what, message) in refused {
        let result = step(&node, &message);
        assert!(matches!(result, Err(PeerError::Malformed(_))), "{what}: {result:?}");
    }
    assert!(alive(&node).await, "node 1 runs after the refused messages");
}

/// The message of issue 7, from an identified peer: dropped, and the forged term does not stick.
#[tokio::test]
async fn a_heartbeat_committing_past_the_log_is_dropped() {
    let (sent, _received) = mpsc::unbounded_channel();
    let (node, _shutdown) = start(ChannelTransport(sent));
    let mut heartbeat = message(MessageType::MsgHeartbeat, 2, 1_000_000);
    heartbeat.commit = 1 << 40;
    step(&node, &heartbeat).unwrap();
    assert!(alive(&node).await, "node 1 runs after the forged heartbeat");
    assert!(node.status().term < 1_000_000, "{:?}", node.status());

    // A correct leader's traffic still goes through: node 2 appends two entries and commits them.
    let mut append = message(MessageType::MsgAppend, 2, 2);
    append.entries = vec![entry(1, 2), entry(2, 2)].into();
    append.commit = 2;
    step(&node, &append).unwrap();
    assert!(alive(&node).await);
    let status = node.status();
    assert_eq!((status.term, status.leader_id, status.commit_index), (2, Some(NodeId(2)), 2), "{status:?}");
    let mut heartbeat = message(MessageType::MsgHeartbeat, 2, 2);
    heartbeat.commit = 2;
    step(&node, &heartbeat).unwrap();
    assert!(alive(&node).await);
}

/// The checks refuse nothing a correct peer sends: votes from nodes 2 and 3 elect node 1, and
/// their acknowledgements commit a proposal.
#[tokio::test]
async fn a_correct_peers_votes_and_acknowledgements_go_through() {
    let (sent, mut received) = mpsc::unbounded_channel();
    let (node, _shutdown) = start(ChannelTransport(sent));
    let term = elect_node_1(&node, &mut received).await;
    let proposal = tokio::spawn({
        let node = node.clone();
        async move { node.propose(MetaCommand::DeleteTopic { name: "t".into() }).await }
    });
    let last_index = tokio::time::timeout(WAIT_MAX, async {
        loop {
            let view = node.observe().await.expect("the leader runs");
            let last_index = view.log.last().map_or(0, |entry| entry.0);
            if last_index >= 2 {
                return last_index;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the proposal reaches the leader's log");
    for follower in [2, 3] {
        let mut ack = message(MessageType::MsgAppendResponse, follower, term);
        ack.index = last_index;
        step(&node, &ack).unwrap();
    }
    let answer = tokio::time::timeout(WAIT_MAX, proposal).await.expect("the proposal is answered").unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(node.status().commit_index, last_index);
    assert_eq!(node.status().role, RaftRole::Leader);
}

/// A metadata store whose writes panic once armed: a panic inside the Raft task of a whole broker.
struct ArmedStore {
    inner: SimKvHandle,
    armed: Arc<AtomicBool>,
}

impl MetaStore for ArmedStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaStoreError> {
        self.inner.get(key)
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<KeyValues, MetaStoreError> {
        self.inner.scan(start, end)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), MetaStoreError> {
        assert!(!self.armed.load(Ordering::SeqCst), "injected: a panic inside the Raft task");
        self.inner.write(batch, sync)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_raft_task_panics_shuts_down_even_with_connections_open() {
    let armed = Arc::new(AtomicBool::new(false));
    let store = ArmedStore { inner: SimKv::new(11).open(), armed: armed.clone() };
    let config = keel::config::BrokerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    let (bound, address) = tokio::sync::oneshot::channel();
    let (meta_node, handle) = tokio::sync::oneshot::channel();
    let hooks = keel::server::BrokerHooks { bound: Some(bound), meta_node: Some(meta_node), ..Default::default() };
    let disk = keel::storage::sim::SimDisk::new(11);
    let broker = tokio::spawn(keel::server::run_broker(config, disk, store, CancellationToken::new(), hooks));
    let address = address.await.unwrap();
    let node = handle.await.unwrap();

    // The broker registers itself in the metadata shortly after it starts; a topic needs it.
    let mut watcher = node.clone();
    tokio::time::timeout(WAIT_MAX, async {
        while node.with_state(|state| state.brokers().count()) == 0 {
            watcher.status_changed().await.unwrap();
        }
    })
    .await
    .expect("the broker registers itself");
    let client = keel::client::Client::new(address.to_string(), keel::client::ClientConfig::default());
    client.create_topic("before", 1, 1).await.unwrap();
    // An idle connection stays open throughout, as a peer's would.
    let _idle = tokio::net::TcpStream::connect(address).await.unwrap();

    armed.store(true, Ordering::SeqCst);
    let failed = client.create_topic("after", 1, 1).await;
    assert!(failed.is_err(), "the create whose write panicked the Raft task cannot succeed: {failed:?}");
    let exited = tokio::time::timeout(WAIT_MAX, broker).await.expect("the broker shuts down").unwrap();
    assert!(matches!(exited, Err(keel::server::BrokerError::MetadataStopped)), "{exited:?}");
    let status = node.status();
    assert_eq!((status.role, status.leader_id), (RaftRole::Stopped, None), "{status:?}");
}

/// A read barrier is answered only after a quorum acknowledged this node's leadership *after*
/// the barrier began. raft-rs keys pending reads by their context; when the context was only the
/// request id (8 bytes, counted from 1 on every node and in every incarnation), a late
/// acknowledgement of another node's earlier read with the same id answered this node's barrier: a
/// stale read. Found by `raft_3_voters_leader_kill_and_restart` (seed 7700004 with
/// `RUST_LOG=keel=debug`): a leader resumed from a pause answered reads with acknowledgements its
/// followers had sent before they elected another leader.
#[tokio::test]
async fn a_read_barrier_is_never_answered_by_an_acknowledgement_older_than_itself() {
    let (sent, mut received) = mpsc::unbounded_channel();
    let (node, _shutdown) = start(ChannelTransport(sent));
    let term = elect_node_1(&node, &mut received).await;
    // Commit the leader's no-op so that raft-rs serves reads in this term.
    let last_index = node.observe().await.unwrap().log.last().unwrap().0;
    let mut ack = message(MessageType::MsgAppendResponse, 2, term);
    ack.index = last_index;
    step(&node, &ack).unwrap();
    assert!(alive(&node).await);
    assert_eq!(node.status().commit_index, last_index);

    // Node 2 forwards a read whose context is the 8-byte request id 1, as node 1's own first read
    // barrier used to be. Node 2's acknowledgement completes it; node 3's is late.
    let old_context = Bytes::copy_from_slice(&1u64.to_be_bytes());
    let mut forwarded = message(MessageType::MsgReadIndex, 2, 0);
    forwarded.entries = vec![Entry { data: old_context.clone(), ..Default::default() }].into();
    step(&node, &forwarded).unwrap();
    let mut acknowledgement = message(MessageType::MsgHeartbeatResponse, 2, term);
    acknowledgement.context = old_context.clone();
    step(&node, &acknowledgement).unwrap();
    assert!(alive(&node).await);
    while received.try_recv().is_ok() {}

    // Node 1's own barrier begins; then node 3's late acknowledgement of the old round arrives.
    let barrier = tokio::spawn({
        let node = node.clone();
        async move { node.read_barrier().await }
    });
    assert!(alive(&node).await, "the barrier is registered");
    let mut late = message(MessageType::MsgHeartbeatResponse, 3, term);
    late.context = old_context;
    step(&node, &late).unwrap();
    assert!(alive(&node).await, "the late acknowledgement is handled");
    tokio::task::yield_now().await;
    assert!(!barrier.is_finished(), "a barrier was answered by an acknowledgement older than itself");

    // Its own round, acknowledged, answers it.
    let own_round = tokio::time::timeout(WAIT_MAX, async {
        loop {
            let message = received.recv().await.unwrap();
            if message.get_msg_type() == MessageType::MsgHeartbeat && !message.context.is_empty() {
                return message.context.clone();
            }
        }
    })
    .await
    .expect("node 1 sends a heartbeat round for its barrier");
    let mut acknowledgement = message(MessageType::MsgHeartbeatResponse, 3, term);
    acknowledgement.context = own_round;
    step(&node, &acknowledgement).unwrap();
    let answer = tokio::time::timeout(WAIT_MAX, barrier).await.expect("the barrier is answered").unwrap();
    assert_eq!(answer, Ok(()));
}
