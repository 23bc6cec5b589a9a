//! proptest: the sans-IO partition core driven by random inputs through a tiny fake shell.
//!
//! The fake shell performs each `Ready` the way the real actor does (writes, then sync, then reads,
//! then replies), but reports the writes only when the test says so, in order: all of them
//! (`Written`), or some and then a failure (`WriteFailed`: the page cache keeps what was written and
//! nothing else, as after a write error without power loss). It completes syncs when the test says
//! so, and fails storage (a failed fsync or a power loss) with a random recovered prefix. Properties
//! checked after every step:
//! - offsets are assigned contiguously, and a recovered log continues where recovery left it;
//! - **nothing acked that failed to write**: a `Produced` names a batch the shell reported written,
//!   with the offset that request was given; a definite error (`StorageError`, `DiskFull`) names a
//!   batch that is not in the log; an acked offset is never given to another batch unless a power
//!   loss (with `fsync=never`) took the acked batch;
//! - with `fsync=always`, an `acks=all` append is acknowledged only when durable, and a read never
//!   goes past the durable end (nothing visible can be lost by a crash); with either policy, a read
//!   never goes past what was written;
//! - a sync starts only in a `Ready` without writes, and covers only written batches;
//! - the high watermark never moves backwards (with `fsync=never` it may after a power loss, never
//!   after a write error);
//! - every request is answered exactly once by the end (after all writes and syncs complete and
//!   deadlines pass).

use std::collections::{BTreeMap, BTreeSet};

use keel::batch::{encode_batch, Batch, ProducerFields, Record};
use keel::partition::core::{CoreConfig, FsyncPolicy, Input, PartitionCore, Reply};
use keel::protocol::{Acks, ErrorCode};
use keel::types::{LeaderEpoch, Offset};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

#[derive(Debug, Clone)]
enum Op {
    Append {
        records: usize,
        acks: u8,
    },
    Fetch {
        offset_back: i64,
        wait_ms: u32,
    },
    CompleteWrites,
    /// The write of in-flight batch `written % n` fails; the batches before it were written.
    FailWrite {
        written: usize,
        disk_full: bool,
    },
    CompleteSync,
    /// A failed fsync or a power loss: recovery keeps the durable batches and maybe `keep` more.
    Fail {
        keep: usize,
    },
    Advance {
        ms: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..4, 0u8..3).prop_map(|(records, acks)| Op::Append { records, acks }),
        2 => (0i64..6, prop_oneof![Just(0u32), 1u32..200]).prop_map(|(offset_back, wait_ms)| Op::Fetch { offset_back, wait_ms }),
        3 => Just(Op::CompleteWrites),
        1 => (0usize..8, any::<bool>()).prop_map(|(written, disk_full)| Op::FailWrite { written, disk_full }),
        3 => Just(Op::CompleteSync),
        1 => (0usize..8).prop_map(|keep| Op::Fail { keep }),
        1 => (1i64..150).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// What the shell knows of one request.
#[derive(Debug, Clone, Copy)]
struct Request {
    acks: Acks,
    /// The base offset the core gave an accepted append.
    base: Option<Offset>,
}

struct Shell {
    core: PartitionCore,
    fsync: FsyncPolicy,
    /// Batches in the log (reported written), in order: (base, next).
    written: Vec<(Offset, Offset)>,
    /// Batches handed out in `Ready::writes` and not reported yet, in order.
    in_flight: Vec<(Offset, Offset)>,
    sync_covering: Option<Offset>,
    now_ms: i64,
    next_request: u64,
    open: BTreeMap<u64, Request>,
    answered: BTreeSet<u64>,
    /// Base offset of every acknowledged batch still in the log -> the request it acknowledged.
    acked: BTreeMap<Offset, u64>,
    high_watermark: Offset,
}

impl Shell {
    fn written_end(&self) -> Offset {
        self.written.last().map_or(Offset(0), |(_, next)| *next)
    }

    fn is_written(&self, base: Offset) -> bool {
        self.written.iter().any(|(written_base, _)| *written_base == base)
    }

    fn perform(&mut self) {
        let ready = self.core.ready();
        for batch in &ready.writes {
            let expected = self.in_flight.last().map_or(self.written_end(), |(_, next)| *next);
            assert_eq!(batch.base_offset(), expected, "offsets must be contiguous");
            self.in_flight.push((batch.base_offset(), batch.next_offset()));
        }
        if ready.start_sync {
            assert!(self.sync_covering.is_none(), "a second sync started while one is in flight");
            assert_eq!(self.fsync, FsyncPolicy::Always, "fsync=never never syncs on the produce path");
            assert!(ready.writes.is_empty(), "a sync started in a Ready with writes");
            self.sync_covering = Some(self.written_end());
        }
        for read in &ready.reads {
            assert!(read.offset < read.up_to, "a read at or past the high watermark");
            assert!(read.up_to <= self.written_end(), "a read may expose a batch that was not written");
            if self.fsync == FsyncPolicy::Always {
                assert!(read.up_to <= self.core.durable_end(), "a read may expose non-durable data");
            }
            self.answer(read.request);
        }
        for (request, reply) in &ready.replies {
            let Request { acks, base } = self.open[request];
            match reply {
                Reply::Produced { base_offset } => {
                    assert_eq!(base, Some(*base_offset), "request {request} acked with another batch's offset");
                    assert!(self.is_written(*base_offset), "acked a batch that was never written: {base_offset}");
                    if acks == Acks::All && self.fsync == FsyncPolicy::Always {
                        let next = self.written.iter().find(|(b, _)| b == base_offset).expect("written").1;
                        assert!(next <= self.core.durable_end(), "acked before durable: batch ends at {next}");
                    }
                    if let Some(previous) = self.acked.insert(*base_offset, *request) {
                        panic!("offset {base_offset} acked for request {previous} was given to request {request}");
                    }
                }
                Reply::Error { code: ErrorCode::StorageError | ErrorCode::DiskFull, .. } => {
                    if let Some(base) = base {
                        assert!(!self.is_written(base), "a definite error for batch {base}, which is in the log");
                    }
                }
                _ => {}
            }
            self.answer(*request);
        }
        let high_watermark = self.core.high_watermark();
        assert!(high_watermark >= self.high_watermark, "high watermark went back");
        self.high_watermark = high_watermark;
    }

    fn answer(&mut self, request: u64) {
        assert!(self.open.contains_key(&request), "reply to an unknown request {request}");
        assert!(self.answered.insert(request), "request {request} answered twice");
    }

    fn request(&mut self, acks: Acks) -> u64 {
        let request = self.next_request;
        self.next_request += 1;
        self.open.insert(request, Request { acks, base: None });
        request
    }

    fn complete_writes(&mut self) {
        if let Some(&(_, up_to)) = self.in_flight.last() {
            self.written.append(&mut self.in_flight);
            self.core.step(Input::Written { up_to });
        }
    }

    /// Truncates the log to its first `kept` batches; returns the requests whose acked batches went
    /// with them (the caller judges whether that was allowed).
    fn truncate(&mut self, kept: usize) -> Vec<u64> {
        self.written.truncate(kept);
        let log_end = self.written_end();
        let lost = self.acked.split_off(&log_end);
        lost.into_values().collect()
    }
}

fn batch(records: usize) -> Batch {
    let records: Vec<Record> = (0..records).map(|i| Record::value(format!("v{i}"))).collect();
    Batch::parse(encode_batch(&records, 0, ProducerFields::NONE)).unwrap()
}

fn run(fsync: FsyncPolicy, ops: Vec<Op>) {
    let config = CoreConfig { fsync, ..CoreConfig::default() };
    let mut shell = Shell {
        core: PartitionCore::new(config, LeaderEpoch(0), Offset(0), Offset(0)),
        fsync,
        written: Vec::new(),
        in_flight: Vec::new(),
        sync_covering: None,
        now_ms: 0,
        next_request: 0,
        open: BTreeMap::new(),
        answered: BTreeSet::new(),
        acked: BTreeMap::new(),
        high_watermark: Offset(0),
    };
    for op in ops {
        match op {
            Op::Append { records, acks } => {
                let acks = [Acks::All, Acks::Leader, Acks::None][acks as usize];
                let request = shell.request(acks);
                let base = shell.core.log_end();
                shell.core.step(Input::Append { request, batch: batch(records), acks });
                if shell.core.log_end() > base {
                    shell.open.get_mut(&request).expect("just opened").base = Some(base);
                }
            }
            Op::Fetch { offset_back, wait_ms } => {
                let request = shell.request(Acks::None);
                let offset = Offset((shell.core.high_watermark().0 - offset_back).max(0));
                shell.core.step(Input::Fetch {
                    request,
                    offset,
                    bytes_max: 1 << 20,
                    wait_ms_max: wait_ms,
                    now_ms: shell.now_ms,
                });
            }
            Op::CompleteWrites => shell.complete_writes(),
            Op::FailWrite { written, disk_full } => {
                if shell.in_flight.is_empty() {
                    continue;
                }
                let n_written = written % shell.in_flight.len();
                let failed_at = shell.in_flight[n_written].0;
                let mut in_flight = std::mem::take(&mut shell.in_flight);
                shell.written.extend(in_flight.drain(..n_written));
                // The shell drops its in-flight sync along with the log.
                shell.sync_covering = None;
                shell.core.step(Input::WriteFailed { written_up_to: failed_at, disk_full, reason: "injected".into() });
                shell.perform();
                // No power loss: the page cache holds every written batch and nothing of the failed
                // one (recovery cuts its prefix), so the log ends exactly where the writes stopped.
                let log_end = shell.written_end();
                assert_eq!(log_end, failed_at);
                shell.core.step(Input::Recovered { log_start: Offset(0), log_end });
            }
            Op::CompleteSync => {
                if let Some(up_to) = shell.sync_covering.take() {
                    shell.core.step(Input::SyncCompleted { up_to });
                }
            }
            Op::Fail { keep } => {
                if shell.core.is_failed() {
                    continue;
                }
                shell.sync_covering = None;
                shell.core.step(Input::StorageFailed { reason: "injected".into() });
                shell.perform();
                // Recovery keeps every durable batch and maybe a few more, possibly some whose
                // write was still in flight (they were answered as indeterminate).
                let durable = shell.core.durable_end();
                let in_flight = std::mem::take(&mut shell.in_flight);
                shell.written.extend(in_flight);
                let durable_batches = shell.written.iter().take_while(|(_, next)| *next <= durable).count();
                let kept = (durable_batches + keep).min(shell.written.len());
                for lost in shell.truncate(kept) {
                    // acks=leader/none batches and fsync=never acks live in the page cache and may go.
                    let acks = shell.open[&lost].acks;
                    assert!(
                        !(fsync == FsyncPolicy::Always && acks == Acks::All),
                        "a failure lost the acks=all batch of request {lost}"
                    );
                }
                let log_end = shell.written_end();
                shell.core.step(Input::Recovered { log_start: Offset(0), log_end });
                if fsync == FsyncPolicy::Never {
                    // The documented cost of fsync=never: a crash can take back visible records.
                    shell.high_watermark = shell.high_watermark.min(log_end);
                }
            }
            Op::Advance { ms } => {
                shell.now_ms += ms;
                shell.core.step(Input::Tick { now_ms: shell.now_ms });
            }
        }
        shell.perform();
    }
    // Quiesce: complete writes and syncs and let every long poll expire; every request must be
    // answered.
    for _ in 0..4 {
        shell.complete_writes();
        shell.perform();
        if let Some(up_to) = shell.sync_covering.take() {
            shell.core.step(Input::SyncCompleted { up_to });
            shell.perform();
        }
    }
    shell.now_ms += 1_000_000;
    shell.core.step(Input::Tick { now_ms: shell.now_ms });
    shell.perform();
    let unanswered: Vec<_> = shell.open.keys().filter(|request| !shell.answered.contains(request)).collect();
    assert!(unanswered.is_empty(), "requests never answered: {unanswered:?}");
    assert_eq!(shell.core.written_end(), shell.core.log_end(), "everything handed out was written at the end");
    if fsync == FsyncPolicy::Always {
        assert_eq!(shell.core.durable_end(), shell.core.log_end(), "everything written is durable at the end");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/partition_core.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn core_keeps_its_promises_with_fsync_always(ops in proptest::collection::vec(op(), 1..80)) {
        run(FsyncPolicy::Always, ops);
    }

    #[test]
    fn core_keeps_its_promises_with_fsync_never(ops in proptest::collection::vec(op(), 1..80)) {
        run(FsyncPolicy::Never, ops);
    }
}
