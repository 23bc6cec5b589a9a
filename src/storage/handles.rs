//! `Handles<D>`: a [`Disk`] that keeps at most a budget of the disk's files open (issue 15).
//!
//! In: the disk under it and a [`HandleBudget`]. Out: files that open their handle of the disk under
//! it when used and close it when the budget needs room, least recently used first. A broker with
//! 10,000 partitions has at least 50,000 files (each segment's `.log`, `.index`, `.timeindex`, each
//! partition's epoch cache and synced-end checkpoint), far past a process's open-file limit; only the
//! partitions with recent traffic need theirs open.
//!
//! # Rules
//! - A handle with writes not yet synced is never closed by the budget (`keep_unsynced`, set with
//!   fsync "always"): a sync then goes through the very descriptor the writes did, so no writeback
//!   error can fall between two descriptors. When every open handle is unsynced the budget is
//!   exceeded instead (counted in `over_budget`); syncs follow writes closely, so this lasts one
//!   fsync. A sync marks its handle synced when it is *called* and its future owns a clone of the
//!   handle, so a handle the budget closes meanwhile stays open until that sync completes.
//! - A handle is reopened by its path, without `create`: a file removed under a closed handle is
//!   gone (`NotFound`), as the data path expects of a removed file (Keel never uses a file after
//!   removing it).
//! - The last clone of a file closes its handle, as dropping a `std::fs::File` does.
//! - The budget counts only these files: directory listings and `sync_dir` open and close their own
//!   descriptor within the call (the room the broker keeps beside the budget covers them).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::{Disk, DiskFile};

/// How many handles [`Handles`] keeps open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandleBudget {
    /// Handles open at most (beyond it only unsynced ones, see `keep_unsynced`). At least 1.
    pub files_max: usize,
    /// Never close a handle with writes not yet synced (fsync "always"). With fsync "never" nothing
    /// is synced, so every written handle would be pinned: there the budget closes them too.
    pub keep_unsynced: bool,
}

/// Counters of a [`Handles`] disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandleStats {
    /// Handles open now.
    pub open: usize,
    /// The most handles open at once.
    pub open_peak: usize,
    /// Files opened (first open of a file).
    pub opens: u64,
    /// Handles opened again after the budget closed them.
    pub reopens: u64,
    /// Handles the budget closed.
    pub evictions: u64,
    /// Handles opened while every open handle was unsynced (the budget was exceeded).
    pub over_budget: u64,
}

/// A [`Disk`] whose files share one budget of open handles; clones share it.
pub struct Handles<D: Disk> {
    disk: D,
    cache: Arc<Mutex<Cache<D::File>>>,
}

impl<D: Disk> Clone for Handles<D> {
    fn clone(&self) -> Self {
        Handles { disk: self.disk.clone(), cache: self.cache.clone() }
    }
}

struct Open<F> {
    file: F,
    /// The cache's clock at the last use: the key of this handle in `Cache::lru`.
    used: u64,
    /// Written since the last sync was called.
    unsynced: bool,
}

struct Cache<F> {
    budget: HandleBudget,
    next_id: u64,
    clock: u64,
    /// The open handles by file id.
    open: BTreeMap<u64, Open<F>>,
    /// File ids by last use, oldest first.
    lru: BTreeMap<u64, u64>,
    stats: HandleStats,
}

impl<F: Clone> Cache<F> {
    /// The open handle of `id`, marked used (and unsynced if `write`).
    fn touch(&mut self, id: u64, write: bool) -> Option<F> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.open.get_mut(&id)?;
        self.lru.remove(&entry.used);
        entry.used = clock;
        entry.unsynced |= write;
        self.lru.insert(clock, id);
        Some(entry.file.clone())
    }

    /// Closes least recently used handles until one more fits; returns them, to be dropped once
    /// the lock is released (closing a descriptor can take a while).
    fn make_room(&mut self) -> Vec<F> {
        let mut closed = Vec::new();
        while self.open.len() >= self.budget.files_max {
            let keep_unsynced = self.budget.keep_unsynced;
            let victim = self
                .lru
                .iter()
                .map(|(&used, &id)| (used, id))
                .find(|(_, id)| !keep_unsynced || !self.open[id].unsynced);
            let Some((used, id)) = victim else {
                self.stats.over_budget += 1;
                break;
            };
            self.lru.remove(&used);
            closed.push(self.open.remove(&id).expect("lru and open agree").file);
            self.stats.evictions += 1;
        }
        closed
    }

    /// Records `file` as the open handle of `id` (unless a racing use opened it first) and returns
    /// the handle to use.
    fn insert(&mut self, id: u64, file: F, write: bool) -> F {
        if let Some(open) = self.touch(id, write) {
            return open;
        }
        let used = self.clock;
        self.lru.insert(used, id);
        self.open.insert(id, Open { file: file.clone(), used, unsynced: write });
        self.stats.open = self.open.len();
        self.stats.open_peak = self.stats.open_peak.max(self.open.len());
        file
    }

    fn close(&mut self, id: u64) -> Option<F> {
        let entry = self.open.remove(&id)?;
        self.lru.remove(&entry.used);
        self.stats.open = self.open.len();
        Some(entry.file)
    }
}

fn lock<F>(cache: &Mutex<Cache<F>>) -> MutexGuard<'_, Cache<F>> {
    cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<D: Disk> Handles<D> {
    pub fn new(disk: D, budget: HandleBudget) -> Handles<D> {
        assert!(budget.files_max > 0, "a handle budget of 0 files opens nothing");
        let cache = Cache {
            budget,
            next_id: 0,
            clock: 0,
            open: BTreeMap::new(),
            lru: BTreeMap::new(),
            stats: HandleStats::default(),
        };
        Handles { disk, cache: Arc::new(Mutex::new(cache)) }
    }

    pub fn stats(&self) -> HandleStats {
        lock(&self.cache).stats
    }

    pub fn budget(&self) -> HandleBudget {
        lock(&self.cache).budget
    }

    /// The disk under the budget.
    pub fn inner(&self) -> &D {
        &self.disk
    }
}

/// One file of a [`Handles`] disk; clones share it. Its handle is opened on use.
pub struct HandleFile<D: Disk> {
    slot: Arc<Slot<D>>,
}

impl<D: Disk> Clone for HandleFile<D> {
    fn clone(&self) -> Self {
        HandleFile { slot: self.slot.clone() }
    }
}

struct Slot<D: Disk> {
    id: u64,
    path: String,
    disk: D,
    cache: Arc<Mutex<Cache<D::File>>>,
}

impl<D: Disk> Drop for Slot<D> {
    fn drop(&mut self) {
        let closed = lock(&self.cache).close(self.id);
        drop(closed);
    }
}

impl<D: Disk> HandleFile<D> {
    /// The open handle, reopened (closing others) if the budget had closed it.
    fn handle(&self, write: bool) -> io::Result<D::File> {
        let slot = &self.slot;
        if let Some(file) = lock(&slot.cache).touch(slot.id, write) {
            return Ok(file);
        }
        let closed = lock(&slot.cache).make_room();
        drop(closed);
        let file = slot.disk.open(&slot.path, false)?;
        let mut cache = lock(&slot.cache);
        cache.stats.reopens += 1;
        Ok(cache.insert(slot.id, file, write))
    }
}

impl<D: Disk> Disk for Handles<D> {
    type File = HandleFile<D>;

    fn open(&self, path: &str, create: bool) -> io::Result<HandleFile<D>> {
        let closed = lock(&self.cache).make_room();
        drop(closed);
        let file = self.disk.open(path, create)?;
        let mut cache = lock(&self.cache);
        let id = cache.next_id;
        cache.next_id += 1;
        cache.stats.opens += 1;
        cache.insert(id, file, false);
        drop(cache);
        let slot = Slot { id, path: path.to_string(), disk: self.disk.clone(), cache: self.cache.clone() };
        Ok(HandleFile { slot: Arc::new(slot) })
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        self.disk.list(dir)
    }

    fn create_dir_all(&self, dir: &str) -> io::Result<()> {
        self.disk.create_dir_all(dir)
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        self.disk.remove(path)
    }

    fn remove_dir_all(&self, dir: &str) -> io::Result<()> {
        self.disk.remove_dir_all(dir)
    }

    fn sync_dir(&self, dir: &str) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.disk.sync_dir(dir)
    }
}

impl<D: Disk> DiskFile for HandleFile<D> {
    fn len(&self) -> io::Result<u64> {
        self.handle(false)?.len()
    }

    fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        self.handle(true)?.write_at(pos, data)
    }

    fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        self.handle(false)?.read_at(pos, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.handle(true)?.set_len(len)
    }

    fn sync(&self) -> impl Future<Output = io::Result<()>> + Send + 'static {
        // Marked synced now: the writes issued before this call are what the sync covers, and the
        // future owns the handle, so it stays open until the sync is done.
        let handle = self.handle(false).map(|file| {
            if let Some(open) = lock(&self.slot.cache).open.get_mut(&self.slot.id) {
                open.unsynced = false;
            }
            file
        });
        async move {
            match handle {
                Ok(file) => file.sync().await,
                Err(error) => Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::SimDisk;

    fn block_on<F: Future>(future: F) -> F::Output {
        futures::executor::block_on(future)
    }

    fn disk(files_max: usize, keep_unsynced: bool) -> (SimDisk, Handles<SimDisk>) {
        let sim = SimDisk::new(7);
        sim.create_dir_all("d").unwrap();
        (sim.clone(), Handles::new(sim, HandleBudget { files_max, keep_unsynced }))
    }

    #[test]
    fn the_least_recently_used_handle_is_closed_and_reopened_on_use() {
        let (_, disk) = disk(2, true);
        let a = disk.open("d/a", true).unwrap();
        let b = disk.open("d/b", true).unwrap();
        a.len().unwrap(); // a is now the most recent
        let c = disk.open("d/c", true).unwrap();
        let stats = disk.stats();
        assert_eq!((stats.open, stats.evictions), (2, 1));
        b.write_at(0, b"bee").unwrap(); // reopens b, closing a (c is newer)
        assert_eq!(disk.stats().reopens, 1);
        assert_eq!(&b.read_at(0, 3).unwrap()[..], b"bee");
        a.write_at(0, b"ay").unwrap();
        assert_eq!(&a.read_at(0, 9).unwrap()[..], b"ay");
        assert!(disk.stats().open <= 2 + disk.stats().over_budget as usize);
        drop((a, b, c));
        assert_eq!(disk.stats().open, 0, "the last clone closes its handle");
        assert_eq!(disk.stats().open_peak, 2);
    }

    #[test]
    fn an_unsynced_handle_is_kept_until_a_sync_is_called() {
        let (_, disk) = disk(1, true);
        let a = disk.open("d/a", true).unwrap();
        a.write_at(0, b"unsynced").unwrap();
        let b = disk.open("d/b", true).unwrap();
        let stats = disk.stats();
        assert_eq!((stats.open, stats.evictions, stats.over_budget), (2, 0, 1), "a is kept: it has unsynced writes");
        let sync = a.sync();
        let _c = disk.open("d/c", true).unwrap();
        assert_eq!(disk.stats().evictions, 2, "a (synced now) and b went");
        block_on(sync).unwrap();
        assert_eq!(&a.read_at(0, 8).unwrap()[..], b"unsynced");
        drop(b);
    }

    #[test]
    fn with_fsync_never_unsynced_handles_are_closed_too() {
        let (_, disk) = disk(1, false);
        let a = disk.open("d/a", true).unwrap();
        a.write_at(0, b"x").unwrap();
        let _b = disk.open("d/b", true).unwrap();
        assert_eq!((disk.stats().open, disk.stats().over_budget), (1, 0));
        assert_eq!(&a.read_at(0, 1).unwrap()[..], b"x");
    }

    #[test]
    fn a_synced_write_through_a_reopened_handle_survives_a_crash() {
        let (sim, disk) = disk(1, true);
        let a = disk.open("d/a", true).unwrap();
        block_on(disk.sync_dir("d")).unwrap();
        a.write_at(0, b"first").unwrap();
        block_on(a.sync()).unwrap();
        let b = disk.open("d/b", true).unwrap(); // closes a
        b.len().unwrap();
        a.write_at(5, b"+second").unwrap(); // reopened
        block_on(a.sync()).unwrap();
        a.write_at(12, b"+lost").unwrap();
        sim.crash();
        // A power loss may keep unsynced bytes too (the OS may have written them back), never less.
        assert!(sim.durable_content("d/a").unwrap().starts_with(b"first+second"));
    }

    #[test]
    fn a_file_removed_while_its_handle_is_closed_is_gone() {
        let (_, disk) = disk(1, true);
        let a = disk.open("d/a", true).unwrap();
        let _b = disk.open("d/b", true).unwrap();
        disk.remove("d/a").unwrap();
        assert_eq!(a.len().unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
