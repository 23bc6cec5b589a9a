//! Producer processes that speak Kafka's wire protocol to the brokers' Kafka listeners (ADR 0026),
//! beside the queue workload's native producers, into the same topic: the listener under the same
//! faults, judged by the same exactly-once checker.
//!
//! Each process is a small idempotent Kafka producer written for the simulation with the
//! `kafka-protocol` crate's client half: `InitProducerId` for a producer id, `Metadata` for the
//! partition's leader and its Kafka address, then one `Produce` (v7, acks -1) per record, its batch
//! carrying the producer id, epoch 0 and the partition's next sequence. A retriable error or a
//! broken connection sends the same batch again (to the leader the metadata names then) until an
//! answer or the send's deadline; an ambiguous end (the deadline, or an error that is not retriable)
//! is recorded `info`, and the process takes a new producer id before its next send, so nothing it
//! sent under the old one can be appended twice under the new one. One send outstanding per process:
//! each process's sends to a partition are in the log in the order it sent them.
//!
//! In: the brokers' Kafka addresses, the topic, an RNG. Out: the history, through the queue
//! workload's [`Recorder`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use keel::batch::{encode_batch, ProducerFields, Record};
use keel::client::{ClientError, RecordMetadata};
use keel::types::{Offset as KeelOffset, ProducerEpoch, ProducerId, Sequence};
use keel_model::history::{Partition, ProcessId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lock;
use crate::workload::{pick_partition, think, Recorder, OPERATION_MS_MAX};

/// How long one send may try before it ends `info`: well inside [`OPERATION_MS_MAX`].
const SEND_MS_MAX: u64 = OPERATION_MS_MAX / 4;
/// One request's answer, or the connection is taken for broken.
const REQUEST_MS_MAX: u64 = 3_000;
/// Between two tries of a send.
const RETRY_BACKOFF_MS: u64 = 50;
/// The Produce version the processes speak (acks, idempotent batches, no flexible encoding).
const PRODUCE_VERSION: i16 = 7;
const METADATA_VERSION: i16 = 7;
const INIT_PRODUCER_ID_VERSION: i16 = 1;

/// Kafka error codes a send retries with the same batch (the leader moved, is not ready, the
/// write timed out or could not reach enough replicas, storage trouble).
const RETRIABLE: &[i16] = &[3, 5, 6, 7, 14, 15, 19, 20, 56, 74, 75];

/// One client node's Kafka producer processes.
pub struct KafkaProducerNode {
    /// Every broker's Kafka listener (`host:port`), tried in turn for metadata.
    pub bootstrap: Vec<String>,
    pub topic: String,
    pub partitions: u32,
    pub processes: Vec<ProcessId>,
    pub think_ms_max: u64,
    pub hot_partition_percent: u32,
    pub rng: StdRng,
}

impl KafkaProducerNode {
    /// Runs every process until `stop`; returns when each has resolved its last send.
    pub async fn run(mut self, recorder: Arc<Recorder>, stop: CancellationToken) {
        let mut tasks = Vec::new();
        for process in self.processes.iter().copied() {
            let kafka = KafkaProcess {
                process,
                bootstrap: self.bootstrap.clone(),
                topic: self.topic.clone(),
                producer: None,
                sequences: BTreeMap::new(),
                connections: BTreeMap::new(),
                leaders: BTreeMap::new(),
                correlation_id: 0,
                rng: StdRng::seed_from_u64(self.rng.random()),
            };
            let (recorder, stop) = (recorder.clone(), stop.clone());
            let shape = (self.partitions, self.think_ms_max, self.hot_partition_percent);
            tasks.push(tokio::spawn(async move { kafka.run(shape, &recorder, &stop).await }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

struct KafkaProcess {
    process: ProcessId,
    bootstrap: Vec<String>,
    topic: String,
    /// The producer id and epoch of this process, once `InitProducerId` gave one.
    producer: Option<(i64, i16)>,
    /// The next sequence of each partition under `producer`.
    sequences: BTreeMap<u32, i32>,
    connections: BTreeMap<String, TcpStream>,
    /// Each partition's leader's Kafka address, as the last metadata named it (dropped after an error).
    leaders: BTreeMap<u32, String>,
    correlation_id: i32,
    rng: StdRng,
}

impl KafkaProcess {
    async fn run(
        mut self,
        (partitions, think_ms_max, hot_percent): (u32, u64, u32),
        recorder: &Recorder,
        stop: &CancellationToken,
    ) {
        let mut sequence = 0u64;
        while !stop.is_cancelled() {
            let partition = pick_partition(&mut self.rng, partitions, hot_percent);
            let value = format!("{}-{sequence}", self.process.0);
            sequence += 1;
            let pending = lock(&recorder.history).invoke_send(
                self.process,
                recorder.now_ns(),
                Partition::of_topic(&self.topic, partition),
                value.as_str(),
            );
            let outcome = self.send(partition, &value).await;
            if outcome.is_err() {
                // Whatever it sent under this id may still be appended: the next send starts afresh.
                self.producer = None;
                self.sequences.clear();
            }
            if !recorder.send_resolved(pending, partition, Some(outcome)) {
                return;
            }
            think(&mut self.rng, think_ms_max).await;
        }
    }

    /// One record, sent until an answer or [`SEND_MS_MAX`].
    async fn send(&mut self, partition: u32, value: &str) -> Result<RecordMetadata, ClientError> {
        let deadline = Instant::now() + Duration::from_millis(SEND_MS_MAX);
        let mut batch = None;
        let mut last = String::from("no try");
        while Instant::now() < deadline {
            let Some((producer_id, epoch)) = self.producer_id().await else {
                last = "no producer id".into();
                tracing::debug!(process = self.process.0, "kafka: no producer id yet");
                self.backoff().await;
                continue;
            };
            let base_sequence = *self.sequences.entry(partition).or_insert(0);
            let batch = batch
                .get_or_insert_with(|| {
                    let fields = ProducerFields {
                        producer_id: ProducerId(producer_id),
                        producer_epoch: ProducerEpoch(epoch),
                        base_sequence: Sequence(base_sequence),
                    };
                    encode_batch(&[Record::value(Bytes::from(value.to_owned()))], keel::clock::wall_clock_ms(), fields)
                })
                .clone();
            match self.produce_once(partition, batch).await {
                Ok(offset) => {
                    self.sequences.insert(partition, base_sequence + 1);
                    return Ok(RecordMetadata { partition, offset: KeelOffset(offset) });
                }
                Err((code, why)) if code.is_none_or(|code| RETRIABLE.contains(&code)) => {
                    tracing::debug!(process = self.process.0, partition, %why, "kafka produce: retrying");
                    last = why;
                }
                Err((_, why)) => return Err(ClientError::Ambiguous(format!("kafka produce: {why}"))),
            }
            self.backoff().await;
        }
        Err(ClientError::Ambiguous(format!("kafka produce not answered within {SEND_MS_MAX} ms: {last}")))
    }

    async fn backoff(&mut self) {
        let ms = self.rng.random_range(RETRY_BACKOFF_MS / 2..=RETRY_BACKOFF_MS * 2);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// This process's producer id, asking a broker for one if it has none.
    async fn producer_id(&mut self) -> Option<(i64, i16)> {
        if self.producer.is_none() {
            let broker = self.bootstrap[self.rng.random_range(0..self.bootstrap.len())].clone();
            let request = InitProducerIdRequest::default().with_transaction_timeout_ms(60_000);
            let answer: InitProducerIdResponse =
                match self.ask(&broker, ApiKey::InitProducerId, INIT_PRODUCER_ID_VERSION, &request).await {
                    Ok(answer) => answer,
                    Err((_, why)) => {
                        tracing::debug!(process = self.process.0, %why, "kafka: InitProducerId failed");
                        return None;
                    }
                };
            if answer.error_code != 0 {
                tracing::debug!(process = self.process.0, code = answer.error_code, "kafka: InitProducerId refused");
            } else if answer.producer_id.0 >= 0 {
                self.producer = Some((answer.producer_id.0, answer.producer_epoch));
                self.sequences.clear();
            }
        }
        self.producer
    }

    /// The partition leader's Kafka address, from any broker's metadata.
    async fn leader(&mut self, partition: u32) -> Result<String, (Option<i16>, String)> {
        let broker = self.bootstrap[self.rng.random_range(0..self.bootstrap.len())].clone();
        let topic = metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(s(&self.topic))));
        let request = MetadataRequest::default().with_topics(Some(vec![topic]));
        let answer: MetadataResponse = self.ask(&broker, ApiKey::Metadata, METADATA_VERSION, &request).await?;
        let leader = answer
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition as i32 && p.error_code == 0)
            .map(|p| p.leader_id.0)
            .ok_or((Some(5), format!("no leader of {partition} in {broker}'s metadata")))?;
        answer
            .brokers
            .iter()
            .find(|b| b.node_id.0 == leader)
            .map(|b| format!("{}:{}", b.host.as_str(), b.port))
            .ok_or((Some(5), format!("leader {leader} has no Kafka address")))
    }

    /// One try: the leader from the metadata, then the batch. `Err`: the Kafka code (none for a
    /// connection that broke or a reply that did not come) and why.
    async fn produce_once(&mut self, partition: u32, batch: Bytes) -> Result<i64, (Option<i16>, String)> {
        let leader = match self.leaders.remove(&partition) {
            Some(leader) => leader,
            None => self.leader(partition).await?,
        };
        let data =
            produce_request::PartitionProduceData::default().with_index(partition as i32).with_records(Some(batch));
        let topic = produce_request::TopicProduceData::default()
            .with_name(TopicName(s(&self.topic)))
            .with_partition_data(vec![data]);
        let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(2_000).with_topic_data(vec![topic]);
        let answer: ProduceResponse = self.ask(&leader, ApiKey::Produce, PRODUCE_VERSION, &request).await?;
        let result = answer
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or((None, "an empty produce answer".to_owned()))?;
        match result.error_code {
            0 => {
                self.leaders.insert(partition, leader);
                Ok(result.base_offset)
            }
            code => Err((Some(code), format!("error {code} from {leader}"))),
        }
    }

    /// One request on the connection to `addr` (opened if needed); the connection is dropped on
    /// any failure, so the next try opens a new one.
    async fn ask<R: Encodable, A: Decodable>(
        &mut self,
        addr: &str,
        api: ApiKey,
        version: i16,
        request: &R,
    ) -> Result<A, (Option<i16>, String)> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let id = self.correlation_id;
        let frame = encode_frame(api, version, id, request).map_err(|e| (None, e))?;
        let stream = match self.connections.remove(addr) {
            Some(stream) => stream,
            None => connect(addr).await.map_err(|e| (None, e))?,
        };
        let call = exchange(stream, frame, api, version, id);
        match tokio::time::timeout(Duration::from_millis(REQUEST_MS_MAX), call).await {
            Ok(Ok((stream, answer))) => {
                self.connections.insert(addr.to_owned(), stream);
                Ok(answer)
            }
            Ok(Err(error)) => Err((None, format!("{addr}: {error}"))),
            Err(_) => Err((None, format!("{addr}: no answer within {REQUEST_MS_MAX} ms"))),
        }
    }
}

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

async fn connect(addr: &str) -> Result<TcpStream, String> {
    let connect = TcpStream::connect(addr);
    match tokio::time::timeout(Duration::from_millis(REQUEST_MS_MAX), connect).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(format!("connect {addr}: {error}")),
        Err(_) => Err(format!("connect {addr}: timed out")),
    }
}

fn encode_frame<R: Encodable>(api: ApiKey, version: i16, id: i32, request: &R) -> Result<Bytes, String> {
    let mut body = BytesMut::new();
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(id)
        .with_client_id(Some(s("keel-sim")));
    header.encode(&mut body, api.request_header_version(version)).map_err(|e| e.to_string())?;
    request.encode(&mut body, version).map_err(|e| e.to_string())?;
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_i32(body.len() as i32);
    frame.put_slice(&body);
    Ok(frame.freeze())
}

/// Writes one request and reads its answer (every request here gets one).
async fn exchange<A: Decodable>(
    mut stream: TcpStream,
    frame: Bytes,
    api: ApiKey,
    version: i16,
    id: i32,
) -> Result<(TcpStream, A), String> {
    stream.write_all(&frame).await.map_err(|e| e.to_string())?;
    // madsim's stream sends what was written only at a flush.
    stream.flush().await.map_err(|e| e.to_string())?;
    let length = stream.read_i32().await.map_err(|e| e.to_string())?;
    let length = usize::try_from(length).map_err(|_| format!("a negative answer length {length}"))?;
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    let mut body = Bytes::from(body);
    let header = ResponseHeader::decode(&mut body, api.response_header_version(version)).map_err(|e| e.to_string())?;
    if header.correlation_id != id {
        return Err(format!("answer {} to request {id}", header.correlation_id));
    }
    let answer = A::decode(&mut body, version).map_err(|e| e.to_string())?;
    if body.has_remaining() {
        return Err(format!("{} bytes after a {api:?} answer", body.remaining()));
    }
    Ok((stream, answer))
}
