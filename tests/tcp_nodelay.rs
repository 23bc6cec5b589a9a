//! Every TCP connection Keel opens or accepts has `TCP_NODELAY` set (issue 6).
//!
//! Without it a small response waits for the other side's delayed ACK (Nagle's algorithm), about
//! 40 ms a request: a produce bench fell from 32k to 799 msg/s. The test runs a three-broker cluster
//! in this process (so client connections, accepted connections and the Raft peer transport all
//! exist), makes traffic, then inspects every connected TCP socket of the process through
//! `/proc/self/fd` and asserts each one between Keel endpoints has the option set, accepted ones
//! included (which the test cannot reach through any API: it finds them by their addresses).

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::BorrowedFd;
use std::time::Duration;

use keel::client::{delivered, Client, ClientConfig, Producer, ProducerConfig};
use keel::config::BrokerConfig;
use keel::meta::store_rocks::RocksStore;
use keel::server::{run_broker, BrokerHooks};
use keel::storage::file::FileDisk;
use socket2::SockRef;
use tokio_util::sync::CancellationToken;

const BROKERS: u64 = 3;

fn free_addr() -> SocketAddr {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Every connected TCP socket of this process: (local, peer, nodelay).
fn connected_tcp_sockets() -> Vec<(SocketAddr, SocketAddr, bool)> {
    let mut sockets = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(fd) = entry.unwrap().file_name().to_string_lossy().parse::<i32>() else { continue };
        // SAFETY: the descriptor is only borrowed for the getsockopt/getsockname calls below, while
        // the runtime that owns it is blocked on this test's thread; a descriptor closed meanwhile
        // (such as the read_dir handle itself) makes those calls fail, which skips it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = SockRef::from(&borrowed);
        let (Ok(local), Ok(peer)) = (socket.local_addr(), socket.peer_addr()) else { continue };
        let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else { continue };
        let Ok(nodelay) = socket.tcp_nodelay() else { continue };
        sockets.push((local, peer, nodelay));
    }
    sockets
}

#[test]
fn every_keel_tcp_connection_sets_nodelay() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<SocketAddr> = (0..BROKERS).map(|_| free_addr()).collect();
    let peers: String =
        addrs.iter().enumerate().map(|(index, addr)| format!("{}={addr}", index + 1)).collect::<Vec<_>>().join(",");
    let shutdown = CancellationToken::new();

    let brokers: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(index, addr)| {
            let node_id = index as u64 + 1;
            let data_dir = dir.path().join(format!("node-{node_id}"));
            std::fs::create_dir_all(&data_dir).unwrap();
            let config = BrokerConfig {
                node_id: keel::types::NodeId(node_id),
                listen: *addr,
                data_dir: data_dir.clone(),
                peers: BrokerConfig::parse_peers(&peers).unwrap(),
                ..BrokerConfig::default()
            };
            let meta_store = RocksStore::open(&data_dir.join("meta")).unwrap();
            let disk = FileDisk::new(&data_dir);
            runtime.spawn(run_broker(config, disk, meta_store, shutdown.clone(), BrokerHooks::default()))
        })
        .collect();

    // Traffic over every kind of connection: admin through one broker (Raft proposals travel the peer
    // transport), produces to the partition leaders, a fetch.
    let bootstrap = addrs[0].to_string();
    let client = runtime.block_on(async {
        let client = Client::new(bootstrap, ClientConfig::default());
        let mut created = Err(None);
        for _ in 0..100 {
            match client.create_topic("nodelay", 3, 3).await {
                Ok(()) => {
                    created = Ok(());
                    break;
                }
                Err(error) => {
                    created = Err(Some(error));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        created.expect("the topic was created");
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        for partition in 0..3 {
            let record = keel::batch::Record::value(b"x".to_vec());
            delivered(producer.send("nodelay", Some(partition), record).await).await.expect("produced");
        }
        client
    });

    let keel_addrs: BTreeSet<SocketAddr> = addrs.iter().copied().collect();
    let sockets = connected_tcp_sockets();
    let accepted: Vec<_> = sockets.iter().filter(|(local, _, _)| keel_addrs.contains(local)).collect();
    let opened: Vec<_> = sockets.iter().filter(|(_, peer, _)| keel_addrs.contains(peer)).collect();
    assert!(accepted.len() >= BROKERS as usize, "too few accepted connections found: {sockets:?}");
    assert!(opened.len() >= BROKERS as usize, "too few opened connections found: {sockets:?}");
    let without: Vec<_> = accepted.iter().chain(opened.iter()).filter(|(_, _, nodelay)| !nodelay).collect();
    assert!(without.is_empty(), "connections without TCP_NODELAY (local, peer, nodelay): {without:?}");

    drop(client);
    shutdown.cancel();
    runtime.block_on(async {
        for broker in brokers {
            let _ = broker.await;
        }
    });
}
