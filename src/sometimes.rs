//! "Sometimes" coverage: the interesting states the simulation must reach now and then (a leader
//! change with a produce in flight, a truncation by leader epoch, an ISR shrink, a retry answered
//! from the dedup table, a torn tail cut on recovery, ...). Code that reaches one calls [`hit`].
//!
//! Observation only: a hit never changes what the code does. In the normal build [`hit`] is an
//! empty inline function; in the simulation build (`--cfg madsim`) it counts per OS thread (a madsim
//! run lives on one thread), and the simulation driver takes the counts after each seed
//! ([`take`]). A run over CI's seed set prints how often each state happened and fails if a state
//! never did: a check that never sees its interesting state proves nothing (FoundationDB's
//! `TEST()` and Antithesis's "sometimes" assertions play this role there).

/// An interesting state. Add one where a scenario is meant to exercise a rare path; the CI
/// campaign then fails until some seed reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sometimes {
    /// A leader gave up leadership with produces appended and not yet answered (they get
    /// `NotLeaderAfterAppend`: outcome unknown).
    LeaderChangeDuringProduce,
    /// A follower cut its log back where it stopped agreeing with the leader (KIP-279), with
    /// records removed.
    TruncationByEpoch,
    /// A leader saw the controller commit a smaller ISR it had proposed.
    IsrShrink,
    /// A leader saw the controller commit a larger ISR it had proposed (a follower rejoined).
    IsrExpand,
    /// A retry of an appended idempotent batch answered with its original offsets.
    DuplicateAnswered,
    /// A retry of an appended idempotent batch refused with `DuplicatePending` (not committed yet).
    DuplicatePending,
    /// An idempotent batch refused for a sequence gap (`OutOfOrderSequence`).
    OutOfOrderSequence,
    /// An `acks=all` produce refused because the ISR was below `min_insync_replicas`.
    NotEnoughReplicas,
    /// Log recovery cut a torn tail (a write a crash left half done).
    TornTailTruncated,
    /// Log recovery cut a batch whose CRC or framing was wrong (not a short tail).
    CorruptBatchCut,
    /// A read found a corrupt batch in a recovered log (bit rot): the log fails and is recovered.
    CorruptBatchDetected,
    /// The controller fenced a broker whose heartbeats stopped.
    BrokerFenced,
    /// A broker moved its partitions away through controlled shutdown.
    ControlledShutdown,
    /// A metadata voter installed a Raft snapshot from the leader.
    RaftSnapshotInstalled,
    /// A leader took a compressed batch (its records inflated and checked) for appending.
    CompressedBatchProduced,
    /// Retention deleted whole segments from the start of a replica's log.
    RetentionDeletedSegments,
    /// A follower whose log ended below its leader's log start emptied its log and started over there.
    FollowerLogReset,
    /// A new coordinator read its `__consumer_offsets` partition (behind its committed marker).
    GroupCoordinatorLoaded,
    /// A consumer group's generation with members was committed and handed out.
    GroupGenerationFormed,
    /// A group member was removed because its session timed out.
    GroupMemberExpired,
    /// A commit from a stale generation (or a removed member) was refused.
    GroupStaleCommitRefused,
    /// A push subscription used up its credit and waited for a grant before pushing more.
    PushCreditExhausted,
    /// A push subscription ended because its broker stopped leading the partition (or the leader
    /// epoch moved): the subscriber must resubscribe at the new leader.
    PushLeaderMoved,
    /// Compaction rewrote a sealed segment of a compacted topic (the offsets topic included).
    CompactionRewroteSegment,
    /// A read started inside a compaction filler (a follower whose log ends at a boundary of the
    /// batches the filler replaced), served from the read's offset.
    FillerSplitForRead,
    /// A partition file's handle, closed by the open-file budget, was opened again (issue 15).
    FileHandleReopened,
    /// A partition file's handle with unsynced writes was synced by an opener, then closed, to keep
    /// the open-file budget a bound (issue 15).
    FileSyncedToClose,
    /// A coalesced sync group held half the open-file budget, so later syncs waited for the next.
    SyncGroupFull,
    /// A partition log opened from its clean-close record, without a scan (ADR 0025).
    CleanCloseOpened,
}

impl Sometimes {
    /// Every state, in table order.
    pub const ALL: [Sometimes; 29] = [
        Sometimes::LeaderChangeDuringProduce,
        Sometimes::TruncationByEpoch,
        Sometimes::IsrShrink,
        Sometimes::IsrExpand,
        Sometimes::DuplicateAnswered,
        Sometimes::DuplicatePending,
        Sometimes::OutOfOrderSequence,
        Sometimes::NotEnoughReplicas,
        Sometimes::TornTailTruncated,
        Sometimes::CorruptBatchCut,
        Sometimes::CorruptBatchDetected,
        Sometimes::BrokerFenced,
        Sometimes::ControlledShutdown,
        Sometimes::RaftSnapshotInstalled,
        Sometimes::CompressedBatchProduced,
        Sometimes::RetentionDeletedSegments,
        Sometimes::FollowerLogReset,
        Sometimes::GroupCoordinatorLoaded,
        Sometimes::GroupGenerationFormed,
        Sometimes::GroupMemberExpired,
        Sometimes::GroupStaleCommitRefused,
        Sometimes::PushCreditExhausted,
        Sometimes::PushLeaderMoved,
        Sometimes::CompactionRewroteSegment,
        Sometimes::FillerSplitForRead,
        Sometimes::FileHandleReopened,
        Sometimes::FileSyncedToClose,
        Sometimes::SyncGroupFull,
        Sometimes::CleanCloseOpened,
    ];

    /// The name in the coverage table (snake case).
    pub fn name(self) -> &'static str {
        match self {
            Sometimes::LeaderChangeDuringProduce => "leader_change_during_produce",
            Sometimes::TruncationByEpoch => "truncation_by_epoch",
            Sometimes::IsrShrink => "isr_shrink",
            Sometimes::IsrExpand => "isr_expand",
            Sometimes::DuplicateAnswered => "duplicate_answered",
            Sometimes::DuplicatePending => "duplicate_pending",
            Sometimes::OutOfOrderSequence => "out_of_order_sequence",
            Sometimes::NotEnoughReplicas => "not_enough_replicas",
            Sometimes::TornTailTruncated => "torn_tail_truncated",
            Sometimes::CorruptBatchCut => "corrupt_batch_cut",
            Sometimes::CorruptBatchDetected => "corrupt_batch_detected",
            Sometimes::BrokerFenced => "broker_fenced",
            Sometimes::ControlledShutdown => "controlled_shutdown",
            Sometimes::RaftSnapshotInstalled => "raft_snapshot_installed",
            Sometimes::CompressedBatchProduced => "compressed_batch_produced",
            Sometimes::RetentionDeletedSegments => "retention_deleted_segments",
            Sometimes::FollowerLogReset => "follower_log_reset",
            Sometimes::GroupCoordinatorLoaded => "group_coordinator_loaded",
            Sometimes::GroupGenerationFormed => "group_generation_formed",
            Sometimes::GroupMemberExpired => "group_member_expired",
            Sometimes::GroupStaleCommitRefused => "group_stale_commit_refused",
            Sometimes::PushCreditExhausted => "push_credit_exhausted",
            Sometimes::PushLeaderMoved => "push_leader_moved",
            Sometimes::CompactionRewroteSegment => "compaction_rewrote_segment",
            Sometimes::FillerSplitForRead => "filler_split_for_read",
            Sometimes::FileHandleReopened => "file_handle_reopened",
            Sometimes::FileSyncedToClose => "file_synced_to_close",
            Sometimes::SyncGroupFull => "sync_group_full",
            Sometimes::CleanCloseOpened => "clean_close_opened",
        }
    }
}

/// Counts one occurrence of `state` (simulation build only; nothing otherwise).
#[inline]
pub fn hit(state: Sometimes) {
    #[cfg(madsim)]
    sim::HITS.with(|hits| hits.borrow_mut()[state as usize] += 1);
    #[cfg(not(madsim))]
    let _ = state;
}

/// The counts since the last call, on this thread, and resets them (simulation build only).
#[cfg(madsim)]
pub fn take() -> Vec<(Sometimes, u64)> {
    let counts = sim::HITS.with(|hits| std::mem::take(&mut *hits.borrow_mut()));
    Sometimes::ALL.iter().map(|&state| (state, counts[state as usize])).collect()
}

#[cfg(madsim)]
mod sim {
    use std::cell::RefCell;

    thread_local! {
        pub(super) static HITS: RefCell<[u64; super::Sometimes::ALL.len()]> =
            const { RefCell::new([0; super::Sometimes::ALL.len()]) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_is_listed_once_in_discriminant_order() {
        for (index, state) in Sometimes::ALL.iter().enumerate() {
            assert_eq!(*state as usize, index, "{state:?}");
        }
        let names: std::collections::BTreeSet<&str> = Sometimes::ALL.iter().map(|state| state.name()).collect();
        assert_eq!(names.len(), Sometimes::ALL.len());
    }
}
