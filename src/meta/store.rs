//! `MetaStore`: the narrow key-value interface under the Raft log and the metadata state machine.
//!
//! Two implementations hold one contract (ADR 0005):
//! - `store_rocks::RocksStore` (normal build only): RocksDB, linked from Debian's `librocksdb-dev`;
//! - `store_sim::SimKv` (both builds): an in-memory store whose crash drops unsynced batches.
//!
//! # Contract
//! - `write` applies a whole [`WriteBatch`] atomically: after any crash, either all of its ops are
//!   visible or none are.
//! - `write(batch, sync = true)` returns only when `batch` **and every batch written before it** are
//!   durable (RocksDB's WAL semantics). An unsynced batch may be lost by a crash; if it is, every
//!   later batch is lost too (batches survive as a prefix, in write order).
//! - Reads see every batch written so far, synced or not.
//! - Keys and values are arbitrary bytes; `scan` returns pairs in byte order of the key.

/// One operation of a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Operations applied atomically, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut WriteBatch {
        self.ops.push(WriteOp::Put { key: key.into(), value: value.into() });
        self
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut WriteBatch {
        self.ops.push(WriteOp::Delete { key: key.into() });
        self
    }

    pub fn delete_range(&mut self, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> &mut WriteBatch {
        self.ops.push(WriteOp::DeleteRange { start: start.into(), end: end.into() });
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaStoreError {
    #[error("metadata store I/O error: {0}")]
    Io(String),
    #[error("metadata store corrupt: {0}")]
    Corrupt(String),
    /// The handle belongs to a process incarnation that crashed (simulation).
    #[error("metadata store handle is stale (the node crashed)")]
    Stale,
}

/// Key-value pairs in key order, as `scan` returns them.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

pub trait MetaStore: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaStoreError>;
    /// Every pair with `start <= key < end`, in key order.
    fn scan(&self, start: &[u8], end: &[u8]) -> Result<KeyValues, MetaStoreError>;
    /// Applies `batch` atomically; with `sync`, it and all earlier batches are durable on return.
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), MetaStoreError>;
}
