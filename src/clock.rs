//! The shell's wall clock. Sans-IO cores never read it: time comes to them as an argument.

/// Milliseconds since the Unix epoch, for record timestamps and broker heartbeats. Under madsim this
/// is the simulated clock, so it is deterministic per seed.
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}
