//! `keel cluster status` (the Raft status of every node, and the under-replicated and offline
//! partitions in the answering node's applied metadata, from any node) and `keel cluster up` (a
//! local N-node cluster of child `keel broker` processes, for trying Keel out).
//!
//! `up` runs real processes through [`crate::process`] (tokio children, signals without shelling
//! out, no blocking sleeps), so it exists only in the normal build; the simulation compiles this
//! module without it.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{client, fail, print_line, Cli, CliError};
use crate::meta::node::RaftRole;
use crate::protocol::{ClusterStatusResponse, NodeStatusInfo, PartitionHealthInfo};

/// Nodes `keel cluster up` starts at most (the metadata group's voters; Raft wants an odd number).
pub const UP_NODES_MAX: u32 = 7;
/// How long `keel cluster up` waits for every node to answer and a Raft leader to be elected.
pub const UP_READY_TIMEOUT_MS: u64 = 30_000;
/// How long `keel cluster up` waits for a node to stop after SIGINT before it kills it.
pub const UP_STOP_TIMEOUT_MS: u64 = 15_000;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Every node's Raft role, term, commit and applied index, state hash, and whether it answers;
    /// then the under-replicated (ISR smaller than the replicas) and offline (no leader) partitions.
    Status,
    /// Start a local cluster of `--nodes` brokers on consecutive ports; Ctrl-C stops them all.
    Up(UpArgs),
}

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Number of brokers (1 to 7); each is a voter of the metadata group.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Node i listens on 127.0.0.1:(base-port + i - 1).
    #[arg(long, default_value_t = 9401)]
    pub base_port: u16,
    /// Node i keeps its data in DATA_DIR/node-i and its log in DATA_DIR/node-i.log.
    #[arg(long, default_value = "./keel-cluster")]
    pub data_dir: PathBuf,
    /// Node i serves Kafka clients on 127.0.0.1:(kafka-base-port + i - 1) (ADR 0026).
    #[arg(long, default_value_t = 9092)]
    pub kafka_base_port: u16,
    /// No Kafka listeners.
    #[arg(long)]
    pub no_kafka: bool,
    /// Node i serves the admin HTTP API (metrics, health, console) on 127.0.0.1:(admin-base-port + i - 1) (ADR 0027).
    #[arg(long, default_value_t = 9644)]
    pub admin_base_port: u16,
    /// No admin listeners.
    #[arg(long)]
    pub no_admin: bool,
}

pub async fn run(cli: &Cli, command: &ClusterCommand) -> Result<(), CliError> {
    match command {
        ClusterCommand::Status => status(cli).await,
        ClusterCommand::Up(args) => up(cli, args).await,
    }
}

/// The Raft leader the answering node's view agrees on: the node that says it leads (highest term
/// if, briefly, two do); 0 when none does.
pub fn leader_of(response: &ClusterStatusResponse) -> u64 {
    response
        .nodes
        .iter()
        .filter(|node| node.reachable && RaftRole::parse(&node.role).is_some_and(RaftRole::is_leader))
        .max_by_key(|node| node.term)
        .map_or(0, |node| node.node_id)
}

fn node_json(node: &NodeStatusInfo) -> serde_json::Value {
    json!({
        "node_id": node.node_id,
        "addr": node.addr,
        "reachable": node.reachable,
        "role": node.role,
        "term": node.term,
        "leader_id": node.leader_id,
        "commit_index": node.commit_index,
        "applied_index": node.applied_index,
        "state_hash": format!("{:016x}", node.state_hash),
        "voter": node.voter,
        "registered": node.registered,
        "fenced": node.fenced,
        "error": node.error,
    })
}

fn partition_json(partition: &PartitionHealthInfo) -> serde_json::Value {
    json!({
        "topic": partition.topic,
        "partition": partition.partition,
        "leader": (partition.leader != 0).then_some(partition.leader),
        "leader_epoch": partition.leader_epoch,
        "partition_epoch": partition.partition_epoch,
        "replicas": partition.replicas,
        "isr": partition.isr,
        "min_insync_replicas": partition.min_insync_replicas,
    })
}

/// The partition lines of `cluster status`: a summary, then one line per unhealthy partition.
pub fn partition_lines(response: &ClusterStatusResponse) -> Vec<String> {
    let partitions = &response.unhealthy_partitions;
    let offline = partitions.iter().filter(|p| p.offline).count();
    let under_replicated = partitions.iter().filter(|p| p.under_replicated).count();
    let omitted = if response.unhealthy_partitions_omitted > 0 {
        format!(" (and {} more not listed)", response.unhealthy_partitions_omitted)
    } else {
        String::new()
    };
    let mut lines = vec![format!("partitions: {offline} offline, {under_replicated} under-replicated{omitted}")];
    for partition in partitions {
        let mut state = Vec::new();
        if partition.offline {
            state.push("OFFLINE");
        }
        if partition.under_replicated {
            state.push("under-replicated");
        }
        if (partition.isr.len() as u64) < u64::from(partition.min_insync_replicas) {
            state.push("below min ISR (acks=all refused)");
        }
        let leader = if partition.leader == 0 { "none".to_owned() } else { partition.leader.to_string() };
        lines.push(format!(
            "  {}/{}\t{}\tleader {leader}\tleader epoch {}\treplicas {:?}\tisr {:?}\tmin isr {}",
            partition.topic,
            partition.partition,
            state.join(", "),
            partition.leader_epoch,
            partition.replicas,
            partition.isr,
            partition.min_insync_replicas
        ));
    }
    lines
}

/// One row of the human `cluster status` table.
fn node_line(node: &NodeStatusInfo) -> String {
    let mut notes = Vec::new();
    if !node.voter {
        notes.push("not a voter".to_owned());
    }
    if !node.registered {
        notes.push("not registered".to_owned());
    }
    if node.fenced {
        notes.push("fenced".to_owned());
    }
    if !node.error.is_empty() {
        notes.push(node.error.clone());
    }
    if node.reachable {
        format!(
            "{:<5} {:<22} {:<10} {:<10} {:>5} {:>6} {:>8} {:>8}  {:016x}  {}",
            node.node_id,
            node.addr,
            "yes",
            node.role,
            node.term,
            node.leader_id,
            node.commit_index,
            node.applied_index,
            node.state_hash,
            notes.join("; ")
        )
    } else {
        format!(
            "{:<5} {:<22} {:<10} {:<10} {:>5} {:>6} {:>8} {:>8}  {:<16}  {}",
            node.node_id,
            node.addr,
            "NO",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            notes.join("; ")
        )
    }
}

/// `keel cluster status --json`, and the admin API's `/v1/cluster`.
pub fn status_value(response: &ClusterStatusResponse) -> serde_json::Value {
    let nodes: Vec<_> = response.nodes.iter().map(node_json).collect();
    let unhealthy = &response.unhealthy_partitions;
    let offline: Vec<_> = unhealthy.iter().filter(|p| p.offline).map(partition_json).collect();
    let under_replicated: Vec<_> = unhealthy.iter().filter(|p| p.under_replicated).map(partition_json).collect();
    json!({
        "answered_by": response.answered_by,
        "leader": leader_of(response),
        "nodes": nodes,
        "offline_partitions": offline,
        "under_replicated_partitions": under_replicated,
        "unhealthy_partitions_omitted": response.unhealthy_partitions_omitted,
    })
}

async fn status(cli: &Cli) -> Result<(), CliError> {
    let response = client(cli).cluster_status(true).await?;
    let leader = leader_of(&response);
    let mut out = std::io::stdout().lock();
    if cli.json {
        print_line(&mut out, &status_value(&response).to_string());
        return Ok(());
    }
    let leader_text = if leader == 0 { "none".to_owned() } else { leader.to_string() };
    print_line(&mut out, &format!("answered by node {}; Raft leader: {leader_text}", response.answered_by));
    print_line(
        &mut out,
        &format!(
            "{:<5} {:<22} {:<10} {:<10} {:>5} {:>6} {:>8} {:>8}  {:<16}  notes",
            "node", "addr", "reachable", "role", "term", "leader", "commit", "applied", "state_hash"
        ),
    );
    for node in &response.nodes {
        print_line(&mut out, node_line(node).trim_end());
    }
    for line in partition_lines(&response) {
        print_line(&mut out, &line);
    }
    Ok(())
}

#[cfg(madsim)]
async fn up(_cli: &Cli, args: &UpArgs) -> Result<(), CliError> {
    up_layout(args)?;
    Err(fail("`keel cluster up` starts processes; it does not exist in the simulation"))
}

/// The listen address and peers list of a local cluster (checked input).
fn up_layout(args: &UpArgs) -> Result<Vec<(u64, String)>, CliError> {
    if args.nodes == 0 || args.nodes > UP_NODES_MAX {
        return Err(fail(format!("--nodes must be between 1 and {UP_NODES_MAX}, got {}", args.nodes)));
    }
    let last_port = u32::from(args.base_port) + args.nodes - 1;
    if args.base_port == 0 || last_port > u32::from(u16::MAX) {
        return Err(fail(format!("--base-port {} leaves no room for {} ports", args.base_port, args.nodes)));
    }
    Ok((0..args.nodes)
        .map(|index| (u64::from(index) + 1, format!("127.0.0.1:{}", u32::from(args.base_port) + index)))
        .collect())
}

#[cfg(not(madsim))]
async fn up(cli: &Cli, args: &UpArgs) -> Result<(), CliError> {
    use crate::process::{ClusterSpec, LocalCluster, Signal};

    let layout = up_layout(args)?;
    let addrs = free_addrs(layout.iter().map(|(_, addr)| addr.clone()), "--base-port")?;
    let kafka_addrs = if args.no_kafka {
        Vec::new()
    } else {
        let kafka_layout = up_layout(&UpArgs { base_port: args.kafka_base_port, ..args.clone() })?;
        free_addrs(kafka_layout.into_iter().map(|(_, addr)| addr), "--kafka-base-port")?
    };
    let admin_addrs = if args.no_admin {
        Vec::new()
    } else {
        let admin_layout = up_layout(&UpArgs { base_port: args.admin_base_port, ..args.clone() })?;
        free_addrs(admin_layout.into_iter().map(|(_, addr)| addr), "--admin-base-port")?
    };
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|error| fail(format!("cannot create {}: {error}", args.data_dir.display())))?;
    let exe = std::env::current_exe().map_err(|error| fail(format!("cannot find the keel binary: {error}")))?;
    let spec =
        ClusterSpec { node_logs: true, kafka_addrs, admin_addrs, ..ClusterSpec::new(exe, addrs, &args.data_dir) };

    // A node that cannot start makes `spawn` drop (kill) the ones already started.
    let mut cluster = LocalCluster::spawn(&spec).map_err(|error| fail(error.to_string()))?;
    // Ready: every node answers a metadata request, which needs the metadata group's leader.
    if let Err(error) = cluster.wait_ready(std::time::Duration::from_millis(UP_READY_TIMEOUT_MS)).await {
        stop_nodes(&mut cluster, Signal::Interrupt).await;
        return Err(fail(format!("{error}; see the node logs in {}", args.data_dir.display())));
    }

    print_up(cli, &spec, &cluster);

    // Run until Ctrl-C (or SIGTERM); report nodes that exit on their own meanwhile.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|error| fail(format!("cannot install a SIGTERM handler: {error}")))?;
    loop {
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            (node_id, exit) = cluster.next_exit() => match exit {
                Ok(status) => eprintln!("node {node_id} exited ({status}); the others keep running"),
                Err(error) => eprintln!("node {node_id}: cannot wait for it: {error}"),
            },
        }
    }
    eprintln!("stopping {} node(s)", cluster.nodes().len());
    stop_nodes(&mut cluster, Signal::Interrupt).await;
    Ok(())
}

/// The addresses, each checked free to listen on (`flag` moves them).
#[cfg(not(madsim))]
fn free_addrs(addrs: impl Iterator<Item = String>, flag: &str) -> Result<Vec<std::net::SocketAddr>, CliError> {
    let mut free = Vec::new();
    for addr in addrs {
        if let Err(error) = std::net::TcpListener::bind(addr.as_str()) {
            return Err(fail(format!("cannot use {addr}: {error} (is another broker running? pick {flag})")));
        }
        free.push(addr.parse().map_err(|error| fail(format!("bad address {addr}: {error}")))?);
    }
    Ok(free)
}

/// Prints each node of a cluster that is up (address, pid, data, log) and how to reach it.
#[cfg(not(madsim))]
fn print_up(cli: &Cli, spec: &crate::process::ClusterSpec, cluster: &crate::process::LocalCluster) {
    let mut out = std::io::stdout().lock();
    for node in cluster.nodes() {
        let log = spec.node_log(node.node_id);
        let addr = node.process.addr();
        let pid = node.process.pid().unwrap_or(0);
        let kafka = spec.kafka_addrs.get(node.node_id as usize - 1).map(ToString::to_string);
        let admin = spec.admin_addrs.get(node.node_id as usize - 1).map(ToString::to_string);
        let line = if cli.json {
            json!({"node_id": node.node_id, "addr": addr.to_string(), "kafka_addr": kafka, "admin_addr": admin,
                   "pid": pid, "data_dir": node.data_dir, "log": log})
            .to_string()
        } else {
            let kafka = kafka.map(|kafka| format!("  kafka {kafka}")).unwrap_or_default();
            let admin = admin.map(|admin| format!("  admin http://{admin}/")).unwrap_or_default();
            format!(
                "node {}  {addr}{kafka}{admin}  pid {pid}  data {}  log {}",
                node.node_id,
                node.data_dir.display(),
                log.display()
            )
        };
        print_line(&mut out, &line);
    }
    if !cli.json {
        let first = cluster.nodes()[0].process.addr();
        print_line(
            &mut out,
            &format!("cluster of {} node(s) is up. Try: keel --broker {first} cluster status", cluster.nodes().len()),
        );
        if let Some(admin) = spec.admin_addrs.first() {
            print_line(&mut out, &format!("Web console: http://{admin}/  Prometheus metrics: http://{admin}/metrics"));
        }
        print_line(&mut out, "Ctrl-C stops every node.");
    }
}

/// Stops every node gracefully within [`UP_STOP_TIMEOUT_MS`], killing stragglers, and says which.
#[cfg(not(madsim))]
async fn stop_nodes(cluster: &mut crate::process::LocalCluster, signal: crate::process::Signal) {
    for (node_id, result) in cluster.stop_all(signal, std::time::Duration::from_millis(UP_STOP_TIMEOUT_MS)).await {
        match result {
            Ok(Some(stopped)) if stopped.forced => {
                eprintln!("node {node_id} did not stop within {UP_STOP_TIMEOUT_MS} ms; killed it")
            }
            Ok(_) => {}
            Err(error) => eprintln!("node {node_id}: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_lines_name_offline_and_under_replicated_partitions() {
        let partition = |topic: &str, leader, isr: Vec<u64>| PartitionHealthInfo {
            topic: topic.into(),
            partition: 0,
            leader,
            leader_epoch: 3,
            partition_epoch: 5,
            replicas: vec![1, 2, 3],
            offline: leader == 0,
            under_replicated: isr.len() < 3,
            isr,
            min_insync_replicas: 2,
        };
        let response = ClusterStatusResponse {
            unhealthy_partitions: vec![partition("a", 0, vec![1]), partition("b", 2, vec![2, 3])],
            unhealthy_partitions_omitted: 4,
            ..Default::default()
        };
        let lines = partition_lines(&response);
        assert_eq!(lines[0], "partitions: 1 offline, 2 under-replicated (and 4 more not listed)");
        assert!(lines[1].starts_with("  a/0\tOFFLINE, under-replicated, below min ISR"), "{}", lines[1]);
        assert!(lines[1].contains("leader none"), "{}", lines[1]);
        assert!(lines[2].starts_with("  b/0\tunder-replicated\tleader 2"), "{}", lines[2]);
        let healthy = partition_lines(&ClusterStatusResponse::default());
        assert_eq!(healthy, ["partitions: 0 offline, 0 under-replicated"]);
    }

    #[test]
    fn up_layout_checks_its_input() {
        let args = |nodes, base_port| UpArgs {
            nodes,
            base_port,
            data_dir: PathBuf::from("x"),
            kafka_base_port: 9092,
            no_kafka: false,
            admin_base_port: 9644,
            no_admin: false,
        };
        assert!(up_layout(&args(0, 9401)).unwrap_err().message.contains("between 1 and 7"));
        assert!(up_layout(&args(8, 9401)).unwrap_err().message.contains("between 1 and 7"));
        assert!(up_layout(&args(3, 65534)).unwrap_err().message.contains("no room"));
        let layout = up_layout(&args(3, 9401)).unwrap();
        assert_eq!(
            layout,
            vec![(1, "127.0.0.1:9401".into()), (2, "127.0.0.1:9402".into()), (3, "127.0.0.1:9403".into())]
        );
    }
}
