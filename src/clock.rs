//! The shell's clocks: the wall clock, and waiting for an optional deadline on the runtime's clock.
//! Sans-IO cores never read either: time comes to them as an argument.

/// Milliseconds since the Unix epoch, for record timestamps and broker heartbeats. Under madsim this
/// is the simulated clock, so it is deterministic per seed.
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// Sleeps until `deadline` on the runtime's clock (simulated under madsim); with `None`, forever.
/// For a `select!` branch whose deadline may not exist (nothing is waiting for one).
pub async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
