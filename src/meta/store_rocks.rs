//! `RocksStore`: the [`MetaStore`] of the normal build, one RocksDB database in one directory.
//!
//! In: [`WriteBatch`]es, point reads and range scans. Out: the same contract as every `MetaStore`
//! (see `store.rs`): a batch is one RocksDB write batch, so it is atomic; `sync = true` is
//! `WriteOptions::set_sync(true)`, which fsyncs the WAL up to and including this batch, so every
//! earlier batch is durable too; WAL recovery is point-in-time, so a crash keeps a prefix of batches.
//!
//! # Errors
//! Every RocksDB error becomes a typed [`MetaStoreError`]: `Corruption` maps to
//! [`MetaStoreError::Corrupt`], everything else to [`MetaStoreError::Io`]. Nothing here panics.
//!
//! # Threads
//! RocksDB runs its own background threads (flush, compaction), which the simulation cannot host.
//! This module is therefore compiled out under `--cfg madsim`, where `store_sim::SimKv` stands in.

use std::path::{Path, PathBuf};

use rocksdb::{DBRecoveryMode, Direction, IteratorMode, Options, ReadOptions, WriteOptions, DB};

use super::store::{MetaStore, MetaStoreError, WriteBatch, WriteOp};

/// RocksDB's own info logs (`LOG`, `LOG.old.*`) kept in the directory; the metadata DB is small and
/// these are only for debugging.
const INFO_LOG_FILES_KEPT_MAX: usize = 4;
/// Background flush/compaction jobs: metadata is a few megabytes, one or two jobs are plenty.
const BACKGROUND_JOBS_MAX: i32 = 2;
/// Memtable size before a flush. Metadata (Raft log entries, hard state, applied state) is small;
/// RocksDB's 64 MiB default would only make each open touch a larger arena.
const WRITE_BUFFER_BYTES: usize = 4 << 20;

/// A RocksDB database used as the metadata key-value store.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn map_error(error: rocksdb::Error) -> MetaStoreError {
    match error.kind() {
        rocksdb::ErrorKind::Corruption => MetaStoreError::Corrupt(error.into_string()),
        _ => MetaStoreError::Io(error.into_string()),
    }
}

impl RocksStore {
    /// Opens the database in `path`, creating the directory and the database if they are missing.
    pub fn open(path: &Path) -> Result<RocksStore, MetaStoreError> {
        std::fs::create_dir_all(path)
            .map_err(|error| MetaStoreError::Io(format!("cannot create {}: {error}", path.display())))?;
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_keep_log_file_num(INFO_LOG_FILES_KEPT_MAX);
        options.set_max_background_jobs(BACKGROUND_JOBS_MAX);
        options.set_write_buffer_size(WRITE_BUFFER_BYTES);
        // After a crash, recover the WAL up to the first damaged record and no further: what survives
        // is a prefix of the batches, as the contract says. (This is RocksDB's default; it is spelled
        // out because the contract depends on it.)
        options.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        options.set_paranoid_checks(true);
        let db = DB::open(&options, path).map_err(map_error)?;
        Ok(RocksStore { db, path: path.to_path_buf() })
    }

    /// The directory this database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl MetaStore for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaStoreError> {
        self.db.get(key).map_err(map_error)
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, MetaStoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(end);
        let mut pairs = Vec::new();
        for item in self.db.iterator_opt(IteratorMode::From(start, Direction::Forward), read_options) {
            let (key, value) = item.map_err(map_error)?;
            // The upper bound already stops the iterator; this guards the contract on its own.
            if &*key >= end {
                break;
            }
            pairs.push((key.into_vec(), value.into_vec()));
        }
        Ok(pairs)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), MetaStoreError> {
        let mut rocks_batch = rocksdb::WriteBatch::default();
        for op in &batch.ops {
            match op {
                WriteOp::Put { key, value } => rocks_batch.put(key, value),
                WriteOp::Delete { key } => rocks_batch.delete(key),
                // An empty or inverted range deletes nothing by the contract; RocksDB may reject an
                // inverted one, so it never sees it.
                WriteOp::DeleteRange { start, end } if start >= end => {}
                WriteOp::DeleteRange { start, end } => rocks_batch.delete_range(start, end),
            }
        }
        let mut write_options = WriteOptions::default();
        write_options.set_sync(sync);
        self.db.write_opt(rocks_batch, &write_options).map_err(map_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_missing_directories_and_data_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/meta");
        {
            let store = RocksStore::open(&path).unwrap();
            let mut batch = WriteBatch::new();
            batch.put(b"k1".to_vec(), b"v1".to_vec()).put(b"k2".to_vec(), b"v2".to_vec()).put(b"k3".to_vec(), b"v3");
            store.write(batch, false).unwrap();
            let mut batch = WriteBatch::new();
            batch.delete(b"k1".to_vec()).delete_range(b"k3".to_vec(), b"k4".to_vec()).delete_range(b"z", b"a");
            store.write(batch, true).unwrap();
        }
        let store = RocksStore::open(&path).unwrap();
        assert_eq!(store.get(b"k1").unwrap(), None);
        assert_eq!(store.get(b"k2").unwrap(), Some(b"v2".to_vec()));
        assert_eq!(store.scan(b"", b"\xff").unwrap(), vec![(b"k2".to_vec(), b"v2".to_vec())]);
        assert!(store.scan(b"z", b"a").unwrap().is_empty());
    }

    #[test]
    fn open_errors_are_typed_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"not a directory").unwrap();
        assert!(matches!(RocksStore::open(&file), Err(MetaStoreError::Io(_))));
        // A second open of the same directory fails on RocksDB's LOCK file.
        let path = dir.path().join("db");
        let _store = RocksStore::open(&path).unwrap();
        assert!(matches!(RocksStore::open(&path), Err(MetaStoreError::Io(_))));
    }
}
