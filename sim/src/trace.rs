//! The simulation's trace: what the harness did (nemesis actions, restarts, invariant checks), with
//! simulated timestamps, and the stable hash that proves two runs of one seed were the same run.
//!
//! In: [`Trace::record`] calls from the cluster harness and the nemesis; a history fingerprint.
//! Out: [`Trace::hash`], a 64-bit FNV-1a over the history fingerprint and every trace line.
//!
//! Invariant: nothing here uses `std`'s randomly seeded hashers; the same events give the same hash
//! in every process. This module is pure (no clocks, no I/O), so it builds outside madsim too.

use std::sync::{Arc, Mutex};

pub use keel_model::fnv::Fnv1a64;

/// One thing the harness did or saw, at a simulated time (nanoseconds since the scenario started).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub time_ns: u64,
    pub what: String,
}

/// The harness's event log. Cheap to clone (shared); the simulation is single-threaded, so the lock
/// is never contended and never held across an `.await`.
#[derive(Clone, Default)]
pub struct Trace {
    events: Arc<Mutex<Vec<TraceEvent>>>,
}

impl Trace {
    pub fn new() -> Trace {
        Trace::default()
    }

    pub fn record(&self, time_ns: u64, what: impl Into<String>) {
        let what = what.into();
        tracing::info!(time_ms = time_ns / 1_000_000, "{what}");
        self.lock().push(TraceEvent { time_ns, what });
    }

    pub fn events(&self) -> Vec<TraceEvent> {
        self.lock().clone()
    }

    /// Events whose description starts with `prefix` (e.g. `"nemesis"`).
    pub fn count_prefixed(&self, prefix: &str) -> usize {
        self.lock().iter().filter(|event| event.what.starts_with(prefix)).count()
    }

    /// The trace hash: FNV-1a over the history's fingerprint, then every event's time and text.
    pub fn hash(&self, history_fingerprint: u64) -> u64 {
        let mut hasher = Fnv1a64::new();
        hasher.write_u64(history_fingerprint);
        for event in self.lock().iter() {
            hasher.write_u64(event.time_ns);
            hasher.write(event.what.as_bytes());
            hasher.write(b"\n");
        }
        hasher.finish()
    }

    /// The last lines of the trace, for failure reports.
    pub fn tail(&self, lines_max: usize) -> String {
        let events = self.lock();
        let start = events.len().saturating_sub(lines_max);
        events[start..]
            .iter()
            .map(|event| format!("  {:>10.3} ms  {}\n", event.time_ns as f64 / 1e6, event.what))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TraceEvent>> {
        self.events.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The line every scenario prints last.
pub fn summary_line(seed: u64, trace_hash: u64) -> String {
    format!("seed={seed} trace_hash={trace_hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Reference values of 64-bit FNV-1a.
        let mut empty = Fnv1a64::new();
        empty.write(b"");
        assert_eq!(empty.finish(), 0xcbf2_9ce4_8422_2325);
        let mut a = Fnv1a64::new();
        a.write(b"a");
        assert_eq!(a.finish(), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn trace_hash_depends_on_times_text_and_history() {
        let one = Trace::new();
        one.record(5, "nemesis power_loss broker-1");
        let two = Trace::new();
        two.record(6, "nemesis power_loss broker-1");
        assert_ne!(one.hash(1), two.hash(1));
        assert_ne!(one.hash(1), one.hash(2));
        assert_eq!(one.hash(7), one.hash(7));
        assert_eq!(summary_line(3, 0xab), "seed=3 trace_hash=00000000000000ab");
    }
}
