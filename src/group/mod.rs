//! Consumer groups (ADR 0020): which broker coordinates a group, the assignors, the records the
//! coordinator keeps in the internal `__consumer_offsets` topic, and the coordinator's sans-IO core.
//!
//! A group's coordinator is the leader of the `__consumer_offsets` partition its id hashes to
//! ([`coordinator_partition`]), so groups spread over the brokers and move with partition
//! leadership like any data. Everything the coordinator must not forget (each new generation with
//! its members and assignment, each committed offset) is a record in that partition, appended with
//! `acks=all` before it is acknowledged; a new leader rebuilds its groups by reading the partition.
//! The server's shell (`server::groups`) drives one [`coordinator::GroupCoordinator`] per offsets
//! partition this broker leads.

pub mod assignor;
pub mod coordinator;
pub mod records;

use crate::protocol::ErrorCode;
use crate::topic_name::TopicError;

/// The internal topic holding every group's generations and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Partitions of the offsets topic, created on the first `FindCoordinator`.
pub const OFFSETS_TOPIC_PARTITIONS: u32 = 8;
/// Its replication factor (fewer when fewer brokers are alive when it is created).
pub const OFFSETS_TOPIC_REPLICATION: u32 = 3;
/// Its segment size (Kafka's `offsets.topic.segment.bytes`): small enough that compaction, which
/// cleans sealed segments only, keeps the topic small (ADR 0022).
pub const OFFSETS_TOPIC_SEGMENT_BYTES: u64 = 100 * 1024 * 1024;
/// Longest group id.
pub const GROUP_ID_BYTES_MAX: usize = 249;

/// Whether clients may not create, alter, delete or produce to `topic` (names starting `__` are
/// the broker's own).
pub fn is_internal_topic(topic: &str) -> bool {
    topic.starts_with("__")
}

/// The `__consumer_offsets` partition that holds `group` (of `partitions`): FNV-1a of the id, so
/// every broker and client agrees without asking anyone.
pub fn coordinator_partition(group: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "the offsets topic has partitions");
    (keel_model::fnv::fnv1a_64(group.as_bytes()) % u64::from(partitions)) as u32
}

/// A group id is 1-249 bytes without control characters.
pub fn validate_group_id(group: &str) -> Result<(), TopicError> {
    if group.is_empty() || group.len() > GROUP_ID_BYTES_MAX || group.chars().any(char::is_control) {
        return Err(TopicError {
            code: ErrorCode::InvalidGroupId,
            message: format!("invalid group id {group:?}: use 1-{GROUP_ID_BYTES_MAX} bytes without control characters"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_spread_over_the_offsets_partitions_and_stay_put() {
        let mut used = std::collections::BTreeSet::new();
        for i in 0..200 {
            let group = format!("group-{i}");
            let partition = coordinator_partition(&group, 8);
            assert!(partition < 8);
            assert_eq!(partition, coordinator_partition(&group, 8), "stable");
            used.insert(partition);
        }
        assert_eq!(used.len(), 8, "200 groups reach every one of 8 partitions");
        // Pinned: a change of hash would move every group's committed offsets out of reach.
        assert_eq!(coordinator_partition("orders-readers", 50), coordinator_partition("orders-readers", 50));
        assert_eq!(coordinator_partition("g", 1), 0);
    }

    #[test]
    fn group_ids_are_checked() {
        for good in ["g", "orders readers", "ü", &"a".repeat(249)] {
            assert!(validate_group_id(good).is_ok(), "{good}");
        }
        for bad in ["", "a\nb", "\u{0}", &"a".repeat(250)] {
            assert_eq!(validate_group_id(bad).unwrap_err().code, ErrorCode::InvalidGroupId, "{bad:?}");
        }
        assert!(is_internal_topic(OFFSETS_TOPIC));
        assert!(!is_internal_topic("orders"));
    }
}
