//! `SimDisk`: an in-memory [`Disk`] that can lose what was not synced.
//!
//! In: file and directory operations, `crash()`, fault knobs. Out: page-cache reads, and after a
//! crash or a failed sync, the state a real disk could plausibly be in. Everything random is drawn
//! from one seeded RNG, so a run is a function of its seed and the order of calls.
//!
//! # Model
//! - A path names an *entry*; an entry points at an *inode* (file content). Each entry remembers the
//!   inode it points at now and the inode it points at durably; `sync_dir(parent)` makes the first
//!   the second. So an unsynced creation vanishes on crash and an unsynced removal is undone (the old
//!   inode, kept alive for this, comes back).
//! - Each inode keeps its durable bytes, the bytes reads see (`current`, i.e. the page cache) and the
//!   writes and `set_len`s issued since the last sync, in issue order, each with a sequence number.
//!   `sync()` captures the sequence number at call time and makes exactly the earlier operations
//!   durable when it completes.
//! - `crash()` (power loss): every inode reverts to its durable bytes plus a random prefix of its
//!   pending operations; the last kept write may be torn at a random byte, and its torn part may be
//!   garbage (random bytes or zeros) instead of nothing. Handles opened before the crash go stale:
//!   every operation on them fails.
//! - A failed sync (probability `fsync_error_probability`) leaves the operations it covered in the
//!   state a crash would (a random, possibly torn, prefix survives) and reads show that at once, as
//!   Linux may drop the dirty pages of a failed fsync. Later operations stay pending.
//! - An injected write error (probabilities `write_eio_probability`, `write_enospc_probability`)
//!   fails one `write_at` the way a short write followed by an error does on Linux: a random strict
//!   prefix of the data (possibly nothing) reaches the page cache as an ordinary pending write, and
//!   the call returns EIO (`io::ErrorKind::Other`) or ENOSPC (`io::ErrorKind::StorageFull`). The page
//!   cache is otherwise untouched: everything written before stays readable, and stays pending until a
//!   sync or a crash decides its fate, as on a real disk.
//! - A misdirected write (probability `misdirected_write_probability`, only on files whose path ends
//!   with `misdirected_path_suffix`) is a firmware bug's write: it succeeds, but its data lands 4 to
//!   16 KiB before or after where it was aimed (in 4 KiB steps), as a normal pending write there; the
//!   aimed-at bytes keep what they held. The disk remembers which files it happened to
//!   ([`SimDisk::misdirected_paths`]), so a harness can excuse them from byte-for-byte checks.
//! - Directories themselves are simpler than files: `create_dir_all` and `remove_dir_all` are durable
//!   at once (as if followed by a sync of the parent). Only file entries have unsynced states.
//!
//! # Limits
//! A file may not grow past [`SIM_FILE_BYTES_MAX`]; larger writes fail with an `io::Error`, never a
//! panic. Reads past the end are short or empty.
//!
//! # Lock order
//! One `std::sync::Mutex` around all state; it is never held across an `.await`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Disk, DiskFile};

/// The largest file a `SimDisk` holds; writes or `set_len` beyond it fail.
pub const SIM_FILE_BYTES_MAX: u64 = 1 << 30;

/// Fault knobs. All probabilities are drawn from the disk's seeded RNG.
#[derive(Debug, Clone, PartialEq)]
pub struct SimDiskFaults {
    /// Probability that one `sync()` (or `sync_dir`) completes with an error.
    pub fsync_error_probability: f64,
    /// Latency of each sync, drawn uniformly from `[min, max]` milliseconds (virtual time under madsim).
    pub fsync_latency_ms: (u64, u64),
    /// Probability that the last write a crash keeps is torn at a random byte.
    pub torn_write_probability: f64,
    /// Probability that the torn part of a torn write holds garbage instead of nothing.
    pub garbage_tail_probability: f64,
    /// Probability that one `write_at` fails with an I/O error (EIO) after a strict prefix of it.
    pub write_eio_probability: f64,
    /// Probability that one `write_at` fails because the disk is full (ENOSPC, reported as
    /// `io::ErrorKind::StorageFull` as std reports a real ENOSPC) after a strict prefix of it.
    pub write_enospc_probability: f64,
    /// A stalled part of the tree (on top of `fsync_latency_ms`): see [`FsyncStall`].
    pub fsync_stall: Option<FsyncStall>,
    /// Probability that one `write_at` to a file whose path ends with `misdirected_path_suffix` lands at
    /// the wrong offset (see the module doc).
    pub misdirected_write_probability: f64,
    pub misdirected_path_suffix: &'static str,
}

/// Syncs under some paths stall until a given moment, as on a slow device that holds part of the
/// tree (e.g. one replica's directory): a sync of a file, or a `sync_dir` of a directory, whose path
/// starts with one of `path_prefixes` and that starts before `until` completes no earlier than
/// `until` (and counts as a delayed sync). Draws nothing from the RNG.
#[derive(Debug, Clone, PartialEq)]
pub struct FsyncStall {
    pub path_prefixes: Vec<String>,
    pub until: tokio::time::Instant,
}

impl Default for SimDiskFaults {
    /// No faults, except that a crash may tear the last write it keeps (that is what a crash is).
    fn default() -> Self {
        SimDiskFaults {
            fsync_error_probability: 0.0,
            fsync_latency_ms: (0, 0),
            torn_write_probability: 0.5,
            garbage_tail_probability: 0.25,
            write_eio_probability: 0.0,
            write_enospc_probability: 0.0,
            fsync_stall: None,
            misdirected_write_probability: 0.0,
            misdirected_path_suffix: ".log",
        }
    }
}

/// Counters for tests.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct SimDiskStats {
    /// File syncs that completed (with `Ok` or an injected error).
    pub syncs: u64,
    /// File syncs among them that first waited an injected latency (`fsync_latency_ms` above zero, or
    /// an [`FsyncStall`]), so a scenario about slow fsyncs can tell that one happened.
    pub delayed_syncs: u64,
    /// Injected sync failures (file and directory).
    pub sync_errors: u64,
    /// Bytes of writes made durable by successful file syncs.
    pub synced_bytes: u64,
    /// Directory syncs that completed.
    pub dir_syncs: u64,
    /// Injected `write_at` failures (EIO and ENOSPC).
    pub write_errors: u64,
    pub crashes: u64,
    /// Bits flipped in durable data by [`SimDisk::flip_random_durable_bit`] (not by `flip_bit`, which
    /// tests aim by hand).
    pub bit_flips: u64,
    /// Writes that landed at the wrong offset (`misdirected_write_probability`).
    pub misdirected_writes: u64,
    /// Opens refused with EMFILE ([`SimDisk::set_open_files_max`]).
    pub open_files_refused: u64,
    /// The most descriptors open at once (not in the trace's `Debug`).
    pub open_files_peak: usize,
}

/// Written as `derive(Debug)` would, except that `bit_flips` is left out while it is 0: the
/// simulation's trace prints these stats, and a disk without bit flips must hash as it did before
/// the counter existed (a seed's trace hash is how a replay is recognised).
impl std::fmt::Debug for SimDiskStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("SimDiskStats");
        out.field("syncs", &self.syncs)
            .field("delayed_syncs", &self.delayed_syncs)
            .field("sync_errors", &self.sync_errors)
            .field("synced_bytes", &self.synced_bytes)
            .field("dir_syncs", &self.dir_syncs)
            .field("write_errors", &self.write_errors)
            .field("crashes", &self.crashes);
        if self.bit_flips > 0 {
            out.field("bit_flips", &self.bit_flips);
        }
        if self.misdirected_writes > 0 {
            out.field("misdirected_writes", &self.misdirected_writes);
        }
        if self.open_files_refused > 0 {
            out.field("open_files_refused", &self.open_files_refused);
        }
        out.finish()
    }
}

/// What [`SimDisk::flip_random_durable_bit`] flipped, for the history and the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitFlip {
    pub path: String,
    /// Byte position in the file.
    pub byte: u64,
    /// Bit within the byte (0 = least significant).
    pub bit: u8,
}

/// An in-memory disk; clones share the same state.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
    open_files: Arc<OpenFiles>,
}

/// A handle to one inode, valid until the next crash. Clones share one descriptor (counted once
/// against [`SimDisk::set_open_files_max`]).
#[derive(Clone)]
pub struct SimFile {
    state: Arc<Mutex<State>>,
    inode: InodeId,
    generation: u64,
    _descriptor: Arc<Descriptor>,
}

/// The descriptors open on a [`SimDisk`] (a process's open-file table, as far as the disk goes).
#[derive(Default)]
struct OpenFiles {
    open: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
    /// 0: no limit.
    max: std::sync::atomic::AtomicUsize,
}

/// One open descriptor: closed when the last clone of its [`SimFile`] is dropped.
struct Descriptor {
    files: Arc<OpenFiles>,
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        self.files.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl OpenFiles {
    /// A new descriptor, or EMFILE past the limit.
    fn open(self: &Arc<OpenFiles>, path: &str) -> io::Result<Arc<Descriptor>> {
        use std::sync::atomic::Ordering::Relaxed;
        let max = self.max.load(Relaxed);
        if max > 0 && self.open.load(Relaxed) >= max {
            let error = io::Error::from_raw_os_error(24);
            return Err(io::Error::new(error.kind(), format!("simdisk: cannot open {path}: {error} (limit {max})")));
        }
        let open = self.open.fetch_add(1, Relaxed) + 1;
        self.peak.fetch_max(open, Relaxed);
        Ok(Arc::new(Descriptor { files: self.clone() }))
    }
}

type InodeId = u64;

#[derive(Debug, Clone)]
enum PendingOp {
    Write { pos: u64, data: Bytes },
    SetLen { len: u64 },
}

#[derive(Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Operations since the last sync, with their sequence numbers, in issue order.
    pending: Vec<(u64, PendingOp)>,
    next_seq: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    current: Option<InodeId>,
    durable: Option<InodeId>,
}

struct State {
    rng: StdRng,
    faults: SimDiskFaults,
    generation: u64,
    next_inode: InodeId,
    inodes: BTreeMap<InodeId, Inode>,
    /// File entries by full path.
    entries: BTreeMap<String, Entry>,
    /// The paths of `entries` by their directory, so a directory sync visits its own entries only (a
    /// topic directory of 3,000 partition directories has none).
    entries_by_dir: BTreeMap<String, BTreeSet<String>>,
    /// Directories by full path ("" is the root and always exists).
    dirs: BTreeSet<String>,
    stats: SimDiskStats,
    /// Files a misdirected write went to (by path, at the time of the write).
    misdirected_paths: BTreeSet<String>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the state half-updated in a way that matters to a
    // test that is already failing, so poisoning is ignored.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn normalize(path: &str) -> String {
    path.split('/').filter(|part| !part.is_empty() && *part != ".").collect::<Vec<_>>().join("/")
}

fn parent_of(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some((parent, _)) => parent,
        None => "",
    }
}

fn not_found(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("simdisk: {what} not found"))
}

fn apply_op(content: &mut Vec<u8>, op: &PendingOp) {
    match op {
        PendingOp::Write { pos, data } => {
            let pos = *pos as usize;
            let end = pos + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[pos..end].copy_from_slice(data);
        }
        PendingOp::SetLen { len } => content.resize(*len as usize, 0),
    }
}

impl State {
    /// Applies a random prefix of `ops` to `base`, tearing the last kept write per the fault knobs:
    /// what a crash leaves of these operations.
    fn crash_apply(&mut self, base: &mut Vec<u8>, ops: &[(u64, PendingOp)]) {
        let n_kept = self.rng.random_range(0..=ops.len());
        for (idx, (_, op)) in ops[..n_kept].iter().enumerate() {
            let is_last = idx + 1 == n_kept;
            match op {
                PendingOp::Write { pos, data }
                    if is_last && !data.is_empty() && self.rng.random_bool(self.faults.torn_write_probability) =>
                {
                    let torn_at = self.rng.random_range(0..data.len());
                    let mut written = data.slice(..torn_at).to_vec();
                    if self.rng.random_bool(self.faults.garbage_tail_probability) {
                        let mut garbage = vec![0u8; data.len() - torn_at];
                        if self.rng.random_bool(0.5) {
                            self.rng.fill(&mut garbage[..]);
                        }
                        written.extend_from_slice(&garbage);
                    }
                    apply_op(base, &PendingOp::Write { pos: *pos, data: Bytes::from(written) });
                }
                _ => apply_op(base, op),
            }
        }
    }

    fn inode(&mut self, file: &SimFile) -> io::Result<&mut Inode> {
        if file.generation != self.generation {
            return Err(io::Error::other("simdisk: stale file handle (opened before a crash)"));
        }
        self.inodes.get_mut(&file.inode).ok_or_else(|| io::Error::other("simdisk: stale file handle (file removed)"))
    }

    /// Whether the next `write_at` fails, and how. Draws from the RNG only when a knob is on, so a
    /// disk without write faults makes the same draws (and so the same crashes) as before they existed.
    fn draw_write_error(&mut self) -> Option<io::Error> {
        let (eio, enospc) = (self.faults.write_eio_probability, self.faults.write_enospc_probability);
        if eio > 0.0 && self.rng.random_bool(eio.min(1.0)) {
            return Some(io::Error::other("simdisk: injected write error (EIO)"));
        }
        if enospc > 0.0 && self.rng.random_bool(enospc.min(1.0)) {
            return Some(io::Error::new(
                io::ErrorKind::StorageFull,
                "simdisk: injected write error (ENOSPC: disk full)",
            ));
        }
        None
    }

    /// Where a write of `len` bytes aimed at `pos` of `inode` lands: `pos`, or (a misdirected write)
    /// 4 to 16 KiB away. Draws from the RNG only while misdirected writes are on, and only for files
    /// with the configured suffix, so a disk without them draws as before they existed.
    fn draw_landing(&mut self, inode: InodeId, pos: u64, len: usize) -> u64 {
        let probability = self.faults.misdirected_write_probability;
        if probability <= 0.0 || len == 0 {
            return pos;
        }
        let suffix = self.faults.misdirected_path_suffix;
        let Some(path) = self
            .entries
            .iter()
            .find(|(path, entry)| entry.current == Some(inode) && path.ends_with(suffix))
            .map(|(path, _)| path.clone())
        else {
            return pos;
        };
        if !self.rng.random_bool(probability.min(1.0)) {
            return pos;
        }
        let delta = 4096 * self.rng.random_range(1..=4u64);
        let landed = if pos >= delta && self.rng.random_bool(0.5) { pos - delta } else { pos + delta };
        if landed + len as u64 > SIM_FILE_BYTES_MAX {
            return pos;
        }
        self.stats.misdirected_writes += 1;
        self.misdirected_paths.insert(path);
        landed
    }

    fn draw_latency(&mut self) -> Duration {
        let (min, max) = self.faults.fsync_latency_ms;
        let ms = if max > min { self.rng.random_range(min..=max) } else { min };
        Duration::from_millis(ms)
    }

    /// How long a sync of `path` (a file, or a directory for `sync_dir`) starting now waits: the drawn
    /// latency, or longer if the path is stalled ([`FsyncStall`]).
    fn sync_latency(&mut self, path: Option<&str>) -> Duration {
        let latency = self.draw_latency();
        let stalled = match (&self.faults.fsync_stall, path) {
            (Some(stall), Some(path)) if stall.path_prefixes.iter().any(|prefix| path.starts_with(prefix.as_str())) => {
                stall.until.saturating_duration_since(tokio::time::Instant::now())
            }
            _ => Duration::ZERO,
        };
        latency.max(stalled)
    }

    /// A path that names `inode` now (for [`FsyncStall`]; only looked up while a stall is set).
    fn path_of(&self, inode: InodeId) -> Option<String> {
        self.faults.fsync_stall.as_ref()?;
        self.entries.iter().find(|(_, entry)| entry.current == Some(inode)).map(|(path, _)| path.clone())
    }

    /// Drops inodes no entry refers to, now or durably.
    fn collect_garbage(&mut self) {
        let live: BTreeSet<InodeId> =
            self.entries.values().flat_map(|entry| [entry.current, entry.durable]).flatten().collect();
        self.inodes.retain(|id, _| live.contains(id));
    }
}

impl SimDisk {
    pub fn new(seed: u64) -> SimDisk {
        let mut dirs = BTreeSet::new();
        dirs.insert(String::new());
        SimDisk {
            state: Arc::new(Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                faults: SimDiskFaults::default(),
                generation: 0,
                next_inode: 0,
                inodes: BTreeMap::new(),
                entries: BTreeMap::new(),
                entries_by_dir: BTreeMap::new(),
                dirs,
                stats: SimDiskStats::default(),
                misdirected_paths: BTreeSet::new(),
            })),
            open_files: Arc::new(OpenFiles::default()),
        }
    }

    /// Refuses opens (EMFILE) while `max` descriptors are open; `None`: no limit (the default).
    pub fn set_open_files_max(&self, max: Option<usize>) {
        self.open_files.max.store(max.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// Descriptors open now.
    pub fn open_files(&self) -> usize {
        self.open_files.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn descriptor(&self, state: &mut State, path: &str) -> io::Result<Arc<Descriptor>> {
        let descriptor = self.open_files.open(path);
        if descriptor.is_err() {
            state.stats.open_files_refused += 1;
        }
        descriptor
    }

    pub fn set_faults(&self, faults: SimDiskFaults) {
        lock(&self.state).faults = faults;
    }

    pub fn faults(&self) -> SimDiskFaults {
        lock(&self.state).faults.clone()
    }

    pub fn stats(&self) -> SimDiskStats {
        let mut stats = lock(&self.state).stats;
        stats.open_files_peak = self.open_files.peak.load(std::sync::atomic::Ordering::Relaxed);
        stats
    }

    /// Simulated power loss: every file reverts to its durable bytes plus a random prefix of its
    /// pending operations (the last one possibly torn), unsynced directory changes are undone, and
    /// every handle opened before now goes stale.
    pub fn crash(&self) {
        let mut state = lock(&self.state);
        let state = &mut *state;
        state.generation += 1;
        state.stats.crashes += 1;
        for entry in state.entries.values_mut() {
            entry.current = entry.durable;
        }
        state.entries.retain(|_, entry| entry.current.is_some());
        let entries = &state.entries;
        for paths in state.entries_by_dir.values_mut() {
            paths.retain(|path| entries.contains_key(path));
        }
        state.entries_by_dir.retain(|_, paths| !paths.is_empty());
        state.collect_garbage();
        let ids: Vec<InodeId> = state.inodes.keys().copied().collect();
        for id in ids {
            let inode = state.inodes.get_mut(&id).expect("inode listed above");
            let mut content = std::mem::take(&mut inode.durable);
            let pending = std::mem::take(&mut inode.pending);
            state.crash_apply(&mut content, &pending);
            let inode = state.inodes.get_mut(&id).expect("inode listed above");
            inode.current = content.clone();
            inode.durable = content;
        }
    }

    /// Flips one bit of the file's durable bytes (and of what reads see), as a disk that rots would.
    /// Fails if the file or the byte does not exist.
    pub fn flip_bit(&self, path: &str, byte: u64, bit: u8) -> io::Result<()> {
        let path = normalize(path);
        let mut state = lock(&self.state);
        let id = state.entries.get(&path).and_then(|entry| entry.current).ok_or_else(|| not_found(&path))?;
        let inode = state.inodes.get_mut(&id).ok_or_else(|| not_found(&path))?;
        let mask = 1u8 << (bit % 8);
        let mut flipped = false;
        if let Some(value) = inode.durable.get_mut(byte as usize) {
            *value ^= mask;
            flipped = true;
        }
        if let Some(value) = inode.current.get_mut(byte as usize) {
            *value ^= mask;
            flipped = true;
        }
        if flipped {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::InvalidInput, format!("simdisk: byte {byte} is past the end of {path}")))
        }
    }

    /// Bit rot: flips one bit of one byte of a synced file's durable bytes, all drawn from the disk's
    /// RNG: the file among the durably linked files whose path ends with `suffix` and whose durable
    /// content is not empty (in path order), then the byte, then the bit. Returns what it flipped, or
    /// `None` (drawing nothing) when no file qualifies.
    ///
    /// The page cache (what reads see) shows the flip too where it holds the durable byte, as it does
    /// after an eviction and re-read; where an unsynced write covers the byte, reads keep seeing that
    /// write, and a sync of it overwrites the rot. A crash keeps the flip (it is durable).
    pub fn flip_random_durable_bit(&self, suffix: &str) -> Option<BitFlip> {
        let mut state = lock(&self.state);
        let state = &mut *state;
        let candidates: Vec<(String, InodeId)> = state
            .entries
            .iter()
            .filter(|(path, entry)| path.ends_with(suffix) && entry.durable.is_some() && entry.current == entry.durable)
            .filter_map(|(path, entry)| {
                let id = entry.durable.expect("filtered above");
                state.inodes.get(&id).is_some_and(|inode| !inode.durable.is_empty()).then(|| (path.clone(), id))
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (path, id) = candidates[state.rng.random_range(0..candidates.len())].clone();
        let inode = state.inodes.get_mut(&id).expect("a candidate's inode exists");
        let byte = state.rng.random_range(0..inode.durable.len());
        let bit = state.rng.random_range(0..8u8);
        let mask = 1u8 << bit;
        let cached_is_durable = inode.current.get(byte) == Some(&inode.durable[byte]);
        inode.durable[byte] ^= mask;
        if cached_is_durable {
            inode.current[byte] ^= mask;
        }
        state.stats.bit_flips += 1;
        Some(BitFlip { path, byte: byte as u64, bit })
    }

    /// Files (by path) a misdirected write has gone to, ever (see the module doc).
    pub fn misdirected_paths(&self) -> BTreeSet<String> {
        lock(&self.state).misdirected_paths.clone()
    }

    /// The durable bytes of a file (what a crash with no pending writes kept would leave), for tests.
    pub fn durable_content(&self, path: &str) -> Option<Vec<u8>> {
        let path = normalize(path);
        let state = lock(&self.state);
        let id = state.entries.get(&path)?.durable?;
        state.inodes.get(&id).map(|inode| inode.durable.clone())
    }
}

/// Where the paths under `dir` start in sorted order (every path for the root).
fn under(dir: &str) -> String {
    if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    }
}

fn is_under(path: &str, dir: &str) -> bool {
    dir.is_empty() || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

impl Disk for SimDisk {
    type File = SimFile;

    fn open(&self, path: &str, create: bool) -> io::Result<SimFile> {
        let path = normalize(path);
        let mut state = lock(&self.state);
        let generation = state.generation;
        if let Some(id) = state.entries.get(&path).and_then(|entry| entry.current) {
            let descriptor = self.descriptor(&mut state, &path)?;
            return Ok(SimFile { state: self.state.clone(), inode: id, generation, _descriptor: descriptor });
        }
        if !create {
            return Err(not_found(&path));
        }
        if path.is_empty() || state.dirs.contains(&path) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("simdisk: {path:?} is a directory")));
        }
        if !state.dirs.contains(parent_of(&path)) {
            return Err(not_found(&format!("directory of {path}")));
        }
        let descriptor = self.descriptor(&mut state, &path)?;
        let id = state.next_inode;
        state.next_inode += 1;
        state.inodes.insert(id, Inode::default());
        state.entries_by_dir.entry(parent_of(&path).to_string()).or_default().insert(path.clone());
        state.entries.entry(path).or_default().current = Some(id);
        Ok(SimFile { state: self.state.clone(), inode: id, generation, _descriptor: descriptor })
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let dir = normalize(dir);
        let state = lock(&self.state);
        let name_in_dir = |path: &str| -> Option<String> {
            let rest = if dir.is_empty() { path } else { path.strip_prefix(&dir)?.strip_prefix('/')? };
            (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
        };
        // The files directly in `dir` (its index), then its subdirectories, stepping over what is
        // under each: listing a directory of 3,000 partition directories costs 3,000 steps, not one
        // per file below them (the simulation's durable-ack check lists `data` at every ack).
        let files = state.entries_by_dir.get(&dir).into_iter().flatten();
        let mut names: Vec<String> = files
            .filter(|path| state.entries.get(*path).is_some_and(|entry| entry.current.is_some()))
            .filter_map(|path| name_in_dir(path))
            .collect();
        let prefix = under(&dir);
        let mut from = Bound::Included(prefix.clone());
        while let Some(path) = state.dirs.range((from, Bound::Unbounded)).next().filter(|path| is_under(path, &dir)) {
            let rest = &path[prefix.len()..];
            from = match rest.split_once('/') {
                None => {
                    names.extend((!rest.is_empty()).then(|| rest.to_string())); // not the root itself
                    Bound::Excluded(path.clone())
                }
                // Below the subdirectory `child`: every path from `child/` up to `child0` is under
                // it ('0' is the character after '/'), so go on from there.
                Some((child, _)) => Bound::Included(format!("{prefix}{child}0")),
            };
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn create_dir_all(&self, dir: &str) -> io::Result<()> {
        let dir = normalize(dir);
        let mut state = lock(&self.state);
        let mut path = String::new();
        for part in dir.split('/').filter(|part| !part.is_empty()) {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            if state.entries.get(&path).is_some_and(|entry| entry.current.is_some()) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("simdisk: {path} is a file")));
            }
            state.dirs.insert(path.clone());
        }
        Ok(())
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let path = normalize(path);
        let mut state = lock(&self.state);
        let entry =
            state.entries.get_mut(&path).filter(|entry| entry.current.is_some()).ok_or_else(|| not_found(&path))?;
        entry.current = None;
        Ok(())
    }

    fn remove_dir_all(&self, dir: &str) -> io::Result<()> {
        let dir = normalize(dir);
        if dir.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "simdisk: refusing to remove the root"));
        }
        let mut state = lock(&self.state);
        if !state.dirs.contains(&dir) {
            return Err(not_found(&dir));
        }
        let prefix = format!("{dir}/");
        state.dirs.retain(|path| *path != dir && !path.starts_with(&prefix));
        state.entries.retain(|path, _| !path.starts_with(&prefix));
        state.entries_by_dir.retain(|parent, _| *parent != dir && !parent.starts_with(&prefix));
        state.collect_garbage();
        Ok(())
    }

    fn sync_dir(&self, dir: &str) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let dir = normalize(dir);
        let shared = self.state.clone();
        let latency = lock(&self.state).sync_latency(Some(&dir));
        async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let mut state = lock(&shared);
            state.stats.dir_syncs += 1;
            let error_probability = state.faults.fsync_error_probability;
            if state.rng.random_bool(error_probability) {
                // The changes stay undurable: a later successful sync_dir may still persist them.
                state.stats.sync_errors += 1;
                return Err(io::Error::other(format!("simdisk: injected sync_dir error on {dir:?}")));
            }
            if !state.dirs.contains(&dir) {
                return Err(not_found(&dir));
            }
            // Only the entries directly in `dir` (`entries_by_dir`), so a directory of 3,000
            // partition directories syncs in time proportional to its own entries.
            let mut released = false;
            let mut forgotten = Vec::new();
            let paths: Vec<String> =
                state.entries_by_dir.get(&dir).map_or_else(Vec::new, |paths| paths.iter().cloned().collect());
            for path in paths {
                let entry = state.entries.get_mut(&path).expect("entries_by_dir lists entries");
                released |= entry.durable.is_some() && entry.durable != entry.current;
                entry.durable = entry.current;
                if entry.current.is_none() {
                    forgotten.push(path);
                }
            }
            for path in forgotten {
                state.entries.remove(&path);
                if let Some(paths) = state.entries_by_dir.get_mut(&dir) {
                    paths.remove(&path);
                }
            }
            if released {
                state.collect_garbage();
            }
            Ok(())
        }
    }
}

impl DiskFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        let mut state = lock(&self.state);
        Ok(state.inode(self)?.current.len() as u64)
    }

    fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        let mut state = lock(&self.state);
        let state = &mut *state;
        state.inode(self)?;
        if pos.checked_add(data.len() as u64).is_none_or(|end| end > SIM_FILE_BYTES_MAX) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "simdisk: write past the file size limit"));
        }
        // An empty write touches nothing, so nothing can fail (as `pwrite` of 0 bytes returns 0).
        let injected = if data.is_empty() { None } else { state.draw_write_error() };
        let written = match injected {
            // A short write, then the error: a strict prefix (maybe nothing) reached the page cache.
            Some(_) => state.rng.random_range(0..data.len()),
            None => data.len(),
        };
        if injected.is_some() {
            state.stats.write_errors += 1;
        }
        if injected.is_none() || written > 0 {
            let pos = if injected.is_none() { state.draw_landing(self.inode, pos, written) } else { pos };
            let inode = state.inodes.get_mut(&self.inode).expect("checked above");
            let op = PendingOp::Write { pos, data: Bytes::copy_from_slice(&data[..written]) };
            apply_op(&mut inode.current, &op);
            let seq = inode.next_seq;
            inode.next_seq += 1;
            inode.pending.push((seq, op));
        }
        injected.map_or(Ok(()), Err)
    }

    fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        let mut state = lock(&self.state);
        let content = &state.inode(self)?.current;
        let start = usize::try_from(pos).unwrap_or(usize::MAX).min(content.len());
        let end = start.saturating_add(len).min(content.len());
        Ok(Bytes::copy_from_slice(&content[start..end]))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        let inode = state.inode(self)?;
        if len > SIM_FILE_BYTES_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "simdisk: set_len past the file size limit"));
        }
        let op = PendingOp::SetLen { len };
        apply_op(&mut inode.current, &op);
        let seq = inode.next_seq;
        inode.next_seq += 1;
        inode.pending.push((seq, op));
        Ok(())
    }

    fn sync(&self) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let file = self.clone();
        // Which writes this sync covers is decided now, at call time.
        let (covered_seq, latency) = {
            let mut state = lock(&self.state);
            let path = state.path_of(self.inode);
            let latency = state.sync_latency(path.as_deref());
            match state.inode(self) {
                Ok(inode) => (Ok(inode.next_seq), latency),
                Err(error) => (Err(error), latency),
            }
        };
        async move {
            let covered_seq = covered_seq?;
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            file.complete_sync(covered_seq, !latency.is_zero())
        }
    }

    /// A sync that takes no simulated time: the latency and stall faults do not apply to it (a
    /// blocking call cannot wait for virtual time); its failures are drawn as any sync's.
    fn sync_now(&self) -> io::Result<()> {
        let covered_seq = lock(&self.state).inode(self)?.next_seq;
        self.complete_sync(covered_seq, false)
    }
}

impl SimFile {
    /// Ends a sync that covers the writes before `covered_seq`: they become durable, or, when an
    /// injected failure is drawn, a crash's choice of them does.
    fn complete_sync(&self, covered_seq: u64, delayed: bool) -> io::Result<()> {
        let file = self;
        let mut state = lock(&file.state);
        let state = &mut *state;
        state.inode(file)?;
        state.stats.syncs += 1;
        if delayed {
            state.stats.delayed_syncs += 1;
        }
        let error_probability = state.faults.fsync_error_probability;
        let fails = state.rng.random_bool(error_probability);
        let inode = state.inodes.get_mut(&file.inode).expect("checked above");
        let n_covered = inode.pending.iter().take_while(|(seq, _)| *seq < covered_seq).count();
        let covered: Vec<(u64, PendingOp)> = inode.pending.drain(..n_covered).collect();
        if fails {
            state.stats.sync_errors += 1;
            let inode = state.inodes.get_mut(&file.inode).expect("checked above");
            let mut durable = std::mem::take(&mut inode.durable);
            state.crash_apply(&mut durable, &covered);
            let inode = state.inodes.get_mut(&file.inode).expect("checked above");
            let mut current = durable.clone();
            for (_, op) in &inode.pending {
                apply_op(&mut current, op);
            }
            inode.durable = durable;
            inode.current = current;
            return Err(io::Error::other("simdisk: injected fsync error"));
        }
        for (_, op) in &covered {
            apply_op(&mut inode.durable, op);
            if let PendingOp::Write { data, .. } = op {
                state.stats.synced_bytes += data.len() as u64;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    /// A stall delays the syncs under its prefixes that start before its end, until that end, and no
    /// other sync; it draws nothing from the RNG.
    #[tokio::test]
    async fn a_stall_delays_only_syncs_under_its_prefixes_until_its_end() {
        let disk = SimDisk::new(7);
        disk.create_dir_all("data/a").unwrap();
        disk.create_dir_all("data/b").unwrap();
        let stalled = disk.open("data/a/x", true).unwrap();
        let free = disk.open("data/b/y", true).unwrap();
        let until = tokio::time::Instant::now() + Duration::from_millis(50);
        let stall = FsyncStall { path_prefixes: vec!["data/a/".to_owned()], until };
        disk.set_faults(SimDiskFaults { fsync_stall: Some(stall), ..SimDiskFaults::default() });
        free.write_at(0, b"free").unwrap();
        free.sync().await.unwrap();
        disk.sync_dir("data/b").await.unwrap();
        assert_eq!(disk.stats().delayed_syncs, 0, "a path outside the stall");
        stalled.write_at(0, b"slow").unwrap();
        stalled.sync().await.unwrap();
        assert!(tokio::time::Instant::now() >= until, "the stalled sync ended before the stall");
        assert_eq!(disk.stats().delayed_syncs, 1);
        stalled.write_at(4, b"er").unwrap();
        stalled.sync().await.unwrap();
        assert_eq!(disk.stats().delayed_syncs, 1, "a sync that starts after the stall's end");
    }

    #[test]
    fn unsynced_write_is_lost_and_synced_write_survives_a_crash() {
        let disk = SimDisk::new(1);
        disk.set_faults(SimDiskFaults { torn_write_probability: 0.0, ..SimDiskFaults::default() });
        let file = disk.open("a", true).unwrap();
        block_on(disk.sync_dir("")).unwrap();
        file.write_at(0, b"hello").unwrap();
        block_on(file.sync()).unwrap();
        assert_eq!(disk.stats().synced_bytes, 5);
        // Many crashes: the synced prefix always survives; the unsynced write sometimes does not.
        let mut lost = 0;
        for _ in 0..32 {
            let file = disk.open("a", false).unwrap();
            file.set_len(5).unwrap();
            block_on(file.sync()).unwrap();
            file.write_at(5, b" world").unwrap();
            assert_eq!(&file.read_at(0, 100).unwrap()[..], b"hello world");
            disk.crash();
            let file = disk.open("a", false).unwrap();
            let content = file.read_at(0, 100).unwrap();
            assert!(content.starts_with(b"hello"));
            if content.len() == 5 {
                lost += 1;
            } else {
                assert_eq!(&content[..], b"hello world");
            }
        }
        assert!(lost > 0 && lost < 32, "lost {lost} of 32");
    }

    #[test]
    fn sync_covers_only_writes_issued_before_it() {
        let disk = SimDisk::new(2);
        disk.set_faults(SimDiskFaults { torn_write_probability: 0.0, ..SimDiskFaults::default() });
        let file = disk.open("a", true).unwrap();
        block_on(disk.sync_dir("")).unwrap();
        file.write_at(0, b"one").unwrap();
        let sync = file.sync();
        file.write_at(3, b"two").unwrap();
        block_on(sync).unwrap();
        assert_eq!(disk.durable_content("a").unwrap(), b"one");
    }

    #[test]
    fn unsynced_creation_vanishes_and_unsynced_removal_is_undone() {
        let disk = SimDisk::new(3);
        disk.create_dir_all("d").unwrap();
        let kept = disk.open("d/kept", true).unwrap();
        kept.write_at(0, b"x").unwrap();
        block_on(kept.sync()).unwrap();
        block_on(disk.sync_dir("d")).unwrap();
        disk.open("d/new", true).unwrap();
        disk.remove("d/kept").unwrap();
        assert_eq!(disk.list("d").unwrap(), vec!["new".to_string()]);
        disk.crash();
        assert_eq!(disk.list("d").unwrap(), vec!["kept".to_string()]);
        assert_eq!(&disk.open("d/kept", false).unwrap().read_at(0, 10).unwrap()[..], b"x");
    }

    /// `list` names the files and directories directly in a directory, whatever sorts between a
    /// subdirectory and its own entries ('-' and '.' sort before '/', '0' right after it).
    #[test]
    fn list_names_what_is_directly_in_a_directory() {
        let disk = SimDisk::new(3);
        let dirs = ["d", "d/1", "d/1-x", "d/1/a", "d/1/a/b", "d/10", "d/1-x/q", "d/2", "e", "e.d"];
        let files = ["top", "d/1.log", "d/1/z.log", "d/1/a/b/c", "d/1-x/f", "d/10.log", "d/3", "e.d/g"];
        for dir in dirs {
            disk.create_dir_all(dir).unwrap();
        }
        for path in files {
            disk.open(path, true).unwrap();
        }
        for dir in ["", "d", "d/1", "d/1/a", "d/1-x", "e", "e.d", "nowhere"] {
            let mut expected: Vec<String> = dirs
                .iter()
                .chain(&files)
                .filter_map(|path| {
                    let rest = if dir.is_empty() { Some(*path) } else { path.strip_prefix(&format!("{dir}/")) };
                    rest.filter(|rest| !rest.contains('/')).map(str::to_string)
                })
                .collect();
            expected.sort();
            assert_eq!(disk.list(dir).unwrap(), expected, "{dir:?}");
        }
    }

    /// A directory sync makes its own entries durable, and not those of its subdirectories, before,
    /// between and after them in path order.
    #[test]
    fn a_directory_sync_covers_its_own_entries_only() {
        let disk = SimDisk::new(3);
        for dir in ["d", "d/0", "d/1", "d/10", "e"] {
            disk.create_dir_all(dir).unwrap();
        }
        for path in ["d/.a", "d/0/x", "d/0.log", "d/1/y", "d/10/z", "d/1a", "d/z", "e/w"] {
            disk.open(path, true).unwrap();
        }
        block_on(disk.sync_dir("d")).unwrap();
        block_on(disk.sync_dir("d/1")).unwrap();
        disk.crash();
        assert_eq!(disk.list("d").unwrap(), [".a", "0", "0.log", "1", "10", "1a", "z"]);
        for (dir, kept) in [("d/0", &[][..]), ("d/1", &["y"][..]), ("d/10", &[][..]), ("e", &[][..])] {
            assert_eq!(disk.list(dir).unwrap(), kept, "{dir}");
        }
    }

    #[test]
    fn handles_go_stale_after_a_crash() {
        let disk = SimDisk::new(4);
        let file = disk.open("a", true).unwrap();
        block_on(disk.sync_dir("")).unwrap();
        disk.crash();
        assert!(file.write_at(0, b"x").is_err());
        assert!(file.read_at(0, 1).is_err());
        assert!(file.len().is_err());
        assert!(block_on(file.sync()).is_err());
        assert!(disk.open("a", false).unwrap().write_at(0, b"x").is_ok());
    }

    #[test]
    fn failed_sync_keeps_a_prefix_and_later_reads_show_it() {
        let disk = SimDisk::new(5);
        disk.set_faults(SimDiskFaults { fsync_error_probability: 1.0, ..SimDiskFaults::default() });
        let file = disk.open("a", true).unwrap();
        let mut shrank = false;
        for round in 0..16u8 {
            file.set_len(0).unwrap();
            file.write_at(0, &[round; 100]).unwrap();
            assert!(block_on(file.sync()).is_err());
            let len = file.len().unwrap();
            assert!(len <= 100);
            shrank |= len < 100;
        }
        assert!(shrank);
        assert_eq!(disk.stats().sync_errors, 16);
    }

    #[test]
    fn opens_past_the_open_files_limit_fail_with_emfile_until_a_descriptor_closes() {
        let disk = SimDisk::new(3);
        disk.set_open_files_max(Some(2));
        let a = disk.open("a", true).unwrap();
        let a_clone = a.clone();
        let b = disk.open("b", true).unwrap();
        let Err(error) = disk.open("c", true) else { panic!("a third descriptor past the limit") };
        assert_eq!(error.raw_os_error(), None, "wrapped with the path: {error}");
        assert!(error.to_string().contains("os error 24"), "{error}");
        assert_eq!(disk.stats().open_files_refused, 1);
        drop(a);
        assert!(disk.open("c", true).is_err(), "a clone keeps the descriptor open");
        drop(a_clone);
        let _c = disk.open("c", true).unwrap();
        drop(b);
        assert_eq!((disk.open_files(), disk.stats().open_files_peak), (1, 2));
    }

    #[test]
    fn injected_write_errors_keep_a_strict_prefix_and_say_which_error() {
        let disk = SimDisk::new(8);
        let file = disk.open("a", true).unwrap();
        file.write_at(0, b"kept").unwrap();
        disk.set_faults(SimDiskFaults { write_eio_probability: 1.0, ..SimDiskFaults::default() });
        let mut lengths = BTreeSet::new();
        for _ in 0..32 {
            file.set_len(4).unwrap();
            let error = file.write_at(4, &[7u8; 10]).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::Other, "{error}");
            let content = file.read_at(0, 100).unwrap();
            assert!(content.starts_with(b"kept"), "earlier writes stay in the page cache");
            assert!(content.len() < 14, "a failed write never lands whole");
            assert!(content[4..].iter().all(|byte| *byte == 7), "the prefix is the data's own");
            lengths.insert(content.len());
        }
        assert!(lengths.len() > 1, "the prefix length is drawn: {lengths:?}");
        disk.set_faults(SimDiskFaults { write_enospc_probability: 1.0, ..SimDiskFaults::default() });
        assert_eq!(file.write_at(4, b"x").unwrap_err().kind(), io::ErrorKind::StorageFull);
        assert_eq!(disk.stats().write_errors, 33);
        disk.set_faults(SimDiskFaults::default());
        file.write_at(4, b"!").unwrap();
        assert_eq!(&file.read_at(0, 5).unwrap()[..], b"kept!");
    }

    #[test]
    fn out_of_range_operations_do_not_panic() {
        let disk = SimDisk::new(6);
        let file = disk.open("a", true).unwrap();
        file.write_at(0, b"abc").unwrap();
        assert!(file.read_at(u64::MAX, usize::MAX).unwrap().is_empty());
        assert_eq!(&file.read_at(1, usize::MAX).unwrap()[..], b"bc");
        assert!(file.write_at(u64::MAX, b"x").is_err());
        assert!(file.set_len(u64::MAX).is_err());
        assert!(disk.open("missing/a", true).is_err());
        assert!(disk.flip_bit("a", 99, 0).is_err());
        assert!(disk.list("nowhere").unwrap().is_empty());
    }

    /// Writes `content` to `path`, syncs it and its directory: a durable file.
    fn durable_file(disk: &SimDisk, path: &str, content: &[u8]) -> SimFile {
        let file = disk.open(path, true).unwrap();
        file.write_at(0, content).unwrap();
        block_on(file.sync()).unwrap();
        block_on(disk.sync_dir(parent_of(path))).unwrap();
        file
    }

    #[test]
    fn random_bit_flip_hits_one_bit_of_a_durable_file_with_the_suffix() {
        let disk = SimDisk::new(10);
        disk.create_dir_all("p").unwrap();
        let content: Vec<u8> = (0..200u8).collect();
        let log = durable_file(&disk, "p/0.log", &content);
        durable_file(&disk, "p/0.index", &content);
        // Not candidates: an unsynced creation, an empty file, a file with another suffix.
        disk.open("p/1.log", true).unwrap().write_at(0, b"unsynced").unwrap();
        durable_file(&disk, "p/2.log", b"");
        assert_eq!(disk.flip_random_durable_bit(".nothing"), None);
        let mut flipped_bytes = BTreeSet::new();
        for round in 1..=20u64 {
            let before = disk.durable_content("p/0.log").unwrap();
            let flip = disk.flip_random_durable_bit(".log").expect("a candidate exists");
            assert_eq!(flip.path, "p/0.log");
            let after = disk.durable_content("p/0.log").unwrap();
            let changed: Vec<usize> = (0..before.len()).filter(|&i| before[i] != after[i]).collect();
            assert_eq!(changed, vec![flip.byte as usize], "exactly the reported byte changed");
            assert_eq!(before[flip.byte as usize] ^ after[flip.byte as usize], 1 << flip.bit, "one bit");
            assert_eq!(&log.read_at(0, 1000).unwrap()[..], &after[..], "reads see the flip");
            assert_eq!(disk.stats().bit_flips, round);
            flipped_bytes.insert(flip.byte);
        }
        assert!(flipped_bytes.len() > 1, "the byte is drawn: {flipped_bytes:?}");
        assert!(format!("{:?}", disk.stats()).ends_with("crashes: 0, bit_flips: 20 }"));
        assert!(format!("{:?}", SimDiskStats::default()).ends_with("crashes: 0 }"), "as before the counter");
        assert_eq!(disk.durable_content("p/0.index").unwrap(), content, "other suffixes untouched");
        // Durable: a crash keeps the flips.
        let rotten = disk.durable_content("p/0.log").unwrap();
        disk.crash();
        assert_eq!(&disk.open("p/0.log", false).unwrap().read_at(0, 1000).unwrap()[..], &rotten[..]);
    }

    #[test]
    fn random_bit_flip_is_a_function_of_the_seed_and_spares_unsynced_overwrites() {
        let run = |seed: u64| {
            let disk = SimDisk::new(seed);
            let file = durable_file(&disk, "a.log", &[0u8; 64]);
            // An unsynced overwrite of every byte: reads keep seeing it, whatever rots underneath.
            file.write_at(0, &[0xff; 64]).unwrap();
            let flip = disk.flip_random_durable_bit(".log").unwrap();
            assert_eq!(&file.read_at(0, 64).unwrap()[..], &[0xff; 64][..]);
            let durable = disk.durable_content("a.log").unwrap();
            assert_eq!(durable[flip.byte as usize], 1 << flip.bit);
            // Syncing the overwrite heals the rot.
            block_on(file.sync()).unwrap();
            assert_eq!(disk.durable_content("a.log").unwrap(), vec![0xff; 64]);
            flip
        };
        assert_eq!(run(11), run(11));
        assert!((12..20).any(|seed| run(seed) != run(11)), "the draw depends on the seed");
    }

    #[test]
    fn flip_bit_changes_durable_and_current_bytes() {
        let disk = SimDisk::new(7);
        let file = disk.open("a", true).unwrap();
        file.write_at(0, &[0u8; 4]).unwrap();
        block_on(file.sync()).unwrap();
        disk.flip_bit("a", 2, 3).unwrap();
        assert_eq!(&file.read_at(0, 4).unwrap()[..], &[0, 0, 8, 0]);
        assert_eq!(disk.durable_content("a"), None, "creation not yet durable");
        block_on(disk.sync_dir("")).unwrap();
        assert_eq!(disk.durable_content("a").unwrap(), vec![0, 0, 8, 0]);
    }

    #[test]
    fn a_misdirected_write_lands_4_to_16_kib_away_only_on_matching_files_and_leaves_the_target_alone() {
        let disk = SimDisk::new(5);
        disk.create_dir_all("p").unwrap();
        let log = disk.open("p/0.log", true).unwrap();
        let index = disk.open("p/0.index", true).unwrap();
        log.write_at(0, &[1u8; 32 * 1024]).unwrap();
        disk.set_faults(SimDiskFaults { misdirected_write_probability: 1.0, ..SimDiskFaults::default() });
        index.write_at(0, &[9u8; 16]).unwrap();
        assert_eq!(&index.read_at(0, 16).unwrap()[..], &[9u8; 16][..], "other suffixes are never misdirected");
        log.write_at(16 * 1024, &[7u8; 100]).unwrap();
        assert_eq!(&log.read_at(16 * 1024, 100).unwrap()[..], &[1u8; 100][..], "the aimed-at bytes keep their content");
        let content = log.read_at(0, 64 * 1024).unwrap();
        let landed: Vec<usize> = (0..content.len()).filter(|&at| content[at] == 7).collect();
        assert_eq!(landed.len(), 100);
        let start = landed[0] as i64 - 16 * 1024;
        assert!(start % 4096 == 0 && (4096..=16384).contains(&start.abs()), "landed {start} bytes away");
        assert_eq!(disk.stats().misdirected_writes, 1);
        assert_eq!(disk.misdirected_paths().into_iter().collect::<Vec<_>>(), vec!["p/0.log".to_owned()]);
        // Off again: writes land where aimed.
        disk.set_faults(SimDiskFaults::default());
        log.write_at(0, &[3u8; 8]).unwrap();
        assert_eq!(&log.read_at(0, 8).unwrap()[..], &[3u8; 8][..]);
    }
}
