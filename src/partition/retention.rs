//! Which of a partition replica's segments retention deletes (ADR 0019): pure, table-tested.
//!
//! Kafka's `delete` cleanup policy: whole segments go from the start of the log, never the active
//! (last) one, never one holding anything at or above the high watermark (uncommitted data is not
//! retention's to delete), and only as a prefix (the log start is one offset; a segment kept stops
//! the scan). A segment goes when any rule says so:
//! - time: its newest record's timestamp is more than `retention_ms` before now (Kafka's
//!   `largestTimestamp`; a record stamped in the future keeps its segment longer, one stamped in the
//!   past lets it go sooner: CreateTime, as Kafka has it);
//! - size: the log without it is still at least `retention_bytes` (so the log never shrinks below
//!   the limit by deletion);
//! - leader's log start: a follower drops what its leader already deleted (a segment that ends at or
//!   below the leader's log start), so the log start moves forward on every replica.

use crate::log::SegmentSummary;
use crate::types::{Offset, TimestampMs};

/// A topic's retention (from its `LogSettings`): -1 disables a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub retention_ms: i64,
    pub retention_bytes: i64,
}

impl Retention {
    /// Keep everything.
    pub const KEEP_ALL: Retention = Retention { retention_ms: -1, retention_bytes: -1 };
}

impl Default for Retention {
    fn default() -> Retention {
        Retention::KEEP_ALL
    }
}

/// A topic's log settings as a partition replica applies them (from the metadata's `LogSettings`).
/// The default (keep everything, no compaction, tombstones kept 0 ms) is for tests; a real replica
/// always gets its topic's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogPolicy {
    pub retention: Retention,
    /// The topic's segment size; `None`: the broker's `segment_bytes_max`.
    pub segment_bytes_max: Option<u64>,
    /// The topic's cleanup policy is `compact`: sealed segments keep the latest record of each key.
    pub compact: bool,
    /// How long compaction keeps a tombstone (a record with a null value) after it was written, in
    /// ms (Kafka's `delete.retention.ms`); at least 0. Meaningful only when `compact`.
    pub delete_retention_ms: i64,
}

/// What else a decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionView {
    pub now_ms: TimestampMs,
    pub high_watermark: Offset,
    /// A follower's leader's log start, as its latest fetch response gave it.
    pub leader_log_start: Option<Offset>,
}

/// The new log start (the base of the first segment kept), when retention deletes anything.
/// `segments` as [`crate::log::PartitionLog::segment_summaries`] gives them: in base-offset order,
/// the last the active one.
pub fn new_log_start(segments: &[SegmentSummary], retention: Retention, view: RetentionView) -> Option<Offset> {
    let (active, sealed) = segments.split_last()?;
    let mut size_after: u64 = segments.iter().map(|segment| segment.size_bytes).sum();
    let mut start = None;
    for segment in sealed {
        if segment.next_offset > view.high_watermark {
            break;
        }
        let expired = retention.retention_ms >= 0
            && segment.max_timestamp_ms < view.now_ms.saturating_sub(retention.retention_ms);
        let over_size = retention.retention_bytes >= 0
            && size_after.saturating_sub(segment.size_bytes) >= retention.retention_bytes as u64;
        let below_leader = view.leader_log_start.is_some_and(|leader_start| segment.next_offset <= leader_start);
        if !(expired || over_size || below_leader) {
            break;
        }
        size_after -= segment.size_bytes;
        start = Some(segment.next_offset);
    }
    debug_assert!(start.is_none_or(|start| start <= active.base_offset));
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Segments of 100 bytes each, 10 offsets each, the i-th with newest timestamp `1000 * (i + 1)`;
    /// the last is the active one.
    fn segments(count: i64) -> Vec<SegmentSummary> {
        (0..count)
            .map(|i| SegmentSummary {
                base_offset: Offset(i * 10),
                next_offset: Offset(i * 10 + 10),
                size_bytes: 100,
                max_timestamp_ms: 1_000 * (i + 1),
                active: i == count - 1,
            })
            .collect()
    }

    fn view(now_ms: i64, high_watermark: i64, leader_log_start: Option<i64>) -> RetentionView {
        RetentionView { now_ms, high_watermark: Offset(high_watermark), leader_log_start: leader_log_start.map(Offset) }
    }

    #[test]
    fn the_rules_as_a_table() {
        let keep_all = Retention::KEEP_ALL;
        let time = |ms| Retention { retention_ms: ms, retention_bytes: -1 };
        let size = |bytes| Retention { retention_ms: -1, retention_bytes: bytes };
        #[rustfmt::skip]
        let cases: &[(&str, i64, Retention, RetentionView, Option<i64>)] = &[
            ("keep all keeps all", 5, keep_all, view(i64::MAX, 50, None), None),
            ("no segments", 0, time(1), view(10_000, 0, None), None),
            ("only the active segment is never deleted", 1, time(1), view(10_000, 10, None), None),
            ("time: segments whose newest record is older than now - retention", 5, time(2_500), view(5_000, 50, None), Some(20)),
            ("time: exactly at the limit is kept", 5, time(3_000), view(5_000, 50, None), Some(10)),
            ("time: everything old, the active segment stays", 5, time(1), view(1_000_000, 50, None), Some(40)),
            ("size: delete while the rest is still at least the limit", 5, size(250), view(0, 50, None), Some(20)),
            ("size: a limit above the log deletes nothing", 5, size(10_000), view(0, 50, None), None),
            ("size: a limit of 1 keeps the active segment", 5, size(1), view(0, 50, None), Some(40)),
            ("the high watermark bounds every rule", 5, time(1), view(1_000_000, 25, None), Some(20)),
            ("nothing committed, nothing deleted", 5, size(1), view(0, 0, None), None),
            ("a follower drops what its leader deleted", 5, keep_all, view(0, 50, Some(30)), Some(30)),
            ("the leader's start inside a segment keeps that segment", 5, keep_all, view(0, 50, Some(25)), Some(20)),
            ("the leader's start above the HW: the HW still bounds", 5, keep_all, view(0, 15, Some(40)), Some(10)),
        ];
        for (name, count, retention, view, expected) in cases {
            assert_eq!(new_log_start(&segments(*count), *retention, *view), expected.map(Offset), "{name}");
        }
    }

    /// A kept segment stops the scan: an old segment after a young one (a producer's clock jumped
    /// back) is not deleted out of order.
    #[test]
    fn deletion_is_a_prefix() {
        let mut segments = segments(4);
        segments[0].max_timestamp_ms = 100_000;
        let retention = Retention { retention_ms: 10_000, retention_bytes: -1 };
        assert_eq!(new_log_start(&segments, retention, view(50_000, 40, None)), None);
        segments[0].max_timestamp_ms = 1_000;
        assert_eq!(new_log_start(&segments, retention, view(50_000, 40, None)), Some(Offset(30)));
    }
}
