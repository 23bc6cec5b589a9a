//! The sans-IO partition core: what a partition leader decides, with no I/O.
//!
//! In: [`Input`] (an append, a fetch, writes that completed or failed, a sync that completed or
//! failed, a tick), with the current time as an argument. Out: a [`Ready`] (batches to write, whether
//! to start an fsync, reads to perform, replies to send), in the shape of raft-rs's `RawNode::ready`.
//!
//! # The Ready contract
//! The shell performs a `Ready` in field order (writes, then the sync, then reads, then replies) and
//! reports what became of the writes before it takes the next `Ready`: [`Input::Written`] when they
//! all reached the log, [`Input::WriteFailed`] at the first one that did not (and then issues none
//! after it). **No reply in a `Ready` depends on a write in the same `Ready`**: a `Produced` is emitted
//! only after the shell reported its batch written (and, with `fsync=always` and `acks=all`, after a
//! sync covering it completed), as raft-rs holds back `persisted_messages` until the entries are
//! persisted. So the core alone decides what a failed write means for each waiting request; the
//! shell never has to guess which replies to drop.
//!
//! Durability contract (ADR 0002): with [`FsyncPolicy::Always`], the high watermark is the durable
//! end of the log, so an `acks=all` produce is answered, and a record becomes visible to consumers,
//! only after the fsync covering it completed. With [`FsyncPolicy::Never`], the high watermark is
//! the end of what was written to the log (Kafka's default: the page cache is trusted) and power loss
//! can lose acked records; a failed write cannot, because nothing is acked before it is written.
//!
//! # Outcomes of a failed write (see [`Input::WriteFailed`])
//! - Batches written before the failed one: in the page cache. With `fsync=never` they are answered
//!   as usual; waiting for a sync, they become `StorageIndeterminate` (they may or may not survive).
//! - The failed batch: a failed write keeps at most a strict prefix of its bytes (storage contract),
//!   and recovery cuts any incomplete batch by its length and CRC, so it can never be read back:
//!   a definite `StorageError` (`DiskFull` when the disk said ENOSPC). Its offsets are given to the
//!   next batch after recovery, which is correct only because it was never acknowledged.
//! - Batches after it: never issued, so definitely not written: the same definite error.
//!
//! # Under replication (`partition::replica` drives it)
//! - [`Input::AppendReplicated`]: a follower appends a batch the leader stamped, as it is; nobody is
//!   answered for it. [`Input::Truncated`]: the follower's log was cut (only when
//!   [`PartitionCore::is_settled`]); the next `Ready` starts a sync (whatever the fsync policy) and
//!   nothing may be appended until it completes, as `PartitionLog::append` demands.
//! - [`PartitionCore::set_high_watermark_cap`]: consumers see no further than the replicated high
//!   watermark; without a cap (a single-copy partition) nothing changes.
//!
//! Architecture invariant: this module never touches sockets, files, clocks, threads or an RNG.
//! `check_invariants` runs after every step in debug builds and in simulation.

use std::collections::VecDeque;

use crate::batch::Batch;
use crate::protocol::{Acks, ErrorCode};
use crate::types::{LeaderEpoch, Offset, TimestampMs};

/// Identifies one request inside one partition core; chosen by the shell.
pub type RequestId = u64;

/// When appended data is fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Acknowledge `acks=all` and expose records only after fsync (group commit). The default.
    #[default]
    Always,
    /// Never fsync on the produce path (only on clean shutdown): faster, loses acked data on power loss.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!("unknown fsync policy {other:?} (expected \"always\" or \"never\")")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub fsync: FsyncPolicy,
    /// Appends waiting for durability before new ones are refused with `Busy`.
    pub pending_appends_max: usize,
    /// Fetches parked in long-poll before new ones are answered at once.
    pub parked_fetches_max: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig { fsync: FsyncPolicy::Always, pending_appends_max: 16 * 1024, parked_fetches_max: 4096 }
    }
}

#[derive(Debug)]
pub enum Input {
    Append {
        request: RequestId,
        batch: Batch,
        acks: Acks,
    },
    Fetch {
        request: RequestId,
        offset: Offset,
        bytes_max: u32,
        wait_ms_max: u32,
        now_ms: TimestampMs,
    },
    /// Nobody waits for the answer to fetch `request` any more (a push subscription ended): if it
    /// is parked, it is dropped without an answer, so it no longer counts against
    /// `parked_fetches_max`. Any other request is left alone.
    CancelFetch {
        request: RequestId,
    },
    /// Every batch handed out in `Ready::writes` below `up_to` is now in the log (page cache).
    Written {
        up_to: Offset,
    },
    /// The shell wrote the batches below `written_up_to`, then the write of the batch starting at
    /// `written_up_to` failed, and it issued no write after it. The log must be reopened (the shell
    /// follows with `Recovered`).
    WriteFailed {
        written_up_to: Offset,
        /// The disk reported ENOSPC: requests get `DiskFull`, not `StorageError`.
        disk_full: bool,
        reason: String,
    },
    /// The sync started by an earlier `Ready::start_sync` made everything below `up_to` durable.
    SyncCompleted {
        up_to: Offset,
    },
    /// A sync (or anything but a write) failed: everything not yet durable is in an unknown state.
    StorageFailed {
        reason: String,
    },
    /// A reopen of the failed log failed again: the failure stands, with this cause.
    StillFailed {
        reason: String,
    },
    /// The shell reopened (recovered) the log after a failure.
    Recovered {
        log_start: Offset,
        log_end: Offset,
    },
    /// Retention deleted whole segments: the log starts at `log_start` (at or below the durable end).
    LogStartAdvanced {
        log_start: Offset,
    },
    /// A follower's log was emptied and starts at `to` (anywhere; nothing may be waiting).
    Reset {
        to: Offset,
    },
    Tick {
        now_ms: TimestampMs,
    },
    /// A follower's append of a batch the leader stamped (offsets and leader epoch kept as they are):
    /// its base offset must be the log end. Nobody is answered for it; the replica core tracks it.
    AppendReplicated {
        batch: Batch,
    },
    /// The shell truncated the log at `to` (the batch boundary the replica core chose). Only when
    /// [`PartitionCore::is_settled`]. The next `Ready` starts a sync, which must complete before
    /// anything is appended again (`PartitionLog::append` refuses otherwise).
    Truncated {
        to: Offset,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Produced {
        base_offset: Offset,
    },
    /// Long-poll ended without data, or the fetch was at the high watermark with no wait.
    FetchEmpty {
        high_watermark: Offset,
        log_start: Offset,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// A read the shell must perform and answer: whole batches from `offset`, below `up_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub request: RequestId,
    pub offset: Offset,
    pub bytes_max: u32,
    pub up_to: Offset,
    pub log_start: Offset,
}

#[derive(Debug, Default)]
pub struct Ready {
    /// Batches stamped with their offsets, to append to the log in order. The shell reports the
    /// outcome with `Input::Written` or `Input::WriteFailed` before it takes the next `Ready`.
    pub writes: Vec<Batch>,
    /// Start an fsync covering everything written so far (only when none is in flight). Never set in
    /// a `Ready` that also has writes: a sync covers only writes the shell reported done.
    pub start_sync: bool,
    pub reads: Vec<Read>,
    pub replies: Vec<(RequestId, Reply)>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && !self.start_sync && self.reads.is_empty() && self.replies.is_empty()
    }
}

#[derive(Debug)]
struct PendingAppend {
    /// `None` for a replicated batch: nobody waits for a reply.
    request: Option<RequestId>,
    base_offset: Offset,
    next_offset: Offset,
    /// `acks=all` with `fsync=always`: answered after the sync covering it, not after the write.
    waits_for_sync: bool,
}

/// Why the partition is failed, for the error new requests get until `Recovered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Storage,
    DiskFull,
}

#[derive(Debug)]
struct ParkedFetch {
    request: RequestId,
    offset: Offset,
    bytes_max: u32,
    deadline_ms: TimestampMs,
}

#[derive(Debug)]
pub struct PartitionCore {
    config: CoreConfig,
    leader_epoch: LeaderEpoch,
    log_start: Offset,
    /// The next offset to assign: the end of everything handed out in `Ready::writes`.
    log_end: Offset,
    /// The end of what the shell reported written (`Input::Written`).
    written_end: Offset,
    durable_end: Offset,
    sync_in_flight: bool,
    /// Storage failed; appends are refused until `Recovered`.
    failure: Option<Failure>,
    /// Why storage failed (the latest reason: a reopen that fails again replaces it), told to the
    /// requests refused meanwhile.
    failure_reason: String,
    /// Appends handed out in `Ready::writes` whose write the shell has not reported yet, in offset
    /// order; together they cover `[written_end, log_end)`.
    unwritten: VecDeque<PendingAppend>,
    /// Written appends waiting for the sync that covers them, in offset order.
    pending: VecDeque<PendingAppend>,
    parked: Vec<ParkedFetch>,
    /// Replication: consumers see no further than this (the replicated high watermark).
    high_watermark_cap: Option<Offset>,
    /// A truncation the shell performed that no sync has covered yet.
    truncation_unsynced: bool,
    ready: Ready,
}

impl PartitionCore {
    /// A core over a log that was just opened: everything in it is durable (recovery synced it).
    pub fn new(config: CoreConfig, leader_epoch: LeaderEpoch, log_start: Offset, log_end: Offset) -> PartitionCore {
        PartitionCore {
            config,
            leader_epoch,
            log_start,
            log_end,
            written_end: log_end,
            durable_end: log_end,
            sync_in_flight: false,
            failure: None,
            failure_reason: String::new(),
            unwritten: VecDeque::new(),
            pending: VecDeque::new(),
            parked: Vec::new(),
            high_watermark_cap: None,
            truncation_unsynced: false,
            ready: Ready::default(),
        }
    }

    /// A core whose log could not be opened: everything is refused with `StorageError` until the
    /// shell reports `Recovered`.
    pub fn new_failed(config: CoreConfig, leader_epoch: LeaderEpoch, reason: String) -> PartitionCore {
        let mut core = PartitionCore::new(config, leader_epoch, Offset::ZERO, Offset::ZERO);
        core.failure = Some(Failure::Storage);
        core.failure_reason = reason;
        core
    }

    pub fn log_start(&self) -> Offset {
        self.log_start
    }

    pub fn log_end(&self) -> Offset {
        self.log_end
    }

    pub fn written_end(&self) -> Offset {
        self.written_end
    }

    pub fn durable_end(&self) -> Offset {
        self.durable_end
    }

    /// Offsets below the high watermark are committed: visible to consumers, never taken back.
    /// With `fsync=never` that is what reached the log: never a batch still to be written. Under
    /// replication it is also capped by the replicated high watermark (`set_high_watermark_cap`).
    pub fn high_watermark(&self) -> Offset {
        match self.high_watermark_cap {
            Some(cap) => self.stable_end().min(cap),
            None => self.stable_end(),
        }
    }

    /// The end of what this replica holds as its policy counts it: the durable end with
    /// `fsync=always`, the written end with `fsync=never`. A replica reports this to its leader.
    pub fn stable_end(&self) -> Offset {
        match self.config.fsync {
            FsyncPolicy::Always => self.durable_end,
            FsyncPolicy::Never => self.written_end,
        }
    }

    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.leader_epoch
    }

    /// The epoch stamped into appended batches from now on (the replica core sets it on a leader change).
    pub fn set_leader_epoch(&mut self, leader_epoch: LeaderEpoch) {
        self.leader_epoch = leader_epoch;
    }

    /// Replication: consumers see nothing at or above `cap` (the replicated high watermark). Parked
    /// fetches that the new cap lets through are handed out as reads in the next `Ready`.
    pub fn set_high_watermark_cap(&mut self, cap: Offset) {
        let before = self.high_watermark();
        self.high_watermark_cap = Some(cap);
        if self.failure.is_none() && self.high_watermark() > before {
            self.serve_parked_fetches();
        }
        self.check_invariants();
    }

    /// Answers every parked consumer fetch with `code` (the replica core, when this broker stops
    /// leading: a long poll accepted by a leader must not be answered later by a follower's view,
    /// whose HW may be below what a consumer already saw; `isr_3_bit_flips` seed 2).
    pub fn refuse_parked_fetches(&mut self, code: ErrorCode, message: &str) {
        for fetch in std::mem::take(&mut self.parked) {
            self.reply(fetch.request, Reply::Error { code, message: message.to_owned() });
        }
    }

    /// Nothing in flight: no unreported write, no sync in flight or owed, no storage failure, and
    /// everything in the log is stable (durable, or written with `fsync=never`).
    pub fn is_settled(&self) -> bool {
        self.failure.is_none()
            && self.unwritten.is_empty()
            && self.pending.is_empty()
            && !self.sync_in_flight
            && !self.truncation_unsynced
            && self.stable_end() == self.log_end
    }

    /// A truncation is not yet covered by a sync: nothing may be appended until it is.
    pub fn is_truncation_unsynced(&self) -> bool {
        self.truncation_unsynced
    }

    pub fn is_failed(&self) -> bool {
        self.failure.is_some()
    }

    /// The earliest long-poll deadline, for the shell's timer.
    pub fn next_deadline_ms(&self) -> Option<TimestampMs> {
        self.parked.iter().map(|fetch| fetch.deadline_ms).min()
    }

    pub fn step(&mut self, input: Input) {
        match input {
            Input::Append { request, batch, acks } => self.on_append(request, batch, acks),
            Input::Fetch { request, offset, bytes_max, wait_ms_max, now_ms } => {
                self.on_fetch(request, offset, bytes_max, wait_ms_max, now_ms)
            }
            Input::CancelFetch { request } => self.parked.retain(|fetch| fetch.request != request),
            Input::Written { up_to } => self.on_written(up_to),
            Input::WriteFailed { written_up_to, disk_full, reason } => {
                self.on_write_failed(written_up_to, disk_full, reason)
            }
            Input::SyncCompleted { up_to } => self.on_sync_completed(up_to),
            Input::StorageFailed { reason } => self.on_storage_failed(reason),
            Input::StillFailed { reason } => {
                if self.failure.is_some() {
                    self.failure_reason = reason;
                }
            }
            Input::Recovered { log_start, log_end } => self.on_recovered(log_start, log_end),
            Input::LogStartAdvanced { log_start } => {
                assert!(
                    log_start <= self.durable_end,
                    "log start {log_start} past the durable end {}",
                    self.durable_end
                );
                self.log_start = self.log_start.max(log_start);
            }
            Input::Reset { to } => self.on_reset(to),
            Input::Tick { now_ms } => self.on_tick(now_ms),
            Input::AppendReplicated { batch } => self.on_append_replicated(batch),
            Input::Truncated { to } => self.on_truncated(to),
        }
        self.check_invariants();
    }

    /// Takes what the shell must do now. Call after every `step` (or batch of steps).
    pub fn ready(&mut self) -> Ready {
        // Only what the shell reported written can be synced; writes in this Ready are not yet.
        let needs_sync = self.durable_end < self.written_end && self.ready.writes.is_empty();
        let can_sync = self.failure.is_none() && !self.sync_in_flight;
        let wants_sync = (self.config.fsync == FsyncPolicy::Always && needs_sync) || self.truncation_unsynced;
        if can_sync && wants_sync {
            self.sync_in_flight = true;
            self.ready.start_sync = true;
        }
        std::mem::take(&mut self.ready)
    }

    fn reply(&mut self, request: RequestId, reply: Reply) {
        self.ready.replies.push((request, reply));
    }

    /// Replies to a client append; replicated batches (`None`) have nobody to answer.
    fn reply_to(&mut self, request: Option<RequestId>, reply: Reply) {
        if let Some(request) = request {
            self.reply(request, reply);
        }
    }

    fn error(&mut self, request: RequestId, code: ErrorCode, message: impl Into<String>) {
        self.reply(request, Reply::Error { code, message: message.into() });
    }

    /// The error for a request refused because storage failed.
    fn refuse_failed(&mut self, request: RequestId, failure: Failure) {
        let reason = &self.failure_reason;
        let (code, message) = match failure {
            Failure::Storage => (ErrorCode::StorageError, format!("partition storage failed ({reason}); recovering")),
            Failure::DiskFull => (ErrorCode::DiskFull, format!("the partition's disk is full ({reason}); recovering")),
        };
        self.error(request, code, message)
    }

    fn on_append(&mut self, request: RequestId, batch: Batch, acks: Acks) {
        if let Some(failure) = self.failure {
            return self.refuse_failed(request, failure);
        }
        if self.unwritten.len() + self.pending.len() >= self.config.pending_appends_max {
            return self.error(request, ErrorCode::Busy, "too many appends waiting for their write or fsync");
        }
        assert!(!self.truncation_unsynced, "an append before the truncation was synced");
        let base_offset = self.log_end;
        let batch = batch.stamped(base_offset, self.leader_epoch);
        self.log_end = batch.next_offset();
        self.ready.writes.push(batch);
        let waits_for_sync = acks == Acks::All && self.config.fsync == FsyncPolicy::Always;
        // Every reply waits at least for the write: see "The Ready contract" in the module doc.
        let request = Some(request);
        self.unwritten.push_back(PendingAppend { request, base_offset, next_offset: self.log_end, waits_for_sync });
    }

    fn on_append_replicated(&mut self, batch: Batch) {
        assert!(self.failure.is_none(), "a replicated append while storage is failed");
        assert!(!self.truncation_unsynced, "a replicated append before the truncation was synced");
        assert_eq!(batch.base_offset(), self.log_end, "a replicated batch must start at the log end");
        let base_offset = self.log_end;
        self.log_end = batch.next_offset();
        self.ready.writes.push(batch);
        let waits_for_sync = self.config.fsync == FsyncPolicy::Always;
        self.unwritten.push_back(PendingAppend {
            request: None,
            base_offset,
            next_offset: self.log_end,
            waits_for_sync,
        });
    }

    fn on_truncated(&mut self, to: Offset) {
        assert!(self.is_settled(), "truncated while writes or syncs are in flight");
        assert!(
            self.log_start <= to && to <= self.log_end,
            "truncated to {to} outside [{}, {}]",
            self.log_start,
            self.log_end
        );
        self.log_end = to;
        self.written_end = to;
        self.durable_end = self.durable_end.min(to);
        self.truncation_unsynced = true;
        // A fetch parked past the new end can no longer be served from this log.
        let high_watermark = self.high_watermark();
        let log_start = self.log_start;
        for fetch in std::mem::take(&mut self.parked) {
            self.reply(fetch.request, Reply::FetchEmpty { high_watermark, log_start });
        }
    }

    fn on_written(&mut self, up_to: Offset) {
        assert!(self.failure.is_none(), "writes reported done after storage failed (up_to={up_to})");
        assert!(
            self.written_end <= up_to && up_to <= self.log_end,
            "written up to {up_to} outside [{}, {}]",
            self.written_end,
            self.log_end
        );
        while let Some(front) = self.unwritten.front() {
            if front.next_offset > up_to {
                break;
            }
            let done = self.unwritten.pop_front().expect("front exists");
            if done.waits_for_sync {
                self.pending.push_back(done);
            } else {
                self.reply_to(done.request, Reply::Produced { base_offset: done.base_offset });
            }
        }
        let batch_boundary = self.unwritten.front().map_or(self.log_end, |front| front.base_offset);
        assert_eq!(up_to, batch_boundary, "writes are reported whole: {up_to} is inside a batch");
        self.written_end = up_to;
        if self.config.fsync == FsyncPolicy::Never {
            // The high watermark moved with the written end.
            self.serve_parked_fetches();
        }
    }

    fn on_write_failed(&mut self, written_up_to: Offset, disk_full: bool, reason: String) {
        // What was written before the failed batch is in the page cache, like any written batch.
        self.on_written(written_up_to);
        let failure = if disk_full { Failure::DiskFull } else { Failure::Storage };
        let code = if disk_full { ErrorCode::DiskFull } else { ErrorCode::StorageError };
        // The failed batch and every batch after it: definitely not in the log (module doc).
        for (index, append) in std::mem::take(&mut self.unwritten).into_iter().enumerate() {
            let message = if index == 0 {
                format!("the write failed; the batch is not in the log: {reason}")
            } else {
                format!("not written: the write of an earlier batch failed: {reason}")
            };
            self.reply_to(append.request, Reply::Error { code, message });
        }
        self.fail(failure, &reason);
    }

    fn on_storage_failed(&mut self, reason: String) {
        // The shell abandoned the log with these writes unreported: they may have landed.
        for append in std::mem::take(&mut self.unwritten) {
            self.reply_to(
                append.request,
                Reply::Error {
                    code: ErrorCode::StorageIndeterminate,
                    message: format!("storage failed before the write was reported: {reason}"),
                },
            );
        }
        self.fail(Failure::Storage, &reason);
    }

    /// Marks the partition failed; written appends still waiting for a sync become indeterminate.
    fn fail(&mut self, failure: Failure, reason: &str) {
        assert!(self.unwritten.is_empty(), "unwritten appends must be answered before failing");
        self.failure = Some(failure);
        self.failure_reason = reason.to_string();
        // Offsets of batches never written are not assigned; `Recovered` says where the log ends.
        self.log_end = self.written_end;
        // The shell drops an in-flight sync when storage fails: it proves nothing about the log that
        // recovery will produce.
        self.sync_in_flight = false;
        // Written but not durable: the bytes may or may not survive recovery.
        for pending in std::mem::take(&mut self.pending) {
            self.reply_to(
                pending.request,
                Reply::Error {
                    code: ErrorCode::StorageIndeterminate,
                    message: format!("storage failed before the write was durable: {reason}"),
                },
            );
        }
    }

    fn on_fetch(&mut self, request: RequestId, offset: Offset, bytes_max: u32, wait_ms_max: u32, now_ms: TimestampMs) {
        if self.failure.is_some() {
            let message = format!("partition storage failed ({}); recovering", self.failure_reason);
            return self.error(request, ErrorCode::StorageError, message);
        }
        let high_watermark = self.high_watermark();
        if offset < self.log_start || offset > self.log_end {
            return self.error(
                request,
                ErrorCode::OffsetOutOfRange,
                format!("offset {offset} is outside the log [{}, {}]", self.log_start, self.log_end),
            );
        }
        if offset < high_watermark {
            let log_start = self.log_start;
            self.ready.reads.push(Read { request, offset, bytes_max, up_to: high_watermark, log_start });
        } else if wait_ms_max == 0 || self.parked.len() >= self.config.parked_fetches_max {
            self.reply(request, Reply::FetchEmpty { high_watermark, log_start: self.log_start });
        } else {
            let deadline_ms = now_ms.saturating_add(wait_ms_max as i64);
            self.parked.push(ParkedFetch { request, offset, bytes_max, deadline_ms });
        }
    }

    fn on_sync_completed(&mut self, up_to: Offset) {
        assert!(self.sync_in_flight, "sync completed with none in flight (up_to={up_to})");
        assert!(self.failure.is_none(), "a sync completed after storage failed; the shell must drop it");
        self.sync_in_flight = false;
        self.truncation_unsynced = false;
        assert!(up_to <= self.written_end, "sync covered {up_to} beyond the written end {}", self.written_end);
        if up_to <= self.durable_end {
            return;
        }
        self.durable_end = up_to;
        while let Some(front) = self.pending.front() {
            if front.next_offset > self.durable_end {
                break;
            }
            let done = self.pending.pop_front().expect("front exists");
            self.reply_to(done.request, Reply::Produced { base_offset: done.base_offset });
        }
        self.serve_parked_fetches();
    }

    fn on_recovered(&mut self, log_start: Offset, log_end: Offset) {
        assert!(self.failure.is_some(), "Recovered without a failure");
        // Recovery keeps everything durable unless the disk corrupted it (bit rot in synced data, cut
        // out by recovery: ADR 0002). Then the durable end goes back with the log; the replica core
        // decides what that costs (a leader that replicated the lost batches resigns).
        assert!(self.unwritten.is_empty() && self.pending.is_empty(), "appends survived a failure unanswered");
        self.failure = None;
        self.sync_in_flight = false;
        self.truncation_unsynced = false;
        self.log_start = log_start;
        self.log_end = log_end;
        self.written_end = log_end;
        self.durable_end = log_end;
        self.serve_parked_fetches();
    }

    fn on_reset(&mut self, to: Offset) {
        assert!(
            self.unwritten.is_empty() && self.pending.is_empty() && self.failure.is_none(),
            "a reset with appends or a failure outstanding"
        );
        self.log_start = to;
        self.log_end = to;
        self.written_end = to;
        self.durable_end = to;
        self.truncation_unsynced = false;
    }

    fn on_tick(&mut self, now_ms: TimestampMs) {
        let high_watermark = self.high_watermark();
        let log_start = self.log_start;
        let mut index = 0;
        while index < self.parked.len() {
            if self.parked[index].deadline_ms <= now_ms {
                let fetch = self.parked.swap_remove(index);
                self.reply(fetch.request, Reply::FetchEmpty { high_watermark, log_start });
            } else {
                index += 1;
            }
        }
    }

    fn serve_parked_fetches(&mut self) {
        let high_watermark = self.high_watermark();
        let log_start = self.log_start;
        let mut index = 0;
        while index < self.parked.len() {
            if self.parked[index].offset < high_watermark {
                let fetch = self.parked.swap_remove(index);
                self.ready.reads.push(Read {
                    request: fetch.request,
                    offset: fetch.offset,
                    bytes_max: fetch.bytes_max,
                    up_to: high_watermark,
                    log_start,
                });
            } else {
                index += 1;
            }
        }
    }

    /// Panics, with context, when the core's own bookkeeping is broken: serving wrong data is worse
    /// than stopping.
    pub fn check_invariants(&self) {
        if !cfg!(any(debug_assertions, madsim)) {
            return;
        }
        assert!(self.log_start <= self.durable_end, "log_start {} > durable_end {}", self.log_start, self.durable_end);
        assert!(
            self.durable_end <= self.written_end,
            "durable_end {} > written_end {}",
            self.durable_end,
            self.written_end
        );
        assert!(self.written_end <= self.log_end, "written_end {} > log_end {}", self.written_end, self.log_end);
        assert!(self.high_watermark() <= self.written_end, "the high watermark passed what was written");
        let mut previous = self.durable_end;
        for pending in &self.pending {
            assert!(pending.waits_for_sync, "only appends that wait for a sync wait after their write");
            assert!(pending.base_offset >= previous, "pending appends out of order or already durable");
            assert!(pending.next_offset > pending.base_offset && pending.next_offset <= self.written_end);
            previous = pending.next_offset;
        }
        // The unwritten appends tile [written_end, log_end) exactly.
        let mut next = self.written_end;
        for append in &self.unwritten {
            assert_eq!(append.base_offset, next, "unwritten appends do not tile the unwritten range");
            assert!(append.next_offset > append.base_offset);
            next = append.next_offset;
        }
        assert_eq!(next, self.log_end, "unwritten appends end at {next}, not at the log end {}", self.log_end);
        if self.failure.is_some() {
            assert!(self.unwritten.is_empty() && self.pending.is_empty(), "a failed core still waits for storage");
        }
        if self.config.fsync == FsyncPolicy::Never {
            assert!(self.pending.is_empty(), "fsync=never never waits for durability");
        }
        if self.truncation_unsynced {
            assert!(self.unwritten.is_empty() && self.pending.is_empty(), "appended before a truncation was synced");
        }
        if let Some(cap) = self.high_watermark_cap {
            assert!(self.high_watermark() <= cap, "consumers would see past the replicated high watermark {cap}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode_batch, ProducerFields, Record};

    fn batch(n: usize) -> Batch {
        let records: Vec<Record> = (0..n).map(|i| Record::value(format!("v{i}"))).collect();
        Batch::parse(encode_batch(&records, 1_000, ProducerFields::NONE)).unwrap()
    }

    fn core(fsync: FsyncPolicy) -> PartitionCore {
        PartitionCore::new(CoreConfig { fsync, ..CoreConfig::default() }, LeaderEpoch(0), Offset(0), Offset(0))
    }

    #[test]
    fn acks_all_replies_only_after_the_covering_sync() {
        let mut core = core(FsyncPolicy::Always);
        core.step(Input::Append { request: 1, batch: batch(3), acks: Acks::All });
        core.step(Input::Append { request: 2, batch: batch(2), acks: Acks::All });
        let ready = core.ready();
        assert_eq!(ready.writes.len(), 2);
        assert_eq!(ready.writes[1].base_offset(), Offset(3));
        assert!(!ready.start_sync, "a sync covers only writes the shell reported done");
        assert!(ready.replies.is_empty(), "nothing may be acked before its write");
        core.step(Input::Written { up_to: Offset(5) });
        let ready = core.ready();
        assert!(ready.start_sync);
        assert!(ready.replies.is_empty(), "nothing may be acked before fsync");
        assert_eq!(core.high_watermark(), Offset(0));

        // A third append while the sync is in flight is not covered by it.
        core.step(Input::Append { request: 3, batch: batch(1), acks: Acks::All });
        let _ = core.ready();
        core.step(Input::Written { up_to: Offset(6) });
        let ready = core.ready();
        assert!(!ready.start_sync, "one sync in flight at a time");
        core.step(Input::SyncCompleted { up_to: Offset(5) });
        let ready = core.ready();
        assert_eq!(
            ready.replies,
            vec![(1, Reply::Produced { base_offset: Offset(0) }), (2, Reply::Produced { base_offset: Offset(3) })]
        );
        assert!(ready.start_sync, "the third append needs its own sync");
        assert_eq!(core.high_watermark(), Offset(5));
    }

    #[test]
    fn fsync_never_acks_once_written_and_exposes_the_written_end() {
        let mut core = core(FsyncPolicy::Never);
        core.step(Input::Append { request: 1, batch: batch(2), acks: Acks::All });
        let ready = core.ready();
        assert!(!ready.start_sync);
        assert!(ready.replies.is_empty(), "not acked before the shell reports the write");
        assert_eq!(core.high_watermark(), Offset(0), "not visible before it is written");
        core.step(Input::Written { up_to: Offset(2) });
        let ready = core.ready();
        assert!(!ready.start_sync);
        assert_eq!(ready.replies, vec![(1, Reply::Produced { base_offset: Offset(0) })]);
        assert_eq!(core.high_watermark(), Offset(2));
    }

    #[test]
    fn long_poll_is_served_when_the_high_watermark_passes_it_or_times_out() {
        let mut core = core(FsyncPolicy::Always);
        core.step(Input::Fetch { request: 7, offset: Offset(0), bytes_max: 1024, wait_ms_max: 500, now_ms: 10 });
        core.step(Input::Fetch { request: 8, offset: Offset(0), bytes_max: 1024, wait_ms_max: 100, now_ms: 10 });
        assert!(core.ready().is_empty());
        assert_eq!(core.next_deadline_ms(), Some(110));
        core.step(Input::Tick { now_ms: 110 });
        let ready = core.ready();
        assert_eq!(ready.replies, vec![(8, Reply::FetchEmpty { high_watermark: Offset(0), log_start: Offset(0) })]);
        core.step(Input::Append { request: 1, batch: batch(1), acks: Acks::All });
        let _ = core.ready();
        core.step(Input::Written { up_to: Offset(1) });
        assert!(core.ready().start_sync);
        core.step(Input::SyncCompleted { up_to: Offset(1) });
        let ready = core.ready();
        assert_eq!(ready.reads.len(), 1);
        assert_eq!(ready.reads[0].request, 7);
        assert_eq!(ready.reads[0].up_to, Offset(1));
    }

    #[test]
    fn fetch_outside_the_log_is_an_error() {
        let mut core = core(FsyncPolicy::Always);
        core.step(Input::Fetch { request: 1, offset: Offset(5), bytes_max: 1, wait_ms_max: 0, now_ms: 0 });
        let ready = core.ready();
        assert!(matches!(ready.replies[0].1, Reply::Error { code: ErrorCode::OffsetOutOfRange, .. }));
    }

    #[test]
    fn storage_failure_makes_pending_appends_indeterminate_and_refuses_new_ones() {
        let mut core = core(FsyncPolicy::Always);
        core.step(Input::Append { request: 1, batch: batch(2), acks: Acks::All });
        let _ = core.ready();
        core.step(Input::Written { up_to: Offset(2) });
        assert!(core.ready().start_sync);
        core.step(Input::StorageFailed { reason: "fsync: EIO".into() });
        core.step(Input::Append { request: 2, batch: batch(1), acks: Acks::All });
        let ready = core.ready();
        assert!(!ready.start_sync, "no sync while the log is being recovered");
        assert!(matches!(ready.replies[0], (1, Reply::Error { code: ErrorCode::StorageIndeterminate, .. })));
        assert!(matches!(ready.replies[1], (2, Reply::Error { code: ErrorCode::StorageError, .. })));
        // Recovery kept one of the two records.
        core.step(Input::Recovered { log_start: Offset(0), log_end: Offset(1) });
        assert_eq!(core.high_watermark(), Offset(1));
        core.step(Input::Append { request: 3, batch: batch(1), acks: Acks::All });
        let ready = core.ready();
        assert_eq!(ready.writes[0].base_offset(), Offset(1));
        core.step(Input::Written { up_to: Offset(2) });
        assert!(core.ready().start_sync, "syncing resumes after recovery");
    }

    /// Issue 7, in the core: with fsync=never, the batch whose write failed and the batches after it
    /// are never acknowledged (a definite error: nothing of them can be read back), the ones written
    /// before it are, and the failed batch's offsets go to the next batch after recovery.
    #[test]
    fn a_failed_write_with_fsync_never_acks_only_what_was_written() {
        let mut core = core(FsyncPolicy::Never);
        core.step(Input::Append { request: 1, batch: batch(2), acks: Acks::All });
        core.step(Input::Append { request: 2, batch: batch(1), acks: Acks::Leader });
        core.step(Input::Append { request: 3, batch: batch(1), acks: Acks::None });
        let ready = core.ready();
        assert_eq!(ready.writes.len(), 3);
        assert!(ready.replies.is_empty());
        core.step(Input::WriteFailed { written_up_to: Offset(2), disk_full: false, reason: "EIO".into() });
        assert_eq!(core.high_watermark(), Offset(2), "the written batch is in the page cache");
        core.step(Input::Append { request: 4, batch: batch(1), acks: Acks::All });
        let ready = core.ready();
        assert!(ready.writes.is_empty() && !ready.start_sync);
        assert_eq!(ready.replies[0], (1, Reply::Produced { base_offset: Offset(0) }));
        assert!(matches!(ready.replies[1], (2, Reply::Error { code: ErrorCode::StorageError, .. })));
        assert!(matches!(ready.replies[2], (3, Reply::Error { code: ErrorCode::StorageError, .. })));
        assert!(matches!(ready.replies[3], (4, Reply::Error { code: ErrorCode::StorageError, .. })));
        assert_eq!(ready.replies.len(), 4);
        core.step(Input::Recovered { log_start: Offset(0), log_end: Offset(2) });
        core.step(Input::Append { request: 5, batch: batch(1), acks: Acks::All });
        assert_eq!(core.ready().writes[0].base_offset(), Offset(2), "offset 2 was never acknowledged");
    }

    /// With fsync=always, a batch written before the failed one still waits for a sync that will
    /// never come: indeterminate. A full disk gives `DiskFull`, to the failed batch and to every
    /// append until recovery.
    #[test]
    fn a_failed_write_with_fsync_always_is_definite_and_a_full_disk_says_so() {
        let mut core = core(FsyncPolicy::Always);
        core.step(Input::Append { request: 1, batch: batch(1), acks: Acks::All });
        core.step(Input::Append { request: 2, batch: batch(1), acks: Acks::All });
        let _ = core.ready();
        core.step(Input::WriteFailed { written_up_to: Offset(1), disk_full: true, reason: "ENOSPC".into() });
        core.step(Input::Append { request: 3, batch: batch(1), acks: Acks::All });
        core.step(Input::Fetch { request: 4, offset: Offset(0), bytes_max: 1, wait_ms_max: 0, now_ms: 0 });
        let ready = core.ready();
        assert!(!ready.start_sync);
        assert!(matches!(ready.replies[0], (2, Reply::Error { code: ErrorCode::DiskFull, .. })), "{ready:?}");
        assert!(matches!(ready.replies[1], (1, Reply::Error { code: ErrorCode::StorageIndeterminate, .. })));
        assert!(matches!(ready.replies[2], (3, Reply::Error { code: ErrorCode::DiskFull, .. })), "{ready:?}");
        assert!(matches!(ready.replies[3], (4, Reply::Error { code: ErrorCode::StorageError, .. })));
        core.step(Input::Recovered { log_start: Offset(0), log_end: Offset(1) });
        core.step(Input::Append { request: 5, batch: batch(1), acks: Acks::All });
        assert_eq!(core.ready().writes[0].base_offset(), Offset(1));
    }
}
