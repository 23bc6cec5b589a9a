//! The broker shell: listener, connections, request routing, graceful shutdown.
//!
//! In: TCP connections carrying [`crate::protocol`] frames. Out: responses, and commands to the
//! partition actors. The same code runs on tokio (production) and under madsim (simulation): it
//! uses only `tokio` (madsim-tokio) for network, time and spawning, and reaches storage only through
//! [`crate::storage::Disk`].
//!
//! Each connection is one task that both reads and writes (`into_split` does not exist in madsim).
//! It reads a request, routes it (waiting for mailbox space in the partition, which is the
//! backpressure), and parks the reply future in a bounded in-flight set; replies go out as they
//! complete, tagged with their correlation id. Requests to one partition from one connection enter
//! the partition's mailbox in the order they were read.
//!
//! Peers (ADR 0007): a connection carries Raft traffic only after a `PeerHello` naming another
//! voter of the metadata group; until then (and on every client connection) a `RaftMessage` is
//! refused with `PeerNotIdentified`, so a client's frame never reaches raft-rs.
//!
//! Shutdown (SIGINT/SIGTERM, or the token in simulation): hand over the metadata group's leadership
//! if this node holds it, propose `ControlledShutdown` so leadership of this broker's partitions
//! moves to other ISR members (bounded wait), stop accepting; client connections read on until they
//! fall idle (so a request sent just before the stop gets an answer, `NotLeader` once leadership
//! moved), answer what they read and close with FIN, never a reset; then peer connections stop
//! reading; then stop every partition (each fsyncs what it wrote) and return. The same
//! happens, ending with an error, when the metadata Raft task ends on its own (a storage failure or
//! a panic): the broker cannot keep its promises without it.

pub mod assignments;
pub mod groups;
mod kafka_listener;
pub mod replica_status;
pub mod replication;
pub mod subscriptions;
pub mod topics;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, BatchError, BATCH_BYTES_MAX};
use crate::buggify::{buggify, Point};
use crate::compression::Compression;
use crate::config::BrokerConfig;
use crate::log::LogConfig;
use crate::meta::node::{start_node, NodeConfig, NodeHandle, PeerError};
use crate::meta::state::CleanupPolicy;
use crate::meta::store::MetaStore;
use crate::metrics::{BrokerView, Metrics, Wire};
use crate::partition::replica::ReplicaConfig;
use crate::partition::{ConsumerFetch, CoreConfig, OffsetSpec, PartitionReply};
use crate::peer::PeerTransport;
use crate::protocol::*;
use crate::sometimes::{self, Sometimes};
use crate::storage::handles::{HandleBudget, Handles};
use crate::storage::Disk;
use crate::types::{LeaderEpoch, NodeId, Offset, PartitionId};
use assignments::{AssignmentLimits, Assignments};
use subscriptions::{Handled, Subscriptions};
use topics::TopicError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the data: {0}")]
    Storage(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the metadata Raft node stopped (its store failed or its task panicked); restart the broker")]
    MetadataStopped,
    #[error("shutdown did not complete cleanly: {0}")]
    Shutdown(String),
}

struct State<D: Disk> {
    config: BrokerConfig,
    /// TLS on the listeners and to the peers (ADR 0028); `None` when off.
    tls: Option<crate::config::BrokerTls>,
    assignments: Arc<Assignments<D>>,
    coordinators: groups::Coordinators,
}

/// Optional windows into a running broker, for tests and the simulation.
#[derive(Default)]
pub struct BrokerHooks {
    /// Receives the listening address once the broker accepts connections (lets callers bind port 0).
    pub bound: Option<oneshot::Sender<SocketAddr>>,
    /// Receives the metadata Raft node's handle (the simulation observes Raft state through it).
    pub meta_node: Option<oneshot::Sender<NodeHandle>>,
    /// The metrics the broker counts into (a fresh set when `None`).
    pub metrics: Option<Arc<Metrics>>,
    /// Receives the broker's [`Observer`] once it serves (the admin listener reads it).
    pub observer: Option<oneshot::Sender<Observer>>,
}

/// A running broker as the admin listener sees it: its metrics, and what a scrape or `/readyz`
/// reads of its metadata node and applied metadata.
#[derive(Clone)]
pub struct Observer {
    pub metrics: Arc<Metrics>,
    view: Arc<dyn Fn() -> BrokerView + Send + Sync>,
}

impl Observer {
    pub fn view(&self) -> BrokerView {
        (self.view)()
    }

    /// The `/metrics` text.
    pub fn encode_metrics(&self) -> String {
        self.metrics.encode(&self.view())
    }
}

/// Runs a broker until `shutdown` is cancelled. `meta_store` holds the metadata Raft log (RocksDB in
/// production, `SimKv` in simulation).
///
/// Steps: bind; start the metadata Raft node (with the peer transport) and the assignments that
/// follow it; serve connections until shutdown or until the Raft node stops; then stop in order
/// (connections, leadership, partitions, metadata).
pub async fn run_broker<D: Disk, M: MetaStore>(
    config: BrokerConfig,
    disk: D,
    meta_store: M,
    shutdown: CancellationToken,
    hooks: BrokerHooks,
) -> Result<(), BrokerError> {
    let tls = config.tls().map_err(|error| BrokerError::Config(error.to_string()))?;
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| BrokerError::Bind { addr: config.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| BrokerError::Bind { addr: config.listen, source })?;
    let advertised = config.advertised(local_addr);
    let voters = config.voters(&advertised).map_err(|error| BrokerError::Config(error.to_string()))?;
    let (kafka_listener, kafka_advertised) = bind_kafka(&config).await?;

    // The metadata group: its own shutdown token, cancelled after the partitions are stopped.
    let meta_shutdown = CancellationToken::new();
    let peer_tls = tls.as_ref().and_then(|tls| tls.peers.clone());
    let (node, transport) = start_metadata(&config, &voters, meta_store, (peer_tls, &meta_shutdown))?;
    // Every partition file goes through one budget of open handles (issue 15).
    let budget = HandleBudget {
        files_max: config.open_files_max.unwrap_or(crate::config::OPEN_FILES_MAX_DEFAULT),
        keep_unsynced: config.fsync == crate::partition::FsyncPolicy::Always,
        self_checked: &crate::log::SELF_CHECKED_FILES,
    };
    let disk = Handles::new(disk, budget);
    disk.coalesce_syncs();
    let files = disk.clone();
    let metrics = hooks.metrics.clone().unwrap_or_default();
    let assignments = start_assignments(&config, node.clone(), transport, disk, metrics.clone()).await;
    let background = tokio::spawn(assignments.clone().run_background(
        assignments::Advertised { addr: advertised, kafka_addr: kafka_advertised.clone() },
        config.broker_fence_after_ms as i64,
        meta_shutdown.clone(),
    ));

    tracing::info!(listen = %local_addr, node_id = %config.node_id, voters = ?voters, fsync = ?config.fsync, "broker listening");
    if kafka_listener.is_some() {
        tracing::info!(kafka_listen = %kafka_advertised, "Kafka listener listening");
    }
    hand_over(hooks, local_addr, node, (metrics, &assignments));
    let groups_shutdown = CancellationToken::new();
    let coordinators = groups::Coordinators::start(assignments.clone(), groups_shutdown.clone());
    let state = Arc::new(State { config, tls, assignments, coordinators });
    let failure = serve_until_stopped(Listeners { native: listener, kafka: kafka_listener }, &state, &shutdown).await;
    groups_shutdown.cancel();

    // Hand Raft leadership over before going away, so the others do not wait out an election. The
    // controlled shutdown already did when it ran; this covers a skipped or failed one.
    if voters.len() > 1 {
        let _ = tokio::time::timeout(
            Duration::from_millis(LEADERSHIP_TRANSFER_WAIT_MS),
            state.assignments.node.transfer_leadership(),
        )
        .await;
    }
    let result = state.assignments.stop_partitions().await;
    meta_shutdown.cancel();
    let _ = background.await;
    log_stopped(files.stats());
    if let Some(failure) = failure {
        return Err(failure);
    }
    result.map_err(BrokerError::Shutdown)
}

/// Gives the hooks' receivers what they asked for, once the broker serves.
fn hand_over<D: Disk>(
    hooks: BrokerHooks,
    local_addr: SocketAddr,
    node: NodeHandle,
    (metrics, assignments): (Arc<Metrics>, &Arc<Assignments<D>>),
) {
    if let Some(bound) = hooks.bound {
        let _ = bound.send(local_addr);
    }
    if let Some(meta_node) = hooks.meta_node {
        let _ = meta_node.send(node);
    }
    if let Some(observer) = hooks.observer {
        let watched = assignments.clone();
        let _ = observer.send(Observer { metrics, view: Arc::new(move || watched.view()) });
    }
}

/// The Kafka listener when configured (ADR 0026), and the address Kafka clients are told (empty
/// without a listener).
async fn bind_kafka(config: &BrokerConfig) -> Result<(Option<TcpListener>, String), BrokerError> {
    let Some(addr) = config.kafka_listen else {
        return Ok((None, String::new()));
    };
    let listener = TcpListener::bind(addr).await.map_err(|source| BrokerError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| BrokerError::Bind { addr, source })?;
    let advertised = config.kafka_advertised_addr.clone().unwrap_or_else(|| bound.to_string());
    Ok((Some(listener), advertised))
}

/// The last line of a broker: what the open-file budget did (ADR 0023).
fn log_stopped(handles: crate::storage::handles::HandleStats) {
    tracing::info!(
        files_open_peak = handles.open_peak,
        file_opens = handles.opens,
        file_reopens = handles.reopens,
        files_synced_to_close = handles.closing_syncs,
        files_over_budget = handles.over_budget,
        "broker stopped"
    );
}

/// A stopping broker's connections keep reading (and answering: `NotLeader` once its partitions'
/// leadership has moved) until no request has come for this long, so a request a client sent just
/// before the stop gets a definite answer instead of a lost connection. Clients move away after
/// their first `NotLeader`, so a connection falls idle quickly; `DRAIN_MS_MAX` bounds it anyway.
const DRAIN_IDLE_MS: u64 = 50;
/// The longest a stopping broker's connection keeps reading (see `DRAIN_IDLE_MS`).
const DRAIN_MS_MAX: u64 = 1_000;
/// How long a closing connection waits for its peer to close after this side sent FIN.
const CLOSE_LINGER_MS: u64 = 200;
/// Beyond draining and closing, how long the client connections may take to answer what they read.
const CLIENTS_STOP_MARGIN_MS: u64 = 1_000;

/// How long a stopping broker waits for its Raft leadership to move to another voter.
pub const LEADERSHIP_TRANSFER_WAIT_MS: u64 = 1_000;
/// How long the accept loop pauses after a failed accept (out of file descriptors and the like).
pub const ACCEPT_RETRY_MS: u64 = 10;

/// Starts the metadata Raft node and the peer transport it sends through (both stop on
/// `meta_shutdown`). The partitions' follower fetches share the transport (ADR 0010).
fn start_metadata<M: MetaStore>(
    config: &BrokerConfig,
    voters: &BTreeMap<NodeId, String>,
    meta_store: M,
    (peer_tls, meta_shutdown): (Option<Arc<rustls::ClientConfig>>, &CancellationToken),
) -> Result<(NodeHandle, PeerTransport), BrokerError> {
    let transport = PeerTransport::start(config.node_id, voters, peer_tls, meta_shutdown.clone());
    let mut node_config = NodeConfig::new(config.node_id, voters.clone());
    node_config.snapshot_interval_entries = config.metadata_snapshot_interval_entries;
    let node = start_node(node_config, meta_store, transport.clone(), meta_shutdown.clone())
        .map_err(|error| BrokerError::Storage(error.to_string()))?;
    Ok((node, transport))
}

/// The assignments that follow the metadata, with the partitions this broker leads already opened.
async fn start_assignments<D: Disk>(
    config: &BrokerConfig,
    node: NodeHandle,
    transport: PeerTransport,
    disk: D,
    metrics: Arc<Metrics>,
) -> Arc<Assignments<D>> {
    let log_config = LogConfig {
        segment_bytes_max: config.segment_bytes_max,
        clean_close_min_bytes: config.clean_close_min_bytes,
        ..LogConfig::default()
    };
    let core = CoreConfig { fsync: config.fsync, ..CoreConfig::default() };
    let replica_config = ReplicaConfig {
        core,
        retention_check_interval_ms: config.retention_check_interval_ms,
        ..ReplicaConfig::default()
    };
    let assignments = Assignments::new(
        config.node_id,
        node,
        transport,
        disk,
        (log_config, replica_config),
        AssignmentLimits {
            partitions_per_topic_max: config.partitions_per_topic_max,
            topics_max: config.topics_max,
            partitions_max: config.partitions_max as u64,
            fence_after_ms: config.broker_fence_after_ms,
            files_max: config.open_files_max.unwrap_or(crate::config::OPEN_FILES_MAX_DEFAULT),
        },
        metrics,
    );
    assignments.reconcile().await;
    assignments
}

/// The broker's listeners: the native protocol's, and Kafka's when configured (ADR 0026).
struct Listeners {
    native: TcpListener,
    kafka: Option<TcpListener>,
}

/// Which protocol a connection speaks.
#[derive(Clone, Copy, Debug)]
enum Protocol {
    Native,
    Kafka,
}

impl Listeners {
    /// The next connection on either listener.
    async fn accept(&self) -> (std::io::Result<(TcpStream, SocketAddr)>, Protocol) {
        let kafka = async {
            match &self.kafka {
                Some(listener) => listener.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            accepted = self.native.accept() => (accepted, Protocol::Native),
            accepted = kafka => (accepted, Protocol::Kafka),
        }
    }
}

/// Accepts and serves connections until `shutdown`, or until the metadata node stops on its own
/// (then returns [`BrokerError::MetadataStopped`]); then stops reading and waits for the requests in
/// flight.
async fn serve_until_stopped<D: Disk>(
    listeners: Listeners,
    state: &Arc<State<D>>,
    shutdown: &CancellationToken,
) -> Option<BrokerError> {
    let connection_slots = Arc::new(Semaphore::new(state.config.connections_max));
    let mut connections = FuturesUnordered::new();
    // Connections stop reading when the broker shuts down for any reason, not only on `shutdown`:
    // after the metadata node stopped, peers' connections (which never close on their own) would
    // otherwise keep the broker waiting for them forever. Not a child of `shutdown`: during the
    // controlled shutdown below, peers' connections must keep carrying Raft traffic in (or this node
    // loses its quorum and the `ControlledShutdown` it proposed cannot commit), and clients keep
    // getting answers (NotLeader once leadership moved). Cancelled explicitly after it.
    let connections_shutdown = Stopping::default();
    // If the metadata node stops on its own (its store failed, its task panicked), this broker can no
    // longer keep its promises: shut down and exit with an error, so a supervisor restarts it from its
    // durable state.
    let meta_stopped = state.assignments.node.stopped();
    tokio::pin!(meta_stopped);
    let mut failure = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = &mut meta_stopped => {
                tracing::error!("the metadata Raft node stopped; shutting the broker down");
                failure = Some(BrokerError::MetadataStopped);
                break;
            }
            Some(_) = connections.next(), if !connections.is_empty() => {}
            (accepted, protocol) = listeners.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: keep serving the connections we have.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                        continue;
                    }
                };
                if let Some(connection) = admit(stream, (peer, protocol), state, &connection_slots, &connections_shutdown) {
                    connections.push(connection);
                }
            }
        }
    }
    // Graceful shutdown: move the leadership of this broker's partitions to other ISR members while
    // its connections still answer (clients get NotLeader and follow the new leaders), ADR 0012.
    if failure.is_none() && state.assignments.controlled_shutdown().await {
        tracing::info!("controlled shutdown applied: partition leadership moved away");
    }
    // No partition opens from here on: the requests still in flight do not hold the stop while
    // logs open only to be closed (`OpenGates::close`).
    state.assignments.stop_opening();
    drop(listeners);
    tracing::info!(connections = connections.len(), "shutting down: finishing in-flight requests");
    connections_shutdown.stop().await;
    while connections.next().await.is_some() {}
    failure
}

/// How a stopping broker stops its connections, in two steps: clients first (each drains: see
/// `DRAIN_IDLE_MS`), while peers' connections still carry Raft traffic in (a client's metadata
/// request waits for a Raft read barrier, which needs the peers' answers: without them it waited out
/// its 5 s timeout and held the broker's exit, and its producer's refresh, that long); then peers.
#[derive(Clone, Default)]
struct Stopping {
    clients: CancellationToken,
    peers: CancellationToken,
    /// Connections that have not identified as a peer and have not ended.
    clients_live: Arc<std::sync::atomic::AtomicUsize>,
    clients_done: Arc<tokio::sync::Notify>,
}

/// Counts one client connection in `Stopping::clients_live` until it ends or identifies as a peer.
struct ClientSlot {
    stopping: Option<Stopping>,
}

impl ClientSlot {
    fn new(stopping: &Stopping) -> ClientSlot {
        stopping.clients_live.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        ClientSlot { stopping: Some(stopping.clone()) }
    }

    fn release(&mut self) {
        if let Some(stopping) = self.stopping.take() {
            if stopping.clients_live.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                stopping.clients_done.notify_waiters();
            }
        }
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.release();
    }
}

impl Stopping {
    /// Stops the client connections and waits for them (bounded), then stops the peers'.
    async fn stop(&self) {
        self.clients.cancel();
        let bound = Duration::from_millis(DRAIN_MS_MAX + CLOSE_LINGER_MS + CLIENTS_STOP_MARGIN_MS);
        let all_done = async {
            loop {
                let notified = self.clients_done.notified();
                if self.clients_live.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(bound, all_done).await.is_err() {
            tracing::warn!("client connections still busy; stopping the peers' anyway");
        }
        self.peers.cancel();
    }
}

/// Sets up one accepted socket and spawns its connection task, or refuses it when every connection
/// slot is taken.
fn admit<D: Disk>(
    stream: TcpStream,
    (peer, protocol): (std::net::SocketAddr, Protocol),
    state: &Arc<State<D>>,
    connection_slots: &Arc<Semaphore>,
    connections_shutdown: &Stopping,
) -> Option<tokio::task::JoinHandle<()>> {
    // Responses are small and latency-bound: without TCP_NODELAY a reply waits for the client's
    // delayed ACK (Nagle), ~40 ms per small request (issue 6). Every socket Keel opens sets it;
    // tests/tcp_nodelay.rs checks them all.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::warn!(%peer, %error, "cannot set TCP_NODELAY");
    }
    let Ok(permit) = connection_slots.clone().try_acquire_owned() else {
        tracing::warn!(%peer, limit = state.config.connections_max, "connection refused: too many connections");
        state.assignments.metrics.connection_refused();
        return None;
    };
    let state = state.clone();
    let stopping = connections_shutdown.clone();
    let wire = match protocol {
        Protocol::Native => Wire::Native,
        Protocol::Kafka => Wire::Kafka,
    };
    let counted = state.assignments.metrics.connection_opened(wire);
    Some(tokio::spawn(async move {
        let _counted = counted;
        // The handshake runs here, not in the accept loop: a slow or silent client holds only its
        // own connection (bounded by `tls::HANDSHAKE_TIMEOUT`).
        let stream = match &state.tls {
            None => crate::tls::Stream::Plain(stream),
            Some(tls) => match crate::tls::accept(&tls.server, stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::info!(%peer, %error, "TLS handshake failed; connection closed");
                    state.assignments.metrics.handshake_failed(wire);
                    return;
                }
            },
        };
        match protocol {
            Protocol::Native => serve_connection((stream, Some(peer)), state, stopping).await,
            Protocol::Kafka => kafka_listener::serve_kafka_connection(stream, Some(peer), state, stopping).await,
        }
        drop(permit);
    }))
}

/// An accepted connection (past its TLS handshake, if any) and the address it came from.
type Accepted = (crate::tls::Stream, Option<SocketAddr>);

async fn serve_connection<D: Disk>((stream, peer): Accepted, state: Arc<State<D>>, stopping: Stopping) {
    let mut client_slot = ClientSlot::new(&stopping);
    let mut framed = Framed::new(stream, frame_codec());
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Frame>> = FuturesUnordered::new();
    let in_flight_max = state.config.requests_in_flight_per_connection_max;
    let mut subscriptions = Subscriptions::default();
    // The voter this connection identified itself as (`PeerHello`); `None` for a client.
    let mut peer_node: Option<NodeId> = None;
    let mut reading = true;
    let mut drain = Drain::default();
    let mut closed_by_peer = false;
    loop {
        if !reading {
            // Nothing more is read, so no grant can come: every subscription ends.
            subscriptions.stop_all();
            if in_flight.is_empty() && subscriptions.is_empty() {
                break;
            }
        }
        let draining = drain.ended();
        let reply = tokio::select! {
            biased;
            Some(response) = in_flight.next(), if !in_flight.is_empty() => Some(response),
            push = subscriptions.next() => Some(push),
            _ = stopping.clients.cancelled(), if reading && !drain.started() && peer_node.is_none() => {
                drain.start();
                None
            }
            // A peer's connection never falls idle (Raft ticks, follower fetches), and the peer
            // retries what it sent: it stops reading at once, after the clients' have stopped.
            _ = stopping.peers.cancelled(), if reading && peer_node.is_some() => {
                reading = false;
                None
            }
            _ = draining, if reading => {
                reading = false;
                None
            }
            frame = framed.next(), if reading && in_flight.len() < in_flight_max => match frame {
                None => {
                    closed_by_peer = true;
                    break; // the peer closed; nobody is left to read replies
                }
                Some(Err(error)) => {
                    // Oversized length prefix or a broken socket: the byte stream cannot be re-synced.
                    tracing::debug!(?peer, %error, "closing connection after a framing error");
                    reading = false;
                    Some(error_frame(0, ErrorCode::MessageTooLarge, format!("bad frame: {error}")))
                }
                Some(Ok(bytes)) => {
                    drain.on_request();
                    let reply = serve_frame(&state, &mut peer_node, &mut subscriptions, bytes, &mut in_flight).await;
                    if peer_node.is_some() {
                        client_slot.release();
                    }
                    reply
                }
            },
        };
        if let Some(reply) = reply {
            if framed.send(reply.encode_to_bytes()).await.is_err() {
                break;
            }
        }
    }
    if !closed_by_peer {
        close_gracefully(framed).await;
    }
}

/// Serves one frame: a subscription request, or a frame that does not decode, is answered at once
/// (the returned frame); any other request's answer joins `in_flight`.
async fn serve_frame<D: Disk>(
    state: &Arc<State<D>>,
    peer_node: &mut Option<NodeId>,
    subscriptions: &mut Subscriptions,
    bytes: bytes::BytesMut,
    in_flight: &mut FuturesUnordered<BoxFuture<'static, Frame>>,
) -> Option<Frame> {
    let frame = match Frame::decode_bytes(bytes.freeze()) {
        Ok(frame) => frame,
        // The framing is intact, so the connection can go on after the reply.
        Err(error) => {
            state.assignments.metrics.rejected(Wire::Native, "undecodable", ErrorCode::InvalidRequest);
            return Some(error_frame(0, ErrorCode::InvalidRequest, format!("undecodable frame: {error}")));
        }
    };
    if frame.version == PROTOCOL_VERSION {
        match subscriptions.handle(&state.assignments, &frame) {
            Handled::NotMine => {}
            Handled::Opened => return None,
            Handled::Answer(reply) => return Some(reply),
        }
    }
    let api = frame.body.as_ref().map_or("none", Body::api_name);
    let started = tokio::time::Instant::now();
    if let Some(response) = dispatch(state, peer_node, frame).await {
        in_flight.push(counted(&state.assignments.metrics, Wire::Native, api, started, maybe_delayed(response)));
    }
    None
}

/// The response, counted in the request metrics once it is ready: its API, latency and error.
pub(crate) fn counted(
    metrics: &Arc<Metrics>,
    wire: Wire,
    api: &'static str,
    started: tokio::time::Instant,
    response: BoxFuture<'static, Frame>,
) -> BoxFuture<'static, Frame> {
    let metrics = metrics.clone();
    Box::pin(async move {
        let frame = response.await;
        metrics.request(wire, api, started.elapsed(), frame.body.as_ref().and_then(Body::error_code));
        frame
    })
}

/// The response, held back a little when the simulation's BUGGIFY point [`Point::DelayReply`] fires.
fn maybe_delayed(response: BoxFuture<'static, Frame>) -> BoxFuture<'static, Frame> {
    match crate::buggify::reply_delay() {
        Some(delay) => Box::pin(async move {
            tokio::time::sleep(delay).await;
            response.await
        }),
        None => response,
    }
}

/// A client connection's drain once the broker stops (see `DRAIN_IDLE_MS`): until when it still
/// reads, and the latest that can be.
#[derive(Default)]
struct Drain(Option<(tokio::time::Instant, tokio::time::Instant)>);

impl Drain {
    fn start(&mut self) {
        let now = tokio::time::Instant::now();
        self.0 = Some((now + Duration::from_millis(DRAIN_IDLE_MS), now + Duration::from_millis(DRAIN_MS_MAX)));
    }

    fn started(&self) -> bool {
        self.0.is_some()
    }

    /// A request came: the connection reads on for another `DRAIN_IDLE_MS`, within the bound.
    fn on_request(&mut self) {
        if let Some((until, latest)) = self.0.as_mut() {
            *until = (tokio::time::Instant::now() + Duration::from_millis(DRAIN_IDLE_MS)).min(*latest);
        }
    }

    /// Resolves when the drain is over; never before it started.
    fn ended(&self) -> impl std::future::Future<Output = ()> {
        let until = self.0.map(|(until, _)| until);
        async move {
            match until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        }
    }
}

/// Closes a connection without losing the replies already written: closing a socket that still
/// holds unread requests sends a TCP reset, and a reset makes the peer's kernel drop the replies it
/// has not read yet (a rolling restart's producers saw "connection reset" for requests the broker
/// had answered). So: send FIN, then read and drop whatever the peer still sends until it closes,
/// for at most `CLOSE_LINGER_MS`.
async fn close_gracefully(framed: Framed<crate::tls::Stream, impl tokio_util::codec::Decoder>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = framed.into_inner();
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let drained = async { while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {} };
    let _ = tokio::time::timeout(Duration::from_millis(CLOSE_LINGER_MS), drained).await;
}

fn error_frame(correlation_id: u64, code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::new(correlation_id, Body::ErrorResponse(ErrorResponse { error: Some(ErrorInfo::new(code, message)) }))
}

fn ready(frame: Frame) -> BoxFuture<'static, Frame> {
    Box::pin(std::future::ready(frame))
}

fn info(code: ErrorCode, message: impl Into<String>) -> Option<ErrorInfo> {
    Some(ErrorInfo::new(code, message))
}

fn topic_info(error: TopicError) -> Option<ErrorInfo> {
    info(error.code, error.message)
}

/// Routes one request. Everything that must happen in arrival order (entering a partition's mailbox)
/// happens before this returns; the returned future only waits for the answer. `peer_node` is the
/// voter this connection identified itself as. An accepted Raft message (one-way) returns `None`.
async fn dispatch<D: Disk>(
    state: &Arc<State<D>>,
    peer_node: &mut Option<NodeId>,
    frame: Frame,
) -> Option<BoxFuture<'static, Frame>> {
    let id = frame.correlation_id;
    match &frame.body {
        Some(Body::PeerHello(hello)) if frame.version == PROTOCOL_VERSION => {
            Some(ready(peer_hello(state, peer_node, id, hello)))
        }
        Some(Body::RaftMessage(message)) if frame.version == PROTOCOL_VERSION => {
            // Issue 7: Raft traffic used to be stepped from any connection, and one forged
            // heartbeat from a client made raft-rs panic. Only an identified peer reaches Raft.
            let Some(peer) = *peer_node else {
                return Some(ready(error_frame(
                    id,
                    ErrorCode::PeerNotIdentified,
                    "raft messages are accepted only on a connection that identified itself as a peer (PeerHello)",
                )));
            };
            match state.assignments.node.step(peer, message) {
                Ok(()) => None,
                // Lossy by design: a dropped raft message is a lost packet to Raft.
                Err(PeerError::Saturated) => {
                    tracing::trace!(%peer, "dropped a raft message: the metadata node is saturated");
                    None
                }
                Err(error) => {
                    let code = match error {
                        PeerError::UnknownPeer { .. }
                        | PeerError::WrongRecipient { .. }
                        | PeerError::WrongSender { .. } => ErrorCode::UnknownPeer,
                        PeerError::Stopped => ErrorCode::ShuttingDown,
                        PeerError::Undecodable(_) | PeerError::Malformed(_) | PeerError::Saturated => {
                            ErrorCode::InvalidRequest
                        }
                    };
                    // Debug, not warn: the sender is told (a correct peer logs the refusal), and a
                    // loud log here would let a misbehaving peer flood this node's log.
                    tracing::debug!(%peer, %error, "refused a raft message");
                    Some(ready(error_frame(id, code, error.to_string())))
                }
            }
        }
        Some(Body::ReplicaFetchRequest(request)) if frame.version == PROTOCOL_VERSION => {
            Some(replica_fetch(state, *peer_node, id, request).await)
        }
        _ => Some(dispatch_request(state, frame).await),
    }
}

fn replica_fetch_error(id: u64, code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::new(id, Body::ErrorResponse(ErrorResponse { error: Some(ErrorInfo::new(code, message)) }))
}

/// A follower's fetch, at the leader: only from the identified peer it names (module doc of
/// `replication`); the partition's actor answers.
async fn replica_fetch<D: Disk>(
    state: &Arc<State<D>>,
    peer_node: Option<NodeId>,
    id: u64,
    request: &ReplicaFetchRequest,
) -> BoxFuture<'static, Frame> {
    let Some(peer) = peer_node else {
        let message = "replica fetches are accepted only on a connection that identified itself as a peer (PeerHello)";
        return ready(replica_fetch_error(id, ErrorCode::PeerNotIdentified, message));
    };
    if peer.0 != request.replica {
        let message = format!("replica {} fetched on the connection of peer {peer}", request.replica);
        return ready(replica_fetch_error(id, ErrorCode::UnknownPeer, message));
    }
    let fetch = match replication::request_from_wire(request) {
        Ok(fetch) if buggify(Point::ShrinkFetch) => crate::partition::replica::FetchRequest { bytes_max: 1, ..fetch },
        Ok(fetch) => fetch,
        Err(message) => return ready(replica_fetch_error(id, ErrorCode::InvalidRequest, message)),
    };
    let partition = match state.assignments.replica(&request.topic, PartitionId(request.partition)) {
        Ok(partition) => partition,
        Err(error) => return ready(replica_fetch_error(id, error.code, error.message)),
    };
    let pending = partition.follower_fetch(fetch).await;
    Box::pin(async move {
        match pending.await {
            Ok(response) => Frame::new(id, Body::ReplicaFetchResponse(replication::response_to_wire(response))),
            Err(_) => replica_fetch_error(id, ErrorCode::ShuttingDown, "partition stopped before answering"),
        }
    })
}

/// Answers a `PeerHello`: the connection becomes `hello.node_id`'s peer connection if that node is
/// another voter, the hello is addressed to this node, and it speaks this peer protocol version.
fn peer_hello<D: Disk>(state: &Arc<State<D>>, peer_node: &mut Option<NodeId>, id: u64, hello: &PeerHello) -> Frame {
    let node = &state.assignments.node;
    let error = if hello.peer_version != PEER_PROTOCOL_VERSION {
        info(
            ErrorCode::UnsupportedVersion,
            format!(
                "peer protocol version {} is not supported (this node speaks {PEER_PROTOCOL_VERSION})",
                hello.peer_version
            ),
        )
    } else if let Some(identified) = *peer_node {
        // The same hello again is the sender's keepalive (it proves the connection still delivers
        // both ways); another identity on the same connection is refused.
        if identified == NodeId(hello.node_id) {
            None
        } else {
            info(ErrorCode::InvalidRequest, format!("this connection already identified itself as node {identified}"))
        }
    } else {
        match node.check_peer(NodeId(hello.node_id), NodeId(hello.to)) {
            Ok(()) => {
                *peer_node = Some(NodeId(hello.node_id));
                None
            }
            Err(error) => {
                // The sender is told; a correct peer logs the refusal at warn.
                tracing::debug!(node = hello.node_id, to = hello.to, %error, "refused a peer handshake");
                info(ErrorCode::UnknownPeer, error.to_string())
            }
        }
    };
    Frame::new(id, Body::PeerHelloResponse(PeerHelloResponse { error, node_id: node.node_id().0 }))
}

async fn dispatch_request<D: Disk>(state: &Arc<State<D>>, frame: Frame) -> BoxFuture<'static, Frame> {
    let id = frame.correlation_id;
    if frame.version != PROTOCOL_VERSION {
        return ready(error_frame(
            id,
            ErrorCode::UnsupportedVersion,
            format!("protocol version {} is not supported (this broker speaks {PROTOCOL_VERSION})", frame.version),
        ));
    }
    let Some(body) = frame.body else {
        return ready(error_frame(id, ErrorCode::InvalidRequest, "frame has no body"));
    };
    serve_request(state, id, body).await
}

/// Routes one client request of the current protocol version to its handler.
async fn serve_request<D: Disk>(state: &Arc<State<D>>, id: u64, body: Body) -> BoxFuture<'static, Frame> {
    match body {
        Body::ProduceRequest(request) => produce(state, id, request).await,
        Body::FetchRequest(request) => fetch(state, id, request).await,
        Body::ListOffsetsRequest(request) => list_offsets(state, id, request).await,
        Body::ReplicaStatusRequest(request) => replica_status(state, id, request),
        Body::CreateTopicRequest(request) => create_topic(state, id, request),
        Body::AlterTopicRequest(request) => alter_topic(state, id, request),
        body @ (Body::UpsertUserRequest(_) | Body::DeleteUserRequest(_) | Body::ListUsersRequest(_)) => {
            users(state, id, body)
        }
        Body::InitProducerIdRequest(_) => init_producer_id(state, id),
        Body::DeleteTopicRequest(request) => delete_topic(state, id, request),
        Body::MetadataRequest(request) => metadata(state, id, request),
        Body::ClusterStatusRequest(request) => cluster_status(state, id, request),
        body @ (Body::FindCoordinatorRequest(_)
        | Body::JoinGroupRequest(_)
        | Body::SyncGroupRequest(_)
        | Body::HeartbeatRequest(_)
        | Body::LeaveGroupRequest(_)
        | Body::OffsetCommitRequest(_)
        | Body::OffsetFetchRequest(_)
        | Body::ResetOffsetsRequest(_)
        | Body::ListGroupsRequest(_)
        | Body::DescribeGroupRequest(_)) => group_request(state, id, body),
        Body::ProduceResponse(_)
        | Body::PeerHelloResponse(_)
        | Body::ClusterStatusResponse(_)
        | Body::FetchResponse(_)
        | Body::ListOffsetsResponse(_)
        | Body::CreateTopicResponse(_)
        | Body::DeleteTopicResponse(_)
        | Body::MetadataResponse(_)
        | Body::ReplicaFetchResponse(_)
        | Body::ReplicaStatusResponse(_)
        | Body::InitProducerIdResponse(_)
        | Body::AlterTopicResponse(_)
        | Body::UpsertUserResponse(_)
        | Body::DeleteUserResponse(_)
        | Body::ListUsersResponse(_)
        | Body::FindCoordinatorResponse(_)
        | Body::JoinGroupResponse(_)
        | Body::SyncGroupResponse(_)
        | Body::HeartbeatResponse(_)
        | Body::LeaveGroupResponse(_)
        | Body::OffsetCommitResponse(_)
        | Body::OffsetFetchResponse(_)
        | Body::ResetOffsetsResponse(_)
        | Body::ListGroupsResponse(_)
        | Body::DescribeGroupResponse(_)
        | Body::PushBatch(_)
        | Body::CreditResponse(_)
        | Body::UnsubscribeResponse(_)
        | Body::ErrorResponse(_) => ready(error_frame(id, ErrorCode::InvalidRequest, "a response is not a request")),
        // Answered by the connection (`Subscriptions::handle`) before dispatch.
        Body::SubscribeRequest(_) | Body::CreditRequest(_) | Body::UnsubscribeRequest(_) => {
            ready(error_frame(id, ErrorCode::Internal, "subscription requests are served by the connection"))
        }
        // Reached only with another frame version, which was answered above.
        Body::RaftMessage(_) | Body::PeerHello(_) | Body::ReplicaFetchRequest(_) => {
            ready(error_frame(id, ErrorCode::UnsupportedVersion, "peer frames need the current protocol version"))
        }
    }
}

/// A consumer-group request, served by the group coordinators.
fn group_request<D: Disk>(state: &Arc<State<D>>, id: u64, body: Body) -> BoxFuture<'static, Frame> {
    let state = state.clone();
    let offsets_topic = assignments::OffsetsTopic {
        partitions: state.config.offsets_topic_partitions,
        replication: state.config.offsets_topic_replication,
        segment_bytes: state.config.offsets_topic_segment_bytes,
    };
    Box::pin(async move {
        Frame::new(id, groups::wire::serve(&state.coordinators, &state.assignments, offsets_topic, body).await)
    })
}

fn init_producer_id<D: Disk>(state: &Arc<State<D>>, id: u64) -> BoxFuture<'static, Frame> {
    let state = state.clone();
    Box::pin(async move {
        let response = match state.assignments.init_producer_id().await {
            Ok(producer_id) => InitProducerIdResponse { error: None, producer_id: producer_id.0, producer_epoch: 0 },
            Err(error) => InitProducerIdResponse {
                error: Some(ErrorInfo::new(error.code, error.message)),
                producer_id: -1,
                producer_epoch: -1,
            },
        };
        Frame::new(id, Body::InitProducerIdResponse(response))
    })
}

/// Clients may read an internal topic (`__consumer_offsets`), never create, alter, delete or write it.
fn internal_topic(name: &str) -> Result<(), TopicError> {
    if crate::group::is_internal_topic(name) {
        return Err(TopicError {
            code: ErrorCode::InternalTopic,
            message: format!("{name:?} is internal to the brokers (names starting with __ are reserved)"),
        });
    }
    Ok(())
}

fn create_topic<D: Disk>(state: &Arc<State<D>>, id: u64, request: CreateTopicRequest) -> BoxFuture<'static, Frame> {
    let state = state.clone();
    Box::pin(async move {
        let result = async {
            internal_topic(&request.name)?;
            state.assignments.create_topic(&request).await
        }
        .await;
        let error = result.err().and_then(topic_info);
        Frame::new(id, Body::CreateTopicResponse(CreateTopicResponse { error }))
    })
}

fn alter_topic<D: Disk>(state: &Arc<State<D>>, id: u64, request: AlterTopicRequest) -> BoxFuture<'static, Frame> {
    let state = state.clone();
    Box::pin(async move {
        let result = async {
            internal_topic(&request.name)?;
            state.assignments.alter_topic(&request).await
        }
        .await;
        let error = result.err().and_then(topic_info);
        Frame::new(id, Body::AlterTopicResponse(AlterTopicResponse { error }))
    })
}

/// `keel user create|delete|list` (ADR 0029).
fn users<D: Disk>(state: &Arc<State<D>>, id: u64, body: Body) -> BoxFuture<'static, Frame> {
    let state = state.clone();
    Box::pin(async move {
        let assignments = &state.assignments;
        let answer = match body {
            Body::UpsertUserRequest(request) => {
                let error = assignments.upsert_user(&request).await.err().and_then(topic_info);
                Body::UpsertUserResponse(UpsertUserResponse { error })
            }
            Body::DeleteUserRequest(request) => {
                let error = assignments.delete_user(&request.name).await.err().and_then(topic_info);
                Body::DeleteUserResponse(DeleteUserResponse { error })
            }
            _ => match assignments.list_users().await {
                Ok(users) => Body::ListUsersResponse(ListUsersResponse { error: None, users }),
                Err(error) => {
                    Body::ListUsersResponse(ListUsersResponse { error: topic_info(error), users: Vec::new() })
                }
            },
        };
        Frame::new(id, answer)
    })
}

fn delete_topic<D: Disk>(state: &Arc<State<D>>, id: u64, request: DeleteTopicRequest) -> BoxFuture<'static, Frame> {
    let state = state.clone();
    Box::pin(async move {
        let result = async {
            internal_topic(&request.name)?;
            state.assignments.delete_topic(&request.name).await
        }
        .await;
        let error = result.err().and_then(topic_info);
        Frame::new(id, Body::DeleteTopicResponse(DeleteTopicResponse { error }))
    })
}

fn metadata<D: Disk>(state: &Arc<State<D>>, id: u64, request: MetadataRequest) -> BoxFuture<'static, Frame> {
    let state = state.clone();
    Box::pin(async move {
        match state.assignments.metadata(&request.topics).await {
            Ok(response) => Frame::new(id, Body::MetadataResponse(response)),
            Err(error) => error_frame(id, error.code, error.message),
        }
    })
}

fn cluster_status<D: Disk>(state: &Arc<State<D>>, id: u64, request: ClusterStatusRequest) -> BoxFuture<'static, Frame> {
    let state = state.clone();
    Box::pin(async move {
        let tls = state.tls.as_ref().and_then(|tls| tls.peers.as_ref());
        let mut response =
            crate::peer::status::gather(own_status(&state), known_nodes(&state), request.fan_out, tls).await;
        let (unhealthy, omitted) = state.assignments.node.with_state(assignments::unhealthy_partitions);
        response.unhealthy_partitions = unhealthy;
        response.unhealthy_partitions_omitted = omitted;
        Frame::new(id, Body::ClusterStatusResponse(response))
    })
}

/// What this node knows about every node: its configured voters and the registered brokers (the
/// status fan-out asks them when `fan_out` is set).
fn known_nodes<D: Disk>(state: &State<D>) -> BTreeMap<NodeId, NodeStatusInfo> {
    let mut known = BTreeMap::new();
    for (node_id, addr) in state.config.voters("").unwrap_or_default() {
        known.insert(node_id, NodeStatusInfo { node_id: node_id.0, addr, voter: true, ..Default::default() });
    }
    let brokers: Vec<(NodeId, String, bool)> = state
        .assignments
        .node
        .with_state(|meta| meta.brokers().map(|broker| (broker.node_id, broker.addr.clone(), broker.fenced)).collect());
    for (node_id, addr, fenced) in brokers {
        let entry = known.entry(node_id).or_insert_with(|| NodeStatusInfo { node_id: node_id.0, ..Default::default() });
        if entry.addr.is_empty() {
            entry.addr = addr;
        }
        entry.registered = true;
        entry.fenced = fenced;
    }
    known
}

/// This node's live Raft status, as the wire carries it (no leader: 0).
fn own_status<D: Disk>(state: &State<D>) -> NodeStatusInfo {
    let status = state.assignments.node.status();
    NodeStatusInfo {
        node_id: status.node_id.0,
        role: status.role.to_string(),
        term: status.term,
        leader_id: status.leader_id.map_or(0, |leader| leader.0),
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        state_hash: state.assignments.node.state_hash().hash,
        ..Default::default()
    }
}

fn produce_error(id: u64, code: ErrorCode, message: impl Into<String>) -> BoxFuture<'static, Frame> {
    ready(Frame::new(id, Body::ProduceResponse(produce_response(info(code, message)))))
}

async fn produce<D: Disk>(state: &Arc<State<D>>, id: u64, request: ProduceRequest) -> BoxFuture<'static, Frame> {
    let Ok(acks) = Acks::try_from(request.acks) else {
        return produce_error(id, ErrorCode::InvalidAcks, format!("unknown acks value {}", request.acks));
    };
    if let Err(error) = internal_topic(&request.topic) {
        return produce_error(id, error.code, error.message);
    }
    let partition = match state.assignments.partition(&request.topic, PartitionId(request.partition)) {
        Ok(partition) => partition,
        Err(error) => return produce_error(id, error.code, error.message),
    };
    if request.batch.len() > BATCH_BYTES_MAX {
        return produce_error(
            id,
            ErrorCode::MessageTooLarge,
            format!("batch of {} bytes exceeds the {BATCH_BYTES_MAX}-byte limit", request.batch.len()),
        );
    }
    let compacted = state.assignments.cleanup_policy(&request.topic) == Some(CleanupPolicy::Compact);
    let batch = match check_produced_batch(request.batch, &request.topic, compacted) {
        Ok(batch) => batch,
        Err((code, message)) => return produce_error(id, code, message),
    };
    let pending = partition.append(batch, acks).await;
    // On the wire 0 means "no timeout" (the proto3 default); from here on it is an `Option`.
    let timeout = (request.timeout_ms > 0).then(|| Duration::from_millis(u64::from(request.timeout_ms)));
    Box::pin(async move {
        let answer = match timeout {
            None => pending.await.ok(),
            Some(timeout) => match tokio::time::timeout(timeout, pending).await {
                Ok(answer) => answer.ok(),
                Err(_) => {
                    let message = "not durable within the request timeout; it may still be";
                    return Frame::new(id, Body::ProduceResponse(produce_response(info(ErrorCode::Timeout, message))));
                }
            },
        };
        Frame::new(id, Body::ProduceResponse(produce_answer(answer)))
    })
}

/// Parses a produced batch and checks what the leader checks before it appends it: a compressed
/// batch's records against its header (inflated once here, in the connection's task, ADR 0018; the
/// batch is stored, replicated and served as it came), and, for a compacted topic, that every record
/// has a key (compaction keeps the latest record of each key: a keyless one has nothing to be kept
/// under). Internal writes (the group coordinator's) do not come this way.
fn check_produced_batch(bytes: Bytes, topic: &str, compacted: bool) -> Result<Batch, (ErrorCode, String)> {
    let invalid = |error: BatchError| match error {
        BatchError::UnsupportedCompression(_) => {
            (ErrorCode::UnsupportedCompression, format!("invalid record batch: {error}"))
        }
        _ => (ErrorCode::CorruptBatch, format!("invalid record batch: {error}")),
    };
    let batch = Batch::parse(bytes).map_err(invalid)?;
    // Only compaction makes batches with fewer records than offsets; a producer may not.
    batch.check_produced_header().map_err(invalid)?;
    let compressed = batch.compression() != Compression::None;
    if compacted {
        // One pass reads (so checks) the records and their keys, inflating a compressed batch once.
        if let Some(index) = first_keyless_record(&batch).map_err(invalid)? {
            let message = format!(
                "topic {topic:?} is compacted (cleanup_policy=compact): every record needs a key; record at \
                 index {index} has none"
            );
            return Err((ErrorCode::InvalidRecord, message));
        }
    } else if compressed {
        batch.check_records().map_err(invalid)?;
    }
    if compressed {
        sometimes::hit(Sometimes::CompressedBatchProduced);
    }
    Ok(batch)
}

/// The index of the first record of `batch` without a key, reading (and so checking) the records
/// up to it.
fn first_keyless_record(batch: &Batch) -> Result<Option<usize>, BatchError> {
    for (index, record) in batch.records().enumerate() {
        if record?.key.is_none() {
            return Ok(Some(index));
        }
    }
    Ok(None)
}

fn produce_response(error: Option<ErrorInfo>) -> ProduceResponse {
    ProduceResponse { error, base_offset: -1, log_start_offset: -1 }
}

/// The produce response for the partition's answer (`None`: the actor went away without one).
fn produce_answer(answer: Option<PartitionReply>) -> ProduceResponse {
    match answer {
        Some(PartitionReply::Produced { base_offset }) => {
            ProduceResponse { error: None, base_offset: base_offset.0, log_start_offset: -1 }
        }
        // The append was queued or written before the partition stopped: it may be durable.
        Some(PartitionReply::Error { code: ErrorCode::ShuttingDown, message }) => {
            produce_response(info(ErrorCode::StorageIndeterminate, format!("partition stopped: {message}")))
        }
        Some(PartitionReply::Error { code, message }) => produce_response(info(code, message)),
        Some(other) => produce_response(info(ErrorCode::Internal, format!("unexpected partition reply {other:?}"))),
        // The actor went away with the append queued: it may or may not have been written.
        None => produce_response(info(ErrorCode::StorageIndeterminate, "partition stopped before answering")),
    }
}

fn fetch_error(id: u64, code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::new(
        id,
        Body::FetchResponse(FetchResponse {
            error: info(code, message),
            high_watermark: -1,
            log_start_offset: -1,
            records: Bytes::new(),
        }),
    )
}

async fn fetch<D: Disk>(state: &Arc<State<D>>, id: u64, request: FetchRequest) -> BoxFuture<'static, Frame> {
    let partition = match state.assignments.partition(&request.topic, PartitionId(request.partition)) {
        Ok(partition) => partition,
        Err(error) => return ready(fetch_error(id, error.code, error.message)),
    };
    let fetch = ConsumerFetch {
        offset: Offset(request.offset),
        bytes_max: if buggify(Point::ShrinkFetch) { 1 } else { request.max_bytes },
        wait_ms_max: request.max_wait_ms,
        leader_epoch: request.leader_epoch.map(LeaderEpoch),
    };
    let pending = partition.consumer_fetch(fetch).await;
    Box::pin(async move {
        match pending.await {
            Ok(PartitionReply::Fetched { high_watermark, log_start, records }) => Frame::new(
                id,
                Body::FetchResponse(FetchResponse {
                    error: None,
                    high_watermark: high_watermark.0,
                    log_start_offset: log_start.0,
                    records,
                }),
            ),
            Ok(PartitionReply::Error { code, message }) => fetch_error(id, code, message),
            Ok(other) => fetch_error(id, ErrorCode::Internal, format!("unexpected partition reply {other:?}")),
            Err(_) => fetch_error(id, ErrorCode::ShuttingDown, "partition stopped before answering"),
        }
    })
}

async fn list_offsets<D: Disk>(
    state: &Arc<State<D>>,
    id: u64,
    request: ListOffsetsRequest,
) -> BoxFuture<'static, Frame> {
    let error = move |code, message: String| {
        Frame::new(
            id,
            Body::ListOffsetsResponse(ListOffsetsResponse { error: info(code, message), offset: -1, timestamp_ms: -1 }),
        )
    };
    let spec = match request.timestamp_ms {
        LIST_OFFSETS_LATEST => OffsetSpec::Latest,
        LIST_OFFSETS_EARLIEST => OffsetSpec::Earliest,
        ts if ts >= 0 => OffsetSpec::Timestamp(ts),
        other => return ready(error(ErrorCode::InvalidTimestamp, format!("invalid timestamp selector {other}"))),
    };
    let partition = match state.assignments.partition(&request.topic, PartitionId(request.partition)) {
        Ok(partition) => partition,
        Err(topic_error) => return ready(error(topic_error.code, topic_error.message)),
    };
    let pending = partition.list_offsets(spec).await;
    Box::pin(async move {
        match pending.await {
            Ok(PartitionReply::Offset { offset, timestamp_ms }) => Frame::new(
                id,
                Body::ListOffsetsResponse(ListOffsetsResponse {
                    error: None,
                    offset: offset.map_or(-1, |offset| offset.0),
                    timestamp_ms,
                }),
            ),
            Ok(PartitionReply::Error { code, message }) => error(code, message),
            Ok(other) => error(ErrorCode::Internal, format!("unexpected partition reply {other:?}")),
            Err(_) => error(ErrorCode::ShuttingDown, "partition stopped before answering".into()),
        }
    })
}

/// `topic describe`'s look at a partition's replication, answered by its leader's actor
/// ([`replica_status`]). Read-only, so it need not keep its place in the mailbox order: the future
/// waits for mailbox space itself.
fn replica_status<D: Disk>(state: &Arc<State<D>>, id: u64, request: ReplicaStatusRequest) -> BoxFuture<'static, Frame> {
    let respond = move |response| Frame::new(id, Body::ReplicaStatusResponse(response));
    let partition = match state.assignments.partition(&request.topic, PartitionId(request.partition)) {
        Ok(partition) => partition,
        Err(error) => return ready(respond(replica_status::refusal(error.code, error.message))),
    };
    let me = state.config.node_id;
    Box::pin(async move {
        let name = format!("{}/{}", request.topic, request.partition);
        match partition.status().await {
            Some(status) => respond(replica_status::answer(me, &name, request.leader_epoch, &status)),
            None => respond(replica_status::refusal(ErrorCode::ShuttingDown, "partition stopped before answering")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode_batch_compressed, ProducerFields, Record};

    fn keyed(key: &'static str, value: Option<&'static str>) -> Record {
        Record { key: Some(Bytes::from_static(key.as_bytes())), value: value.map(Bytes::from), ..Record::default() }
    }

    /// A compacted topic takes keyed records (tombstones too) and refuses a batch with a keyless one,
    /// compressed or not, naming the record; a deleting topic takes keyless records as before.
    #[test]
    fn a_compacted_topic_needs_a_key_on_every_record() {
        let records = [keyed("a", Some("1")), Record::value("no key"), keyed("b", None)];
        for compression in [Compression::None, Compression::Zstd] {
            let batch = encode_batch_compressed(&records, 0, ProducerFields::NONE, compression);
            assert!(check_produced_batch(batch.clone(), "orders", false).is_ok(), "{compression:?}");
            let (code, message) = check_produced_batch(batch, "orders", true).unwrap_err();
            assert_eq!(code, ErrorCode::InvalidRecord, "{message}");
            assert_eq!(
                message,
                "topic \"orders\" is compacted (cleanup_policy=compact): every record needs a key; record at index 1 \
                 has none"
            );
            let keyed_only = encode_batch_compressed(
                &[keyed("a", Some("1")), keyed("a", None)],
                0,
                ProducerFields::NONE,
                compression,
            );
            assert!(check_produced_batch(keyed_only, "orders", true).is_ok(), "{compression:?}");
        }
        let (code, _) = check_produced_batch(Bytes::from_static(b"not a batch"), "orders", true).unwrap_err();
        assert_eq!(code, ErrorCode::CorruptBatch);
    }
}
