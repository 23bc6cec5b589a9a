//! Broker configuration: defaults, a TOML file (`--config`), and flags that override both.
//!
//! ```toml
//! node_id = 1
//! listen = "127.0.0.1:9400"
//! data_dir = "./keel-data"
//! fsync = "always"            # or "never": faster, loses acked records on power loss
//! segment_bytes_max = 134217728
//! clean_close_min_bytes = 1048576   # logs this big skip the scan after a graceful stop
//! connections_max = 10000
//! open_files_max = 8192       # absent: derived from the open-file limit at start
//! partitions_max = 20000
//! # The metadata Raft group: every voter and its address (this node included). Absent: a
//! # one-voter cluster of this node alone.
//! peers = { 1 = "127.0.0.1:9401", 2 = "127.0.0.1:9402", 3 = "127.0.0.1:9403" }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::partition::FsyncPolicy;
use crate::types::NodeId;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9400";
pub const DEFAULT_DATA_DIR: &str = "./keel-data";
/// The fewest partition files a broker keeps open (`open_files_max`): a partition's active segment
/// (3 files), its epoch cache and checkpoint, with room for a roll.
pub const OPEN_FILES_MIN: usize = 16;
/// Descriptors kept beside the file budget and the connections: stdio, the listener, the metadata
/// store (RocksDB, `max_open_files` bounded), directory listings and syncs, the blocking pool.
pub const OPEN_FILES_RESERVE: usize = 256;
/// `open_files_max` when nothing resolved it (the simulation, tests).
pub const OPEN_FILES_MAX_DEFAULT: usize = 4096;

/// The descriptor budget a broker runs with: resolved at start from its open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileBudget {
    /// The process's open-file limit.
    pub limit: u64,
    pub connections_max: usize,
    pub open_files_max: usize,
    /// Why `connections_max` or `open_files_max` differ from what was asked, for the start-up log.
    pub lowered: Option<&'static str>,
}

impl BrokerConfig {
    /// Splits the open-file `limit` between the partition files, the connections and a reserve.
    /// An explicit `open_files_max` is kept; without one, `connections_max` (whether set or the
    /// default) is lowered to half of what the reserve leaves when the rest would leave fewer than
    /// `OPEN_FILES_MIN` files, and the start-up log says so.
    pub fn file_budget(&self, limit: u64) -> Result<FileBudget, ConfigError> {
        let usable = usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(OPEN_FILES_RESERVE);
        let mut budget = FileBudget { limit, connections_max: self.connections_max, open_files_max: 0, lowered: None };
        let room = usable.saturating_sub(self.connections_max);
        budget.open_files_max = match self.open_files_max {
            Some(files) => files,
            None if room >= OPEN_FILES_MIN => room,
            None => {
                budget.connections_max = (usable / 2).max(1);
                budget.lowered = Some("the open-file limit cannot hold connections_max connections beside the files");
                usable - budget.connections_max
            }
        };
        if budget.open_files_max < OPEN_FILES_MIN {
            return Err(ConfigError::Invalid(format!(
                "the open-file limit {limit} leaves {} partition files; at least {OPEN_FILES_MIN} are needed \
                 (raise the limit: ulimit -n)",
                budget.open_files_max
            )));
        }
        if budget.lowered.is_none() && budget.connections_max + budget.open_files_max > usable {
            budget.lowered = Some("connections_max + open_files_max exceed the open-file limit: accepts may fail");
        }
        Ok(budget)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub node_id: NodeId,
    pub listen: SocketAddr,
    /// Address clients are told to use for this broker (defaults to `listen`).
    pub advertised_addr: Option<String>,
    /// The Kafka wire listener (ADR 0026): Kafka clients (librdkafka, kafka-python, kcat) get the
    /// same partitions, metadata and groups here. Off unless set.
    pub kafka_listen: Option<SocketAddr>,
    /// Address Kafka clients are told to use for this broker (defaults to `kafka_listen`).
    pub kafka_advertised_addr: Option<String>,
    /// The admin HTTP listener (ADR 0027): `/metrics`, `/healthz`, `/readyz`, `/v1/...` and the web
    /// console. Off unless set.
    pub admin_listen: Option<SocketAddr>,
    /// TLS (ADR 0028): this broker's certificate chain and private key (PEM). With both set, the
    /// native and Kafka listeners speak TLS only, and this broker dials its peers with TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The CA bundle (PEM) this broker trusts: its peers' certificates are checked against it, and
    /// with `tls_client_auth` the clients' too. Needed for a cluster of more than one node.
    pub tls_ca: Option<PathBuf>,
    /// Every client (and peer) must present a certificate `tls_ca` vouches for (mutual TLS).
    pub tls_client_auth: bool,
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub segment_bytes_max: u64,
    /// A graceful stop leaves a partition whose log holds at least this many bytes a clean-close
    /// record, so its next open skips the scan of its log (ADR 0025); smaller logs are scanned,
    /// which costs less than the record's fsyncs at the stop. 0: every partition gets one.
    pub clean_close_min_bytes: u64,
    /// Open connections beyond this are refused (closed at once). Each holds a file descriptor, so
    /// the open-file limit must leave room for them beside `open_files_max` (see `keel broker`'s
    /// start-up line `file budget`). When `open_files_max` is not set and the limit cannot hold
    /// this many connections beside 16 partition files, the broker lowers it at start to half of
    /// what its reserve leaves, and says so.
    pub connections_max: usize,
    /// Partition files (segments, indexes, checkpoints) open at once, in a cache that closes the
    /// least recently used (issue 15). Absent: derived at start from the process's open-file limit
    /// (`getrlimit`, raised to the hard limit) less `connections_max` and a reserve.
    pub open_files_max: Option<usize>,
    /// Partition replicas this broker may host; a topic create that would place more here is
    /// refused with `TooManyPartitions` instead of leaving partitions that cannot open.
    pub partitions_max: usize,
    /// Requests one connection may have in flight before the server stops reading from it.
    pub requests_in_flight_per_connection_max: usize,
    /// Topics in the cluster beyond which this broker refuses to create more (at most the metadata
    /// state machine's `TOPICS_MAX`).
    pub topics_max: usize,
    /// Partitions per topic this broker lets a create ask for (at most the metadata state machine's
    /// `PARTITIONS_PER_TOPIC_MAX`, 10,000).
    pub partitions_per_topic_max: u32,
    /// Voters of the metadata Raft group by node id (TOML keys are strings: `"1" = "host:port"`).
    /// Empty means a one-voter cluster of this node at its advertised address.
    pub peers: BTreeMap<String, String>,
    /// A broker that has not heartbeated for this long is fenced (not given new replicas).
    pub broker_fence_after_ms: u64,
    /// Applied metadata entries between snapshots (the Raft log is compacted at each snapshot).
    pub metadata_snapshot_interval_entries: u64,
    /// How often each partition replica applies its topic's retention (ADR 0019).
    pub retention_check_interval_ms: u64,
    /// Partitions of `__consumer_offsets` when the first consumer group creates it (ADR 0020).
    pub offsets_topic_partitions: u32,
    /// Its replication factor (fewer when fewer brokers are alive then).
    pub offsets_topic_replication: u32,
    /// Its segment size: the topic is compacted, and compaction cleans sealed segments only.
    pub offsets_topic_segment_bytes: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: NodeId(1),
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            advertised_addr: None,
            kafka_listen: None,
            kafka_advertised_addr: None,
            admin_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_client_auth: false,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            fsync: FsyncPolicy::Always,
            segment_bytes_max: 128 * 1024 * 1024,
            clean_close_min_bytes: crate::log::clean_close::CLEAN_CLOSE_MIN_BYTES_DEFAULT,
            connections_max: 10_000,
            open_files_max: None,
            partitions_max: 20_000,
            requests_in_flight_per_connection_max: 256,
            topics_max: 10_000,
            partitions_per_topic_max: 1024,
            peers: BTreeMap::new(),
            broker_fence_after_ms: 6_000,
            metadata_snapshot_interval_entries: 1_000,
            retention_check_interval_ms: crate::partition::replica::RETENTION_CHECK_INTERVAL_MS_DEFAULT,
            offsets_topic_partitions: crate::group::OFFSETS_TOPIC_PARTITIONS,
            offsets_topic_replication: crate::group::OFFSETS_TOPIC_REPLICATION,
            offsets_topic_segment_bytes: crate::group::OFFSETS_TOPIC_SEGMENT_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// A broker's TLS, built from its configuration's PEM files.
#[derive(Clone, Debug)]
pub struct BrokerTls {
    /// What the native and Kafka listeners serve.
    pub server: std::sync::Arc<rustls::ServerConfig>,
    /// What it dials its peers with (and its own admin client): `tls_ca` as the roots, its own
    /// certificate as the client certificate. `None` without `tls_ca` (a single node).
    pub peers: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl BrokerConfig {
    /// Reads a TOML config file; every key is optional and unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        BrokerConfig::from_toml(&text).map_err(|source| match source {
            ConfigError::Parse { source, .. } => ConfigError::Parse { path: path.to_owned(), source },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<BrokerConfig, ConfigError> {
        let config: BrokerConfig = toml::from_str(text)
            .map_err(|source| ConfigError::Parse { path: PathBuf::new(), source: Box::new(source) })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_kafka()?;
        self.validate_tls()?;
        if self.segment_bytes_max < 4096 {
            return Err(ConfigError::Invalid("segment_bytes_max must be at least 4096".into()));
        }
        if self.connections_max == 0 || self.requests_in_flight_per_connection_max == 0 {
            return Err(ConfigError::Invalid("connection limits must be positive".into()));
        }
        if self.open_files_max.is_some_and(|files| files < OPEN_FILES_MIN) {
            return Err(ConfigError::Invalid(format!("open_files_max must be at least {OPEN_FILES_MIN}")));
        }
        if self.partitions_max == 0 {
            return Err(ConfigError::Invalid("partitions_max must be positive".into()));
        }
        if self.metadata_snapshot_interval_entries == 0 {
            return Err(ConfigError::Invalid("metadata_snapshot_interval_entries must be positive".into()));
        }
        if self.retention_check_interval_ms == 0 {
            return Err(ConfigError::Invalid("retention_check_interval_ms must be positive".into()));
        }
        let segment_bytes = crate::meta::state::SEGMENT_BYTES_MIN..=crate::meta::state::SEGMENT_BYTES_MAX;
        if !segment_bytes.contains(&self.offsets_topic_segment_bytes) {
            return Err(ConfigError::Invalid(format!(
                "offsets_topic_segment_bytes must be {}..={}",
                segment_bytes.start(),
                segment_bytes.end()
            )));
        }
        if self.offsets_topic_partitions == 0 || self.offsets_topic_partitions > self.partitions_per_topic_max {
            let most = self.partitions_per_topic_max;
            return Err(ConfigError::Invalid(format!(
                "offsets_topic_partitions must be 1..={most} (partitions_per_topic_max)"
            )));
        }
        if self.offsets_topic_replication == 0 {
            return Err(ConfigError::Invalid("offsets_topic_replication must be positive".into()));
        }
        if self.node_id == NodeId(0) {
            return Err(ConfigError::Invalid("node_id must be positive (raft ids start at 1)".into()));
        }
        self.voters("")?;
        if self.partitions_per_topic_max == 0 || self.topics_max == 0 {
            return Err(ConfigError::Invalid("topic limits must be positive".into()));
        }
        if self.partitions_per_topic_max > crate::meta::state::PARTITIONS_PER_TOPIC_MAX {
            let most = crate::meta::state::PARTITIONS_PER_TOPIC_MAX;
            return Err(ConfigError::Invalid(format!(
                "partitions_per_topic_max is at most {most}, got {}",
                self.partitions_per_topic_max
            )));
        }
        if self.topics_max > crate::meta::state::TOPICS_MAX {
            let most = crate::meta::state::TOPICS_MAX;
            return Err(ConfigError::Invalid(format!("topics_max is at most {most}, got {}", self.topics_max)));
        }
        Ok(())
    }

    /// The Kafka listener's settings (ADR 0026): an advertised address needs the listener, and
    /// must be `host:port` (Kafka's metadata carries the two apart); the listener needs its own port.
    fn validate_kafka(&self) -> Result<(), ConfigError> {
        match (&self.kafka_listen, &self.kafka_advertised_addr) {
            (None, Some(_)) => Err(ConfigError::Invalid("kafka_advertised_addr is set but kafka_listen is not".into())),
            (Some(kafka), _) if *kafka == self.listen => Err(ConfigError::Invalid(format!(
                "kafka_listen {kafka} is the native listener's address too; give it another port"
            ))),
            (_, Some(addr)) if crate::kafka::split_host_port(addr).is_none() => {
                Err(ConfigError::Invalid(format!("kafka_advertised_addr {addr:?} is not host:port")))
            }
            _ => self.validate_admin(),
        }
    }

    /// TLS needs a certificate and its key together; a CA bundle to check clients against for client
    /// authentication, and to check peers against in a cluster.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let invalid = |message: &str| Err(ConfigError::Invalid(message.to_owned()));
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return invalid("tls_cert is set but tls_key is not; give both"),
            (None, Some(_)) => return invalid("tls_key is set but tls_cert is not; give both"),
            (None, None) if self.tls_ca.is_some() || self.tls_client_auth => {
                return invalid("tls_ca and tls_client_auth need TLS on: give tls_cert and tls_key")
            }
            _ => {}
        }
        if self.tls_client_auth && self.tls_ca.is_none() {
            return invalid("tls_client_auth needs tls_ca, the CA bundle client certificates are checked against");
        }
        if self.tls_cert.is_some() && self.tls_ca.is_none() && !self.peers.is_empty() {
            return invalid("a TLS cluster needs tls_ca: the brokers check each other's certificates against it");
        }
        if self.tls_cert.is_some() && self.tls_ca.is_none() && self.admin_listen.is_some() {
            return invalid("with TLS on, admin_listen needs tls_ca: the admin listener asks its broker through TLS");
        }
        Ok(())
    }

    /// The TLS this broker serves and dials its peers with, read from the PEM files; `None` when off.
    pub fn tls(&self) -> Result<Option<BrokerTls>, crate::tls::TlsError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let identity = crate::tls::Identity { cert: cert.clone(), key: key.clone() };
        let client_ca = self.tls_client_auth.then_some(self.tls_ca.as_deref()).flatten();
        let server = crate::tls::server_config(&identity, client_ca)?;
        let peers = match &self.tls_ca {
            Some(ca) => Some(crate::tls::client_config(ca, Some(&identity))?),
            None => None,
        };
        Ok(Some(BrokerTls { server, peers }))
    }

    /// The admin listener needs a port of its own.
    fn validate_admin(&self) -> Result<(), ConfigError> {
        match self.admin_listen {
            Some(admin) if admin == self.listen || Some(admin) == self.kafka_listen => {
                let other = if admin == self.listen { "native" } else { "Kafka" };
                Err(ConfigError::Invalid(format!(
                    "admin_listen {admin} is the {other} listener's address too; give it another port"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The metadata group's voters with their addresses; this node at `advertised` when alone.
    pub fn voters(&self, advertised: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
        if self.peers.is_empty() {
            return Ok(BTreeMap::from([(self.node_id, advertised.to_owned())]));
        }
        let mut voters = BTreeMap::new();
        for (id, addr) in &self.peers {
            let id: u64 = id
                .parse()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| ConfigError::Invalid(format!("peer id {id:?} is not a positive integer")))?;
            voters.insert(NodeId(id), addr.clone());
        }
        if !voters.contains_key(&self.node_id) {
            return Err(ConfigError::Invalid(format!(
                "node_id {} is not among the peers {:?}",
                self.node_id,
                voters.keys().collect::<Vec<_>>()
            )));
        }
        Ok(voters)
    }

    /// Parses `--peers 1=host:port,2=host:port`.
    pub fn parse_peers(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut peers = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let (id, addr) = part
                .split_once('=')
                .ok_or_else(|| ConfigError::Invalid(format!("peer {part:?} is not ID=HOST:PORT")))?;
            if id.trim().parse::<u64>().ok().filter(|id| *id > 0).is_none() {
                return Err(ConfigError::Invalid(format!("peer id {id:?} is not a positive integer")));
            }
            if addr.trim().is_empty() {
                return Err(ConfigError::Invalid(format!("peer {id} has no address")));
            }
            peers.insert(id.trim().to_owned(), addr.trim().to_owned());
        }
        Ok(peers)
    }

    pub fn advertised(&self, bound: SocketAddr) -> String {
        self.advertised_addr.clone().unwrap_or_else(|| bound.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let config = BrokerConfig::from_toml("listen = \"127.0.0.1:9999\"\nfsync = \"never\"\n").unwrap();
        assert_eq!(config.listen.port(), 9999);
        assert_eq!(config.fsync, FsyncPolicy::Never);
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(matches!(BrokerConfig::from_toml("lisen = \"x\""), Err(ConfigError::Parse { .. })));
        assert!(matches!(BrokerConfig::from_toml("fsync = \"sometimes\""), Err(ConfigError::Parse { .. })));
        assert!(matches!(BrokerConfig::from_toml("segment_bytes_max = 1"), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn the_offsets_topic_settings_are_checked() {
        let config = BrokerConfig::from_toml("offsets_topic_partitions = 50\noffsets_topic_replication = 1\n").unwrap();
        assert_eq!((config.offsets_topic_partitions, config.offsets_topic_replication), (50, 1));
        assert_eq!(BrokerConfig::default().offsets_topic_partitions, 8);
        for bad in ["offsets_topic_partitions = 0", "offsets_topic_partitions = 5000", "offsets_topic_replication = 0"]
        {
            assert!(matches!(BrokerConfig::from_toml(bad), Err(ConfigError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn partitions_per_topic_max_may_be_raised_to_the_state_machines_bound() {
        let config = BrokerConfig::from_toml("partitions_per_topic_max = 10000\n").unwrap();
        assert_eq!(config.partitions_per_topic_max, crate::meta::state::PARTITIONS_PER_TOPIC_MAX);
        for bad in ["partitions_per_topic_max = 10001", "partitions_per_topic_max = 0"] {
            let error = BrokerConfig::from_toml(bad).unwrap_err();
            assert!(
                matches!(&error, ConfigError::Invalid(message) if message.contains("partitions")),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn peers_come_from_toml_or_flags_and_must_include_this_node() {
        let config = BrokerConfig::from_toml("node_id = 2\npeers = { 1 = \"a:1\", 2 = \"b:2\" }\n").unwrap();
        assert_eq!(
            config.voters("ignored").unwrap(),
            BTreeMap::from([(NodeId(1), "a:1".into()), (NodeId(2), "b:2".into())])
        );
        assert!(matches!(
            BrokerConfig::from_toml("node_id = 3\npeers = { 1 = \"a:1\" }\n"),
            Err(ConfigError::Invalid(message)) if message.contains("not among the peers")
        ));
        let alone = BrokerConfig::default();
        assert_eq!(alone.voters("h:9").unwrap(), BTreeMap::from([(NodeId(1), "h:9".into())]));
        let parsed = BrokerConfig::parse_peers("1=127.0.0.1:9401, 2=127.0.0.1:9402").unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(BrokerConfig::parse_peers("1:127.0.0.1").is_err());
        assert!(BrokerConfig::parse_peers("x=127.0.0.1:1").is_err());
        assert!(BrokerConfig::parse_peers("0=127.0.0.1:1").is_err());
    }
}
