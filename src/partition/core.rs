//! The sans-IO partition core: what a partition leader decides, with no I/O.
//!
//! In: [`Input`] (an append, a fetch, a sync that completed or failed, a tick), with the current time
//! as an argument. Out: a [`Ready`] (batches to write, whether to start an fsync, reads to perform,
//! replies to send), in the shape of raft-rs's `RawNode::ready`. The shell (`partition::actor`) performs
//! a `Ready` in field order: **writes first, then the sync, then reads, then replies**, so a reply
//! that depends on a write is never sent before the write reached the log.
//!
//! Durability contract (ADR 0002): with [`FsyncPolicy::Always`], the high watermark is the durable
//! end of the log, so an `acks=all` produce is answered, and a record becomes visible to consumers,
//! only after the fsync covering it completed. With [`FsyncPolicy::Never`], the high watermark is
//! the log end (Kafka's default: the page cache is trusted) and power loss can lose acked records.
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
        max_bytes: u32,
        max_wait_ms: u32,
        now_ms: TimestampMs,
    },
    /// The sync started by an earlier `Ready::start_sync` made everything below `up_to` durable.
    SyncCompleted {
        up_to: Offset,
    },
    /// A write or sync failed: everything not yet durable is in an unknown state.
    StorageFailed {
        reason: String,
    },
    /// The shell reopened (recovered) the log after a failure.
    Recovered {
        log_start: Offset,
        log_end: Offset,
    },
    Tick {
        now_ms: TimestampMs,
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
    pub max_bytes: u32,
    pub up_to: Offset,
    pub log_start: Offset,
}

#[derive(Debug, Default)]
pub struct Ready {
    /// Batches stamped with their offsets, to append to the log in order.
    pub writes: Vec<Batch>,
    /// Start an fsync covering everything written so far (only when none is in flight).
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
    request: RequestId,
    base_offset: Offset,
    next_offset: Offset,
}

#[derive(Debug)]
struct ParkedFetch {
    request: RequestId,
    offset: Offset,
    max_bytes: u32,
    deadline_ms: TimestampMs,
}

#[derive(Debug)]
pub struct PartitionCore {
    config: CoreConfig,
    leader_epoch: LeaderEpoch,
    log_start: Offset,
    log_end: Offset,
    durable_end: Offset,
    sync_in_flight: bool,
    /// Storage failed; appends are refused until `Recovered`.
    failed: bool,
    pending: VecDeque<PendingAppend>,
    parked: Vec<ParkedFetch>,
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
            durable_end: log_end,
            sync_in_flight: false,
            failed: false,
            pending: VecDeque::new(),
            parked: Vec::new(),
            ready: Ready::default(),
        }
    }

    /// A core whose log could not be opened: everything is refused with `StorageError` until the
    /// shell reports `Recovered`.
    pub fn new_failed(config: CoreConfig, leader_epoch: LeaderEpoch) -> PartitionCore {
        let mut core = PartitionCore::new(config, leader_epoch, Offset::ZERO, Offset::ZERO);
        core.failed = true;
        core
    }

    pub fn log_start(&self) -> Offset {
        self.log_start
    }

    pub fn log_end(&self) -> Offset {
        self.log_end
    }

    pub fn durable_end(&self) -> Offset {
        self.durable_end
    }

    /// Offsets below the high watermark are committed: visible to consumers, never taken back.
    pub fn high_watermark(&self) -> Offset {
        match self.config.fsync {
            FsyncPolicy::Always => self.durable_end,
            FsyncPolicy::Never => self.log_end,
        }
    }

    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// The earliest long-poll deadline, for the shell's timer.
    pub fn next_deadline_ms(&self) -> Option<TimestampMs> {
        self.parked.iter().map(|fetch| fetch.deadline_ms).min()
    }

    pub fn step(&mut self, input: Input) {
        match input {
            Input::Append { request, batch, acks } => self.on_append(request, batch, acks),
            Input::Fetch { request, offset, max_bytes, max_wait_ms, now_ms } => {
                self.on_fetch(request, offset, max_bytes, max_wait_ms, now_ms)
            }
            Input::SyncCompleted { up_to } => self.on_sync_completed(up_to),
            Input::StorageFailed { reason } => self.on_storage_failed(reason),
            Input::Recovered { log_start, log_end } => self.on_recovered(log_start, log_end),
            Input::Tick { now_ms } => self.on_tick(now_ms),
        }
        self.check_invariants();
    }

    /// Takes what the shell must do now. Call after every `step` (or batch of steps).
    pub fn ready(&mut self) -> Ready {
        let needs_sync = self.durable_end < self.log_end;
        if self.config.fsync == FsyncPolicy::Always && !self.failed && !self.sync_in_flight && needs_sync {
            self.sync_in_flight = true;
            self.ready.start_sync = true;
        }
        std::mem::take(&mut self.ready)
    }

    fn reply(&mut self, request: RequestId, reply: Reply) {
        self.ready.replies.push((request, reply));
    }

    fn error(&mut self, request: RequestId, code: ErrorCode, message: impl Into<String>) {
        self.reply(request, Reply::Error { code, message: message.into() });
    }

    fn on_append(&mut self, request: RequestId, batch: Batch, acks: Acks) {
        if self.failed {
            return self.error(request, ErrorCode::StorageError, "partition storage failed; recovering");
        }
        if self.pending.len() >= self.config.pending_appends_max {
            return self.error(request, ErrorCode::Busy, "too many appends waiting for fsync");
        }
        let base_offset = self.log_end;
        let batch = batch.stamped(base_offset, self.leader_epoch);
        self.log_end = batch.next_offset();
        self.ready.writes.push(batch);
        let waits_for_durability = acks == Acks::All && self.config.fsync == FsyncPolicy::Always;
        if waits_for_durability {
            self.pending.push_back(PendingAppend { request, base_offset, next_offset: self.log_end });
        } else {
            self.reply(request, Reply::Produced { base_offset });
        }
        if self.config.fsync == FsyncPolicy::Never {
            // The high watermark moved with the log end.
            self.serve_parked_fetches();
        }
    }

    fn on_fetch(&mut self, request: RequestId, offset: Offset, max_bytes: u32, max_wait_ms: u32, now_ms: TimestampMs) {
        if self.failed {
            return self.error(request, ErrorCode::StorageError, "partition storage failed; recovering");
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
            self.ready.reads.push(Read { request, offset, max_bytes, up_to: high_watermark, log_start });
        } else if max_wait_ms == 0 || self.parked.len() >= self.config.parked_fetches_max {
            self.reply(request, Reply::FetchEmpty { high_watermark, log_start: self.log_start });
        } else {
            let deadline_ms = now_ms.saturating_add(max_wait_ms as i64);
            self.parked.push(ParkedFetch { request, offset, max_bytes, deadline_ms });
        }
    }

    fn on_sync_completed(&mut self, up_to: Offset) {
        assert!(self.sync_in_flight, "sync completed with none in flight (up_to={up_to})");
        assert!(!self.failed, "a sync completed after storage failed; the shell must drop it");
        self.sync_in_flight = false;
        assert!(up_to <= self.log_end, "sync covered {up_to} beyond log end {}", self.log_end);
        if up_to <= self.durable_end {
            return;
        }
        self.durable_end = up_to;
        while let Some(front) = self.pending.front() {
            if front.next_offset > self.durable_end {
                break;
            }
            let done = self.pending.pop_front().expect("front exists");
            self.reply(done.request, Reply::Produced { base_offset: done.base_offset });
        }
        self.serve_parked_fetches();
    }

    fn on_storage_failed(&mut self, reason: String) {
        self.failed = true;
        // The shell drops an in-flight sync when storage fails: it proves nothing about the log that
        // recovery will produce.
        self.sync_in_flight = false;
        // Written but not durable: the bytes may or may not survive recovery.
        for pending in std::mem::take(&mut self.pending) {
            self.reply(
                pending.request,
                Reply::Error {
                    code: ErrorCode::StorageIndeterminate,
                    message: format!("storage failed before the write was durable: {reason}"),
                },
            );
        }
    }

    fn on_recovered(&mut self, log_start: Offset, log_end: Offset) {
        assert!(self.failed, "Recovered without a failure");
        assert!(
            log_end >= self.durable_end,
            "recovery lost durable data: recovered log end {log_end} < durable end {}",
            self.durable_end
        );
        self.failed = false;
        self.sync_in_flight = false;
        self.log_start = log_start;
        self.log_end = log_end;
        self.durable_end = log_end;
        self.serve_parked_fetches();
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
                    max_bytes: fetch.max_bytes,
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
        assert!(self.durable_end <= self.log_end, "durable_end {} > log_end {}", self.durable_end, self.log_end);
        assert!(self.high_watermark() <= self.log_end);
        let mut previous = self.durable_end;
        for pending in &self.pending {
            assert!(pending.base_offset >= previous, "pending appends out of order or already durable");
            assert!(pending.next_offset > pending.base_offset && pending.next_offset <= self.log_end);
            previous = pending.next_offset;
        }
        if self.config.fsync == FsyncPolicy::Never {
            assert!(self.pending.is_empty(), "fsync=never never waits for durability");
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
        assert!(ready.start_sync);
        assert!(ready.replies.is_empty(), "nothing may be acked before fsync");
        assert_eq!(core.high_watermark(), Offset(0));

        // A third append while the sync is in flight is not covered by it.
        core.step(Input::Append { request: 3, batch: batch(1), acks: Acks::All });
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
    fn fsync_never_acks_at_once_and_exposes_the_log_end() {
        let mut core = core(FsyncPolicy::Never);
        core.step(Input::Append { request: 1, batch: batch(2), acks: Acks::All });
        let ready = core.ready();
        assert!(!ready.start_sync);
        assert_eq!(ready.replies, vec![(1, Reply::Produced { base_offset: Offset(0) })]);
        assert_eq!(core.high_watermark(), Offset(2));
    }

    #[test]
    fn long_poll_is_served_when_the_high_watermark_passes_it_or_times_out() {
        let mut core = core(FsyncPolicy::Always);
        core.step(Input::Fetch { request: 7, offset: Offset(0), max_bytes: 1024, max_wait_ms: 500, now_ms: 10 });
        core.step(Input::Fetch { request: 8, offset: Offset(0), max_bytes: 1024, max_wait_ms: 100, now_ms: 10 });
        assert!(core.ready().is_empty());
        assert_eq!(core.next_deadline_ms(), Some(110));
        core.step(Input::Tick { now_ms: 110 });
        let ready = core.ready();
        assert_eq!(ready.replies, vec![(8, Reply::FetchEmpty { high_watermark: Offset(0), log_start: Offset(0) })]);
        core.step(Input::Append { request: 1, batch: batch(1), acks: Acks::All });
        let _ = core.ready();
        core.step(Input::SyncCompleted { up_to: Offset(1) });
        let ready = core.ready();
        assert_eq!(ready.reads.len(), 1);
        assert_eq!(ready.reads[0].request, 7);
        assert_eq!(ready.reads[0].up_to, Offset(1));
    }

    #[test]
    fn fetch_outside_the_log_is_an_error() {
        let mut core = core(FsyncPolicy::Always);
        core.step(Input::Fetch { request: 1, offset: Offset(5), max_bytes: 1, max_wait_ms: 0, now_ms: 0 });
        let ready = core.ready();
        assert!(matches!(ready.replies[0].1, Reply::Error { code: ErrorCode::OffsetOutOfRange, .. }));
    }

    #[test]
    fn storage_failure_makes_pending_appends_indeterminate_and_refuses_new_ones() {
        let mut core = core(FsyncPolicy::Always);
        core.step(Input::Append { request: 1, batch: batch(2), acks: Acks::All });
        let _ = core.ready();
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
        assert!(ready.start_sync, "syncing resumes after recovery");
    }
}
