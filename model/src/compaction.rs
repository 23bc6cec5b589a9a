//! A reference model of log compaction (Kafka's `compact` cleanup policy, ADR 0022; the real pass is
//! `keel::log::compaction`): which records of a partition survive one pass.
//!
//! In: every record of the log (offset, key, value, timestamp), where the cleaned range ends, the
//! time, and how long a tombstone is kept. Out: the records a correct pass leaves, in the order
//! given.
//!
//! # How it is written
//! Deliberately naive, so it can be checked by reading: each record is judged on its own by
//! scanning every other record, `O(n²)`, with no key map, no segments and no batches. The real pass
//! maps the latest offset of each key once per segment range and rewrites batch by batch; the two
//! must agree. The model knows nothing of the real code's types (this crate does not depend on
//! `keel`): plain integers and byte vectors.
//!
//! # The rules
//! Only records below `cleaned_end` (the end of the last segment the pass cleans, which is where the
//! cleaned range ends; it starts at the log start) can go. Below it:
//! - A record without a key is kept (a compacted topic refuses them on produce; older ones stay).
//! - A record with a key is removed when a record with the same key and a higher offset is also
//!   below `cleaned_end`: it is *superseded*. A later record of the key at or past `cleaned_end`
//!   does not count: it is not in the pass's key map.
//! - A record with a key that is not superseded and is a *tombstone* (no value) is removed when it
//!   is older than the retention: `timestamp_ms < now_ms - delete_retention_ms` (saturating, so a
//!   huge retention keeps every tombstone). Exactly at the limit it stays.
//! - Everything else stays, unchanged: the same offset, key, value and timestamp. Offsets are
//!   never renumbered; what goes leaves a hole in the offsets, not a shift.
//!
//! What the model leaves out on purpose: batches (which records shared one, filler batches, the
//! idempotent producers' last batches that stay emptied) and headers. A harness checks those
//! against the log's own batches.

/// One record of the log, as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRecord {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone (when the record has a key).
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: i64,
}

/// The records one compaction pass leaves of `records` (module doc: the rules), in the order given.
/// `cleaned_end` is the end of the last cleaned segment (the log start when no segment is cleaned,
/// and then nothing goes).
pub fn compact(records: &[ModelRecord], cleaned_end: i64, now_ms: i64, delete_retention_ms: i64) -> Vec<ModelRecord> {
    let tombstone_cutoff_ms = now_ms.saturating_sub(delete_retention_ms);
    let is_kept = |record: &ModelRecord| -> bool {
        if record.offset >= cleaned_end {
            return true;
        }
        let Some(key) = &record.key else { return true };
        let superseded = records
            .iter()
            .any(|other| other.offset > record.offset && other.offset < cleaned_end && other.key.as_ref() == Some(key));
        if superseded {
            return false;
        }
        let expired_tombstone = record.value.is_none() && record.timestamp_ms < tombstone_cutoff_ms;
        !expired_tombstone
    };
    records.iter().filter(|record| is_kept(record)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, key: Option<&str>, value: Option<&str>, timestamp_ms: i64) -> ModelRecord {
        ModelRecord {
            offset,
            key: key.map(|key| key.as_bytes().to_vec()),
            value: value.map(|value| value.as_bytes().to_vec()),
            timestamp_ms,
        }
    }

    fn offsets(records: &[ModelRecord]) -> Vec<i64> {
        records.iter().map(|record| record.offset).collect()
    }

    #[test]
    fn only_the_latest_record_of_each_key_stays() {
        let log = [
            record(0, Some("a"), Some("1"), 10),
            record(1, Some("b"), Some("1"), 11),
            record(2, Some("a"), Some("2"), 12),
            record(3, Some("c"), Some("1"), 13),
            record(4, Some("a"), Some("3"), 14),
        ];
        let kept = compact(&log, 5, 0, 0);
        assert_eq!(offsets(&kept), vec![1, 3, 4]);
        assert_eq!(kept[2], log[4], "a kept record is unchanged");
    }

    #[test]
    fn a_tombstone_goes_once_it_is_older_than_the_retention() {
        let log = [record(0, Some("a"), Some("1"), 100), record(1, Some("a"), None, 500)];
        // The tombstone supersedes the value in every case.
        assert_eq!(offsets(&compact(&log, 2, 1_000, 600)), vec![1], "500 is not below 1000 - 600");
        assert_eq!(offsets(&compact(&log, 2, 1_000, 500)), vec![1], "exactly at the limit it stays");
        assert_eq!(offsets(&compact(&log, 2, 1_000, 499)), Vec::<i64>::new(), "older than the limit: gone");
        assert_eq!(offsets(&compact(&log, 2, 1_000, i64::MAX)), vec![1], "a huge retention does not overflow");
        assert_eq!(offsets(&compact(&log, 2, i64::MIN, 1)), vec![1]);
    }

    #[test]
    fn a_superseded_tombstone_goes_whatever_its_age() {
        let log = [record(0, Some("a"), None, 900), record(1, Some("a"), Some("back"), 10)];
        assert_eq!(offsets(&compact(&log, 2, 1_000, 1_000_000)), vec![1]);
    }

    #[test]
    fn records_without_a_key_stay() {
        let log = [
            record(0, None, Some("1"), 1),
            record(1, None, Some("1"), 1),
            record(2, None, None, 1),
            record(3, Some("a"), None, 1),
        ];
        assert_eq!(offsets(&compact(&log, 4, 1_000, 0)), vec![0, 1, 2], "a null key is no key, even without a value");
    }

    #[test]
    fn nothing_at_or_past_the_cleaned_end_goes_nor_supersedes() {
        let log = [
            record(0, Some("a"), Some("1"), 1),
            record(1, Some("b"), None, 1),
            record(2, Some("a"), Some("2"), 1),
            record(3, Some("a"), Some("3"), 1),
            record(4, Some("b"), None, 1),
        ];
        // Cleaned below 2: `a` at 0 is the latest of the range, `b` at 1 an old tombstone.
        assert_eq!(offsets(&compact(&log, 2, 1_000, 0)), vec![0, 2, 3, 4]);
        assert_eq!(offsets(&compact(&log, 4, 1_000, 0)), vec![3, 4]);
        assert_eq!(offsets(&compact(&log, 0, 1_000, 0)), vec![0, 1, 2, 3, 4], "nothing cleaned");
        assert_eq!(offsets(&compact(&log, 5, 1_000, 0)), vec![3]);
    }

    #[test]
    fn a_pass_over_its_own_output_changes_nothing() {
        let log = [
            record(0, Some("a"), Some("1"), 1),
            record(1, Some("b"), None, 1),
            record(2, None, Some("x"), 1),
            record(3, Some("a"), None, 900),
            record(4, Some("c"), Some("1"), 1),
            record(5, Some("c"), Some("2"), 1),
        ];
        let once = compact(&log, 5, 1_000, 200);
        assert_eq!(offsets(&once), vec![2, 3, 4, 5]);
        assert_eq!(compact(&once, 5, 1_000, 200), once);
    }
}
