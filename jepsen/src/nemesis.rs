//! The nemesis: every ~10 s a random fault from the chosen packages, held for a few seconds, then
//! healed; every start and end recorded in the history as a `"process": "nemesis"` event.
//!
//! # Packages and what they do (from the host, to the run's containers only)
//! - `partition`: iptables DROP rules inside the containers' network namespaces (entered with
//!   nsenter). Shapes: halves, a majority ring (each node sees a majority, no two the same one),
//!   a bridge (two halves and one node that sees both), the Raft leader isolated, a partition leader
//!   isolated. Traffic from the host (the clients) is never cut, as in Jepsen.
//! - `kill`: `docker kill -s KILL`, then `docker start` (same volume, same address).
//! - `pause`: `docker pause` (the cgroup freezer: SIGSTOP for every process), then `docker unpause`.
//!   The freezer may refuse a node whose broker sits in an fsync (see [`pause`]): that node is
//!   retried, then left running and listed as skipped; a run in which no pause ever took effect fails.
//! - `clock`: rewrites the libfaketime offset file of the targets (the wall clock only, see
//!   docker.rs): small skews and large jumps, forwards and backwards; healed to `+0`.
//! - `packet`: random loss with iptables' `statistic` module on the targets (tc netem is absent on
//!   these machines).
//! - `corrupt`: kills one broker (a minority of one), flips bits in or truncates one of its segment
//!   files in its volume, keeps it down for a while, restarts it. With one copy per partition (ISR
//!   replication has not landed) this can only show detection: recovery must notice the damage by
//!   CRC and never serve a damaged batch; the acknowledged records after the damage are gone.
//!
//! Targets for kill, pause, clock and packet: one node, a minority, the Raft leader, a partition
//! leader.
//!
//! # Invariants
//! - Faults do not overlap: one is healed before the next starts, and [`Nemesis::heal_all`] undoes
//!   every kind of fault on every node (it is idempotent), so the final read runs on a whole cluster.
//! - Every fault's start and end events carry the same `id`, so reports pair them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel::client::Client;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::docker::{self, docker, Cluster, DockerError, Node};
use crate::workload::{client_config, Recorder};

/// A fault package, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Package {
    Partition,
    Kill,
    Pause,
    Clock,
    Packet,
    Corrupt,
}

impl Package {
    pub const ALL: [Package; 6] =
        [Package::Partition, Package::Kill, Package::Pause, Package::Clock, Package::Packet, Package::Corrupt];

    pub fn name(self) -> &'static str {
        match self {
            Package::Partition => "partition",
            Package::Kill => "kill",
            Package::Pause => "pause",
            Package::Clock => "clock",
            Package::Packet => "packet",
            Package::Corrupt => "corrupt",
        }
    }

    /// Parses `partition,kill,...`; `none` (or nothing) is the empty set. One clear error otherwise.
    pub fn parse_list(text: &str) -> Result<Vec<Package>, String> {
        let mut packages = BTreeSet::new();
        for word in text.split(',').map(str::trim).filter(|word| !word.is_empty()) {
            if word == "none" {
                continue;
            }
            if word == "all" {
                packages.extend(Package::ALL);
                continue;
            }
            let package = Package::ALL.into_iter().find(|package| package.name() == word).ok_or_else(|| {
                let known: Vec<&str> = Package::ALL.iter().map(|package| package.name()).collect();
                format!("unknown nemesis {word:?} (known: {}, all, none)", known.join(", "))
            })?;
            packages.insert(package);
        }
        Ok(packages.into_iter().collect())
    }
}

/// The nemesis's timing.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Quiet time before each fault, drawn from this range (ms).
    pub interval_ms: (u64, u64),
    /// How long each fault is held before it is healed, drawn from this range (ms).
    pub hold_ms: (u64, u64),
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule { interval_ms: (8_000, 12_000), hold_ms: (4_000, 9_000) }
    }
}

/// One corrupted segment file, for the report and for the verdict (see `main.rs`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Corruption {
    pub node: u64,
    /// `"<topic>/<partition>"`, as the history names partitions.
    pub partition: String,
    pub file: String,
    pub mode: String,
    pub time_ns: u64,
}

pub struct Nemesis {
    pub cluster: Arc<Cluster>,
    pub recorder: Arc<Recorder>,
    pub packages: Vec<Package>,
    pub topic: String,
    pub schedule: Schedule,
    client: Arc<Client>,
    next_id: u64,
    pub corruptions: Vec<Corruption>,
    /// Faults that could not be applied (e.g. no segment file yet): counted, not fatal.
    pub skipped: Vec<String>,
    /// Pause faults that froze at least one node.
    pub pauses_applied: usize,
    /// Nodes whose freeze the kernel refused on every attempt (see [`pause`]).
    pub pause_refusals: usize,
}

/// How to undo the fault in force.
enum Undo {
    Iptables(Vec<u64>),
    Start(Vec<u64>),
    Unpause(Vec<u64>),
    Clock(Vec<u64>),
}

impl Nemesis {
    pub fn new(
        cluster: Arc<Cluster>,
        recorder: Arc<Recorder>,
        packages: Vec<Package>,
        topic: String,
        schedule: Schedule,
    ) -> Nemesis {
        let client = Client::new(cluster.bootstrap(), client_config());
        Nemesis {
            cluster,
            recorder,
            packages,
            topic,
            schedule,
            client,
            next_id: 0,
            corruptions: Vec::new(),
            skipped: Vec::new(),
            pauses_applied: 0,
            pause_refusals: 0,
        }
    }

    /// Runs faults until `stop`, then heals everything. Errors are Docker failures (fatal to the run).
    pub async fn run(&mut self, mut rng: StdRng, stop: CancellationToken) -> Result<(), DockerError> {
        if self.packages.is_empty() {
            stop.cancelled().await;
            return Ok(());
        }
        loop {
            let quiet =
                Duration::from_millis(rng.random_range(self.schedule.interval_ms.0..=self.schedule.interval_ms.1));
            if sleep_or_stop(quiet, &stop).await {
                break;
            }
            let package = *self.packages.choose(&mut rng).expect("packages is not empty");
            self.next_id += 1;
            let id = self.next_id;
            let undo = match self.start_fault(package, id, &mut rng).await {
                Ok(undo) => undo,
                Err(error) => {
                    self.heal_all().await?;
                    return Err(error);
                }
            };
            let hold = Duration::from_millis(rng.random_range(self.schedule.hold_ms.0..=self.schedule.hold_ms.1));
            let stopped = sleep_or_stop(hold, &stop).await;
            if let Some(undo) = undo {
                self.undo(undo, package, id).await?;
            }
            if stopped {
                break;
            }
        }
        self.heal_all().await
    }

    /// Picks the targets of a node fault.
    async fn targets(&self, rng: &mut StdRng) -> (String, Vec<u64>) {
        let ids = self.cluster.ids();
        let minority_max = (ids.len() - 1) / 2;
        match rng.random_range(0..4) {
            0 => ("one".into(), vec![*ids.choose(rng).expect("nodes")]),
            1 if minority_max >= 1 => {
                let size = rng.random_range(1..=minority_max);
                let mut shuffled = ids.clone();
                shuffled.shuffle(rng);
                shuffled.truncate(size);
                shuffled.sort();
                ("minority".into(), shuffled)
            }
            2 => match self.raft_leader().await {
                Some(leader) => ("raft-leader".into(), vec![leader]),
                None => ("one (no raft leader known)".into(), vec![*ids.choose(rng).expect("nodes")]),
            },
            _ => match self.partition_leader(rng).await {
                Some((partition, leader)) => (format!("leader of {}/{partition}", self.topic), vec![leader]),
                None => ("one (no partition leader known)".into(), vec![*ids.choose(rng).expect("nodes")]),
            },
        }
    }

    /// The metadata group's leader, as the first reachable broker sees it.
    async fn raft_leader(&self) -> Option<u64> {
        let status = tokio::time::timeout(Duration::from_secs(3), self.client.cluster_status(true)).await.ok()?.ok()?;
        status.nodes.iter().find(|node| node.reachable && node.role == "leader").map(|node| node.node_id)
    }

    /// A random partition and its leader.
    async fn partition_leader(&self, rng: &mut StdRng) -> Option<(u32, u64)> {
        let topic = tokio::time::timeout(Duration::from_secs(3), self.client.topic(&self.topic)).await.ok()?.ok()?;
        let partition = topic.partitions.choose(rng)?;
        (partition.leader > 0).then_some((partition.partition, partition.leader))
    }

    /// Starts one fault; `None` when it was skipped.
    async fn start_fault(&mut self, package: Package, id: u64, rng: &mut StdRng) -> Result<Option<Undo>, DockerError> {
        match package {
            Package::Partition => self.start_partition(id, rng).await.map(Some),
            Package::Kill => {
                let (target, nodes) = self.targets(rng).await;
                for node in &nodes {
                    docker(&["kill", "-s", "KILL", &self.cluster.node(*node).name]).await?;
                }
                self.recorder.nemesis("kill", json!({"id": id, "target": target, "nodes": nodes}));
                Ok(Some(Undo::Start(nodes)))
            }
            Package::Pause => {
                let (target, nodes) = self.targets(rng).await;
                let mut paused = Vec::new();
                for node in &nodes {
                    match pause(self.cluster.node(*node)).await? {
                        Ok(()) => paused.push(*node),
                        Err(refusal) => {
                            self.pause_refusals += 1;
                            self.skipped.push(format!("pause of n{node}: the freezer refused {PAUSE_ATTEMPTS} times, left running ({refusal})"));
                        }
                    }
                }
                if paused.is_empty() {
                    return Ok(None);
                }
                self.pauses_applied += 1;
                self.recorder.nemesis("pause", json!({"id": id, "target": target, "nodes": paused}));
                Ok(Some(Undo::Unpause(paused)))
            }
            Package::Clock => {
                let (target, nodes) = self.targets(rng).await;
                let mut offsets = serde_json::Map::new();
                for node in &nodes {
                    let magnitude_s: f64 = if rng.random_bool(0.5) {
                        rng.random_range(0.05..2.0) // a skew
                    } else {
                        rng.random_range(10.0..600.0) // a jump
                    };
                    let offset_s = if rng.random_bool(0.5) { magnitude_s } else { -magnitude_s };
                    docker::write_faketime(self.cluster.node(*node), &format!("{offset_s:+.3}"))?;
                    offsets.insert(node.to_string(), json!((offset_s * 1000.0).round() / 1000.0));
                }
                self.recorder.nemesis("clock", json!({"id": id, "target": target, "offsets_s": offsets}));
                Ok(Some(Undo::Clock(nodes)))
            }
            Package::Packet => {
                let (target, nodes) = self.targets(rng).await;
                let probability: f64 = rng.random_range(0.05..0.4);
                let probability_text = format!("{probability:.2}");
                for node in &nodes {
                    let node = self.cluster.node(*node);
                    for chain in ["INPUT", "OUTPUT"] {
                        iptables_if_running(
                            node,
                            &[
                                "-A",
                                chain,
                                "-m",
                                "statistic",
                                "--mode",
                                "random",
                                "--probability",
                                &probability_text,
                                "-j",
                                "DROP",
                            ],
                        )
                        .await?;
                    }
                }
                self.recorder.nemesis(
                    "packet",
                    json!({"id": id, "target": target, "nodes": nodes, "loss": probability_text.parse::<f64>().unwrap_or(probability)}),
                );
                Ok(Some(Undo::Iptables(nodes)))
            }
            Package::Corrupt => self.start_corrupt(id, rng).await,
        }
    }

    async fn start_partition(&mut self, id: u64, rng: &mut StdRng) -> Result<Undo, DockerError> {
        let mut ids = self.cluster.ids();
        ids.shuffle(rng);
        let n = ids.len();
        let shapes = ["halves", "majority-ring", "bridge", "isolate-raft-leader", "isolate-partition-leader"];
        let mut shape = *shapes.choose(rng).expect("shapes");
        if n < 3 || (n < 5 && shape == "majority-ring") {
            shape = "halves";
        }
        // `cut`: pairs that cannot talk (both directions).
        let mut cut: Vec<(u64, u64)> = Vec::new();
        let mut groups: Vec<Vec<u64>> = Vec::new();
        let isolate = |node: u64, ids: &[u64]| -> Vec<Vec<u64>> {
            vec![vec![node], ids.iter().copied().filter(|other| *other != node).collect()]
        };
        match shape {
            "halves" => {
                let (small, large) = ids.split_at(n / 2);
                groups = vec![small.to_vec(), large.to_vec()];
            }
            "majority-ring" => {
                // Ring order = shuffled order; each node keeps its neighbours within `reach`, which
                // is a majority counting itself, and cuts the rest.
                let majority = n / 2 + 1;
                let reach = (majority - 1).div_ceil(2).max(1);
                for a in 0..n {
                    for b in (a + 1)..n {
                        let distance = (b - a).min(n - (b - a));
                        if distance > reach {
                            cut.push((ids[a], ids[b]));
                        }
                    }
                }
            }
            "bridge" => {
                let half = (n - 1) / 2;
                let left = ids[..half].to_vec();
                let bridge = ids[half];
                let right = ids[half + 1..].to_vec();
                for a in &left {
                    for b in &right {
                        cut.push((*a, *b));
                    }
                }
                groups = vec![left, vec![bridge], right];
            }
            "isolate-raft-leader" => {
                let leader = match self.raft_leader().await {
                    Some(leader) => leader,
                    None => ids[0],
                };
                groups = isolate(leader, &ids);
            }
            _ => {
                let leader = match self.partition_leader(rng).await {
                    Some((_, leader)) => leader,
                    None => ids[0],
                };
                groups = isolate(leader, &ids);
            }
        }
        if cut.is_empty() {
            for (group_idx, group) in groups.iter().enumerate() {
                for other in &groups[group_idx + 1..] {
                    for a in group {
                        for b in other {
                            cut.push((*a, *b));
                        }
                    }
                }
            }
        }
        for (a, b) in &cut {
            let (node_a, node_b) = (self.cluster.node(*a), self.cluster.node(*b));
            iptables_if_running(node_a, &["-A", "INPUT", "-s", &node_b.ip, "-j", "DROP"]).await?;
            iptables_if_running(node_b, &["-A", "INPUT", "-s", &node_a.ip, "-j", "DROP"]).await?;
        }
        for group in &mut groups {
            group.sort();
        }
        let mut cut_sorted: Vec<[u64; 2]> = cut.iter().map(|(a, b)| [*a.min(b), *a.max(b)]).collect();
        cut_sorted.sort();
        self.recorder.nemesis("partition", json!({"id": id, "shape": shape, "groups": groups, "cut": cut_sorted}));
        Ok(Undo::Iptables(self.cluster.ids()))
    }

    async fn start_corrupt(&mut self, id: u64, rng: &mut StdRng) -> Result<Option<Undo>, DockerError> {
        // Prefer a partition leader: its segments hold acknowledged data.
        let node_id = match self.partition_leader(rng).await {
            Some((_, leader)) => leader,
            None => *self.cluster.ids().choose(rng).expect("nodes"),
        };
        let node = self.cluster.node(node_id).clone();
        docker(&["kill", "-s", "KILL", &node.name]).await?;
        let volume = docker::volume_dir(&node).await?;
        let segments = segment_files(&volume, &self.topic);
        let Some(file) = segments.choose(rng).cloned() else {
            self.skipped.push(format!("corrupt: n{node_id} has no segment file of {} yet", self.topic));
            self.recorder.nemesis("kill", json!({"id": id, "target": "corrupt (no segment yet)", "nodes": [node_id]}));
            return Ok(Some(Undo::Start(vec![node_id])));
        };
        let partition = partition_of(&volume, &file, &self.topic);
        let mode =
            corrupt_file(&file, rng).map_err(|e| DockerError::Setup(format!("corrupting {}: {e}", file.display())))?;
        let relative = file.strip_prefix(&volume).unwrap_or(&file).display().to_string();
        let time_ns = self.recorder.now_ns();
        self.corruptions.push(Corruption {
            node: node_id,
            partition: partition.clone(),
            file: relative.clone(),
            mode: mode.clone(),
            time_ns,
        });
        self.recorder.nemesis(
            "corrupt",
            json!({"id": id, "node": node_id, "partition": partition, "file": relative, "mode": mode}),
        );
        Ok(Some(Undo::Start(vec![node_id])))
    }

    async fn undo(&mut self, undo: Undo, package: Package, id: u64) -> Result<(), DockerError> {
        match undo {
            Undo::Iptables(nodes) => {
                for node in &nodes {
                    flush_iptables(self.cluster.node(*node)).await?;
                }
                self.recorder.nemesis("heal", json!({"id": id, "fault": package.name(), "nodes": nodes}));
            }
            Undo::Start(nodes) => {
                for node in &nodes {
                    docker(&["start", &self.cluster.node(*node).name]).await?;
                }
                self.recorder.nemesis("start", json!({"id": id, "fault": package.name(), "nodes": nodes}));
            }
            Undo::Unpause(nodes) => {
                for node in &nodes {
                    docker(&["unpause", &self.cluster.node(*node).name]).await?;
                }
                self.recorder.nemesis("resume", json!({"id": id, "fault": package.name(), "nodes": nodes}));
            }
            Undo::Clock(nodes) => {
                for node in &nodes {
                    docker::write_faketime(self.cluster.node(*node), "+0")?;
                }
                self.recorder.nemesis("heal", json!({"id": id, "fault": package.name(), "nodes": nodes}));
            }
        }
        Ok(())
    }

    /// Undoes every kind of fault on every node: unpause, start, clocks to `+0`, iptables flushed.
    pub async fn heal_all(&mut self) -> Result<(), DockerError> {
        let cluster = self.cluster.clone();
        for node in &cluster.nodes {
            let state = docker(&["inspect", "-f", "{{.State.Status}}", &node.name]).await?;
            match state.trim() {
                "paused" => {
                    docker(&["unpause", &node.name]).await?;
                }
                "running" => {}
                _ => {
                    docker(&["start", &node.name]).await?;
                }
            }
            docker::write_faketime(node, "+0")?;
            flush_iptables(node).await?;
        }
        self.recorder.nemesis("heal", json!({"fault": "all", "nodes": cluster.ids()}));
        Ok(())
    }
}

/// Sleeps for `duration`; true when `stop` fired first.
async fn sleep_or_stop(duration: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = stop.cancelled() => true,
        () = tokio::time::sleep(duration) => false,
    }
}

/// How many times [`pause`] asks the freezer before it gives up on a node.
const PAUSE_ATTEMPTS: u32 = 4;

/// `docker pause`, asked up to [`PAUSE_ATTEMPTS`] times. The cgroup freezer can refuse: runc waits a
/// bounded time for every task to freeze, and a task in uninterruptible sleep (a broker's fsync in
/// flight on a busy disk) makes it give up with "unable to freeze", thawing the container again
/// (moby/moby#48205; a CI run of this profile ended on it). That is the host declining the fault, not
/// a broken run: `Ok(Err(reason))` after the last refusal, the node left running. Any other failure
/// of `docker pause` (no such container, no daemon) is an error, as before.
async fn pause(node: &Node) -> Result<Result<(), String>, DockerError> {
    let mut last = String::new();
    for attempt in 1..=PAUSE_ATTEMPTS {
        match docker(&["pause", &node.name]).await {
            Ok(_) => return Ok(Ok(())),
            Err(error) if is_freeze_refusal(&error) => last = error.to_string(),
            Err(error) => return Err(error),
        }
        // runc thaws after a refusal; if the container froze after all, it is paused.
        if docker(&["inspect", "-f", "{{.State.Status}}", &node.name]).await?.trim() == "paused" {
            return Ok(Ok(()));
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
    Ok(Err(last))
}

/// Whether `docker pause` failed because the freezer did not reach FROZEN in time.
fn is_freeze_refusal(error: &DockerError) -> bool {
    matches!(error, DockerError::Command { message, .. } if message.contains("unable to freeze"))
}

/// Adds an iptables rule if the node runs (a stopped container has no network namespace, and gets a
/// fresh, rule-free one when it starts).
async fn iptables_if_running(node: &Node, args: &[&str]) -> Result<(), DockerError> {
    if !docker::is_running(node).await {
        return Ok(());
    }
    docker::iptables(node, args).await
}

async fn flush_iptables(node: &Node) -> Result<(), DockerError> {
    if !docker::is_running(node).await {
        return Ok(());
    }
    docker::iptables(node, &["-F", "INPUT"]).await?;
    docker::iptables(node, &["-F", "OUTPUT"]).await
}

/// Non-empty segment files (`data/<topic>@<create index>/<partition>/<base>.log`) of `topic` in a
/// broker's volume. RocksDB's files (under `meta/`) are never touched.
pub fn segment_files(volume: &Path, topic: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(topics) = std::fs::read_dir(volume.join("data")) else { return files };
    let prefix = format!("{topic}@");
    let mut topic_dirs: Vec<PathBuf> = topics
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect();
    topic_dirs.sort();
    for topic_dir in topic_dirs {
        let Ok(partitions) = std::fs::read_dir(&topic_dir) else { continue };
        for partition in partitions.flatten() {
            let Ok(segments) = std::fs::read_dir(partition.path()) else { continue };
            for segment in segments.flatten() {
                let path = segment.path();
                let is_log = path.extension().is_some_and(|ext| ext == "log");
                if is_log && segment.metadata().is_ok_and(|meta| meta.len() > 0) {
                    files.push(path);
                }
            }
        }
    }
    files.sort();
    files
}

/// `"<topic>/<partition>"` of a segment file.
fn partition_of(volume: &Path, file: &Path, topic: &str) -> String {
    let relative = file.strip_prefix(volume.join("data")).unwrap_or(file);
    let partition = relative.components().nth(1).map(|c| c.as_os_str().to_string_lossy().into_owned());
    format!("{topic}/{}", partition.unwrap_or_else(|| "?".into()))
}

/// Flips 1..=3 random bits, or truncates the file to a random shorter length. Returns what it did.
pub fn corrupt_file(file: &Path, rng: &mut StdRng) -> std::io::Result<String> {
    let mut bytes = std::fs::read(file)?;
    if bytes.is_empty() {
        return Ok("nothing (empty file)".into());
    }
    if rng.random_bool(0.5) {
        // Distinct bytes, so no flip undoes another.
        let positions: BTreeSet<usize> =
            (0..rng.random_range(1..=3)).map(|_| rng.random_range(0..bytes.len())).collect();
        let mut flipped = Vec::new();
        for position in positions {
            let bit = rng.random_range(0..8);
            bytes[position] ^= 1 << bit;
            flipped.push(format!("byte {position} bit {bit}"));
        }
        std::fs::write(file, &bytes)?;
        Ok(format!("bit flip: {} of {} bytes", flipped.join(", "), bytes.len()))
    } else {
        let length = rng.random_range(0..bytes.len()) as u64;
        std::fs::OpenOptions::new().write(true).open(file)?.set_len(length)?;
        Ok(format!("truncated from {} to {length} bytes", bytes.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn package_lists_parse_and_bad_names_get_one_clear_error() {
        assert_eq!(Package::parse_list("partition,kill").unwrap(), [Package::Partition, Package::Kill]);
        assert_eq!(Package::parse_list("none").unwrap(), []);
        assert_eq!(Package::parse_list("all").unwrap(), Package::ALL);
        assert_eq!(Package::parse_list(" kill , kill ").unwrap(), [Package::Kill]);
        let error = Package::parse_list("partition,chaos").unwrap_err();
        assert!(error.contains("\"chaos\"") && error.contains("partition, kill"), "{error}");
        assert_eq!(error.lines().count(), 1);
    }

    #[test]
    fn only_the_freezer_giving_up_is_a_refused_pause() {
        let refused = DockerError::Command {
            command: "docker pause keel-jepsen-18409-run-n2".into(),
            message: "exit status: 1 (Error response from daemon: Cannot pause container 34c3: OCI runtime pause failed: unable to freeze: unknown)".into(),
        };
        assert!(is_freeze_refusal(&refused));
        let missing = DockerError::Command {
            command: "docker pause keel-jepsen-1-run-n9".into(),
            message: "exit status: 1 (Error response from daemon: No such container: keel-jepsen-1-run-n9)".into(),
        };
        assert!(!is_freeze_refusal(&missing));
        assert!(!is_freeze_refusal(&DockerError::Setup("unable to freeze".into())));
    }

    #[test]
    fn segment_files_are_the_topics_logs_only_and_corruption_changes_them() {
        let dir = std::env::temp_dir().join(format!("keel-jepsen-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let partition_dir = dir.join("data/jepsen@3/2");
        std::fs::create_dir_all(&partition_dir).unwrap();
        std::fs::create_dir_all(dir.join("meta")).unwrap();
        std::fs::create_dir_all(dir.join("data/other@4/0")).unwrap();
        let segment = partition_dir.join("00000000000000000000.log");
        std::fs::write(&segment, vec![7u8; 4096]).unwrap();
        std::fs::write(partition_dir.join("00000000000000000000.index"), [1u8; 12]).unwrap();
        std::fs::write(partition_dir.join("00000000000000004096.log"), []).unwrap();
        std::fs::write(dir.join("meta/000012.log"), [1u8; 64]).unwrap();
        std::fs::write(dir.join("data/other@4/0/00000000000000000000.log"), [1u8; 64]).unwrap();
        assert_eq!(segment_files(&dir, "jepsen"), std::slice::from_ref(&segment));
        assert_eq!(partition_of(&dir, &segment, "jepsen"), "jepsen/2");
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..8 {
            let before = std::fs::read(&segment).unwrap();
            let mode = corrupt_file(&segment, &mut rng).unwrap();
            let after = std::fs::read(&segment).unwrap();
            assert_ne!(before, after, "{mode}");
            std::fs::write(&segment, vec![7u8; 4096]).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
