//! `keel user create|delete|list` against a real 3-node cluster (ADR 0029): a user created through
//! one broker is listed by every other (the credential is in the Raft metadata), a second create
//! changes it, a listing never shows a key, and bad input gets a clear error: an empty password, too
//! few iterations, a name with spaces at an end, deleting a user that does not exist.

#![cfg(not(madsim))]

mod support;

use std::path::Path;

use keel::process::{free_loopback_addr, run_keel, ClusterSpec, LocalCluster};
use support::cli::{stderr, stdout, KEEL};
use support::wait::{wait_for, WAIT_MAX};

async fn keel(broker: &str, args: &[&str], stdin: &str) -> std::process::Output {
    let mut all = vec!["--broker", broker];
    all.extend_from_slice(args);
    run_keel(Path::new(KEEL), all, stdin.as_bytes()).await.expect("run keel")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_live_in_the_metadata_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = (0..3).map(|_| free_loopback_addr().unwrap()).collect();
    let spec =
        ClusterSpec { env: vec![("RUST_LOG".into(), "error".into())], ..ClusterSpec::new(KEEL, addrs, dir.path()) };
    let mut cluster = LocalCluster::spawn(&spec).expect("start the brokers");
    cluster.wait_ready(WAIT_MAX).await.expect("every node answers");
    let node = |i: usize| cluster.nodes()[i].process.addr().to_string();

    let created = keel(&node(0), &["user", "create", "alice"], "pencil\n").await;
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(stdout(&created).contains("user alice saved (SCRAM-SHA-256 with 4096 iterations)"));
    let again = keel(&node(1), &["user", "create", "alice", "--iterations", "8192"], "new password").await;
    assert!(again.status.success(), "{}", stderr(&again));
    let listed = wait_for("node 3 to list alice with 8192 iterations", || {
        let broker = node(2);
        async move {
            let output = keel(&broker, &["--json", "user", "list"], "").await;
            let text = stdout(&output);
            if text.contains("\"iterations\":8192") {
                Ok(text)
            } else {
                Err(format!("{text}{}", stderr(&output)))
            }
        }
    })
    .await;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed,
        serde_json::json!({"users": [{"name": "alice", "mechanism": "SCRAM-SHA-256", "iterations": 8192}]})
    );

    let refusals: [(&[&str], &str, &str); 4] = [
        (&["user", "create", "bob"], "", "no password on standard input"),
        (&["user", "create", "bob", "--iterations", "10"], "x\n", "is not in 4096"),
        (&["user", "create", " bob"], "x\n", "spaces at an end"),
        (&["user", "delete", "nobody"], "", "no user named \"nobody\""),
    ];
    for (args, stdin, message) in refusals {
        let output = keel(&node(0), args, stdin).await;
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr(&output).contains(message), "{args:?}: {}", stderr(&output));
    }
    let deleted = keel(&node(2), &["user", "delete", "alice"], "").await;
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let empty = keel(&node(0), &["--json", "user", "list"], "").await;
    assert_eq!(stdout(&empty).trim(), "{\"users\":[]}");
    println!("alice created on node 1, changed on node 2, listed on node 3 (no keys), deleted; 4 bad inputs refused");
}
