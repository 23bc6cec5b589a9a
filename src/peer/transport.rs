//! The peer transport: one connection from this node to each other voter, over Keel's native
//! protocol, shared by every component that talks to peers (ADR 0010).
//!
//! In: one-way Raft messages ([`Transport::send`], lossy) and request/response calls
//! ([`PeerTransport::call`]) addressed by [`NodeId`]. Out: frames on one connection per peer;
//! answers to calls, matched by correlation id.
//!
//! # One connection per peer
//! A task per peer owns the socket (madsim has no `into_split`, so it reads and writes). It:
//! 1. connects (at most [`PEER_CONNECT_TIMEOUT_MS`]) and identifies itself with a `PeerHello` naming
//!    this node and the peer, waiting at most [`PEER_HELLO_TIMEOUT_MS`] for the acceptance (ADR
//!    0007: the receiver refuses Raft traffic on a connection that has not identified itself);
//! 2. on failure, drops the Raft messages queued meanwhile (stale Raft messages are worthless; Raft
//!    retransmits), fails the waiting calls with [`PeerCallError::Unreachable`], and retries after a
//!    backoff that doubles from [`PEER_RECONNECT_BACKOFF_MS_MIN`] to [`PEER_RECONNECT_BACKOFF_MS_MAX`];
//! 3. once connected, repeats the hello every [`PEER_KEEPALIVE_INTERVAL_MS`] and reconnects when
//!    one stays unanswered for [`PEER_KEEPALIVE_TIMEOUT_MS`]: Raft traffic is one-way, so a stream a
//!    partition or a clog stalled would otherwise never be noticed; a write that does not finish
//!    within [`PEER_WRITE_TIMEOUT_MS`] reconnects too;
//! 4. when the connection breaks, fails every call in flight with [`PeerCallError::ConnectionLost`]
//!    (the peer may have acted on it).
//!
//! # Raft messages (one-way, lossy)
//! [`Transport::send`] never blocks the Raft loop: each peer has a queue of [`PEER_QUEUE_MAX`]
//! messages and a full queue drops the new one, as a lost packet. A Raft message travels with
//! correlation id 0; the receiver answers it only to refuse it, and those refusals are logged here.
//!
//! # Calls (request/response)
//! [`PeerTransport::call`] sends a request body on the peer's connection with a fresh correlation
//! id and waits for the response with that id, at most `timeout` (`None`: until the connection
//! breaks). At most [`PEER_CALLS_IN_FLIGHT_MAX`] calls per peer are sent and unanswered at once;
//! one more waits for a slot, first come first served (tokio's semaphore is fair), within its own
//! timeout. It used to be refused at once (`TooManyInFlight`) and the caller backed off: with more
//! partitions following one leader than slots, the followers whose long polls were answered asked
//! again at once and kept every slot, and a partition whose fetch had been refused never got one
//! (`isr_3_many_partitions_small_file_budget` seed 30003: 300 partitions, its HW stuck for 150 s).
//! The wait is bounded by the callers: each partition has at most one fetch in flight. A call to a node that is not a peer gets [`PeerCallError::UnknownPeer`]; to a peer that
//! cannot be reached, [`PeerCallError::Unreachable`].
//!
//! Architecture invariant: imports nothing above `protocol` and `types`; a slow or dead peer never
//! blocks a caller beyond its own timeout, nor the Raft loop at all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::protocol::{frame_codec, Body, ErrorCode, Frame, PeerHello, RaftMessage, PEER_PROTOCOL_VERSION};
use crate::tls::Stream;
use crate::types::NodeId;

/// Raft messages queued per peer before new ones are dropped (Raft retransmits).
pub const PEER_QUEUE_MAX: usize = 1024;
/// Calls to one peer sent and waiting for their answer at once; one more waits for a slot.
pub const PEER_CALLS_IN_FLIGHT_MAX: usize = 256;
/// How long a connection attempt to a peer may take.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// How long a new peer connection waits for the answer to its `PeerHello`.
pub const PEER_HELLO_TIMEOUT_MS: u64 = 1_000;
/// A write to a peer that takes longer means the connection is stuck: reconnect.
pub const PEER_WRITE_TIMEOUT_MS: u64 = 2_000;
/// How often an established peer connection repeats its `PeerHello` as a keepalive.
pub const PEER_KEEPALIVE_INTERVAL_MS: u64 = 500;
/// A keepalive unanswered this long means the connection no longer delivers: reconnect.
///
/// Raft traffic is one-way, so a write "succeeding" proves nothing: after a partition or a clog
/// the stream may hold data for a long time (madsim retries a held connection with backoff up to
/// 10 s, and so does a real TCP stack), and a sender that only writes never notices. Found by
/// `raft_5_voters_partitions_and_clogs` seed 7620132 and `raft_5_voters_swarm` seed 7632155: a
/// node heard no leader for over 10 s after the heal.
pub const PEER_KEEPALIVE_TIMEOUT_MS: u64 = 2_000;
/// The first wait before reconnecting to a peer after a failed attempt.
pub const PEER_RECONNECT_BACKOFF_MS_MIN: u64 = 50;
/// The longest wait between attempts (the backoff doubles up to it).
pub const PEER_RECONNECT_BACKOFF_MS_MAX: u64 = 1_000;

/// Sends Raft messages to peers. Lossy by design: Raft retransmits. The metadata driver
/// (`meta::node`) is generic over it, so its tests can stand in for the network.
pub trait Transport: Send + Sync + 'static {
    /// Queues a raft-rs message (protobuf-encoded) for `to`; drops it if that cannot be done at once.
    fn send(&self, to: NodeId, message: Bytes);
}

/// Why a call to a peer did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerCallError {
    /// Not a peer of this node (or this node itself): nothing was sent.
    #[error("node {0} is not a peer of this node")]
    UnknownPeer(NodeId),
    /// The peer could not be connected to (or refused the handshake): nothing was sent.
    #[error("node {peer} is unreachable: {reason}")]
    Unreachable { peer: NodeId, reason: String },
    /// The connection broke with the call in flight: the peer may have acted on it.
    #[error("the connection to node {0} broke with the call in flight")]
    ConnectionLost(NodeId),
    /// No answer within the call's timeout: the peer may still act on it.
    #[error("node {peer} did not answer within {timeout:?}")]
    Timeout { peer: NodeId, timeout: Duration },
    /// The call queue to this peer was full although the caller held a slot (a bug): nothing sent.
    #[error("{max} calls to node {peer} are in flight already")]
    TooManyInFlight { peer: NodeId, max: usize },
    /// The peer answered with an `ErrorResponse` (it could not read the request).
    #[error("node {peer} refused the call ({code:?}): {message}")]
    Refused { peer: NodeId, code: ErrorCode, message: String },
    /// This node's transport is shut down: nothing was sent.
    #[error("the peer transport is shut down")]
    Stopped,
}

/// Tuning of the transport; [`PeerTransportConfig::default`] is what the broker runs with.
#[derive(Debug, Clone)]
pub struct PeerTransportConfig {
    pub calls_in_flight_max: usize,
    /// TLS to the peers (ADR 0028): the cluster's CA, and this broker's certificate to present.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for PeerTransportConfig {
    fn default() -> Self {
        PeerTransportConfig { calls_in_flight_max: PEER_CALLS_IN_FLIGHT_MAX, tls: None }
    }
}

/// Sends to this node's peers, one reconnecting connection each. Cheap to clone: the clones share
/// the connections.
#[derive(Clone)]
pub struct PeerTransport {
    peers: Arc<BTreeMap<NodeId, PeerQueues>>,
    calls_in_flight_max: usize,
}

struct PeerQueues {
    raft: mpsc::Sender<Bytes>,
    calls: mpsc::Sender<Call>,
    /// One permit per call waiting for its answer (held by the caller, so a call that gives up
    /// frees its slot at once).
    in_flight: Arc<Semaphore>,
}

/// A call handed to a peer's connection task.
struct Call {
    body: Body,
    reply: oneshot::Sender<Result<Body, PeerCallError>>,
}

impl PeerTransport {
    /// Starts one connection task per peer (every entry of `peers` except `node_id`), each running
    /// until `shutdown`.
    pub fn start(
        node_id: NodeId,
        peers: &BTreeMap<NodeId, String>,
        tls: Option<Arc<rustls::ClientConfig>>,
        shutdown: CancellationToken,
    ) -> PeerTransport {
        PeerTransport::start_with(
            node_id,
            peers,
            PeerTransportConfig { tls, ..PeerTransportConfig::default() },
            shutdown,
        )
    }

    pub fn start_with(
        node_id: NodeId,
        peers: &BTreeMap<NodeId, String>,
        config: PeerTransportConfig,
        shutdown: CancellationToken,
    ) -> PeerTransport {
        assert!(config.calls_in_flight_max > 0, "calls_in_flight_max must be positive: {config:?}");
        let mut queues = BTreeMap::new();
        for (&peer, addr) in peers {
            if peer == node_id {
                continue;
            }
            let (raft, raft_receiver) = mpsc::channel(PEER_QUEUE_MAX);
            // Every queued call holds a permit, so this queue never fills.
            let (calls, call_receiver) = mpsc::channel(config.calls_in_flight_max);
            let connection = PeerConnection {
                from: node_id,
                peer,
                addr: addr.clone(),
                raft: raft_receiver,
                calls: call_receiver,
                waiting: BTreeMap::new(),
                calls_in_flight_max: config.calls_in_flight_max,
                shutdown: shutdown.clone(),
                tls: config.tls.clone(),
            };
            tokio::spawn(connection.run());
            let in_flight = Arc::new(Semaphore::new(config.calls_in_flight_max));
            queues.insert(peer, PeerQueues { raft, calls, in_flight });
        }
        PeerTransport { peers: Arc::new(queues), calls_in_flight_max: config.calls_in_flight_max }
    }

    /// Sends `body` (a request) to `to` and waits for its response, at most `timeout` (`None`:
    /// until it comes or the connection breaks). An `ErrorResponse` comes back as
    /// [`PeerCallError::Refused`]; any other response body is returned as it is.
    pub async fn call(&self, to: NodeId, body: Body, timeout: Option<Duration>) -> Result<Body, PeerCallError> {
        let call = self.call_in_turn(to, body);
        match timeout {
            None => call.await,
            Some(timeout) => {
                tokio::time::timeout(timeout, call).await.unwrap_or(Err(PeerCallError::Timeout { peer: to, timeout }))
            }
        }
    }

    /// [`PeerTransport::call`] without its timeout: waits for a slot among the calls in flight to
    /// `to` (first come, first served), sends, and waits for the answer.
    async fn call_in_turn(&self, to: NodeId, body: Body) -> Result<Body, PeerCallError> {
        let queues = self.peers.get(&to).ok_or(PeerCallError::UnknownPeer(to))?;
        let _permit: OwnedSemaphorePermit =
            queues.in_flight.clone().acquire_owned().await.map_err(|_| PeerCallError::Stopped)?;
        let (reply, answer) = oneshot::channel();
        queues.calls.try_send(Call { body, reply }).map_err(|error| match error {
            mpsc::error::TrySendError::Closed(_) => PeerCallError::Stopped,
            // Cannot happen while every queued call holds a permit; refuse rather than wait.
            mpsc::error::TrySendError::Full(_) => {
                PeerCallError::TooManyInFlight { peer: to, max: self.calls_in_flight_max }
            }
        })?;
        // A dropped reply means the connection task ended (shutdown).
        answer.await.unwrap_or(Err(PeerCallError::Stopped))
    }

    /// The peers this transport reaches, in order.
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.keys().copied()
    }
}

impl Transport for PeerTransport {
    fn send(&self, to: NodeId, message: Bytes) {
        if let Some(queues) = self.peers.get(&to) {
            let _ = queues.raft.try_send(message);
        }
    }
}

type PeerStream = Framed<Stream, LengthDelimitedCodec>;

/// Why an established connection ended.
enum Ended {
    /// Shutdown, or the transport was dropped: the task ends.
    Stopped,
    /// Broken, stalled or refused: reconnect.
    Broken,
}

/// The task that owns the connection to one peer.
struct PeerConnection {
    from: NodeId,
    peer: NodeId,
    addr: String,
    raft: mpsc::Receiver<Bytes>,
    calls: mpsc::Receiver<Call>,
    /// Calls sent on the current connection, by correlation id, waiting for their response.
    waiting: BTreeMap<u64, oneshot::Sender<Result<Body, PeerCallError>>>,
    calls_in_flight_max: usize,
    shutdown: CancellationToken,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl PeerConnection {
    async fn run(mut self) {
        let mut backoff_ms = PEER_RECONNECT_BACKOFF_MS_MIN;
        loop {
            let connected = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                connected = self.connect() => connected,
            };
            match connected {
                Ok(framed) => {
                    backoff_ms = PEER_RECONNECT_BACKOFF_MS_MIN;
                    let ended = self.serve(framed).await;
                    // Whatever was in flight on that connection may or may not have been acted on.
                    for (_, waiter) in std::mem::take(&mut self.waiting) {
                        let _ = waiter.send(Err(PeerCallError::ConnectionLost(self.peer)));
                    }
                    if let Ended::Stopped = ended {
                        return;
                    }
                }
                Err(reason) => {
                    // Drop what queued up meanwhile: stale raft messages are worthless.
                    while self.raft.try_recv().is_ok() {}
                    self.fail_waiting_calls(&reason);
                    if !self.back_off(backoff_ms, &reason).await {
                        return;
                    }
                    backoff_ms = (backoff_ms * 2).min(PEER_RECONNECT_BACKOFF_MS_MAX);
                }
            }
        }
    }

    /// Fails the calls queued while this peer could not be reached: nothing was sent.
    fn fail_waiting_calls(&mut self, reason: &str) {
        while let Ok(call) = self.calls.try_recv() {
            let _ = call.reply.send(Err(PeerCallError::Unreachable { peer: self.peer, reason: reason.to_owned() }));
        }
    }

    /// Waits `backoff_ms` before the next attempt; calls made meanwhile fail at once (the peer was
    /// just found unreachable). False on shutdown.
    async fn back_off(&mut self, backoff_ms: u64, reason: &str) -> bool {
        let sleep = tokio::time::sleep(Duration::from_millis(backoff_ms));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return false,
                _ = &mut sleep => return true,
                call = self.calls.recv() => match call {
                    Some(call) => {
                        let error = PeerCallError::Unreachable { peer: self.peer, reason: reason.to_owned() };
                        let _ = call.reply.send(Err(error));
                    }
                    None => return false,
                },
            }
        }
    }

    fn hello(&self, correlation_id: u64) -> Bytes {
        let hello = PeerHello { node_id: self.from.0, to: self.peer.0, peer_version: PEER_PROTOCOL_VERSION };
        Frame::new(correlation_id, Body::PeerHello(hello)).encode_to_bytes()
    }

    /// Connects and identifies this node as a peer (ADR 0007). `Err` says why not.
    async fn connect(&self) -> Result<PeerStream, String> {
        let connect = TcpStream::connect(self.addr.as_str());
        let stream = match tokio::time::timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS), connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(format!("cannot connect to {}: {error}", self.addr)),
            Err(_) => return Err(format!("no connection to {} within {PEER_CONNECT_TIMEOUT_MS} ms", self.addr)),
        };
        // Every socket Keel opens sets TCP_NODELAY (tests/tcp_nodelay.rs).
        let _ = stream.set_nodelay(true);
        let stream = crate::tls::connect(self.tls.as_ref(), &self.addr, stream)
            .await
            .map_err(|error| format!("TLS handshake with {} failed: {error}", self.addr))?;
        let mut framed = Framed::new(stream, frame_codec());
        let answered = tokio::time::timeout(Duration::from_millis(PEER_HELLO_TIMEOUT_MS), async {
            framed.send(self.hello(1)).await.ok()?;
            let reply = framed.next().await?.ok()?;
            Frame::decode_bytes(reply.freeze()).ok()
        });
        let (from, peer, addr) = (self.from, self.peer, &self.addr);
        match answered.await {
            Ok(Some(Frame { body: Some(Body::PeerHelloResponse(response)), .. })) => match response.error {
                None => Ok(framed),
                Some(error) => {
                    tracing::warn!(node = %from, %peer, %addr, error = %error.message, "peer refused the handshake");
                    Err(format!("the handshake was refused: {}", error.message))
                }
            },
            Ok(Some(other)) => {
                tracing::warn!(node = %from, %peer, %addr, answer = ?other.body, "peer did not accept the handshake");
                Err("the handshake got an unexpected answer".to_owned())
            }
            _ => Err(format!("no answer to the handshake within {PEER_HELLO_TIMEOUT_MS} ms")),
        }
    }

    /// Carries Raft messages, calls and keepalives on an identified connection until it breaks,
    /// stalls, or the transport stops.
    async fn serve(&mut self, mut framed: PeerStream) -> Ended {
        let (from, peer) = (self.from, self.peer);
        let write_timeout = Duration::from_millis(PEER_WRITE_TIMEOUT_MS);
        let mut keepalive = tokio::time::interval(Duration::from_millis(PEER_KEEPALIVE_INTERVAL_MS));
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.tick().await; // the first tick is immediate; the handshake just proved the link
                                // The hello used 1; keepalives and calls share the ids after it.
        let mut next_correlation_id = 2u64;
        // When the oldest unanswered keepalive was sent.
        let mut unanswered_since: Option<tokio::time::Instant> = None;
        loop {
            let frame = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ended::Stopped,
                _ = keepalive.tick() => {
                    let now = tokio::time::Instant::now();
                    let keepalive_timeout = Duration::from_millis(PEER_KEEPALIVE_TIMEOUT_MS);
                    if unanswered_since.is_some_and(|since| now.duration_since(since) >= keepalive_timeout) {
                        tracing::debug!(node = %from, %peer, addr = %self.addr, "peer connection stalled; reconnecting");
                        return Ended::Broken;
                    }
                    let hello = self.hello(next_correlation_id);
                    next_correlation_id += 1;
                    match tokio::time::timeout(write_timeout, framed.send(hello)).await {
                        Ok(Ok(())) => {}
                        _ => return Ended::Broken,
                    }
                    unanswered_since.get_or_insert(now);
                    continue;
                }
                incoming = framed.next() => {
                    let Some(Ok(bytes)) = incoming else { return Ended::Broken };
                    // Undecodable: the stream cannot be trusted any more; reconnect.
                    let Ok(frame) = Frame::decode_bytes(bytes.freeze()) else { return Ended::Broken };
                    match self.on_incoming(frame) {
                        Incoming::KeepaliveAnswered => unanswered_since = None,
                        Incoming::Handled => {}
                        Incoming::KeepaliveRefused => return Ended::Broken,
                    }
                    continue;
                }
                message = self.raft.recv() => match message {
                    Some(message) => {
                        Frame::new(0, Body::RaftMessage(RaftMessage { from: from.0, to: peer.0, message }))
                    }
                    None => return Ended::Stopped,
                },
                call = self.calls.recv() => match call {
                    Some(call) => {
                        let correlation_id = next_correlation_id;
                        next_correlation_id += 1;
                        if self.waiting.len() >= self.calls_in_flight_max {
                            // Callers that gave up (timed out) leave their entry behind until the
                            // answer comes; forget those whose caller is gone.
                            self.waiting.retain(|_, waiter| !waiter.is_closed());
                        }
                        self.waiting.insert(correlation_id, call.reply);
                        Frame::new(correlation_id, call.body)
                    }
                    None => return Ended::Stopped,
                },
            };
            // A write that does not finish in time means the peer is stuck: reconnect.
            match tokio::time::timeout(write_timeout, framed.send(frame.encode_to_bytes())).await {
                Ok(Ok(())) => {}
                _ => return Ended::Broken,
            }
        }
    }

    /// Routes one frame from the peer: a call's answer, a keepalive's answer, or the refusal of a
    /// Raft message (the receiver answers Raft traffic only to refuse it; reading those keeps them
    /// seen and the socket from filling).
    fn on_incoming(&mut self, frame: Frame) -> Incoming {
        let (from, peer) = (self.from, self.peer);
        if let Some(waiter) = self.waiting.remove(&frame.correlation_id) {
            let answer = match frame.body {
                Some(Body::ErrorResponse(response)) => {
                    let error = response.error.unwrap_or_default();
                    Err(PeerCallError::Refused { peer, code: error.error_code(), message: error.message })
                }
                Some(body) => Ok(body),
                None => Err(PeerCallError::Refused {
                    peer,
                    code: ErrorCode::InvalidRequest,
                    message: "the answer has no body".into(),
                }),
            };
            let _ = waiter.send(answer);
            return Incoming::Handled;
        }
        match frame.body {
            Some(Body::ErrorResponse(response)) => {
                let error = response.error.map(|error| error.message).unwrap_or_default();
                tracing::warn!(node = %from, %peer, %error, "peer refused a raft message");
                Incoming::Handled
            }
            Some(Body::PeerHelloResponse(response)) => match response.error {
                Some(error) => {
                    tracing::warn!(node = %from, %peer, error = %error.message, "peer refused a keepalive");
                    Incoming::KeepaliveRefused
                }
                None => Incoming::KeepaliveAnswered,
            },
            // The answer to a call whose caller gave up and was forgotten, or noise: ignore.
            _ => Incoming::Handled,
        }
    }
}

enum Incoming {
    KeepaliveAnswered,
    Handled,
    KeepaliveRefused,
}

#[cfg(all(test, not(madsim)))]
mod tests {
    //! The call path against a scripted peer: a listener that accepts the hello, then hands every
    //! request to the test, which answers when (and in the order) it likes.

    use super::*;
    use crate::protocol::{ErrorInfo, ErrorResponse, MetadataRequest, MetadataResponse, PeerHelloResponse};
    use tokio::net::TcpListener;

    const WAIT_MAX: Duration = Duration::from_secs(20);

    /// A request the scripted peer received, and how to answer it.
    struct Received {
        correlation_id: u64,
        topics: Vec<String>,
        answer: mpsc::UnboundedSender<Frame>,
    }

    /// Starts a scripted peer (node 2) that accepts hellos, answers keepalives, and passes every
    /// `MetadataRequest` to the returned receiver. Closing a `Received::answer` sender's last
    /// clone does not close the connection; dropping the returned `CancellationToken`'s twin does.
    async fn scripted_peer() -> (String, mpsc::UnboundedReceiver<Received>, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (requests, received) = mpsc::unbounded_channel();
        let close = CancellationToken::new();
        let closed = close.clone();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut framed = Framed::new(stream, frame_codec());
            let (answer, mut answers) = mpsc::unbounded_channel::<Frame>();
            loop {
                tokio::select! {
                    biased;
                    _ = closed.cancelled() => return,
                    Some(frame) = answers.recv() => {
                        framed.send(frame.encode_to_bytes()).await.unwrap();
                    }
                    incoming = framed.next() => {
                        let Some(Ok(bytes)) = incoming else { return };
                        let frame = Frame::decode_bytes(bytes.freeze()).unwrap();
                        match frame.body {
                            Some(Body::PeerHello(_)) => {
                                let response = PeerHelloResponse { error: None, node_id: 2 };
                                let reply = Frame::new(frame.correlation_id, Body::PeerHelloResponse(response));
                                framed.send(reply.encode_to_bytes()).await.unwrap();
                            }
                            Some(Body::MetadataRequest(request)) => {
                                let received = Received {
                                    correlation_id: frame.correlation_id,
                                    topics: request.topics,
                                    answer: answer.clone(),
                                };
                                let _ = requests.send(received);
                            }
                            other => panic!("the scripted peer got {other:?}"),
                        }
                    }
                }
            }
        });
        (addr, received, close)
    }

    fn transport(addr: &str, calls_in_flight_max: usize) -> (PeerTransport, CancellationToken) {
        let peers = BTreeMap::from([(NodeId(1), "unused".to_owned()), (NodeId(2), addr.to_owned())]);
        let shutdown = CancellationToken::new();
        let config = PeerTransportConfig { calls_in_flight_max, tls: None };
        (PeerTransport::start_with(NodeId(1), &peers, config, shutdown.clone()), shutdown)
    }

    fn metadata_request(topic: &str) -> Body {
        Body::MetadataRequest(MetadataRequest { topics: vec![topic.to_owned()] })
    }

    /// Answers with a metadata response naming the request's topic as a broker address, so the
    /// caller can tell whose answer it got.
    fn answer(received: &Received) {
        let broker =
            crate::protocol::BrokerInfo { node_id: 2, addr: received.topics[0].clone(), kafka_addr: String::new() };
        let response = MetadataResponse { brokers: vec![broker], topics: Vec::new() };
        let frame = Frame::new(received.correlation_id, Body::MetadataResponse(response));
        received.answer.send(frame).unwrap();
    }

    fn answered_topic(answer: Result<Body, PeerCallError>) -> String {
        match answer {
            Ok(Body::MetadataResponse(response)) => response.brokers[0].addr.clone(),
            other => panic!("expected a metadata response, got {other:?}"),
        }
    }

    async fn next(received: &mut mpsc::UnboundedReceiver<Received>) -> Received {
        tokio::time::timeout(WAIT_MAX, received.recv()).await.expect("the peer gets the request").unwrap()
    }

    #[tokio::test]
    async fn answers_reach_their_own_callers_whatever_their_order() {
        let (addr, mut received, _close) = scripted_peer().await;
        let (transport, _shutdown) = transport(&addr, 8);
        let first = tokio::spawn({
            let transport = transport.clone();
            async move { transport.call(NodeId(2), metadata_request("first"), Some(WAIT_MAX)).await }
        });
        let first_request = next(&mut received).await;
        let second = tokio::spawn({
            let transport = transport.clone();
            async move { transport.call(NodeId(2), metadata_request("second"), None).await }
        });
        let second_request = next(&mut received).await;
        assert_ne!(first_request.correlation_id, second_request.correlation_id);
        // Answered in reverse order: each caller still gets its own answer.
        answer(&second_request);
        answer(&first_request);
        assert_eq!(answered_topic(second.await.unwrap()), "second");
        assert_eq!(answered_topic(first.await.unwrap()), "first");
    }

    #[tokio::test]
    async fn calls_beyond_the_in_flight_bound_wait_for_a_slot_in_their_order() {
        let (addr, mut received, _close) = scripted_peer().await;
        let (transport, _shutdown) = transport(&addr, 2);
        let call = |topic: &'static str| {
            let transport = transport.clone();
            tokio::spawn(async move { transport.call(NodeId(2), metadata_request(topic), None).await })
        };
        let (a, b) = (call("a"), call("b"));
        let (sent_a, sent_b) = (next(&mut received).await, next(&mut received).await);
        let (c, d) = (call("c"), call("d"));
        // A call that finds no slot within its timeout is not sent, and gives its turn up.
        let timeout = Duration::from_millis(50);
        let timed_out = transport.call(NodeId(2), metadata_request("e"), Some(timeout)).await;
        assert_eq!(timed_out, Err(PeerCallError::Timeout { peer: NodeId(2), timeout }));
        assert!(received.try_recv().is_err(), "nothing beyond the bound was sent");
        // Each answer frees a slot for the longest waiting call.
        answer(&sent_b);
        assert_eq!(answered_topic(b.await.unwrap()), "b");
        let sent_c = next(&mut received).await;
        assert_eq!(sent_c.topics, ["c"], "c waited longest");
        answer(&sent_a);
        assert_eq!(answered_topic(a.await.unwrap()), "a");
        let sent_d = next(&mut received).await;
        assert_eq!(sent_d.topics, ["d"]);
        answer(&sent_d);
        answer(&sent_c);
        assert_eq!(answered_topic(c.await.unwrap()), "c");
        assert_eq!(answered_topic(d.await.unwrap()), "d");
    }

    #[tokio::test]
    async fn a_call_times_out_frees_its_slot_and_a_late_answer_is_dropped() {
        let (addr, mut received, _close) = scripted_peer().await;
        let (transport, _shutdown) = transport(&addr, 1);
        let timeout = Duration::from_millis(50);
        let call = transport.call(NodeId(2), metadata_request("slow"), Some(timeout));
        let (answer_slow, slow) = tokio::join!(call, next(&mut received));
        assert_eq!(answer_slow, Err(PeerCallError::Timeout { peer: NodeId(2), timeout }));
        // The one slot is free again, and the late answer to the first call reaches nobody.
        answer(&slow);
        let again = tokio::spawn({
            let transport = transport.clone();
            async move { transport.call(NodeId(2), metadata_request("again"), Some(WAIT_MAX)).await }
        });
        let request = next(&mut received).await;
        answer(&request);
        assert_eq!(answered_topic(again.await.unwrap()), "again");
    }

    #[tokio::test]
    async fn an_error_response_is_a_typed_refusal() {
        let (addr, mut received, _close) = scripted_peer().await;
        let (transport, _shutdown) = transport(&addr, 4);
        let call = transport.call(NodeId(2), metadata_request("x"), Some(WAIT_MAX));
        let refuse = async {
            let request = next(&mut received).await;
            let error = ErrorResponse { error: Some(ErrorInfo::new(ErrorCode::InvalidRequest, "no")) };
            request.answer.send(Frame::new(request.correlation_id, Body::ErrorResponse(error))).unwrap();
        };
        let (answer, ()) = tokio::join!(call, refuse);
        assert_eq!(
            answer,
            Err(PeerCallError::Refused { peer: NodeId(2), code: ErrorCode::InvalidRequest, message: "no".into() })
        );
    }

    #[tokio::test]
    async fn a_broken_connection_fails_the_calls_in_flight_as_lost() {
        let (addr, mut received, close) = scripted_peer().await;
        let (transport, _shutdown) = transport(&addr, 4);
        let call = transport.call(NodeId(2), metadata_request("x"), Some(WAIT_MAX));
        let break_it = async {
            let _request = next(&mut received).await;
            close.cancel();
        };
        let (answer, ()) = tokio::join!(call, break_it);
        assert_eq!(answer, Err(PeerCallError::ConnectionLost(NodeId(2))));
    }

    #[tokio::test]
    async fn unknown_and_dead_peers_and_a_stopped_transport_are_typed_errors() {
        // Nothing listens at a port that was just bound and released.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
        let (transport, shutdown) = transport(&dead, 4);
        let call = |to| transport.call(to, metadata_request("x"), Some(WAIT_MAX));
        assert_eq!(call(NodeId(3)).await, Err(PeerCallError::UnknownPeer(NodeId(3))));
        assert_eq!(call(NodeId(1)).await, Err(PeerCallError::UnknownPeer(NodeId(1))), "this node is no peer");
        assert!(matches!(call(NodeId(2)).await, Err(PeerCallError::Unreachable { peer: NodeId(2), .. })));
        shutdown.cancel();
        // The connection task ends; a call then fails as stopped, never hangs.
        let stopped = tokio::time::timeout(WAIT_MAX, async {
            loop {
                match call(NodeId(2)).await {
                    Err(PeerCallError::Stopped) => return,
                    Err(PeerCallError::Unreachable { .. }) => tokio::task::yield_now().await,
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        stopped.await.expect("calls fail as stopped after shutdown");
    }
}
