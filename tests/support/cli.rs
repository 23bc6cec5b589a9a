//! The real `keel` binary for the process tests: a broker of its own, and one command run to its end.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use keel::process::{free_loopback_addr, run_keel, BrokerCommand, BrokerProcess};

pub const KEEL: &str = env!("CARGO_BIN_EXE_keel");
/// Longest one `keel` command may run before the test fails (a hang, not a slow answer).
pub const COMMAND_WAIT_MAX: Duration = Duration::from_secs(60);

/// A broker on a free loopback port with its data in `data_dir`, answering within `wait`.
pub async fn start_broker(data_dir: &Path, wait: Duration) -> BrokerProcess {
    start_broker_with(data_dir, wait, &[]).await
}

/// [`start_broker`] with more `keel broker` arguments (`--config FILE`, ...).
pub async fn start_broker_with(data_dir: &Path, wait: Duration, extra_args: &[&str]) -> BrokerProcess {
    let command =
        BrokerCommand::new(KEEL, free_loopback_addr().unwrap(), data_dir).args(extra_args).env("RUST_LOG", "warn");
    BrokerProcess::start(command, wait).await.expect("start keel broker")
}

/// `keel --broker <broker> args...` with `stdin`, to its end (at most [`COMMAND_WAIT_MAX`]).
pub async fn keel(broker: &str, args: &[&str], stdin: &str) -> Output {
    let mut all = vec!["--broker".to_owned(), broker.to_owned()];
    all.extend(args.iter().map(|arg| arg.to_string()));
    let run = run_keel(Path::new(KEEL), all, stdin.as_bytes());
    tokio::time::timeout(COMMAND_WAIT_MAX, run)
        .await
        .unwrap_or_else(|_| panic!("keel {args:?} still runs after {COMMAND_WAIT_MAX:?}"))
        .expect("run keel")
}

/// `keel args...`, which must succeed; its stdout.
pub async fn ok(broker: &str, args: &[&str]) -> String {
    let output = keel(broker, args, "").await;
    assert!(output.status.success(), "keel {args:?}: {}", stderr(&output));
    stdout(&output)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
