//! `Handles<D>`: a [`Disk`] that keeps at most a budget of the disk's files open (issue 15).
//!
//! In: the disk under it and a [`HandleBudget`]. Out: files that open their handle of the disk under
//! it when used and close it when the budget needs room, least recently used first. A broker with
//! 10,000 partitions has at least 50,000 files (each segment's `.log`, `.index`, `.timeindex`, each
//! partition's epoch cache and synced-end checkpoint), far past a process's open-file limit; only the
//! partitions with recent traffic need theirs open.
//!
//! # Rules
//! - **The budget is a bound** (ADR 0023): the handles open, those being opened (room is made
//!   under the lock, so two threads opening at once cannot both take the last place) and those being
//!   synced before they close never number more than `files_max`. The one exception, counted in
//!   `over_budget`, is every open handle held by a running sync, which the sync task's cap (below)
//!   rules out unless the budget is 1 file or the threads opening at once are about half of it.
//! - To make room it closes a clean handle among the 16 least recently used. When none of those is
//!   clean it takes the least recently used handle that no running sync holds; if that one has
//!   writes no completed sync covers, the opening thread syncs it ([`DiskFile::sync_now`], outside
//!   the lock) and then closes it: a handle with unsynced writes is synced before it is closed, never
//!   after (a writeback error must reach a descriptor that is still open: on Linux it is reported
//!   once, and may be lost with the inode once no descriptor holds it). If that sync fails, the
//!   file's next `sync` fails too, so the writer learns of it. The opener waits for that sync: this
//!   is the budget's back-pressure, and it happens only when the 16 oldest handles are all busy.
//! - With fsync "never" (`keep_unsynced` off) nothing is ever synced, so unsynced handles count as
//!   clean and are closed like them. So do the files of `HandleBudget::self_checked` (the log's
//!   indexes, which it verifies by CRC or rebuilds at open): an active segment's indexes are synced
//!   only when it rolls, so with them busy, a budget smaller than the partitions written to was
//!   full of busy handles, and each eviction cost an fsync.
//! - A handle is reopened by its path, without `create`: a file removed under a closed handle is
//!   gone (`NotFound`), as the data path expects of a removed file (Keel never uses a file after
//!   removing it).
//! - The last clone of a file closes its handle, as dropping a `std::fs::File` does.
//! - Syncs may be coalesced ([`Handles::coalesce_syncs`]): every `sync` then goes to one task that
//!   takes the syncs waiting and hands them to the disk under it in one `sync_files` call (one per
//!   file however many were asked), then the next group: group commit across partitions, so
//!   thousands of partitions with a few records each do not need thousands of blocking threads. A
//!   file's descriptor is held only while its group runs, and a group holds at most half the budget
//!   (the rest wait for the next group), so the budget always has handles no sync holds. A sync
//!   whose writes a closing sync already covered completes without a descriptor. A sync's contract
//!   is unchanged: it covers the writes issued before it was called, and resolves with its own
//!   file's result.
//! - The budget counts only these files: directory listings and `sync_dir` open and close their own
//!   descriptor within the call (the room the broker keeps beside the budget covers them). A read or
//!   write on another thread can keep a handle just closed open until that call returns.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use bytes::Bytes;

use super::{Disk, DiskFile};

/// How many handles [`Handles`] keeps open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandleBudget {
    /// Handles open at most, counting those being opened and those being synced to close. At least 1.
    pub files_max: usize,
    /// Sync a handle with writes not yet synced before closing it (fsync "always"). With fsync "never"
    /// nothing is synced, so every written handle would need a sync to close: there the budget
    /// closes them like clean ones.
    pub keep_unsynced: bool,
    /// Files, by the end of their name, whose writer checks or rebuilds their content itself (the
    /// log's index files: CRC-sealed, and an active segment's are rebuilt at every open). Their
    /// unsynced writes do not need a sync before their handle closes: the page cache writes them
    /// back (an error that writeback meets then goes unreported; the writer's own check finds what
    /// it lost).
    pub self_checked: &'static [&'static str],
}

/// Counters of a [`Handles`] disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandleStats {
    /// Handles open now.
    pub open: usize,
    /// The most descriptors the budget counted at once (open, being opened, being synced to close).
    pub open_peak: usize,
    /// Files opened (first open of a file).
    pub opens: u64,
    /// Handles opened again after the budget closed them.
    pub reopens: u64,
    /// Handles the budget closed.
    pub evictions: u64,
    /// Of those, handles with unsynced writes, synced by the opener before they closed.
    pub closing_syncs: u64,
    /// Opens that found every handle held by a running sync, so went past the budget (module doc).
    pub over_budget: u64,
    /// Handles being synced before they close, now and at most.
    pub closing: usize,
    pub closing_peak: usize,
}

/// A [`Disk`] whose files share one budget of open handles; clones share it.
pub struct Handles<D: Disk> {
    shared: Arc<Shared<D>>,
}

impl<D: Disk> Clone for Handles<D> {
    fn clone(&self) -> Self {
        Handles { shared: self.shared.clone() }
    }
}

/// What a [`Handles`] disk and its files share.
struct Shared<D: Disk> {
    disk: D,
    cache: Mutex<Cache<D::File>>,
    /// The coalescing task's queue, once started.
    syncs: OnceLock<tokio::sync::mpsc::UnboundedSender<SyncRequest<D>>>,
}

/// One sync waiting for the coalescing task: the file, how many of its writes it must cover, and
/// where its result goes.
struct SyncRequest<D: Disk> {
    file: HandleFile<D>,
    covers: u64,
    reply: tokio::sync::oneshot::Sender<io::Result<()>>,
}

/// One file of the budget, open or not.
struct Entry<F> {
    /// The open handle and its key in `Cache::lru` (the cache's clock at its last use).
    handle: Option<(F, u64)>,
    /// Writes to this file so far (through any of its handles), and how many of them a completed
    /// sync covers: `None` before the first sync completes, which also covers what the file held
    /// before it was opened (a process that crashed may have left it unsynced).
    written: u64,
    synced: Option<u64>,
    /// Syncs running now on the open handle, which is not closed under them.
    pinned: u32,
    /// A file of `HandleBudget::self_checked`.
    self_checked: bool,
    /// A sync the budget made before closing the handle failed (with this error): the file's next
    /// syncs fail.
    failed: Option<String>,
}

struct Cache<F> {
    budget: HandleBudget,
    next_id: u64,
    clock: u64,
    /// Every file of the budget by id (open or not), while any clone of it lives.
    files: BTreeMap<u64, Entry<F>>,
    /// Open handles' file ids by last use, oldest first.
    lru: BTreeMap<u64, u64>,
    /// Handles being opened: room made for them, not yet inserted.
    opening: usize,
    stats: HandleStats,
}

/// What making room found to do next.
enum Room<F> {
    /// Room is reserved (`opening` counts it); close these once the lock is released.
    Made(Vec<F>),
    /// Sync this handle of file `id` (covering `covers` writes) and close it, then try again.
    SyncFirst { closed: Vec<F>, id: u64, file: F, covers: u64 },
}

impl<F: Clone + Send + 'static> Cache<F> {
    /// Descriptors the budget counts.
    fn counted(&self) -> usize {
        self.stats.open + self.opening + self.stats.closing
    }

    fn clean(&self, entry: &Entry<F>) -> bool {
        let unsynced = entry.written != entry.synced.unwrap_or(0);
        entry.pinned == 0 && (!unsynced || entry.self_checked || !self.budget.keep_unsynced)
    }

    /// The open handle of `id`, marked used (and written if `write`; held by a running sync if `pin`).
    fn touch(&mut self, id: u64, write: bool, pin: bool) -> Option<(F, u64)> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.files.get_mut(&id)?;
        let (file, used) = entry.handle.as_mut()?;
        self.lru.remove(used);
        *used = clock;
        let file = file.clone();
        entry.written += u64::from(write);
        entry.pinned += u32::from(pin);
        self.lru.insert(clock, id);
        Some((file, entry.written))
    }

    /// Takes the handle of `id` out of the cache (it is closed when the returned clone is dropped).
    fn take(&mut self, id: u64) -> Option<F> {
        let (file, used) = self.files.get_mut(&id)?.handle.take()?;
        self.lru.remove(&used);
        self.stats.open -= 1;
        Some(file)
    }

    /// One step of making room for a handle (module doc): closes clean handles while the budget is
    /// full, or names the handle the caller must sync and close first.
    fn make_room(&mut self) -> Room<F> {
        let mut closed = Vec::new();
        while self.counted() >= self.budget.files_max {
            // A clean handle among the oldest few, else the oldest that no sync holds: looking
            // further for a clean one would scan, on every open, past handles that stay unsynced.
            let clean = self.lru.values().take(CLEAN_SEARCH_MAX).find(|id| self.clean(&self.files[*id])).copied();
            let victim = clean.or_else(|| self.lru.values().find(|id| self.files[*id].pinned == 0).copied());
            let Some(id) = victim else {
                // Every open handle is held by a running sync: go over the budget (module doc).
                self.stats.over_budget += 1;
                break;
            };
            self.stats.evictions += 1;
            let dirty = !self.clean(&self.files[&id]);
            let covers = self.files[&id].written;
            let file = self.take(id).expect("an lru entry is open");
            if dirty {
                self.stats.closing += 1;
                self.stats.closing_peak = self.stats.closing_peak.max(self.stats.closing);
                self.stats.closing_syncs += 1;
                return Room::SyncFirst { closed, id, file, covers };
            }
            closed.push(file);
        }
        self.opening += 1;
        self.stats.open_peak = self.stats.open_peak.max(self.counted());
        Room::Made(closed)
    }

    /// Records the sync of a handle closed by `make_room`.
    fn closed_after_sync(&mut self, id: u64, covers: u64, result: io::Result<()>) {
        self.stats.closing -= 1;
        if let Some(entry) = self.files.get_mut(&id) {
            match result {
                Ok(()) => entry.synced = entry.synced.max(Some(covers)),
                Err(error) => {
                    tracing::warn!(%error, "syncing a file before closing its handle failed; its next sync fails");
                    entry.failed = Some(error.to_string());
                }
            }
        }
    }

    /// Records `file` as the open handle of `id` (unless a racing use opened it first) and returns
    /// the handle to use, with the file's writes so far.
    fn insert(&mut self, id: u64, file: F, write: bool, pin: bool) -> Option<(F, u64)> {
        self.opening -= 1;
        if let Some(open) = self.touch(id, write, pin) {
            return Some(open);
        }
        self.clock += 1;
        let used = self.clock;
        let entry = self.files.get_mut(&id)?;
        entry.handle = Some((file.clone(), used));
        entry.written += u64::from(write);
        entry.pinned += u32::from(pin);
        let written = entry.written;
        self.lru.insert(used, id);
        self.stats.open += 1;
        Some((file, written))
    }

    /// A sync of `id` that held its handle ended.
    fn unpin(&mut self, id: u64, covers: u64, succeeded: bool) {
        if let Some(entry) = self.files.get_mut(&id) {
            entry.pinned -= 1;
            if succeeded {
                entry.synced = entry.synced.max(Some(covers));
            }
        }
    }
}

fn lock<F>(cache: &Mutex<Cache<F>>) -> MutexGuard<'_, Cache<F>> {
    cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<D: Disk> Shared<D> {
    /// Makes room for one handle (module doc), syncing and closing busy ones when it must.
    fn reserve(&self) {
        loop {
            let room = lock(&self.cache).make_room();
            match room {
                Room::Made(closed) => {
                    drop(closed);
                    return;
                }
                Room::SyncFirst { closed, id, file, covers } => {
                    drop(closed);
                    crate::sometimes::hit(crate::sometimes::Sometimes::FileSyncedToClose);
                    let result = file.sync_now();
                    drop(file); // closed now that it is synced
                    lock(&self.cache).closed_after_sync(id, covers, result);
                }
            }
        }
    }

    /// Opens `path` in a place `reserve` made; gives the place back if the open fails.
    fn open_reserved(&self, path: &str, create: bool) -> io::Result<D::File> {
        self.reserve();
        self.disk.open(path, create).inspect_err(|_| lock(&self.cache).opening -= 1)
    }
}

impl<D: Disk> Handles<D> {
    pub fn new(disk: D, budget: HandleBudget) -> Handles<D> {
        assert!(budget.files_max > 0, "a handle budget of 0 files opens nothing");
        let cache = Cache {
            budget,
            next_id: 0,
            clock: 0,
            files: BTreeMap::new(),
            lru: BTreeMap::new(),
            opening: 0,
            stats: HandleStats::default(),
        };
        Handles { shared: Arc::new(Shared { disk, cache: Mutex::new(cache), syncs: OnceLock::new() }) }
    }

    pub fn stats(&self) -> HandleStats {
        lock(&self.shared.cache).stats
    }

    pub fn budget(&self) -> HandleBudget {
        lock(&self.shared.cache).budget
    }

    /// The disk under the budget.
    pub fn inner(&self) -> &D {
        &self.shared.disk
    }

    /// Starts the task that coalesces syncs (module doc); it runs until every clone of this disk
    /// and of its files is gone. Needs a runtime.
    pub fn coalesce_syncs(&self) {
        let (queue, requests) = tokio::sync::mpsc::unbounded_channel::<SyncRequest<D>>();
        if self.shared.syncs.set(queue).is_err() {
            return; // started already
        }
        let files_max = lock(&self.shared.cache).budget.files_max;
        let group_max = (files_max / 2).clamp(1, SYNC_GROUP_MAX);
        tokio::spawn(run_syncs(Arc::downgrade(&self.shared), requests, group_max));
    }
}

/// The coalescing task (module doc): groups of at most `group_max` files, in the order asked.
async fn run_syncs<D: Disk>(
    shared: Weak<Shared<D>>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<SyncRequest<D>>,
    group_max: usize,
) {
    let mut waiting = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match requests.recv().await {
                Some(request) => waiting.push_back(request),
                None => return,
            }
        }
        while let Ok(request) = requests.try_recv() {
            waiting.push_back(request);
        }
        let Some(shared) = shared.upgrade() else { return };
        let group = next_group(&mut waiting, group_max);
        if group.is_empty() {
            continue;
        }
        let files = group.iter().map(|synced| synced.file.clone()).collect();
        let results = shared.disk.sync_files(files).await;
        drop(shared);
        for (synced, result) in group.into_iter().zip(results) {
            synced.finish(result);
        }
    }
}

/// One file of a sync group: its handle (held for the sync), the writes the sync covers, and the
/// requests it answers.
struct GroupFile<D: Disk> {
    of: HandleFile<D>,
    file: D::File,
    covers: u64,
    replies: Vec<tokio::sync::oneshot::Sender<io::Result<()>>>,
}

impl<D: Disk> GroupFile<D> {
    fn finish(self, result: io::Result<()>) {
        lock(&self.of.slot.shared.cache).unpin(self.of.slot.id, self.covers, result.is_ok());
        drop(self.file);
        for reply in self.replies {
            let _ = reply.send(copy_result(&result));
        }
    }
}

fn copy_result(result: &io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
    }
}

/// Takes the next group from `waiting`: requests already covered or failed are answered at once,
/// requests of one file share its sync, and at most `group_max` files are held; the rest wait.
fn next_group<D: Disk>(waiting: &mut VecDeque<SyncRequest<D>>, group_max: usize) -> Vec<GroupFile<D>> {
    let mut group: Vec<GroupFile<D>> = Vec::new();
    let mut left = VecDeque::new();
    while let Some(request) = waiting.pop_front() {
        let id = request.file.slot.id;
        let (failed, synced) = {
            let cache = lock(&request.file.slot.shared.cache);
            cache.files.get(&id).map_or((None, None), |entry| (entry.failed.clone(), entry.synced))
        };
        if let Some(cause) = failed {
            let _ = request.reply.send(Err(failed_error(&cause)));
        } else if synced.is_some_and(|synced| synced >= request.covers) {
            let _ = request.reply.send(Ok(()));
        } else if let Some(member) = group.iter_mut().find(|member| member.of.slot.id == id) {
            member.replies.push(request.reply);
        } else if group.len() < group_max {
            match request.file.hold() {
                Ok((file, covers)) => {
                    group.push(GroupFile { of: request.file, file, covers, replies: vec![request.reply] })
                }
                Err(error) => drop(request.reply.send(Err(error))),
            }
        } else {
            crate::sometimes::hit(crate::sometimes::Sometimes::SyncGroupFull);
            left.push_back(request);
        }
    }
    *waiting = left;
    group
}

fn failed_error(cause: &str) -> io::Error {
    io::Error::other(format!(
        "a sync of this file's earlier writes failed when the open-file budget closed its handle: {cause}"
    ))
}

/// How many of the least recently used handles eviction looks through for a clean one.
const CLEAN_SEARCH_MAX: usize = 16;

/// Files one coalesced group syncs at most (and at most half the budget).
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
    shared: Arc<Shared<D>>,
}

impl<D: Disk> Drop for Slot<D> {
    fn drop(&mut self) {
        let closed = {
            let mut cache = lock(&self.shared.cache);
            let closed = cache.take(self.id);
            cache.files.remove(&self.id);
            closed
        };
        drop(closed);
    }
}

impl<D: Disk> HandleFile<D> {
    /// The open handle, reopened (closing others) if the budget had closed it, with the file's
    /// writes so far; `pin`: held by a sync until `Cache::unpin`.
    fn handle(&self, write: bool, pin: bool) -> io::Result<(D::File, u64)> {
        let slot = &self.slot;
        if let Some(open) = lock(&slot.shared.cache).touch(slot.id, write, pin) {
            return Ok(open);
        }
        let file = slot.shared.open_reserved(&slot.path, false)?;
        let mut cache = lock(&slot.shared.cache);
        cache.stats.reopens += 1;
        crate::sometimes::hit(crate::sometimes::Sometimes::FileHandleReopened);
        cache.insert(slot.id, file, write, pin).ok_or_else(|| io::Error::other("a handle file outlived its entry"))
    }

    /// The handle, held for a sync (not closed until `Cache::unpin`), with the writes it covers; or
    /// the error of a closing sync that failed before it was held (checked once held, since until
    /// then an opener could sync and close it: a sync must not report `Ok` for writes that a failed
    /// closing sync may have dropped).
    fn hold(&self) -> io::Result<(D::File, u64)> {
        let (file, covers) = self.handle(false, true)?;
        if let Err(error) = self.written() {
            lock(&self.slot.shared.cache).unpin(self.slot.id, covers, false);
            return Err(error);
        }
        Ok((file, covers))
    }

    fn file(&self, write: bool) -> io::Result<D::File> {
        self.handle(write, false).map(|(file, _)| file)
    }

    /// The file's writes so far, or the error its next sync returns.
    fn written(&self) -> io::Result<u64> {
        let cache = lock(&self.slot.shared.cache);
        match cache.files.get(&self.slot.id) {
            Some(Entry { failed: Some(cause), .. }) => Err(failed_error(cause)),
            Some(entry) => Ok(entry.written),
            None => Err(io::Error::other("a handle file outlived its entry")),
        }
    }
}

impl<D: Disk> Disk for Handles<D> {
    type File = HandleFile<D>;

    fn open(&self, path: &str, create: bool) -> io::Result<HandleFile<D>> {
        let shared = &self.shared;
        let file = shared.open_reserved(path, create)?;
        let mut cache = lock(&shared.cache);
        let id = cache.next_id;
        cache.next_id += 1;
        cache.stats.opens += 1;
        let self_checked = cache.budget.self_checked.iter().any(|suffix| path.ends_with(suffix));
        let entry = Entry { handle: None, written: 0, synced: None, pinned: 0, self_checked, failed: None };
        cache.files.insert(id, entry);
        cache.insert(id, file, false, false);
        drop(cache);
        let slot = Slot { id, path: path.to_string(), shared: shared.clone() };
        Ok(HandleFile { slot: Arc::new(slot) })
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        self.shared.disk.list(dir)
    }

    fn create_dir_all(&self, dir: &str) -> io::Result<()> {
        self.shared.disk.create_dir_all(dir)
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        self.shared.disk.remove(path)
    }

    fn remove_dir_all(&self, dir: &str) -> io::Result<()> {
        self.shared.disk.remove_dir_all(dir)
    }

    fn sync_dir(&self, dir: &str) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.shared.disk.sync_dir(dir)
    }
}

impl<D: Disk> DiskFile for HandleFile<D> {
    fn len(&self) -> io::Result<u64> {
        self.file(false)?.len()
    }

    fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        self.file(true)?.write_at(pos, data)
    }

    fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        self.file(false)?.read_at(pos, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file(true)?.set_len(len)
    }

    fn sync(&self) -> impl Future<Output = io::Result<()>> + Send + 'static {
        // The sync covers the writes issued before this call. With the coalescing task it waits
        // there without a descriptor; without it, the handle is held (not closed) until it is done.
        let this = self.clone();
        let queued = self.written().map(|covers| {
            let (reply, result) = tokio::sync::oneshot::channel();
            let queue = self.slot.shared.syncs.get().cloned();
            let refused = match queue {
                Some(queue) => queue.send(SyncRequest { file: self.clone(), covers, reply }).err().map(|_| ()),
                None => Some(()),
            };
            (refused.is_none(), result)
        });
        async move {
            match queued? {
                (true, result) => result.await.unwrap_or_else(|_| Err(io::Error::other("the sync task stopped"))),
                (false, _) => this.sync_alone().await,
            }
        }
    }

    fn sync_now(&self) -> io::Result<()> {
        let (file, covers) = self.hold()?;
        let result = file.sync_now();
        drop(file);
        lock(&self.slot.shared.cache).unpin(self.slot.id, covers, result.is_ok());
        result
    }
}

impl<D: Disk> HandleFile<D> {
    /// A sync without the coalescing task: on the held handle (released even if the future is
    /// dropped half-way).
    async fn sync_alone(self) -> io::Result<()> {
        let (file, covers) = self.hold()?;
        let mut held = Held { of: &self, covers, succeeded: false };
        let result = file.sync().await;
        held.succeeded = result.is_ok();
        drop(file);
        drop(held);
        result
    }
}

/// A handle held by a sync, released when dropped.
struct Held<'a, D: Disk> {
    of: &'a HandleFile<D>,
    covers: u64,
    succeeded: bool,
}

impl<D: Disk> Drop for Held<'_, D> {
    fn drop(&mut self) {
        lock(&self.of.slot.shared.cache).unpin(self.of.slot.id, self.covers, self.succeeded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::{SimDisk, SimDiskFaults};

    fn block_on<F: Future>(future: F) -> F::Output {
        futures::executor::block_on(future)
    }

    /// A budget of `files_max` over a simulated disk that refuses descriptors past it (EMFILE), so
    /// any descriptor the budget lets past its bound fails the test.
    fn disk(files_max: usize, keep_unsynced: bool) -> (SimDisk, Handles<SimDisk>) {
        let sim = SimDisk::new(7);
        sim.create_dir_all("d").unwrap();
        sim.set_open_files_max(Some(files_max));
        (sim.clone(), Handles::new(sim, HandleBudget { files_max, keep_unsynced, self_checked: &[".index"] }))
    }

    fn failing_fsyncs() -> SimDiskFaults {
        SimDiskFaults { fsync_error_probability: 1.0, ..SimDiskFaults::default() }
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
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
        drop((a, b, c));
        let stats = disk.stats();
        assert_eq!(stats.open, 0, "the last clone closes its handle");
        assert_eq!((stats.open_peak, stats.over_budget), (2, 0));
    }

    #[test]
    fn an_unsynced_handle_is_synced_by_the_opener_before_the_budget_closes_it() {
        let (sim, disk) = disk(1, true);
        let a = disk.open("d/a", true).unwrap();
        block_on(disk.sync_dir("d")).unwrap();
        a.write_at(0, b"unsynced").unwrap();
        let b = disk.open("d/b", true).unwrap();
        let stats = disk.stats();
        assert_eq!((stats.open, stats.evictions, stats.closing_syncs, stats.over_budget), (1, 1, 1, 0));
        assert_eq!((stats.closing, sim.open_files()), (0, 1), "a was closed once synced");
        sim.crash();
        assert_eq!(sim.durable_content("d/a").unwrap(), b"unsynced", "synced before it was closed");
        drop(b);
    }

    /// Opens `d/b` through a budget of one file whose only handle has unsynced writes: the opener
    /// syncs that handle, failing, and closes it.
    fn open_b_closing_the_other_with_a_failing_sync(sim: &SimDisk, disk: &Handles<SimDisk>) -> HandleFile<SimDisk> {
        sim.set_faults(failing_fsyncs());
        let b = disk.open("d/b", true).unwrap();
        sim.set_faults(SimDiskFaults::default());
        b
    }

    #[test]
    fn a_closing_sync_that_fails_fails_the_files_next_sync() {
        let (sim, disk) = disk(1, true);
        let a = disk.open("d/a", true).unwrap();
        a.write_at(0, b"x").unwrap();
        let b = open_b_closing_the_other_with_a_failing_sync(&sim, &disk);
        assert_eq!(disk.stats().closing_syncs, 1);
        let error = block_on(a.sync()).unwrap_err();
        assert!(error.to_string().contains("open-file budget"), "{error}");
        assert!(block_on(a.sync()).is_err(), "and every sync after it: the writer must recover the file");
        drop(b);
    }

    /// A sync called before a closing sync of its file failed reports the failure, with or without
    /// the sync task: the writes it covers may be gone (a failed fsync may drop dirty pages).
    #[test]
    fn a_sync_called_before_a_failed_closing_sync_fails_too() {
        for coalesced in [false, true] {
            current_thread().block_on(async {
                let (sim, disk) = disk(1, true);
                if coalesced {
                    disk.coalesce_syncs();
                }
                let a = disk.open("d/a", true).unwrap();
                a.write_at(0, b"x").unwrap();
                let sync = a.sync(); // not run yet
                let b = open_b_closing_the_other_with_a_failing_sync(&sim, &disk);
                let error = sync.await.unwrap_err();
                assert!(error.to_string().contains("injected fsync error"), "coalesced {coalesced}: {error}");
                drop(b);
            });
        }
    }

    #[test]
    fn with_fsync_never_unsynced_handles_are_closed_without_a_sync() {
        let (sim, disk) = disk(1, false);
        let a = disk.open("d/a", true).unwrap();
        a.write_at(0, b"x").unwrap();
        let _b = disk.open("d/b", true).unwrap();
        let stats = disk.stats();
        assert_eq!((stats.open, stats.closing_syncs, stats.over_budget, sim.stats().syncs), (1, 0, 0, 0));
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

    /// What a crashed process left unsynced in a file is made durable by the first sync after the
    /// file is opened, though nothing was written through the budget.
    #[test]
    fn the_first_sync_after_an_open_covers_what_the_file_held_before() {
        let (sim, disk) = disk(2, true);
        let before = sim.open("d/a", true).unwrap();
        block_on(sim.sync_dir("d")).unwrap();
        before.write_at(0, b"left by a crashed process").unwrap();
        drop(before);
        current_thread().block_on(async {
            disk.coalesce_syncs();
            let a = disk.open("d/a", false).unwrap();
            a.sync().await.unwrap();
        });
        sim.crash();
        assert_eq!(sim.durable_content("d/a").unwrap(), b"left by a crashed process");
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
        current_thread().block_on(async {
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
            sim.set_faults(failing_fsyncs());
            let reopened = disk.open("d/f0", false).unwrap();
            reopened.write_at(0, b"x").unwrap();
            assert!(reopened.sync().await.is_err());
        });
    }

    /// The budget's bound with syncs in flight: 8 files written and synced at once through a budget
    /// of 8 over a disk that refuses a ninth descriptor, with slow syncs, while 8 other files are
    /// read. A group holds at most 4 handles, so each read finds one to close (syncing it first if it
    /// must); a group holding all 8 would leave none (the disk's EMFILE fails the read).
    #[test]
    fn slow_syncs_of_many_files_keep_the_descriptors_within_the_budget() {
        current_thread().block_on(async {
            let (sim, disk) = disk(8, true);
            disk.coalesce_syncs();
            let files: Vec<_> = (0..16).map(|i| disk.open(&format!("d/f{i}"), true).unwrap()).collect();
            disk.sync_dir("d").await.unwrap();
            sim.set_faults(SimDiskFaults { fsync_latency_ms: (5, 5), ..SimDiskFaults::default() });
            for round in 0..4u8 {
                let (written, read) = files.split_at(8);
                let (written, read) = if round % 2 == 0 { (written, read) } else { (read, written) };
                let syncs: Vec<_> = written
                    .iter()
                    .map(|file| {
                        file.write_at(u64::from(round), &[round]).unwrap();
                        tokio::spawn(file.sync())
                    })
                    .collect();
                tokio::time::sleep(std::time::Duration::from_millis(1)).await; // the first group runs
                for file in read {
                    file.read_at(0, 1).unwrap();
                    assert!(sim.open_files() <= 8, "{} descriptors", sim.open_files());
                }
                for sync in syncs {
                    sync.await.unwrap().unwrap();
                }
            }
            let stats = disk.stats();
            assert_eq!((stats.over_budget, sim.stats().open_files_refused), (0, 0), "{stats:?}");
            assert!(stats.open_peak <= 8 && stats.closing_syncs > 0, "{stats:?}");
            sim.crash();
            for i in 0..16 {
                let expected: &[u8] = if i < 8 { &[0, 0, 2] } else { &[0, 1, 0, 3] };
                assert_eq!(sim.durable_content(&format!("d/f{i}")).unwrap(), expected, "f{i}");
            }
        });
    }

    /// A sync waiting in the queue whose writes the opener's closing sync already made durable
    /// completes without reopening the file.
    #[test]
    fn a_sync_covered_by_a_closing_sync_needs_no_descriptor() {
        current_thread().block_on(async {
            let (sim, disk) = disk(1, true);
            disk.coalesce_syncs();
            let a = disk.open("d/a", true).unwrap();
            disk.sync_dir("d").await.unwrap();
            a.write_at(0, b"covered").unwrap();
            let sync = a.sync(); // queued, not yet run
            let b = disk.open("d/b", true).unwrap(); // syncs a, then closes it
            sync.await.unwrap();
            let stats = disk.stats();
            assert_eq!((stats.closing_syncs, stats.reopens, sim.open_files()), (1, 0, 1));
            sim.crash();
            assert_eq!(sim.durable_content("d/a").unwrap(), b"covered");
            drop(b);
        });
    }

    #[test]
    fn a_self_checked_file_with_unsynced_writes_is_closed_like_a_clean_one() {
        current_thread().block_on(async {
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
            assert_eq!((stats.evictions, stats.closing_syncs, stats.over_budget), (1, 0, 0));
            assert_eq!(sim.open_files(), 2);
            other.write_at(0, b"other").unwrap();
            assert_eq!(index.read_at(0, 5).unwrap().as_ref(), b"entry", "its writes are in the page cache");
            assert_eq!(disk.stats().closing_syncs, 1, "reopening the index synced and closed the unsynced log");
            sim.crash();
            assert_eq!(sim.durable_content("d/0.log").unwrap(), b"batch", "the log was synced before it closed");
            drop((log, other));
        });
    }
}
