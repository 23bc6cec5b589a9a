//! The topic registry: which topics exist, their partition actors, and their metadata on disk.
//!
//! A topic exists exactly when its metadata file `meta/topics/<name>.topic` exists and is valid.
//! The file is `b"KTM1"`, a u32 payload length, a JSON payload and the payload's CRC32C (all
//! big-endian). Partition data lives in `data/<name>/<partition>/`.
//!
//! Ordering rules that keep a crash at any point consistent:
//! - create: remove leftover data dirs of an earlier incarnation, write + fsync the metadata file,
//!   fsync its directory, then open the partitions. A crash before the directory fsync leaves no topic.
//! - delete: stop the partitions, remove the metadata file and fsync its directory (the topic is now
//!   gone), then remove the data. Leftover data of a deleted topic is removed by the next create.
//!
//! Lock order: `admin` (tokio mutex, held across awaits, only by create/delete/open) before `topics`
//! (std RwLock, never held across an await).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::log::LogConfig;
use crate::partition::{spawn_partition, CoreConfig, PartitionHandle, PartitionSpec};
use crate::protocol::ErrorCode;
use crate::storage::{Disk, DiskFile};

/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
const META_DIR: &str = "meta/topics";
const META_MAGIC: &[u8; 4] = b"KTM1";
const META_PAYLOAD_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicMeta {
    pub version: u32,
    pub name: String,
    pub partitions: u32,
}

pub struct Topic {
    pub meta: TopicMeta,
    pub partitions: Vec<PartitionHandle>,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TopicError {
    pub code: ErrorCode,
    pub message: String,
}

impl TopicError {
    fn new(code: ErrorCode, message: impl Into<String>) -> TopicError {
        TopicError { code, message: message.into() }
    }
}

pub struct Topics<D: Disk> {
    disk: D,
    log_config: LogConfig,
    core_config: CoreConfig,
    topics_max: usize,
    partitions_per_topic_max: u32,
    admin: tokio::sync::Mutex<()>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
}

/// Kafka's rule: 1-249 characters from `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    let valid_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX || !valid_chars || name == "." || name == ".." {
        return Err(TopicError::new(
            ErrorCode::InvalidTopicName,
            format!("invalid topic name {name:?}: use 1-{TOPIC_NAME_BYTES_MAX} characters from [a-zA-Z0-9._-]"),
        ));
    }
    Ok(())
}

fn encode_meta(meta: &TopicMeta) -> Vec<u8> {
    let payload = serde_json::to_vec(meta).expect("TopicMeta serializes");
    let mut out = Vec::with_capacity(payload.len() + 12);
    out.extend_from_slice(META_MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    out
}

fn decode_meta(bytes: &[u8]) -> Result<TopicMeta, String> {
    if bytes.len() < 12 || &bytes[..4] != META_MAGIC {
        return Err("bad magic or truncated".into());
    }
    let len = u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize;
    if len > META_PAYLOAD_BYTES_MAX || bytes.len() != 12 + len {
        return Err(format!("bad length {len} for a {}-byte file", bytes.len()));
    }
    let payload = &bytes[8..8 + len];
    let stored = u32::from_be_bytes(bytes[8 + len..].try_into().unwrap());
    if crc32c::crc32c(payload) != stored {
        return Err("CRC mismatch".into());
    }
    serde_json::from_slice(payload).map_err(|error| error.to_string())
}

impl<D: Disk> Topics<D> {
    pub fn new(
        disk: D,
        log_config: LogConfig,
        core_config: CoreConfig,
        topics_max: usize,
        partitions_per_topic_max: u32,
    ) -> Topics<D> {
        Topics {
            disk,
            log_config,
            core_config,
            topics_max,
            partitions_per_topic_max,
            admin: tokio::sync::Mutex::new(()),
            topics: RwLock::new(BTreeMap::new()),
        }
    }

    /// Loads every valid topic on disk and opens (recovers) its partitions.
    pub async fn load(&self) -> Result<(), TopicError> {
        let _admin = self.admin.lock().await;
        let names = self.disk.list(META_DIR).map_err(storage_error)?;
        for file_name in names {
            let Some(name) = file_name.strip_suffix(".topic") else { continue };
            let path = format!("{META_DIR}/{file_name}");
            let bytes = self.read_whole(&path).map_err(storage_error)?;
            let meta = match decode_meta(&bytes) {
                Ok(meta) if meta.name == name => meta,
                Ok(meta) => {
                    tracing::error!(%path, found = %meta.name, "topic metadata names another topic; skipping it");
                    continue;
                }
                Err(reason) => {
                    // Never delete data because its metadata is unreadable: an operator decides.
                    tracing::error!(%path, %reason, "corrupt topic metadata; topic not served");
                    continue;
                }
            };
            let topic = self.open_partitions(meta).await;
            self.topics.write().expect("topics lock").insert(name.to_owned(), Arc::new(topic));
        }
        Ok(())
    }

    fn read_whole(&self, path: &str) -> std::io::Result<Vec<u8>> {
        let file = self.disk.open(path, false)?;
        let len = file.len()? as usize;
        if len > META_PAYLOAD_BYTES_MAX + 12 {
            return Ok(Vec::new()); // decode_meta rejects it with a clear reason
        }
        Ok(file.read_at(0, len)?.to_vec())
    }

    async fn open_partitions(&self, meta: TopicMeta) -> Topic {
        let mut partitions = Vec::with_capacity(meta.partitions as usize);
        for partition in 0..meta.partitions {
            let spec = PartitionSpec {
                disk: self.disk.clone(),
                dir: format!("data/{}/{partition}", meta.name),
                name: format!("{}/{partition}", meta.name),
                log_config: self.log_config.clone(),
                core_config: self.core_config.clone(),
            };
            let handle = spawn_partition(spec).await;
            partitions.push(handle);
        }
        Topic { meta, partitions }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    pub fn partition(&self, name: &str, partition: u32) -> Result<PartitionHandle, TopicError> {
        let topic = self
            .get(name)
            .ok_or_else(|| TopicError::new(ErrorCode::UnknownTopic, format!("unknown topic {name:?}")))?;
        topic.partitions.get(partition as usize).cloned().ok_or_else(|| {
            TopicError::new(
                ErrorCode::UnknownPartition,
                format!("topic {name:?} has {} partitions; there is no partition {partition}", topic.partitions.len()),
            )
        })
    }

    pub fn list(&self) -> Vec<Arc<Topic>> {
        self.topics.read().expect("topics lock").values().cloned().collect()
    }

    pub async fn create(&self, name: &str, partitions: u32, replication: u32) -> Result<(), TopicError> {
        validate_topic_name(name)?;
        if partitions == 0 || partitions > self.partitions_per_topic_max {
            return Err(TopicError::new(
                ErrorCode::InvalidPartitions,
                format!("partitions must be between 1 and {}, got {partitions}", self.partitions_per_topic_max),
            ));
        }
        if replication > 1 {
            return Err(TopicError::new(
                ErrorCode::InvalidReplication,
                format!("replication factor {replication} is larger than the 1 live broker"),
            ));
        }
        let _admin = self.admin.lock().await;
        if self.get(name).is_some() {
            return Err(TopicError::new(ErrorCode::TopicAlreadyExists, format!("topic {name:?} already exists")));
        }
        if self.topics.read().expect("topics lock").len() >= self.topics_max {
            return Err(TopicError::new(ErrorCode::InvalidRequest, format!("at most {} topics", self.topics_max)));
        }
        // Data left behind by a crashed create or delete of the same name is not this topic's.
        let data_dir = format!("data/{name}");
        self.disk.create_dir_all("data").map_err(storage_error)?;
        remove_dir_if_present(&self.disk, &data_dir)?;
        self.disk.sync_dir("data").await.map_err(storage_error)?;

        let meta = TopicMeta { version: 1, name: name.to_owned(), partitions };
        self.disk.create_dir_all(META_DIR).map_err(storage_error)?;
        let path = format!("{META_DIR}/{name}.topic");
        let file = self.disk.open(&path, true).map_err(storage_error)?;
        file.set_len(0).map_err(storage_error)?;
        file.write_at(0, &encode_meta(&meta)).map_err(storage_error)?;
        file.sync().await.map_err(storage_error)?;
        self.disk.sync_dir(META_DIR).await.map_err(storage_error)?;

        let topic = self.open_partitions(meta).await;
        self.topics.write().expect("topics lock").insert(name.to_owned(), Arc::new(topic));
        tracing::info!(topic = name, partitions, "topic created");
        Ok(())
    }

    pub async fn delete(&self, name: &str) -> Result<(), TopicError> {
        validate_topic_name(name)?;
        let _admin = self.admin.lock().await;
        let topic = self.topics.write().expect("topics lock").remove(name);
        let Some(topic) = topic else {
            return Err(TopicError::new(ErrorCode::UnknownTopic, format!("unknown topic {name:?}")));
        };
        for partition in &topic.partitions {
            if let Err(error) = partition.stop().await {
                tracing::warn!(topic = name, %error, "partition did not close cleanly during delete");
            }
        }
        self.disk.remove(&format!("{META_DIR}/{name}.topic")).map_err(storage_error)?;
        self.disk.sync_dir(META_DIR).await.map_err(storage_error)?;
        remove_dir_if_present(&self.disk, &format!("data/{name}"))?;
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Stops every partition (each fsyncs what it wrote). Used on graceful shutdown.
    pub async fn stop_all(&self) -> Result<(), String> {
        let _admin = self.admin.lock().await;
        let topics: Vec<_> = std::mem::take(&mut *self.topics.write().expect("topics lock")).into_values().collect();
        let mut first_error = None;
        for topic in topics {
            for partition in &topic.partitions {
                if let Err(error) = partition.stop().await {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn remove_dir_if_present<D: Disk>(disk: &D, dir: &str) -> Result<(), TopicError> {
    match disk.remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(storage_error(error)),
        _ => Ok(()),
    }
}

fn storage_error(error: std::io::Error) -> TopicError {
    TopicError::new(ErrorCode::StorageError, format!("storage error: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for good in ["a", "orders", "orders.v2", "x_y-z", &"a".repeat(249)] {
            assert!(validate_topic_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"a".repeat(250), "../etc"] {
            assert_eq!(validate_topic_name(bad).unwrap_err().code, ErrorCode::InvalidTopicName, "{bad}");
        }
    }

    #[test]
    fn metadata_round_trips_and_detects_corruption() {
        let meta = TopicMeta { version: 1, name: "t".into(), partitions: 3 };
        let bytes = encode_meta(&meta);
        assert_eq!(decode_meta(&bytes).unwrap(), meta);
        for index in 0..bytes.len() {
            let mut corrupt = bytes.clone();
            corrupt[index] ^= 0x40;
            assert!(decode_meta(&corrupt).is_err(), "flip at {index} unnoticed");
        }
        assert!(decode_meta(&bytes[..bytes.len() - 1]).is_err());
    }
}
