//! Topic names and the error type of topic administration (pure: the metadata state machine and the
//! server both use it).
//!
//! Which topics exist, and where their partitions live, is cluster metadata: it is decided by the
//! metadata Raft group (`meta::state`) and followed by `server::assignments`.

use crate::protocol::ErrorCode;

/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TopicError {
    pub code: ErrorCode,
    pub message: String,
}

/// Kafka's rule: 1-249 characters from `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    let valid_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX || !valid_chars || name == "." || name == ".." {
        return Err(TopicError {
            code: ErrorCode::InvalidTopicName,
            message: format!(
                "invalid topic name {name:?}: use 1-{TOPIC_NAME_BYTES_MAX} characters from [a-zA-Z0-9._-]"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for good in ["a", "orders", "orders.v2", "x_y-z", &"a".repeat(249)] {
            assert!(validate_topic_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"a".repeat(250), "../etc", "a@1"] {
            assert_eq!(validate_topic_name(bad).unwrap_err().code, ErrorCode::InvalidTopicName, "{bad}");
        }
    }
}
