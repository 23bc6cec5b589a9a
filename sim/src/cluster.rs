//! The cluster harness: named madsim nodes running the real broker, and the fault controls.
//!
//! In: calls from a scenario (add a broker or a client node, kill, power loss, restart, pause, clog,
//! disk faults, bit flips, heal). Out: node handles to run workloads on, broker addresses, and every control
//! action recorded in the [`Trace`] with its simulated time.
//!
//! # Nodes
//! Broker `i` (1-based) is node `broker-i` at `10.0.1.i:9400`; client node `j` is `client-j` at
//! `10.0.2.j`. The test body (node 0) has no IP and only supervises.
//!
//! # Invariants
//! - A broker's [`SimDisk`] is created once, outside the node's init closure, so it outlives every
//!   restart; everything per incarnation (cancellation token, listener, partition actors) is built
//!   inside the init future.
//! - A restart is always kill-then-restart: madsim's `restart` alone keeps the old sockets bound.
//! - A clean restart is a ctrl-c (the broker's graceful shutdown), a bounded wait for it to exit,
//!   then kill-then-restart. A broker that does not finish its shutdown within the bound is a hang
//!   and is reported as a violation.
//! - Each incarnation hands its metadata Raft [`MetaNodeHandle`] to a [`MetaSlot`] that outlives
//!   restarts, tagged with the incarnation number, so observers can tell a new incarnation (whose
//!   volatile Raft state is gone) from the old one.
//! - Link clogs are counted per directed link: overlapping partitions compose, and a link opens again
//!   only when every fault that closed it has ended.
//! - Every time a broker's `run_broker` returns, the harness records a [`BrokerExit`] with its cause:
//!   asked for (a clean restart's ctrl-c, then a clean stop), or an injected storage fault during that
//!   incarnation (a failed fsync, a failed metadata-store write). Any other exit is a violation,
//!   recorded when it happens, whoever restarts the broker later (`heal`, a supervisor). A kill or a
//!   power loss is not an exit: the harness ends the incarnation itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};

use keel::config::BrokerConfig;
use keel::meta::node::NodeHandle as MetaNodeHandle;
use keel::meta::store_sim::SimKv;
use keel::storage::sim::{BitFlip, SimDisk, SimDiskFaults};
use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lock;
use crate::trace::Trace;

pub const BROKER_PORT: u16 = 9400;
/// The port of a broker's Kafka listener, in the scenarios that run one (ADR 0026).
pub const KAFKA_PORT: u16 = 9092;

/// Broker `index`'s (0-based) Kafka listener address.
pub fn kafka_addr(index: usize) -> String {
    format!("10.0.1.{}:{KAFKA_PORT}", index + 1)
}
/// How long a broker may take to finish a graceful shutdown before it counts as hung.
pub const CLEAN_SHUTDOWN_MS_MAX: u64 = 30_000;

/// Where one broker incarnation stands, as its init future reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerState {
    /// The incarnation started and is loading its data.
    Starting,
    /// The listener is bound: the broker serves requests.
    Serving,
    /// `run_broker` returned (graceful shutdown or an error).
    Exited(Result<(), String>),
    /// The harness killed the node (crash or power loss); no incarnation runs until a restart.
    Down,
}

/// The metadata Raft node of a broker's current incarnation, as its `run_broker` handed it over.
#[derive(Clone, Default)]
pub struct MetaSlot {
    /// The incarnation the handle belongs to (1 = the first start).
    pub incarnation: u64,
    pub node: Option<MetaNodeHandle>,
    /// The node's snapshot index when the handle arrived (`first_index - 1`): a restarted node
    /// re-applies the committed entries after it.
    pub boot_snapshot_index: u64,
}

#[derive(Debug)]
struct BrokerStatus {
    incarnation: u64,
    state: BrokerState,
    /// The harness sent this incarnation a ctrl-c (a clean restart): a clean exit is expected.
    stop_requested: bool,
}

/// Why a broker incarnation's `run_broker` returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitCause {
    /// The harness sent a ctrl-c and the broker stopped cleanly.
    Requested,
    /// The broker stopped with an error after injected storage faults during this incarnation (the
    /// text says which), as a broker must when its storage fails under it.
    StorageFault(String),
    /// No fault the harness injected explains the exit. Recorded as a violation.
    Unexplained,
}

/// One return of `run_broker`, as the harness saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerExit {
    pub broker: usize,
    pub incarnation: u64,
    /// Simulated time since the scenario started.
    pub time_ns: u64,
    pub result: Result<(), String>,
    pub cause: ExitCause,
}

impl BrokerExit {
    /// Whether the nemesis (or the harness's own ctrl-c) caused this exit.
    pub fn caused_by_fault(&self) -> bool {
        self.cause != ExitCause::Unexplained
    }
}

/// Counters of the storage faults injected into one broker's disk and metadata store so far. The
/// difference between two snapshots says what an incarnation went through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct StorageFaults {
    fsync_errors: u64,
    data_write_errors: u64,
    meta_write_errors: u64,
}

impl StorageFaults {
    fn of(disk: &SimDisk, kv: &SimKv) -> StorageFaults {
        let disk_stats = disk.stats();
        StorageFaults {
            fsync_errors: disk_stats.sync_errors,
            data_write_errors: disk_stats.write_errors,
            meta_write_errors: kv.stats().write_errors,
        }
    }

    /// What was injected since `earlier`, in words, or `None` when nothing was.
    fn since(&self, earlier: &StorageFaults) -> Option<String> {
        let mut what = Vec::new();
        let fsync_errors = self.fsync_errors - earlier.fsync_errors;
        if fsync_errors > 0 {
            what.push(format!("{fsync_errors} failed fsyncs"));
        }
        let data_write_errors = self.data_write_errors - earlier.data_write_errors;
        if data_write_errors > 0 {
            what.push(format!("{data_write_errors} failed data writes"));
        }
        let meta_write_errors = self.meta_write_errors - earlier.meta_write_errors;
        if meta_write_errors > 0 {
            what.push(format!("{meta_write_errors} failed metadata-store writes"));
        }
        (!what.is_empty()).then(|| what.join(", "))
    }
}

pub struct Broker {
    pub name: String,
    pub addr: SocketAddr,
    pub node: NodeHandle,
    /// The broker's disk; survives kills and restarts.
    pub disk: SimDisk,
    /// The files of `disk` that bit rot was injected into (the durable-ack check excuses them).
    pub rotted: Arc<Mutex<BTreeSet<String>>>,
    /// The broker's metadata store (the Raft log); survives kills and restarts, loses unsynced
    /// batches on power loss.
    pub kv: SimKv,
    meta: Arc<Mutex<MetaSlot>>,
    status: Arc<Mutex<BrokerStatus>>,
    /// The storage fault counters when the current incarnation started.
    faults_at_start: Arc<Mutex<StorageFaults>>,
    down: bool,
    paused: bool,
    clogged: bool,
}

pub struct Cluster {
    handle: Handle,
    brokers: Vec<Broker>,
    clients: Vec<(String, NodeHandle, bool)>,
    trace: Trace,
    start: Instant,
    /// Broker failures that no injected fault explains (e.g. an exit with fault-free storage).
    violations: Arc<Mutex<Vec<String>>>,
    /// Every return of `run_broker`, in order.
    exits: Arc<Mutex<Vec<BrokerExit>>>,
    /// How many active faults clog each directed broker link `(from, to)` (broker indices).
    link_clogs: BTreeMap<(usize, usize), u32>,
    /// How many active faults clog each directed link between a client node and a broker,
    /// `(client index, broker index, toward the broker)`.
    client_link_clogs: BTreeMap<(usize, usize, bool), u32>,
    /// Whether a fault changed the network's send latency.
    latency_changed: bool,
    /// The packet loss rate the nemesis set (0 = madsim's default, none).
    packet_loss: f64,
    /// Brokers whose wall clock the nemesis skewed, with the offset.
    clock_skews: BTreeMap<usize, i64>,
}

impl Cluster {
    pub fn new(trace: Trace, start: Instant) -> Cluster {
        keel::clock::skew::clear();
        Cluster {
            handle: Handle::current(),
            brokers: Vec::new(),
            clients: Vec::new(),
            trace,
            start,
            violations: Arc::default(),
            exits: Arc::default(),
            link_clogs: BTreeMap::new(),
            client_link_clogs: BTreeMap::new(),
            latency_changed: false,
            packet_loss: 0.0,
            clock_skews: BTreeMap::new(),
        }
    }

    /// Nanoseconds of simulated time since the scenario started.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn note(&self, what: impl Into<String>) {
        self.trace.record(self.now_ns(), what);
    }

    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Adds and starts a broker; `disk_seed` seeds its simulated disk. Returns its index.
    pub fn add_broker(&mut self, mut config: BrokerConfig, disk_seed: u64) -> usize {
        let index = self.brokers.len();
        let number = index as u8 + 1;
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 1, number));
        let addr = SocketAddr::new(ip, BROKER_PORT);
        config.node_id = keel::types::NodeId(u64::from(number));
        config.listen = addr;
        let name = format!("broker-{number}");
        let disk = SimDisk::new(disk_seed);
        disk.set_open_files_max(config.open_files_max.map(|max| max + crate::scenario::SIM_DESCRIPTOR_SLACK));
        let kv = SimKv::new(disk_seed ^ 0x6b76_5f73_6565_6421);
        let status =
            Arc::new(Mutex::new(BrokerStatus { incarnation: 0, state: BrokerState::Starting, stop_requested: false }));
        let meta = Arc::new(Mutex::new(MetaSlot::default()));
        let faults_at_start = Arc::new(Mutex::new(StorageFaults::default()));
        let init = {
            let shared = Incarnation {
                index,
                name: name.clone(),
                config,
                disk: disk.clone(),
                kv: kv.clone(),
                meta: meta.clone(),
                status: status.clone(),
                faults_at_start: faults_at_start.clone(),
                trace: self.trace.clone(),
                start: self.start,
                violations: self.violations.clone(),
                exits: self.exits.clone(),
            };
            move || {
                let incarnation = shared.clone();
                async move { run_incarnation(incarnation).await }
            }
        };
        let node = self.handle.create_node().name(&name).ip(ip).init(init).build();
        self.note(format!("cluster add {name} at {addr}"));
        self.brokers.push(Broker {
            name,
            addr,
            node,
            disk,
            rotted: Arc::default(),
            kv,
            meta,
            status,
            faults_at_start,
            down: false,
            paused: false,
            clogged: false,
        });
        index
    }

    /// Adds a client node (no init task; workloads spawn onto it).
    pub fn add_client(&mut self) -> NodeHandle {
        let number = self.clients.len() as u8 + 1;
        let name = format!("client-{number}");
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 2, number));
        let node = self.handle.create_node().name(&name).ip(ip).build();
        self.clients.push((name, node.clone(), false));
        node
    }

    pub fn broker(&self, index: usize) -> &Broker {
        &self.brokers[index]
    }

    pub fn broker_addr(&self, index: usize) -> String {
        self.brokers[index].addr.to_string()
    }

    pub fn broker_count(&self) -> usize {
        self.brokers.len()
    }

    /// The metadata Raft node of broker `index`'s latest incarnation that handed one over.
    pub fn meta_slot(&self, index: usize) -> MetaSlot {
        lock(&self.brokers[index].meta).clone()
    }

    /// A shared view of broker `index`'s metadata slot (for observer tasks).
    pub fn meta_slot_shared(&self, index: usize) -> Arc<Mutex<MetaSlot>> {
        self.brokers[index].meta.clone()
    }

    /// The incarnation number broker `index` is on (bumped when an incarnation starts).
    pub fn incarnation(&self, index: usize) -> u64 {
        lock(&self.brokers[index].status).incarnation
    }

    pub fn broker_state(&self, index: usize) -> BrokerState {
        lock(&self.brokers[index].status).state.clone()
    }

    pub fn is_up(&self, index: usize) -> bool {
        !self.brokers[index].down
    }

    pub fn is_paused(&self, index: usize) -> bool {
        self.brokers[index].paused
    }

    pub fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }

    /// Records a violation found by a driver (e.g. a supervisor that finds a broker in a state no fault
    /// explains); it joins [`Cluster::violations`].
    pub fn violation(&self, message: String) {
        self.note(format!("violation {message}"));
        lock(&self.violations).push(message);
    }

    /// Every return of `run_broker` so far, in order, each with its cause. Unexplained ones are already
    /// in [`Cluster::violations`].
    pub fn exits(&self) -> Vec<BrokerExit> {
        lock(&self.exits).clone()
    }

    /// How broker `index`'s current incarnation exited, if it has.
    pub fn current_exit(&self, index: usize) -> Option<BrokerExit> {
        let incarnation = self.incarnation(index);
        lock(&self.exits).iter().rev().find(|exit| exit.broker == index && exit.incarnation == incarnation).cloned()
    }

    /// The storage faults injected into broker `index` since its current incarnation started, in words,
    /// or `None`. A driver that sees a broker component stop can ask whether a fault explains it.
    pub fn storage_faults_this_incarnation(&self, index: usize) -> Option<String> {
        let broker = &self.brokers[index];
        let at_start = *lock(&broker.faults_at_start);
        StorageFaults::of(&broker.disk, &broker.kv).since(&at_start)
    }

    /// Kills every node once a run is judged, so that their tasks, and the simulated disks those
    /// hold, are dropped now: madsim drops a killed node's tasks, but the idle tasks of a node still
    /// alive when the runtime ends are never dropped (they leaked every run's disks: about 30 MB a
    /// run with 1,000 partitions, which a campaign of thousands of seeds cannot afford).
    pub fn release(&mut self) {
        for broker in &self.brokers {
            self.handle.kill(broker.node.id());
        }
        for (_, node, _) in &self.clients {
            self.handle.kill(node.id());
        }
    }

    /// Process crash: the broker's tasks die and its sockets close; the disk (page cache included)
    /// keeps everything written.
    pub fn kill(&mut self, index: usize) {
        let broker = &mut self.brokers[index];
        self.handle.kill(broker.node.id());
        lock(&broker.status).state = BrokerState::Down;
        broker.down = true;
        broker.paused = false;
        let name = broker.name.clone();
        self.note(format!("nemesis kill {name}"));
    }

    /// Power loss: kill, then the disk drops what was not synced (possibly tearing the last write).
    pub fn power_loss(&mut self, index: usize) {
        let broker = &mut self.brokers[index];
        self.handle.kill(broker.node.id());
        lock(&broker.status).state = BrokerState::Down;
        broker.disk.crash();
        broker.kv.crash();
        broker.down = true;
        broker.paused = false;
        let name = broker.name.clone();
        self.note(format!("nemesis power_loss {name}"));
    }

    /// Starts a new incarnation (kill first, so the old one's sockets are released).
    pub fn restart(&mut self, index: usize) {
        let broker = &mut self.brokers[index];
        self.handle.kill(broker.node.id());
        // Until the new incarnation starts, the old one's state (e.g. `Serving`) is stale.
        lock(&broker.status).state = BrokerState::Down;
        self.handle.restart(broker.node.id());
        broker.down = false;
        broker.paused = false;
        let name = broker.name.clone();
        self.note(format!("nemesis restart {name}"));
    }

    /// Graceful shutdown (ctrl-c), bounded wait for the broker to exit, then a restart.
    pub async fn clean_restart(&mut self, index: usize) {
        if self.brokers[index].paused {
            self.resume(index);
        }
        if self.brokers[index].down {
            self.restart(index);
            return;
        }
        let name = self.brokers[index].name.clone();
        self.note(format!("nemesis ctrl_c {name}"));
        lock(&self.brokers[index].status).stop_requested = true;
        self.handle.send_ctrl_c(self.brokers[index].node.id());
        let deadline = Instant::now() + Duration::from_millis(CLEAN_SHUTDOWN_MS_MAX);
        loop {
            if matches!(self.broker_state(index), BrokerState::Exited(_))
                || self.handle.is_exit(self.brokers[index].node.id())
            {
                break;
            }
            if Instant::now() >= deadline {
                self.violation(format!("{name} did not finish a graceful shutdown within {CLEAN_SHUTDOWN_MS_MAX} ms"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.restart(index);
    }

    pub fn pause(&mut self, index: usize) {
        let broker = &mut self.brokers[index];
        if broker.down || broker.paused {
            return;
        }
        self.handle.pause(broker.node.id());
        broker.paused = true;
        let name = broker.name.clone();
        self.note(format!("nemesis pause {name}"));
    }

    pub fn resume(&mut self, index: usize) {
        let broker = &mut self.brokers[index];
        if !broker.paused {
            return;
        }
        self.handle.resume(broker.node.id());
        broker.paused = false;
        let name = broker.name.clone();
        self.note(format!("nemesis resume {name}"));
    }

    /// Cuts a broker off the network (both directions). Open connections hold their data.
    pub fn clog_broker(&mut self, index: usize) {
        let broker = &mut self.brokers[index];
        NetSim::current().clog_node(broker.node.id());
        broker.clogged = true;
        let name = broker.name.clone();
        self.note(format!("nemesis clog {name}"));
    }

    pub fn unclog_broker(&mut self, index: usize) {
        let broker = &mut self.brokers[index];
        NetSim::current().unclog_node(broker.node.id());
        broker.clogged = false;
        let name = broker.name.clone();
        self.note(format!("nemesis unclog {name}"));
    }

    /// Cuts a client node off the network.
    pub fn clog_client(&mut self, client_idx: usize) {
        let (name, node, clogged) = &mut self.clients[client_idx];
        NetSim::current().clog_node(node.id());
        *clogged = true;
        let name = name.clone();
        self.note(format!("nemesis clog {name}"));
    }

    pub fn unclog_client(&mut self, client_idx: usize) {
        let (name, node, clogged) = &mut self.clients[client_idx];
        NetSim::current().unclog_node(node.id());
        *clogged = false;
        let name = name.clone();
        self.note(format!("nemesis unclog {name}"));
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Clogs the directed link from broker `from` to broker `to` (one more fault holds it closed).
    pub fn clog_link(&mut self, from: usize, to: usize) {
        let count = self.link_clogs.entry((from, to)).or_insert(0);
        *count += 1;
        if *count == 1 {
            NetSim::current().clog_link(self.brokers[from].node.id(), self.brokers[to].node.id());
            let what = format!("nemesis clog_link {} -> {}", self.brokers[from].name, self.brokers[to].name);
            self.note(what);
        }
    }

    /// One fault that clogged `from -> to` ended; the link opens when no other fault holds it.
    pub fn unclog_link(&mut self, from: usize, to: usize) {
        let Some(count) = self.link_clogs.get_mut(&(from, to)) else { return };
        *count -= 1;
        if *count == 0 {
            self.link_clogs.remove(&(from, to));
            NetSim::current().unclog_link(self.brokers[from].node.id(), self.brokers[to].node.id());
            let what = format!("nemesis unclog_link {} -> {}", self.brokers[from].name, self.brokers[to].name);
            self.note(what);
        }
    }

    /// Clogs one direction of the link between client node `client_idx` and broker `broker`: the
    /// client's requests (`toward_broker`) or the broker's answers. One more fault holds it closed.
    pub fn clog_client_link(&mut self, client_idx: usize, broker: usize, toward_broker: bool) {
        let count = self.client_link_clogs.entry((client_idx, broker, toward_broker)).or_insert(0);
        *count += 1;
        if *count == 1 {
            let (from, to) = self.client_link_ends(client_idx, broker, toward_broker);
            NetSim::current().clog_link(from.1, to.1);
            self.note(format!("nemesis clog_link {} -> {}", from.0, to.0));
        }
    }

    /// One fault that clogged this direction of a client's link to a broker ended; the link opens
    /// when no other fault holds it.
    pub fn unclog_client_link(&mut self, client_idx: usize, broker: usize, toward_broker: bool) {
        let key = (client_idx, broker, toward_broker);
        let Some(count) = self.client_link_clogs.get_mut(&key) else { return };
        *count -= 1;
        if *count == 0 {
            self.client_link_clogs.remove(&key);
            self.open_client_link(key);
        }
    }

    fn open_client_link(&self, (client_idx, broker, toward_broker): (usize, usize, bool)) {
        let (from, to) = self.client_link_ends(client_idx, broker, toward_broker);
        NetSim::current().unclog_link(from.1, to.1);
        self.note(format!("nemesis unclog_link {} -> {}", from.0, to.0));
    }

    /// The (name, node id) of the sending and the receiving end of a client-broker link direction.
    fn client_link_ends(
        &self,
        client_idx: usize,
        broker: usize,
        toward_broker: bool,
    ) -> ((String, madsim::task::NodeId), (String, madsim::task::NodeId)) {
        let (client_name, client_node, _) = &self.clients[client_idx];
        let client = (client_name.clone(), client_node.id());
        let broker = (self.brokers[broker].name.clone(), self.brokers[broker].node.id());
        if toward_broker {
            (client, broker)
        } else {
            (broker, client)
        }
    }

    /// Sets the network's per-message send latency range (madsim's default is 1-10 ms).
    pub fn set_send_latency(&mut self, min: Duration, max: Duration) {
        NetSim::current().update_config(|config| config.send_latency = min..max);
        self.latency_changed = true;
        self.note(format!("nemesis send_latency {}..{} ms", min.as_millis(), max.as_millis()));
    }

    pub fn reset_send_latency(&mut self) {
        if !self.latency_changed {
            return;
        }
        NetSim::current().update_config(|config| config.send_latency = madsim::net::Config::default().send_latency);
        self.latency_changed = false;
        self.note("nemesis send_latency default");
    }

    /// Drops each message with probability `rate` on every link (0 ends the fault). madsim keeps a TCP
    /// stream reliable and ordered: a lost message is sent again after a backoff from 1 ms, doubling,
    /// so loss shows up as bursts of latency and head-of-line blocking (and failed connects).
    pub fn set_packet_loss(&mut self, rate: f64) {
        if rate == self.packet_loss {
            return;
        }
        NetSim::current().update_config(|config| config.packet_loss_rate = rate);
        self.packet_loss = rate;
        self.note(format!("nemesis packet_loss {rate:.3}"));
    }

    /// Skews broker `index`'s wall clock by `offset_ms` (a jump; 0 ends the fault): its heartbeats,
    /// record timestamps and producer-expiry checks read it ([`keel::clock::skew`]).
    pub fn set_clock_skew(&mut self, index: usize, offset_ms: i64) {
        let current = self.clock_skews.get(&index).copied().unwrap_or(0);
        if current == offset_ms {
            return;
        }
        keel::clock::skew::set_offset_ms(self.brokers[index].node.id(), offset_ms);
        if offset_ms == 0 {
            self.clock_skews.remove(&index);
        } else {
            self.clock_skews.insert(index, offset_ms);
        }
        self.note(format!("nemesis clock_skew {} {offset_ms:+} ms", self.brokers[index].name));
    }

    /// Makes broker `index`'s metadata store fail writes with `probability` (0 ends the fault).
    pub fn set_meta_write_errors(&mut self, index: usize, probability: f64) {
        let broker = &self.brokers[index];
        if broker.kv.write_error_probability() == probability {
            return;
        }
        broker.kv.set_write_error_probability(probability);
        let name = broker.name.clone();
        self.note(format!("nemesis meta_write_errors {name} p={probability:.3}"));
    }

    /// Bit rot on broker `index`'s disk: flips one bit of a synced file whose path ends with `suffix`
    /// (drawn by the disk's seeded RNG), in its durable bytes and the page cache; `None` when the
    /// broker has no such file yet.
    pub fn flip_durable_bit(&mut self, index: usize, suffix: &str) -> Option<BitFlip> {
        let broker = &self.brokers[index];
        let flip = broker.disk.flip_random_durable_bit(suffix)?;
        crate::lock(&broker.rotted).insert(flip.path.clone());
        let name = broker.name.clone();
        self.note(format!("nemesis bit_flip {name} {} byte {} bit {}", flip.path, flip.byte, flip.bit));
        Some(flip)
    }

    pub fn set_disk_faults(&mut self, index: usize, faults: SimDiskFaults) {
        let broker = &self.brokers[index];
        broker.disk.set_faults(faults.clone());
        let name = broker.name.clone();
        self.note(format!(
            "nemesis disk_faults {name} fsync_error_p={} fsync_latency_ms={}..={} write_eio_p={} write_enospc_p={} \
             torn_p={} garbage_p={}",
            faults.fsync_error_probability,
            faults.fsync_latency_ms.0,
            faults.fsync_latency_ms.1,
            faults.write_eio_probability,
            faults.write_enospc_probability,
            faults.torn_write_probability,
            faults.garbage_tail_probability
        ));
    }

    /// Ends every fault: fault-free fsyncs (crashes may still tear, as real ones do), every node
    /// resumed and unclogged, every broker up. A broker whose incarnation exited is restarted like a
    /// supervisor would, and the trace says why it had exited; an exit no fault caused was already
    /// recorded as a violation when it happened.
    pub fn heal(&mut self) {
        self.note("heal begin");
        for (from, to) in std::mem::take(&mut self.link_clogs).into_keys() {
            NetSim::current().unclog_link(self.brokers[from].node.id(), self.brokers[to].node.id());
            let what = format!("nemesis unclog_link {} -> {}", self.brokers[from].name, self.brokers[to].name);
            self.note(what);
        }
        for key in std::mem::take(&mut self.client_link_clogs).into_keys() {
            self.open_client_link(key);
        }
        self.reset_send_latency();
        self.set_packet_loss(0.0);
        for index in 0..self.brokers.len() {
            self.set_clock_skew(index, 0);
            self.set_meta_write_errors(index, 0.0);
            self.set_disk_faults(index, SimDiskFaults::default());
            self.resume(index);
            if self.brokers[index].clogged {
                self.unclog_broker(index);
            }
            if matches!(self.broker_state(index), BrokerState::Exited(_)) && !self.brokers[index].down {
                let cause = match self.current_exit(index) {
                    Some(exit) => format!("{:?}", exit.cause),
                    None => "no exit recorded".to_owned(),
                };
                let name = self.brokers[index].name.clone();
                self.note(format!("heal restarts {name}, which had exited ({cause})"));
                self.restart(index);
            } else if self.brokers[index].down {
                self.restart(index);
            }
        }
        for client_idx in 0..self.clients.len() {
            if self.clients[client_idx].2 {
                self.unclog_client(client_idx);
            }
        }
        self.note("heal end");
    }

    /// Waits until broker `index` serves (its listener is bound), up to `bound`.
    pub async fn wait_serving(&self, index: usize, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        loop {
            if self.broker_state(index) == BrokerState::Serving {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// What every incarnation of one broker shares (captured by the node's init closure).
#[derive(Clone)]
struct Incarnation {
    index: usize,
    name: String,
    config: BrokerConfig,
    disk: SimDisk,
    kv: SimKv,
    meta: Arc<Mutex<MetaSlot>>,
    status: Arc<Mutex<BrokerStatus>>,
    faults_at_start: Arc<Mutex<StorageFaults>>,
    trace: Trace,
    start: Instant,
    violations: Arc<Mutex<Vec<String>>>,
    exits: Arc<Mutex<Vec<BrokerExit>>>,
}

/// One broker incarnation: the real `run_broker`, stopped by ctrl-c, its fate reported in `status`.
async fn run_incarnation(shared: Incarnation) {
    let Incarnation { index, name, config, disk, kv, meta, status, faults_at_start, trace, start, violations, exits } =
        shared;
    let incarnation = {
        let mut status = lock(&status);
        status.incarnation += 1;
        status.state = BrokerState::Starting;
        status.stop_requested = false;
        status.incarnation
    };
    let faults_before = StorageFaults::of(&disk, &kv);
    *lock(&faults_at_start) = faults_before;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    let (bound_sender, bound_receiver) = tokio::sync::oneshot::channel();
    let serving = status.clone();
    tokio::spawn(async move {
        if bound_receiver.await.is_ok() {
            let mut status = lock(&serving);
            if status.incarnation == incarnation {
                status.state = BrokerState::Serving;
            }
        }
    });
    let (meta_sender, meta_receiver) = tokio::sync::oneshot::channel::<MetaNodeHandle>();
    tokio::spawn(async move {
        if let Ok(node) = meta_receiver.await {
            let boot_snapshot_index = node.status().first_index.saturating_sub(1);
            *lock(&meta) = MetaSlot { incarnation, node: Some(node), boot_snapshot_index };
        }
    });
    let hooks =
        keel::server::BrokerHooks { bound: Some(bound_sender), meta_node: Some(meta_sender), ..Default::default() };
    let result = keel::server::run_broker(config, disk.clone(), kv.open(), shutdown, hooks).await;
    let now_ns = start.elapsed().as_nanos() as u64;
    let result = result.map_err(|error| error.to_string());
    // A broker stops on its own only when told to or when its storage failed under it; any other exit
    // (a load error on healthy storage, a task that gave up, a clean stop nobody asked for) is a bug.
    let stop_requested = lock(&status).stop_requested;
    let cause = match (&result, StorageFaults::of(&disk, &kv).since(&faults_before)) {
        (Ok(()), _) if stop_requested => ExitCause::Requested,
        (Err(_), Some(faults)) => ExitCause::StorageFault(faults),
        _ => ExitCause::Unexplained,
    };
    match &result {
        Ok(()) => trace.record(now_ns, format!("{name} incarnation {incarnation} stopped cleanly ({cause:?})")),
        Err(error) => trace.record(now_ns, format!("{name} incarnation {incarnation} exited: {error} ({cause:?})")),
    }
    if cause == ExitCause::Unexplained {
        let requested = if stop_requested { "after a ctrl-c" } else { "without a ctrl-c" };
        let message = format!(
            "{name} incarnation {incarnation} exited {requested} with {result:?}, and no injected fault explains it"
        );
        trace.record(now_ns, format!("violation {message}"));
        lock(&violations).push(message);
    }
    lock(&exits).push(BrokerExit { broker: index, incarnation, time_ns: now_ns, result: result.clone(), cause });
    lock(&status).state = BrokerState::Exited(result);
}
