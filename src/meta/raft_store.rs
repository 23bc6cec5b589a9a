//! The Raft log, hard state and snapshot: in memory for raft-rs (`raft::Storage`), persisted in a
//! [`MetaStore`].
//!
//! Layout in the store (all values are raft-rs protobuf encodings; RocksDB checksums its own WAL and
//! tables, and `SimKv` models the same atomic-batch semantics):
//! - `raft/hs`: `HardState` (term, vote, commit);
//! - `raft/cs`: `ConfState` (the voters);
//! - `raft/log/<index as 8 big-endian bytes>`: one `Entry` per index, after the snapshot;
//! - `raft/snap`: the latest `Snapshot` (metadata + the metadata state machine's snapshot bytes).
//!
//! Ordering (the raft-rs contract, made concrete): [`RaftStore::persist`] writes new entries, a
//! truncated suffix and the hard state in **one** atomic, synced batch, and the driver sends the
//! messages that depend on them (`persisted_messages`: votes, append responses) only after it
//! returns. A crash before the batch is durable loses the batch whole, so a vote is never sent
//! without the hard state that records it. If the application restarted after applying entries but
//! before a new snapshot, it re-applies them from the log: applying is deterministic and the state
//! machine is rebuilt from the snapshot plus the committed log on every start.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::store::{MetaStore, MetaStoreError, WriteBatch};

const KEY_HARD_STATE: &[u8] = b"raft/hs";
const KEY_CONF_STATE: &[u8] = b"raft/cs";
const KEY_SNAPSHOT: &[u8] = b"raft/snap";
const KEY_LOG_PREFIX: &[u8] = b"raft/log/";

fn log_key(index: u64) -> Vec<u8> {
    let mut key = KEY_LOG_PREFIX.to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn decode<M: protobuf::Message>(what: &str, bytes: &[u8]) -> Result<M, MetaStoreError> {
    M::parse_from_bytes(bytes).map_err(|error| MetaStoreError::Corrupt(format!("{what}: {error}")))
}

fn encode<M: protobuf::Message>(message: &M) -> Vec<u8> {
    message.write_to_bytes().expect("encoding a raft message into a Vec cannot fail")
}

/// raft-rs's view of the log. Entries start right after the snapshot.
#[derive(Debug, Clone)]
pub struct RaftStore {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
}

impl RaftStore {
    /// Loads what `store` holds, or initialises a fresh group with `voters` when it holds nothing.
    pub fn load(store: &dyn MetaStore, voters: &[u64]) -> Result<RaftStore, MetaStoreError> {
        let snapshot: Snapshot = match store.get(KEY_SNAPSHOT)? {
            Some(bytes) => decode("snapshot", &bytes)?,
            None => Snapshot::default(),
        };
        let conf_state: ConfState = match store.get(KEY_CONF_STATE)? {
            Some(bytes) => decode("conf state", &bytes)?,
            None => ConfState { voters: voters.to_vec(), ..ConfState::default() },
        };
        let hard_state: HardState = match store.get(KEY_HARD_STATE)? {
            Some(bytes) => decode("hard state", &bytes)?,
            None => HardState::default(),
        };
        let snapshot_index = snapshot.get_metadata().index;
        let mut entries = Vec::new();
        for (key, value) in store.scan(&log_key(snapshot_index + 1), &log_key(u64::MAX))? {
            let entry: Entry = decode("log entry", &value)?;
            let expected = snapshot_index + 1 + entries.len() as u64;
            if entry.index != expected || key != log_key(entry.index) {
                return Err(MetaStoreError::Corrupt(format!(
                    "raft log has a gap: expected index {expected}, found {}",
                    entry.index
                )));
            }
            entries.push(entry);
        }
        let store = RaftStore { hard_state, conf_state, snapshot, entries };
        if store.hard_state.commit > store.last_index_inner() {
            return Err(MetaStoreError::Corrupt(format!(
                "hard state commit {} is past the last log index {}",
                store.hard_state.commit,
                store.last_index_inner()
            )));
        }
        Ok(store)
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn last_index_inner(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }

    fn term_inner(&self, index: u64) -> Option<u64> {
        let snapshot_index = self.snapshot_index();
        if index == snapshot_index {
            return Some(self.snapshot.get_metadata().term);
        }
        if index < snapshot_index || index > self.last_index_inner() {
            return None;
        }
        Some(self.entries[(index - snapshot_index - 1) as usize].term)
    }

    /// Persists new entries (replacing any conflicting suffix) and the hard state in one synced
    /// batch, then updates memory. Call before sending `persisted_messages`.
    pub fn persist(
        &mut self,
        store: &dyn MetaStore,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), MetaStoreError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        if let Some(first) = entries.first() {
            assert!(
                first.index > self.snapshot_index(),
                "raft asked to overwrite compacted entries: first {} <= snapshot {}",
                first.index,
                self.snapshot_index()
            );
            assert!(
                first.index <= self.last_index_inner() + 1,
                "raft log gap: appending {} after last index {}",
                first.index,
                self.last_index_inner()
            );
            batch.delete_range(log_key(first.index), log_key(u64::MAX));
            for entry in entries {
                batch.put(log_key(entry.index), encode(entry));
            }
        }
        if let Some(hard_state) = hard_state {
            batch.put(KEY_HARD_STATE, encode(hard_state));
        }
        store.write(batch, true)?;
        if let Some(first) = entries.first() {
            let keep = (first.index - self.snapshot_index() - 1) as usize;
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
        }
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state.clone();
        }
        Ok(())
    }

    /// Installs a snapshot received from the leader: replaces the log and the conf state.
    pub fn apply_snapshot(&mut self, store: &dyn MetaStore, snapshot: &Snapshot) -> Result<(), MetaStoreError> {
        let metadata = snapshot.get_metadata();
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = hard_state.commit.max(metadata.index);
        hard_state.term = hard_state.term.max(metadata.term);
        let mut batch = WriteBatch::new();
        batch.delete_range(log_key(0), log_key(u64::MAX));
        batch.put(KEY_SNAPSHOT, encode(snapshot));
        batch.put(KEY_CONF_STATE, encode(metadata.get_conf_state()));
        batch.put(KEY_HARD_STATE, encode(&hard_state));
        store.write(batch, true)?;
        self.snapshot = snapshot.clone();
        self.conf_state = metadata.get_conf_state().clone();
        self.hard_state = hard_state;
        self.entries.clear();
        Ok(())
    }

    /// Takes a snapshot at `applied` (which must be committed and applied) holding `data`, and drops
    /// the log up to it.
    pub fn compact(&mut self, store: &dyn MetaStore, applied: u64, data: Vec<u8>) -> Result<(), MetaStoreError> {
        if applied <= self.snapshot_index() {
            return Ok(());
        }
        assert!(applied <= self.hard_state.commit, "compacting past the commit index");
        let term = self.term_inner(applied).expect("applied index is in the log");
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let metadata = snapshot.mut_metadata();
        metadata.index = applied;
        metadata.term = term;
        metadata.set_conf_state(self.conf_state.clone());
        let mut batch = WriteBatch::new();
        batch.put(KEY_SNAPSHOT, encode(&snapshot));
        batch.put(KEY_CONF_STATE, encode(&self.conf_state));
        batch.delete_range(log_key(0), log_key(applied + 1));
        store.write(batch, true)?;
        let drop = (applied - self.snapshot_index()) as usize;
        self.entries.drain(..drop);
        self.snapshot = snapshot;
        Ok(())
    }
}

fn unavailable() -> raft::Error {
    raft::Error::Store(StorageError::Unavailable)
}

impl Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index_inner() + 1 || low > high {
            return Err(unavailable());
        }
        let offset = self.snapshot_index() + 1;
        let mut entries = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.snapshot_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_inner(index).ok_or_else(unavailable)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_inner())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_index() < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::store_sim::SimKv;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: vec![index as u8].into(), ..Entry::default() }
    }

    fn hard_state(term: u64, commit: u64) -> HardState {
        HardState { term, vote: 1, commit, ..HardState::default() }
    }

    #[test]
    fn persisted_log_survives_a_crash_and_unsynced_nothing_is_half_written() {
        let disk = SimKv::new(1);
        let handle = disk.open();
        let mut store = RaftStore::load(&handle, &[1, 2, 3]).unwrap();
        store.persist(&handle, &[entry(1, 1), entry(2, 1), entry(3, 1)], Some(&hard_state(1, 2))).unwrap();
        // A leader change overwrites the uncommitted suffix.
        store.persist(&handle, &[entry(3, 2), entry(4, 2)], Some(&hard_state(2, 3))).unwrap();
        disk.crash();
        let handle = disk.open();
        let loaded = RaftStore::load(&handle, &[1, 2, 3]).unwrap();
        assert_eq!(loaded.last_index().unwrap(), 4);
        assert_eq!(loaded.term(3).unwrap(), 2);
        assert_eq!(loaded.hard_state().commit, 3);
        assert_eq!(loaded.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
    }

    #[test]
    fn compaction_keeps_the_tail_and_serves_the_snapshot() {
        let disk = SimKv::new(2);
        let handle = disk.open();
        let mut store = RaftStore::load(&handle, &[1]).unwrap();
        let entries: Vec<_> = (1..=10).map(|i| entry(i, 1)).collect();
        store.persist(&handle, &entries, Some(&hard_state(1, 8))).unwrap();
        store.compact(&handle, 6, b"state@6".to_vec()).unwrap();
        assert_eq!(store.first_index().unwrap(), 7);
        assert_eq!(store.term(6).unwrap(), 1);
        assert!(matches!(store.term(5), Err(raft::Error::Store(StorageError::Compacted))));
        assert!(matches!(
            store.entries(5, 8, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(store.entries(7, 11, None, GetEntriesContext::empty(false)).unwrap().len(), 4);
        assert_eq!(store.snapshot(0, 2).unwrap().get_data(), b"state@6");
        disk.crash();
        let loaded = RaftStore::load(&disk.open(), &[1]).unwrap();
        assert_eq!(loaded.first_index().unwrap(), 7);
        assert_eq!(loaded.last_index().unwrap(), 10);
        assert_eq!(loaded.snapshot_ref().get_data(), b"state@6");
    }

    #[test]
    fn installing_a_snapshot_replaces_the_log() {
        let disk = SimKv::new(3);
        let handle = disk.open();
        let mut store = RaftStore::load(&handle, &[1, 2, 3]).unwrap();
        store.persist(&handle, &[entry(1, 1), entry(2, 1)], Some(&hard_state(1, 1))).unwrap();
        let mut snapshot = Snapshot::default();
        snapshot.set_data(b"leader state".to_vec().into());
        snapshot.mut_metadata().index = 20;
        snapshot.mut_metadata().term = 3;
        snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        store.apply_snapshot(&handle, &snapshot).unwrap();
        assert_eq!(store.first_index().unwrap(), 21);
        assert_eq!(store.last_index().unwrap(), 20);
        assert_eq!(store.hard_state().commit, 20);
        let loaded = RaftStore::load(&disk.open(), &[1, 2, 3]).unwrap();
        assert_eq!(loaded.last_index().unwrap(), 20);
        assert_eq!(loaded.term(20).unwrap(), 3);
    }
}
