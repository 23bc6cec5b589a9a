//! The async Rust client: admin calls, a batching [`Producer`], and fetches for consumers.
//!
//! Used by the `keel` CLI, the simulation workloads, the Jepsen harness and the benchmarks, so it
//! speaks only through `tokio` (madsim-tokio) and runs in both builds.
//!
//! Outcomes are three-valued, as a history checker needs them: a call succeeds, fails definitely
//! (the broker said no, or the request never left), or is **ambiguous** (the connection broke or
//! timed out with the request in flight, or the broker reported an indeterminate storage error).
//! [`ClientError::is_ambiguous`] tells which; an ambiguous write is never reported as either success
//! or failure. Reads and admin lookups are retried on transport errors; writes are retried only when
//! they were definitely not sent.

mod connection;
pub mod producer;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::batch::{Batch, StoredRecord};
use crate::protocol::*;
use crate::types::Offset;
pub use connection::{Connection, ConnectionError, PendingResponse};
pub use producer::{delivered, Delivery, Producer, ProducerConfig, RecordMetadata};

/// Address used when neither `--broker` nor `KEEL_BROKER` says otherwise.
pub const DEFAULT_BROKER: &str = "127.0.0.1:9400";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("cannot connect to broker {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The outcome is unknown: the request may or may not have taken effect.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    #[error("{code:?}: {message}")]
    Server { code: ErrorCode, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("corrupt data from broker: {0}")]
    Corrupt(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    pub fn is_ambiguous(&self) -> bool {
        match self {
            ClientError::Ambiguous(_) => true,
            ClientError::Server { code, .. } => code.is_indeterminate(),
            _ => false,
        }
    }

    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn server(info: ErrorInfo) -> ClientError {
        ClientError::Server { code: info.error_code(), message: info.message }
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub connect_timeout: Duration,
    /// How long a request may wait for its response before it is reported ambiguous (writes) or
    /// retried (reads). Long polls add their own wait on top.
    pub request_timeout: Duration,
    /// Attempts after the first, for requests that are safe to retry.
    pub retries: u32,
    /// First backoff between attempts; doubles up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retries: 5,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(2),
        }
    }
}

/// A broker client. Cheap to share (`Arc<Client>`); reconnects lazily after a connection breaks.
pub struct Client {
    addr: String,
    config: ClientConfig,
    connection: tokio::sync::Mutex<Option<Connection>>,
}

/// A fetched slice of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub high_watermark: Offset,
    pub log_start: Offset,
    /// Records at or after the requested offset, in offset order.
    pub records: Vec<StoredRecord>,
}

impl Client {
    pub fn new(addr: impl Into<String>, config: ClientConfig) -> Arc<Client> {
        Arc::new(Client { addr: addr.into(), config, connection: tokio::sync::Mutex::new(None) })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    async fn connection(&self) -> Result<Connection, ClientError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref().filter(|connection| !connection.is_closed()) {
            return Ok(connection.clone());
        }
        let connect = TcpStream::connect(self.addr.as_str());
        let stream = match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(ClientError::Connect { addr: self.addr.clone(), reason: error.to_string() }),
            Err(_) => return Err(ClientError::Connect { addr: self.addr.clone(), reason: "timed out".into() }),
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection::start(stream);
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Queues a request on the connection (in call order) without waiting for its response.
    /// Errors here mean the request was definitely not sent.
    pub async fn start(&self, body: Body) -> Result<PendingResponse, ClientError> {
        let connection = self.connection().await?;
        connection.send(body).await.map_err(|_| ClientError::Connect {
            addr: self.addr.clone(),
            reason: "connection closed before the request was sent".into(),
        })
    }

    /// Waits for a started request, up to `request_timeout` (+ `extra`).
    pub async fn finish(&self, pending: PendingResponse, extra: Duration) -> Result<Body, ClientError> {
        match tokio::time::timeout(self.config.request_timeout + extra, pending).await {
            Err(_) => {
                // Drop the connection: a late response must not be matched to anything.
                *self.connection.lock().await = None;
                Err(ClientError::Ambiguous(format!("no response within {:?}", self.config.request_timeout + extra)))
            }
            Ok(Err(_)) => Err(ClientError::Ambiguous("connection task ended with the request in flight".into())),
            Ok(Ok(Err(ConnectionError::NotSent))) => {
                Err(ClientError::Connect { addr: self.addr.clone(), reason: "request not sent".into() })
            }
            Ok(Ok(Err(error))) => Err(ClientError::Ambiguous(error.to_string())),
            Ok(Ok(Ok(Body::ErrorResponse(ErrorResponse { error: Some(info) })))) => Err(ClientError::server(info)),
            Ok(Ok(Ok(body))) => Ok(body),
        }
    }

    /// One attempt; a write's transport failure is ambiguous.
    pub async fn request(&self, body: Body) -> Result<Body, ClientError> {
        let pending = self.start(body).await?;
        self.finish(pending, Duration::ZERO).await
    }

    /// For requests with no side effects: retries transport failures with backoff.
    pub async fn request_retrying(&self, body: Body, extra: Duration) -> Result<Body, ClientError> {
        let mut backoff = self.config.retry_backoff;
        let mut attempt = 0;
        loop {
            let result = match self.start(body.clone()).await {
                Ok(pending) => self.finish(pending, extra).await,
                Err(error) => Err(error),
            };
            match result {
                Err(ClientError::Connect { .. } | ClientError::Ambiguous(_)) if attempt < self.config.retries => {
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.retry_backoff_max);
                }
                other => return other,
            }
        }
    }

    pub async fn create_topic(&self, name: &str, partitions: u32, replication: u32) -> Result<(), ClientError> {
        let body = Body::CreateTopicRequest(CreateTopicRequest { name: name.into(), partitions, replication });
        match self.request(body).await? {
            Body::CreateTopicResponse(CreateTopicResponse { error: None }) => Ok(()),
            Body::CreateTopicResponse(CreateTopicResponse { error: Some(info) }) => Err(ClientError::server(info)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let body = Body::DeleteTopicRequest(DeleteTopicRequest { name: name.into() });
        match self.request(body).await? {
            Body::DeleteTopicResponse(DeleteTopicResponse { error: None }) => Ok(()),
            Body::DeleteTopicResponse(DeleteTopicResponse { error: Some(info) }) => Err(ClientError::server(info)),
            other => Err(unexpected(other)),
        }
    }

    /// Metadata for the named topics (all topics when empty).
    pub async fn metadata(&self, topics: &[String]) -> Result<MetadataResponse, ClientError> {
        let body = Body::MetadataRequest(MetadataRequest { topics: topics.to_vec() });
        match self.request_retrying(body, Duration::ZERO).await? {
            Body::MetadataResponse(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    /// Metadata of one topic; `UnknownTopic` as an error.
    pub async fn topic(&self, name: &str) -> Result<TopicInfo, ClientError> {
        let response = self.metadata(&[name.to_owned()]).await?;
        let topic = response.topics.into_iter().next().ok_or_else(|| ClientError::Protocol("empty metadata".into()))?;
        match topic.error {
            Some(info) => Err(ClientError::server(info)),
            None => Ok(topic),
        }
    }

    /// `timestamp_ms` is `LIST_OFFSETS_EARLIEST`, `LIST_OFFSETS_LATEST` or a timestamp; `None` when
    /// no record is at or after the timestamp.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<Option<(Offset, i64)>, ClientError> {
        let body = Body::ListOffsetsRequest(ListOffsetsRequest { topic: topic.into(), partition, timestamp_ms });
        match self.request_retrying(body, Duration::ZERO).await? {
            Body::ListOffsetsResponse(ListOffsetsResponse { error: Some(info), .. }) => Err(ClientError::server(info)),
            Body::ListOffsetsResponse(ListOffsetsResponse { offset, timestamp_ms, .. }) => {
                Ok((offset >= 0).then_some((Offset(offset), timestamp_ms)))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Fetches records from `offset`, waiting up to `max_wait` for some to exist. Every batch's CRC
    /// is verified; records before `offset` in the first batch are dropped.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: Offset,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<Fetched, ClientError> {
        let body = Body::FetchRequest(FetchRequest {
            topic: topic.into(),
            partition,
            offset: offset.0,
            max_bytes,
            max_wait_ms: max_wait.as_millis().min(u32::MAX as u128) as u32,
            min_bytes: 1,
        });
        match self.request_retrying(body, max_wait).await? {
            Body::FetchResponse(FetchResponse { error: Some(info), .. }) => Err(ClientError::server(info)),
            Body::FetchResponse(response) => {
                let records = decode_records(response.records, offset)?;
                Ok(Fetched {
                    high_watermark: Offset(response.high_watermark),
                    log_start: Offset(response.log_start_offset),
                    records,
                })
            }
            other => Err(unexpected(other)),
        }
    }
}

/// Decodes concatenated batches (verifying each CRC) into records at or after `from`.
pub fn decode_records(mut bytes: Bytes, from: Offset) -> Result<Vec<StoredRecord>, ClientError> {
    let mut records = Vec::new();
    while let Some(batch) = Batch::split_first(&mut bytes).map_err(|error| ClientError::Corrupt(error.to_string()))? {
        for record in batch.records() {
            let record = record.map_err(|error| ClientError::Corrupt(error.to_string()))?;
            if record.offset >= from {
                records.push(record);
            }
        }
    }
    Ok(records)
}

fn unexpected(body: Body) -> ClientError {
    ClientError::Protocol(format!("unexpected response {body:?}"))
}
