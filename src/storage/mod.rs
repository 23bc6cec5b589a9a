//! Storage traits: the narrow waist between Keel's data path and a disk.
//!
//! Everything that persists partition data goes through [`Disk`] and [`DiskFile`]. Two
//! implementations hold the same contract:
//! - [`file::FileDisk`] (normal build only): real files under a root directory, `fdatasync` on a
//!   blocking thread;
//! - [`sim::SimDisk`] (both builds): an in-memory disk that keeps synced and unsynced bytes apart, so a
//!   simulated power loss drops unsynced writes and may tear the last one; it can also fail fsyncs,
//!   flip bits and delay syncs, all drawn from its seed.
//!
//! # Contract
//! - Paths are relative, `/`-separated (`topics/t-0/00000000000000000000.log`).
//! - `write_at` and `set_len` change what later reads see at once, but survive a crash only after a
//!   `sync` of that file that was *called after* them completes with `Ok`.
//! - A `write_at` that returns an error may have written a strict prefix of its data (possibly
//!   nothing), never all of it: `pwrite` reports an error only for a call that wrote nothing, so a
//!   short write followed by an error is the worst case. A disk full is reported as
//!   `io::ErrorKind::StorageFull` (std's mapping of ENOSPC) so callers can tell it apart.
//! - Creating or removing a file is durable only after `sync_dir` of its parent completes.
//! - After a failed `sync`, the file's unsynced bytes are in an unknown state (as on Linux, where a
//!   failed fsync may drop dirty pages): callers must re-read the file (recovery) before trusting
//!   anything they have not seen synced.

use std::future::Future;
use std::io;

use bytes::Bytes;

#[cfg(not(madsim))]
pub mod file;
pub mod handles;
pub mod sim;

pub trait Disk: Clone + Send + Sync + 'static {
    type File: DiskFile;

    /// Opens the file at `path`, creating it (empty) when `create` is set and it does not exist.
    fn open(&self, path: &str, create: bool) -> io::Result<Self::File>;
    /// Names (not paths) of the entries directly under `dir`, sorted. A missing dir is empty.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &str) -> io::Result<()>;
    /// Removes one file.
    fn remove(&self, path: &str) -> io::Result<()>;
    /// Removes `dir` and everything under it.
    fn remove_dir_all(&self, dir: &str) -> io::Result<()>;
    /// Makes the creations and removals of entries under `dir` durable.
    fn sync_dir(&self, dir: &str) -> impl Future<Output = io::Result<()>> + Send + 'static;
    /// Syncs each of `files` (as [`DiskFile::sync`] of each, called when the future is first polled)
    /// and returns each one's result, in order. An implementation may do it more cheaply than one
    /// sync at a time: `file::FileDisk` spreads them over a few blocking threads instead of one each.
    fn sync_files(&self, files: Vec<Self::File>) -> impl Future<Output = Vec<io::Result<()>>> + Send + 'static {
        async move {
            let syncs: Vec<_> = files.iter().map(DiskFile::sync).collect();
            futures::future::join_all(syncs).await
        }
    }
}

pub trait DiskFile: Clone + Send + Sync + 'static {
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Writes all of `data` at `pos` (extending the file if needed).
    fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()>;
    /// Reads up to `len` bytes at `pos`; fewer only at the end of the file.
    fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes every write issued before this call durable. The future owns what it needs, so the
    /// caller can keep writing while it runs (group commit).
    fn sync(&self) -> impl Future<Output = io::Result<()>> + Send + 'static;
    /// As `sync`, blocking the calling thread until it is done. Only for the open-file budget, which
    /// syncs a handle with unsynced writes before closing it, inside a synchronous call
    /// (`handles::Handles`); everything else uses `sync`.
    fn sync_now(&self) -> io::Result<()>;
}
