//! A `SimDisk` whose syncs yield once, so a test can drop a log operation between two of its syncs
//! (`tests/log_model.rs`, `tests/compaction_model.rs`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use keel::storage::sim::{SimDisk, SimFile};
use keel::storage::{Disk, DiskFile};

/// A SimDisk whose syncs (of files and directories) each yield once before they run, so a test can
/// poll a log operation a given number of times and drop it half-way, deterministically.
#[derive(Clone)]
pub struct YieldingDisk(pub SimDisk);

#[derive(Clone)]
pub struct YieldingFile(SimFile);

/// Pending on its first poll (waking itself at once), ready on the next.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Disk for YieldingDisk {
    type File = YieldingFile;
    fn open(&self, path: &str, create: bool) -> std::io::Result<YieldingFile> {
        self.0.open(path, create).map(YieldingFile)
    }
    fn list(&self, dir: &str) -> std::io::Result<Vec<String>> {
        self.0.list(dir)
    }
    fn create_dir_all(&self, dir: &str) -> std::io::Result<()> {
        self.0.create_dir_all(dir)
    }
    fn remove(&self, path: &str) -> std::io::Result<()> {
        self.0.remove(path)
    }
    fn remove_dir_all(&self, dir: &str) -> std::io::Result<()> {
        self.0.remove_dir_all(dir)
    }
    fn sync_dir(&self, dir: &str) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
        let sync = self.0.sync_dir(dir);
        async move {
            YieldOnce(false).await;
            sync.await
        }
    }
}

impl DiskFile for YieldingFile {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn write_at(&self, pos: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write_at(pos, data)
    }
    fn read_at(&self, pos: u64, len: usize) -> std::io::Result<Bytes> {
        self.0.read_at(pos, len)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync(&self) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
        // What the sync covers is decided now, as SimDisk's own.
        let sync = self.0.sync();
        async move {
            YieldOnce(false).await;
            sync.await
        }
    }
    fn sync_now(&self) -> std::io::Result<()> {
        self.0.sync_now()
    }
}

/// Polls `future` at most `n_polls` times (it must not wait for anything but its own yields).
pub fn poll_at_most<F: Future>(future: F, n_polls: usize) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    (0..n_polls).find_map(|_| match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    })
}
