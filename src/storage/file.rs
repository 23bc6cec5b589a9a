//! `FileDisk`: real files under a root directory (normal build only).
//!
//! In: relative `/`-separated paths. Out: positional I/O on `std::fs::File`s; `sync` is
//! `fdatasync` and `sync_dir` an `fsync` of the directory, both on tokio's blocking pool, so they
//! need a tokio runtime. Parent directories are created only by `create_dir_all`, never implicitly.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{Disk, DiskFile};

/// Real files under `root`.
#[derive(Debug, Clone)]
pub struct FileDisk {
    root: Arc<PathBuf>,
}

/// An open file; clones share the descriptor.
#[derive(Debug, Clone)]
pub struct FileDiskFile {
    file: Arc<File>,
}

impl FileDisk {
    pub fn new(root: impl Into<PathBuf>) -> FileDisk {
        FileDisk { root: Arc::new(root.into()) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, relative: &str) -> PathBuf {
        let mut path = (*self.root).clone();
        for part in relative.split('/').filter(|part| !part.is_empty() && *part != ".") {
            path.push(part);
        }
        path
    }
}

async fn run_blocking<T: Send + 'static>(work: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join_error) => Err(io::Error::other(format!("blocking storage task failed: {join_error}"))),
    }
}

impl Disk for FileDisk {
    type File = FileDiskFile;

    fn open(&self, path: &str, create: bool) -> io::Result<FileDiskFile> {
        let file = OpenOptions::new().read(true).write(true).create(create).truncate(false).open(self.path(path))?;
        Ok(FileDiskFile { file: Arc::new(file) })
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(self.path(dir)) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            names.push(name.into_string().map_err(|name| io::Error::other(format!("non-UTF-8 file name {name:?}")))?);
        }
        names.sort();
        Ok(names)
    }

    fn create_dir_all(&self, dir: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.path(dir))
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        std::fs::remove_file(self.path(path))
    }

    fn remove_dir_all(&self, dir: &str) -> io::Result<()> {
        std::fs::remove_dir_all(self.path(dir))
    }

    fn sync_dir(&self, dir: &str) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let path = self.path(dir);
        run_blocking(move || File::open(path)?.sync_all())
    }

    /// `fdatasync`s of many files on at most `SYNC_THREADS` blocking threads (one each would take as
    /// many threads as there are partitions syncing: up to the pool's 512, with their stacks and
    /// switching), each thread taking its share in turn.
    fn sync_files(&self, files: Vec<FileDiskFile>) -> impl Future<Output = Vec<io::Result<()>>> + Send + 'static {
        let per_thread = files.len().div_ceil(SYNC_THREADS).max(1);
        let shares: Vec<Vec<FileDiskFile>> = files.chunks(per_thread).map(<[FileDiskFile]>::to_vec).collect();
        async move {
            let threads = shares.into_iter().map(|share| {
                let count = share.len();
                async move {
                    let synced = tokio::task::spawn_blocking(move || {
                        share.iter().map(|file| file.file.sync_data()).collect::<Vec<_>>()
                    })
                    .await;
                    synced.unwrap_or_else(|join_error| {
                        (0..count)
                            .map(|_| Err(io::Error::other(format!("blocking sync failed: {join_error}"))))
                            .collect()
                    })
                }
            });
            futures::future::join_all(threads).await.into_iter().flatten().collect()
        }
    }
}

/// Blocking threads one `sync_files` call uses at most.
pub const SYNC_THREADS: usize = 16;

impl DiskFile for FileDiskFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, pos)
    }

    fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        // Never allocate more than the file holds, whatever `len` says.
        let available = self.len()?.saturating_sub(pos);
        let len = len.min(usize::try_from(available).unwrap_or(usize::MAX));
        let mut buf = BytesMut::zeroed(len);
        let mut filled = 0;
        while filled < len {
            match self.file.read_at(&mut buf[filled..], pos + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
        buf.truncate(filled);
        Ok(buf.freeze())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync(&self) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let file = self.file.clone();
        run_blocking(move || file.sync_data())
    }

    fn sync_now(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_list_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FileDisk::new(dir.path());
        assert!(disk.list("p").unwrap().is_empty());
        assert!(disk.open("p/a", true).is_err(), "parents are not created implicitly");
        disk.create_dir_all("p").unwrap();
        let b = disk.open("p/b", true).unwrap();
        disk.open("p/a", true).unwrap();
        b.write_at(3, b"xyz").unwrap();
        assert_eq!(&b.read_at(0, 100).unwrap()[..], b"\0\0\0xyz");
        assert!(b.read_at(100, usize::MAX).unwrap().is_empty());
        assert_eq!(disk.list("p").unwrap(), vec!["a".to_string(), "b".to_string()]);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            b.sync().await.unwrap();
            disk.sync_dir("p").await.unwrap();
        });
        disk.create_dir_all("q").unwrap();
        let many: Vec<_> = (0..40).map(|i| disk.open(&format!("q/m{i}"), true).unwrap()).collect();
        let results = runtime.block_on(disk.sync_files(many));
        assert_eq!(results.len(), 40);
        assert!(results.iter().all(Result::is_ok));
        disk.remove("p/a").unwrap();
        assert_eq!(disk.list("p").unwrap(), vec!["b".to_string()]);
        disk.remove_dir_all("p").unwrap();
        assert!(disk.list("p").unwrap().is_empty());
    }
}
