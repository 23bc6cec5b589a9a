//! TLS on real `keel broker` processes (ADR 0028), with certificates this test makes itself (rcgen):
//! a 3-node cluster with mutual TLS on the native and Kafka listeners and between the brokers
//! serves a client that presents a certificate the cluster's CA signed (topic create, replicated
//! produce with acks=all, consume, cluster status fanned out over the peer links, the admin
//! listener's JSON, kcat over SSL); a plain client, a client without a certificate, one that trusts
//! another CA and one whose certificate another CA signed are each refused at the handshake, the
//! refusals are counted, and the verified client goes on being served. Bad TLS settings stop a
//! broker at startup with a message naming the problem.

#![cfg(not(madsim))]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use keel::process::{free_loopback_addr, ClusterSpec, LocalCluster};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use support::cli::{stderr, stdout, KEEL};
use support::http::get;
use support::wait::WAIT_MAX;

/// A CA: its certificate (PEM) and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
}

/// A certificate for `names` signed by `ca`, usable as `purposes`: (certificate PEM, key PEM).
fn leaf(ca: &Ca, names: &[&str], purposes: Vec<ExtendedKeyUsagePurpose>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = purposes;
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Every PEM file the test uses, under one directory.
struct Pki {
    ca: PathBuf,
    broker_cert: PathBuf,
    broker_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    rogue_ca: PathBuf,
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cluster_ca = ca("Keel test CA");
    let rogue = ca("Someone else's CA");
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    // Brokers present their certificate to clients and, when they dial each other, to peers.
    let (broker_cert, broker_key) = leaf(&cluster_ca, &["127.0.0.1", "localhost"], vec![ServerAuth, ClientAuth]);
    let (client_cert, client_key) = leaf(&cluster_ca, &["client.test"], vec![ClientAuth]);
    let (rogue_cert, rogue_key) = leaf(&rogue, &["rogue.test"], vec![ClientAuth]);
    Pki {
        ca: write("ca.pem", &cluster_ca.pem),
        broker_cert: write("broker.pem", &broker_cert),
        broker_key: write("broker.key", &broker_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
        rogue_ca: write("rogue-ca.pem", &rogue.pem),
        rogue_cert: write("rogue.pem", &rogue_cert),
        rogue_key: write("rogue.key", &rogue_key),
    }
}

fn s(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// `keel` with `tls` flags in front of `args`, against `broker`.
async fn keel_tls(broker: &str, tls: &[String], args: &[&str], stdin: &str) -> Output {
    let mut all: Vec<String> = vec!["--broker".into(), broker.into()];
    all.extend(tls.iter().cloned());
    all.extend(args.iter().map(|arg| arg.to_string()));
    let run = keel::process::run_keel(Path::new(KEEL), all, stdin.as_bytes());
    tokio::time::timeout(support::cli::COMMAND_WAIT_MAX, run).await.expect("keel finishes").expect("run keel")
}

/// A 3-node cluster with mutual TLS, Kafka and admin listeners.
async fn tls_cluster(dir: &Path, pki: &Pki) -> (LocalCluster, Vec<SocketAddr>, Vec<SocketAddr>) {
    let addrs = (0..3).map(|_| free_loopback_addr().unwrap()).collect();
    let kafka: Vec<SocketAddr> = (0..3).map(|_| free_loopback_addr().unwrap()).collect();
    let admin: Vec<SocketAddr> = (0..3).map(|_| free_loopback_addr().unwrap()).collect();
    let identity = keel::tls::Identity { cert: pki.client_cert.clone(), key: pki.client_key.clone() };
    let spec = ClusterSpec {
        env: vec![
            ("RUST_LOG".into(), "error".into()),
            ("KEEL_TLS_CERT".into(), pki.broker_cert.clone().into()),
            ("KEEL_TLS_KEY".into(), pki.broker_key.clone().into()),
            ("KEEL_TLS_CA".into(), pki.ca.clone().into()),
            ("KEEL_TLS_CLIENT_AUTH".into(), "true".into()),
        ],
        kafka_addrs: kafka.clone(),
        admin_addrs: admin.clone(),
        probe_tls: Some(keel::tls::client_config(&pki.ca, Some(&identity)).unwrap()),
        ..ClusterSpec::new(KEEL, addrs, dir.join("nodes"))
    };
    let mut cluster = LocalCluster::spawn(&spec).expect("start the brokers");
    cluster.wait_ready(WAIT_MAX).await.expect("every node answers over TLS");
    for addr in &admin {
        support::http::wait_ok("every broker ready", format!("http://{addr}/readyz")).await;
    }
    (cluster, kafka, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_tls_cluster_serves_verified_clients_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (cluster, kafka, admin) = tls_cluster(dir.path(), &pki).await;
    let broker = cluster.nodes()[0].process.addr().to_string();
    let good: Vec<String> =
        ["--tls-ca", &s(&pki.ca), "--tls-cert", &s(&pki.client_cert), "--tls-key", &s(&pki.client_key)]
            .map(str::to_owned)
            .to_vec();

    // The verified client: create (RF 3), produce with acks=all (replicated over the TLS peer
    // links), consume, and a cluster status fanned out to every peer over TLS.
    let created =
        keel_tls(&broker, &good, &["topic", "create", "secure", "--partitions", "2", "--replication", "3"], "").await;
    assert!(created.status.success(), "{}", stderr(&created));
    let records: String = (0..200).map(|i| format!("secret-{i}\n")).collect();
    let produced = keel_tls(&broker, &good, &["produce", "secure", "--acks", "all"], &records).await;
    assert!(produced.status.success(), "{}", stderr(&produced));
    let consumed = keel_tls(&broker, &good, &["consume", "secure", "--from-beginning", "--count", "200"], "").await;
    assert!(consumed.status.success(), "{}", stderr(&consumed));
    let text = stdout(&consumed);
    let mut got: Vec<&str> = text.lines().collect();
    got.sort();
    let mut want: Vec<String> = (0..200).map(|i| format!("secret-{i}")).collect();
    want.sort();
    assert_eq!(got, want);
    let status = keel_tls(&broker, &good, &["--json", "cluster", "status"], "").await;
    let status: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    let reachable = status["nodes"].as_array().unwrap().iter().filter(|node| node["reachable"] == true).count();
    assert_eq!(reachable, 3, "the fan-out reached every peer over TLS: {status}");
    let described = get(format!("http://{}/v1/topics/secure", admin[0])).await;
    assert_eq!(described.status, 200, "the admin listener asks its broker over TLS: {}", described.body);

    // Refused at the handshake, each; the verified client is served after every one.
    let refusals: [(&str, Vec<String>); 4] = [
        ("a plain client", Vec::new()),
        ("a client without a certificate", vec!["--tls-ca".into(), s(&pki.ca)]),
        ("a client trusting another CA", {
            let mut flags = good.clone();
            flags[1] = s(&pki.rogue_ca);
            flags
        }),
        (
            "a client whose certificate another CA signed",
            vec![
                "--tls-ca".into(),
                s(&pki.ca),
                "--tls-cert".into(),
                s(&pki.rogue_cert),
                "--tls-key".into(),
                s(&pki.rogue_key),
            ],
        ),
    ];
    for (who, flags) in &refusals {
        let refused = keel_tls(&broker, flags, &["topic", "list"], "").await;
        assert!(!refused.status.success(), "{who} was served: {}", stdout(&refused));
        let still = keel_tls(&broker, &good, &["produce", "secure"], "after\n").await;
        assert!(still.status.success(), "after {who}: {}", stderr(&still));
        println!("{who}: refused ({})", stderr(&refused).trim());
    }
    let metrics = get(format!("http://{}/metrics", admin[0])).await.body;
    let failed: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("keel_tls_handshakes_failed_total{protocol=\"native\"}"))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(failed >= 4.0, "each refusal is counted: {failed}");

    kcat_over_ssl(&pki, kafka[0]).await;
    println!("mutual TLS: clients, peers, admin and kcat served; 4 kinds of bad client refused and counted");
}

/// kcat (librdkafka, OpenSSL) against the Kafka listener with SSL: metadata, produce, consume; and
/// without a client certificate, refused.
async fn kcat_over_ssl(pki: &Pki, kafka: SocketAddr) {
    let ssl = |with_cert: bool| {
        let mut args = vec![
            "-b".to_owned(),
            kafka.to_string(),
            "-X".into(),
            "security.protocol=ssl".into(),
            "-X".into(),
            format!("ssl.ca.location={}", s(&pki.ca)),
        ];
        if with_cert {
            args.extend([
                "-X".into(),
                format!("ssl.certificate.location={}", s(&pki.client_cert)),
                "-X".into(),
                format!("ssl.key.location={}", s(&pki.client_key)),
            ]);
        }
        args
    };
    let kcat = |args: Vec<String>, stdin: &'static str| async move {
        let mut command = tokio::process::Command::new("kcat");
        command.args(&args).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
        command.stderr(std::process::Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().expect("kcat (run .ci/deps)");
        use tokio::io::AsyncWriteExt;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        tokio::time::timeout(support::cli::COMMAND_WAIT_MAX, child.wait_with_output())
            .await
            .expect("kcat ends")
            .unwrap()
    };
    let listed = kcat([ssl(true), vec!["-L".into(), "-t".into(), "secure".into()]].concat(), "").await;
    assert!(listed.status.success() && stdout(&listed).contains("3 brokers"), "{}{}", stdout(&listed), stderr(&listed));
    let produced =
        kcat([ssl(true), vec!["-P".into(), "-t".into(), "secure".into()]].concat(), "via-kcat-1\nvia-kcat-2\n").await;
    assert!(produced.status.success(), "{}", stderr(&produced));
    let args =
        [ssl(true), vec!["-C".into(), "-t".into(), "secure".into(), "-o".into(), "beginning".into(), "-e".into()]];
    let consumed = kcat(args.concat(), "").await;
    assert!(stdout(&consumed).contains("via-kcat-2"), "{}{}", stdout(&consumed), stderr(&consumed));
    let args = [ssl(false), vec!["-L".into(), "-m".into(), "5".into()]];
    let refused = kcat(args.concat(), "").await;
    assert!(!stdout(&refused).contains("3 brokers"), "kcat without a certificate was served: {}", stdout(&refused));
    println!("kcat over SSL: metadata, produce, consume; refused without a client certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_stop_a_broker_at_startup_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let listen = free_loopback_addr().unwrap().to_string();
    let data = s(&dir.path().join("data"));
    let missing = s(&dir.path().join("missing.pem"));
    let cases: [(&[&str], &str); 4] = [
        (&["--tls-cert", &missing, "--tls-key", &s(&pki.broker_key)], "cannot read the certificate"),
        (&["--tls-cert", &s(&pki.broker_key), "--tls-key", &s(&pki.broker_key)], "holds no PEM certificate"),
        (
            &["--tls-cert", &s(&pki.broker_cert), "--tls-key", &s(&pki.broker_key), "broker", "--tls-client-auth"],
            "tls_client_auth needs tls_ca",
        ),
        (&["--tls-cert", &s(&pki.broker_cert), "--tls-key", &s(&pki.client_key)], "invalid TLS setup"),
    ];
    for (flags, message) in cases {
        let mut args: Vec<&str> = flags.to_vec();
        if !args.contains(&"broker") {
            args.push("broker");
        }
        args.extend(["--listen", &listen, "--data-dir", &data]);
        let mut command = tokio::process::Command::new(KEEL);
        command.args(&args).env("RUST_LOG", "error");
        let output = tokio::time::timeout(support::cli::COMMAND_WAIT_MAX, command.output()).await.unwrap().unwrap();
        assert!(!output.status.success(), "{args:?} started");
        assert!(stderr(&output).contains(message), "{args:?}: {}", stderr(&output));
    }
    let only_cert = std::process::Command::new(KEEL).args(["--tls-cert", "x.pem", "broker"]).output().unwrap();
    assert_eq!(only_cert.status.code(), Some(2), "a certificate without its key is a usage error");
    println!("a missing file, a key given as the certificate, client auth without a CA and a key that does not match each stop the broker with a clear message");
}
