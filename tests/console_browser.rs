//! The web console (ADR 0027) in a real headless Chromium (Debian's `chromium`, driven through its
//! `chromedriver` with the WebDriver protocol): against a 3-broker cluster, the page's tables show
//! every broker up with its Raft role, the created topic with each partition's leader (the leaders
//! `keel topic describe` reports), and the consumer group; after one broker is killed with kill -9,
//! the page shows it down and the partitions under-replicated, and the other brokers stay ready.
//! Screenshots of both moments go under `$CARGO_TARGET_TMPDIR/console_browser/`.

#![cfg(not(madsim))]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use fantoccini::{Client, ClientBuilder};
use keel::process::{free_loopback_addr, ClusterSpec, LocalCluster};
use serde_json::{json, Value};
use support::cli::{keel, ok, KEEL};
use support::http::{get, wait_ok};
use support::wait::{wait_for, WAIT_MAX};

/// Where chromedriver and chromium come from (`.ci/deps` installs both).
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver on a free port, killed when dropped.
struct Driver {
    _process: tokio::process::Child,
    url: String,
}

async fn start_chromedriver() -> Driver {
    let port = free_loopback_addr().unwrap().port();
    let process = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {CHROMEDRIVER} ({error}); run .ci/deps"));
    let url = format!("http://127.0.0.1:{port}");
    wait_ok("chromedriver to answer /status", format!("{url}/status")).await;
    Driver { _process: process, url }
}

async fn browser(driver: &Driver) -> Client {
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1600"],
        },
    });
    let Value::Object(capabilities) = capabilities else { unreachable!() };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(capabilities).connect(&driver.url).await.expect("a chromium session")
}

/// Runs `script` (a function body returning JSON) in the page.
async fn page(client: &Client, script: &str) -> Value {
    client.execute(script, Vec::new()).await.unwrap_or_else(|error| panic!("{script}: {error}"))
}

/// What the page's tables show now.
async fn shown(client: &Client) -> Value {
    page(
        client,
        r#"
        const brokers = [...document.querySelectorAll('#brokers tbody tr')]
            .map((tr) => ({ node: Number(tr.dataset.node), state: tr.dataset.state, role: tr.children[3].textContent }));
        const partitions = [...document.querySelectorAll('table[data-topic="payments"] tbody tr')]
            .map((tr) => ({ partition: Number(tr.dataset.partition), leader: tr.dataset.leader,
                            under: tr.dataset.underReplicated === 'true', highlighted: tr.classList.contains('under') }));
        const groups = [...document.querySelectorAll('#groups tbody tr')].map((tr) => tr.dataset.group);
        const charts = [...document.querySelectorAll('[data-chart]')].map((c) => c.dataset.chart);
        return { brokers, partitions, groups, charts, error: document.getElementById('error').textContent };
        "#,
    )
    .await
}

async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console_browser");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, client.screenshot().await.expect("a screenshot")).unwrap();
    path
}

/// A 3-node cluster with admin listeners; returns it with the admin addresses.
async fn cluster(dir: &Path) -> (LocalCluster, Vec<SocketAddr>) {
    let addrs = (0..3).map(|_| free_loopback_addr().unwrap()).collect();
    let admin_addrs: Vec<SocketAddr> = (0..3).map(|_| free_loopback_addr().unwrap()).collect();
    let spec = ClusterSpec {
        env: vec![("RUST_LOG".into(), "error".into())],
        admin_addrs: admin_addrs.clone(),
        ..ClusterSpec::new(KEEL, addrs, dir)
    };
    let mut cluster = LocalCluster::spawn(&spec).expect("start the brokers");
    cluster.wait_ready(WAIT_MAX).await.expect("every node answers");
    for addr in &admin_addrs {
        wait_ok("every broker's /readyz to say ready (registered, leader known)", format!("http://{addr}/readyz"))
            .await;
    }
    (cluster, admin_addrs)
}

/// The leader of each partition of `topic`, as `keel topic describe` reports it.
async fn leaders(broker: &str, topic: &str) -> Vec<String> {
    let described: Value = serde_json::from_str(&ok(broker, &["--json", "topic", "describe", topic]).await).unwrap();
    described["partitions"].as_array().unwrap().iter().map(|p| p["leader"].to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_cluster_and_a_killed_broker_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, admin) = cluster(dir.path()).await;
    let broker = cluster.nodes()[0].process.addr().to_string();
    ok(&broker, &["topic", "create", "payments", "--partitions", "3", "--replication", "3"]).await;
    let records: String = (0..300).map(|i| format!("payment-{i}\n")).collect();
    assert!(keel(&broker, &["produce", "payments"], &records).await.status.success());
    ok(&broker, &["consume", "payments", "--group", "billing", "--count", "300"]).await;
    let expected_leaders = leaders(&broker, "payments").await;

    let driver = start_chromedriver().await;
    let client = browser(&driver).await;
    let console = format!("http://{}/", admin[0]);
    client.goto(&console).await.expect("load the console");
    let first = wait_for("the console to show 3 brokers up, the topic's leaders and the group", || {
        let (client, expected) = (&client, &expected_leaders);
        async move {
            let now = shown(client).await;
            let brokers_up = now["brokers"].as_array().unwrap().iter().filter(|b| b["state"] == "up").count();
            let leaders: Vec<String> =
                now["partitions"].as_array().unwrap().iter().map(|p| p["leader"].to_string()).collect();
            let leaders: Vec<String> = leaders.iter().map(|l| l.trim_matches('"').to_owned()).collect();
            let groups_ok = now["groups"].as_array().unwrap().iter().any(|g| g == "billing");
            if brokers_up == 3 && &leaders == expected && groups_ok && now["error"] == "" {
                Ok(now)
            } else {
                Err(now.to_string())
            }
        }
    })
    .await;
    let roles: Vec<&str> = first["brokers"].as_array().unwrap().iter().map(|b| b["role"].as_str().unwrap()).collect();
    assert_eq!(roles.iter().filter(|role| **role == "leader").count(), 1, "one Raft leader: {roles:?}");
    assert!(first["charts"].as_array().unwrap().iter().any(|c| c == "produced: payments"), "{first}");
    let healthy = screenshot(&client, "1-healthy.png").await;

    // kill -9 node 3: the page (served by node 1) shows it down and the partitions under-replicated.
    cluster.node_mut(3).process.kill9().await.expect("kill node 3");
    let after = wait_for("the console to show node 3 down and every partition under-replicated", || {
        let client = &client;
        async move {
            let now = shown(client).await;
            let down: Vec<i64> = now["brokers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b["state"] == "down")
                .map(|b| b["node"].as_i64().unwrap())
                .collect();
            let partitions = now["partitions"].as_array().unwrap();
            let under = partitions.iter().filter(|p| p["under"] == true && p["highlighted"] == true).count();
            if down == [3] && partitions.len() == 3 && under == 3 {
                Ok(now)
            } else {
                Err(now.to_string())
            }
        }
    })
    .await;
    let degraded = screenshot(&client, "2-broker-3-killed.png").await;
    for p in after["partitions"].as_array().unwrap() {
        assert_ne!(p["leader"], "3", "a killed broker leads nothing: {after}");
    }
    for addr in &admin[..2] {
        let ready = get(format!("http://{addr}/readyz")).await;
        assert_eq!(ready.status, 200, "a surviving broker stays ready: {}", ready.body);
    }
    // The metrics agree: node 1 sees under-replicated partitions (the topic's three, and those of
    // __consumer_offsets that node 3 was a replica of) and no offline one.
    let metrics = get(format!("http://{}/metrics", admin[0])).await.body;
    let gauge = |name: &str| -> u64 {
        let line = metrics.lines().find(|line| line.starts_with(&format!("{name} "))).expect(name);
        line[name.len() + 1..].parse().unwrap()
    };
    assert!(gauge("keel_cluster_under_replicated_partitions") >= 3, "{metrics}");
    assert_eq!(gauge("keel_cluster_offline_partitions"), 0, "{metrics}");
    client.close().await.expect("close the browser");
    println!(
        "chromium showed 3 brokers up and the leaders {expected_leaders:?}, then node 3 down and 3 partitions \
         under-replicated; screenshots: {} and {}",
        healthy.display(),
        degraded.display()
    );
}
