//! The metadata workload: admin processes creating, deleting, describing and listing topics through
//! random brokers, recording a history for `keel_model::metadata_checker`.
//!
//! In: the brokers' addresses, a pool of topic names (small pools make creates and deletes collide on
//! purpose, large ones make names nearly unique), a stop token. Out: [`MetaEvent`]s with simulated
//! invoke and completion times.
//!
//! # Outcomes
//! - create / delete: `Ok` when acknowledged; `Info` when the client says the outcome is ambiguous
//!   (a timeout, a broken connection, a leader change); `Fail` for every other error, among them
//!   `TopicAlreadyExists` / `UnknownTopic` (the command was applied and rejected), `NotLeader`
//!   (the proposal was dropped before it entered any log) and `ShuttingDown` (the node was gone
//!   before the command reached it). The workload takes the broker at its word: a definite error
//!   for a command that did take effect is a broker bug, and the checker reports it. (A broker whose
//!   Raft node stops with proposals in flight answers them with the ambiguous `Timeout`; it once
//!   answered `ShuttingDown`, found by `raft_5_voters_swarm` seed 5.)
//! - describe: `Described(Some(partitions))` or `Described(None)` for an unknown topic; list:
//!   `Listed(names)`. A read that fails is recorded as `Fail` (it says nothing).
//!
//! Every process has at most one operation outstanding (Jepsen's process model), and one client per
//! broker, created lazily.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::client::{Client, ClientError};
use keel::protocol::ErrorCode;
use keel_model::metadata_checker::{MetaEvent, MetaOp, MetaOutcome};
use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lock;
use crate::trace::Fnv1a64;

/// Client settings for admin operations: short timeouts, so a dead, paused or partitioned broker
/// turns into `Info` (or a failed read) quickly.
pub fn admin_client_config() -> keel::client::ClientConfig {
    keel::client::ClientConfig {
        connect_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(1_500),
        retries: 1,
        retry_backoff: Duration::from_millis(50),
        retry_backoff_max: Duration::from_millis(200),
        tls: None,
    }
}

/// The shared history of metadata operations.
#[derive(Clone)]
pub struct MetaRecorder {
    /// The events, each with what the client said when it failed (for failure reports).
    events: Arc<Mutex<Vec<(MetaEvent, String)>>>,
    start: Instant,
}

impl MetaRecorder {
    pub fn new(start: Instant) -> MetaRecorder {
        MetaRecorder { events: Arc::default(), start }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn record(&self, event: MetaEvent, detail: String) {
        lock(&self.events).push((event, detail));
    }

    pub fn events(&self) -> Vec<MetaEvent> {
        lock(&self.events).iter().map(|(event, _)| event.clone()).collect()
    }

    /// Every event with what the client said (empty unless it failed or is ambiguous).
    pub fn entries(&self) -> Vec<(MetaEvent, String)> {
        lock(&self.events).clone()
    }

    /// A stable fingerprint of every event (for the trace hash).
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = Fnv1a64::new();
        for (event, detail) in lock(&self.events).iter() {
            hasher.write(format!("{event:?} {detail}\n").as_bytes());
        }
        hasher.finish()
    }
}

/// How a write's error maps to an outcome (see the module doc), with the error's text.
pub fn write_outcome(result: Result<(), ClientError>) -> (MetaOutcome, String) {
    match result {
        Ok(()) => (MetaOutcome::Ok, String::new()),
        Err(error) if error.is_ambiguous() => (MetaOutcome::Info, error.to_string()),
        Err(error) => (MetaOutcome::Fail, error.to_string()),
    }
}

/// Runs one operation through `client` and returns its outcome and, for errors, what the client
/// said.
pub async fn run_op(client: &Client, op: &MetaOp) -> (MetaOutcome, String) {
    match op {
        MetaOp::CreateTopic { name, partitions } => write_outcome(client.create_topic(name, *partitions, 1).await),
        MetaOp::DeleteTopic { name } => write_outcome(client.delete_topic(name).await),
        MetaOp::DescribeTopic { name } => match client.metadata(std::slice::from_ref(name)).await {
            Ok(response) => match response.topics.into_iter().find(|topic| &topic.name == name) {
                Some(topic) => match topic.error {
                    None => (MetaOutcome::Described(Some(topic.partitions.len() as u32)), String::new()),
                    Some(info) if info.error_code() == ErrorCode::UnknownTopic => {
                        (MetaOutcome::Described(None), String::new())
                    }
                    Some(info) => (MetaOutcome::Fail, info.message),
                },
                None => (MetaOutcome::Fail, "the topic is missing from the response".to_owned()),
            },
            Err(error) => (MetaOutcome::Fail, error.to_string()),
        },
        MetaOp::ListTopics => match client.metadata(&[]).await {
            Ok(response) => {
                (MetaOutcome::Listed(response.topics.into_iter().map(|topic| topic.name).collect()), String::new())
            }
            Err(error) => (MetaOutcome::Fail, error.to_string()),
        },
    }
}

/// One admin process's shape, drawn per seed, and its RNG.
#[derive(Clone, Debug)]
pub struct AdminProcess {
    pub rng: StdRng,
    pub process: u64,
    pub addrs: Vec<String>,
    /// Topic names this process picks from.
    pub names: Arc<Vec<String>>,
    pub think_ms_max: u64,
    /// Relative weights of create, delete, describe, list.
    pub weights: [u32; 4],
}

impl AdminProcess {
    /// Runs operations until `stop`; each one through a broker drawn at random.
    pub async fn run(mut self, recorder: MetaRecorder, stop: CancellationToken) {
        let mut clients: BTreeMap<usize, Arc<Client>> = BTreeMap::new();
        let total: u32 = self.weights.iter().sum();
        while !stop.is_cancelled() {
            let (broker, op) = {
                let rng = &mut self.rng;
                let broker = rng.random_range(0..self.addrs.len());
                let name = self.names[rng.random_range(0..self.names.len())].clone();
                let mut ticket = rng.random_range(0..total.max(1));
                let mut kind = 0;
                while kind < 3 && ticket >= self.weights[kind] {
                    ticket -= self.weights[kind];
                    kind += 1;
                }
                let op = match kind {
                    0 => MetaOp::CreateTopic { name, partitions: rng.random_range(1..=3) },
                    1 => MetaOp::DeleteTopic { name },
                    2 => MetaOp::DescribeTopic { name },
                    _ => MetaOp::ListTopics,
                };
                (broker, op)
            };
            let client = clients
                .entry(broker)
                .or_insert_with(|| Client::new(self.addrs[broker].clone(), admin_client_config()))
                .clone();
            let invoke_ns = recorder.now_ns();
            let (outcome, detail) = run_op(&client, &op).await;
            let complete_ns = recorder.now_ns();
            recorder.record(MetaEvent { process: self.process, invoke_ns, complete_ns, op, outcome }, detail);
            let think_ms = self.rng.random_range(0..=self.think_ms_max);
            tokio::time::sleep(Duration::from_millis(think_ms.max(1))).await;
        }
    }
}

/// Process ids of the liveness phase's creates start here (one process per broker).
pub const LIVENESS_PROCESS_BASE: u64 = 1_000;

/// The liveness phase's create of `live-<broker number>` through the broker at `addr`, retried
/// until it succeeds or `deadline`; every attempt is recorded. An attempt that failed after an
/// earlier ambiguous one took effect counts when a describe shows the topic.
pub async fn create_until_ok(addr: String, broker_idx: usize, recorder: MetaRecorder, deadline: Instant) -> bool {
    let client = Client::new(addr, admin_client_config());
    let name = format!("live-{}", broker_idx + 1);
    let op = MetaOp::CreateTopic { name: name.clone(), partitions: 1 };
    let mut applied_maybe = false;
    while Instant::now() < deadline {
        let invoke_ns = recorder.now_ns();
        let (outcome, detail) = run_op(&client, &op).await;
        let complete_ns = recorder.now_ns();
        let process = LIVENESS_PROCESS_BASE + broker_idx as u64;
        recorder
            .record(MetaEvent { process, invoke_ns, complete_ns, op: op.clone(), outcome: outcome.clone() }, detail);
        match outcome {
            MetaOutcome::Ok => return true,
            // An earlier ambiguous attempt took effect.
            MetaOutcome::Fail if applied_maybe => {
                let describe = MetaOp::DescribeTopic { name: name.clone() };
                if let (MetaOutcome::Described(Some(_)), _) = run_op(&client, &describe).await {
                    return true;
                }
            }
            MetaOutcome::Info => applied_maybe = true,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The final topics: a linearizable list through the broker at `addr` (a few attempts).
pub async fn final_topics(addr: String) -> Option<Vec<String>> {
    let client = Client::new(addr, admin_client_config());
    for _ in 0..20 {
        if let (MetaOutcome::Listed(names), _) = run_op(&client, &MetaOp::ListTopics).await {
            return Some(names);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
