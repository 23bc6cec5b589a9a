//! Real `keel` processes: what the real-process tests (`tests/broker_process.rs`,
//! `tests/cluster_process.rs`) and `keel cluster up` run.
//!
//! In: a [`BrokerCommand`] (the binary, its flags, the address it will answer on, where its stderr
//! goes). Out: a [`BrokerProcess`] that can be awaited until it answers
//! ([`BrokerProcess::wait_ready`]), stopped with a signal within a bound ([`BrokerProcess::stop`]),
//! killed with SIGKILL ([`BrokerProcess::kill9`]) and started again on the same data
//! ([`BrokerProcess::restart`]); a [`LocalCluster`] of such processes sharing one `--peers` list; and
//! [`run_keel`], which runs one client command to completion.
//!
//! # Invariants
//! - Nothing here blocks a runtime thread: children are `tokio::process` children, exits are
//!   awaited, and polls sleep with `tokio::time`. Signals are sent with `rustix::process::kill_process`,
//!   never by running a `kill` command.
//! - A signal only reaches our own child: a child is reaped only when it is awaited here, and tokio
//!   stops reporting its pid once it is reaped, so a pid we signal cannot belong to another process.
//! - Every child gets SIGKILL when its handle is dropped, so a failing test or an aborted
//!   `keel cluster up` leaves no broker behind.
//! - Readiness is a condition, never a fixed sleep: the broker answers a metadata request, which
//!   waits for a Raft read barrier, so a ready broker's metadata group has a leader. A child that
//!   exits while we wait is reported at once, with its exit status.
//!
//! Exists only in the normal build: the simulation has no processes.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::client::{Client, ClientConfig};

/// How often [`BrokerProcess::wait_ready`] asks the broker again.
pub const READY_POLL_INTERVAL_MS: u64 = 20;
/// How long one readiness probe may take (connect plus the metadata request's read barrier).
pub const READY_PROBE_TIMEOUT_MS: u64 = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("cannot open {path} for {what}'s log: {source}")]
    Log { what: String, path: PathBuf, source: std::io::Error },
    #[error("{what} exited before it was ready ({status})")]
    ExitedEarly { what: String, status: ExitStatus },
    #[error("{what} did not answer within {timeout:?}")]
    NotReady { what: String, timeout: Duration },
    #[error("cannot signal or wait for {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what} is still running; stop it before starting it again")]
    StillRunning { what: String },
}

/// The signals a broker is stopped with gracefully (both make `keel broker` shut down cleanly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM, what service managers send.
    Terminate,
    /// SIGINT, what Ctrl-C sends.
    Interrupt,
}

impl Signal {
    fn to_rustix(self) -> rustix::process::Signal {
        match self {
            Signal::Terminate => rustix::process::Signal::TERM,
            Signal::Interrupt => rustix::process::Signal::INT,
        }
    }
}

/// Sends `signal` to `child` if it has not been reaped yet (see the module doc for why that makes
/// the pid safe to signal). Returns whether a signal was sent.
pub fn signal_child(child: &Child, signal: Signal) -> std::io::Result<bool> {
    let Some(pid) = child.id() else { return Ok(false) };
    let pid = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw);
    let pid = pid.ok_or_else(|| std::io::Error::other("child pid out of range"))?;
    match rustix::process::kill_process(pid, signal.to_rustix()) {
        Ok(()) => Ok(true),
        // The child exited and is a zombie nobody has awaited yet: nothing to signal.
        Err(rustix::io::Errno::SRCH) => Ok(false),
        Err(errno) => Err(errno.into()),
    }
}

/// Where a broker's stderr (its log) goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stderr {
    /// The parent's stderr (tests: the log shows up next to the failure).
    Inherit,
    Null,
    /// Appended to this file, which is created if missing (a restart keeps the earlier log).
    AppendTo(PathBuf),
}

/// How to run one `keel broker`: the binary, its flags and the address it will answer on.
#[derive(Clone, Debug)]
pub struct BrokerCommand {
    pub exe: PathBuf,
    /// The address the broker answers on once it is up (what readiness probes).
    pub addr: SocketAddr,
    /// Flags before the `broker` subcommand (global ones, e.g. `--log-format json`).
    pub global_args: Vec<OsString>,
    /// Flags after `broker`.
    pub broker_args: Vec<OsString>,
    /// Extra environment (e.g. `RUST_LOG`), on top of the parent's.
    pub env: Vec<(OsString, OsString)>,
    pub stderr: Stderr,
    /// The TLS the readiness probe connects with (a broker whose listener speaks TLS).
    pub probe_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl BrokerCommand {
    /// `exe broker --listen addr --data-dir data_dir`, stderr inherited.
    pub fn new(exe: impl Into<PathBuf>, addr: SocketAddr, data_dir: impl AsRef<Path>) -> BrokerCommand {
        BrokerCommand::bare(exe, addr).arg("--listen").arg(addr.to_string()).arg("--data-dir").arg(data_dir.as_ref())
    }

    /// `exe broker` with no flags yet; the caller's flags must make it listen on `addr`.
    pub fn bare(exe: impl Into<PathBuf>, addr: SocketAddr) -> BrokerCommand {
        BrokerCommand {
            exe: exe.into(),
            addr,
            global_args: Vec::new(),
            broker_args: Vec::new(),
            env: Vec::new(),
            stderr: Stderr::Inherit,
            probe_tls: None,
        }
    }

    /// The readiness probe connects with `tls`.
    pub fn probe_tls(mut self, tls: std::sync::Arc<rustls::ClientConfig>) -> BrokerCommand {
        self.probe_tls = Some(tls);
        self
    }

    /// A voter of a metadata group: `--node-id node_id --peers peers`.
    pub fn member(self, node_id: u64, peers: &str) -> BrokerCommand {
        self.arg("--node-id").arg(node_id.to_string()).arg("--peers").arg(peers)
    }

    /// Adds a flag after `broker`.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> BrokerCommand {
        self.broker_args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> BrokerCommand {
        self.broker_args.extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// Adds a global flag (before `broker`).
    pub fn global_arg(mut self, arg: impl AsRef<OsStr>) -> BrokerCommand {
        self.global_args.push(arg.as_ref().to_owned());
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> BrokerCommand {
        self.env.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn stderr(mut self, stderr: Stderr) -> BrokerCommand {
        self.stderr = stderr;
        self
    }

    fn what(&self) -> String {
        format!("the broker at {}", self.addr)
    }

    fn spawn(&self) -> Result<Child, ProcessError> {
        let stderr = match &self.stderr {
            Stderr::Inherit => Stdio::inherit(),
            Stderr::Null => Stdio::null(),
            Stderr::AppendTo(path) => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
                let file =
                    file.map_err(|source| ProcessError::Log { what: self.what(), path: path.clone(), source })?;
                Stdio::from(file)
            }
        };
        Command::new(&self.exe)
            .args(&self.global_args)
            .arg("broker")
            .args(&self.broker_args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProcessError::Spawn { what: self.what(), source })
    }
}

/// How a [`BrokerProcess::stop`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    pub status: ExitStatus,
    /// The broker did not exit within the bound after the signal and was killed with SIGKILL.
    pub forced: bool,
}

/// One running (or exited) `keel broker` child.
#[derive(Debug)]
pub struct BrokerProcess {
    command: BrokerCommand,
    child: Child,
}

impl BrokerProcess {
    /// Starts the broker; does not wait for it (see [`BrokerProcess::wait_ready`]).
    pub fn spawn(command: BrokerCommand) -> Result<BrokerProcess, ProcessError> {
        let child = command.spawn()?;
        Ok(BrokerProcess { command, child })
    }

    /// [`BrokerProcess::spawn`], then [`BrokerProcess::wait_ready`].
    pub async fn start(command: BrokerCommand, timeout: Duration) -> Result<BrokerProcess, ProcessError> {
        let mut process = BrokerProcess::spawn(command)?;
        process.wait_ready(timeout).await?;
        Ok(process)
    }

    pub fn addr(&self) -> SocketAddr {
        self.command.addr
    }

    pub fn command(&self) -> &BrokerCommand {
        &self.command
    }

    /// The child's pid while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The child itself, e.g. to await its exit next to other events.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the broker has exited (without waiting).
    pub fn exited(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        self.child.try_wait().map_err(|source| ProcessError::Io { what: self.command.what(), source })
    }

    /// Waits until the broker answers a metadata request, at most `timeout`; fails at once if it exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), ProcessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let config = ClientConfig {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(READY_PROBE_TIMEOUT_MS),
            retries: 0,
            tls: self.command.probe_tls.clone(),
            ..ClientConfig::default()
        };
        loop {
            if let Some(status) = self.exited()? {
                return Err(ProcessError::ExitedEarly { what: self.command.what(), status });
            }
            let client = Client::new(self.command.addr.to_string(), config.clone());
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(READY_PROBE_TIMEOUT_MS), client.metadata(&[])).await
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProcessError::NotReady { what: self.command.what(), timeout });
            }
            tokio::time::sleep(Duration::from_millis(READY_POLL_INTERVAL_MS)).await;
        }
    }

    /// kill -9: SIGKILL, then reap. Nothing of the broker's shutdown path runs.
    pub async fn kill9(&mut self) -> Result<ExitStatus, ProcessError> {
        let what = self.command.what();
        // `Child::kill` sends SIGKILL and awaits the exit; a child that already exited is just reaped.
        if self.exited()?.is_none() {
            self.child.kill().await.map_err(|source| ProcessError::Io { what: what.clone(), source })?;
        }
        self.child.wait().await.map_err(|source| ProcessError::Io { what, source })
    }

    /// Sends `signal` (nothing if the broker already exited).
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        signal_child(&self.child, signal)
            .map(|_| ())
            .map_err(|source| ProcessError::Io { what: self.command.what(), source })
    }

    /// A graceful stop: `signal`, then wait up to `timeout` for the exit, then SIGKILL.
    pub async fn stop(&mut self, signal: Signal, timeout: Duration) -> Result<Stopped, ProcessError> {
        self.signal(signal)?;
        self.wait_stopped(timeout).await
    }

    /// Waits up to `timeout` for the broker to exit, then kills it (for a signal sent earlier).
    async fn wait_stopped(&mut self, timeout: Duration) -> Result<Stopped, ProcessError> {
        let what = self.command.what();
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                Ok(Stopped { status: status.map_err(|source| ProcessError::Io { what, source })?, forced: false })
            }
            Err(_) => Ok(Stopped { status: self.kill9().await?, forced: true }),
        }
    }

    /// Starts the broker again with the same command (so on the same data dir and address); the
    /// previous process must have exited. Does not wait for it (see [`BrokerProcess::wait_ready`]).
    pub fn restart(&mut self) -> Result<(), ProcessError> {
        if self.exited()?.is_none() {
            return Err(ProcessError::StillRunning { what: self.command.what() });
        }
        self.child = self.command.spawn()?;
        Ok(())
    }
}

/// What [`LocalCluster::spawn`] starts: `addrs.len()` voters, node `i` (from 1) on `addrs[i - 1]`
/// with its data in `data_dir/node-i`.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub exe: PathBuf,
    pub addrs: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    /// Node `i`'s stderr goes to `data_dir/node-i.log` (appended) instead of being inherited.
    pub node_logs: bool,
    pub env: Vec<(OsString, OsString)>,
    /// Node `i`'s Kafka listener (`--kafka-listen`, ADR 0026); empty: no node has one.
    pub kafka_addrs: Vec<SocketAddr>,
    /// Node `i`'s admin HTTP listener (`--admin-listen`, ADR 0027); empty: no node has one.
    pub admin_addrs: Vec<SocketAddr>,
    /// The TLS the readiness probes connect with, when the nodes' listeners speak TLS (their own
    /// TLS flags come through `env`: `KEEL_TLS_CERT`, ...).
    pub probe_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl ClusterSpec {
    pub fn new(exe: impl Into<PathBuf>, addrs: Vec<SocketAddr>, data_dir: impl Into<PathBuf>) -> ClusterSpec {
        ClusterSpec {
            exe: exe.into(),
            addrs,
            data_dir: data_dir.into(),
            node_logs: false,
            env: Vec::new(),
            kafka_addrs: Vec::new(),
            admin_addrs: Vec::new(),
            probe_tls: None,
        }
    }

    /// The `--peers` list every node gets: `1=addr1,2=addr2,...`.
    pub fn peers(&self) -> String {
        let peers: Vec<String> =
            self.addrs.iter().enumerate().map(|(index, addr)| format!("{}={addr}", index + 1)).collect();
        peers.join(",")
    }

    pub fn node_dir(&self, node_id: u64) -> PathBuf {
        self.data_dir.join(format!("node-{node_id}"))
    }

    pub fn node_log(&self, node_id: u64) -> PathBuf {
        self.data_dir.join(format!("node-{node_id}.log"))
    }
}

/// One node of a [`LocalCluster`].
#[derive(Debug)]
pub struct ClusterNode {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Where its stderr goes, when not inherited.
    pub log: Option<PathBuf>,
    pub process: BrokerProcess,
}

/// A metadata group of real `keel broker` processes on this machine.
#[derive(Debug)]
pub struct LocalCluster {
    nodes: Vec<ClusterNode>,
}

impl LocalCluster {
    /// Starts every node; does not wait for them (see [`LocalCluster::wait_ready`]). If one cannot
    /// be started, the ones already started are killed (dropped) and the error returned.
    pub fn spawn(spec: &ClusterSpec) -> Result<LocalCluster, ProcessError> {
        let peers = spec.peers();
        let mut nodes = Vec::new();
        for (index, addr) in spec.addrs.iter().enumerate() {
            let node_id = index as u64 + 1;
            let data_dir = spec.node_dir(node_id);
            let log = spec.node_logs.then(|| spec.node_log(node_id));
            let mut command = BrokerCommand::new(&spec.exe, *addr, &data_dir).member(node_id, &peers);
            for (key, value) in &spec.env {
                command = command.env(key, value);
            }
            if let Some(kafka) = spec.kafka_addrs.get(index) {
                command = command.arg("--kafka-listen").arg(kafka.to_string());
            }
            if let Some(admin) = spec.admin_addrs.get(index) {
                command = command.arg("--admin-listen").arg(admin.to_string());
            }
            if let Some(tls) = &spec.probe_tls {
                command = command.probe_tls(tls.clone());
            }
            if let Some(log) = &log {
                command = command.stderr(Stderr::AppendTo(log.clone()));
            }
            let process = BrokerProcess::spawn(command)?;
            nodes.push(ClusterNode { node_id, data_dir, log, process });
        }
        Ok(LocalCluster { nodes })
    }

    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The node with id `node_id`. Panics if there is none (node ids are 1..=len).
    pub fn node_mut(&mut self, node_id: u64) -> &mut ClusterNode {
        let node = self.nodes.iter_mut().find(|node| node.node_id == node_id);
        node.unwrap_or_else(|| panic!("no node {node_id} in this cluster"))
    }

    /// Waits until every running node answers a metadata request (so the group has a leader), at
    /// most `timeout` in all. A node that exits meanwhile fails the wait at once, naming it.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), ProcessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for node in &mut self.nodes {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match node.process.wait_ready(left).await {
                Ok(()) => {}
                Err(ProcessError::ExitedEarly { status, .. }) => {
                    return Err(ProcessError::ExitedEarly { what: format!("node {}", node.node_id), status })
                }
                Err(ProcessError::NotReady { .. }) => {
                    return Err(ProcessError::NotReady { what: format!("node {}", node.node_id), timeout })
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Waits until some running node exits and returns its id and exit status; never resolves while
    /// none is running. Cancel-safe (awaiting a child's exit is).
    pub async fn next_exit(&mut self) -> (u64, std::io::Result<ExitStatus>) {
        let mut exits: FuturesUnordered<_> = self
            .nodes
            .iter_mut()
            .filter(|node| node.process.pid().is_some())
            .map(|node| {
                let node_id = node.node_id;
                let child = node.process.child_mut();
                async move { (node_id, child.wait().await) }
            })
            .collect();
        match exits.next().await {
            Some(exit) => exit,
            None => std::future::pending().await,
        }
    }

    /// Stops every node that still runs: `signal` to all of them at once, then waits for each, at
    /// most `timeout` in all, and kills those still running then. Returns, per node, how it stopped
    /// (`None` for a node that had already exited).
    pub async fn stop_all(
        &mut self,
        signal: Signal,
        timeout: Duration,
    ) -> Vec<(u64, Result<Option<Stopped>, ProcessError>)> {
        let mut signalled = Vec::new();
        for node in &mut self.nodes {
            let running = node.process.pid().is_some();
            signalled.push(running && node.process.signal(signal).is_ok());
        }
        let stops = self.nodes.iter_mut().zip(signalled).map(|(node, signalled)| async move {
            let result = if signalled {
                node.process.wait_stopped(timeout).await.map(Some)
            } else if node.process.exited().ok().flatten().is_some() {
                Ok(None)
            } else {
                // Signalling failed although the node runs: do not leave it behind.
                node.process.kill9().await.map(|status| Some(Stopped { status, forced: true }))
            };
            (node.node_id, result)
        });
        futures::future::join_all(stops).await
    }
}

/// Runs `exe` with `args` to completion, feeding it `stdin`, and returns what it printed (the way a
/// user runs a client command).
pub async fn run_keel<I, S>(exe: &Path, args: I, stdin: &[u8]) -> std::io::Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    // Write and read at once, so a child that prints before it has read all its input cannot
    // deadlock against us. A child that exits without reading its input closes the pipe; that is
    // its business, not an error here.
    let feed = async move {
        let _ = pipe.write_all(&input).await;
        drop(pipe);
    };
    let ((), output) = tokio::join!(feed, child.wait_with_output());
    output
}

/// The first port of the kernel's ephemeral range, if it can be read.
fn ephemeral_port_low() -> Option<u32> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// A loopback address with a port that was free a moment ago, for a broker about to be started.
///
/// Chosen **below the kernel's ephemeral range** (`net.ipv4.ip_local_port_range`, 32768-60999 by
/// default): a port the OS picks for `:0` comes from that range, where any outgoing connection (a
/// client of another test) may take it before the broker binds it, and a CI run once failed so
/// ("cannot listen on 127.0.0.1:34299: Address already in use"). Below the range only a listener
/// can take it, and this process never hands the same port out twice. The probe starts at a place
/// drawn from the process id, so test processes started one after another probe different ports.
/// Falls back to a port the OS picks when the range cannot be read or leaves no room below it.
pub fn free_loopback_addr() -> std::io::Result<SocketAddr> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    const LOWEST: u32 = 10_000;
    let ephemeral_low = ephemeral_port_low().filter(|low| *low > LOWEST + 1_000 && *low <= u32::from(u16::MAX));
    let Some(ephemeral_low) = ephemeral_low else {
        return std::net::TcpListener::bind("127.0.0.1:0")?.local_addr();
    };
    let room = ephemeral_low - LOWEST;
    let start = std::process::id().wrapping_mul(7_919) % room;
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for step in 0..room {
        let port = (LOWEST + (start + step) % room) as u16;
        if given.contains(&port) {
            continue;
        }
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            given.insert(port);
            return listener.local_addr();
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

#[cfg(test)]
mod tests {
    use super::{ephemeral_port_low, free_loopback_addr};

    /// Ports handed out are distinct, free, and below the ephemeral range (where no outgoing
    /// connection can take them before the broker binds).
    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let low = ephemeral_port_low().map_or(u16::MAX, |low| u16::try_from(low).unwrap_or(u16::MAX));
        let addrs: Vec<_> = (0..50).map(|_| free_loopback_addr().unwrap()).collect();
        let ports: std::collections::BTreeSet<u16> = addrs.iter().map(|addr| addr.port()).collect();
        assert_eq!(ports.len(), addrs.len(), "{addrs:?}");
        for addr in &addrs {
            assert!(addr.ip().is_loopback() && addr.port() < low, "{addr} (ephemeral from {low})");
            std::net::TcpListener::bind(addr).unwrap();
        }
    }
}
