//! Topic names and topic-admin errors, re-exported where the server has always found them.

pub use crate::topic_name::{validate_topic_name, TopicError, TOPIC_NAME_BYTES_MAX};
