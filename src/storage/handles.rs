//! `Handles<D>`: a [`Disk`] that keeps at most a budget of the disk's files open (issue 15).
//!
//! In: the disk under it and a [`HandleBudget`]. Out: files that open their handle of the disk under
//! it when used and close it when the budget needs room, least recently used first. A broker with
//! 10,000 partitions has at least 50,000 files (each segment's `.log`, `.index`, `.timeindex`, each
//! partition's epoch cache and synced-end checkpoint), far past a process's open-file limit; only the
//! partitions with recent traffic need theirs open.
//!
//! # Rules
//! - The budget counts every descriptor it is responsible for: the handles open, those being
//!   opened (room is made under the lock, so two threads opening at once cannot both take the last
//!   place), and those waiting for their closing sync.
//! - To make room it closes a clean handle among the 16 least recently used. When all of those are
//!   busy (writes no completed sync covers, or a sync in flight), the least recently used one leaves
//!   the cache at once and goes to the sync task, which syncs it and then drops it (counted in
//!   `closing` until then). Its descriptor is still open, so that open exceeds the budget by one
//!   until the sync completes, and is counted in `over_budget`. If the closing sync fails, the
//!   file's next `sync` fails too, so the writer learns of it (on Linux a writeback error is
//!   reported once: to the closing sync, not to a later descriptor's). Without a sync task (tests
//!   without a runtime), busy handles are kept and the budget exceeded instead (`over_budget`).
//! - With fsync "never" (`keep_unsynced` off) nothing is ever synced, so unsynced handles count as
//!   clean and are closed like them. So do the files of `HandleBudget::self_checked` (the log's
//!   indexes, which it verifies by CRC or rebuilds at open): an active segment's indexes are synced
//!   only when it rolls, so with them busy, a budget smaller than the partitions written to was
//!   full of busy handles and every open went over it (the simulated disk's EMFILE limit was hit,
//!   `isr_3_many_partitions_small_file_budget`), and each eviction cost an fsync.
//! - A handle is reopened by its path, without `create`: a file removed under a closed handle is
//!   gone (`NotFound`), as the data path expects of a removed file (Keel never uses a file after
//!   removing it).
//! - The last clone of a file closes its handle, as dropping a `std::fs::File` does.
//! - Syncs may be coalesced ([`Handles::coalesce_syncs`]): every `sync` then goes to one task that
//!   takes all the syncs waiting and hands them to the disk under it in one `sync_files` call, then
//!   the next group (group commit across partitions: thousands of partitions with a few records each
//!   no longer need thousands of blocking threads at once). A sync's contract is unchanged: it
//!   covers the writes issued before it was called, and resolves with its own file's result.
//! - The budget counts only these files: directory listings and `sync_dir` open and close their own
//!   descriptor within the call (the room the broker keeps beside the budget covers them).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

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
    /// Files, by the end of their name, whose writer checks or rebuilds their content itself (the
    /// log's index files: CRC-sealed, and an active segment's are rebuilt at every open). Their
    /// unsynced writes do not keep a handle open: it is closed like a clean one, and the page cache
    /// writes them back (an error that writeback meets then goes unreported; the writer's own check
    /// finds what it lost).
    pub self_checked: &'static [&'static str],
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
    /// Opens that found no clean handle to close, so the descriptors went past the budget until a
    /// closing sync completed.
    pub over_budget: u64,
    /// Handles closed with unsynced writes, whose closing sync is in flight (their descriptors are
    /// still open), now and at most.
    pub closing: usize,
    pub closing_peak: usize,
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
    /// Writes through this handle so far, and how many of them a completed sync covers.
    written: u64,
    synced: u64,
    /// Syncs called and not completed.
    syncing: u32,
    /// The clock when this handle was opened: tells a sync completing on a later opening of the
    /// same file (possible only when unsynced handles may be closed) from one on this handle.
    opened: u64,
    /// A file of `HandleBudget::self_checked`: unsynced writes do not make it busy.
    self_checked: bool,
}

impl<F> Open<F> {
    fn busy(&self) -> bool {
        (self.written != self.synced && !self.self_checked) || self.syncing > 0
    }
}

/// What to do with a sync's result.
type SyncDone = Box<dyn FnOnce(io::Result<()>) + Send>;
/// One sync waiting for the coalescing task: the handle and what to do with its result.
type SyncRequest<F> = (F, SyncDone);

struct Cache<F> {
    budget: HandleBudget,
    /// The coalescing task's queue, once started.
    syncs: Option<tokio::sync::mpsc::UnboundedSender<SyncRequest<F>>>,
    next_id: u64,
    clock: u64,
    /// The open handles by file id.
    open: BTreeMap<u64, Open<F>>,
    /// File ids by last use, oldest first.
    lru: BTreeMap<u64, u64>,
    /// Handles being opened: room made for them, not yet inserted (counted in the budget, so two
    /// threads opening at once do not both take the last place).
    opening: usize,
    /// Files whose handle the budget closed with unsynced writes and whose closing sync failed:
    /// their next sync fails.
    failed: std::collections::BTreeSet<u64>,
    stats: HandleStats,
}

impl<F: Clone + Send + 'static> Cache<F> {
    /// The open handle of `id`, marked used (and unsynced if `write`).
    fn touch(&mut self, id: u64, write: bool) -> Option<F> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.open.get_mut(&id)?;
        self.lru.remove(&entry.used);
        entry.used = clock;
        entry.written += u64::from(write);
        self.lru.insert(clock, id);
        Some(entry.file.clone())
    }

    /// Closes least recently used handles until one more fits (module doc: clean ones first; an
    /// unsynced one goes to the sync task, which closes it once synced). Returns the handles to drop
    /// once the lock is released (closing a descriptor can take a while).
    fn make_room(&mut self, this: &Weak<Mutex<Cache<F>>>) -> Vec<F> {
        let mut closed = Vec::new();
        while self.open.len() + self.opening + self.stats.closing >= self.budget.files_max {
            let keep_unsynced = self.budget.keep_unsynced;
            // A clean handle among the oldest few, else the oldest (synced before it is closed):
            // looking further would scan, on every open, past the handles that stay unsynced (an
            // active segment's indexes are synced only when it rolls).
            let clean = self.lru.iter().take(CLEAN_SEARCH_MAX).find(|(_, id)| !keep_unsynced || !self.open[*id].busy());
            if let Some((&used, &id)) = clean {
                self.lru.remove(&used);
                closed.push(self.open.remove(&id).expect("lru and open agree").file);
                self.stats.evictions += 1;
                continue;
            }
            // Every handle the search saw is busy: the oldest goes to the sync task, which closes it
            // once synced. Its descriptor stays open until then, so this open exceeds the budget.
            self.stats.over_budget += 1;
            let oldest = self.lru.iter().map(|(&used, &id)| (used, id)).next();
            if let (Some((used, id)), true) = (oldest, self.syncs.is_some()) {
                self.lru.remove(&used);
                let entry = self.open.remove(&id).expect("lru and open agree");
                self.stats.evictions += 1;
                self.close_after_sync(id, entry.file, this);
            }
            break;
        }
        self.opening += 1;
        self.stats.open = self.open.len();
        closed
    }

    /// Hands an unsynced handle to the sync task, which drops it once synced; a failed sync is
    /// kept for the file's next `sync`.
    fn close_after_sync(&mut self, id: u64, file: F, this: &Weak<Mutex<Cache<F>>>) {
        let Some(queue) = &self.syncs else { return };
        let this = this.clone();
        let done: SyncDone = Box::new(move |result| {
            let Some(cache) = this.upgrade() else { return };
            let mut cache = lock(&cache);
            cache.stats.closing -= 1;
            if result.is_err() {
                cache.failed.insert(id);
            }
        });
        if queue.send((file, done)).is_ok() {
            self.stats.closing += 1;
            self.stats.closing_peak = self.stats.closing_peak.max(self.stats.closing);
        }
    }

    /// Records `file` as the open handle of `id` (unless a racing use opened it first) and returns
    /// the handle to use.
    fn insert(&mut self, id: u64, path: &str, file: F, write: bool) -> F {
        self.opening -= 1;
        if let Some(open) = self.touch(id, write) {
            return open;
        }
        let used = self.clock;
        self.lru.insert(used, id);
        let written = u64::from(write);
        let self_checked = self.budget.self_checked.iter().any(|suffix| path.ends_with(suffix));
        let open = Open { file: file.clone(), used, written, synced: 0, syncing: 0, opened: used, self_checked };
        self.open.insert(id, open);
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
            syncs: None,
            next_id: 0,
            clock: 0,
            open: BTreeMap::new(),
            lru: BTreeMap::new(),
            opening: 0,
            failed: std::collections::BTreeSet::new(),
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

    /// Starts the task that coalesces syncs (module doc); it runs until every clone of this disk
    /// and of its files is gone. Needs a runtime.
    pub fn coalesce_syncs(&self) {
        let (queue, mut requests) = tokio::sync::mpsc::unbounded_channel::<SyncRequest<D::File>>();
        lock(&self.cache).syncs = Some(queue);
        let disk = self.disk.clone();
        tokio::spawn(async move {
            while let Some(first) = requests.recv().await {
                let mut group = vec![first];
                while group.len() < SYNC_GROUP_MAX {
                    match requests.try_recv() {
                        Ok(request) => group.push(request),
                        Err(_) => break,
                    }
                }
                let (files, done): (Vec<D::File>, Vec<SyncDone>) = group.into_iter().unzip();
                let results = disk.sync_files(files.clone()).await;
                drop(files); // the handles the budget closed are closed now, once synced
                for (done, result) in done.into_iter().zip(results) {
                    done(result);
                }
            }
        });
    }
}

/// How many of the least recently used handles eviction looks through for a clean one.
const CLEAN_SEARCH_MAX: usize = 16;

/// Syncs one coalesced group takes at most.
pub const SYNC_GROUP_MAX: usize = 4096;

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
        let closed = {
            let mut cache = lock(&self.cache);
            cache.failed.remove(&self.id);
            cache.close(self.id)
        };
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
        let closed = lock(&slot.cache).make_room(&Arc::downgrade(&slot.cache));
        drop(closed);
        let file = slot.disk.open(&slot.path, false).inspect_err(|_| lock(&slot.cache).opening -= 1)?;
        let mut cache = lock(&slot.cache);
        cache.stats.reopens += 1;
        crate::sometimes::hit(crate::sometimes::Sometimes::FileHandleReopened);
        Ok(cache.insert(slot.id, &slot.path, file, write))
    }
}

impl<D: Disk> Disk for Handles<D> {
    type File = HandleFile<D>;

    fn open(&self, path: &str, create: bool) -> io::Result<HandleFile<D>> {
        let closed = lock(&self.cache).make_room(&Arc::downgrade(&self.cache));
        drop(closed);
        let file = self.disk.open(path, create).inspect_err(|_| lock(&self.cache).opening -= 1)?;
        let mut cache = lock(&self.cache);
        let id = cache.next_id;
        cache.next_id += 1;
        cache.stats.opens += 1;
        cache.insert(id, path, file, false);
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
        // The sync covers the writes issued before this call; the handle stays open (not evictable)
        // until it completes, and is clean then if nothing was written meanwhile.
        let failed = lock(&self.slot.cache).failed.contains(&self.slot.id);
        let started = self.handle(false).and_then(|file| {
            if failed {
                let message =
                    "a sync of this file's earlier writes failed (when the open-file budget closed its handle)";
                return Err(io::Error::other(message));
            }
            let mut cache = lock(&self.slot.cache);
            let covers = cache.open.get_mut(&self.slot.id).map(|open| {
                open.syncing += 1;
                (open.opened, open.written)
            });
            Ok((file, covers, cache.syncs.clone()))
        });
        let slot = self.slot.clone();
        async move {
            let (file, covers, queue) = started?;
            let result = match queue {
                None => file.sync().await,
                Some(queue) => {
                    let (reply, result) = tokio::sync::oneshot::channel();
                    let done: SyncDone = Box::new(move |result| {
                        let _ = reply.send(result);
                    });
                    match queue.send((file, done)) {
                        Ok(()) => result.await.unwrap_or_else(|_| Err(io::Error::other("the sync task stopped"))),
                        Err(refused) => refused.0 .0.sync().await, // the task is gone: sync alone
                    }
                }
            };
            if let Some((opened, covers)) = covers {
                let mut cache = lock(&slot.cache);
                if let Some(open) = cache.open.get_mut(&slot.id).filter(|open| open.opened == opened) {
                    open.syncing -= 1;
                    if result.is_ok() {
                        open.synced = open.synced.max(covers);
                    }
                }
            }
            result
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
        (sim.clone(), Handles::new(sim, HandleBudget { files_max, keep_unsynced, self_checked: &[".index"] }))
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
        let c = disk.open("d/c", true).unwrap();
        assert_eq!(disk.stats().evictions, 1, "b went; a is kept while its sync is in flight");
        block_on(sync).unwrap();
        let _d = disk.open("d/d", true).unwrap();
        assert_eq!(disk.stats().evictions, 3, "a, synced now, and c went");
        assert_eq!(&a.read_at(0, 8).unwrap()[..], b"unsynced");
        drop((b, c));
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

    #[test]
    fn coalesced_syncs_make_each_file_durable_and_report_each_result() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (sim, disk) = disk(2, true);
            disk.coalesce_syncs();
            let files: Vec<_> = (0..5).map(|i| disk.open(&format!("d/f{i}"), true).unwrap()).collect();
            disk.sync_dir("d").await.unwrap();
            for (i, file) in files.iter().enumerate() {
                file.write_at(0, format!("value {i}").as_bytes()).unwrap();
            }
            let syncs: Vec<_> = files.iter().map(DiskFile::sync).collect();
            for result in futures::future::join_all(syncs).await {
                result.unwrap();
            }
            sim.crash();
            for i in 0..5 {
                assert_eq!(sim.durable_content(&format!("d/f{i}")).unwrap(), format!("value {i}").as_bytes());
            }
            // A failing sync reports its failure to its own caller.
            sim.set_faults(crate::storage::sim::SimDiskFaults {
                fsync_error_probability: 1.0,
                ..crate::storage::sim::SimDiskFaults::default()
            });
            let reopened = disk.open("d/f0", false).unwrap();
            reopened.write_at(0, b"x").unwrap();
            assert!(reopened.sync().await.is_err());
        });
    }

    #[test]
    fn an_unsynced_handle_is_synced_before_the_budget_closes_it_and_a_failure_reaches_its_writer() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (sim, disk) = disk(1, true);
            disk.coalesce_syncs();
            let a = disk.open("d/a", true).unwrap();
            disk.sync_dir("d").await.unwrap();
            a.write_at(0, b"written").unwrap();
            let b = disk.open("d/b", true).unwrap(); // a leaves the cache, to be synced then closed
            assert_eq!((disk.stats().open, disk.stats().closing), (1, 1));
            assert_eq!(sim.open_files(), 2, "a's descriptor is open until its sync is done");
            tokio::task::yield_now().await;
            assert_eq!((disk.stats().closing, sim.open_files()), (0, 1));
            sim.crash();
            assert_eq!(sim.durable_content("d/a").unwrap(), b"written", "synced before it was closed");

            // A closing sync that fails: the writer's next sync fails.
            let (sim, disk) = super::tests::disk(1, true);
            disk.coalesce_syncs();
            let a = disk.open("d/a", true).unwrap();
            a.write_at(0, b"x").unwrap();
            sim.set_faults(crate::storage::sim::SimDiskFaults {
                fsync_error_probability: 1.0,
                ..crate::storage::sim::SimDiskFaults::default()
            });
            let _b = disk.open("d/b", true).unwrap();
            tokio::task::yield_now().await;
            sim.set_faults(crate::storage::sim::SimDiskFaults::default());
            let error = a.sync().await.unwrap_err();
            assert!(error.to_string().contains("open-file budget"), "{error}");
            drop(b);
        });
    }

    #[test]
    fn a_handle_waiting_for_its_closing_sync_counts_in_the_budget() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (sim, disk) = disk(3, true);
            disk.coalesce_syncs();
            let a = disk.open("d/a", true).unwrap();
            let b = disk.open("d/b", true).unwrap();
            let c = disk.open("d/c", true).unwrap();
            a.write_at(0, b"a").unwrap();
            c.write_at(0, b"c").unwrap();
            // a and c are unsynced, b is clean and second oldest: b is closed first.
            let d = disk.open("d/d", true).unwrap();
            assert_eq!((disk.stats().open, disk.stats().closing, disk.stats().over_budget), (3, 0, 0));
            // No clean handle among a, c, d's oldest? d is clean: it goes, then a (unsynced, oldest)
            // would have to close after its sync: the budget counts its descriptor meanwhile.
            c.write_at(1, b"c").unwrap();
            d.write_at(0, b"d").unwrap();
            let e = disk.open("d/e", true).unwrap();
            assert_eq!((disk.stats().closing, disk.stats().over_budget), (1, 1), "a closes after its sync");
            assert_eq!(sim.open_files(), 4, "over the budget by the closing descriptor");
            // While a's sync is in flight, the next open closes the clean e and, the budget still
            // being full with a counted, sends c to its closing sync: no descriptor is added.
            let f = disk.open("d/f", true).unwrap();
            assert_eq!(sim.open_files(), 4);
            assert_eq!((disk.stats().open, disk.stats().closing, disk.stats().over_budget), (2, 2, 2));
            tokio::task::yield_now().await;
            assert_eq!((disk.stats().closing, sim.open_files()), (0, 2), "a and c closed once synced");
            assert_eq!(a.read_at(0, 1).unwrap().as_ref(), b"a");
            assert_eq!(c.read_at(0, 2).unwrap().as_ref(), b"cc");
            assert_eq!(sim.open_files(), 3, "reopening c closed the clean f: within the budget again");
            drop((b, e, f));
        });
    }

    #[test]
    fn a_self_checked_file_with_unsynced_writes_is_closed_like_a_clean_one() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (sim, disk) = disk(2, true);
            disk.coalesce_syncs();
            let log = disk.open("d/0.log", true).unwrap();
            let index = disk.open("d/0.index", true).unwrap();
            disk.sync_dir("d").await.unwrap();
            log.write_at(0, b"batch").unwrap();
            index.write_at(0, b"entry").unwrap();
            // Both unsynced; the log is older, but the index is the one closed, without a sync.
            let other = disk.open("d/1.log", true).unwrap();
            let stats = disk.stats();
            assert_eq!((stats.evictions, stats.closing, stats.over_budget), (1, 0, 0));
            assert_eq!(sim.open_files(), 2);
            other.write_at(0, b"other").unwrap();
            assert_eq!(index.read_at(0, 5).unwrap().as_ref(), b"entry", "its writes are in the page cache");
            assert_eq!(disk.stats().closing, 1, "reopening the index sent the unsynced log to its sync");
            tokio::task::yield_now().await;
            sim.crash();
            assert_eq!(sim.durable_content("d/0.log").unwrap(), b"batch", "the log was synced before it closed");
            drop((log, other));
        });
    }
}
