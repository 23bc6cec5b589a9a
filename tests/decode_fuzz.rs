//! bolero targets over every decoder of untrusted bytes: frames, record batches, and a peer's raft
//! messages (decoded and checked before raft-rs sees them).
//!
//! Under `cargo test` bolero runs each target on random inputs; `cargo bolero test <name>` runs
//! the same target under a coverage-guided fuzzer. The property is always the same: decoding
//! arbitrary bytes returns a value or an error, never panics, and valid values round-trip.

use bolero::check;
use bytes::Bytes;
use keel::batch::{encode_batch, Batch, ProducerFields, Record};
use keel::client::decode_records;
use keel::protocol::{Body, Frame, MetadataRequest};
use keel::types::{LeaderEpoch, NodeId, Offset, ProducerEpoch, ProducerId, Sequence};

#[test]
fn frame_decoding_never_panics() {
    check!().for_each(|bytes: &[u8]| {
        if let Ok(frame) = Frame::decode_bytes(Bytes::copy_from_slice(bytes)) {
            // Whatever decoded must re-encode and decode to itself.
            let again = Frame::decode_bytes(frame.encode_to_bytes()).expect("re-encoded frame decodes");
            assert_eq!(again, frame);
        }
    });
}

#[test]
fn peer_raft_message_checks_never_panic() {
    use protobuf::Message as _;
    check!().for_each(|bytes: &[u8]| {
        if let Ok(message) = raft::eraftpb::Message::parse_from_bytes(bytes) {
            let _ = keel::meta::node::check_peer_message(&message, &[NodeId(1), NodeId(2), NodeId(3)]);
        }
    });
}

#[test]
fn batch_decoding_never_panics() {
    check!().for_each(|bytes: &[u8]| {
        if let Ok(batch) = Batch::parse(Bytes::copy_from_slice(bytes)) {
            // A batch that validates has records that decode.
            assert!(batch.records().all(|record| record.is_ok()));
        }
        let _ = decode_records(Bytes::copy_from_slice(bytes), Offset(0));
    });
}

#[test]
fn valid_batches_round_trip() {
    check!().with_type::<(Vec<(Option<Vec<u8>>, Option<Vec<u8>>, Vec<(Vec<u8>, Option<Vec<u8>>)>, Option<i16>)>, i64, i64, i16, i32)>().for_each(
        |(records, base_timestamp, producer_id, producer_epoch, base_sequence)| {
            if records.is_empty() || records.len() > 64 {
                return;
            }
            let base_timestamp = base_timestamp.rem_euclid(1 << 40);
            let input: Vec<Record> = records
                .iter()
                .map(|(key, value, headers, delta)| Record {
                    key: key.clone().map(Bytes::from),
                    value: value.clone().map(Bytes::from),
                    headers: headers.iter().map(|(k, v)| (Bytes::from(k.clone()), v.clone().map(Bytes::from))).collect(),
                    timestamp_ms: delta.map(|delta| base_timestamp + delta as i64),
                })
                .collect();
            let producer = ProducerFields {
                producer_id: ProducerId(*producer_id),
                producer_epoch: ProducerEpoch(*producer_epoch),
                base_sequence: Sequence(*base_sequence),
            };
            let bytes = encode_batch(&input, base_timestamp, producer);
            let batch = Batch::parse(bytes).expect("an encoded batch validates").stamped(Offset(9), LeaderEpoch(2));
            assert_eq!(batch.producer(), producer);
            assert_eq!(batch.record_count() as usize, input.len());
            let output: Vec<_> = Batch::parse(batch.into_bytes()).unwrap().records().map(Result::unwrap).collect();
            for (index, (record, stored)) in input.iter().zip(&output).enumerate() {
                assert_eq!(stored.offset, Offset(9 + index as i64));
                assert_eq!(stored.key, record.key);
                assert_eq!(stored.value, record.value);
                assert_eq!(stored.headers, record.headers);
                assert_eq!(stored.timestamp_ms, record.timestamp_ms.unwrap_or(base_timestamp));
            }
        },
    );
}

#[test]
fn a_frame_carrying_a_request_round_trips() {
    let frame = Frame::new(5, Body::MetadataRequest(MetadataRequest { topics: vec!["a".into(), "b".into()] }));
    assert_eq!(Frame::decode_bytes(frame.encode_to_bytes()).unwrap(), frame);
}
