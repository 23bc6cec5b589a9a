//! Record batches in Kafka's RecordBatch v2 byte layout.
//!
//! A batch is the unit that travels from producer to socket to disk to socket to consumer without
//! being re-encoded. The layout (all integers big-endian) is Kafka's, so a Kafka-protocol listener can
//! later serve these bytes as they are:
//!
//! ```text
//! offset  size  field
//!      0     8  base_offset             assigned by the partition leader
//!      8     4  batch_length            bytes after this field
//!     12     4  partition_leader_epoch  assigned by the partition leader
//!     16     1  magic                   always 2
//!     17     4  crc                     CRC32C of bytes [21, end)
//!     21     2  attributes              bits 0-2: compression codec (Kafka's ids, `compression`)
//!     23     4  last_offset_delta
//!     27     8  base_timestamp
//!     35     8  max_timestamp
//!     43     8  producer_id
//!     51     2  producer_epoch
//!     53     4  base_sequence
//!     57     4  record_count
//!     61     .  records
//! ```
//!
//! Each record is `length varint, attributes i8, timestamp_delta varlong, offset_delta varint,
//! key_length varint, key, value_length varint, value, header_count varint, headers`, with zig-zag
//! varints and -1 meaning null.
//!
//! In a compressed batch (ADR 0018) the records section is one stream of the codec the attributes
//! name; the header stays in the clear. [`Batch::parse`] checks a compressed batch's header and CRC
//! only (the CRC covers the compressed bytes), [`Batch::check_records`] also inflates it and checks
//! every record, and [`Batch::records`] inflates it.
//!
//! The CRC does not cover `base_offset` or `partition_leader_epoch`, so the leader stamps both without
//! recomputing it. Decoding untrusted bytes never panics: every error is a [`BatchError`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::compression::{Compression, CompressionError};
use crate::types::{LeaderEpoch, Offset, ProducerEpoch, ProducerId, Sequence, TimestampMs};

pub const MAGIC_V2: u8 = 2;
/// Size of the fixed batch header, before the first record.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `batch_length` ends: `base_offset` + `batch_length`.
pub const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
/// Largest batch Keel accepts anywhere (producer, disk, fetch). Named so every layer agrees.
pub const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest number of records in one batch.
pub const BATCH_RECORDS_MAX: usize = 1 << 20;

const OFFSET_BASE_OFFSET: usize = 0;
const OFFSET_BATCH_LENGTH: usize = 8;
const OFFSET_LEADER_EPOCH: usize = 12;
const OFFSET_MAGIC: usize = 16;
const OFFSET_CRC: usize = 17;
const OFFSET_ATTRIBUTES: usize = 21;
const OFFSET_LAST_OFFSET_DELTA: usize = 23;
const OFFSET_BASE_TIMESTAMP: usize = 27;
const OFFSET_MAX_TIMESTAMP: usize = 35;
const OFFSET_PRODUCER_ID: usize = 43;
const OFFSET_PRODUCER_EPOCH: usize = 51;
const OFFSET_BASE_SEQUENCE: usize = 53;
const OFFSET_RECORD_COUNT: usize = 57;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("batch length {0} out of range")]
    BadLength(i64),
    #[error("unsupported batch magic {0} (only 2 is supported)")]
    BadMagic(u8),
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unsupported compression codec {0}")]
    UnsupportedCompression(u16),
    #[error("compressed records: {0}")]
    Decompress(#[from] CompressionError),
    #[error("malformed record {index}: {reason}")]
    BadRecord { index: usize, reason: &'static str },
    #[error("record count {declared} does not match the {found} records present")]
    RecordCountMismatch { declared: i32, found: usize },
    #[error("last_offset_delta {declared} does not match record count {count}")]
    OffsetDeltaMismatch { declared: i32, count: i32 },
    #[error("batch has no records")]
    Empty,
}

/// One record, as a producer hands it in or a consumer gets it out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
    /// Absolute timestamp in ms; `None` means "the batch's base timestamp".
    pub timestamp_ms: Option<TimestampMs>,
}

impl Record {
    pub fn value(value: impl Into<Bytes>) -> Record {
        Record { value: Some(value.into()), ..Record::default() }
    }
}

/// Identity of an idempotent producer's batch; all -1 for a plain producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerFields {
    pub producer_id: ProducerId,
    pub producer_epoch: ProducerEpoch,
    pub base_sequence: Sequence,
}

impl ProducerFields {
    pub const NONE: ProducerFields =
        ProducerFields { producer_id: ProducerId(-1), producer_epoch: ProducerEpoch(-1), base_sequence: Sequence(-1) };
}

/// Encodes records into one uncompressed v2 batch with `base_offset = 0` (the leader assigns the
/// real one).
pub fn encode_batch(records: &[Record], base_timestamp_ms: TimestampMs, producer: ProducerFields) -> Bytes {
    encode_batch_compressed(records, base_timestamp_ms, producer, Compression::None)
}

/// Encodes records into one v2 batch whose records section is compressed with `compression`.
pub fn encode_batch_compressed(
    records: &[Record],
    base_timestamp_ms: TimestampMs,
    producer: ProducerFields,
    compression: Compression,
) -> Bytes {
    assert!(!records.is_empty(), "encode_batch: a batch holds at least one record");
    let max_timestamp =
        records.iter().map(|record| record.timestamp_ms.unwrap_or(base_timestamp_ms)).fold(base_timestamp_ms, i64::max);
    let header = Header {
        base_offset: Offset(0),
        leader_epoch: LeaderEpoch(-1),
        compression,
        last_offset_delta: records.len() as i32 - 1,
        base_timestamp_ms,
        max_timestamp_ms: max_timestamp,
        producer,
    };
    let parts = records.iter().enumerate().map(|(index, record)| RecordParts {
        timestamp_delta: record.timestamp_ms.unwrap_or(base_timestamp_ms) - base_timestamp_ms,
        offset_delta: index as i32,
        key: record.key.as_deref(),
        value: record.value.as_deref(),
        headers: &record.headers,
    });
    encode_v2(header, parts)
}

/// The header fields of a batch being encoded.
struct Header {
    base_offset: Offset,
    leader_epoch: LeaderEpoch,
    compression: Compression,
    last_offset_delta: i32,
    base_timestamp_ms: TimestampMs,
    max_timestamp_ms: TimestampMs,
    producer: ProducerFields,
}

/// One record being encoded: its deltas and borrowed fields.
struct RecordParts<'a> {
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: &'a [(Bytes, Option<Bytes>)],
}

impl RecordParts<'_> {
    fn body_len(&self) -> usize {
        let mut len = 1 + varlong_len(self.timestamp_delta) + varint_len(self.offset_delta);
        len += bytes_field_len(self.key) + bytes_field_len(self.value);
        len += varint_len(self.headers.len() as i32);
        for (key, value) in self.headers {
            len += bytes_field_len(Some(key)) + bytes_field_len(value.as_deref());
        }
        len
    }

    fn put(&self, buf: &mut BytesMut) {
        put_varint(buf, self.body_len() as i32);
        buf.put_i8(0);
        put_varlong(buf, self.timestamp_delta);
        put_varint(buf, self.offset_delta);
        put_bytes_field(buf, self.key);
        put_bytes_field(buf, self.value);
        put_varint(buf, self.headers.len() as i32);
        for (key, value) in self.headers {
            put_bytes_field(buf, Some(key));
            put_bytes_field(buf, value.as_deref());
        }
    }
}

/// Encodes a v2 batch: the header, the records (compressed as the header says), the CRC.
fn encode_v2<'a>(header: Header, records: impl Iterator<Item = RecordParts<'a>>) -> Bytes {
    let mut buf = BytesMut::with_capacity(BATCH_HEADER_BYTES + 64);
    buf.put_i64(header.base_offset.0);
    buf.put_i32(0); // batch_length, filled below
    buf.put_i32(header.leader_epoch.0);
    buf.put_u8(MAGIC_V2);
    buf.put_u32(0); // crc, filled below
    buf.put_u16(header.compression.id()); // attributes: the codec, CreateTime
    buf.put_i32(header.last_offset_delta);
    buf.put_i64(header.base_timestamp_ms);
    buf.put_i64(header.max_timestamp_ms);
    buf.put_i64(header.producer.producer_id.0);
    buf.put_i16(header.producer.producer_epoch.0);
    buf.put_i32(header.producer.base_sequence.0);
    buf.put_i32(0); // record_count, filled below
    let mut count = 0i32;
    for record in records {
        record.put(&mut buf);
        count += 1;
    }
    buf[OFFSET_RECORD_COUNT..OFFSET_RECORD_COUNT + 4].copy_from_slice(&count.to_be_bytes());
    if header.compression != Compression::None && count > 0 {
        let compressed = header.compression.compress(&buf[BATCH_HEADER_BYTES..]);
        buf.truncate(BATCH_HEADER_BYTES);
        buf.extend_from_slice(&compressed);
    }
    let batch_length = (buf.len() - BATCH_LENGTH_PREFIX_BYTES) as i32;
    buf[OFFSET_BATCH_LENGTH..OFFSET_BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
    let crc = crc32c::crc32c(&buf[OFFSET_ATTRIBUTES..]);
    buf[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    buf.freeze()
}

/// The total size of the batch that starts at `bytes[0]`, read from its length field, or an error
/// if even the prefix is missing or the length is out of range. Does not check the CRC.
pub fn peek_batch_size(bytes: &[u8]) -> Result<usize, BatchError> {
    if bytes.len() < BATCH_LENGTH_PREFIX_BYTES {
        return Err(BatchError::Truncated { needed: BATCH_LENGTH_PREFIX_BYTES, available: bytes.len() });
    }
    let batch_length = i32::from_be_bytes(bytes[OFFSET_BATCH_LENGTH..OFFSET_BATCH_LENGTH + 4].try_into().unwrap());
    let total = BATCH_LENGTH_PREFIX_BYTES as i64 + batch_length as i64;
    if total < BATCH_HEADER_BYTES as i64 || total > BATCH_BYTES_MAX as i64 {
        return Err(BatchError::BadLength(batch_length as i64));
    }
    Ok(total as usize)
}

/// Where a stored batch sits, read from its header without checking its CRC (the broker's push
/// path counts what it sends; the log validated each batch when it was appended).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSpan {
    /// The batch's size in bytes.
    pub bytes: usize,
    pub base_offset: Offset,
    /// The offset after the batch's last record.
    pub next_offset: Offset,
    pub record_count: u32,
}

/// The span of the batch at the start of `bytes` (which must hold all of it).
pub fn peek_batch_span(bytes: &[u8]) -> Result<BatchSpan, BatchError> {
    let size = peek_batch_size(bytes)?;
    if size > bytes.len() {
        return Err(BatchError::Truncated { needed: size, available: bytes.len() });
    }
    let base_offset = read_i64(bytes, OFFSET_BASE_OFFSET);
    let last_offset_delta = read_i32(bytes, OFFSET_LAST_OFFSET_DELTA);
    let record_count = read_i32(bytes, OFFSET_RECORD_COUNT);
    if last_offset_delta < 0 || record_count < 0 {
        return Err(BatchError::BadLength(size as i64));
    }
    Ok(BatchSpan {
        bytes: size,
        base_offset: Offset(base_offset),
        next_offset: Offset(base_offset.saturating_add(last_offset_delta as i64 + 1)),
        record_count: record_count as u32,
    })
}

/// A validated v2 batch: length, magic, CRC and every record's framing have been checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Batch {
    bytes: Bytes,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("base_offset", &self.base_offset())
            .field("record_count", &self.record_count())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl Batch {
    /// Validates exactly one batch occupying all of `bytes`.
    pub fn parse(bytes: Bytes) -> Result<Batch, BatchError> {
        let size = peek_batch_size(&bytes)?;
        if size != bytes.len() {
            if size > bytes.len() {
                return Err(BatchError::Truncated { needed: size, available: bytes.len() });
            }
            return Err(BatchError::BadLength(bytes.len() as i64 - BATCH_LENGTH_PREFIX_BYTES as i64));
        }
        let batch = Batch { bytes };
        batch.validate()?;
        Ok(batch)
    }

    /// Splits the first batch off a buffer of concatenated batches (as a fetch returns them).
    /// Returns `Ok(None)` at the end of the buffer. A partial batch at the end of a fetch response is
    /// normal in Kafka; Keel never sends one, so it is an error here.
    pub fn split_first(buf: &mut Bytes) -> Result<Option<Batch>, BatchError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let size = peek_batch_size(buf)?;
        if size > buf.len() {
            return Err(BatchError::Truncated { needed: size, available: buf.len() });
        }
        let batch = Batch::parse(buf.split_to(size))?;
        Ok(Some(batch))
    }

    fn validate(&self) -> Result<(), BatchError> {
        let bytes = &self.bytes[..];
        let magic = bytes[OFFSET_MAGIC];
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(magic));
        }
        let stored = self.crc();
        let computed = crc32c::crc32c(&bytes[OFFSET_ATTRIBUTES..]);
        if stored != computed {
            return Err(BatchError::CrcMismatch { stored, computed });
        }
        let compression = Compression::from_id(self.attributes() & 0x7)
            .map_err(|_| BatchError::UnsupportedCompression(self.attributes() & 0x7))?;
        let declared = self.record_count();
        if declared < 0 || declared as usize > BATCH_RECORDS_MAX {
            return Err(BatchError::RecordCountMismatch { declared, found: 0 });
        }
        // A compacted batch (ADR 0022) keeps its offset span with fewer records, or none.
        if self.last_offset_delta() < 0 || self.last_offset_delta() < declared - 1 {
            return Err(BatchError::OffsetDeltaMismatch { declared: self.last_offset_delta(), count: declared });
        }
        if compression == Compression::None {
            self.check_records()?;
        }
        Ok(())
    }

    /// Checks every record inside the batch against its header, inflating a compressed batch.
    /// `parse` already did this for an uncompressed one.
    pub fn check_records(&self) -> Result<(), BatchError> {
        self.records().try_for_each(|record| record.map(drop))
    }

    /// What a leader checks before it appends a producer's batch: at least one record, one offset
    /// per record (only compaction leaves a batch with gaps or no records), every record well
    /// formed (a compressed batch is inflated once here).
    pub fn check_produced(&self) -> Result<(), BatchError> {
        self.check_produced_header()?;
        // Offset deltas strictly increase within 0..=last_offset_delta, so `declared` of them are
        // exactly 0..declared. `parse` checked an uncompressed batch's records already.
        if self.compression() == Compression::None {
            return Ok(());
        }
        self.check_records()
    }

    /// The header half of [`Batch::check_produced`]: at least one record, one offset per record.
    pub fn check_produced_header(&self) -> Result<(), BatchError> {
        let declared = self.record_count();
        if declared == 0 {
            return Err(BatchError::Empty);
        }
        if self.last_offset_delta() != declared - 1 {
            return Err(BatchError::OffsetDeltaMismatch { declared: self.last_offset_delta(), count: declared });
        }
        Ok(())
    }

    /// This batch with only `kept` of its records (compaction, ADR 0022): the same offsets, epoch,
    /// producer fields, timestamps and codec (none when nothing is kept); `kept` must be records of
    /// this batch, in order.
    pub fn with_records(&self, kept: &[StoredRecord]) -> Batch {
        let base = self.base_offset().0;
        let header = Header {
            base_offset: self.base_offset(),
            leader_epoch: self.leader_epoch(),
            compression: if kept.is_empty() { Compression::None } else { self.compression() },
            last_offset_delta: self.last_offset_delta(),
            base_timestamp_ms: self.base_timestamp(),
            max_timestamp_ms: self.max_timestamp(),
            producer: self.producer(),
        };
        let base_timestamp = self.base_timestamp();
        let parts = kept.iter().map(|record| RecordParts {
            timestamp_delta: record.timestamp_ms.saturating_sub(base_timestamp),
            offset_delta: (record.offset.0 - base) as i32,
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            headers: &record.headers,
        });
        Batch { bytes: encode_v2(header, parts) }
    }

    /// A batch without records that covers `base_offset..=last_offset` (compaction's filler for a run
    /// of batches it removed whole, ADR 0022): no producer, no codec.
    pub fn filler(
        base_offset: Offset,
        last_offset: Offset,
        leader_epoch: LeaderEpoch,
        base_timestamp_ms: TimestampMs,
        max_timestamp_ms: TimestampMs,
    ) -> Batch {
        let last_offset_delta = i32::try_from(last_offset.0 - base_offset.0).expect("a filler spans at most i32::MAX");
        assert!(last_offset_delta >= 0, "a filler covers at least one offset");
        let header = Header {
            base_offset,
            leader_epoch,
            compression: Compression::None,
            last_offset_delta,
            base_timestamp_ms,
            max_timestamp_ms,
            producer: ProducerFields::NONE,
        };
        Batch { bytes: encode_v2(header, std::iter::empty()) }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn base_offset(&self) -> Offset {
        Offset(read_i64(&self.bytes, OFFSET_BASE_OFFSET))
    }

    /// The offset of this batch's last record.
    pub fn last_offset(&self) -> Offset {
        Offset(self.base_offset().0 + self.last_offset_delta() as i64)
    }

    /// The offset after this batch.
    pub fn next_offset(&self) -> Offset {
        self.last_offset().next()
    }

    pub fn leader_epoch(&self) -> LeaderEpoch {
        LeaderEpoch(read_i32(&self.bytes, OFFSET_LEADER_EPOCH))
    }

    pub fn crc(&self) -> u32 {
        read_i32(&self.bytes, OFFSET_CRC) as u32
    }

    /// The codec of the records section (`parse` refused unknown ones).
    pub fn compression(&self) -> Compression {
        Compression::from_id(self.attributes() & 0x7).unwrap_or(Compression::None)
    }

    pub fn attributes(&self) -> u16 {
        u16::from_be_bytes([self.bytes[OFFSET_ATTRIBUTES], self.bytes[OFFSET_ATTRIBUTES + 1]])
    }

    pub fn last_offset_delta(&self) -> i32 {
        read_i32(&self.bytes, OFFSET_LAST_OFFSET_DELTA)
    }

    pub fn base_timestamp(&self) -> TimestampMs {
        read_i64(&self.bytes, OFFSET_BASE_TIMESTAMP)
    }

    pub fn max_timestamp(&self) -> TimestampMs {
        read_i64(&self.bytes, OFFSET_MAX_TIMESTAMP)
    }

    pub fn producer(&self) -> ProducerFields {
        ProducerFields {
            producer_id: ProducerId(read_i64(&self.bytes, OFFSET_PRODUCER_ID)),
            producer_epoch: ProducerEpoch(i16::from_be_bytes([
                self.bytes[OFFSET_PRODUCER_EPOCH],
                self.bytes[OFFSET_PRODUCER_EPOCH + 1],
            ])),
            base_sequence: Sequence(read_i32(&self.bytes, OFFSET_BASE_SEQUENCE)),
        }
    }

    pub fn record_count(&self) -> i32 {
        read_i32(&self.bytes, OFFSET_RECORD_COUNT)
    }

    /// Iterates the records without allocating per record (keys and values are `Bytes` slices of the
    /// batch, or of its inflated records section). A compressed section that does not inflate yields
    /// one error.
    pub fn records(&self) -> RecordIter {
        let section = self.bytes.slice(BATCH_HEADER_BYTES..);
        let (buf, error) = match self.compression() {
            Compression::None => (section, None),
            codec => match codec.decompress(&section) {
                Ok(inflated) => (Bytes::from(inflated), None),
                Err(error) => (Bytes::new(), Some(BatchError::Decompress(error))),
            },
        };
        RecordIter { buf, index: 0, last_delta: -1, batch: self.clone(), error, done: false }
    }

    /// Returns a copy of this batch stamped with the leader-assigned base offset and epoch.
    /// The CRC stays valid: it does not cover these two fields.
    pub fn stamped(self, base_offset: Offset, leader_epoch: LeaderEpoch) -> Batch {
        let mut buf = BytesMut::from(self.bytes);
        buf[OFFSET_BASE_OFFSET..OFFSET_BASE_OFFSET + 8].copy_from_slice(&base_offset.0.to_be_bytes());
        buf[OFFSET_LEADER_EPOCH..OFFSET_LEADER_EPOCH + 4].copy_from_slice(&leader_epoch.0.to_be_bytes());
        Batch { bytes: buf.freeze() }
    }
}

/// A record read back out of a batch, with its absolute offset and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: Offset,
    pub timestamp_ms: TimestampMs,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

pub struct RecordIter {
    buf: Bytes,
    index: usize,
    /// The previous record's offset delta (-1 before the first): deltas strictly increase.
    last_delta: i64,
    batch: Batch,
    error: Option<BatchError>,
    done: bool,
}

impl Iterator for RecordIter {
    type Item = Result<StoredRecord, BatchError>;

    /// The records, then an error if there were more or fewer than the header declares; nothing
    /// after the first error.
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(error) = self.error.take() {
            self.done = true;
            return Some(Err(error));
        }
        let declared = self.batch.record_count();
        if self.buf.is_empty() || self.index == declared as usize {
            self.done = true;
            let found = self.index + usize::from(!self.buf.is_empty());
            return (found != declared as usize).then_some(Err(BatchError::RecordCountMismatch { declared, found }));
        }
        let index = self.index;
        self.index += 1;
        let result = decode_record(&mut self.buf, index, self.last_delta, &self.batch);
        match &result {
            Ok(record) => self.last_delta = record.offset.0 - self.batch.base_offset().0,
            Err(_) => self.done = true,
        }
        Some(result)
    }
}

/// Decodes one record; its offset delta must exceed `last_delta` (the previous record's) and stay
/// within the batch's span.
fn decode_record(buf: &mut Bytes, index: usize, last_delta: i64, batch: &Batch) -> Result<StoredRecord, BatchError> {
    let bad = |reason| BatchError::BadRecord { index, reason };
    let length = get_varint(buf).ok_or(bad("length varint"))?;
    if length < 0 || length as usize > buf.len() {
        return Err(bad("length out of range"));
    }
    let mut body = buf.split_to(length as usize);
    if body.is_empty() {
        return Err(bad("empty record"));
    }
    let _attributes = body.get_i8();
    let timestamp_delta = get_varlong(&mut body).ok_or(bad("timestamp delta"))?;
    let offset_delta = get_varint(&mut body).ok_or(bad("offset delta"))?;
    if i64::from(offset_delta) <= last_delta || offset_delta > batch.last_offset_delta() {
        return Err(bad("offset delta out of order"));
    }
    let key = get_bytes_field(&mut body).ok_or(bad("key"))?;
    let value = get_bytes_field(&mut body).ok_or(bad("value"))?;
    let header_count = get_varint(&mut body).ok_or(bad("header count"))?;
    if header_count < 0 || header_count as usize > body.len() {
        return Err(bad("header count out of range"));
    }
    let mut headers = Vec::new();
    for _ in 0..header_count {
        let key = get_bytes_field(&mut body).ok_or(bad("header key"))?.ok_or(bad("null header key"))?;
        let value = get_bytes_field(&mut body).ok_or(bad("header value"))?;
        headers.push((key, value));
    }
    if !body.is_empty() {
        return Err(bad("trailing bytes in record"));
    }
    Ok(StoredRecord {
        offset: Offset(batch.base_offset().0 + offset_delta as i64),
        timestamp_ms: batch.base_timestamp().saturating_add(timestamp_delta),
        key,
        value,
        headers,
    })
}

fn read_i64(bytes: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn zigzag64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag64(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn varlong_len(value: i64) -> usize {
    let mut v = zigzag64(value);
    let mut len = 1;
    while v >= 0x80 {
        v >>= 7;
        len += 1;
    }
    len
}

fn varint_len(value: i32) -> usize {
    varlong_len(value as i64)
}

fn put_varlong(buf: &mut BytesMut, value: i64) {
    let mut v = zigzag64(value);
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn put_varint(buf: &mut BytesMut, value: i32) {
    put_varlong(buf, value as i64)
}

fn get_varlong(buf: &mut Bytes) -> Option<i64> {
    let mut result = 0u64;
    for shift in (0..70).step_by(7) {
        if buf.is_empty() || shift > 63 {
            return None;
        }
        let byte = buf.get_u8();
        result |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(unzigzag64(result));
        }
    }
    None
}

fn get_varint(buf: &mut Bytes) -> Option<i32> {
    let value = get_varlong(buf)?;
    i32::try_from(value).ok()
}

fn bytes_field_len(field: Option<&[u8]>) -> usize {
    match field {
        None => varint_len(-1),
        Some(bytes) => varint_len(bytes.len() as i32) + bytes.len(),
    }
}

fn put_bytes_field(buf: &mut BytesMut, field: Option<&[u8]>) {
    match field {
        None => put_varint(buf, -1),
        Some(bytes) => {
            put_varint(buf, bytes.len() as i32);
            buf.put_slice(bytes);
        }
    }
}

/// `None` on malformed input; `Some(None)` for a null field.
fn get_bytes_field(buf: &mut Bytes) -> Option<Option<Bytes>> {
    let len = get_varint(buf)?;
    if len == -1 {
        return Some(None);
    }
    if len < 0 || len as usize > buf.len() {
        return None;
    }
    Some(Some(buf.split_to(len as usize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record {
                key: Some(Bytes::from_static(b"k1")),
                value: Some(Bytes::from_static(b"v1")),
                ..Default::default()
            },
            Record {
                key: None,
                value: None,
                headers: vec![(Bytes::from_static(b"h"), None)],
                timestamp_ms: Some(1_005),
            },
            Record::value(vec![7u8; 300]),
        ]
    }

    #[test]
    fn round_trip_preserves_every_field() {
        let producer = ProducerFields {
            producer_id: ProducerId(42),
            producer_epoch: ProducerEpoch(3),
            base_sequence: Sequence(17),
        };
        let bytes = encode_batch(&sample(), 1_000, producer);
        let batch = Batch::parse(bytes).unwrap().stamped(Offset(100), LeaderEpoch(5));
        assert_eq!(batch.base_offset(), Offset(100));
        assert_eq!(batch.last_offset(), Offset(102));
        assert_eq!(batch.leader_epoch(), LeaderEpoch(5));
        assert_eq!(batch.producer(), producer);
        assert_eq!(batch.max_timestamp(), 1_005);
        // Stamping must leave the CRC valid.
        let reparsed = Batch::parse(batch.as_bytes().clone()).unwrap();
        let records: Vec<_> = reparsed.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(records[1].offset, Offset(101));
        assert_eq!(records[1].timestamp_ms, 1_005);
        assert_eq!(records[1].value, None);
        assert_eq!(records[1].headers, vec![(Bytes::from_static(b"h"), None)]);
        assert_eq!(records[2].value.as_deref().map(<[u8]>::len), Some(300));
    }

    #[test]
    fn compressed_batches_round_trip_with_every_codec_and_keep_the_header_in_the_clear() {
        let producer = ProducerFields {
            producer_id: ProducerId(42),
            producer_epoch: ProducerEpoch(3),
            base_sequence: Sequence(17),
        };
        let plain: Vec<_> = Batch::parse(encode_batch(&sample(), 1_000, producer)).unwrap().records().collect();
        for codec in Compression::ALL {
            let bytes = encode_batch_compressed(&sample(), 1_000, producer, codec);
            let batch = Batch::parse(bytes).unwrap().stamped(Offset(100), LeaderEpoch(5));
            assert_eq!(batch.compression(), codec);
            assert_eq!(batch.attributes() & 0x7, codec.id());
            assert_eq!((batch.record_count(), batch.last_offset()), (3, Offset(102)));
            assert_eq!((batch.producer(), batch.max_timestamp()), (producer, 1_005));
            batch.check_records().unwrap();
            let reparsed = Batch::parse(batch.as_bytes().clone()).unwrap();
            let records: Vec<_> = reparsed.records().collect();
            let mut expected = plain.clone();
            for record in expected.iter_mut().flatten() {
                record.offset = Offset(record.offset.0 + 100);
            }
            assert_eq!(records, expected, "{codec}");
        }
    }

    /// A compressed batch whose CRC is right but whose inside is not what its header says: `parse`
    /// takes it (the CRC covers it, as for replication and recovery), `check_records`, which the
    /// leader runs on every produced batch, and `records` refuse it with a typed error.
    #[test]
    fn a_compressed_batch_with_a_bad_inside_fails_check_records_not_parse() {
        let mut inside = encode_batch(&sample(), 1_000, ProducerFields::NONE).to_vec();
        inside.truncate(inside.len() - 10);
        let stream = Compression::Zstd.compress(&inside[BATCH_HEADER_BYTES..]);
        let garbage = b"not a zstd frame".to_vec();
        for section in [stream, garbage] {
            let mut bytes = inside[..BATCH_HEADER_BYTES].to_vec();
            bytes.extend(&section);
            let batch_length = (bytes.len() - BATCH_LENGTH_PREFIX_BYTES) as i32;
            bytes[OFFSET_BATCH_LENGTH..OFFSET_BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
            bytes[OFFSET_ATTRIBUTES..OFFSET_ATTRIBUTES + 2].copy_from_slice(&Compression::Zstd.id().to_be_bytes());
            let crc = crc32c::crc32c(&bytes[OFFSET_ATTRIBUTES..]);
            bytes[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
            let batch = Batch::parse(Bytes::from(bytes)).unwrap();
            assert!(batch.check_records().is_err());
            assert!(batch.records().any(|record| record.is_err()));
        }
    }

    #[test]
    fn unknown_codecs_are_refused() {
        for id in [5u16, 6, 7] {
            let mut bytes = encode_batch(&sample(), 1_000, ProducerFields::NONE).to_vec();
            bytes[OFFSET_ATTRIBUTES..OFFSET_ATTRIBUTES + 2].copy_from_slice(&id.to_be_bytes());
            let crc = crc32c::crc32c(&bytes[OFFSET_ATTRIBUTES..]);
            bytes[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
            assert_eq!(Batch::parse(Bytes::from(bytes)), Err(BatchError::UnsupportedCompression(id)));
        }
    }

    #[test]
    fn any_flipped_bit_is_rejected() {
        let bytes = encode_batch(&sample(), 1_000, ProducerFields::NONE);
        // Bits outside base_offset and leader epoch are covered by magic, length or CRC checks.
        for byte in OFFSET_BATCH_LENGTH..bytes.len() {
            if (OFFSET_LEADER_EPOCH..OFFSET_MAGIC).contains(&byte) {
                continue;
            }
            for bit in 0..8 {
                let mut corrupt = bytes.to_vec();
                corrupt[byte] ^= 1 << bit;
                assert!(Batch::parse(Bytes::from(corrupt)).is_err(), "flip of byte {byte} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn truncated_and_oversized_lengths_are_errors() {
        let bytes = encode_batch(&sample(), 1_000, ProducerFields::NONE);
        for len in 0..bytes.len() {
            assert!(Batch::parse(bytes.slice(..len)).is_err());
        }
        let mut huge = bytes.to_vec();
        huge[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(Batch::parse(Bytes::from(huge)), Err(BatchError::BadLength(_))));
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for value in [0i64, 1, -1, 63, -64, 64, i32::MAX as i64, i32::MIN as i64, i64::MAX, i64::MIN] {
            let mut buf = BytesMut::new();
            put_varlong(&mut buf, value);
            assert_eq!(buf.len(), varlong_len(value));
            assert_eq!(get_varlong(&mut buf.freeze()), Some(value));
        }
    }

    /// Compaction's batches (ADR 0022): a batch keeps its span with a subset of its records, or
    /// none; a filler covers a run of removed batches. Both parse and read back; a producer may send
    /// neither.
    #[test]
    fn compacted_batches_keep_their_span_and_producers_may_not_send_them() {
        let producer = ProducerFields {
            producer_id: ProducerId(42),
            producer_epoch: ProducerEpoch(3),
            base_sequence: Sequence(17),
        };
        for codec in Compression::ALL {
            let batch = Batch::parse(encode_batch_compressed(&sample(), 1_000, producer, codec))
                .unwrap()
                .stamped(Offset(100), LeaderEpoch(5));
            let all: Vec<_> = batch.records().collect::<Result<_, _>>().unwrap();
            let kept = batch.with_records(&[all[0].clone(), all[2].clone()]);
            let kept = Batch::parse(kept.into_bytes()).unwrap();
            assert_eq!(
                (kept.base_offset(), kept.last_offset(), kept.leader_epoch()),
                (Offset(100), Offset(102), LeaderEpoch(5))
            );
            assert_eq!((kept.producer(), kept.max_timestamp(), kept.compression()), (producer, 1_005, codec));
            assert_eq!(kept.records().collect::<Result<Vec<_>, _>>().unwrap(), vec![all[0].clone(), all[2].clone()]);
            assert!(matches!(kept.check_produced(), Err(BatchError::OffsetDeltaMismatch { .. })), "{codec}");
            let none = Batch::parse(batch.with_records(&[]).into_bytes()).unwrap();
            assert_eq!((none.record_count(), none.next_offset(), none.producer()), (0, Offset(103), producer));
            assert_eq!(none.records().count(), 0);
            assert_eq!(none.check_produced(), Err(BatchError::Empty));
        }
        let filler = Batch::parse(Batch::filler(Offset(7), Offset(99), LeaderEpoch(2), 10, 20).into_bytes()).unwrap();
        assert_eq!(
            (filler.base_offset(), filler.next_offset(), filler.leader_epoch()),
            (Offset(7), Offset(100), LeaderEpoch(2))
        );
        assert_eq!((filler.record_count(), filler.base_timestamp(), filler.max_timestamp()), (0, 10, 20));
        assert_eq!(filler.producer(), ProducerFields::NONE);
        let produced = Batch::parse(encode_batch(&sample(), 1_000, producer)).unwrap();
        produced.check_produced().unwrap();
    }

    /// Offset deltas must strictly increase and stay inside the span: a repeated or out-of-span
    /// delta is a malformed record, whatever the CRC says.
    #[test]
    fn offset_deltas_must_increase_within_the_span() {
        let batch = Batch::parse(encode_batch(&sample(), 1_000, ProducerFields::NONE)).unwrap();
        let all: Vec<_> = batch.records().collect::<Result<_, _>>().unwrap();
        let mut twice = all[1].clone();
        twice.offset = all[0].offset;
        let repeated = batch.with_records(&[all[0].clone(), twice]);
        assert!(matches!(Batch::parse(repeated.into_bytes()), Err(BatchError::BadRecord { index: 1, .. })));
        let mut beyond = all[2].clone();
        beyond.offset = Offset(all[2].offset.0 + 1);
        let outside = batch.with_records(&[beyond]);
        assert!(matches!(Batch::parse(outside.into_bytes()), Err(BatchError::BadRecord { index: 0, .. })));
    }
}
