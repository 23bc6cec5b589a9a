//! The broker's Prometheus metrics (issue 14, ADR 0027): one [`Metrics`] per broker, shared by its
//! connections, partition actors and the admin listener that serves `/metrics`.
//!
//! Two kinds of numbers:
//! - **events**, counted where they happen: requests and their latency per API and protocol,
//!   rejected requests by reason, connections, produced and fetched bytes, fsync latency and how many
//!   offsets one fsync made durable (group commit);
//! - **state**, read when scraped: each replica's offsets and ISR (every partition actor keeps its
//!   [`ReplicaGauges`] current with a few atomic stores per loop turn, so a scrape sends no message
//!   and opens no lazily-closed partition), and what the server reports in a [`BrokerView`] (Raft
//!   term, commit and applied index, leader changes, the cluster's offline partitions), and the
//!   consumer groups' lag the admin listener computes.
//!
//! Names and units follow Prometheus conventions (`keel_` prefix, `_total` counters, `_seconds`,
//! `_bytes`); the text is OpenMetrics 1.0, which Prometheus scrapes natively. Nothing here decides
//! anything: the simulation runs the same counting code, and no metric is ever read back by the
//! broker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::protocol::ErrorCode;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    protocol: &'static str,
    api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    protocol: &'static str,
    api: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
    topic: String,
    partition: u32,
}

/// The protocol a request or connection speaks, as a label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Native,
    Kafka,
}

impl Wire {
    fn label(self) -> &'static str {
        match self {
            Wire::Native => "native",
            Wire::Kafka => "kafka",
        }
    }
}

/// One replica's state, kept current by its partition actor and read by a scrape.
#[derive(Debug, Default)]
pub struct ReplicaGauges {
    /// The actor has its log open (a lazily-opened leader has not yet).
    pub open: AtomicBool,
    pub leader: AtomicBool,
    pub log_start: AtomicI64,
    pub log_end: AtomicI64,
    pub high_watermark: AtomicI64,
    pub isr: AtomicI64,
    pub replicas: AtomicI64,
    pub storage_failed: AtomicBool,
}

impl ReplicaGauges {
    /// Stores one consistent-enough reading (each field is read alone by a scrape).
    pub fn publish(&self, reading: &ReplicaReading) {
        self.open.store(reading.open, Ordering::Relaxed);
        self.leader.store(reading.leader, Ordering::Relaxed);
        self.log_start.store(reading.log_start, Ordering::Relaxed);
        self.log_end.store(reading.log_end, Ordering::Relaxed);
        self.high_watermark.store(reading.high_watermark, Ordering::Relaxed);
        self.isr.store(reading.isr, Ordering::Relaxed);
        self.replicas.store(reading.replicas, Ordering::Relaxed);
        self.storage_failed.store(reading.storage_failed, Ordering::Relaxed);
    }

    pub fn read(&self) -> ReplicaReading {
        ReplicaReading {
            open: self.open.load(Ordering::Relaxed),
            leader: self.leader.load(Ordering::Relaxed),
            log_start: self.log_start.load(Ordering::Relaxed),
            log_end: self.log_end.load(Ordering::Relaxed),
            high_watermark: self.high_watermark.load(Ordering::Relaxed),
            isr: self.isr.load(Ordering::Relaxed),
            replicas: self.replicas.load(Ordering::Relaxed),
            storage_failed: self.storage_failed.load(Ordering::Relaxed),
        }
    }
}

/// What [`ReplicaGauges`] hold, as plain values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaReading {
    pub open: bool,
    pub leader: bool,
    pub log_start: i64,
    pub log_end: i64,
    pub high_watermark: i64,
    pub isr: i64,
    pub replicas: i64,
    pub storage_failed: bool,
}

/// What the server reports at a scrape (its metadata node and applied metadata).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerView {
    pub node_id: u64,
    /// The Raft role as the node names it ("leader", "follower", ...).
    pub raft_role: String,
    pub raft_term: u64,
    pub raft_commit_index: u64,
    pub raft_applied_index: u64,
    /// The metadata leader this node knows of.
    pub raft_leader: Option<u64>,
    /// Leader changes this node has seen since it started.
    pub raft_leader_changes: u64,
    /// This incarnation's registration has applied and its controller lease holds.
    pub registered: bool,
    pub holds_lease: bool,
    /// Replicas the applied metadata assigns to this broker, and how many of those run here.
    pub replicas_assigned: u64,
    pub replicas_running: u64,
    /// Partitions of the whole cluster without a leader, and with an ISR smaller than their
    /// replicas, in this broker's applied metadata.
    pub offline_partitions: u64,
    pub under_replicated_partitions: u64,
}

/// One consumer group partition's lag, for [`Metrics::set_group_lag`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupLag {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    pub lag: i64,
}

/// Per-replica gauges, set from the [`ReplicaGauges`] at each scrape.
struct PartitionFamilies {
    log_start: Family<PartitionLabels, Gauge>,
    log_end: Family<PartitionLabels, Gauge>,
    high_watermark: Family<PartitionLabels, Gauge>,
    isr: Family<PartitionLabels, Gauge>,
    replicas: Family<PartitionLabels, Gauge>,
    leader: Family<PartitionLabels, Gauge>,
    under_replicated: Family<PartitionLabels, Gauge>,
}

/// Gauges from the [`BrokerView`].
#[derive(Default)]
struct BrokerGauges {
    raft_term: Gauge,
    raft_commit_index: Gauge,
    raft_applied_index: Gauge,
    raft_leader: Gauge,
    raft_is_leader: Gauge,
    raft_leader_changes: Counter,
    registered: Gauge,
    replicas_hosted: Gauge,
    replicas_open: Gauge,
    partitions_led: Gauge,
    partitions_led_under_replicated: Gauge,
    offline_partitions: Gauge,
    under_replicated_partitions: Gauge,
}

/// The broker's metrics. Cheap to update from any task; `encode` renders them all.
pub struct Metrics {
    registry: Registry,
    requests: Family<ApiLabels, Counter>,
    request_seconds: Family<ApiLabels, Histogram>,
    rejected: Family<RejectLabels, Counter>,
    connections: Family<ProtocolLabels, Gauge>,
    connections_accepted: Family<ProtocolLabels, Counter>,
    connections_refused: Counter,
    handshakes_failed: Family<ProtocolLabels, Counter>,
    produce_bytes: Family<TopicLabels, Counter>,
    produce_records: Family<TopicLabels, Counter>,
    fetch_bytes: Family<TopicLabels, Counter>,
    fsync_seconds: Histogram,
    group_commit_offsets: Histogram,
    partitions: PartitionFamilies,
    broker: BrokerGauges,
    group_lag: Family<GroupLabels, Gauge>,
    /// Every running replica's gauges, by topic and partition.
    replicas: Mutex<BTreeMap<(String, u32), Arc<ReplicaGauges>>>,
    /// One scrape at a time refreshes the state gauges.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Latency buckets: 100 µs doubling to about 6.5 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

fn gauge_family() -> Family<PartitionLabels, Gauge> {
    Family::default()
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("keel"),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            rejected: Family::default(),
            connections: Family::default(),
            connections_accepted: Family::default(),
            connections_refused: Counter::default(),
            handshakes_failed: Family::default(),
            produce_bytes: Family::default(),
            produce_records: Family::default(),
            fetch_bytes: Family::default(),
            fsync_seconds: latency_histogram(),
            group_commit_offsets: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            partitions: PartitionFamilies {
                log_start: gauge_family(),
                log_end: gauge_family(),
                high_watermark: gauge_family(),
                isr: gauge_family(),
                replicas: gauge_family(),
                leader: gauge_family(),
                under_replicated: gauge_family(),
            },
            broker: BrokerGauges::default(),
            group_lag: Family::default(),
            replicas: Mutex::new(BTreeMap::new()),
            scrape: Mutex::new(()),
        };
        metrics.register_events();
        metrics.register_state();
        metrics
    }

    fn register_events(&mut self) {
        let r = &mut self.registry;
        r.register("requests", "Requests served, by protocol and API", self.requests.clone());
        r.register(
            "request_duration_seconds",
            "Time from reading a request to its response being ready, by protocol and API",
            self.request_seconds.clone(),
        );
        r.register(
            "requests_rejected",
            "Requests answered with an error, by protocol, API and reason (the error code)",
            self.rejected.clone(),
        );
        r.register("connections", "Open client and peer connections, by protocol", self.connections.clone());
        r.register("connections_accepted", "Connections accepted, by protocol", self.connections_accepted.clone());
        r.register(
            "connections_refused",
            "Connections refused because connections_max were open",
            self.connections_refused.clone(),
        );
        r.register(
            "tls_handshakes_failed",
            "TLS handshakes that failed (bad or missing certificate, not TLS, timeout), by protocol",
            self.handshakes_failed.clone(),
        );
        r.register("produce_bytes", "Record batch bytes appended by producers, by topic", self.produce_bytes.clone());
        r.register("produce_records", "Records appended by producers, by topic", self.produce_records.clone());
        r.register("fetch_bytes", "Record batch bytes returned to consumers, by topic", self.fetch_bytes.clone());
        r.register("fsync_duration_seconds", "Time one partition log sync took", self.fsync_seconds.clone());
        r.register(
            "group_commit_offsets",
            "Offsets one partition log sync made durable (group commit)",
            self.group_commit_offsets.clone(),
        );
    }

    fn register_state(&mut self) {
        let r = &mut self.registry;
        let p = &self.partitions;
        r.register("partition_log_start_offset", "A replica's log start offset", p.log_start.clone());
        r.register("partition_log_end_offset", "A replica's log end offset", p.log_end.clone());
        r.register("partition_high_watermark", "A replica's high watermark", p.high_watermark.clone());
        r.register("partition_isr_size", "In-sync replicas of the partition, as this replica knows", p.isr.clone());
        r.register("partition_replicas", "Replicas of the partition", p.replicas.clone());
        r.register("partition_leader", "1 when this broker leads the partition", p.leader.clone());
        r.register(
            "partition_under_replicated",
            "1 when this broker leads the partition and its ISR is smaller than its replicas",
            p.under_replicated.clone(),
        );
        let b = &self.broker;
        r.register("raft_term", "The metadata Raft group's term at this node", b.raft_term.clone());
        r.register("raft_commit_index", "The metadata Raft log's commit index", b.raft_commit_index.clone());
        r.register("raft_applied_index", "The metadata Raft log's applied index", b.raft_applied_index.clone());
        r.register("raft_leader", "The metadata leader's node id (0 when none is known)", b.raft_leader.clone());
        r.register("raft_is_leader", "1 when this node leads the metadata group", b.raft_is_leader.clone());
        r.register("raft_leader_changes", "Metadata leader changes seen by this node", b.raft_leader_changes.clone());
        r.register("broker_registered", "1 when this broker is registered and holds its lease", b.registered.clone());
        r.register("replicas_hosted", "Partition replicas running on this broker", b.replicas_hosted.clone());
        r.register("replicas_open", "Replicas with their log open (the others open on use)", b.replicas_open.clone());
        r.register("partitions_led", "Partitions this broker leads", b.partitions_led.clone());
        r.register(
            "partitions_led_under_replicated",
            "Partitions this broker leads whose ISR is smaller than their replicas",
            b.partitions_led_under_replicated.clone(),
        );
        r.register(
            "cluster_offline_partitions",
            "Partitions of the cluster without a leader (this broker's applied metadata)",
            b.offline_partitions.clone(),
        );
        r.register(
            "cluster_under_replicated_partitions",
            "Partitions of the cluster with an ISR smaller than their replicas (this broker's applied metadata)",
            b.under_replicated_partitions.clone(),
        );
        r.register(
            "consumer_group_lag",
            "Offsets between a group's committed offset and the partition's log end (groups this broker coordinates)",
            self.group_lag.clone(),
        );
    }

    /// Counts one answered request and its latency; `error` is the code it was answered with.
    pub fn request(&self, wire: Wire, api: &'static str, took: Duration, error: Option<ErrorCode>) {
        let labels = ApiLabels { protocol: wire.label(), api };
        self.requests.get_or_create(&labels).inc();
        self.request_seconds.get_or_create(&labels).observe(took.as_secs_f64());
        if let Some(code) = error {
            self.rejected(wire, api, code);
        }
    }

    /// Counts one request refused with `code`.
    pub fn rejected(&self, wire: Wire, api: &'static str, code: ErrorCode) {
        let labels = RejectLabels { protocol: wire.label(), api, reason: reason_label(code) };
        self.rejected.get_or_create(&labels).inc();
    }

    /// Counts an accepted connection; the gauge of open ones falls when the guard drops.
    pub fn connection_opened(self: &Arc<Self>, wire: Wire) -> ConnectionGuard {
        let labels = ProtocolLabels { protocol: wire.label() };
        self.connections_accepted.get_or_create(&labels).inc();
        self.connections.get_or_create(&labels).inc();
        ConnectionGuard { metrics: self.clone(), wire }
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn handshake_failed(&self, wire: Wire) {
        self.handshakes_failed.get_or_create(&ProtocolLabels { protocol: wire.label() }).inc();
    }

    /// The counters a partition of `topic` adds its produced and fetched bytes to (cloned once per
    /// actor: counting then costs one atomic add).
    pub fn topic_counters(&self, topic: &str) -> TopicCounters {
        let labels = TopicLabels { topic: topic.to_owned() };
        TopicCounters {
            produce_bytes: self.produce_bytes.get_or_create(&labels).clone(),
            produce_records: self.produce_records.get_or_create(&labels).clone(),
            fetch_bytes: self.fetch_bytes.get_or_create(&labels).clone(),
        }
    }

    /// One partition log sync: how long it took and how many offsets it made durable.
    pub fn synced(&self, took: Duration, offsets: u64) {
        self.fsync_seconds.observe(took.as_secs_f64());
        self.group_commit_offsets.observe(offsets as f64);
    }

    /// The gauges a replica's actor keeps current, registered until [`Metrics::remove_replica`].
    pub fn replica(&self, topic: &str, partition: u32) -> Arc<ReplicaGauges> {
        let gauges = Arc::new(ReplicaGauges::default());
        self.replicas_lock().insert((topic.to_owned(), partition), gauges.clone());
        gauges
    }

    /// Forgets a stopped replica's gauges (unless a newer actor of it registered since).
    pub fn remove_replica(&self, topic: &str, partition: u32, gauges: &Arc<ReplicaGauges>) {
        let mut replicas = self.replicas_lock();
        let key = (topic.to_owned(), partition);
        if replicas.get(&key).is_some_and(|current| Arc::ptr_eq(current, gauges)) {
            replicas.remove(&key);
        }
    }

    fn replicas_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, u32), Arc<ReplicaGauges>>> {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every running replica's reading, by topic and partition.
    pub fn replica_readings(&self) -> Vec<((String, u32), ReplicaReading)> {
        self.replicas_lock().iter().map(|(key, gauges)| (key.clone(), gauges.read())).collect()
    }

    /// Replaces the consumer groups' lag series with `lags`.
    pub fn set_group_lag(&self, lags: &[GroupLag]) {
        self.group_lag.clear();
        for lag in lags {
            let labels = GroupLabels { group: lag.group.clone(), topic: lag.topic.clone(), partition: lag.partition };
            self.group_lag.get_or_create(&labels).set(lag.lag);
        }
    }

    /// Renders every metric, with the state gauges refreshed from `view` and the replicas' gauges.
    pub fn encode(&self, view: &BrokerView) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh_partitions();
        self.refresh_broker(view);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    fn refresh_partitions(&self) {
        let p = &self.partitions;
        for family in [&p.log_start, &p.log_end, &p.high_watermark, &p.isr, &p.replicas, &p.leader, &p.under_replicated]
        {
            family.clear();
        }
        let readings = self.replica_readings();
        let (mut open, mut led, mut led_under) = (0, 0, 0);
        for ((topic, partition), reading) in &readings {
            let labels = PartitionLabels { topic: topic.clone(), partition: *partition };
            // A replica that has not opened its log yet (leaders open on first use) reports the
            // controller's decision it started from, and no offsets.
            let under = reading.leader && reading.isr < reading.replicas;
            led += i64::from(reading.leader);
            led_under += i64::from(under);
            p.replicas.get_or_create(&labels).set(reading.replicas);
            p.leader.get_or_create(&labels).set(i64::from(reading.leader));
            p.isr.get_or_create(&labels).set(reading.isr);
            p.under_replicated.get_or_create(&labels).set(i64::from(under));
            if reading.open {
                open += 1;
                p.log_start.get_or_create(&labels).set(reading.log_start);
                p.log_end.get_or_create(&labels).set(reading.log_end);
                p.high_watermark.get_or_create(&labels).set(reading.high_watermark);
            }
        }
        let b = &self.broker;
        b.replicas_hosted.set(readings.len() as i64);
        b.replicas_open.set(open);
        b.partitions_led.set(led);
        b.partitions_led_under_replicated.set(led_under);
    }

    fn refresh_broker(&self, view: &BrokerView) {
        let b = &self.broker;
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        b.raft_term.set(gauge(view.raft_term));
        b.raft_commit_index.set(gauge(view.raft_commit_index));
        b.raft_applied_index.set(gauge(view.raft_applied_index));
        b.raft_leader.set(gauge(view.raft_leader.unwrap_or(0)));
        b.raft_is_leader.set(i64::from(view.raft_leader == Some(view.node_id)));
        let seen = b.raft_leader_changes.get();
        b.raft_leader_changes.inc_by(view.raft_leader_changes.saturating_sub(seen));
        b.registered.set(i64::from(view.registered && view.holds_lease));
        b.offline_partitions.set(gauge(view.offline_partitions));
        b.under_replicated_partitions.set(gauge(view.under_replicated_partitions));
    }
}

/// The per-topic counters one partition actor adds to.
#[derive(Clone, Debug, Default)]
pub struct TopicCounters {
    pub produce_bytes: Counter,
    pub produce_records: Counter,
    pub fetch_bytes: Counter,
}

/// Keeps one connection counted in `keel_connections`.
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    wire: Wire,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let labels = ProtocolLabels { protocol: self.wire.label() };
        self.metrics.connections.get_or_create(&labels).dec();
    }
}

/// An error code as a label value: `NotLeader` becomes `not_leader`.
pub fn reason_label(code: ErrorCode) -> String {
    snake_case(&format!("{code:?}"))
}

/// `CamelCase` to `snake_case`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_snake_case() {
        assert_eq!(reason_label(ErrorCode::NotLeader), "not_leader");
        assert_eq!(snake_case("ApiVersions"), "api_versions");
    }

    #[test]
    fn a_scrape_shows_events_and_state() {
        let metrics = Arc::new(Metrics::new());
        metrics.request(Wire::Native, "produce", Duration::from_millis(3), None);
        metrics.request(Wire::Kafka, "produce", Duration::from_millis(1), Some(ErrorCode::NotLeader));
        let guard = metrics.connection_opened(Wire::Kafka);
        let counters = metrics.topic_counters("t");
        counters.produce_bytes.inc_by(100);
        let gauges = metrics.replica("t", 0);
        gauges.publish(&ReplicaReading {
            open: true,
            leader: true,
            log_end: 7,
            high_watermark: 5,
            isr: 1,
            replicas: 3,
            ..ReplicaReading::default()
        });
        let view =
            BrokerView { node_id: 1, raft_leader: Some(1), raft_term: 4, raft_leader_changes: 2, ..Default::default() };
        let text = metrics.encode(&view);
        for line in [
            "keel_requests_total{protocol=\"native\",api=\"produce\"} 1",
            "keel_requests_rejected_total{protocol=\"kafka\",api=\"produce\",reason=\"not_leader\"} 1",
            "keel_connections{protocol=\"kafka\"} 1",
            "keel_produce_bytes_total{topic=\"t\"} 100",
            "keel_partition_high_watermark{topic=\"t\",partition=\"0\"} 5",
            "keel_partition_under_replicated{topic=\"t\",partition=\"0\"} 1",
            "keel_partitions_led_under_replicated 1",
            "keel_raft_is_leader 1",
            "keel_raft_term 4",
            "keel_raft_leader_changes_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        drop(guard);
        metrics.remove_replica("t", 0, &gauges);
        let text = metrics.encode(&BrokerView { raft_leader_changes: 3, ..view });
        assert!(text.contains("keel_connections{protocol=\"kafka\"} 0"), "{text}");
        assert!(!text.contains("keel_partition_high_watermark{"), "a removed replica is gone: {text}");
        assert!(text.contains("keel_raft_leader_changes_total 3"), "{text}");
    }
}
