//! bolero targets over every decoder of untrusted bytes: frames, record batches (and the compressed
//! records inside them, for every codec), and a peer's raft messages (decoded and checked before raft-rs sees them).
//!
//! Under `cargo test` bolero runs each target on random inputs; `cargo bolero test <name>` runs
//! the same target under a coverage-guided fuzzer. The property is always the same: decoding
//! arbitrary bytes returns a value or an error, never panics, and valid values round-trip.

use bolero::check;
use bytes::Bytes;
use keel::batch::{encode_batch, encode_batch_compressed, Batch, ProducerFields, Record, BATCH_HEADER_BYTES};
use keel::client::decode_records;
use keel::compression::Compression;
use keel::protocol::{Body, Frame, MetadataRequest};
use keel::types::{LeaderEpoch, NodeId, Offset, ProducerEpoch, ProducerId, Sequence};

/// The broker's allocator: the Kafka decoder's over-sized reservations must not abort (see
/// `keel::reserving_alloc`).
#[global_allocator]
static ALLOC: keel::reserving_alloc::ReservingAlloc = keel::reserving_alloc::ReservingAlloc;

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
            // A batch that validates has records that decode, unless they are compressed: those are
            // checked only by `check_records` (on produce), and `records` agrees with it.
            let decodes = batch.records().all(|record| record.is_ok());
            assert!(decodes || batch.compression() != Compression::None);
            assert_eq!(batch.check_records().is_ok(), decodes);
        }
        let _ = decode_records(Bytes::copy_from_slice(bytes), Offset(0));
    });
}

/// Arbitrary bytes as the records section of a batch whose header and CRC are right, under every
/// codec: what a producer that lies inside its compressed stream sends. The leader's check and the
/// consumer's decoding return an error or records, never panic, and agree.
#[test]
fn compressed_records_decoding_never_panics() {
    let header = encode_batch(&[Record::value("v")], 0, ProducerFields::NONE).slice(..BATCH_HEADER_BYTES);
    check!().with_type::<(u8, Vec<u8>)>().for_each(|(codec, section)| {
        let codec = Compression::ALL[*codec as usize % Compression::ALL.len()];
        let mut bytes = header.to_vec();
        bytes.extend(section);
        let batch_length = (bytes.len() - 12) as i32;
        bytes[8..12].copy_from_slice(&batch_length.to_be_bytes());
        bytes[21..23].copy_from_slice(&codec.id().to_be_bytes());
        let crc = crc32c_of(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        if let Ok(batch) = Batch::parse(Bytes::from(bytes)) {
            let decodes = batch.records().all(|record| record.is_ok());
            assert_eq!(batch.check_records().is_ok(), decodes);
        }
    });
}

/// CRC-32C (Castagnoli), bitwise: the batch checksum, computed independently of the crate's.
fn crc32c_of(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn valid_batches_round_trip() {
    check!().with_type::<(Vec<(Option<Vec<u8>>, Option<Vec<u8>>, Vec<(Vec<u8>, Option<Vec<u8>>)>, Option<i16>)>, i64, i64, i16, i32, u8)>().for_each(
        |(records, base_timestamp, producer_id, producer_epoch, base_sequence, codec)| {
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
            let codec = Compression::ALL[*codec as usize % Compression::ALL.len()];
            let bytes = encode_batch_compressed(&input, base_timestamp, producer, codec);
            let batch = Batch::parse(bytes).expect("an encoded batch validates").stamped(Offset(9), LeaderEpoch(2));
            assert_eq!(batch.compression(), codec);
            batch.check_records().expect("an encoded batch's records check");
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

/// The Kafka listener's decoder (ADR 0026): any bytes give a request or a typed error, and a decoded
/// request's translation to native requests does not panic either. Half the inputs get a header of
/// a served API and version in front, so the crate's body decoders see them.
#[test]
fn kafka_request_decoding_never_panics() {
    use keel::kafka::{decode_request, translate, versions, Request};
    check!().with_type::<(bool, u8, u8, Vec<u8>)>().for_each(|(with_header, api_pick, version_pick, body)| {
        let mut frame = Vec::with_capacity(body.len() + 10);
        if *with_header {
            let (api, min, max) = versions::SERVED[usize::from(*api_pick) % versions::SERVED.len()];
            let version = min + i16::from(*version_pick) % (max - min + 1);
            frame.extend_from_slice(&(api as i16).to_be_bytes());
            frame.extend_from_slice(&version.to_be_bytes());
            frame.extend_from_slice(&7i32.to_be_bytes());
        }
        frame.extend_from_slice(body);
        let Ok(decoded) = decode_request(Bytes::from(frame)) else { return };
        match &decoded.request {
            Request::Produce(request) => drop(translate::produce_requests(request)),
            Request::Fetch(request) => drop(translate::fetch_requests(request, 0)),
            Request::ListOffsets(request) => drop(translate::list_offsets_requests(request)),
            Request::CreateTopics(request) => drop(translate::create_topic_requests(request)),
            Request::DeleteTopics(request) => drop(translate::delete_topic_names(request)),
            Request::JoinGroup(request) => drop(translate::join_group_request(request, &decoded.client_id)),
            Request::OffsetCommit(request) => drop(translate::offset_commit_request(request)),
            Request::FindCoordinator(request) => drop(translate::find_coordinator_keys(request, decoded.version)),
            Request::Metadata(request) => drop(translate::metadata_request(request)),
            _ => {}
        }
    });
    check!().for_each(|bytes: &[u8]| {
        let _ = keel::kafka::translate::subscription_topics(&Bytes::copy_from_slice(bytes));
    });
    // Any API key and a small version in front of any body: an API Keel does not serve is answered
    // from the header (and, for the admin APIs, the body it parses) or refused, never a panic.
    check!().with_type::<(u8, u8, Vec<u8>)>().for_each(|(api_key, version, body)| {
        let mut frame = Vec::with_capacity(body.len() + 8);
        frame.extend_from_slice(&i16::from(*api_key).to_be_bytes());
        frame.extend_from_slice(&i16::from(*version % 16).to_be_bytes());
        frame.extend_from_slice(&7i32.to_be_bytes());
        frame.extend_from_slice(body);
        let frame = Bytes::from(frame);
        if let Err(keel::kafka::FrameError::UnservedApi { api, version, correlation_id }) =
            keel::kafka::decode_request(frame.clone())
        {
            let _ = keel::kafka::unserved::answer(api, version, correlation_id, frame);
        }
    });
}

/// The input bolero found first: a consumer subscription of 8 bytes that declares a billion-topic
/// array. The crate asks for tens of gigabytes at once; under the broker's allocator that is a
/// reservation, and the decode fails instead of aborting the process.
#[test]
fn a_hostile_array_length_is_an_error_not_an_abort() {
    let mut subscription = vec![0u8, 1]; // version 1
    subscription.extend_from_slice(&0x7fff_fff0i32.to_be_bytes()); // the topic array's length
    subscription.extend_from_slice(&[0, 1, b'a']);
    assert_eq!(keel::kafka::translate::subscription_topics(&Bytes::from(subscription)), None);
    // Metadata v0 whose topic array claims 2^31 - 16 entries, in a 13-byte frame.
    let mut frame = vec![0, 3, 0, 0, 0, 0, 0, 9, 0xff, 0xff];
    frame.extend_from_slice(&0x7fff_fff0i32.to_be_bytes());
    assert!(keel::kafka::decode_request(Bytes::from(frame)).is_err());
}
