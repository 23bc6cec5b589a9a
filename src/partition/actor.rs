//! The partition actor: the shell that owns one partition's log and drives its sans-IO core.
//!
//! One task per partition, fed by a bounded mailbox ([`MAILBOX_MAX`]); backpressure comes from
//! that bound, not from locks. Group commit falls out of the loop: while one fsync is in flight, new
//! appends are written to the page cache, and the next fsync covers all of them at once.
//!
//! The loop performs each [`Ready`] in order: writes, then starting the sync, then reads, then
//! replies, and after the writes it tells the core what became of them (`Written`, or `WriteFailed`
//! at the first batch that failed, after which it writes nothing more), then takes the next `Ready`
//! until the core has nothing left to do. The shell never decides which replies a failure cancels:
//! the core emits a `Produced` only for batches already reported written (see the Ready contract in
//! `partition::core`). On a storage failure (a write or a sync fails) it drops the in-flight sync,
//! tells the core, reopens the log (recovery truncates whatever the disk lost or tore) and tells the
//! core what survived.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::batch::Batch;
use crate::log::{LogConfig, LogError, PartitionLog};
use crate::partition::core::{CoreConfig, Input, PartitionCore, Ready, Reply, RequestId};
use crate::protocol::{Acks, ErrorCode};
use crate::storage::Disk;
use crate::types::{LeaderEpoch, Offset, TimestampMs};

/// Commands queued for one partition before senders wait.
pub const MAILBOX_MAX: usize = 1024;
/// Fetch responses are capped at this many bytes, whatever the request asks.
pub const FETCH_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Long polls are capped at this wait.
pub const FETCH_WAIT_MS_MAX: u32 = 30_000;

/// What a request gets back from its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionReply {
    Produced { base_offset: Offset },
    Fetched { high_watermark: Offset, log_start: Offset, records: Bytes },
    Offset { offset: Option<Offset>, timestamp_ms: TimestampMs },
    Error { code: ErrorCode, message: String },
}

impl PartitionReply {
    fn error(code: ErrorCode, message: impl Into<String>) -> PartitionReply {
        PartitionReply::Error { code, message: message.into() }
    }
}

/// The `timestamp_ms` selector of ListOffsets, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    Timestamp(TimestampMs),
}

enum Command {
    Append { batch: Batch, acks: Acks, reply: oneshot::Sender<PartitionReply> },
    Fetch { offset: Offset, bytes_max: u32, wait_ms_max: u32, reply: oneshot::Sender<PartitionReply> },
    ListOffsets { spec: OffsetSpec, reply: oneshot::Sender<PartitionReply> },
    Stop { reply: oneshot::Sender<Result<(), String>> },
}

/// A cheap handle to a running partition actor.
#[derive(Clone, Debug)]
pub struct PartitionHandle {
    mailbox: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Append { .. } => "Append",
            Command::Fetch { .. } => "Fetch",
            Command::ListOffsets { .. } => "ListOffsets",
            Command::Stop { .. } => "Stop",
        })
    }
}

/// A reply that will arrive later. Created in mailbox order, so appends from one connection are
/// written in the order they were read off the socket.
pub type PendingReply = oneshot::Receiver<PartitionReply>;

impl PartitionHandle {
    /// Queues an append; waits only for mailbox space (backpressure), not for the append.
    pub async fn append(&self, batch: Batch, acks: Acks) -> PendingReply {
        let (reply, receiver) = oneshot::channel();
        self.send(Command::Append { batch, acks, reply }).await;
        receiver
    }

    pub async fn fetch(&self, offset: Offset, bytes_max: u32, wait_ms_max: u32) -> PendingReply {
        let (reply, receiver) = oneshot::channel();
        self.send(Command::Fetch { offset, bytes_max, wait_ms_max, reply }).await;
        receiver
    }

    pub async fn list_offsets(&self, spec: OffsetSpec) -> PendingReply {
        let (reply, receiver) = oneshot::channel();
        self.send(Command::ListOffsets { spec, reply }).await;
        receiver
    }

    /// Stops the actor after an fsync of everything it wrote.
    pub async fn stop(&self) -> Result<(), String> {
        let (reply, receiver) = oneshot::channel();
        if self.mailbox.send(Command::Stop { reply }).await.is_err() {
            return Ok(()); // already stopped
        }
        receiver.await.unwrap_or(Ok(()))
    }

    async fn send(&self, command: Command) {
        // A closed mailbox means the actor stopped; the dropped reply sender tells the caller.
        let _ = self.mailbox.send(command).await;
    }
}

pub struct PartitionSpec<D: Disk> {
    pub disk: D,
    pub dir: String,
    pub name: String,
    pub log_config: LogConfig,
    pub core_config: CoreConfig,
}

/// First wait before retrying to open a log that failed; doubles up to `REOPEN_BACKOFF_MS_MAX`.
pub const REOPEN_BACKOFF_MS_MIN: u64 = 50;
pub const REOPEN_BACKOFF_MS_MAX: u64 = 1_000;

/// Opens (recovers) the partition's log and spawns its actor. A log that cannot be opened (a disk
/// error) does not stop the broker: the partition starts failed, answers `StorageError`, and retries
/// the open with backoff until it succeeds.
pub async fn spawn_partition<D: Disk>(spec: PartitionSpec<D>) -> PartitionHandle {
    let now = tokio::time::Instant::now();
    let (log, core, reopen_at) = match PartitionLog::open(spec.disk.clone(), &spec.dir, spec.log_config.clone()).await {
        Ok((log, report)) => {
            tracing::info!(
                partition = %spec.name,
                log_start = %report.log_start_offset,
                log_end = %report.log_end_offset,
                truncated_bytes = report.truncated_bytes,
                segments = report.segments,
                "partition opened"
            );
            let core = PartitionCore::new(
                spec.core_config.clone(),
                LeaderEpoch(0),
                log.log_start_offset(),
                log.log_end_offset(),
            );
            (Some(log), core, None)
        }
        Err(error) => {
            tracing::error!(partition = %spec.name, %error, "cannot open the partition log; will retry");
            let core = PartitionCore::new_failed(spec.core_config.clone(), LeaderEpoch(0));
            (None, core, Some(now + Duration::from_millis(REOPEN_BACKOFF_MS_MIN)))
        }
    };
    let (mailbox, receiver) = mpsc::channel(MAILBOX_MAX);
    let actor = Actor {
        spec,
        log,
        core,
        replies: BTreeMap::new(),
        next_request: 0,
        epoch: now,
        reopen_at,
        reopen_backoff: Duration::from_millis(REOPEN_BACKOFF_MS_MIN),
    };
    tokio::spawn(actor.run(receiver));
    PartitionHandle { mailbox }
}

type SyncFuture = Pin<Box<dyn Future<Output = Result<Offset, LogError>> + Send>>;

struct Actor<D: Disk> {
    spec: PartitionSpec<D>,
    /// `None` while the log is being reopened after a failure, or when reopening failed.
    log: Option<PartitionLog<D>>,
    core: PartitionCore,
    replies: BTreeMap<RequestId, oneshot::Sender<PartitionReply>>,
    next_request: RequestId,
    /// Time zero for the core's millisecond clock.
    epoch: tokio::time::Instant,
    /// When to try reopening a failed log next (`None` while the log is open).
    reopen_at: Option<tokio::time::Instant>,
    reopen_backoff: Duration,
}

impl<D: Disk> Actor<D> {
    fn now_ms(&self) -> TimestampMs {
        self.epoch.elapsed().as_millis() as TimestampMs
    }

    async fn run(mut self, mut mailbox: mpsc::Receiver<Command>) {
        let mut sync: Option<SyncFuture> = None;
        loop {
            let core_deadline = self.core.next_deadline_ms().map(|ms| self.epoch + Duration::from_millis(ms as u64));
            let deadline = match (core_deadline, self.reopen_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                biased;
                result = async { sync.as_mut().expect("guarded").await }, if sync.is_some() => {
                    sync = None;
                    match result {
                        Ok(up_to) => self.sync_completed(up_to),
                        Err(error) => self.storage_failed(format!("fsync failed: {error}")).await,
                    }
                }
                command = mailbox.recv() => {
                    let Some(command) = command else { break };
                    if let Command::Stop { reply } = command {
                        // Finish the in-flight sync first so its waiters get their answer.
                        if let Some(in_flight) = sync.take() {
                            match in_flight.await {
                                Ok(up_to) => self.sync_completed(up_to),
                                Err(error) => self.storage_failed(format!("fsync failed: {error}")).await,
                            }
                            self.drive(&mut sync);
                        }
                        let result = self.close().await;
                        let _ = reply.send(result);
                        return;
                    }
                    self.handle(command);
                }
                _ = crate::clock::sleep_until_opt(deadline), if deadline.is_some() => {
                    let now_ms = self.now_ms();
                    self.core.step(Input::Tick { now_ms });
                }
            }
            self.drive(&mut sync);
            if self.reopen_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
                self.reopen().await;
                self.drive(&mut sync);
            }
        }
        let _ = self.close().await;
    }

    fn sync_completed(&mut self, covered: Offset) {
        let Some(log) = self.log.as_mut() else { return };
        log.mark_durable(covered);
        // The log decides how far durability really reached (it may be less than `covered` if an
        // earlier sync is still outstanding); the core follows the log.
        let up_to = log.durable_end_offset();
        self.core.step(Input::SyncCompleted { up_to });
    }

    async fn close(&mut self) -> Result<(), String> {
        // Fail whatever is still waiting: the caller is shutting the partition down.
        for (_, reply) in std::mem::take(&mut self.replies) {
            let _ = reply.send(PartitionReply::error(ErrorCode::ShuttingDown, "partition is shutting down"));
        }
        match self.log.take() {
            Some(log) => log.close().await.map_err(|error| error.to_string()),
            None => Ok(()),
        }
    }

    fn register(&mut self, reply: oneshot::Sender<PartitionReply>) -> RequestId {
        let request = self.next_request;
        self.next_request += 1;
        self.replies.insert(request, reply);
        request
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Append { batch, acks, reply } => {
                let request = self.register(reply);
                self.core.step(Input::Append { request, batch, acks });
            }
            Command::Fetch { offset, bytes_max, wait_ms_max, reply } => {
                let request = self.register(reply);
                let now_ms = self.now_ms();
                self.core.step(Input::Fetch {
                    request,
                    offset,
                    bytes_max: bytes_max.min(FETCH_BYTES_MAX),
                    wait_ms_max: wait_ms_max.min(FETCH_WAIT_MS_MAX),
                    now_ms,
                });
            }
            Command::ListOffsets { spec, reply } => {
                let answer = self.list_offsets(spec);
                let _ = reply.send(answer);
            }
            Command::Stop { .. } => unreachable!("handled by the loop"),
        }
    }

    fn list_offsets(&self, spec: OffsetSpec) -> PartitionReply {
        if self.core.is_failed() {
            return PartitionReply::error(ErrorCode::StorageError, "partition storage failed; recovering");
        }
        let high_watermark = self.core.high_watermark();
        match spec {
            OffsetSpec::Earliest => PartitionReply::Offset { offset: Some(self.core.log_start()), timestamp_ms: -1 },
            OffsetSpec::Latest => PartitionReply::Offset { offset: Some(high_watermark), timestamp_ms: -1 },
            OffsetSpec::Timestamp(timestamp_ms) => {
                let Some(log) = self.log.as_ref() else {
                    return PartitionReply::error(ErrorCode::StorageError, "partition storage is recovering");
                };
                match log.offset_for_timestamp(timestamp_ms) {
                    // Records at or past the high watermark are not visible yet.
                    Ok(Some((offset, found_ms))) if offset < high_watermark => {
                        PartitionReply::Offset { offset: Some(offset), timestamp_ms: found_ms }
                    }
                    Ok(_) => PartitionReply::Offset { offset: None, timestamp_ms: -1 },
                    Err(error) => PartitionReply::error(ErrorCode::StorageError, error.to_string()),
                }
            }
        }
    }

    /// Performs the core's `Ready`s until it has nothing left to do. A `Ready` with writes leads to
    /// another (their replies, or a sync covering them), so one call may take several.
    fn drive(&mut self, sync: &mut Option<SyncFuture>) {
        loop {
            let ready = self.core.ready();
            if ready.is_empty() {
                return;
            }
            self.perform(ready, sync);
        }
    }

    /// Performs one `Ready` in its contract order: writes (reported to the core), sync, reads, replies.
    fn perform(&mut self, ready: Ready, sync: &mut Option<SyncFuture>) {
        let Ready { writes, start_sync, reads, replies } = ready;
        if !writes.is_empty() {
            self.write(&writes, sync);
        }
        if start_sync {
            // The core starts no sync while storage is failed, and none in a Ready with writes.
            if let Some(log) = self.log.as_mut() {
                debug_assert!(sync.is_none(), "the core starts one sync at a time");
                *sync = Some(Box::pin(log.begin_sync()));
            }
        }
        for read in reads {
            let answer = match self.log.as_ref() {
                Some(log) => match log.read(read.offset, read.bytes_max as usize, read.up_to) {
                    Ok(records) => {
                        PartitionReply::Fetched { high_watermark: read.up_to, log_start: read.log_start, records }
                    }
                    Err(LogError::OffsetOutOfRange { requested, log_start, log_end }) => PartitionReply::error(
                        ErrorCode::OffsetOutOfRange,
                        format!("offset {requested} is outside the log [{log_start}, {log_end}]"),
                    ),
                    Err(error) => PartitionReply::error(ErrorCode::StorageError, error.to_string()),
                },
                None => PartitionReply::error(ErrorCode::StorageError, "partition storage is recovering"),
            };
            if let Some(reply) = self.replies.remove(&read.request) {
                let _ = reply.send(answer);
            }
        }
        for (request, reply) in replies {
            let answer = match reply {
                Reply::Produced { base_offset } => PartitionReply::Produced { base_offset },
                Reply::FetchEmpty { high_watermark, log_start } => {
                    PartitionReply::Fetched { high_watermark, log_start, records: Bytes::new() }
                }
                Reply::Error { code, message } => PartitionReply::Error { code, message },
            };
            if let Some(sender) = self.replies.remove(&request) {
                let _ = sender.send(answer);
            }
        }
    }

    /// Appends the batches in order, stopping at the first failure, and reports the outcome to the
    /// core. Root cause of issue 7: this loop used to stop at a failed write but the caller still sent
    /// every reply of the `Ready`, which with `fsync=never` included a `Produced` for the failed batch
    /// (and for the batches after it), whose offsets recovery then gave to other batches. Now no reply
    /// for a batch exists before the core is told the batch was written.
    fn write(&mut self, writes: &[Batch], sync: &mut Option<SyncFuture>) {
        let failure = match self.log.as_mut() {
            Some(log) => {
                writes.iter().find_map(|batch| log.append(batch).err().map(|error| (batch.base_offset(), error)))
            }
            // Unreachable while the core hands out writes only when storage is not failed; if it ever
            // happens, nothing was written, which is what this reports.
            None => Some((writes[0].base_offset(), LogError::Failed)),
        };
        match failure {
            None => {
                let up_to = writes.last().expect("writes is not empty").next_offset();
                self.core.step(Input::Written { up_to });
            }
            Some((written_up_to, error)) => {
                // The in-flight sync (if any) proves nothing about the log recovery will produce.
                *sync = None;
                let disk_full = error.is_disk_full();
                let reason = format!("write failed: {error}");
                self.storage_failed_now(Input::WriteFailed { written_up_to, disk_full, reason });
            }
        }
    }

    /// Drops the log, tells the core (`failure` is `WriteFailed` or `StorageFailed`) and schedules the
    /// reopen. The core's answers go out with the next `drive`.
    fn storage_failed_now(&mut self, failure: Input) {
        tracing::error!(partition = %self.spec.name, ?failure, "partition storage failed; reopening the log");
        self.log = None;
        self.reopen_at = Some(tokio::time::Instant::now());
        self.core.step(failure);
    }

    async fn storage_failed(&mut self, reason: String) {
        self.storage_failed_now(Input::StorageFailed { reason });
        // Answer the appends the failure made indeterminate before the (slow) reopen. A failed core
        // starts no sync, so there is none to keep.
        let mut no_sync = None;
        self.drive(&mut no_sync);
        debug_assert!(no_sync.is_none(), "a failed core started a sync");
        self.reopen().await;
    }

    async fn reopen(&mut self) {
        match PartitionLog::open(self.spec.disk.clone(), &self.spec.dir, self.spec.log_config.clone()).await {
            Ok((log, report)) => {
                tracing::warn!(
                    partition = %self.spec.name,
                    log_end = %report.log_end_offset,
                    truncated_bytes = report.truncated_bytes,
                    "partition log recovered after a storage failure"
                );
                let (log_start, log_end) = (log.log_start_offset(), log.log_end_offset());
                self.log = Some(log);
                self.reopen_at = None;
                self.reopen_backoff = Duration::from_millis(REOPEN_BACKOFF_MS_MIN);
                self.core.step(Input::Recovered { log_start, log_end });
            }
            Err(error) => {
                // Stay failed (requests get StorageError) and try again after a backoff.
                tracing::error!(partition = %self.spec.name, %error, retry_in = ?self.reopen_backoff, "reopening the partition log failed");
                self.reopen_at = Some(tokio::time::Instant::now() + self.reopen_backoff);
                self.reopen_backoff = (self.reopen_backoff * 2).min(Duration::from_millis(REOPEN_BACKOFF_MS_MAX));
            }
        }
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use crate::batch::{encode_batch, ProducerFields, Record};
    use crate::partition::FsyncPolicy;
    use crate::storage::sim::{SimDisk, SimDiskFaults};

    fn batch(value: &str) -> Batch {
        Batch::parse(encode_batch(&[Record::value(value.to_owned())], 0, ProducerFields::NONE)).unwrap()
    }

    fn spec(disk: &SimDisk) -> PartitionSpec<SimDisk> {
        PartitionSpec {
            disk: disk.clone(),
            dir: "data/t/0".into(),
            name: "t/0".into(),
            log_config: LogConfig::default(),
            core_config: CoreConfig::default(),
        }
    }

    #[test]
    fn a_log_that_cannot_be_opened_is_retried_until_the_disk_recovers() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let disk = SimDisk::new(7);
            disk.set_faults(SimDiskFaults { fsync_error_probability: 1.0, ..SimDiskFaults::default() });
            let partition = spawn_partition(spec(&disk)).await;
            // While the disk fails, requests get a typed error instead of hanging or crashing.
            let reply = partition.append(batch("a"), Acks::All).await.await.unwrap();
            assert!(matches!(reply, PartitionReply::Error { code: ErrorCode::StorageError, .. }), "{reply:?}");
            let reply = partition.list_offsets(OffsetSpec::Latest).await.await.unwrap();
            assert!(matches!(reply, PartitionReply::Error { code: ErrorCode::StorageError, .. }), "{reply:?}");

            disk.set_faults(SimDiskFaults::default());
            // The actor retries on its own timer; wait for the condition, bounded.
            let mut produced = None;
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(REOPEN_BACKOFF_MS_MIN)).await;
                if let PartitionReply::Produced { base_offset } =
                    partition.append(batch("b"), Acks::All).await.await.unwrap()
                {
                    produced = Some(base_offset);
                    break;
                }
            }
            assert_eq!(produced, Some(Offset(0)), "the partition never recovered");
            let reply = partition.fetch(Offset(0), 1 << 20, 0).await.await.unwrap();
            let PartitionReply::Fetched { high_watermark, records, .. } = reply else { panic!("{reply:?}") };
            assert_eq!(high_watermark, Offset(1));
            assert!(!records.is_empty());
            partition.stop().await.unwrap();
        });
    }

    #[test]
    fn a_failed_fsync_makes_waiting_appends_indeterminate_and_the_partition_recovers() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let disk = SimDisk::new(11);
            let partition = spawn_partition(spec(&disk)).await;
            let first = partition.append(batch("durable"), Acks::All).await.await.unwrap();
            assert_eq!(first, PartitionReply::Produced { base_offset: Offset(0) });

            disk.set_faults(SimDiskFaults { fsync_error_probability: 1.0, ..SimDiskFaults::default() });
            let reply = partition.append(batch("lost?"), Acks::All).await.await.unwrap();
            assert!(
                matches!(reply, PartitionReply::Error { code: ErrorCode::StorageIndeterminate, .. }),
                "an append whose fsync failed is indeterminate, got {reply:?}"
            );
            disk.set_faults(SimDiskFaults::default());
            let mut next = None;
            for _ in 0..200 {
                if let PartitionReply::Produced { base_offset } =
                    partition.append(batch("after"), Acks::All).await.await.unwrap()
                {
                    next = Some(base_offset);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(REOPEN_BACKOFF_MS_MIN)).await;
            }
            // The indeterminate record may or may not have survived recovery; the durable one did.
            let next = next.expect("the partition never recovered");
            assert!(next == Offset(1) || next == Offset(2), "{next:?}");
            let reply = partition.fetch(Offset(0), 1 << 20, 0).await.await.unwrap();
            let PartitionReply::Fetched { records, .. } = reply else { panic!("{reply:?}") };
            let values: Vec<_> = crate::client::decode_records(records, Offset(0))
                .unwrap()
                .into_iter()
                .map(|record| record.value.unwrap())
                .collect();
            assert_eq!(values.first().map(|v| &v[..]), Some(&b"durable"[..]));
            assert_eq!(values.last().map(|v| &v[..]), Some(&b"after"[..]));
            partition.stop().await.unwrap();
        });
    }

    /// Reads the whole partition back as (offset, value) pairs.
    async fn read_all(partition: &PartitionHandle) -> Vec<(Offset, Vec<u8>)> {
        let reply = partition.fetch(Offset(0), 1 << 20, 0).await.await.unwrap();
        let PartitionReply::Fetched { records, .. } = reply else { panic!("{reply:?}") };
        crate::client::decode_records(records, Offset(0))
            .unwrap()
            .into_iter()
            .map(|record| (record.offset, record.value.unwrap().to_vec()))
            .collect()
    }

    /// Appends until the partition has recovered (bounded), returning the offset it got.
    async fn append_after_recovery(partition: &PartitionHandle, value: &str) -> Offset {
        for _ in 0..200 {
            if let PartitionReply::Produced { base_offset } =
                partition.append(batch(value), Acks::All).await.await.unwrap()
            {
                return base_offset;
            }
            tokio::time::sleep(Duration::from_millis(REOPEN_BACKOFF_MS_MIN)).await;
        }
        panic!("the partition never recovered");
    }

    /// Issue 7: with `fsync = "never"` the reply to an append does not wait for a sync, and the actor
    /// used to send every reply of a `Ready` even when one of its writes failed. The batch was then
    /// acknowledged although it never reached the page cache, and after recovery its offset went to
    /// the next batch. Every acknowledged offset must read back its own value.
    #[test]
    fn a_failed_write_is_never_acknowledged_and_its_offset_is_not_given_to_another_batch() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let disk = SimDisk::new(13);
            let never = PartitionSpec {
                core_config: CoreConfig { fsync: FsyncPolicy::Never, ..CoreConfig::default() },
                ..spec(&disk)
            };
            let partition = spawn_partition(never).await;
            let mut acked = Vec::new();
            let reply = partition.append(batch("written"), Acks::All).await.await.unwrap();
            let PartitionReply::Produced { base_offset } = reply else { panic!("{reply:?}") };
            acked.push((base_offset, b"written".to_vec()));

            disk.set_faults(SimDiskFaults { write_eio_probability: 1.0, ..SimDiskFaults::default() });
            let failed = partition.append(batch("failed"), Acks::All).await.await.unwrap();
            if let PartitionReply::Produced { base_offset } = failed {
                acked.push((base_offset, b"failed".to_vec()));
            }
            disk.set_faults(SimDiskFaults::default());
            let after = append_after_recovery(&partition, "after").await;
            acked.push((after, b"after".to_vec()));

            let log = read_all(&partition).await;
            for (offset, value) in &acked {
                let found = log.iter().find(|(at, _)| at == offset).map(|(_, found)| found);
                assert_eq!(
                    found,
                    Some(value),
                    "offset {offset} was acknowledged for {:?} but reads back {:?}",
                    String::from_utf8_lossy(value),
                    found.map(|found| String::from_utf8_lossy(found))
                );
            }
            // Nothing of the failed batch could have landed (a failed write keeps a strict prefix,
            // which recovery cuts by its CRC), so its failure is definite, not indeterminate.
            assert!(matches!(failed, PartitionReply::Error { code: ErrorCode::StorageError, .. }), "{failed:?}");
            assert_eq!(after, Offset(1));
            partition.stop().await.unwrap();
        });
    }

    /// A full disk: appends get a typed `DiskFull` (not a generic storage error), nothing acked
    /// before is lost, the partition keeps serving, and it takes appends again once space is free.
    #[test]
    fn a_full_disk_gets_a_typed_error_loses_nothing_acked_and_recovers() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let disk = SimDisk::new(17);
            let partition = spawn_partition(spec(&disk)).await;
            let reply = partition.append(batch("before"), Acks::All).await.await.unwrap();
            assert_eq!(reply, PartitionReply::Produced { base_offset: Offset(0) });

            disk.set_faults(SimDiskFaults { write_enospc_probability: 1.0, ..SimDiskFaults::default() });
            for value in ["full-1", "full-2", "full-3"] {
                let reply = partition.append(batch(value), Acks::All).await.await.unwrap();
                assert!(matches!(reply, PartitionReply::Error { code: ErrorCode::DiskFull, .. }), "{reply:?}");
            }
            assert!(disk.stats().write_errors > 0);

            disk.set_faults(SimDiskFaults::default());
            let after = append_after_recovery(&partition, "after").await;
            assert_eq!(after, Offset(1), "the refused batches took no offsets");
            let values: Vec<_> = read_all(&partition).await.into_iter().map(|(_, value)| value).collect();
            assert_eq!(values, vec![b"before".to_vec(), b"after".to_vec()]);
            partition.stop().await.unwrap();
        });
    }

    #[test]
    fn stopping_fsyncs_what_fsync_never_left_in_the_page_cache() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let disk = SimDisk::new(3);
            let never = PartitionSpec {
                core_config: CoreConfig { fsync: FsyncPolicy::Never, ..CoreConfig::default() },
                ..spec(&disk)
            };
            let partition = spawn_partition(never).await;
            for value in ["a", "b", "c"] {
                let reply = partition.append(batch(value), Acks::All).await.await.unwrap();
                assert!(matches!(reply, PartitionReply::Produced { .. }), "{reply:?}");
            }
            partition.stop().await.unwrap();
            // A power loss right after a graceful stop loses nothing: stop synced the log.
            disk.crash();
            let (log, _) = PartitionLog::open(disk.clone(), "data/t/0", LogConfig::default()).await.unwrap();
            assert_eq!(log.log_end_offset(), Offset(3));
        });
    }
}
