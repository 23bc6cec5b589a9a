//! The async Rust client: admin calls, a batching [`Producer`], and fetches for consumers.
//!
//! Used by the `keel` CLI, the simulation workloads, the Jepsen harness and the benchmarks, so it
//! speaks only through `tokio` (madsim-tokio) and runs in both builds.
//!
//! Outcomes are three-valued, as a history checker needs them: a call succeeds, fails definitely
//! (the broker said no, or the request never left), or is **ambiguous** (the connection broke or
//! timed out with the request in flight, or the broker reported an indeterminate storage error).
//! [`ClientError::is_ambiguous`] tells which; an ambiguous write is never reported as either success
//! or failure. Reads and admin lookups are retried on transport errors; writes are retried only when
//! they were definitely not sent or definitely not applied.
//!
//! # Cluster routing
//! A client is made with a **bootstrap** list, `HOST:PORT[,HOST:PORT...]` like Kafka's
//! `bootstrap.servers`: the first broker on it that answers is used, so a script keeps working while
//! one broker is down. The client keeps a metadata cache
//! (broker addresses by node id, the leader of every partition it used) and one connection per
//! broker address. Produce, fetch and list-offsets go to the partition's leader. When a leader
//! answers `NotLeader`, `UnknownPartition` or `UnknownTopic` (a partition request that names a topic
//! the metadata has: this broker has not applied the create yet) or `FencedLeaderEpoch`, or cannot be
//! connected to, the client forgets the topic's leaders, refreshes the metadata from any reachable
//! broker and tries again with backoff, at most [`ROUTE_ATTEMPTS_MAX`] times. Those answers mean the
//! request was not applied, so retrying a produce after them is safe; a produce whose connection broke
//! in flight stays ambiguous and is not retried. Admin calls and metadata go to any reachable broker:
//! the bootstrap list first, in its order, then the other known brokers; addresses whose last connect
//! failed go last (see below).
//!
//! # Leader epochs (KIP-320)
//! The cache keeps each partition's leader epoch next to its leader, and every fetch carries it.
//! A replica with a newer epoch answers `FencedLeaderEpoch` (this client's metadata is stale: it is
//! refreshed, as after `NotLeader`); one with an older epoch answers `UnknownLeaderEpoch` (the replica
//! has not applied the leader change yet: the same request is retried after a backoff, and the cache
//! is dropped only if the retries run out).
//!
//! # Unreachable brokers
//! A failed connect is remembered per address: for a backoff that starts at `retry_backoff` and
//! doubles per consecutive failure up to `retry_backoff_max`, connecting to that address fails at
//! once instead of waiting out `connect_timeout` again, and until a connect to it succeeds it is
//! tried after every other candidate for admin and metadata requests. So a dead broker first in the
//! bootstrap list costs one connect timeout, not one per metadata refresh.
//!
//! Lock order: `routing`, `connections`, `connect_failures` and the group coordinators' cache are std
//! mutexes, never held across an await and never two at once; a per-address slot (tokio mutex) is held only while connecting to
//! that address.

mod connection;
pub mod group;
pub mod producer;
pub mod subscription;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::batch::{Batch, StoredRecord};
use crate::buggify::{buggify, Point};
use crate::protocol::*;
use crate::types::{Offset, ProducerEpoch, ProducerId};
pub use connection::{Connection, ConnectionError, PendingResponse, PushReceiver, PushSender};
pub use producer::{delivered, Delivery, Producer, ProducerConfig, ProducerStats, RecordMetadata};
pub use subscription::{Pushed, Subscription, SubscriptionConfig, SubscriptionStats};

/// Address used when neither `--broker` nor `KEEL_BROKER` says otherwise.
pub const DEFAULT_BROKER: &str = "127.0.0.1:9400";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("cannot connect to broker {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The outcome is unknown: the request may or may not have taken effect.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    /// Idempotent producer: the partition lost this producer's sequence (it answered
    /// `OutOfOrderSequence` or `UnknownProducerId` for a batch sent after every earlier one of its
    /// partition was acknowledged), so the batch is not sent again; the outcome is unknown, as for
    /// `Ambiguous`. With acks=all on a healthy cluster this does not happen: it means the broker
    /// lost acknowledged state.
    #[error("outcome unknown, the partition lost this producer's sequence: {0}")]
    SequenceLost(String),
    #[error("{code:?}: {message}")]
    Server { code: ErrorCode, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("corrupt data from broker: {0}")]
    Corrupt(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    pub fn is_ambiguous(&self) -> bool {
        match self {
            ClientError::Ambiguous(_) | ClientError::SequenceLost(_) => true,
            ClientError::Server { code, .. } => code.is_indeterminate(),
            _ => false,
        }
    }

    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn server(info: ErrorInfo) -> ClientError {
        ClientError::Server { code: info.error_code(), message: info.message }
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub connect_timeout: Duration,
    /// How long a request may wait for its response before it is reported ambiguous (writes) or
    /// retried (reads). Long polls add their own wait on top.
    pub request_timeout: Duration,
    /// Attempts after the first, for requests that are safe to retry.
    pub retries: u32,
    /// First backoff between attempts; doubles up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// TLS to the brokers (ADR 0028): what the client trusts and the certificate it presents.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retries: 5,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// Checks a bootstrap list, `HOST:PORT[,HOST:PORT...]`: at least one entry, each with a host and a
/// port number (names are resolved when connecting). Returns the entries in order.
pub fn parse_bootstrap(text: &str) -> Result<Vec<String>, String> {
    let mut list = Vec::new();
    for entry in text.split(',').map(str::trim) {
        if entry.is_empty() {
            continue;
        }
        let valid = entry
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0));
        if !valid {
            return Err(format!("{entry:?} is not HOST:PORT"));
        }
        list.push(entry.to_owned());
    }
    if list.is_empty() {
        return Err("no broker address given (expected HOST:PORT[,HOST:PORT...])".into());
    }
    Ok(list)
}

/// Attempts of one partition request (produce, fetch, list-offsets) while its leader moves or is
/// being looked up; transport failures among them are further bounded by `ClientConfig::retries`.
pub const ROUTE_ATTEMPTS_MAX: u32 = 8;
/// Broker addresses the metadata cache holds at most (beyond it, new brokers are not remembered).
pub const BROKERS_KNOWN_MAX: usize = 64;
/// Topics whose partition leaders the cache holds at most (beyond it, the cache starts over).
pub const TOPICS_CACHED_MAX: usize = 10_000;

/// Addresses whose connect failures the client remembers at most (beyond it, it starts over).
pub const CONNECT_FAILURES_MAX: usize = 256;

/// What the client knows about the cluster: where brokers are and which one leads each partition.
#[derive(Default)]
struct Routing {
    brokers: BTreeMap<u64, String>,
    /// Per topic, indexed by partition.
    leaders: BTreeMap<String, Vec<PartitionRoute>>,
}

/// One partition's leader as the latest metadata named it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PartitionRoute {
    /// The leader's node id (0: no leader).
    leader: u64,
    /// The epoch of that leadership, sent with every fetch (KIP-320).
    leader_epoch: i32,
}

/// Consecutive failed connects to one address, and when the next attempt may go out.
struct ConnectFailure {
    failures: u32,
    retry_at: Instant,
}

type ConnectionSlot = Arc<tokio::sync::Mutex<Option<Connection>>>;

/// A broker client. Cheap to share (`Arc<Client>`); reconnects lazily after a connection breaks.
pub struct Client {
    /// The bootstrap list, in the order given.
    bootstrap: Vec<String>,
    config: ClientConfig,
    routing: Mutex<Routing>,
    /// One connection per broker address.
    connections: Mutex<BTreeMap<String, ConnectionSlot>>,
    /// Addresses whose latest connect failed (see "Unreachable brokers" in the module docs).
    connect_failures: Mutex<BTreeMap<String, ConnectFailure>>,
    /// Each consumer group's coordinator address, as last found (`group.rs`).
    coordinators: group::Coordinators,
    /// Per broker address, the connections that carry push subscriptions, each with how many it
    /// has open.
    subscription_pools: Mutex<BTreeMap<String, Vec<PooledConnection>>>,
}

/// A connection of a subscription pool and how many subscriptions it carries.
type PooledConnection = (Connection, Arc<AtomicUsize>);

/// One subscription's place on a pooled connection; given back on drop.
pub(crate) struct SubscriptionSlot(Arc<AtomicUsize>);

impl SubscriptionSlot {
    fn take(open: &Arc<AtomicUsize>) -> SubscriptionSlot {
        open.fetch_add(1, Ordering::Relaxed);
        SubscriptionSlot(open.clone())
    }
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A topic's settings at creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub partitions: u32,
    pub replication: u32,
    /// `None`: the broker's default, `min(2, replication)`.
    pub min_insync_replicas: Option<u32>,
    pub unclean_leader_election: bool,
    /// Retention, segment size, cleanup policy and `delete_retention_ms`; unset fields get the
    /// broker's defaults.
    pub log: LogSettingsInfo,
}

impl Default for TopicSpec {
    fn default() -> TopicSpec {
        TopicSpec {
            partitions: 1,
            replication: 1,
            min_insync_replicas: None,
            unclean_leader_election: false,
            log: LogSettingsInfo::default(),
        }
    }
}

/// A fetched slice of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub high_watermark: Offset,
    pub log_start: Offset,
    /// Records at or after the requested offset, in offset order.
    pub records: Vec<StoredRecord>,
    /// The offset after the last batch returned (the requested offset when none was): where the
    /// next fetch goes on. Past the last record when compaction emptied batches at the end
    /// (ADR 0022), so a reader advances even when a fetch brought no records.
    pub next_offset: Offset,
}

/// How a partition's replicas are doing, as its leader sees them (see
/// [`ReplicaStatusResponse`](crate::protocol::ReplicaStatusResponse)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub leader: u64,
    pub leader_epoch: i32,
    pub high_watermark: Offset,
    pub log_start: Offset,
    /// The leader's log end.
    pub log_end: Offset,
    /// What the leader has fsynced.
    pub durable_end: Offset,
    /// Every replica, the leader included, in the partition's replica order.
    pub replicas: Vec<ReplicaLogStatus>,
    pub storage_failed: bool,
    /// The bytes of the leader's log segments.
    pub log_size_bytes: u64,
}

/// One replica's log end as the leader knows it (`None`: it has not fetched in this leader epoch),
/// its lag behind the leader's log end, and whether the leader counts it in the ISR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaLogStatus {
    pub node_id: u64,
    pub log_end: Option<Offset>,
    pub lag: Option<i64>,
    pub in_isr: bool,
}

impl PartitionStatus {
    /// Checks what a broker sent: offsets in order (`log start <= HW <= log end`, durable end within
    /// the log), each replica's log end within `[0, log end]` and its lag what that log end implies.
    pub fn from_wire(response: ReplicaStatusResponse) -> Result<PartitionStatus, ClientError> {
        let invalid = |what: String| Err(ClientError::Protocol(format!("invalid replica status: {what}")));
        let (start, hw, end, durable) =
            (response.log_start_offset, response.high_watermark, response.log_end_offset, response.durable_end_offset);
        if !(0 <= start && start <= hw && hw <= end && (0..=end).contains(&durable)) {
            return invalid(format!("log start {start}, high watermark {hw}, log end {end}, durable end {durable}"));
        }
        let mut replicas = Vec::with_capacity(response.replicas.len());
        for replica in response.replicas {
            match (replica.log_end_offset, replica.lag) {
                (None, None) => {}
                (Some(replica_end), Some(lag)) if (0..=end).contains(&replica_end) && lag == end - replica_end => {}
                (replica_end, lag) => {
                    return invalid(format!(
                        "replica {} at {replica_end:?} with lag {lag:?} behind a leader at {end}",
                        replica.node_id
                    ))
                }
            }
            replicas.push(ReplicaLogStatus {
                node_id: replica.node_id,
                log_end: replica.log_end_offset.map(Offset),
                lag: replica.lag,
                in_isr: replica.in_isr,
            });
        }
        Ok(PartitionStatus {
            leader: response.leader,
            leader_epoch: response.leader_epoch,
            high_watermark: Offset(hw),
            log_start: Offset(start),
            log_end: Offset(end),
            durable_end: Offset(durable),
            replicas,
            storage_failed: response.storage_failed,
            log_size_bytes: response.log_size_bytes,
        })
    }
}

/// The error a partition response carries, if any.
fn response_error(body: &Body) -> Option<&ErrorInfo> {
    match body {
        Body::ProduceResponse(response) => response.error.as_ref(),
        Body::FetchResponse(response) => response.error.as_ref(),
        Body::ListOffsetsResponse(response) => response.error.as_ref(),
        Body::ReplicaStatusResponse(response) => response.error.as_ref(),
        Body::CreateTopicResponse(response) => response.error.as_ref(),
        Body::DeleteTopicResponse(response) => response.error.as_ref(),
        _ => None,
    }
}

/// Answers from a partition's supposed leader that mean "not applied here; look the leader up again".
fn is_misrouted(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotLeader | ErrorCode::UnknownPartition | ErrorCode::UnknownTopic | ErrorCode::FencedLeaderEpoch
    )
}

/// Answers that mean "not applied: this replica is behind the metadata you have, or a new leader has
/// not confirmed its high watermark yet; ask again later".
fn is_replica_behind(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::UnknownLeaderEpoch | ErrorCode::LeaderNotReady)
}

impl Client {
    /// A client that starts from the brokers of `bootstrap` (one address, or a comma-separated
    /// list; see [`parse_bootstrap`]) and learns the others from metadata. Entries are not resolved
    /// here: one that cannot be reached is skipped like a broker that is down.
    pub fn new(bootstrap: impl Into<String>, config: ClientConfig) -> Arc<Client> {
        let bootstrap: String = bootstrap.into();
        let mut list: Vec<String> =
            bootstrap.split(',').map(str::trim).filter(|addr| !addr.is_empty()).map(str::to_owned).collect();
        if list.is_empty() {
            // Nothing to try but what was given: connecting reports the bad address.
            list.push(bootstrap);
        }
        Arc::new(Client {
            bootstrap: list,
            config,
            routing: Mutex::new(Routing::default()),
            connections: Mutex::new(BTreeMap::new()),
            connect_failures: Mutex::new(BTreeMap::new()),
            coordinators: group::Coordinators::default(),
            subscription_pools: Mutex::new(BTreeMap::new()),
        })
    }

    /// The first bootstrap address.
    pub fn addr(&self) -> &str {
        &self.bootstrap[0]
    }

    /// The bootstrap list, in the order it is tried.
    pub fn bootstrap(&self) -> &[String] {
        &self.bootstrap
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Known broker addresses by node id (from the latest metadata).
    pub fn brokers(&self) -> BTreeMap<u64, String> {
        self.routing.lock().expect("routing lock").brokers.clone()
    }

    fn next_backoff(&self, backoff: Duration) -> Duration {
        (backoff * 2).min(self.config.retry_backoff_max)
    }

    async fn connection(&self, addr: &str) -> Result<Connection, ClientError> {
        let slot = self.connections.lock().expect("connections lock").entry(addr.to_owned()).or_default().clone();
        let mut slot = slot.lock().await;
        let reuse = !buggify(Point::DropConnection);
        if let Some(connection) = slot.as_ref().filter(|connection| reuse && !connection.is_closed()) {
            return Ok(connection.clone());
        }
        // Checked under the slot: callers that queued behind a failing connect fail at once.
        let connection = self.connect(addr).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// A new connection to `addr`, unless its latest connect failed too recently.
    async fn connect(&self, addr: &str) -> Result<Connection, ClientError> {
        if let Some(wait) = self.connect_backoff_left(addr) {
            let reason = format!("the last connect failed; not retried for another {} ms", wait.as_millis());
            return Err(ClientError::Connect { addr: addr.to_owned(), reason });
        }
        let connect = TcpStream::connect(addr);
        let failed = |reason: String| {
            self.note_connect(addr, false);
            Err(ClientError::Connect { addr: addr.to_owned(), reason })
        };
        let stream = match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return failed(error.to_string()),
            Err(_) => return failed(format!("timed out after {} ms", self.config.connect_timeout.as_millis())),
        };
        let _ = stream.set_nodelay(true);
        let stream = match crate::tls::connect(self.config.tls.as_ref(), addr, stream).await {
            Ok(stream) => stream,
            Err(error) => return failed(format!("TLS handshake failed: {error}")),
        };
        self.note_connect(addr, true);
        Ok(Connection::start(stream))
    }

    /// Takes `connection` out of `addr`'s subscription pool (it went silent): it closes once the
    /// subscriptions still on it end.
    fn forget_subscription_connection(&self, addr: &str, connection: &Connection) {
        let mut pools = self.subscription_pools.lock().expect("subscription pools lock");
        if let Some(pool) = pools.get_mut(addr) {
            pool.retain(|(pooled, _)| !pooled.same_as(connection));
        }
    }

    /// A connection to `addr` for one more push subscription (ADR 0021), and the hold on one of
    /// its [`SUBSCRIPTIONS_PER_CONNECTION_MAX`] places (given back when it drops). Subscriptions
    /// have connections of their own, apart from requests, as many as they need.
    async fn subscription_connection(&self, addr: &str) -> Result<(Connection, SubscriptionSlot), ClientError> {
        let pooled = {
            let mut pools = self.subscription_pools.lock().expect("subscription pools lock");
            let pool = pools.entry(addr.to_owned()).or_default();
            pool.retain(|(connection, _)| !connection.is_closed());
            pool.iter()
                .find(|(_, open)| open.load(Ordering::Relaxed) < SUBSCRIPTIONS_PER_CONNECTION_MAX)
                .map(|(connection, open)| (connection.clone(), SubscriptionSlot::take(open)))
        };
        if let Some(found) = pooled {
            return Ok(found);
        }
        let connection = self.connect(addr).await?;
        let open = Arc::new(AtomicUsize::new(0));
        let slot = SubscriptionSlot::take(&open);
        let mut pools = self.subscription_pools.lock().expect("subscription pools lock");
        pools.entry(addr.to_owned()).or_default().push((connection.clone(), open));
        Ok((connection, slot))
    }

    /// How long connects to `addr` are still skipped after its latest failure, if they are.
    fn connect_backoff_left(&self, addr: &str) -> Option<Duration> {
        let failures = self.connect_failures.lock().expect("connect_failures lock");
        let retry_at = failures.get(addr)?.retry_at;
        let now = Instant::now();
        (retry_at > now).then(|| retry_at - now)
    }

    /// Records a connect's outcome: a success forgets the address's failures; a failure backs it off
    /// for `retry_backoff`, doubled per consecutive failure up to `retry_backoff_max`.
    fn note_connect(&self, addr: &str, succeeded: bool) {
        let mut failures = self.connect_failures.lock().expect("connect_failures lock");
        if succeeded {
            failures.remove(addr);
            return;
        }
        if failures.len() >= CONNECT_FAILURES_MAX && !failures.contains_key(addr) {
            failures.clear();
        }
        let entry = failures.entry(addr.to_owned()).or_insert(ConnectFailure { failures: 0, retry_at: Instant::now() });
        let backoff = self.config.retry_backoff.saturating_mul(1 << entry.failures.min(16));
        entry.failures = entry.failures.saturating_add(1);
        entry.retry_at = Instant::now() + backoff.min(self.config.retry_backoff_max);
    }

    async fn drop_connection(&self, addr: &str) {
        let slot = self.connections.lock().expect("connections lock").get(addr).cloned();
        if let Some(slot) = slot {
            *slot.lock().await = None;
        }
    }

    /// Queues a request on the connection to `addr` (in call order) without waiting for its
    /// response. Errors here mean the request was definitely not sent.
    pub async fn start(&self, addr: &str, body: Body) -> Result<PendingResponse, ClientError> {
        let connection = self.connection(addr).await?;
        connection.send(body).await.map_err(|_| ClientError::Connect {
            addr: addr.to_owned(),
            reason: "connection closed before the request was sent".into(),
        })
    }

    /// Waits for a request started on `addr`, up to `request_timeout` (+ `extra`).
    pub async fn finish(&self, addr: &str, pending: PendingResponse, extra: Duration) -> Result<Body, ClientError> {
        let timeout =
            if buggify(Point::EarlyTimeout) { self.config.request_timeout / 2 } else { self.config.request_timeout };
        match tokio::time::timeout(timeout + extra, pending).await {
            Err(_) => {
                // Drop the connection: a late response must not be matched to anything.
                self.drop_connection(addr).await;
                Err(ClientError::Ambiguous(format!("no response within {:?}", timeout + extra)))
            }
            Ok(Err(_)) => Err(ClientError::Ambiguous("connection task ended with the request in flight".into())),
            Ok(Ok(Err(ConnectionError::NotSent))) => {
                Err(ClientError::Connect { addr: addr.to_owned(), reason: "request not sent".into() })
            }
            Ok(Ok(Err(error))) => Err(ClientError::Ambiguous(error.to_string())),
            Ok(Ok(Ok(Body::ErrorResponse(ErrorResponse { error: Some(info) })))) => Err(ClientError::server(info)),
            Ok(Ok(Ok(body))) => Ok(body),
        }
    }

    /// The bootstrap list first, then every other known broker; addresses whose latest connect
    /// failed after all others (each group in that order).
    fn candidates(&self) -> Vec<String> {
        let mut candidates = self.bootstrap.clone();
        for addr in self.routing.lock().expect("routing lock").brokers.values() {
            if !candidates.contains(addr) {
                candidates.push(addr.clone());
            }
        }
        let failures = self.connect_failures.lock().expect("connect_failures lock");
        // A stable sort: the order within each group is kept.
        candidates.sort_by_key(|addr| failures.contains_key(addr));
        candidates
    }

    /// Sends a request that any broker can answer (admin, metadata, cluster status) to the first
    /// reachable one, trying the bootstrap list first. A broker that cannot be reached, or that has no
    /// Raft leader (`NotLeader`: nothing was proposed), sends the request on to the next one; after
    /// a round over all of them, backoff and another round, up to `retries` more rounds.
    /// `read_only` requests are also passed on after an ambiguous outcome; others return it.
    /// When no broker could answer, the error returned is the last broker's answer (`NotLeader`),
    /// or the last failure if none answered.
    pub async fn request_any(&self, body: Body, read_only: bool, extra: Duration) -> Result<Body, ClientError> {
        let mut backoff = self.config.retry_backoff;
        let mut last_error = None;
        for round in 0..=self.config.retries {
            if round > 0 {
                tokio::time::sleep(backoff).await;
                backoff = self.next_backoff(backoff);
            }
            for addr in self.candidates() {
                let result = match self.start(&addr, body.clone()).await {
                    Ok(pending) => self.finish(&addr, pending, extra).await,
                    Err(error) => Err(error),
                };
                let retry_elsewhere = match &result {
                    Ok(response) => {
                        response_error(response).is_some_and(|info| info.error_code() == ErrorCode::NotLeader)
                    }
                    Err(ClientError::Connect { .. }) => true,
                    Err(ClientError::Server { code: ErrorCode::NotLeader, .. }) => true,
                    Err(ClientError::Server { code: ErrorCode::Timeout | ErrorCode::ShuttingDown, .. }) => read_only,
                    Err(ClientError::Ambiguous(_)) => read_only,
                    Err(_) => false,
                };
                if !retry_elsewhere {
                    return result;
                }
                tracing::debug!(%addr, ?result, "broker could not answer; trying another");
                // What a broker answered says more than a failed connect to another one (a dead
                // broker tried last must not hide that the live ones have no Raft leader).
                let connect_failed = matches!(result, Err(ClientError::Connect { .. }));
                let answered_before = matches!(last_error, Some(Ok(_) | Err(ClientError::Server { .. })));
                if !(connect_failed && answered_before) {
                    last_error = Some(result);
                }
            }
        }
        last_error.expect("at least one attempt")
    }

    /// One attempt at the first reachable broker; a write's transport failure is ambiguous.
    pub async fn request(&self, body: Body) -> Result<Body, ClientError> {
        self.request_any(body, false, Duration::ZERO).await
    }

    /// For requests with no side effects: retries transport failures with backoff.
    pub async fn request_retrying(&self, body: Body, extra: Duration) -> Result<Body, ClientError> {
        self.request_any(body, true, extra).await
    }

    pub async fn create_topic(&self, name: &str, partitions: u32, replication: u32) -> Result<(), ClientError> {
        self.create_topic_with(name, &TopicSpec { partitions, replication, ..TopicSpec::default() }).await
    }

    /// Creates a topic with every setting `spec` carries.
    pub async fn create_topic_with(&self, name: &str, spec: &TopicSpec) -> Result<(), ClientError> {
        let body = Body::CreateTopicRequest(CreateTopicRequest {
            name: name.into(),
            partitions: spec.partitions,
            replication: spec.replication,
            min_insync_replicas: spec.min_insync_replicas,
            unclean_leader_election: spec.unclean_leader_election,
            log: Some(Box::new(spec.log.clone())),
        });
        match self.request(body).await? {
            Body::CreateTopicResponse(CreateTopicResponse { error: None }) => Ok(()),
            Body::CreateTopicResponse(CreateTopicResponse { error: Some(info) }) => Err(ClientError::server(info)),
            other => Err(unexpected(other)),
        }
    }

    /// Changes a topic's log settings: the fields `log` sets, the others stay.
    pub async fn alter_topic(&self, name: &str, log: LogSettingsInfo) -> Result<(), ClientError> {
        let body = Body::AlterTopicRequest(AlterTopicRequest { name: name.into(), log: Some(log) });
        match self.request(body).await? {
            Body::AlterTopicResponse(AlterTopicResponse { error: None }) => Ok(()),
            Body::AlterTopicResponse(AlterTopicResponse { error: Some(info) }) => Err(ClientError::server(info)),
            other => Err(unexpected(other)),
        }
    }

    /// Creates user `name`, or changes its password (ADR 0029): the SCRAM-SHA-256 credential is
    /// derived here, with a fresh salt and `iterations`; the password is never sent.
    pub async fn upsert_user(&self, name: &str, password: &str, iterations: u32) -> Result<(), ClientError> {
        let salt: [u8; 16] = rand::Rng::random(&mut crate::random::rng());
        let credential = crate::auth::scram::Credential::derive(password, &salt, iterations);
        let request = UpsertUserRequest {
            name: name.to_owned(),
            salt: credential.salt,
            iterations,
            stored_key: credential.stored_key,
            server_key: credential.server_key,
        };
        match self.request(Body::UpsertUserRequest(request)).await? {
            Body::UpsertUserResponse(UpsertUserResponse { error: None }) => Ok(()),
            Body::UpsertUserResponse(UpsertUserResponse { error: Some(info) }) => Err(ClientError::server(info)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        match self.request(Body::DeleteUserRequest(DeleteUserRequest { name: name.to_owned() })).await? {
            Body::DeleteUserResponse(DeleteUserResponse { error: None }) => Ok(()),
            Body::DeleteUserResponse(DeleteUserResponse { error: Some(info) }) => Err(ClientError::server(info)),
            other => Err(unexpected(other)),
        }
    }

    /// Every user: name, mechanism and iterations (never a key).
    pub async fn list_users(&self) -> Result<Vec<UserInfo>, ClientError> {
        match self.request(Body::ListUsersRequest(ListUsersRequest {})).await? {
            Body::ListUsersResponse(ListUsersResponse { error: None, users }) => Ok(users),
            Body::ListUsersResponse(ListUsersResponse { error: Some(info), .. }) => Err(ClientError::server(info)),
            other => Err(unexpected(other)),
        }
    }

    /// A new idempotent producer identity from any broker: a producer id never handed out before,
    /// and its epoch (0). The broker takes ids from the metadata group in blocks.
    pub async fn init_producer_id(&self) -> Result<(ProducerId, ProducerEpoch), ClientError> {
        match self.request(Body::InitProducerIdRequest(InitProducerIdRequest {})).await? {
            Body::InitProducerIdResponse(InitProducerIdResponse { error: None, producer_id, producer_epoch }) => {
                let epoch = i16::try_from(producer_epoch)
                    .map_err(|_| ClientError::Protocol(format!("producer epoch {producer_epoch} out of range")))?;
                Ok((ProducerId(producer_id), ProducerEpoch(epoch)))
            }
            Body::InitProducerIdResponse(InitProducerIdResponse { error: Some(info), .. }) => {
                Err(ClientError::server(info))
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let body = Body::DeleteTopicRequest(DeleteTopicRequest { name: name.into() });
        let result = self.request(body).await;
        self.forget_leaders(name);
        match result? {
            Body::DeleteTopicResponse(DeleteTopicResponse { error: None }) => Ok(()),
            Body::DeleteTopicResponse(DeleteTopicResponse { error: Some(info) }) => Err(ClientError::server(info)),
            other => Err(unexpected(other)),
        }
    }

    /// Metadata for the named topics (all topics when empty), from any reachable broker. Updates
    /// the client's routing cache.
    pub async fn metadata(&self, topics: &[String]) -> Result<MetadataResponse, ClientError> {
        let body = Body::MetadataRequest(MetadataRequest { topics: topics.to_vec() });
        match self.request_retrying(body, Duration::ZERO).await? {
            Body::MetadataResponse(response) => {
                self.learn(&response);
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
    }

    fn learn(&self, response: &MetadataResponse) {
        let mut routing = self.routing.lock().expect("routing lock");
        for broker in &response.brokers {
            if routing.brokers.len() < BROKERS_KNOWN_MAX || routing.brokers.contains_key(&broker.node_id) {
                routing.brokers.insert(broker.node_id, broker.addr.clone());
            }
        }
        if routing.leaders.len() >= TOPICS_CACHED_MAX {
            routing.leaders.clear();
        }
        for topic in &response.topics {
            if topic.error.is_some() {
                routing.leaders.remove(&topic.name);
                continue;
            }
            let mut leaders = vec![PartitionRoute::default(); topic.partitions.len()];
            for partition in &topic.partitions {
                if let Some(slot) = leaders.get_mut(partition.partition as usize) {
                    *slot = PartitionRoute { leader: partition.leader, leader_epoch: partition.leader_epoch };
                }
            }
            routing.leaders.insert(topic.name.clone(), leaders);
        }
    }

    /// Forgets the cached leaders of `topic`: the next partition request looks them up again.
    pub fn forget_leaders(&self, topic: &str) {
        self.routing.lock().expect("routing lock").leaders.remove(topic);
    }

    /// The address of the leader of `topic`/`partition`, from the cache or fresh metadata.
    pub async fn leader_addr(&self, topic: &str, partition: u32) -> Result<String, ClientError> {
        self.leader_route(topic, partition).await.map(|(addr, _)| addr)
    }

    /// The address of the leader of `topic`/`partition` and the epoch of its leadership, from the
    /// cache or fresh metadata.
    pub async fn leader_route(&self, topic: &str, partition: u32) -> Result<(String, i32), ClientError> {
        let cached = |client: &Client| {
            let routing = client.routing.lock().expect("routing lock");
            let route = routing.leaders.get(topic).map(|leaders| leaders.get(partition as usize).copied());
            route.map(|route| (route, route.and_then(|route| routing.brokers.get(&route.leader).cloned())))
        };
        let found = match cached(self) {
            Some(found) => found,
            None => {
                let response = self.metadata(&[topic.to_owned()]).await?;
                if let Some(info) = response.topics.into_iter().find(|t| t.name == topic).and_then(|t| t.error) {
                    return Err(ClientError::server(info));
                }
                cached(self).ok_or_else(|| ClientError::Protocol(format!("metadata did not describe {topic:?}")))?
            }
        };
        match found {
            (None, _) => Err(ClientError::Server {
                code: ErrorCode::UnknownPartition,
                message: format!("topic {topic:?} has no partition {partition}"),
            }),
            (Some(PartitionRoute { leader: 0, .. }), _) => Err(ClientError::Server {
                code: ErrorCode::NotLeader,
                message: format!("{topic}/{partition} has no leader (its broker is offline)"),
            }),
            (Some(route), None) => Err(ClientError::Server {
                code: ErrorCode::NotLeader,
                message: format!(
                    "the leader of {topic}/{partition} is broker {}, whose address is unknown",
                    route.leader
                ),
            }),
            (Some(route), Some(addr)) => Ok((addr, route.leader_epoch)),
        }
    }

    /// Sends a partition request to the partition's leader, following leader changes (see the
    /// module docs). `body` builds the request for the leader epoch the metadata names. `write`: an
    /// ambiguous outcome is returned, never retried.
    pub async fn request_partition(
        &self,
        topic: &str,
        partition: u32,
        body: impl Fn(i32) -> Body,
        write: bool,
        extra: Duration,
    ) -> Result<Body, ClientError> {
        let mut backoff = self.config.retry_backoff;
        let mut transport_failures = 0;
        let mut last_error = None;
        for attempt in 0..ROUTE_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = self.next_backoff(backoff);
            }
            let (addr, leader_epoch) = match self.leader_route(topic, partition).await {
                Ok(route) => route,
                Err(error @ ClientError::Server { code: ErrorCode::NotLeader, .. }) => {
                    self.forget_leaders(topic);
                    last_error = Some(Err(error));
                    continue;
                }
                Err(error) => return Err(error),
            };
            let result = match self.start(&addr, body(leader_epoch)).await {
                Ok(pending) => self.finish(&addr, pending, extra).await,
                Err(error) => Err(error),
            };
            let retry_transport = transport_failures < self.config.retries;
            match self.partition_retry(topic, partition, &addr, result, write, retry_transport) {
                Ok(result) => return result,
                Err(PartitionRetry { result, transport }) => {
                    transport_failures += u32::from(transport);
                    last_error = Some(*result);
                }
            }
        }
        let result = last_error.expect("at least one attempt");
        if let Ok(response) = &result {
            if response_error(response).is_some_and(|info| is_replica_behind(info.error_code())) {
                // The leader never caught up with the epoch cached here: look it up afresh next time
                // (a topic deleted and created again restarts its epochs).
                self.forget_leaders(topic);
            }
        }
        result
    }

    /// Decides what one attempt of a partition request means: `Ok(result)` is the final outcome;
    /// `Err` asks for another attempt (the topic's leaders already forgotten when they must be looked
    /// up again), carrying the result to return if none is left.
    fn partition_retry(
        &self,
        topic: &str,
        partition: u32,
        addr: &str,
        result: Result<Body, ClientError>,
        write: bool,
        retry_transport: bool,
    ) -> Result<Result<Body, ClientError>, PartitionRetry> {
        match result {
            Ok(response) => match response_error(&response).map(ErrorInfo::error_code) {
                Some(code) if is_misrouted(code) => {
                    tracing::debug!(topic, partition, %addr, ?code, "partition request misrouted; refreshing");
                    self.forget_leaders(topic);
                    Err(PartitionRetry { result: Box::new(Ok(response)), transport: false })
                }
                Some(code) if is_replica_behind(code) => {
                    tracing::debug!(topic, partition, %addr, ?code, "leader behind the metadata; retrying");
                    Err(PartitionRetry { result: Box::new(Ok(response)), transport: false })
                }
                _ => Ok(Ok(response)),
            },
            Err(error @ ClientError::Connect { .. }) | Err(error @ ClientError::Ambiguous(_))
                if !(write && error.is_ambiguous()) && retry_transport =>
            {
                tracing::debug!(topic, partition, %addr, %error, "leader unreachable; refreshing");
                self.forget_leaders(topic);
                Err(PartitionRetry { result: Box::new(Err(error)), transport: true })
            }
            Err(error) => Ok(Err(error)),
        }
    }

    /// Metadata of one topic; `UnknownTopic` as an error.
    pub async fn topic(&self, name: &str) -> Result<TopicInfo, ClientError> {
        let response = self.metadata(&[name.to_owned()]).await?;
        let topic = response.topics.into_iter().next().ok_or_else(|| ClientError::Protocol("empty metadata".into()))?;
        match topic.error {
            Some(info) => Err(ClientError::server(info)),
            None => Ok(topic),
        }
    }

    /// The Raft status of every node, as the first reachable broker sees it (`fan_out`: it asks
    /// the others too).
    pub async fn cluster_status(&self, fan_out: bool) -> Result<ClusterStatusResponse, ClientError> {
        let body = Body::ClusterStatusRequest(ClusterStatusRequest { fan_out });
        match self.request_retrying(body, Duration::ZERO).await? {
            Body::ClusterStatusResponse(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    /// `timestamp_ms` is `LIST_OFFSETS_EARLIEST`, `LIST_OFFSETS_LATEST` or a timestamp; `None` when
    /// no record is at or after the timestamp.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<Option<(Offset, i64)>, ClientError> {
        let body = |_| Body::ListOffsetsRequest(ListOffsetsRequest { topic: topic.into(), partition, timestamp_ms });
        match self.request_partition(topic, partition, body, false, Duration::ZERO).await? {
            Body::ListOffsetsResponse(ListOffsetsResponse { error: Some(info), .. }) => Err(ClientError::server(info)),
            Body::ListOffsetsResponse(ListOffsetsResponse { offset, timestamp_ms, .. }) => {
                Ok((offset >= 0).then_some((Offset(offset), timestamp_ms)))
            }
            other => Err(unexpected(other)),
        }
    }

    /// The replication state of `topic`/`partition` from its leader: high watermark, log ends, and
    /// each replica's log end and lag. Routed and retried like a fetch (it carries the cached leader
    /// epoch); a partition without a leader is a `NotLeader` error once the retries run out.
    pub async fn replica_status(&self, topic: &str, partition: u32) -> Result<PartitionStatus, ClientError> {
        let body = |leader_epoch| {
            Body::ReplicaStatusRequest(ReplicaStatusRequest {
                topic: topic.into(),
                partition,
                leader_epoch: Some(leader_epoch),
            })
        };
        match self.request_partition(topic, partition, body, false, Duration::ZERO).await? {
            Body::ReplicaStatusResponse(ReplicaStatusResponse { error: Some(info), .. }) => {
                Err(ClientError::server(info))
            }
            Body::ReplicaStatusResponse(response) => PartitionStatus::from_wire(response),
            other => Err(unexpected(other)),
        }
    }

    /// Fetches records from `offset`, waiting up to `wait_max` for some to exist. Every batch's CRC
    /// is verified; records before `offset` in the first batch are dropped. The request carries the
    /// leader epoch of the cached metadata (see "Leader epochs" in the module docs).
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: Offset,
        bytes_max: u32,
        wait_max: Duration,
    ) -> Result<Fetched, ClientError> {
        let body = |leader_epoch| {
            Body::FetchRequest(FetchRequest {
                topic: topic.into(),
                partition,
                offset: offset.0,
                max_bytes: bytes_max,
                max_wait_ms: wait_max.as_millis().min(u32::MAX as u128) as u32,
                min_bytes: 1,
                leader_epoch: Some(leader_epoch),
            })
        };
        match self.request_partition(topic, partition, body, false, wait_max).await? {
            Body::FetchResponse(FetchResponse { error: Some(info), .. }) => Err(ClientError::server(info)),
            Body::FetchResponse(response) => {
                let (records, next_offset) = decode_batches(response.records, offset)?;
                Ok(Fetched {
                    high_watermark: Offset(response.high_watermark),
                    log_start: Offset(response.log_start_offset),
                    records,
                    next_offset,
                })
            }
            other => Err(unexpected(other)),
        }
    }
}

/// Decodes concatenated batches (verifying each CRC) into records at or after `from`.
pub fn decode_records(bytes: Bytes, from: Offset) -> Result<Vec<StoredRecord>, ClientError> {
    Ok(decode_batches(bytes, from)?.0)
}

/// Decodes concatenated batches (verifying each CRC) into records at or after `from`, and the
/// offset after the last batch (at least `from`).
pub fn decode_batches(mut bytes: Bytes, from: Offset) -> Result<(Vec<StoredRecord>, Offset), ClientError> {
    let mut records = Vec::new();
    let mut next = from;
    while let Some(batch) = Batch::split_first(&mut bytes).map_err(|error| ClientError::Corrupt(error.to_string()))? {
        for record in batch.records() {
            let record = record.map_err(|error| ClientError::Corrupt(error.to_string()))?;
            if record.offset >= from {
                records.push(record);
            }
        }
        next = next.max(batch.next_offset());
    }
    Ok((records, next))
}

/// Another attempt of a partition request is due: the result to return if none is left, and whether
/// the attempt failed in transport (those are bounded by `ClientConfig::retries`).
struct PartitionRetry {
    /// Boxed: a `Body` is large, and this travels in a `Result`'s error.
    result: Box<Result<Body, ClientError>>,
    transport: bool,
}

fn unexpected(body: Body) -> ClientError {
    ClientError::Protocol(format!("unexpected response {body:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> ReplicaStatusResponse {
        ReplicaStatusResponse {
            error: None,
            leader: 1,
            leader_epoch: 2,
            high_watermark: 5,
            log_start_offset: 0,
            log_end_offset: 8,
            durable_end_offset: 8,
            replicas: vec![
                ReplicaLogInfo { node_id: 1, log_end_offset: Some(8), lag: Some(0), in_isr: true },
                ReplicaLogInfo { node_id: 2, log_end_offset: Some(5), lag: Some(3), in_isr: true },
                ReplicaLogInfo { node_id: 3, log_end_offset: None, lag: None, in_isr: false },
            ],
            storage_failed: false,
            log_size_bytes: 300,
        }
    }

    #[test]
    fn a_consistent_replica_status_is_taken_as_sent() {
        let status = PartitionStatus::from_wire(response()).unwrap();
        assert_eq!((status.log_start, status.high_watermark, status.log_end), (Offset(0), Offset(5), Offset(8)));
        let ends: Vec<_> =
            status.replicas.iter().map(|replica| (replica.node_id, replica.log_end, replica.lag)).collect();
        assert_eq!(ends, vec![(1, Some(Offset(8)), Some(0)), (2, Some(Offset(5)), Some(3)), (3, None, None)]);
    }

    #[test]
    fn an_inconsistent_replica_status_is_a_protocol_error() {
        type Break = Box<dyn Fn(&mut ReplicaStatusResponse)>;
        let malformed: Vec<(&str, Break)> = vec![
            ("HW past the log end", Box::new(|r| r.high_watermark = 9)),
            ("HW below the log start", Box::new(|r| r.log_start_offset = 6)),
            ("negative log start", Box::new(|r| r.log_start_offset = -1)),
            ("durable end past the log end", Box::new(|r| r.durable_end_offset = 9)),
            ("a replica ahead of the leader", Box::new(|r| r.replicas[1].log_end_offset = Some(9))),
            ("a negative replica log end", Box::new(|r| r.replicas[1].log_end_offset = Some(-1))),
            ("a lag that does not match", Box::new(|r| r.replicas[1].lag = Some(2))),
            ("a lag without a log end", Box::new(|r| r.replicas[2].lag = Some(0))),
            ("a log end without a lag", Box::new(|r| r.replicas[1].lag = None)),
        ];
        for (what, break_it) in malformed {
            let mut response = response();
            break_it(&mut response);
            let result = PartitionStatus::from_wire(response);
            assert!(matches!(result, Err(ClientError::Protocol(_))), "{what}: {result:?}");
        }
    }
}
