//! The controller's failure detector: which brokers to fence (ADR 0015).
//!
//! In: the heartbeat stamps of the live brokers as the applied metadata shows them, and the
//! controller's own monotonic time (an argument). Out: the brokers whose stamp has not changed for
//! longer than the fence timeout, each with the `FenceBroker` stamp that makes the fence stale if a
//! heartbeat applies first.
//!
//! Why not compare stamps with the controller's wall clock: a stamp is the broker's wall clock (a
//! `BrokerHeartbeat`'s `now_ms`), and wall clocks of different machines disagree. A broker whose
//! clock runs ahead by a minute would stay unfenced for a minute after it died (its partitions
//! leaderless meanwhile); one whose clock lags would be fenced while alive. The state machine makes
//! every applied heartbeat move its broker's stamp (at least one past the previous one), so "the stamp
//! changed" means "a heartbeat applied", whatever the clocks say, and the time it takes to notice is
//! measured on one clock only: the controller's monotonic one.
//!
//! A new controller, or one that did not tick for a while (paused), starts watching afresh
//! ([`FenceWatch::reset`]): every broker gets a full fence timeout from then on.

use std::collections::BTreeMap;

use crate::types::NodeId;

/// Per live broker: the stamp last seen and when (controller monotonic ms) it was first seen.
#[derive(Debug, Default)]
pub struct FenceWatch {
    seen: BTreeMap<NodeId, (i64, u64)>,
}

impl FenceWatch {
    pub fn new() -> FenceWatch {
        FenceWatch::default()
    }

    /// Forgets everything: from the next [`FenceWatch::observe`] every broker has a full timeout.
    pub fn reset(&mut self) {
        self.seen.clear();
    }

    /// Takes the live brokers' stamps at `now_ms` (monotonic) and returns those due to be fenced, with
    /// the `FenceBroker` stamp to propose (one past the stamp seen). Sorted by node id.
    pub fn observe(&mut self, alive: &[(NodeId, i64)], now_ms: u64, fence_after_ms: u64) -> Vec<(NodeId, i64)> {
        self.seen.retain(|node, _| alive.iter().any(|(live, _)| live == node));
        let mut due = Vec::new();
        for &(node, stamp) in alive {
            let entry = self.seen.entry(node).or_insert((stamp, now_ms));
            if entry.0 != stamp {
                *entry = (stamp, now_ms);
            }
            if now_ms.saturating_sub(entry.1) > fence_after_ms {
                due.push((node, stamp.saturating_add(1)));
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N1: NodeId = NodeId(1);
    const N2: NodeId = NodeId(2);

    #[test]
    fn a_broker_is_due_once_its_stamp_stood_still_for_longer_than_the_timeout_whatever_its_value() {
        let mut watch = FenceWatch::new();
        // Broker 1's clock runs a minute ahead, broker 2's a minute behind: irrelevant.
        assert!(watch.observe(&[(N1, 60_000), (N2, -60_000)], 0, 1_000).is_empty());
        assert!(watch.observe(&[(N1, 60_500), (N2, -60_000)], 900, 1_000).is_empty());
        assert!(watch.observe(&[(N1, 60_500), (N2, -60_000)], 1_000, 1_000).is_empty(), "exactly the timeout");
        assert_eq!(watch.observe(&[(N1, 60_500), (N2, -60_000)], 1_001, 1_000), vec![(N2, -59_999)]);
        // Broker 1 stopped at 900: due 1,000 ms later, not before.
        assert_eq!(watch.observe(&[(N1, 60_500)], 1_900, 1_000), vec![]);
        assert_eq!(watch.observe(&[(N1, 60_500)], 1_901, 1_000), vec![(N1, 60_501)]);
    }

    #[test]
    fn a_stamp_that_moves_backwards_still_counts_as_a_heartbeat_and_reset_restarts_every_timeout() {
        let mut watch = FenceWatch::new();
        watch.observe(&[(N1, 5_000)], 0, 1_000);
        assert!(watch.observe(&[(N1, 4_000)], 900, 1_000).is_empty());
        assert!(watch.observe(&[(N1, 4_000)], 1_800, 1_000).is_empty());
        watch.reset();
        assert!(watch.observe(&[(N1, 4_000)], 2_500, 1_000).is_empty(), "a fresh timeout after a reset");
        assert_eq!(watch.observe(&[(N1, 4_000)], 3_501, 1_000), vec![(N1, 4_001)]);
        // A fenced (no longer listed) broker is forgotten; listed again, it starts afresh.
        assert!(watch.observe(&[], 4_000, 1_000).is_empty());
        assert!(watch.observe(&[(N1, 4_000)], 4_500, 1_000).is_empty());
    }
}
