//! The `keel` command line: `keel broker` runs the server; every other command is a client.
//!
//! Output is for people by default and JSON with `--json`. Every failure prints one clear line on
//! stderr and exits non-zero: 1 for a failed operation, 2 for bad arguments (clap's own code, also for
//! the checks across flags in [`Cli::try_parse_checked_from`]), 3 when the outcome of a write is
//! unknown (ambiguous; rare with the idempotent producer, the default, which re-sends such a write
//! until a definite answer: only once a record's `--delivery-timeout-ms` passed while an attempt of
//! it may have been appended, or its partition lost the producer's state meanwhile).

pub mod bench;
pub mod bench_connections;
pub mod cluster;
pub mod group;
pub mod user;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, CommandFactory, Parser, Subcommand};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::json;

use crate::batch::{Record, StoredRecord};
use crate::client::{
    delivered, Client, ClientConfig, ClientError, PartitionStatus, Producer, ProducerConfig, Pushed, Subscription,
    SubscriptionConfig, TopicSpec, DEFAULT_BROKER,
};
use crate::compression::Compression;
use crate::config::BrokerConfig;
use crate::meta::state::CleanupPolicy;
use crate::partition::FsyncPolicy;
use crate::protocol::{
    Acks, ErrorCode, LogSettingsInfo, MetadataResponse, PartitionInfo, TopicInfo, LIST_OFFSETS_EARLIEST,
    LIST_OFFSETS_LATEST,
};
use crate::types::Offset;

#[derive(Parser, Debug)]
#[command(name = "keel", version, about = "Keel: a Kafka-model message broker", propagate_version = true)]
pub struct Cli {
    /// Brokers to bootstrap from: HOST:PORT, or a comma-separated list of them (the first that
    /// answers is used); the client learns the rest of the cluster from it.
    #[arg(long, global = true, env = "KEEL_BROKER", default_value = DEFAULT_BROKER, value_parser = parse_broker_list)]
    pub broker: String,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// How logs on stderr look: `text` (coloured only on a terminal without NO_COLOR) or `json`
    /// (one object per line, for log shippers).
    #[arg(long, global = true, env = "KEEL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// TLS (ADR 0028). Clients: connect with TLS, trusting the brokers' certificates this CA bundle
    /// (PEM) vouches for. `keel broker`: check peers' (and with --tls-client-auth, clients')
    /// certificates against it.
    #[arg(long, global = true, env = "KEEL_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// TLS certificate chain (PEM). Clients: presented when the broker asks (mutual TLS).
    /// `keel broker`: the broker's certificate; with --tls-key, its listeners speak TLS only.
    #[arg(long, global = true, env = "KEEL_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "KEEL_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The client TLS built from the flags above by [`Cli::load_tls`] (`None`: plain TCP).
    #[arg(skip)]
    pub tls: Option<Arc<rustls::ClientConfig>>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Reads the client TLS files named by `--tls-ca` (and `--tls-cert`/`--tls-key`): a client uses
    /// TLS when a CA bundle is given. `keel broker` reads them as its own (see [`broker_config`]).
    pub fn load_tls(&mut self) -> Result<(), CliError> {
        if matches!(self.command, Command::Broker(_)) {
            return Ok(());
        }
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::Identity { cert: cert.clone(), key: key.clone() }),
            _ => None,
        };
        self.tls = match &self.tls_ca {
            Some(ca) => {
                Some(crate::tls::client_config(ca, identity.as_ref()).map_err(|error| fail(error.to_string()))?)
            }
            None if identity.is_some() => {
                return Err(fail("--tls-cert needs --tls-ca (the CA the brokers' certificates are checked against)"))
            }
            None => None,
        };
        Ok(())
    }

    /// The client settings every command starts from: the defaults, with this command line's TLS.
    pub fn client_defaults(&self) -> ClientConfig {
        ClientConfig { tls: self.tls.clone(), ..ClientConfig::default() }
    }

    /// The command line of this process, checked as [`Cli::try_parse_checked_from`] does; bad input
    /// ends the process with clap's message and exit code 2.
    pub fn parse_checked() -> Cli {
        Cli::try_parse_checked_from(std::env::args_os()).unwrap_or_else(|error| error.exit())
    }

    /// Parses `args` (the program name first) and checks what clap cannot check one flag at a time
    /// (the idempotence flags against `--acks` and `--linger-ms`). A failed check is a clap error
    /// naming the subcommand's usage, like any other bad argument.
    pub fn try_parse_checked_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        let (path, checked): (&[&str], _) = match &cli.command {
            Command::Produce(args) => (
                &["produce"],
                args.idempotence.check(args.acks, ProducerConfig::default().linger, client_config().request_timeout),
            ),
            Command::Bench(bench::BenchCommand::Produce(args)) => (&["bench", "produce"], args.check()),
            Command::Topic(TopicCommand::Alter { log, .. }) if log.is_empty() => (
                &["topic", "alter"],
                Err("nothing to change: give --retention-ms, --retention-bytes, --segment-bytes, --cleanup-policy \
                     or --delete-retention-ms"
                    .to_owned()),
            ),
            _ => (&[], Ok(())),
        };
        match checked {
            Ok(()) => Ok(cli),
            Err(message) => Err(usage_error(path, message)),
        }
    }
}

/// A clap error with `message` and the usage of the subcommand at `path` (e.g. `["bench", "produce"]`).
fn usage_error(path: &[&str], message: String) -> clap::Error {
    let mut command = Cli::command();
    command.build();
    let mut subcommand = &mut command;
    for name in path {
        subcommand = subcommand.find_subcommand_mut(name).expect("the subcommand exists");
    }
    subcommand.error(clap::error::ErrorKind::ArgumentConflict, message)
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a broker.
    Broker(BrokerArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce records: one per stdin line, or one given with --value.
    Produce(ProduceArgs),
    /// Consume records and print one value per line (alone, or as a member of a consumer group).
    Consume(ConsumeArgs),
    /// List and describe consumer groups, and reset their committed offsets.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Measure throughput and latency against a running broker.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Look at a cluster (`status`) or start a local one for trying Keel out (`up`).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Manage SCRAM-SHA-256 users, kept in the cluster's metadata (ADR 0029).
    #[command(subcommand)]
    User(user::UserCommand),
}

#[derive(Args, Debug)]
pub struct BrokerArgs {
    /// TOML config file; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:9400].
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Also serve Kafka clients (librdkafka, kafka-python, kcat) on this address, with Kafka's wire
    /// protocol [default: off].
    #[arg(long, value_name = "ADDR")]
    pub kafka_listen: Option<std::net::SocketAddr>,
    /// Address Kafka clients are told to use for this broker [default: the Kafka listener's].
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_advertised_addr: Option<String>,
    /// Serve the admin HTTP API on this address: Prometheus `/metrics`, `/healthz`, `/readyz`,
    /// `/v1/...` as JSON and the web console at `/` [default: off].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Require every client and peer to present a certificate --tls-ca vouches for (mutual TLS).
    #[arg(long, env = "KEEL_TLS_CLIENT_AUTH")]
    pub tls_client_auth: bool,
    /// Data directory [default: ./keel-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long)]
    pub node_id: Option<u64>,
    /// "always" (default: ack after fsync) or "never" (Kafka's default; loses acked data on power loss).
    #[arg(long)]
    pub fsync: Option<FsyncPolicy>,
    /// Voters of the metadata Raft group: `1=127.0.0.1:9401,2=127.0.0.1:9402,3=127.0.0.1:9403`
    /// (this node included). Default: a one-node cluster.
    #[arg(long)]
    pub peers: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    Create {
        name: String,
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: u32,
        #[arg(long, short = 'r', default_value_t = 1)]
        replication: u32,
        /// An `acks=all` produce needs at least this many in-sync replicas; between 1 and the
        /// replication factor [default: min(2, replication)].
        #[arg(long)]
        min_insync_replicas: Option<u32>,
        /// When no in-sync replica can lead, elect any live replica. Keeps the partition available but
        /// LOSES ACKNOWLEDGED RECORDS the new leader never received. Off by default.
        #[arg(long)]
        unclean_leader_election: bool,
        #[command(flatten)]
        log: LogSettingsArgs,
    },
    /// Change a topic's retention, segment size or cleanup policy; what is not given stays as it is.
    Alter {
        name: String,
        #[command(flatten)]
        log: LogSettingsArgs,
    },
    List,
    Describe {
        name: String,
    },
    Delete {
        name: String,
    },
}

/// A topic's log settings (Kafka's `retention.ms`, `retention.bytes`, `segment.bytes`,
/// `cleanup.policy`, `delete.retention.ms`; ADR 0019).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct LogSettingsArgs {
    /// Delete a sealed segment once its newest record is older than this many ms; -1 keeps records
    /// forever [default for a new topic: 604800000, seven days].
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub retention_ms: Option<i64>,
    /// Delete the oldest sealed segments while a partition's log is larger than this; -1: no limit
    /// [default: -1].
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
    pub retention_bytes: Option<i64>,
    /// Roll to a new segment at this size (1024 to 1073741824): retention deletes whole segments, so
    /// this is its granularity [default: the broker's segment_bytes_max].
    #[arg(long, value_name = "BYTES")]
    pub segment_bytes: Option<u64>,
    /// delete: only retention removes records. compact: sealed segments also keep only the latest
    /// record of each key, and every produced record needs a key (InvalidRecord otherwise)
    /// [default: delete].
    #[arg(long, value_name = "POLICY", value_parser = parse_cleanup_policy)]
    pub cleanup_policy: Option<CleanupPolicy>,
    /// On a compacted topic, keep a tombstone (a record with a null value) this many ms after it
    /// was written before compaction may remove it; at least 0 [default: 86400000, a day].
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub delete_retention_ms: Option<i64>,
}

impl LogSettingsArgs {
    fn info(&self) -> LogSettingsInfo {
        LogSettingsInfo {
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            segment_bytes: self.segment_bytes,
            cleanup_policy: self.cleanup_policy.map(|policy| policy.as_str().to_owned()),
            delete_retention_ms: self.delete_retention_ms,
        }
    }

    fn is_empty(&self) -> bool {
        self.info() == LogSettingsInfo::default()
    }
}

fn parse_cleanup_policy(text: &str) -> Result<CleanupPolicy, String> {
    CleanupPolicy::parse(text)
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    pub topic: String,
    /// Key for every record (picks the partition by hash unless --partition is given).
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long)]
    pub partition: Option<u32>,
    /// Produce this single record instead of reading stdin.
    #[arg(long, conflicts_with = "tombstone")]
    pub value: Option<String>,
    /// Produce one tombstone (a record with a null value) for --key instead of reading stdin: on a
    /// compacted topic it deletes the key once compaction has run and --delete-retention-ms passed.
    #[arg(long, requires = "key")]
    pub tombstone: bool,
    /// What an acknowledgement waits for, and so what can still be lost after it.
    ///
    /// all (default): fsynced on every in-sync replica, with at least min_insync_replicas in the ISR;
    /// loses nothing while one ISR member's disk survives. leader: fsynced on the leader only; a
    /// leader failure before the followers copy it can lose it. none: not waited for; anything in
    /// flight can be lost, the broker's errors are not reported, and offsets print as -1.
    /// (fsync as the broker's default `fsync = "always"` does it; `never` leaves it to the page cache.)
    ///
    /// Errors: the idempotent producer (the default; it needs acks all) re-sends a batch after any
    /// failure that may pass (`NotEnoughReplicas`, a leader change, a broken connection, and the
    /// unknown outcomes `NotEnoughReplicasAfterAppend` and `NotLeaderAfterAppend`) until it gets a
    /// definite answer or --delivery-timeout-ms passes. Without it, `NotEnoughReplicas` (nothing was
    /// appended) is retried with backoff a few times, then fails (exit 1), and a batch whose outcome
    /// is unknown (appended on the leader but not committed, or its connection broke in flight) is
    /// never re-sent: exit 3.
    #[arg(long, default_value = "all", value_parser = parse_acks, verbatim_doc_comment)]
    pub acks: Acks,
    #[command(flatten)]
    pub idempotence: IdempotenceArgs,
    /// Compress each batch with this codec (Kafka's `compression.type`): none, gzip, snappy, lz4 or
    /// zstd. The broker stores compressed batches as they are; consumers decompress.
    #[arg(long, default_value = "none", value_name = "CODEC")]
    pub compression: Compression,
    /// Print the partition and offset of every record.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

/// `--delivery-timeout-ms` when not given: Kafka's `delivery.timeout.ms` default, two minutes.
pub const DELIVERY_TIMEOUT_MS_DEFAULT: u64 = 120_000;
/// The largest `--delivery-timeout-ms`: one day. Unanswered records wait in the producer's memory
/// that long, and a broker forgets an idle producer's dedup state after seven days
/// (`producer_state_ms_max`), after which a re-send could no longer be recognised as one; a longer
/// timeout is a typo, not a plan.
pub const DELIVERY_TIMEOUT_MS_MAX: u64 = 86_400_000;

/// The idempotence flags of `keel produce` and `keel bench produce` (ADR 0015).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct IdempotenceArgs {
    /// Turn the idempotent producer off.
    ///
    /// Idempotent (the default, with --acks all): every batch carries a producer id, an epoch and a
    /// sequence number, so a partition's leader appends it once however often it is re-sent; at most
    /// 5 batches per partition are unanswered at a time; a batch whose connection broke or whose
    /// leader moved is re-sent until it gets a definite answer or --delivery-timeout-ms passes.
    /// Without it (and always with --acks leader or none) such a batch is not re-sent: its outcome
    /// is unknown (exit 3), and sending it again yourself may write it twice.
    #[arg(long, verbatim_doc_comment)]
    pub no_idempotence: bool,
    /// How long the idempotent producer keeps re-sending a record, from when its batch closed.
    ///
    /// A record still unanswered then fails: exit 3 (unknown outcome) if an attempt may have been
    /// appended, else exit 1. At least the linger (5 ms; bench: --linger-ms) plus the request timeout
    /// (30000 ms), so that one attempt can finish (Kafka requires delivery.timeout.ms >= linger.ms +
    /// request.timeout.ms too); at most 86400000 (one day). Only with idempotence (not with
    /// --no-idempotence or --acks leader/none).
    ///
    /// [default: 120000]
    #[arg(long, value_name = "MS", value_parser = parse_delivery_timeout_ms, conflicts_with = "no_idempotence",
          verbatim_doc_comment)]
    pub delivery_timeout_ms: Option<u64>,
}

impl IdempotenceArgs {
    /// Whether the producer these flags configure is idempotent: unless turned off, and only with
    /// `acks=all` (the producer ignores idempotence otherwise, as Kafka's does by default).
    pub fn idempotent(&self, acks: Acks) -> bool {
        !self.no_idempotence && acks == Acks::All
    }

    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms.unwrap_or(DELIVERY_TIMEOUT_MS_DEFAULT))
    }

    /// `config` with these flags' idempotence and delivery timeout.
    pub fn apply(&self, config: ProducerConfig) -> ProducerConfig {
        ProducerConfig { idempotent: !self.no_idempotence, delivery_timeout: self.delivery_timeout(), ..config }
    }

    /// What clap cannot check one flag at a time: a delivery timeout needs an idempotent producer,
    /// and must leave room for one whole attempt (`linger` + `request_timeout`, Kafka's rule).
    pub fn check(&self, acks: Acks, linger: Duration, request_timeout: Duration) -> Result<(), String> {
        if self.delivery_timeout_ms.is_some() && !self.idempotent(acks) {
            return Err("--delivery-timeout-ms applies only to the idempotent producer, which needs --acks all".into());
        }
        let attempt_ms = (linger + request_timeout).as_millis();
        let delivery_timeout_ms = self.delivery_timeout().as_millis();
        if self.idempotent(acks) && delivery_timeout_ms < attempt_ms {
            let default = if self.delivery_timeout_ms.is_none() { " (the default)" } else { "" };
            return Err(format!(
                "--delivery-timeout-ms {delivery_timeout_ms}{default} is shorter than one attempt may take: linger {} ms + \
                 request timeout {} ms = {attempt_ms} ms (as Kafka requires delivery.timeout.ms >= linger.ms + \
                 request.timeout.ms); give at least {attempt_ms}",
                linger.as_millis(),
                request_timeout.as_millis()
            ));
        }
        Ok(())
    }
}

/// Parses `--delivery-timeout-ms`: whole milliseconds, from 1 to [`DELIVERY_TIMEOUT_MS_MAX`] (the
/// lower bound that depends on other flags is [`IdempotenceArgs::check`]'s).
fn parse_delivery_timeout_ms(text: &str) -> Result<u64, String> {
    let produce_attempt_ms = (ProducerConfig::default().linger + client_config().request_timeout).as_millis();
    let range = format!(
        "between linger + request timeout ({produce_attempt_ms} for keel produce) and {DELIVERY_TIMEOUT_MS_MAX} \
         (one day)"
    );
    match text.trim().parse::<u64>() {
        Ok(0) => Err(format!("0 would give up on every record before it is sent; give milliseconds {range}")),
        Ok(ms) if ms > DELIVERY_TIMEOUT_MS_MAX => Err(format!("{ms} ms is more than a day; give milliseconds {range}")),
        Ok(ms) => Ok(ms),
        Err(_) => Err(format!("{text:?} is not a whole number of milliseconds; give one {range}")),
    }
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Consume as a member of this consumer group: the group's coordinator assigns this process some
    /// of the topic's partitions (all of them when it is the only member), each starts at the
    /// group's committed offset (--reset where there is none), and what was printed is committed.
    /// Without --follow: read the assigned partitions up to their ends, commit, leave, exit. With
    /// --follow: stay, commit every second, and on SIGINT or SIGTERM commit and leave.
    #[arg(long, conflicts_with_all = ["offset", "from_beginning", "from_timestamp", "partition"])]
    pub group: Option<String>,
    /// With --group: how the coordinator splits partitions among the members [default: range].
    #[arg(long, value_enum, requires = "group")]
    pub assignor: Option<group::Assignor>,
    /// With --group: the group forgets this member (and gives its partitions to the others) when
    /// it has not heard from it for this long [default: 10000].
    #[arg(long, value_name = "MS", requires = "group")]
    pub session_timeout_ms: Option<u32>,
    /// Start at each partition's first offset (default: its end).
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,
    /// Start at this offset.
    #[arg(long)]
    pub offset: Option<i64>,
    /// Start at the first record at or after this timestamp (ms since the epoch).
    #[arg(long, conflicts_with_all = ["offset", "from_beginning"])]
    pub from_timestamp: Option<i64>,
    /// Only this partition (default: all).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Keep waiting for new records instead of stopping at the end. Without --group, the broker
    /// pushes them: each partition's leader sends records as they are committed (a push
    /// subscription with flow control: at most a window, 1 MiB or 100000 records, ahead of what was
    /// printed), instead of this command polling for them. Runs until --count records were printed,
    /// an error, or it is stopped.
    #[arg(long)]
    pub follow: bool,
    /// What to do when a position is outside the partition's log (retention deleted the records
    /// there, or --offset is past the end), and with --group where a partition the group never
    /// committed starts: earliest (default) goes on from the log start, latest from the log end,
    /// none fails (exit 1). A position moved because it was out of range is said on stderr.
    #[arg(long, value_enum, default_value = "earliest")]
    pub reset: ResetPolicy,
}

/// `keel consume --reset` (Kafka's `auto.offset.reset`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetPolicy {
    Earliest,
    Latest,
    None,
}

pub fn parse_acks(text: &str) -> Result<Acks, String> {
    match text {
        "all" | "-1" => Ok(Acks::All),
        "leader" | "1" => Ok(Acks::Leader),
        "none" | "0" => Ok(Acks::None),
        other => Err(format!("unknown acks {other:?} (expected all, leader or none)")),
    }
}

/// A failure the CLI reports: a message and an exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub exit_code: i32,
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> CliError {
        let exit_code = if error.is_ambiguous() { 3 } else { 1 };
        let message = match &error {
            ClientError::Server { code, message } if !code.is_indeterminate() => message.clone(),
            other => other.to_string(),
        };
        CliError { message, exit_code }
    }
}

/// Validates `--broker` / `KEEL_BROKER` (a bad list is a usage error, exit code 2).
fn parse_broker_list(text: &str) -> Result<String, String> {
    crate::client::parse_bootstrap(text).map(|list| list.join(","))
}

fn fail(message: impl Into<String>) -> CliError {
    CliError { message: message.into(), exit_code: 1 }
}

/// Builds the broker config from defaults, the config file and flags (in that order).
pub fn broker_config(cli: &Cli, args: &BrokerArgs) -> Result<BrokerConfig, CliError> {
    let mut config = match &args.config {
        Some(path) => BrokerConfig::from_file(path).map_err(|error| fail(error.to_string()))?,
        None => BrokerConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(kafka_listen) = args.kafka_listen {
        config.kafka_listen = Some(kafka_listen);
    }
    if let Some(addr) = &args.kafka_advertised_addr {
        config.kafka_advertised_addr = Some(addr.clone());
    }
    if let Some(admin_listen) = args.admin_listen {
        config.admin_listen = Some(admin_listen);
    }
    if let Some(cert) = &cli.tls_cert {
        config.tls_cert = Some(cert.clone());
    }
    if let Some(key) = &cli.tls_key {
        config.tls_key = Some(key.clone());
    }
    if let Some(ca) = &cli.tls_ca {
        config.tls_ca = Some(ca.clone());
    }
    if args.tls_client_auth {
        config.tls_client_auth = true;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(node_id) = args.node_id {
        config.node_id = crate::types::NodeId(node_id);
    }
    if let Some(fsync) = args.fsync {
        config.fsync = fsync;
    }
    if let Some(peers) = &args.peers {
        config.peers = BrokerConfig::parse_peers(peers).map_err(|error| fail(error.to_string()))?;
    }
    config.validate().map_err(|error| fail(error.to_string()))?;
    Ok(config)
}

/// The client settings of the commands other than `bench`. Four retries (100 ms doubling: 1.5 s)
/// ride out a short metadata election; a partition request following a moved leader has its own bound.
fn client_config() -> ClientConfig {
    ClientConfig { retries: 4, ..ClientConfig::default() }
}

/// A client bootstrapped from `--broker`, with [`client_config`].
fn client(cli: &Cli) -> Arc<Client> {
    Client::new(cli.broker.clone(), ClientConfig { tls: cli.tls.clone(), ..client_config() })
}

pub async fn run_topic(cli: &Cli, command: &TopicCommand) -> Result<(), CliError> {
    let client = client(cli);
    let mut out = std::io::stdout().lock();
    match command {
        TopicCommand::Create { name, partitions, replication, min_insync_replicas, unclean_leader_election, log } => {
            let spec = TopicSpec {
                partitions: *partitions,
                replication: *replication,
                min_insync_replicas: *min_insync_replicas,
                unclean_leader_election: *unclean_leader_election,
                log: log.info(),
            };
            client.create_topic_with(name, &spec).await?;
            if cli.json {
                print_line(&mut out, &json!({"created": name, "partitions": partitions}).to_string());
            } else {
                print_line(&mut out, &format!("created topic {name} with {partitions} partition(s)"));
            }
        }
        TopicCommand::Alter { name, log } => {
            client.alter_topic(name, log.info()).await?;
            if cli.json {
                print_line(&mut out, &json!({"altered": name}).to_string());
            } else {
                print_line(&mut out, &format!("altered topic {name}"));
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(name).await?;
            if cli.json {
                print_line(&mut out, &json!({"deleted": name}).to_string());
            } else {
                print_line(&mut out, &format!("deleted topic {name}"));
            }
        }
        TopicCommand::List => {
            let metadata = client.metadata(&[]).await?;
            if cli.json {
                print_line(&mut out, &topics_value(&metadata).to_string());
            } else {
                for topic in &metadata.topics {
                    print_line(&mut out, &format!("{}\t{} partition(s)", topic.name, topic.partitions.len()));
                }
            }
        }
        TopicCommand::Describe { name } => describe_topic(cli, &client, name, &mut out).await?,
    }
    Ok(())
}

/// `keel topic list --json` (and the admin API's `/v1/topics`): each topic with its partition count.
pub fn topics_value(metadata: &MetadataResponse) -> serde_json::Value {
    let topics: Vec<_> =
        metadata.topics.iter().map(|topic| json!({"name": topic.name, "partitions": topic.partitions.len()})).collect();
    json!({ "topics": topics })
}

/// A topic and, per partition, its leader's status (`None` when the partition is offline).
type TopicStatus = (TopicInfo, Vec<(PartitionInfo, Option<PartitionStatus>)>);

/// What `topic describe` shows: the metadata of the topic, and each partition's offsets asked of its
/// leader. An offline partition has nobody to ask: its offsets show as offline.
async fn topic_status(client: &Client, name: &str) -> Result<TopicStatus, ClientError> {
    let topic = client.topic(name).await?;
    let mut partitions = Vec::new();
    for partition in &topic.partitions {
        let status =
            if partition.leader == 0 { None } else { Some(client.replica_status(name, partition.partition).await?) };
        partitions.push((partition.clone(), status));
    }
    Ok((topic, partitions))
}

/// `keel topic describe --json`, and the admin API's `/v1/topics/{topic}`.
pub async fn topic_json(client: &Client, name: &str) -> Result<serde_json::Value, ClientError> {
    let (topic, partitions) = topic_status(client, name).await?;
    let partitions: Vec<_> = partitions.iter().map(|(p, status)| partition_json(p, status.as_ref())).collect();
    let log = topic.log.clone().unwrap_or_default();
    // A broker that has log settings but predates the cleanup policy only deletes.
    let policy = log.cleanup_policy.clone().or_else(|| topic.log.as_ref().map(|_| "delete".to_owned()));
    Ok(json!({"name": topic.name, "min_insync_replicas": topic.min_insync_replicas,
              "unclean_leader_election": topic.unclean_leader_election,
              "retention_ms": log.retention_ms, "retention_bytes": log.retention_bytes,
              "segment_bytes": log.segment_bytes, "cleanup_policy": policy,
              "delete_retention_ms": log.delete_retention_ms, "partitions": partitions}))
}

/// `keel topic describe`: the topic's settings, and per partition its leader, epochs, replicas and ISR
/// (from the metadata), and its offsets and each replica's log end and lag (asked of the partition's
/// leader).
async fn describe_topic(cli: &Cli, client: &Client, name: &str, out: &mut impl Write) -> Result<(), CliError> {
    if cli.json {
        print_line(out, &topic_json(client, name).await?.to_string());
    } else {
        let (topic, partitions) = topic_status(client, name).await?;
        let unclean = if topic.unclean_leader_election { "on (may lose acknowledged records)" } else { "off" };
        print_line(
            out,
            &format!(
                "topic {}: {} partition(s), min insync replicas {}, unclean leader election {unclean}, {}",
                topic.name,
                partitions.len(),
                topic.min_insync_replicas,
                log_settings_text(topic.log.as_ref()),
            ),
        );
        for (p, status) in &partitions {
            for line in partition_lines(p, status.as_ref()) {
                print_line(out, &line);
            }
        }
    }
    Ok(())
}

/// The topic's log settings for `topic describe`: `retention 7 days, retention bytes no limit,
/// segment bytes broker default, cleanup policy delete, delete retention 1 day`. A broker that
/// predates the cleanup policy only deletes.
fn log_settings_text(log: Option<&LogSettingsInfo>) -> String {
    let Some(log) = log else { return "log settings unknown (an older broker)".to_owned() };
    let retention = match log.retention_ms {
        Some(-1) | None => "forever".to_owned(),
        Some(ms) => duration_text(ms),
    };
    let bytes = match log.retention_bytes {
        Some(-1) | None => "no limit".to_owned(),
        Some(bytes) => bytes.to_string(),
    };
    let segment = log.segment_bytes.map_or_else(|| "broker default".to_owned(), |bytes| bytes.to_string());
    let policy = log.cleanup_policy.as_deref().unwrap_or("delete");
    let tombstones = log.delete_retention_ms.map_or_else(|| "unknown (an older broker)".to_owned(), duration_text);
    format!(
        "retention {retention}, retention bytes {bytes}, segment bytes {segment}, cleanup policy {policy}, \
         delete retention {tombstones}"
    )
}

/// `ms` in whole days when it is some (`1 day`, `7 days`), else in ms.
fn duration_text(ms: i64) -> String {
    match ms / 86_400_000 {
        1 if ms % 86_400_000 == 0 => "1 day".to_owned(),
        days if ms != 0 && ms % 86_400_000 == 0 => format!("{days} days"),
        _ => format!("{ms} ms"),
    }
}

/// One partition of `topic describe --json`. The offsets come from the leader's status (`null` when
/// the partition is offline): `high_watermark` (what consumers may read up to), `log_start_offset`,
/// the leader's `log_end_offset` and `durable_end_offset`, `log_size_bytes` (its segments' bytes),
/// and `replicas_status`, one entry per
/// replica in replica order: its log end (`null` until it has fetched in this leader epoch), its lag
/// behind the leader's log end, and whether the leader counts it in the ISR.
fn partition_json(p: &PartitionInfo, status: Option<&PartitionStatus>) -> serde_json::Value {
    let replicas_status = status.map(|status| {
        status
            .replicas
            .iter()
            .map(|replica| {
                json!({"node": replica.node_id, "log_end_offset": replica.log_end.map(|end| end.0),
                       "lag": replica.lag, "in_isr": replica.in_isr})
            })
            .collect::<Vec<_>>()
    });
    json!({"partition": p.partition, "leader": (p.leader != 0).then_some(p.leader),
           "replicas": p.replicas, "isr": p.isr, "leader_epoch": p.leader_epoch,
           "partition_epoch": p.partition_epoch, "unclean_elections": p.unclean_elections,
           "eligible_leader_replicas": p.elr,
           "log_start_offset": status.map(|s| s.log_start.0), "high_watermark": status.map(|s| s.high_watermark.0),
           "log_end_offset": status.map(|s| s.log_end.0), "durable_end_offset": status.map(|s| s.durable_end.0),
           "storage_failed": status.map(|s| s.storage_failed), "log_size_bytes": status.map(|s| s.log_size_bytes),
           "replicas_status": replicas_status})
}

/// One partition of `topic describe`: a line with the metadata and the leader's offsets, then one
/// line per replica, `replica <node>  log end <offset>  lag <n>` (`?` until the replica has fetched
/// in this leader epoch) and whether the leader counts it in the ISR.
fn partition_lines(p: &PartitionInfo, status: Option<&PartitionStatus>) -> Vec<String> {
    let leader = if p.leader == 0 { "none (offline)".to_owned() } else { p.leader.to_string() };
    let offsets = match status {
        Some(status) => format!(
            "log start {}\thigh watermark {}\tlog end {}\tsize {} B",
            status.log_start, status.high_watermark, status.log_end, status.log_size_bytes
        ),
        None => "offsets offline".to_owned(),
    };
    let mut notes = String::new();
    if status.is_some_and(|status| status.storage_failed) {
        notes.push_str("\tSTORAGE FAILED (the leader is recovering its log)");
    }
    if !p.elr.is_empty() {
        notes.push_str(&format!("\teligible leaders {:?}", p.elr));
    }
    if p.unclean_elections > 0 {
        notes.push_str(&format!("\tUNCLEAN ELECTIONS {} (acknowledged records may be lost)", p.unclean_elections));
    }
    let mut lines = vec![format!(
        "  partition {}\tleader {leader}\tleader epoch {}\tpartition epoch {}\treplicas {:?}\tisr {:?}\t\
         {offsets}{notes}",
        p.partition, p.leader_epoch, p.partition_epoch, p.replicas, p.isr
    )];
    for replica in status.map_or(&[][..], |status| &status.replicas) {
        let unknown = || "?".to_owned();
        let log_end = replica.log_end.map_or_else(unknown, |end| end.to_string());
        let lag = replica.lag.map_or_else(unknown, |lag| lag.to_string());
        let isr = if replica.in_isr { "in ISR" } else { "not in ISR" };
        let role = if status.is_some_and(|status| status.leader == replica.node_id) { " (leader)" } else { "" };
        lines.push(format!("    replica {}\tlog end {log_end}\tlag {lag}\t{isr}{role}", replica.node_id));
    }
    lines
}

fn print_line(out: &mut impl Write, line: &str) {
    // A closed stdout (`| head`) is not an error worth a panic.
    let _ = writeln!(out, "{line}");
}

pub async fn run_produce(cli: &Cli, args: &ProduceArgs) -> Result<(), CliError> {
    let client = client(cli);
    // Fail fast and clearly on an unknown topic, before reading stdin.
    client.topic(&args.topic).await?;
    let config = args.idempotence.apply(ProducerConfig {
        acks: args.acks,
        compression: args.compression,
        ..ProducerConfig::default()
    });
    let producer = Producer::new(client, config);
    let key = args.key.clone().map(Bytes::from);
    let mut deliveries = Vec::new();
    let make = |value: String| Record { key: key.clone(), value: Some(Bytes::from(value)), ..Record::default() };
    if args.tombstone {
        let tombstone = Record { key: key.clone(), value: None, ..Record::default() };
        deliveries.push(producer.send(&args.topic, args.partition, tombstone).await);
    } else if let Some(value) = &args.value {
        deliveries.push(producer.send(&args.topic, args.partition, make(value.clone())).await);
    } else {
        // stdin is read on this thread: it is the CLI, not the server, and it has nothing else to do.
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|error| fail(format!("reading stdin: {error}")))?;
            deliveries.push(producer.send(&args.topic, args.partition, make(line)).await);
        }
    }
    producer.flush().await;
    let mut out = std::io::stdout().lock();
    let (mut failed, mut ambiguous, mut first_error) = (0usize, 0usize, None);
    let total = deliveries.len();
    for delivery in deliveries {
        match delivered(delivery).await {
            Ok(metadata) => {
                if args.verbose || cli.json {
                    let line = if cli.json {
                        json!({"partition": metadata.partition, "offset": metadata.offset.0}).to_string()
                    } else {
                        format!("partition {} offset {}", metadata.partition, metadata.offset)
                    };
                    print_line(&mut out, &line);
                }
            }
            Err(error) => {
                if error.is_ambiguous() {
                    ambiguous += 1;
                } else {
                    failed += 1;
                }
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        None => Ok(()),
        Some(error) => Err(CliError {
            message: format!(
                "{failed} of {total} record(s) failed and {ambiguous} have an unknown outcome; first error: {error}"
            ),
            exit_code: if failed == 0 { 3 } else { 1 },
        }),
    }
}

pub async fn run_consume(cli: &Cli, args: &ConsumeArgs) -> Result<(), CliError> {
    if let Some(group) = &args.group {
        return group::run_consume(cli, args, group).await;
    }
    let client = client(cli);
    let topic = client.topic(&args.topic).await?;
    let partitions: Vec<u32> = match args.partition {
        Some(partition) if partition as usize >= topic.partitions.len() => {
            return Err(fail(format!(
                "topic {:?} has {} partition(s); there is no partition {partition}",
                args.topic,
                topic.partitions.len()
            )))
        }
        Some(partition) => vec![partition],
        None => topic.partitions.iter().map(|p| p.partition).collect(),
    };
    if args.follow {
        follow(cli, &client, args, &partitions).await
    } else {
        read_to_end(cli, &client, args, &partitions).await
    }
}

/// `keel consume` without `--follow`: fetches each partition from its start offset up to the end
/// it had when the command started, then exits.
async fn read_to_end(cli: &Cli, client: &Client, args: &ConsumeArgs, partitions: &[u32]) -> Result<(), CliError> {
    // Position and stop point per partition.
    let mut positions = Vec::new();
    for &partition in partitions {
        let start = start_offset(client, args, partition).await?;
        let end = latest(client, &args.topic, partition).await?;
        positions.push((partition, start, end));
    }
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    let limit = args.count.unwrap_or(u64::MAX);
    loop {
        let mut progressed = false;
        for (partition, position, end) in positions.iter_mut() {
            if *position >= *end {
                continue;
            }
            let fetched = match client.fetch(&args.topic, *partition, *position, 1024 * 1024, Duration::ZERO).await {
                Err(ClientError::Server { code: ErrorCode::OffsetOutOfRange, message }) => {
                    *position = reset_position(client, args, *partition, *position, &message).await?;
                    progressed = true;
                    continue;
                }
                fetched => fetched?,
            };
            for record in fetched.records {
                if printed >= limit {
                    return Ok(());
                }
                *position = record.offset.next();
                printed += 1;
                progressed = true;
                print_record(&mut out, cli.json, *partition, &record);
            }
            if printed >= limit {
                return Ok(());
            }
            // Past batches compaction emptied (ADR 0022), which bring no records.
            if fetched.next_offset > *position {
                *position = fetched.next_offset;
                progressed = true;
            }
        }
        if !progressed {
            return Ok(());
        }
    }
}

/// `keel consume --follow`: one push subscription per partition from its start offset; records
/// are printed as the brokers push them, partitions merged in the order their pushes arrive (each
/// partition's records in offset order). Runs until `--count` records or an error.
async fn follow(cli: &Cli, client: &Arc<Client>, args: &ConsumeArgs, partitions: &[u32]) -> Result<(), CliError> {
    let mut pending = FuturesUnordered::new();
    for &partition in partitions {
        let start = start_offset(client, args, partition).await?;
        let subscription =
            Subscription::new(client.clone(), &args.topic, partition, start, SubscriptionConfig::default());
        pending.push(next_push(subscription));
    }
    let mut out = std::io::stdout().lock();
    let mut left = args.count.unwrap_or(u64::MAX);
    while left > 0 {
        let Some((mut subscription, pushed)) = pending.next().await else { return Ok(()) };
        match pushed {
            Ok(pushed) => {
                for record in pushed.records.iter().take(usize::try_from(left).unwrap_or(usize::MAX)) {
                    print_record(&mut out, cli.json, subscription.partition(), record);
                    left -= 1;
                }
            }
            Err(ClientError::Server { code: ErrorCode::OffsetOutOfRange, message }) => {
                let (partition, position) = (subscription.partition(), subscription.position());
                let to = reset_position(client, args, partition, position, &message).await?;
                subscription.seek(to);
            }
            Err(error) => return Err(error.into()),
        }
        pending.push(next_push(subscription));
    }
    Ok(())
}

/// The next push of `subscription`, with the subscription (so that a set of them can be awaited
/// together and each put back after its push is printed).
async fn next_push(mut subscription: Subscription) -> (Subscription, Result<Pushed, ClientError>) {
    let pushed = subscription.next().await;
    (subscription, pushed)
}

/// Where consuming `partition` starts: `--offset`, `--from-timestamp`, `--from-beginning`, or the
/// end of the log.
async fn start_offset(client: &Client, args: &ConsumeArgs, partition: u32) -> Result<Offset, CliError> {
    if let Some(offset) = args.offset {
        if offset < 0 {
            return Err(fail(format!("--offset must be >= 0, got {offset}")));
        }
        return Ok(Offset(offset));
    }
    if let Some(timestamp) = args.from_timestamp {
        return match client.list_offsets(&args.topic, partition, timestamp).await? {
            Some((offset, _)) => Ok(offset),
            None => latest(client, &args.topic, partition).await,
        };
    }
    if args.from_beginning {
        let earliest = client.list_offsets(&args.topic, partition, LIST_OFFSETS_EARLIEST).await?;
        return Ok(earliest.map_or(Offset(0), |(offset, _)| offset));
    }
    latest(client, &args.topic, partition).await
}

/// `--reset`: where to go on from a `position` outside the log, said on stderr.
async fn reset_position(
    client: &Client,
    args: &ConsumeArgs,
    partition: u32,
    position: Offset,
    message: &str,
) -> Result<Offset, CliError> {
    let (spec, name) = match args.reset {
        ResetPolicy::None => {
            return Err(fail(format!(
                "partition {partition}: offset {position} is out of range ({message}); not resetting (--reset none)"
            )))
        }
        ResetPolicy::Earliest => (LIST_OFFSETS_EARLIEST, "earliest"),
        ResetPolicy::Latest => (LIST_OFFSETS_LATEST, "latest"),
    };
    let to = client.list_offsets(&args.topic, partition, spec).await?.map_or(Offset(0), |(offset, _)| offset);
    eprintln!(
        "partition {partition}: offset {position} is out of range ({message}); records there were deleted by \
         retention or never written; going on from the {name} offset {to} (--reset {name})"
    );
    Ok(to)
}

async fn latest(client: &Client, topic: &str, partition: u32) -> Result<Offset, CliError> {
    Ok(client.list_offsets(topic, partition, LIST_OFFSETS_LATEST).await?.map_or(Offset(0), |(offset, _)| offset))
}

fn print_record(out: &mut impl Write, as_json: bool, partition: u32, record: &StoredRecord) {
    let text = |bytes: &Option<Bytes>| bytes.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    if as_json {
        let line = json!({
            "partition": partition,
            "offset": record.offset.0,
            "timestamp": record.timestamp_ms,
            "key": text(&record.key),
            "value": text(&record.value),
        });
        print_line(out, &line.to_string());
    } else {
        print_line(out, &text(&record.value).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_checked_from(std::iter::once("keel").chain(args.split_whitespace()))
    }

    fn produce_args(args: &str) -> ProduceArgs {
        match parse(args).unwrap_or_else(|error| panic!("{args}: {error}")).command {
            Command::Produce(produce) => produce,
            other => panic!("{args}: parsed as {other:?}"),
        }
    }

    fn bench_args(args: &str) -> bench::ProduceBenchArgs {
        match parse(args).unwrap_or_else(|error| panic!("{args}: {error}")).command {
            Command::Bench(bench::BenchCommand::Produce(produce)) => produce,
            other => panic!("{args}: parsed as {other:?}"),
        }
    }

    /// The error `args` gets: its kind and its message as clap prints it.
    fn refused(args: &str) -> (ErrorKind, String) {
        match parse(args) {
            Ok(cli) => panic!("{args}: accepted as {cli:?}"),
            Err(error) => (error.kind(), error.to_string()),
        }
    }

    /// A tombstone names its key and carries no value.
    #[test]
    fn a_tombstone_needs_a_key_and_no_value() {
        let produce = produce_args("produce c --key k --tombstone");
        assert!(produce.tombstone && produce.value.is_none());
        assert_eq!(refused("produce c --tombstone").0, ErrorKind::MissingRequiredArgument);
        assert_eq!(refused("produce c --key k --tombstone --value v").0, ErrorKind::ArgumentConflict);
    }

    #[test]
    fn idempotence_is_on_by_default_with_kafkas_delivery_timeout() {
        let produce = produce_args("produce orders");
        assert!(produce.idempotence.idempotent(produce.acks));
        let config = produce.idempotence.apply(ProducerConfig::default());
        assert!(config.idempotent);
        assert_eq!(config.delivery_timeout, Duration::from_secs(120));

        let off = produce_args("produce orders --no-idempotence");
        assert!(!off.idempotence.apply(ProducerConfig::default()).idempotent);
        let timed = produce_args("produce orders --delivery-timeout-ms 45000");
        assert_eq!(timed.idempotence.apply(ProducerConfig::default()).delivery_timeout, Duration::from_secs(45));
        let most = produce_args("produce orders --delivery-timeout-ms 86400000");
        assert_eq!(most.idempotence.delivery_timeout(), Duration::from_secs(86_400));
        // acks=leader turns idempotence off by itself (the producer needs acks=all for it).
        let leader = produce_args("produce orders --acks leader");
        assert!(!leader.idempotence.idempotent(leader.acks));
    }

    #[test]
    fn delivery_timeout_values_out_of_range_are_usage_errors() {
        for (value, expected) in [
            ("0", "0 would give up on every record"),
            ("abc", "\"abc\" is not a whole number of milliseconds"),
            ("1.5", "\"1.5\" is not a whole number of milliseconds"),
            ("86400001", "86400001 ms is more than a day"),
            ("99999999999999999999999", "is not a whole number of milliseconds"),
        ] {
            for command in ["produce orders", "bench produce"] {
                let (kind, message) = refused(&format!("{command} --delivery-timeout-ms {value}"));
                assert_eq!(kind, ErrorKind::ValueValidation, "{command} {value}: {message}");
                assert!(message.contains(expected), "{command} {value}: {message}");
                assert!(message.contains("between linger + request timeout (30005"), "{message}");
            }
        }
        let (kind, _) = refused("produce orders --delivery-timeout-ms -5");
        assert_eq!(kind, ErrorKind::UnknownArgument);
        let (kind, _) = refused("produce orders --delivery-timeout-ms");
        assert_eq!(kind, ErrorKind::InvalidValue);
    }

    #[test]
    fn a_delivery_timeout_must_leave_room_for_one_attempt() {
        let (kind, message) = refused("produce orders --delivery-timeout-ms 30004");
        assert_eq!(kind, ErrorKind::ArgumentConflict, "{message}");
        assert!(message.contains("linger 5 ms + request timeout 30000 ms = 30005 ms"), "{message}");
        assert!(message.contains("Usage: keel produce"), "{message}");
        produce_args("produce orders --delivery-timeout-ms 30005");

        // The bench's linger is a flag: the bound follows it, for the default timeout too.
        let (_, message) = refused("bench produce --linger-ms 1000 --delivery-timeout-ms 30500");
        assert!(message.contains("linger 1000 ms + request timeout 30000 ms = 31000 ms"), "{message}");
        assert!(message.contains("Usage: keel bench produce"), "{message}");
        let (_, message) = refused("bench produce --linger-ms 100000");
        assert!(message.contains("--delivery-timeout-ms 120000 (the default) is shorter"), "{message}");
        bench_args("bench produce --linger-ms 100000 --delivery-timeout-ms 130000");
        // Without idempotence there is no delivery timeout to check.
        bench_args("bench produce --linger-ms 100000 --no-idempotence");
        bench_args("bench produce --linger-ms 100000 --acks leader");
    }

    #[test]
    fn a_delivery_timeout_without_idempotence_is_refused() {
        let (kind, message) = refused("produce orders --no-idempotence --delivery-timeout-ms 60000");
        assert_eq!(kind, ErrorKind::ArgumentConflict, "{message}");
        assert!(message.contains("'--no-idempotence' cannot be used with '--delivery-timeout-ms <MS>'"), "{message}");
        for acks in ["leader", "none", "1", "0"] {
            let (kind, message) = refused(&format!("produce orders --acks {acks} --delivery-timeout-ms 60000"));
            assert_eq!(kind, ErrorKind::ArgumentConflict, "{message}");
            assert!(message.contains("applies only to the idempotent producer, which needs --acks all"), "{message}");
        }
        let (kind, _) = refused("bench produce --acks leader --delivery-timeout-ms 60000");
        assert_eq!(kind, ErrorKind::ArgumentConflict);
    }

    fn topic_log_args(args: &str) -> LogSettingsArgs {
        match parse(args).unwrap_or_else(|error| panic!("{args}: {error}")).command {
            Command::Topic(TopicCommand::Create { log, .. } | TopicCommand::Alter { log, .. }) => log,
            other => panic!("{args}: parsed as {other:?}"),
        }
    }

    #[test]
    fn cleanup_policy_and_delete_retention_reach_the_request() {
        let log = topic_log_args("topic create users --cleanup-policy compact --delete-retention-ms 60000");
        assert_eq!(
            log.info(),
            LogSettingsInfo {
                cleanup_policy: Some("compact".to_owned()),
                delete_retention_ms: Some(60000),
                ..LogSettingsInfo::default()
            }
        );
        assert_eq!(
            topic_log_args("topic create t --cleanup-policy delete").info().cleanup_policy.as_deref(),
            Some("delete")
        );
        assert_eq!(topic_log_args("topic create t").info(), LogSettingsInfo::default());
        // Either alone is something to change; a negative time is the broker's to refuse.
        for alone in ["--cleanup-policy compact", "--delete-retention-ms 0", "--delete-retention-ms -1"] {
            assert!(!topic_log_args(&format!("topic alter t {alone}")).is_empty(), "{alone}");
        }
        let (kind, message) = refused("topic alter t");
        assert_eq!(kind, ErrorKind::ArgumentConflict, "{message}");
        assert!(message.contains("--cleanup-policy or --delete-retention-ms"), "{message}");
        for command in ["topic create t", "topic alter t"] {
            let (kind, message) = refused(&format!("{command} --cleanup-policy shred"));
            assert_eq!(kind, ErrorKind::ValueValidation, "{message}");
            assert!(message.contains(r#"unknown cleanup policy "shred" (expected delete or compact)"#), "{message}");
        }
    }

    #[test]
    fn describe_text_shows_the_cleanup_policy() {
        let log = LogSettingsInfo {
            retention_ms: Some(604_800_000),
            retention_bytes: Some(-1),
            segment_bytes: None,
            cleanup_policy: Some("compact".to_owned()),
            delete_retention_ms: Some(86_400_000),
        };
        assert_eq!(
            log_settings_text(Some(&log)),
            "retention 7 days, retention bytes no limit, segment bytes broker default, cleanup policy compact, \
             delete retention 1 day"
        );
        let tombstones_at_once = LogSettingsInfo { delete_retention_ms: Some(0), retention_ms: Some(-1), ..log };
        assert_eq!(
            log_settings_text(Some(&tombstones_at_once)),
            "retention forever, retention bytes no limit, segment bytes broker default, cleanup policy compact, \
             delete retention 0 ms"
        );
        // A broker from before the cleanup policy only deletes.
        let older = LogSettingsInfo { retention_ms: Some(-1), retention_bytes: Some(-1), ..LogSettingsInfo::default() };
        assert!(log_settings_text(Some(&older))
            .ends_with("cleanup policy delete, delete retention unknown (an older broker)"));
    }

    #[test]
    fn compare_idempotence_needs_idempotence_to_be_possible() {
        let compare = bench_args("bench produce --compare-idempotence --duration-s 3");
        assert!(compare.compare_idempotence && !compare.idempotence.no_idempotence);
        let (kind, message) = refused("bench produce --compare-idempotence --no-idempotence");
        assert_eq!(kind, ErrorKind::ArgumentConflict, "{message}");
        let (kind, message) = refused("bench produce --compare-idempotence --acks none");
        assert_eq!(kind, ErrorKind::ArgumentConflict, "{message}");
        assert!(message.contains("--compare-idempotence needs --acks all"), "{message}");
        let (kind, _) = refused("produce orders --compare-idempotence");
        assert_eq!(kind, ErrorKind::UnknownArgument);
    }
}
