//! Batch compression: Kafka's codec ids and the byte formats Kafka clients read and write (ADR 0018).
//!
//! A compressed v2 batch keeps its 61-byte header in the clear and compresses the records section
//! as one stream; the codec id is in bits 0-2 of the batch attributes. The producer compresses, the
//! broker stores the bytes as they came (the CRC covers the compressed bytes, so replication, recovery
//! and fetches never decompress), and the consumer decompresses. The leader decompresses once on
//! produce to check the records inside against the header (`Batch::check_records`).
//!
//! Formats, as Kafka has them: gzip is an RFC 1952 stream, snappy is a raw snappy block when
//! written (what librdkafka writes) and either that or xerial's framed stream when read (what the
//! Java client writes), lz4 is an LZ4 frame, zstd is a zstd frame.
//!
//! Decompression is bounded by [`DECOMPRESSED_BYTES_MAX`]: a batch that inflates past it is an error,
//! never an allocation of whatever size its bytes claim. Pure: no I/O, no clocks.

use std::io::Read;

/// The most bytes one compressed batch's records section may inflate to. Four times
/// `BATCH_BYTES_MAX`: a producer batches at most `BATCH_BYTES_MAX` of uncompressed records, so
/// anything this large is not a batch a Keel producer wrote.
pub const DECOMPRESSED_BYTES_MAX: usize = 4 * crate::batch::BATCH_BYTES_MAX;

/// zstd's level for producers: the library's default (3), Kafka's too.
const ZSTD_LEVEL: i32 = 3;

/// xerial snappy-java's stream header: magic, then version 1 and compatible version 1.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_BYTES: usize = 16;

/// A batch's compression codec, with Kafka's ids (attributes bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    #[default]
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionError {
    #[error("unknown compression codec {0}")]
    UnknownCodec(u16),
    #[error("{codec} data is corrupt: {reason}")]
    Corrupt { codec: &'static str, reason: String },
    #[error("{codec} data inflates past {limit} bytes")]
    TooLarge { codec: &'static str, limit: usize },
}

impl Compression {
    pub const ALL: [Compression; 5] =
        [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

    /// The codec for Kafka's id (attributes bits 0-2).
    pub fn from_id(id: u16) -> Result<Compression, CompressionError> {
        Compression::ALL.into_iter().find(|codec| *codec as u16 == id).ok_or(CompressionError::UnknownCodec(id))
    }

    pub fn id(self) -> u16 {
        self as u16
    }

    /// The name Kafka's `compression.type` uses.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    pub fn from_name(name: &str) -> Option<Compression> {
        Compression::ALL.into_iter().find(|codec| codec.name() == name)
    }

    /// Compresses `data` as one stream of this codec. `None` returns a copy.
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                std::io::Write::write_all(&mut encoder, data).expect("writing to a Vec cannot fail");
                encoder.finish().expect("writing to a Vec cannot fail")
            }
            Compression::Snappy => snap::raw::Encoder::new().compress_vec(data).expect("snappy takes any input"),
            Compression::Lz4 => {
                let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
                std::io::Write::write_all(&mut encoder, data).expect("writing to a Vec cannot fail");
                encoder.finish().expect("writing to a Vec cannot fail")
            }
            Compression::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).expect("zstd takes any input"),
        }
    }

    /// Decompresses one stream of this codec, failing past [`DECOMPRESSED_BYTES_MAX`].
    pub fn decompress(self, data: &[u8]) -> Result<Vec<u8>, CompressionError> {
        self.decompress_bounded(data, DECOMPRESSED_BYTES_MAX)
    }

    /// Decompresses one stream of this codec into at most `limit` bytes.
    pub fn decompress_bounded(self, data: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
        let codec = self.name();
        match self {
            Compression::None => bounded(codec, data.to_vec(), limit),
            Compression::Gzip => read_bounded(codec, flate2::read::GzDecoder::new(data), limit),
            Compression::Snappy if data.starts_with(&XERIAL_MAGIC) => unsnappy_xerial(data, limit),
            Compression::Snappy => unsnappy_raw(data, limit),
            Compression::Lz4 => read_bounded(codec, lz4_flex::frame::FrameDecoder::new(data), limit),
            Compression::Zstd => {
                let decoder = zstd::stream::read::Decoder::new(data).map_err(|error| corrupt(codec, error))?;
                read_bounded(codec, decoder, limit)
            }
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(name: &str) -> Result<Compression, String> {
        Compression::from_name(name)
            .ok_or_else(|| format!("unknown compression {name:?} (expected none, gzip, snappy, lz4 or zstd)"))
    }
}

fn corrupt(codec: &'static str, error: impl std::fmt::Display) -> CompressionError {
    CompressionError::Corrupt { codec, reason: error.to_string() }
}

fn bounded(codec: &'static str, data: Vec<u8>, limit: usize) -> Result<Vec<u8>, CompressionError> {
    if data.len() > limit {
        return Err(CompressionError::TooLarge { codec, limit });
    }
    Ok(data)
}

/// Reads a decoder to its end, at most `limit` bytes (one more is read to tell "exactly" from "past").
fn read_bounded(codec: &'static str, decoder: impl Read, limit: usize) -> Result<Vec<u8>, CompressionError> {
    let mut out = Vec::new();
    decoder.take(limit as u64 + 1).read_to_end(&mut out).map_err(|error| corrupt(codec, error))?;
    bounded(codec, out, limit)
}

fn unsnappy_raw(data: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
    let length = snap::raw::decompress_len(data).map_err(|error| corrupt("snappy", error))?;
    if length > limit {
        return Err(CompressionError::TooLarge { codec: "snappy", limit });
    }
    snap::raw::Decoder::new().decompress_vec(data).map_err(|error| corrupt("snappy", error))
}

/// xerial's framing: the 16-byte header, then chunks of `length i32 | raw snappy block`.
fn unsnappy_xerial(data: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
    if data.len() < XERIAL_HEADER_BYTES {
        return Err(corrupt("snappy", "xerial header truncated"));
    }
    let mut rest = &data[XERIAL_HEADER_BYTES..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let Some((length, tail)) = rest.split_first_chunk::<4>() else {
            return Err(corrupt("snappy", "xerial chunk length truncated"));
        };
        let length = i32::from_be_bytes(*length);
        if length < 0 || length as usize > tail.len() {
            return Err(corrupt("snappy", format!("xerial chunk length {length} out of range")));
        }
        let (chunk, tail) = tail.split_at(length as usize);
        out.extend(unsnappy_raw(chunk, limit.saturating_sub(out.len()))?);
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..20_000u32).flat_map(|i| format!("record-{}-", i % 97).into_bytes()).collect()
    }

    #[test]
    fn every_codec_round_trips_and_compresses_repetitive_data() {
        let data = sample();
        for codec in Compression::ALL {
            let compressed = codec.compress(&data);
            assert_eq!(codec.decompress(&compressed).unwrap(), data, "{codec}");
            if codec != Compression::None {
                assert!(compressed.len() * 4 < data.len(), "{codec}: {} of {}", compressed.len(), data.len());
            }
            assert_eq!(Compression::from_id(codec.id()).unwrap(), codec);
            assert_eq!(codec.name().parse::<Compression>().unwrap(), codec);
        }
        assert_eq!(Compression::from_id(5), Err(CompressionError::UnknownCodec(5)));
        assert!("brotli".parse::<Compression>().unwrap_err().contains("unknown compression"));
    }

    #[test]
    fn empty_input_round_trips() {
        for codec in Compression::ALL {
            assert_eq!(codec.decompress(&codec.compress(&[])).unwrap(), Vec::<u8>::new(), "{codec}");
        }
    }

    #[test]
    fn inflating_past_the_limit_is_an_error_for_every_codec() {
        let data = vec![0u8; 100_000];
        for codec in Compression::ALL {
            let compressed = codec.compress(&data);
            assert_eq!(codec.decompress_bounded(&compressed, data.len()).unwrap().len(), data.len(), "{codec}");
            assert_eq!(
                codec.decompress_bounded(&compressed, data.len() - 1),
                Err(CompressionError::TooLarge { codec: codec.name(), limit: data.len() - 1 }),
                "{codec}"
            );
        }
    }

    #[test]
    fn garbage_is_a_typed_error_for_every_codec() {
        let garbage = b"this is not compressed data at all, not even a little".to_vec();
        for codec in Compression::ALL.into_iter().skip(1) {
            assert!(
                matches!(codec.decompress(&garbage), Err(CompressionError::Corrupt { .. })),
                "{codec}: {:?}",
                codec.decompress(&garbage)
            );
            let mut truncated = codec.compress(&sample());
            truncated.truncate(truncated.len() / 2);
            assert!(codec.decompress(&truncated).is_err(), "{codec}: truncated stream accepted");
        }
    }

    /// What snappy-java's `SnappyOutputStream` (the Java Kafka producer's snappy) writes: the xerial
    /// header, then one length-prefixed raw block per chunk.
    #[test]
    fn snappy_reads_xerial_framing_as_the_java_client_writes_it() {
        let data = sample();
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend(1i32.to_be_bytes());
        framed.extend(1i32.to_be_bytes());
        for chunk in data.chunks(32 * 1024) {
            let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            framed.extend((block.len() as i32).to_be_bytes());
            framed.extend(block);
        }
        assert_eq!(Compression::Snappy.decompress(&framed).unwrap(), data);
        assert!(Compression::Snappy.decompress_bounded(&framed, data.len() - 1).is_err());
        framed.truncate(framed.len() - 3);
        assert!(Compression::Snappy.decompress(&framed).is_err());
    }
}
