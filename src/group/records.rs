//! The records a coordinator keeps in `__consumer_offsets` (pure codec; ADR 0020).
//!
//! Each is one Kafka record: the key is a kind byte and a prost message, the value a format byte
//! and a prost message. The batch around them carries the CRC, as every batch does. Keys are what
//! compaction will keep the latest of: one per committed partition of a group, one per group.
//! - `Offset` (kind 0): a group's committed offset of one partition (`reset`: an explicit
//!   `reset-offsets`, which may move it back; a commit never does).
//! - `Generation` (kind 1): a group's generation as it was formed: its members, their
//!   subscriptions and session timeouts, the assignor and each member's assignment. Written before
//!   any member hears of the generation, so a generation number is never handed out twice, across
//!   coordinators included.
//! - `Marker` (kind 2): what a new coordinator appends (and waits to see committed) before it reads
//!   the partition, so everything an earlier coordinator acknowledged is below it.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::batch::{Record, StoredRecord};
use crate::group::assignor::{Assignor, TopicPartition};

/// The value format this code writes and reads.
const VALUE_FORMAT: u8 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRecord {
    Offset { group: String, partition: TopicPartition, offset: i64, reset: bool },
    Generation { group: String, generation: i32, assignor: Assignor, members: Vec<MemberRecord> },
    Marker { leader_epoch: i32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: String,
    pub client_id: String,
    pub topics: Vec<String>,
    pub session_timeout_ms: u32,
    pub assignment: Vec<TopicPartition>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("offsets record without a key or value")]
    Missing,
    #[error("unknown offsets record kind {0}")]
    UnknownKind(u8),
    #[error("unknown offsets record value format {0}")]
    UnknownFormat(u8),
    #[error("unknown assignor {0:?} in a generation record")]
    UnknownAssignor(String),
    #[error("malformed offsets record: {0}")]
    Decode(#[from] prost::DecodeError),
}

#[derive(Clone, PartialEq, Message)]
struct OffsetKey {
    #[prost(string, tag = "1")]
    group: String,
    #[prost(string, tag = "2")]
    topic: String,
    #[prost(uint32, tag = "3")]
    partition: u32,
}

#[derive(Clone, PartialEq, Message)]
struct OffsetValue {
    #[prost(int64, tag = "1")]
    offset: i64,
    #[prost(bool, tag = "2")]
    reset: bool,
}

#[derive(Clone, PartialEq, Message)]
struct GroupKey {
    #[prost(string, tag = "1")]
    group: String,
}

#[derive(Clone, PartialEq, Message)]
struct AssignedPartition {
    #[prost(string, tag = "1")]
    topic: String,
    #[prost(uint32, tag = "2")]
    partition: u32,
}

#[derive(Clone, PartialEq, Message)]
struct MemberValue {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    client_id: String,
    #[prost(string, repeated, tag = "3")]
    topics: Vec<String>,
    #[prost(uint32, tag = "4")]
    session_timeout_ms: u32,
    #[prost(message, repeated, tag = "5")]
    assignment: Vec<AssignedPartition>,
}

#[derive(Clone, PartialEq, Message)]
struct GenerationValue {
    #[prost(int32, tag = "1")]
    generation: i32,
    #[prost(string, tag = "2")]
    assignor: String,
    #[prost(message, repeated, tag = "3")]
    members: Vec<MemberValue>,
}

#[derive(Clone, PartialEq, Message)]
struct MarkerValue {
    #[prost(int32, tag = "1")]
    leader_epoch: i32,
}

fn tagged(tag: u8, message: &impl Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(1 + message.encoded_len());
    buf.put_u8(tag);
    message.encode(&mut buf).expect("BytesMut grows");
    buf.freeze()
}

impl GroupRecord {
    /// The Kafka record this is stored as.
    pub fn to_record(&self) -> Record {
        let (key, value) = match self {
            GroupRecord::Offset { group, partition, offset, reset } => (
                tagged(0, &OffsetKey { group: group.clone(), topic: partition.0.clone(), partition: partition.1 }),
                tagged(VALUE_FORMAT, &OffsetValue { offset: *offset, reset: *reset }),
            ),
            GroupRecord::Generation { group, generation, assignor, members } => {
                let members = members.iter().map(MemberValue::from).collect();
                let value = GenerationValue { generation: *generation, assignor: assignor.name().to_owned(), members };
                (tagged(1, &GroupKey { group: group.clone() }), tagged(VALUE_FORMAT, &value))
            }
            GroupRecord::Marker { leader_epoch } => {
                (Bytes::from_static(&[2]), tagged(VALUE_FORMAT, &MarkerValue { leader_epoch: *leader_epoch }))
            }
        };
        Record { key: Some(key), value: Some(value), ..Record::default() }
    }

    /// Decodes a stored record. Untrusted in the sense that a disk or a bug could hand anything:
    /// errors, never panics.
    pub fn from_record(record: &StoredRecord) -> Result<GroupRecord, RecordError> {
        let (Some(key), Some(value)) = (&record.key, &record.value) else { return Err(RecordError::Missing) };
        let (Some(&kind), Some(&format)) = (key.first(), value.first()) else { return Err(RecordError::Missing) };
        if format != VALUE_FORMAT {
            return Err(RecordError::UnknownFormat(format));
        }
        let (key, value) = (&key[1..], &value[1..]);
        match kind {
            0 => {
                let key = OffsetKey::decode(key)?;
                let value = OffsetValue::decode(value)?;
                let partition = (key.topic, key.partition);
                Ok(GroupRecord::Offset { group: key.group, partition, offset: value.offset, reset: value.reset })
            }
            1 => {
                let key = GroupKey::decode(key)?;
                let value = GenerationValue::decode(value)?;
                let assignor = Assignor::parse(&value.assignor)
                    .ok_or_else(|| RecordError::UnknownAssignor(value.assignor.clone()))?;
                let members = value.members.into_iter().map(MemberRecord::from).collect();
                Ok(GroupRecord::Generation { group: key.group, generation: value.generation, assignor, members })
            }
            2 => Ok(GroupRecord::Marker { leader_epoch: MarkerValue::decode(value)?.leader_epoch }),
            other => Err(RecordError::UnknownKind(other)),
        }
    }
}

impl From<&MemberRecord> for MemberValue {
    fn from(member: &MemberRecord) -> MemberValue {
        MemberValue {
            id: member.id.clone(),
            client_id: member.client_id.clone(),
            topics: member.topics.clone(),
            session_timeout_ms: member.session_timeout_ms,
            assignment: member
                .assignment
                .iter()
                .map(|(topic, partition)| AssignedPartition { topic: topic.clone(), partition: *partition })
                .collect(),
        }
    }
}

impl From<MemberValue> for MemberRecord {
    fn from(member: MemberValue) -> MemberRecord {
        MemberRecord {
            id: member.id,
            client_id: member.client_id,
            topics: member.topics,
            session_timeout_ms: member.session_timeout_ms,
            assignment: member.assignment.into_iter().map(|p| (p.topic, p.partition)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Offset;

    fn stored(record: Record) -> StoredRecord {
        StoredRecord { offset: Offset(0), timestamp_ms: 0, key: record.key, value: record.value, headers: Vec::new() }
    }

    #[test]
    fn records_round_trip_through_a_batch() {
        let records = vec![
            GroupRecord::Offset { group: "g".into(), partition: ("t".into(), 3), offset: 42, reset: false },
            GroupRecord::Offset { group: "g".into(), partition: ("t".into(), 0), offset: 0, reset: true },
            GroupRecord::Generation {
                group: "g".into(),
                generation: 7,
                assignor: Assignor::RoundRobin,
                members: vec![MemberRecord {
                    id: "c-1-0".into(),
                    client_id: "c".into(),
                    topics: vec!["t".into()],
                    session_timeout_ms: 10_000,
                    assignment: vec![("t".into(), 0), ("t".into(), 3)],
                }],
            },
            GroupRecord::Generation { group: "g".into(), generation: 8, assignor: Assignor::Range, members: vec![] },
            GroupRecord::Marker { leader_epoch: 5 },
        ];
        let encoded: Vec<Record> = records.iter().map(GroupRecord::to_record).collect();
        let batch =
            crate::batch::Batch::parse(crate::batch::encode_batch(&encoded, 1, crate::batch::ProducerFields::NONE))
                .expect("batch");
        let decoded: Vec<GroupRecord> = batch
            .records()
            .map(|record| GroupRecord::from_record(&record.expect("record")).expect("decodes"))
            .collect();
        assert_eq!(decoded, records);
    }

    #[test]
    fn malformed_records_are_errors() {
        let good =
            GroupRecord::Offset { group: "g".into(), partition: ("t".into(), 1), offset: 9, reset: false }.to_record();
        let with = |key: Option<&'static [u8]>, value: Option<&'static [u8]>| {
            GroupRecord::from_record(&stored(Record {
                key: key.map(Bytes::from_static),
                value: value.map(Bytes::from_static),
                ..Record::default()
            }))
        };
        assert_eq!(with(None, Some(&[0])), Err(RecordError::Missing));
        assert_eq!(with(Some(&[]), Some(&[0])), Err(RecordError::Missing));
        assert_eq!(with(Some(&[9]), Some(&[0])), Err(RecordError::UnknownKind(9)));
        assert_eq!(with(Some(&[0]), Some(&[1])), Err(RecordError::UnknownFormat(1)));
        assert!(matches!(with(Some(&[0, 0x0a, 0x05]), Some(&[0])), Err(RecordError::Decode(_))));
        // Every truncation of a good key or value is an error or some record, never a panic.
        let (key, value) = (good.key.unwrap(), good.value.unwrap());
        for cut in 0..key.len() {
            let record = Record { key: Some(key.slice(..cut)), value: Some(value.clone()), ..Record::default() };
            let _ = GroupRecord::from_record(&stored(record));
        }
        let bad_assignor = GenerationValue { generation: 1, assignor: "sticky".into(), members: vec![] };
        let record = Record {
            key: Some(tagged(1, &GroupKey { group: "g".into() })),
            value: Some(tagged(VALUE_FORMAT, &bad_assignor)),
            ..Record::default()
        };
        assert_eq!(GroupRecord::from_record(&stored(record)), Err(RecordError::UnknownAssignor("sticky".into())));
    }
}
