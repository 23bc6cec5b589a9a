//! One broker in this test process (`run_broker` on real files and RocksDB in a temporary
//! directory), for the integration tests that speak the protocol to it directly.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use keel::config::BrokerConfig;
use keel::meta::store_rocks::RocksStore;
use keel::server::{run_broker, BrokerHooks};
use keel::storage::file::FileDisk;
use tokio_util::sync::CancellationToken;

/// A loopback address no one listens on right now.
pub fn free_addr() -> SocketAddr {
    keel::process::free_loopback_addr().unwrap()
}

pub struct Broker {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), keel::server::BrokerError>>,
}

/// Starts a broker on `addr` with its data in `dir` (again, after a stop: same address, same data).
pub async fn start(dir: &Path, addr: SocketAddr) -> Broker {
    let config = BrokerConfig { listen: addr, data_dir: dir.to_owned(), ..BrokerConfig::default() };
    // After a stop, the metadata node's task may still be dropping the previous store (and its
    // RocksDB lock) for a moment.
    let mut meta_store = RocksStore::open(&dir.join("meta"));
    for _ in 0..200 {
        if meta_store.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        meta_store = RocksStore::open(&dir.join("meta"));
    }
    let meta_store = meta_store.unwrap();
    let shutdown = CancellationToken::new();
    let task =
        tokio::spawn(run_broker(config, FileDisk::new(dir), meta_store, shutdown.clone(), BrokerHooks::default()));
    Broker { addr, shutdown, task }
}

impl Broker {
    /// Stops the broker as a shutdown signal would, and checks that it stopped cleanly within 20 s.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(20), self.task).await;
        stopped.expect("the broker did not stop within 20 s").unwrap().unwrap();
    }
}
