//! Kafka's wire protocol, translated to Keel's native requests (ADR 0026): the sans-IO half of the
//! Kafka listener. The server's listener (`server::kafka`) reads frames, asks [`decode_request`],
//! sends the native requests [`translate`] builds through the same `serve_request` the native
//! protocol uses, and writes what [`encode_response`] makes of the answers. Nothing here touches a
//! socket, a clock or the broker's state.
//!
//! Parsing and encoding are the `kafka-protocol` crate's; this module adds what it leaves to a
//! server: the frame's length and header checks (its helpers panic on a frame shorter than a
//! header), the versions Keel serves ([`versions`]), the answer to an `ApiVersions` at a version it
//! does not serve (a v0 body with `UNSUPPORTED_VERSION`, which clients retry lower), and the table
//! of native error codes ([`errors`]).
//!
//! Invariants:
//! - Any bytes give a request or a typed [`FrameError`], never a panic (the bolero target in
//!   tests/decode_fuzz.rs holds the decoder to it).
//! - Only a request whose API and version are in [`versions::SERVED`] is decoded; the rest are
//!   refused before their body is read.

pub mod errors;
pub mod translate;
pub mod unserved;
pub mod versions;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Largest Kafka request frame the listener reads (its 4-byte length prefix excluded): a produce
/// request carries a batch per partition, each at most [`crate::batch::BATCH_BYTES_MAX`]; clients
/// cap a request at about a megabyte by default (librdkafka's `message.max.bytes`).
pub const KAFKA_FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The codec of a Kafka connection: a 4-byte big-endian length, then the frame.
pub fn kafka_frame_codec() -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(KAFKA_FRAME_BYTES_MAX)
        .new_codec()
}

/// The cluster id Keel's Kafka metadata reports (Kafka clients only display it).
pub const CLUSTER_ID: &str = "keel";

/// Splits `host:port` (or `[v6]:port`) for Kafka's metadata, which carries the two apart.
pub fn split_host_port(addr: &str) -> Option<(String, i32)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_owned(), i32::from(port)))
}

pub fn str_bytes(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

macro_rules! kafka_apis {
    ($($api:ident ($name:literal) => $request:ident, $response:ident;)*) => {
        /// A decoded request of an API Keel serves.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Request {
            $($api($request),)*
        }

        /// A response to encode.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Response {
            $($api($response),)*
        }

        impl Request {
            /// The API's name in snake case (`api_versions`): the `api` label of the request metrics.
            pub fn api_name(&self) -> &'static str {
                match self {
                    $(Request::$api(_) => $name,)*
                }
            }
        }

        fn decode_body(api: ApiKey, body: &mut Bytes, version: i16) -> Option<Result<Request, String>> {
            match api {
                $(ApiKey::$api => {
                    Some($request::decode(body, version).map(Request::$api).map_err(|error| error.to_string()))
                })*
                _ => None,
            }
        }

        impl Response {
            pub fn api(&self) -> ApiKey {
                match self {
                    $(Response::$api(_) => ApiKey::$api,)*
                }
            }

            fn encode_body(&self, buf: &mut BytesMut, version: i16) -> Result<(), String> {
                match self {
                    $(Response::$api(response) => response.encode(buf, version).map_err(|error| error.to_string()),)*
                }
            }
        }
    };
}

kafka_apis! {
    ApiVersions ("api_versions") => ApiVersionsRequest, ApiVersionsResponse;
    Metadata ("metadata") => MetadataRequest, MetadataResponse;
    Produce ("produce") => ProduceRequest, ProduceResponse;
    Fetch ("fetch") => FetchRequest, FetchResponse;
    ListOffsets ("list_offsets") => ListOffsetsRequest, ListOffsetsResponse;
    CreateTopics ("create_topics") => CreateTopicsRequest, CreateTopicsResponse;
    DeleteTopics ("delete_topics") => DeleteTopicsRequest, DeleteTopicsResponse;
    InitProducerId ("init_producer_id") => InitProducerIdRequest, InitProducerIdResponse;
    FindCoordinator ("find_coordinator") => FindCoordinatorRequest, FindCoordinatorResponse;
    JoinGroup ("join_group") => JoinGroupRequest, JoinGroupResponse;
    SyncGroup ("sync_group") => SyncGroupRequest, SyncGroupResponse;
    Heartbeat ("heartbeat") => HeartbeatRequest, HeartbeatResponse;
    LeaveGroup ("leave_group") => LeaveGroupRequest, LeaveGroupResponse;
    OffsetCommit ("offset_commit") => OffsetCommitRequest, OffsetCommitResponse;
    OffsetFetch ("offset_fetch") => OffsetFetchRequest, OffsetFetchResponse;
    ListGroups ("list_groups") => ListGroupsRequest, ListGroupsResponse;
    DescribeGroups ("describe_groups") => DescribeGroupsRequest, DescribeGroupsResponse;
}

/// One decoded request frame.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFrame {
    pub version: i16,
    pub correlation_id: i32,
    /// The client's `client.id`; empty when it sent none.
    pub client_id: String,
    pub request: Request,
    /// False for a version outside [`versions::SERVED`] (but one the crate reads): it is answered
    /// with `UNSUPPORTED_VERSION` ([`translate::refuse_all`]), never served.
    pub served: bool,
}

/// Why a frame gives no request. [`FrameError::UnsupportedApiVersions`] is answered (see
/// [`api_versions_fallback`]) and so is [`FrameError::UnservedApi`] ([`unserved::answer`]); after
/// any other the listener closes the connection, since a Kafka client cannot match a reply to a
/// request whose format it did not follow.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error("a {0}-byte frame is shorter than a request header")]
    TooShort(usize),
    #[error("API key {api_key} (version {version}) is not one Keel serves")]
    UnknownApi { api_key: i16, version: i16, correlation_id: i32 },
    /// A Kafka API Keel does not serve, whose response has a top-level error code: answered with
    /// `UNSUPPORTED_VERSION` there ([`unserved::answer`]).
    #[error("{api:?} (version {version}) is not served")]
    UnservedApi { api: ApiKey, version: i16, correlation_id: i32 },
    #[error("ApiVersions version {version} is not served (0-{})", versions::API_VERSIONS_MAX)]
    UnsupportedApiVersions { version: i16, correlation_id: i32 },
    #[error("{api:?} version {version} is not served")]
    UnsupportedVersion { api: ApiKey, version: i16, correlation_id: i32 },
    #[error("malformed {api:?} v{version} request: {message}")]
    Malformed { api: ApiKey, version: i16, correlation_id: i32, message: String },
}

/// Decodes one frame (without its length prefix). Never panics on untrusted bytes.
pub fn decode_request(frame: Bytes) -> Result<RequestFrame, FrameError> {
    // api_key, api_version, correlation_id: the part of the header every version shares.
    if frame.len() < 8 {
        return Err(FrameError::TooShort(frame.len()));
    }
    let mut fixed = &frame[..8];
    let (api_key, version, correlation_id) = (fixed.get_i16(), fixed.get_i16(), fixed.get_i32());
    let api = match ApiKey::try_from(api_key) {
        Ok(api) if versions::is_served_api(api) => api,
        Ok(api) if unserved::answers(api, version) => {
            return Err(FrameError::UnservedApi { api, version, correlation_id });
        }
        _ => return Err(FrameError::UnknownApi { api_key, version, correlation_id }),
    };
    let served = versions::accepts(api, version);
    if !served {
        if api == ApiKey::ApiVersions {
            return Err(FrameError::UnsupportedApiVersions { version, correlation_id });
        }
        // A version the crate reads is decoded and answered with UNSUPPORTED_VERSION on every item
        // it names ([`translate::refuse_all`]); one it cannot read has no answer a client could parse.
        let readable = api.valid_versions();
        if version < readable.min || version > readable.max {
            return Err(FrameError::UnsupportedVersion { api, version, correlation_id });
        }
    }
    let malformed = |message: String| FrameError::Malformed { api, version, correlation_id, message };
    let mut body = frame;
    let header =
        RequestHeader::decode(&mut body, api.request_header_version(version)).map_err(|e| malformed(e.to_string()))?;
    let request =
        decode_body(api, &mut body, version).unwrap_or_else(|| Err("no decoder".to_owned())).map_err(malformed)?;
    let client_id = header.client_id.map(|id| id.to_string()).unwrap_or_default();
    Ok(RequestFrame { version, correlation_id, client_id, request, served })
}

/// Encodes a response frame (without its length prefix) at the request's version.
pub fn encode_response(version: i16, correlation_id: i32, response: &Response) -> Result<Bytes, String> {
    let api = response.api();
    let mut buf = BytesMut::new();
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(&mut buf, api.response_header_version(version)).map_err(|error| error.to_string())?;
    response.encode_body(&mut buf, version)?;
    Ok(buf.freeze())
}

/// The answer to an `ApiVersions` at a version Keel does not serve: Kafka's v0 format (header and
/// body), `UNSUPPORTED_VERSION`, and the `ApiVersions` versions Keel does serve, so the client asks
/// again at one of them.
pub fn api_versions_fallback(correlation_id: i32) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i32(correlation_id);
    buf.put_i16(errors::UNSUPPORTED_VERSION);
    buf.put_i32(1); // one API key
    buf.put_i16(ApiKey::ApiVersions as i16);
    buf.put_i16(0);
    buf.put_i16(versions::API_VERSIONS_MAX);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(api_key: i16, version: i16, correlation_id: i32, body: &[u8]) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_i16(api_key);
        buf.put_i16(version);
        buf.put_i32(correlation_id);
        buf.put_slice(body);
        Bytes::from(buf)
    }

    #[test]
    fn host_and_port_split() {
        assert_eq!(split_host_port("127.0.0.1:9092"), Some(("127.0.0.1".into(), 9092)));
        assert_eq!(split_host_port("[::1]:19092"), Some(("::1".into(), 19092)));
        assert_eq!(split_host_port("kafka-1.example:1"), Some(("kafka-1.example".into(), 1)));
        for bad in ["", "host", ":9092", "host:", "host:65536", "host:-1", "[]:1"] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn short_unknown_and_unserved_frames_are_typed_errors() {
        for len in 0..8 {
            assert_eq!(decode_request(Bytes::from(vec![0; len])), Err(FrameError::TooShort(len)));
        }
        // DescribeConfigs (32) is a real API Keel does not serve, whose answer has no top-level
        // error code; 999 is no API at all.
        for api_key in [32, 999, -1] {
            let error = decode_request(frame(api_key, 0, 5, &[])).unwrap_err();
            assert_eq!(error, FrameError::UnknownApi { api_key, version: 0, correlation_id: 5 });
        }
        // SaslHandshake's answer has one: it is answered.
        let error = decode_request(frame(17, 1, 5, &[])).unwrap_err();
        assert_eq!(error, FrameError::UnservedApi { api: ApiKey::SaslHandshake, version: 1, correlation_id: 5 });
        let error = decode_request(frame(ApiKey::ApiVersions as i16, 99, 6, &[])).unwrap_err();
        assert_eq!(error, FrameError::UnsupportedApiVersions { version: 99, correlation_id: 6 });
        let error = decode_request(frame(ApiKey::Fetch as i16, 3, 7, &[])).unwrap_err();
        assert_eq!(error, FrameError::UnsupportedVersion { api: ApiKey::Fetch, version: 3, correlation_id: 7 });
        // Produce v0-2 are advertised (librdkafka needs it to compress) but refused when they come.
        let error = decode_request(frame(ApiKey::Produce as i16, 2, 8, &[])).unwrap_err();
        assert_eq!(error, FrameError::UnsupportedVersion { api: ApiKey::Produce, version: 2, correlation_id: 8 });
        // A served API whose header or body is cut short.
        let error = decode_request(frame(ApiKey::Metadata as i16, 4, 9, &[0, 5, b'a'])).unwrap_err();
        assert!(matches!(error, FrameError::Malformed { api: ApiKey::Metadata, version: 4, correlation_id: 9, .. }));
    }

    #[test]
    fn api_versions_v0_decodes_and_the_fallback_is_a_v0_answer() {
        // v0-2: header v1 (client id), empty body.
        let mut body = Vec::new();
        body.extend_from_slice(&4i16.to_be_bytes());
        body.extend_from_slice(b"kcat");
        let decoded = decode_request(frame(ApiKey::ApiVersions as i16, 0, 11, &body)).unwrap();
        assert_eq!(decoded.client_id, "kcat");
        assert_eq!((decoded.version, decoded.correlation_id), (0, 11));
        assert!(matches!(decoded.request, Request::ApiVersions(_)));

        let mut answer = api_versions_fallback(12);
        assert_eq!(answer.get_i32(), 12);
        let response = ApiVersionsResponse::decode(&mut answer, 0).unwrap();
        assert_eq!(response.error_code, errors::UNSUPPORTED_VERSION);
        assert_eq!(response.api_keys.len(), 1);
        assert_eq!(response.api_keys[0].max_version, versions::API_VERSIONS_MAX);
        assert!(answer.is_empty());
    }

    #[test]
    fn responses_carry_the_correlation_id_in_the_header_version_of_their_api() {
        let response = Response::Heartbeat(HeartbeatResponse::default().with_error_code(27));
        for version in 0..=4 {
            let mut bytes = encode_response(version, 77, &response).unwrap();
            assert_eq!(bytes.get_i32(), 77);
            if version >= 4 {
                assert_eq!(bytes.get_u8(), 0, "flexible versions carry an empty tagged-field section");
            }
            let decoded = HeartbeatResponse::decode(&mut bytes, version).unwrap();
            assert_eq!(decoded.error_code, 27);
        }
    }
}
