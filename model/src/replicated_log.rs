//! A reference model of a replicated partition log (Kafka's ISR model with fsync before the HW).
//!
//! In: what a test harness observes of real replica cores and their logs (each replica's log as a
//! list of batches, each batch's offsets, leader epoch and fingerprint), leaders' high watermarks,
//! acknowledgements and consumer reads. Out: a verdict, and the arithmetic the cores must agree with
//! (epoch end offsets, the HW over an ISR, elections from the ISR), written independently of the
//! broker's code so that a table test can hold both to the same rows.
//!
//! # What the model holds
//! The *committed prefix*: the batches below any high watermark any leader ever reported, below
//! any acknowledged `acks=all` batch, and below the end of any consumer read. Committed batches are
//! never lost or changed. That is checked as:
//! - every committed prefix reported agrees with the one known (one is a prefix of the other);
//! - every replica in the controller's ISR holds the committed prefix in its durable log (so any
//!   replica the controller may elect holds everything committed), and in its live log;
//! - a leader's HW never moves back while it leads (same incarnation, same epoch);
//! - at the end, after faults heal, every replica's log equals the leader's.
//!
//! # Election
//! [`elect`]: from the ISR only, among live members, the one with the longest durable log (ties: the
//! lowest id), in the spirit of KIP-966's eligible leaders. Unclean election is not modelled: it may
//! lose committed data by design.

use std::collections::BTreeMap;

pub type NodeId = u64;

/// One batch as a replica's log holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRef {
    pub base: i64,
    /// The offset after the batch.
    pub next: i64,
    pub epoch: i32,
    /// Identifies the payload (e.g. the batch CRC, which does not cover offset or epoch).
    pub id: u64,
}

/// The epoch cache a log implies: the first batch of each epoch, as (epoch, start offset).
pub fn epochs_of(log: &[BatchRef]) -> Vec<(i32, i64)> {
    let mut epochs: Vec<(i32, i64)> = Vec::new();
    for batch in log {
        if epochs.last().is_none_or(|(epoch, _)| *epoch < batch.epoch) {
            epochs.push((batch.epoch, batch.base));
        }
    }
    epochs
}

/// Kafka's OffsetsForLeaderEpoch over `(epoch, start)` pairs sorted by epoch: the largest epoch
/// `<= epoch` and the start of the next one (or `log_end`); `None` below the earliest.
pub fn end_offset_for(epochs: &[(i32, i64)], epoch: i32, log_end: i64) -> Option<(i32, i64)> {
    let mut found = None;
    for (index, &(known, _)) in epochs.iter().enumerate() {
        if known <= epoch {
            let end = epochs.get(index + 1).map_or(log_end, |&(_, start)| start);
            found = Some((known, end));
        }
    }
    found
}

/// The HW a set of ISR members supports: the least of their durable ends, `None` if one is unknown.
pub fn high_watermark_over(durable_ends: &[Option<i64>]) -> Option<i64> {
    durable_ends.iter().try_fold(i64::MAX, |least, durable| durable.map(|durable| least.min(durable)))
}

/// The leader the controller elects: an ISR member that is alive, with the longest durable log.
pub fn elect(isr: &[NodeId], alive: impl Fn(NodeId) -> bool, durable_end: impl Fn(NodeId) -> i64) -> Option<NodeId> {
    isr.iter().copied().filter(|node| alive(*node)).max_by_key(|node| (durable_end(*node), std::cmp::Reverse(*node)))
}

/// The first offset where two logs differ (by batch), or the shorter log's end.
pub fn divergence_point(left: &[BatchRef], right: &[BatchRef]) -> i64 {
    for (a, b) in left.iter().zip(right) {
        if a != b {
            return a.base.min(b.base);
        }
    }
    let shorter = if left.len() <= right.len() { left } else { right };
    shorter.last().map_or(0, |batch| batch.next)
}

#[derive(Debug, Default)]
pub struct ReplicatedLogModel {
    committed: Vec<BatchRef>,
    /// Highest HW seen per (node, incarnation, leader epoch).
    leader_hw: BTreeMap<(NodeId, u64, i32), i64>,
    pub acks: u64,
    pub reads: u64,
}

fn prefix_below(log: &[BatchRef], up_to: i64) -> Result<&[BatchRef], String> {
    let count = log.iter().take_while(|batch| batch.next <= up_to).count();
    let end = log.get(..count).and_then(|batches| batches.last()).map_or(0, |batch| batch.next);
    if end != up_to {
        return Err(format!("offset {up_to} is not a batch boundary of a log ending at {end}: {log:?}"));
    }
    Ok(&log[..count])
}

impl ReplicatedLogModel {
    pub fn new() -> ReplicatedLogModel {
        ReplicatedLogModel::default()
    }

    pub fn committed(&self) -> &[BatchRef] {
        &self.committed
    }

    pub fn committed_end(&self) -> i64 {
        self.committed.last().map_or(0, |batch| batch.next)
    }

    /// Everything below `up_to` in `log` (a leader's) is committed.
    pub fn commit(&mut self, log: &[BatchRef], up_to: i64) -> Result<(), String> {
        let prefix = prefix_below(log, up_to)?;
        let shared = prefix.len().min(self.committed.len());
        if prefix[..shared] != self.committed[..shared] {
            return Err(format!(
                "committed data changed: now {:?}, before {:?} (diverging at {})",
                prefix,
                self.committed,
                divergence_point(prefix, &self.committed)
            ));
        }
        if prefix.len() > self.committed.len() {
            self.committed = prefix.to_vec();
        }
        Ok(())
    }

    /// An `acks=all` acknowledgement of the batch `id` at `base`, given by a leader with this log and
    /// HW: the batch is there, below the HW, and everything up to it is committed.
    pub fn on_ack(&mut self, leader_log: &[BatchRef], base: i64, id: u64, high_watermark: i64) -> Result<(), String> {
        let batch = leader_log
            .iter()
            .find(|batch| batch.base == base)
            .ok_or_else(|| format!("acked batch at {base} is not in the leader's log"))?;
        if batch.id != id {
            return Err(format!("acked offset {base} holds another batch ({} != {id})", batch.id));
        }
        if batch.next > high_watermark {
            return Err(format!("acked batch [{base}, {}) above the HW {high_watermark}", batch.next));
        }
        self.acks += 1;
        self.commit(leader_log, batch.next)
    }

    /// A consumer read `batches` from a leader with this log and HW.
    pub fn on_read(
        &mut self,
        leader_log: &[BatchRef],
        batches: &[BatchRef],
        high_watermark: i64,
    ) -> Result<(), String> {
        let Some(last) = batches.last() else { return Ok(()) };
        if last.next > high_watermark {
            return Err(format!("a consumer read up to {} past the HW {high_watermark}", last.next));
        }
        self.reads += 1;
        self.commit(leader_log, last.next)
    }

    /// A leader's HW, observed after a step. It is committed, and never moves back.
    pub fn on_leader_hw(
        &mut self,
        node: NodeId,
        incarnation: u64,
        epoch: i32,
        high_watermark: i64,
        leader_log: &[BatchRef],
    ) -> Result<(), String> {
        let seen = self.leader_hw.entry((node, incarnation, epoch)).or_insert(high_watermark);
        if high_watermark < *seen {
            return Err(format!("leader {node} (epoch {epoch}) moved its HW back from {seen} to {high_watermark}"));
        }
        *seen = high_watermark;
        self.commit(leader_log, high_watermark)
    }

    /// A member of the controller's ISR must hold the committed prefix in `log`.
    pub fn check_in_sync(&self, node: NodeId, what: &str, log: &[BatchRef]) -> Result<(), String> {
        let n = self.committed.len();
        if log.len() < n || log[..n] != self.committed[..] {
            return Err(format!(
                "ISR member {node}'s {what} log lacks committed data: committed {:?}, log {:?} (diverging at {})",
                self.committed,
                log,
                divergence_point(log, &self.committed)
            ));
        }
        Ok(())
    }

    /// After healing: every replica's log equals the leader's, and holds everything committed.
    pub fn check_converged(&self, leader: NodeId, logs: &[(NodeId, Vec<BatchRef>)]) -> Result<(), String> {
        let leader_log = &logs.iter().find(|(node, _)| *node == leader).ok_or("no leader log")?.1;
        self.check_in_sync(leader, "final", leader_log)?;
        for (node, log) in logs {
            if log != leader_log {
                return Err(format!(
                    "replica {node} differs from leader {leader} at {}: {log:?} vs {leader_log:?}",
                    divergence_point(log, leader_log)
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, next: i64, epoch: i32, id: u64) -> BatchRef {
        BatchRef { base, next, epoch, id }
    }

    #[test]
    fn epoch_math() {
        let log = [batch(0, 5, 0, 1), batch(5, 15, 0, 2), batch(15, 20, 2, 3), batch(40, 45, 5, 4)];
        assert_eq!(epochs_of(&log), vec![(0, 0), (2, 15), (5, 40)]);
        let epochs = [(0, 0), (2, 15), (5, 40)];
        assert_eq!(end_offset_for(&epochs, 3, 50), Some((2, 40)));
        assert_eq!(end_offset_for(&epochs, 7, 50), Some((5, 50)));
        assert_eq!(end_offset_for(&epochs[1..], 1, 50), None);
        assert_eq!(high_watermark_over(&[Some(10), Some(7), Some(9)]), Some(7));
        assert_eq!(high_watermark_over(&[Some(10), None]), None);
        assert_eq!(elect(&[1, 2, 3], |node| node != 2, |node| [0, 10, 30, 20][node as usize]), Some(3));
        assert_eq!(elect(&[1, 3], |_| true, |_| 5), Some(1), "ties go to the lowest id");
    }

    #[test]
    fn committed_data_may_grow_but_never_change() {
        let mut model = ReplicatedLogModel::new();
        let log = [batch(0, 2, 0, 1), batch(2, 3, 0, 2)];
        model.on_leader_hw(1, 0, 0, 2, &log).unwrap();
        assert!(model.on_leader_hw(1, 0, 0, 0, &log).is_err(), "HW moved back");
        model.on_ack(&log, 2, 2, 3).unwrap();
        assert_eq!(model.committed_end(), 3);
        let other = [batch(0, 2, 0, 1), batch(2, 3, 1, 9)];
        assert!(model.commit(&other, 3).is_err());
        assert!(model.check_in_sync(2, "durable", &log[..1]).is_err());
        model.check_in_sync(2, "durable", &log).unwrap();
        assert!(model.on_read(&log, &log, 2).is_err(), "read past the HW");
        assert!(model.commit(&log, 1).is_err(), "not a batch boundary");
    }
}
