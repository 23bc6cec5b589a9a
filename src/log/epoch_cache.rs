//! The persisted leader-epoch cache: [`LeaderEpochs`] in a file of fixed-size CRC'd entries.
//!
//! In: `assign`, `truncate_from_end`, `truncate_from_start`, `sync`. Out: the same lookups as
//! [`LeaderEpochs`] (it derefs to it), and after a crash a cache that matches the recovered log.
//!
//! # Format
//! One file, `leader-epoch.cache`, in the partition's directory (the log's recovery ignores names that
//! are not segment files). An array of 16-byte big-endian entries:
//!
//! ```text
//! epoch i32 | start_offset i64 | crc u32      crc = crc32c_append(crc32c("keel-epoch"), epoch | start)
//! ```
//!
//! The CRC is seeded so that an index entry (or any other 12-byte payload with a plain CRC) is never
//! taken for an epoch entry. The file holds the entries in order; the in-memory list is the file's
//! list after `truncate_from_start` (which is not written: see below).
//!
//! # Recovery ([`EpochCache::open`])
//! Entries are read until the first one that is short (torn), fails its CRC, or breaks the ordering
//! (epochs and start offsets strictly increasing); the file is cut there. Then entries that start at
//! or after the recovered log end are dropped (they own no batch: a leader that took over and wrote
//! nothing, or an assign whose batches the crash took), the cut is synced, and `truncate_from_start`
//! is applied with the log start.
//!
//! A bit flip in an entry in the middle of the file looks like a torn tail: that entry and every
//! later one are dropped, although the log may still hold batches of those epochs (an entry's CRC
//! says that it is wrong, not what it said). The owner must then cut the log where the cache stops
//! describing it: [`super::PartitionLog::epoch_mismatch`] compares the cache with the epochs the
//! log's batches carry and gives the first offset where they disagree (it also catches a flipped
//! epoch field in a batch, which the batch CRC does not cover). Cut the log there, sync, then cut the
//! cache (the order below), and fetch the rest from the leader.
//!
//! # Durability rules the owner follows (the replica shell's contract, `partition::replica`)
//! - `assign` writes one entry (cutting the file first if entries were replaced). **Await `sync`
//!   before writing any batch of the new epoch to the log**: then a durable batch always has a durable
//!   epoch entry, and an entry without durable batches is dropped by the next recovery.
//! - `truncate_from_end` cuts the file (`set_len`). **Truncate the log and sync it first, then truncate
//!   the cache and sync it, and append to the log only after both**: if the cache's cut were durable
//!   and the log's were not, a crash would bring back batches whose epoch the cache forgot (and a
//!   later fetch would miss the divergence); the other way round, recovery drops the extra entries.
//! - `truncate_from_start` (retention) changes memory only; the owner passes the log start to `open`,
//!   which applies it again. The file keeps one entry per leader change ever made, 16 bytes each.

use std::future::Future;
use std::io;
use std::pin::Pin;

use crate::leader_epochs::{Assigned, EpochEntry, EpochOrderError, LeaderEpochs};
use crate::storage::{Disk, DiskFile};
use crate::types::{LeaderEpoch, Offset};

pub const EPOCH_ENTRY_BYTES: usize = 16;
pub const EPOCH_CACHE_FILE: &str = "leader-epoch.cache";

fn entry_crc(payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(b"keel-epoch"), payload)
}

pub fn encode_entry(entry: EpochEntry) -> [u8; EPOCH_ENTRY_BYTES] {
    let mut out = [0u8; EPOCH_ENTRY_BYTES];
    out[0..4].copy_from_slice(&entry.epoch.0.to_be_bytes());
    out[4..12].copy_from_slice(&entry.start_offset.0.to_be_bytes());
    let crc = entry_crc(&out[0..12]);
    out[12..16].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes one entry; `None` when its CRC does not hold.
pub fn decode_entry(raw: &[u8]) -> Option<EpochEntry> {
    if raw.len() != EPOCH_ENTRY_BYTES {
        return None;
    }
    let stored = u32::from_be_bytes(raw[12..16].try_into().expect("4 bytes"));
    if stored != entry_crc(&raw[0..12]) {
        return None;
    }
    let epoch = LeaderEpoch(i32::from_be_bytes(raw[0..4].try_into().expect("4 bytes")));
    let start_offset = Offset(i64::from_be_bytes(raw[4..12].try_into().expect("8 bytes")));
    Some(EpochEntry { epoch, start_offset })
}

#[derive(Debug, thiserror::Error)]
pub enum EpochCacheError {
    #[error("epoch cache I/O error: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Order(#[from] EpochOrderError),
}

/// What [`EpochCache::open`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochCacheRecovery {
    pub entries: usize,
    /// Bytes cut off the file: a torn, corrupt or out-of-order tail.
    pub dropped_tail_bytes: u64,
    /// Entries dropped because they start at or after the recovered log end.
    pub dropped_past_log_end: usize,
}

pub struct EpochCache<F: DiskFile> {
    file: F,
    epochs: LeaderEpochs,
    /// Entries at the front of the file that `truncate_from_start` dropped from memory.
    front_dropped: usize,
    /// The file changed since the last `sync`.
    dirty: bool,
}

impl<F: DiskFile> std::ops::Deref for EpochCache<F> {
    type Target = LeaderEpochs;
    fn deref(&self) -> &LeaderEpochs {
        &self.epochs
    }
}

impl<F: DiskFile> EpochCache<F> {
    /// Opens (creating if missing) and recovers the cache in `dir`, for a log recovered to
    /// `[log_start, log_end)`. See the module doc.
    pub async fn open<D: Disk<File = F>>(
        disk: &D,
        dir: &str,
        log_start: Offset,
        log_end: Offset,
    ) -> Result<(EpochCache<F>, EpochCacheRecovery), EpochCacheError> {
        let dir = dir.trim_end_matches('/');
        disk.create_dir_all(dir)?;
        let file = disk.open(&format!("{dir}/{EPOCH_CACHE_FILE}"), true)?;
        let bytes = file.read_at(0, usize::MAX)?;
        let mut epochs = LeaderEpochs::new();
        let mut valid = 0usize;
        for raw in bytes.chunks(EPOCH_ENTRY_BYTES) {
            let Some(entry) = decode_entry(raw) else { break };
            if !matches!(epochs.assign(entry.epoch, entry.start_offset), Ok(Assigned::Added { replaced: 0 })) {
                break;
            }
            valid += 1;
        }
        let dropped_past_log_end = epochs.truncate_from_end(log_end);
        let kept = epochs.entries().len();
        let dropped_tail_bytes = (bytes.len() - valid * EPOCH_ENTRY_BYTES) as u64;
        if kept * EPOCH_ENTRY_BYTES != bytes.len() {
            if dropped_tail_bytes > 0 {
                tracing::warn!(dir, dropped_tail_bytes, "epoch cache recovery: cutting a torn or corrupt tail");
            }
            file.set_len((kept * EPOCH_ENTRY_BYTES) as u64)?;
        }
        // What recovery decided is made durable before anyone builds on it.
        file.sync().await?;
        disk.sync_dir(dir).await?;
        let mut cache = EpochCache { file, epochs, front_dropped: 0, dirty: false };
        cache.truncate_from_start(log_start);
        let report =
            EpochCacheRecovery { entries: cache.epochs.entries().len(), dropped_tail_bytes, dropped_past_log_end };
        Ok((cache, report))
    }

    pub fn epochs(&self) -> &LeaderEpochs {
        &self.epochs
    }

    /// Records that `epoch` starts at `start_offset` and writes it (not yet durable: see `sync`).
    /// Returns whether anything changed.
    pub fn assign(&mut self, epoch: LeaderEpoch, start_offset: Offset) -> Result<bool, EpochCacheError> {
        let kept_before = self.epochs.entries().len();
        match self.epochs.assign(epoch, start_offset)? {
            Assigned::Unchanged => Ok(false),
            Assigned::Added { replaced } => {
                let kept = kept_before - replaced;
                let entry = EpochEntry { epoch, start_offset };
                if replaced > 0 {
                    self.cut_file(kept)?;
                }
                let position = ((kept + self.front_dropped) * EPOCH_ENTRY_BYTES) as u64;
                self.file.write_at(position, &encode_entry(entry))?;
                self.dirty = true;
                Ok(true)
            }
        }
    }

    /// Drops the epochs that start at or after `offset` (the log was truncated there) from memory and
    /// from the file. See the module doc for the order against the log's own truncation.
    pub fn truncate_from_end(&mut self, offset: Offset) -> Result<usize, EpochCacheError> {
        let removed = self.epochs.truncate_from_end(offset);
        if removed > 0 {
            let kept = self.epochs.entries().len();
            self.cut_file(kept)?;
        }
        Ok(removed)
    }

    /// Retention moved the log start: memory only (module doc).
    pub fn truncate_from_start(&mut self, offset: Offset) {
        let before = self.epochs.entries().len();
        self.epochs.truncate_from_start(offset);
        self.front_dropped += before - self.epochs.entries().len();
    }

    /// Cuts the file to the first `kept` in-memory entries (plus the ones retention dropped from
    /// memory, unless nothing is left, when the file is emptied so recovery finds nothing either).
    fn cut_file(&mut self, kept: usize) -> Result<(), EpochCacheError> {
        if kept == 0 {
            self.front_dropped = 0;
        }
        self.file.set_len(((kept + self.front_dropped) * EPOCH_ENTRY_BYTES) as u64)?;
        self.dirty = true;
        Ok(())
    }

    /// Whether there is anything for `sync` to do.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// A future that makes every change so far durable (a no-op future when nothing changed).
    pub fn sync(&mut self) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'static>> {
        if std::mem::take(&mut self.dirty) {
            Box::pin(self.file.sync())
        } else {
            Box::pin(std::future::ready(Ok(())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::{SimDisk, SimDiskFaults};

    const DIR: &str = "p";

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        futures::executor::block_on(future)
    }

    fn open(disk: &SimDisk, log_end: i64) -> (EpochCache<<SimDisk as Disk>::File>, EpochCacheRecovery) {
        block_on(EpochCache::open(disk, DIR, Offset(0), Offset(log_end))).unwrap()
    }

    fn pairs(cache: &EpochCache<<SimDisk as Disk>::File>) -> Vec<(i32, i64)> {
        cache.entries().iter().map(|entry| (entry.epoch.0, entry.start_offset.0)).collect()
    }

    #[test]
    fn entries_round_trip_and_every_bit_flip_is_caught() {
        let entry = EpochEntry { epoch: LeaderEpoch(7), start_offset: Offset(1234) };
        let raw = encode_entry(entry);
        assert_eq!(decode_entry(&raw), Some(entry));
        for byte in 0..EPOCH_ENTRY_BYTES {
            for bit in 0..8 {
                let mut corrupt = raw;
                corrupt[byte] ^= 1 << bit;
                assert_eq!(decode_entry(&corrupt), None, "flip of bit {bit} in byte {byte}");
            }
        }
        // An index-style entry (plain CRC) is not an epoch entry.
        let mut plain = raw;
        let crc = crc32c::crc32c(&raw[0..12]);
        plain[12..16].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(decode_entry(&plain), None);
    }

    #[test]
    fn survives_a_clean_reopen_and_applies_truncations() {
        let disk = SimDisk::new(1);
        let (mut cache, report) = open(&disk, 0);
        assert_eq!(report.entries, 0);
        cache.assign(LeaderEpoch(0), Offset(0)).unwrap();
        cache.assign(LeaderEpoch(2), Offset(15)).unwrap();
        cache.assign(LeaderEpoch(5), Offset(40)).unwrap();
        assert!(!cache.assign(LeaderEpoch(5), Offset(40)).unwrap(), "re-assigning the latest epoch is a no-op");
        assert!(cache.assign(LeaderEpoch(4), Offset(50)).is_err());
        block_on(cache.sync()).unwrap();
        drop(cache);
        let (mut cache, report) = open(&disk, 50);
        assert_eq!(report, EpochCacheRecovery { entries: 3, dropped_tail_bytes: 0, dropped_past_log_end: 0 });
        assert_eq!(pairs(&cache), vec![(0, 0), (2, 15), (5, 40)]);
        // A follower truncates to 30, then appends epoch 6 from there.
        assert_eq!(cache.truncate_from_end(Offset(30)).unwrap(), 1);
        cache.assign(LeaderEpoch(6), Offset(30)).unwrap();
        block_on(cache.sync()).unwrap();
        let (cache, _) = open(&disk, 35);
        assert_eq!(pairs(&cache), vec![(0, 0), (2, 15), (6, 30)]);
        // Recovery drops epochs at or past the log end, durably.
        let (cache, report) = open(&disk, 30);
        assert_eq!(report.dropped_past_log_end, 1);
        assert_eq!(pairs(&cache), vec![(0, 0), (2, 15)]);
        disk.crash();
        let (cache, _) = open(&disk, 100);
        assert_eq!(pairs(&cache), vec![(0, 0), (2, 15)], "the recovery's cut was synced");
    }

    #[test]
    fn retention_is_reapplied_on_open_and_a_later_cut_keeps_the_file_consistent() {
        let disk = SimDisk::new(2);
        let (mut cache, _) = open(&disk, 0);
        for (epoch, start) in [(0, 0), (2, 15), (5, 40)] {
            cache.assign(LeaderEpoch(epoch), Offset(start)).unwrap();
        }
        cache.truncate_from_start(Offset(20));
        assert_eq!(pairs(&cache), vec![(2, 20), (5, 40)]);
        cache.truncate_from_end(Offset(41)).unwrap();
        cache.assign(LeaderEpoch(7), Offset(45)).unwrap();
        block_on(cache.sync()).unwrap();
        let (cache, _) = block_on(EpochCache::open(&disk, DIR, Offset(20), Offset(60))).unwrap();
        assert_eq!(pairs(&cache), vec![(2, 20), (5, 40), (7, 45)]);
    }

    /// Power loss drops entries that were never synced; a torn last entry and garbage after the good
    /// entries are cut by recovery, and what is left is a prefix of what was assigned.
    #[test]
    fn power_loss_keeps_synced_entries_and_cuts_a_torn_tail() {
        for seed in 0..200 {
            let disk = SimDisk::new(seed);
            disk.set_faults(SimDiskFaults {
                torn_write_probability: 0.7,
                garbage_tail_probability: 0.5,
                ..SimDiskFaults::default()
            });
            let (mut cache, _) = open(&disk, 0);
            let all = [(0, 0), (1, 10), (3, 20), (4, 30), (6, 40)];
            let synced = (seed % 4) as usize + 1;
            for (index, &(epoch, start)) in all.iter().enumerate() {
                cache.assign(LeaderEpoch(epoch), Offset(start)).unwrap();
                if index + 1 == synced {
                    block_on(cache.sync()).unwrap();
                }
            }
            drop(cache);
            disk.crash();
            let (cache, report) = open(&disk, 1_000);
            let got = pairs(&cache);
            assert!(got.len() >= synced, "seed {seed}: lost synced entries: {got:?}");
            assert_eq!(got[..], all[..got.len()], "seed {seed}: not a prefix of what was assigned");
            assert_eq!(report.entries, got.len());
            drop(cache);
            // The cut tail is gone for good: a second crash and open see the same entries, no tail.
            disk.crash();
            let (again, report) = open(&disk, 1_000);
            assert_eq!(pairs(&again), got, "seed {seed}");
            assert_eq!(report.dropped_tail_bytes, 0, "seed {seed}: recovery's cut was not durable");
        }
    }

    #[test]
    fn a_corrupt_entry_ends_the_cache_there() {
        let disk = SimDisk::new(3);
        let (mut cache, _) = open(&disk, 0);
        for (epoch, start) in [(0, 0), (1, 10), (3, 20)] {
            cache.assign(LeaderEpoch(epoch), Offset(start)).unwrap();
        }
        block_on(cache.sync()).unwrap();
        drop(cache);
        disk.flip_bit(&format!("{DIR}/{EPOCH_CACHE_FILE}"), 20, 3).unwrap();
        let (cache, report) = open(&disk, 100);
        assert_eq!(pairs(&cache), vec![(0, 0)]);
        assert_eq!(report.dropped_tail_bytes, 32);
        // The log still holds batches of epochs 1 and 3: the owner's check finds where the cache
        // stops describing it (the log is cut there, then the cache).
        let runs: Vec<EpochEntry> = [(0, 0), (1, 10), (3, 20)]
            .into_iter()
            .map(|(epoch, start)| EpochEntry { epoch: LeaderEpoch(epoch), start_offset: Offset(start) })
            .collect();
        assert_eq!(
            super::super::first_epoch_mismatch(&runs, cache.entries(), Offset(0), Offset(100)),
            Some(Offset(10))
        );
        // Recovery's cut of the file is durable: a power loss does not bring the entries back.
        drop(cache);
        disk.crash();
        let (cache, report) = open(&disk, 100);
        assert_eq!(pairs(&cache), vec![(0, 0)]);
        assert_eq!(report.dropped_tail_bytes, 0);
    }
}
