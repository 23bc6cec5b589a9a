//! proptest: the sans-IO partition core driven by random inputs through a tiny fake shell.
//!
//! The fake shell performs each `Ready` the way the real actor does (writes, then sync, then reads,
//! then replies), completes syncs when the test says so, and fails storage with a random recovered
//! prefix. Properties checked after every step:
//! - offsets are assigned contiguously, and a recovered log continues where recovery left it;
//! - with `fsync=always`, an `acks=all` append is acknowledged only when durable, and a read never
//!   goes past the durable end (nothing visible can be lost by a crash);
//! - the high watermark never moves backwards (with `fsync=never` it may after a storage failure);
//! - every request is answered exactly once by the end (after all syncs complete and deadlines pass).

use std::collections::{BTreeMap, BTreeSet};

use keel::batch::{encode_batch, Batch, ProducerFields, Record};
use keel::partition::core::{CoreConfig, FsyncPolicy, Input, PartitionCore, Reply};
use keel::protocol::Acks;
use keel::types::{LeaderEpoch, Offset};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

#[derive(Debug, Clone)]
enum Op {
    Append { records: usize, acks: u8 },
    Fetch { offset_back: i64, wait_ms: u32 },
    CompleteSync,
    Fail { keep: usize },
    Advance { ms: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..4, 0u8..3).prop_map(|(records, acks)| Op::Append { records, acks }),
        2 => (0i64..6, prop_oneof![Just(0u32), 1u32..200]).prop_map(|(offset_back, wait_ms)| Op::Fetch { offset_back, wait_ms }),
        3 => Just(Op::CompleteSync),
        1 => (0usize..8).prop_map(|keep| Op::Fail { keep }),
        1 => (1i64..150).prop_map(|ms| Op::Advance { ms }),
    ]
}

struct Shell {
    core: PartitionCore,
    fsync: FsyncPolicy,
    /// Batch boundaries written to the "disk": (base, next).
    written: Vec<(Offset, Offset)>,
    sync_covering: Option<Offset>,
    now_ms: i64,
    next_request: u64,
    open: BTreeMap<u64, (Acks, Offset)>, // request -> (acks, durable end when it must be answered by)
    answered: BTreeSet<u64>,
    high_watermark: Offset,
}

impl Shell {
    fn perform(&mut self) {
        let ready = self.core.ready();
        for batch in &ready.writes {
            let expected = self.written.last().map_or(Offset(0), |(_, next)| *next);
            assert_eq!(batch.base_offset(), expected, "offsets must be contiguous");
            self.written.push((batch.base_offset(), batch.next_offset()));
        }
        if ready.start_sync {
            assert!(self.sync_covering.is_none(), "a second sync started while one is in flight");
            assert_eq!(self.fsync, FsyncPolicy::Always, "fsync=never never syncs on the produce path");
            self.sync_covering = Some(self.written.last().map_or(Offset(0), |(_, next)| *next));
        }
        for read in &ready.reads {
            assert!(read.offset < read.up_to, "a read at or past the high watermark");
            if self.fsync == FsyncPolicy::Always {
                assert!(read.up_to <= self.core.durable_end(), "a read may expose non-durable data");
            }
            self.answer(read.request);
        }
        for (request, reply) in &ready.replies {
            if let Reply::Produced { base_offset } = reply {
                let (acks, _) = self.open[request];
                if acks == Acks::All && self.fsync == FsyncPolicy::Always {
                    let next =
                        self.written.iter().find(|(base, _)| base == base_offset).expect("acked batch was written").1;
                    assert!(next <= self.core.durable_end(), "acked before durable: batch ends at {next}");
                }
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
        self.open.insert(request, (acks, Offset(0)));
        request
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
        sync_covering: None,
        now_ms: 0,
        next_request: 0,
        open: BTreeMap::new(),
        answered: BTreeSet::new(),
        high_watermark: Offset(0),
    };
    for op in ops {
        match op {
            Op::Append { records, acks } => {
                let acks = [Acks::All, Acks::Leader, Acks::None][acks as usize];
                let request = shell.request(acks);
                shell.core.step(Input::Append { request, batch: batch(records), acks });
            }
            Op::Fetch { offset_back, wait_ms } => {
                let request = shell.request(Acks::None);
                let offset = Offset((shell.core.high_watermark().0 - offset_back).max(0));
                shell.core.step(Input::Fetch {
                    request,
                    offset,
                    max_bytes: 1 << 20,
                    max_wait_ms: wait_ms,
                    now_ms: shell.now_ms,
                });
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
                // Recovery keeps every durable batch and maybe a few more.
                let durable = shell.core.durable_end();
                let durable_batches = shell.written.iter().take_while(|(_, next)| *next <= durable).count();
                let kept = (durable_batches + keep).min(shell.written.len());
                shell.written.truncate(kept);
                let log_end = shell.written.last().map_or(Offset(0), |(_, next)| *next);
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
    // Quiesce: complete syncs and let every long poll expire; every request must be answered.
    for _ in 0..4 {
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
