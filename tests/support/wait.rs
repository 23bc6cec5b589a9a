//! Waiting for a condition in the real-process tests: polled until a generous bound, never a fixed
//! sleep.

use std::time::Duration;

use tokio::time::Instant;

/// Liveness guard for every polled condition (a broker's start, a rebalance that can take a member's
/// session timeout, a topic's leaders, a group's commit).
pub const WAIT_MAX: Duration = Duration::from_secs(60);
/// Between two looks at a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Polls `check` until it returns `Ok`, at most [`WAIT_MAX`]; panics naming `what` and the last
/// value seen otherwise.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!("timed out waiting for {what}; last: {last}"),
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}
