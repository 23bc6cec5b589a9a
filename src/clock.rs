//! The shell's clocks: the wall clock, and waiting for an optional deadline on the runtime's clock.
//! Sans-IO cores never read either: time comes to them as an argument.

/// Milliseconds since the Unix epoch, for record timestamps and broker heartbeats. Under madsim this
/// is the simulated clock, so it is deterministic per seed, plus the skew the simulation set for the
/// calling node ([`skew`]): wall clocks of different machines disagree and jump, so nothing may
/// compare one node's wall clock with another's for safety or for failure detection.
pub fn wall_clock_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0);
    #[cfg(madsim)]
    let now = now + skew::offset_ms();
    now
}

/// Per-node wall-clock skew in the simulation (`--cfg madsim` only): the nemesis sets an offset for
/// a node (a jump forwards or backwards) and later clears it. Only [`wall_clock_ms`] sees it; the
/// runtime's monotonic clock (timeouts, ticks) stays true, as on a machine whose NTP steps its clock.
#[cfg(madsim)]
pub mod skew {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use madsim::task::NodeId;

    thread_local! {
        static OFFSETS: RefCell<BTreeMap<NodeId, i64>> = const { RefCell::new(BTreeMap::new()) };
    }

    /// Node `node`'s wall clock reads `offset_ms` away from the simulated time from now on (0 clears).
    pub fn set_offset_ms(node: NodeId, offset_ms: i64) {
        OFFSETS.with(|offsets| {
            let mut offsets = offsets.borrow_mut();
            if offset_ms == 0 {
                offsets.remove(&node);
            } else {
                offsets.insert(node, offset_ms);
            }
        });
    }

    /// Forgets every offset (a new run on this thread).
    pub fn clear() {
        OFFSETS.with(|offsets| offsets.borrow_mut().clear());
    }

    pub(super) fn offset_ms() -> i64 {
        OFFSETS.with(|offsets| {
            let offsets = offsets.borrow();
            if offsets.is_empty() {
                return 0;
            }
            offsets.get(&madsim::plugin::node()).copied().unwrap_or(0)
        })
    }
}

/// Sleeps until `deadline` on the runtime's clock (simulated under madsim); with `None`, forever.
/// For a `select!` branch whose deadline may not exist (nothing is waiting for one).
pub async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
