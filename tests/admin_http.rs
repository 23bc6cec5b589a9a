//! The admin HTTP listener of a real `keel broker --admin-listen` (ADR 0027): `/metrics` scraped
//! during a produce run, its counters moving and its text parsed by a Prometheus text-format
//! parser and a strict OpenMetrics one; the gauges (offsets, Raft, group lag) agreeing with what was
//! produced and committed; `/healthz` and `/readyz`; the `/v1` JSON equal to what `keel ... --json`
//! prints; and bad input: unknown paths, methods, topics and groups, a request that is not HTTP, a
//! listener address that clashes or is taken.

#![cfg(not(madsim))]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use keel::process::{free_loopback_addr, BrokerProcess};
use support::cli::{keel, ok, start_broker_with, stderr, KEEL};
use support::http::{get, request, wait_ok};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Records the produce run writes.
const RECORDS: u64 = 20_000;

/// A broker with admin and Kafka listeners; returns it with the admin base URL and the Kafka address.
async fn broker_with_admin(dir: &Path) -> (BrokerProcess, String, SocketAddr) {
    let admin = free_loopback_addr().unwrap();
    let kafka = free_loopback_addr().unwrap();
    let args = ["--admin-listen", &admin.to_string(), "--kafka-listen", &kafka.to_string()];
    let broker = start_broker_with(dir, support::wait::WAIT_MAX, &args).await;
    let base = format!("http://{admin}");
    wait_ok("/readyz to say ready", format!("{base}/readyz")).await;
    (broker, base, kafka)
}

/// One scrape: the text, checked by both parsers, and its samples by name and labels.
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    async fn take(base: &str) -> Scrape {
        let answer = get(format!("{base}/metrics")).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.content_type.starts_with("application/openmetrics-text"), "{}", answer.content_type);
        let text = answer.body;
        if let Err(error) = openmetrics_parser::openmetrics::parse_openmetrics(&text) {
            panic!("not valid OpenMetrics ({error:?}):\n{text}");
        }
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
            .unwrap_or_else(|error| panic!("the Prometheus text parser refused it ({error}):\n{text}"));
        let mut samples = BTreeMap::new();
        for sample in &scrape.samples {
            let mut labels: Vec<String> = sample.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let value = match sample.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => continue,
            };
            samples.insert(format!("{}{{{}}}", sample.metric, labels.join(",")), value);
        }
        Scrape { text, samples }
    }

    /// The sample `name{labels}` (labels sorted, `k=v` comma-separated); 0 when absent.
    fn value(&self, key: &str) -> f64 {
        self.samples.get(key).copied().unwrap_or(0.0)
    }

    /// The sum of every sample of metric `name` whose labels include all of `with`.
    fn sum(&self, name: &str, with: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|(key, _)| key.starts_with(&format!("{name}{{")) && with.iter().all(|label| key.contains(label)))
            .map(|(_, value)| value)
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_during_a_produce_run_and_parse_as_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, base, kafka) = broker_with_admin(dir.path()).await;
    let addr = broker.addr().to_string();
    ok(&addr, &["topic", "create", "orders", "--partitions", "3", "--replication", "1"]).await;
    let before = Scrape::take(&base).await;

    // The produce run, scraped while it runs: the counters never go back.
    let lines: String = (0..RECORDS).map(|i| format!("order-{i}\n")).collect();
    let mut producer = tokio::process::Command::new(KEEL)
        .args(["--broker", &addr, "produce", "orders"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = producer.stdin.take().unwrap();
    let feeder = tokio::spawn(async move {
        stdin.write_all(lines.as_bytes()).await.unwrap();
    });
    let mut last = before.value("keel_produce_records_total{topic=orders}");
    let mut scrapes = 0;
    let status = loop {
        let scrape = Scrape::take(&base).await;
        let records = scrape.value("keel_produce_records_total{topic=orders}");
        assert!(records >= last && records <= RECORDS as f64, "records went from {last} to {records}");
        last = records;
        scrapes += 1;
        if let Some(status) = producer.try_wait().unwrap() {
            break status;
        }
    };
    feeder.await.unwrap();
    assert!(status.success(), "keel produce failed");
    let after = Scrape::take(&base).await;

    for family in [
        "# TYPE keel_requests counter",
        "# TYPE keel_request_duration_seconds histogram",
        "# TYPE keel_fsync_duration_seconds histogram",
        "# TYPE keel_group_commit_offsets histogram",
        "# TYPE keel_partition_high_watermark gauge",
        "# TYPE keel_raft_term gauge",
        "# TYPE keel_cluster_offline_partitions gauge",
        "# TYPE keel_connections gauge",
    ] {
        assert!(after.text.contains(family), "missing {family:?}");
    }

    // Counted events: every record once, every produce request, every offset made durable once.
    let records = after.value("keel_produce_records_total{topic=orders}");
    assert_eq!(records, RECORDS as f64, "each produced record is counted once");
    assert!(after.value("keel_produce_bytes_total{topic=orders}") > 10.0 * RECORDS as f64);
    let produces = after.value("keel_requests_total{api=produce,protocol=native}");
    assert!(produces > before.value("keel_requests_total{api=produce,protocol=native}"), "produce requests counted");
    assert_eq!(after.value("keel_group_commit_offsets_sum{}"), RECORDS as f64, "each offset made durable once");
    let syncs = after.value("keel_fsync_duration_seconds_count{}");
    assert!(syncs >= 1.0 && syncs <= produces, "{syncs} syncs for {produces} produce requests");
    assert!(after.value("keel_request_duration_seconds_count{api=produce,protocol=native}") == produces);

    // State: the partitions' ends and high watermarks add up to what was produced.
    assert_eq!(after.sum("keel_partition_high_watermark", &["topic=orders"]), RECORDS as f64);
    assert_eq!(after.sum("keel_partition_log_end_offset", &["topic=orders"]), RECORDS as f64);
    assert_eq!(after.sum("keel_partition_leader", &["topic=orders"]), 3.0);
    assert_eq!(after.value("keel_partitions_led_under_replicated{}"), 0.0);
    assert_eq!(after.value("keel_raft_is_leader{}"), 1.0);
    assert!(after.value("keel_raft_term{}") >= 1.0);
    assert!(after.value("keel_raft_leader_changes_total{}") >= 1.0);
    assert!(after.value("keel_raft_applied_index{}") <= after.value("keel_raft_commit_index{}"));
    assert_eq!(after.value("keel_broker_registered{}"), 1.0);

    // A rejected request is counted by reason; a Kafka request by its API.
    let refused = keel(&addr, &["topic", "create", "orders", "--partitions", "3"], "").await;
    assert!(!refused.status.success());
    kafka_api_versions(kafka).await;
    let last_scrape = Scrape::take(&base).await;
    assert!(
        last_scrape.sum("keel_requests_rejected_total", &["api=create_topic", "reason=topic_already_exists"]) == 1.0,
        "{}",
        last_scrape.text
    );
    assert_eq!(last_scrape.value("keel_requests_total{api=api_versions,protocol=kafka}"), 1.0);
    println!(
        "{scrapes} scrapes during a run of {RECORDS} records: {produces} produce requests, {syncs} syncs, \
         every offset counted durable once; the text parsed as Prometheus text and OpenMetrics"
    );
    drop(broker); // killed
}

/// One ApiVersions v3 request on the Kafka listener, and its answer's length prefix.
async fn kafka_api_versions(addr: SocketAddr) {
    use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let mut body = bytes::BytesMut::new();
    let header = RequestHeader::default().with_request_api_key(ApiKey::ApiVersions as i16).with_request_api_version(3);
    header.encode(&mut body, ApiKey::ApiVersions.request_header_version(3)).unwrap();
    let request = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("test"))
        .with_client_software_version(StrBytes::from_static_str("1"));
    request.encode(&mut body, 3).unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&(body.len() as i32).to_be_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let length = stream.read_i32().await.expect("an ApiVersions answer");
    assert!(length > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_answers_what_keel_prints_and_the_group_lag_is_a_metric() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, base, _) = broker_with_admin(dir.path()).await;
    let addr = broker.addr().to_string();
    ok(&addr, &["topic", "create", "events", "--partitions", "2", "--replication", "1"]).await;
    let lines: String = (0..100).map(|i| format!("e{i}\n")).collect();
    assert!(keel(&addr, &["produce", "events"], &lines).await.status.success());
    ok(&addr, &["consume", "events", "--group", "readers", "--count", "100"]).await;
    // Ten more, not consumed: the group's lag is 10.
    let more: String = (0..10).map(|i| format!("late{i}\n")).collect();
    assert!(keel(&addr, &["produce", "events"], &more).await.status.success());

    let same = |path: &'static str, args: &'static [&'static str]| {
        let (base, addr) = (base.clone(), addr.clone());
        async move {
            let answer = get(format!("{base}{path}")).await;
            assert_eq!(answer.status, 200, "{path}: {}", answer.body);
            assert_eq!(answer.content_type, "application/json");
            let printed: serde_json::Value = serde_json::from_str(&ok(&addr, args).await).unwrap();
            assert_eq!(answer.json(), printed, "{path} differs from keel {args:?}");
            printed
        }
    };
    same("/v1/topics", &["--json", "topic", "list"]).await;
    let topic = same("/v1/topics/events", &["--json", "topic", "describe", "events"]).await;
    let hw: i64 = topic["partitions"].as_array().unwrap().iter().map(|p| p["high_watermark"].as_i64().unwrap()).sum();
    assert_eq!(hw, 110);
    same("/v1/groups", &["--json", "group", "list"]).await;
    let group = same("/v1/groups/readers", &["--json", "group", "describe", "readers"]).await;
    let lag: i64 = group["partitions"].as_array().unwrap().iter().map(|p| p["lag"].as_i64().unwrap()).sum();
    assert_eq!(lag, 10, "{group}");

    // The cluster status: the same nodes, roles and leader (the indexes move with heartbeats).
    let cluster = get(format!("{base}/v1/cluster")).await.json();
    let printed: serde_json::Value = serde_json::from_str(&ok(&addr, &["--json", "cluster", "status"]).await).unwrap();
    for key in ["answered_by", "leader", "offline_partitions", "under_replicated_partitions"] {
        assert_eq!(cluster[key], printed[key], "{key}");
    }
    assert_eq!(cluster["nodes"][0]["role"], "leader");

    let scrape = Scrape::take(&base).await;
    assert_eq!(scrape.sum("keel_consumer_group_lag", &["group=readers", "topic=events"]), 10.0, "{}", scrape.text);
    println!("/v1 topics, topic, groups and group equal keel's --json; the group lag of 10 is a metric");
    drop(broker); // killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_answers_and_the_listener_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, base, _) = broker_with_admin(dir.path()).await;

    let health = get(format!("{base}/healthz")).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = get(format!("{base}/readyz")).await.json();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["reasons"], serde_json::json!([]));
    let console = get(format!("{base}/")).await;
    assert_eq!(console.status, 200);
    assert!(console.content_type.starts_with("text/html") && console.body.contains("<title>Keel console</title>"));

    let missing = get(format!("{base}/v1/nothing")).await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().unwrap().contains("/metrics"));
    let posted = request("POST", format!("{base}/metrics")).await.unwrap();
    assert_eq!((posted.status, posted.allow.as_deref()), (405, Some("GET, HEAD")));
    let deleted = request("DELETE", format!("{base}/v1/topics/x")).await.unwrap();
    assert_eq!(deleted.status, 405);
    let topic = get(format!("{base}/v1/topics/no-such-topic")).await;
    assert_eq!(topic.status, 404);
    assert!(topic.json()["error"].as_str().unwrap().contains("no-such-topic"), "{}", topic.body);
    let group = get(format!("{base}/v1/groups/no%20such%20group")).await;
    assert_eq!(group.status, 404);
    assert!(group.json()["error"].as_str().unwrap().contains("no such group"), "{}", group.body);
    let head = request("HEAD", format!("{base}/metrics")).await.unwrap();
    assert_eq!((head.status, head.body.as_str()), (200, ""));

    // Not HTTP at all: that connection gets 400 and closes; the listener goes on.
    let admin = base.trim_start_matches("http://").to_owned();
    let mut garbage = tokio::net::TcpStream::connect(&admin).await.unwrap();
    garbage.write_all(b"\x00\x01\x02 this is not HTTP\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(support::http::HTTP_WAIT_MAX, garbage.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the garbage connection was closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"), "{answer:?}");
    assert_eq!(get(format!("{base}/healthz")).await.status, 200);
    println!("404s name what is missing, 405 says Allow, garbage gets 400 and the listener stays up");
    drop(broker); // killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_address_that_clashes_or_is_taken_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_loopback_addr().unwrap().to_string();
    let data = dir.path().join("a").to_string_lossy().into_owned();
    let clash = keel_broker(&["--listen", &listen, "--admin-listen", &listen, "--data-dir", &data]).await;
    assert!(!clash.status.success());
    assert!(stderr(&clash).contains("admin_listen") && stderr(&clash).contains("another port"), "{}", stderr(&clash));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let busy = keel_broker(&["--listen", &listen, "--admin-listen", &taken_addr, "--data-dir", &data]).await;
    assert!(!busy.status.success());
    assert!(stderr(&busy).contains("cannot listen on the admin address"), "{}", stderr(&busy));
    println!("a clashing and a taken --admin-listen each stop the broker with a clear message");
}

/// `keel broker args...` to its end (these fail at startup).
async fn keel_broker(args: &[&str]) -> std::process::Output {
    let mut command = tokio::process::Command::new(KEEL);
    command.arg("broker").args(args).env("RUST_LOG", "error");
    tokio::time::timeout(support::cli::COMMAND_WAIT_MAX, command.output())
        .await
        .expect("the broker stops at once")
        .expect("run keel broker")
}
