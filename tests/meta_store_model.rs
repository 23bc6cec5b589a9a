//! The metadata store contract (`keel::meta::store`), held differentially: `RocksStore`, `SimKv` and
//! a pure model in this file must behave alike.
//!
//! Random sequences of writes (batches of put / delete / delete-range over a small key space, synced
//! or not), point reads, range scans, injected write errors and crashes run against both stores.
//! The model is the durable map plus the list of batches written since the last sync.
//!
//! - After every operation each store's full contents are compared with its model, and the two
//!   stores with each other while their models agree; `Get` and `Scan` compare the three answers.
//! - A crash of `RocksStore` drops the database and reopens the same directory. The OS keeps
//!   unsynced writes across a process crash, so RocksDB must come back with **every** batch.
//! - A crash of `SimKv` is a power loss: `crash()` then `open()`. What comes back must equal the
//!   model after *some* prefix of the pending batches (so every synced batch is in, and no batch is
//!   split); the model then adopts that prefix. From then on the two stores may differ, and each is
//!   compared with its own model.
//! - An injected `SimKv` write error must apply nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use keel::meta::store::{MetaStore, MetaStoreError, WriteBatch, WriteOp};
use keel::meta::store_rocks::RocksStore;
use keel::meta::store_sim::{SimKv, SimKvHandle};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// The key space: small, with shared prefixes, an empty key and 0x00 / 0xff bytes, so byte order
/// and range ends are exercised.
const KEYS: &[&[u8]] = &[b"", b"\x00", b"\x00\x00", b"\x01", b"a", b"a\x00", b"ab", b"b", b"\xff", b"\xff\x00"];
/// Range bounds: every key plus a few that are not keys.
const BOUNDS_EXTRA: &[&[u8]] = &[b"\x00\x01", b"aa", b"c", b"\xff\xff\xff\xff"];
/// Greater than every key: a scan of `[b"", SCAN_END)` sees everything.
const SCAN_END: &[u8] = b"\xff\xff\xff\xff\xff";

// ---------------------------------------------------------------------------------------------
// The model.

fn model_apply(map: &mut Map, batch: &WriteBatch) {
    for op in &batch.ops {
        match op {
            WriteOp::Put { key, value } => {
                map.insert(key.clone(), value.clone());
            }
            WriteOp::Delete { key } => {
                map.remove(key);
            }
            WriteOp::DeleteRange { start, end } => map.retain(|key, _| !(start <= key && key < end)),
        }
    }
}

/// The contract as data: the durable map plus the batches written since the last sync.
#[derive(Debug, Clone, Default)]
struct Model {
    durable: Map,
    pending: Vec<WriteBatch>,
}

impl Model {
    /// The state after the durable map and the first `n_pending` pending batches.
    fn state_after(&self, n_pending: usize) -> Map {
        let mut map = self.durable.clone();
        for batch in &self.pending[..n_pending] {
            model_apply(&mut map, batch);
        }
        map
    }

    /// What reads see: every batch written so far.
    fn current(&self) -> Map {
        self.state_after(self.pending.len())
    }

    fn write(&mut self, batch: WriteBatch, sync: bool) {
        self.pending.push(batch);
        if sync {
            // A synced write makes it and every earlier batch durable.
            self.durable = self.current();
            self.pending.clear();
        }
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.current().get(key).cloned()
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.current().into_iter().filter(|(key, _)| start <= key.as_slice() && key.as_slice() < end).collect()
    }

    /// After a crash the store shows `observed`; it must be the state after some prefix of the
    /// pending batches. Adopts it and returns the prefix length (the longest one, if several match),
    /// or `None` if no prefix matches.
    fn adopt_crash(&mut self, observed: &Map) -> Option<usize> {
        let n_kept = (0..=self.pending.len()).rev().find(|n_kept| self.state_after(*n_kept) == *observed)?;
        self.durable = observed.clone();
        self.pending.clear();
        Some(n_kept)
    }
}

// ---------------------------------------------------------------------------------------------
// Operations.

#[derive(Debug, Clone)]
enum Op {
    Write {
        batch: WriteBatch,
        sync: bool,
    },
    /// `SimKv` with an injected write error: the batch must not be applied. Not sent to RocksDB.
    FailingWrite {
        batch: WriteBatch,
        sync: bool,
    },
    Get {
        key: Vec<u8>,
    },
    Scan {
        start: Vec<u8>,
        end: Vec<u8>,
    },
    /// RocksDB: the process dies (drop, reopen). SimKv: power loss (`crash`, `open`).
    Crash,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KEYS).prop_map(|key| key.to_vec())
}

fn bound() -> impl Strategy<Value = Vec<u8>> {
    let bounds: Vec<&'static [u8]> = KEYS.iter().chain(BOUNDS_EXTRA).copied().collect();
    prop::sample::select(bounds).prop_map(|bound| bound.to_vec())
}

fn write_op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        5 => (key(), prop::collection::vec(any::<u8>(), 0..3)).prop_map(|(key, value)| WriteOp::Put { key, value }),
        2 => key().prop_map(|key| WriteOp::Delete { key }),
        // Inverted and empty ranges included: they delete nothing.
        1 => (bound(), bound()).prop_map(|(start, end)| WriteOp::DeleteRange { start, end }),
    ]
}

fn batch() -> impl Strategy<Value = WriteBatch> {
    prop::collection::vec(write_op(), 0..5).prop_map(|ops| WriteBatch { ops })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (batch(), prop::bool::weighted(0.3)).prop_map(|(batch, sync)| Op::Write { batch, sync }),
        1 => (batch(), any::<bool>()).prop_map(|(batch, sync)| Op::FailingWrite { batch, sync }),
        2 => key().prop_map(|key| Op::Get { key }),
        2 => (bound(), bound()).prop_map(|(start, end)| Op::Scan { start, end }),
        2 => Just(Op::Crash),
    ]
}

// ---------------------------------------------------------------------------------------------
// The harness.

/// What the crashes of one run did to `SimKv`, so a test can check the interesting cases happen.
#[derive(Debug, Default, Clone, Copy)]
struct CrashCounts {
    crashes: u64,
    /// Crashes that lost at least one batch.
    with_loss: u64,
    /// Crashes that kept some but not all of two or more pending batches.
    partial: u64,
}

struct Harness {
    rocks_path: PathBuf,
    rocks: Option<RocksStore>,
    rocks_model: Model,
    kv: SimKv,
    sim: SimKvHandle,
    sim_model: Model,
    counts: CrashCounts,
    /// Declared after `rocks` so that it is dropped after it: removing the directory under an open
    /// database makes RocksDB's background compaction fail and back off for a second.
    _dir: tempfile::TempDir,
}

fn all_of(store: &dyn MetaStore, name: &str) -> Map {
    store.scan(b"", SCAN_END).unwrap_or_else(|error| panic!("{name}: full scan failed: {error}")).into_iter().collect()
}

impl Harness {
    fn new(seed: u64) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let rocks_path = dir.path().join("meta");
        let rocks = RocksStore::open(&rocks_path).expect("open RocksDB");
        let kv = SimKv::new(seed);
        let sim = kv.open();
        Harness {
            rocks_path,
            rocks: Some(rocks),
            rocks_model: Model::default(),
            kv,
            sim,
            sim_model: Model::default(),
            counts: CrashCounts::default(),
            _dir: dir,
        }
    }

    fn rocks(&self) -> &RocksStore {
        self.rocks.as_ref().expect("RocksDB is open between operations")
    }

    fn models_agree(&self) -> bool {
        self.rocks_model.current() == self.sim_model.current()
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Write { batch, sync } => {
                self.rocks().write(batch.clone(), *sync).expect("RocksDB write");
                self.sim.write(batch.clone(), *sync).expect("SimKv write");
                self.rocks_model.write(batch.clone(), *sync);
                self.sim_model.write(batch.clone(), *sync);
            }
            Op::FailingWrite { batch, sync } => {
                self.kv.set_write_error_probability(1.0);
                let result = self.sim.write(batch.clone(), *sync);
                self.kv.set_write_error_probability(0.0);
                assert!(matches!(result, Err(MetaStoreError::Io(_))), "injected write error: got {result:?}");
            }
            Op::Get { key } => {
                let from_rocks = self.rocks().get(key).expect("RocksDB get");
                let from_sim = self.sim.get(key).expect("SimKv get");
                assert_eq!(from_rocks, self.rocks_model.get(key), "RocksDB get({key:?})");
                assert_eq!(from_sim, self.sim_model.get(key), "SimKv get({key:?})");
                if self.models_agree() {
                    assert_eq!(from_rocks, from_sim, "RocksDB and SimKv disagree on get({key:?})");
                }
            }
            Op::Scan { start, end } => {
                let from_rocks = self.rocks().scan(start, end).expect("RocksDB scan");
                let from_sim = self.sim.scan(start, end).expect("SimKv scan");
                assert_eq!(from_rocks, self.rocks_model.scan(start, end), "RocksDB scan({start:?}, {end:?})");
                assert_eq!(from_sim, self.sim_model.scan(start, end), "SimKv scan({start:?}, {end:?})");
                if self.models_agree() {
                    assert_eq!(from_rocks, from_sim, "RocksDB and SimKv disagree on scan({start:?}, {end:?})");
                }
            }
            Op::Crash => {
                self.crash_rocks();
                self.crash_sim();
            }
        }
        self.check_contents();
    }

    fn crash_rocks(&mut self) {
        // The process dies; the OS page cache keeps even the unsynced WAL tail.
        drop(self.rocks.take());
        self.rocks = Some(RocksStore::open(&self.rocks_path).expect("reopen RocksDB"));
        let observed = all_of(self.rocks(), "RocksDB");
        let expected = self.rocks_model.current();
        assert_eq!(observed, expected, "RocksDB lost writes across a process crash");
        let n_pending = self.rocks_model.pending.len();
        assert_eq!(self.rocks_model.adopt_crash(&observed), Some(n_pending));
    }

    fn crash_sim(&mut self) {
        let old = self.sim.clone();
        self.kv.crash();
        assert_eq!(old.get(b"a"), Err(MetaStoreError::Stale), "a handle from before the crash must be stale");
        assert_eq!(old.write(WriteBatch::new(), true), Err(MetaStoreError::Stale));
        self.sim = self.kv.open();
        let observed = all_of(&self.sim, "SimKv");
        let n_pending = self.sim_model.pending.len();
        let before = self.sim_model.clone();
        let Some(n_kept) = self.sim_model.adopt_crash(&observed) else {
            panic!(
                "SimKv after a crash is no prefix of the pending batches:\nobserved {observed:?}\ndurable {:?}\npending {:?}",
                before.durable, before.pending
            );
        };
        self.counts.crashes += 1;
        if n_kept < n_pending {
            self.counts.with_loss += 1;
            if n_kept > 0 && n_pending >= 2 {
                self.counts.partial += 1;
            }
        }
    }

    fn check_contents(&self) {
        let rocks = all_of(self.rocks(), "RocksDB");
        let sim = all_of(&self.sim, "SimKv");
        assert_eq!(rocks, self.rocks_model.current(), "RocksDB contents");
        assert_eq!(sim, self.sim_model.current(), "SimKv contents");
        if self.models_agree() {
            assert_eq!(rocks, sim, "RocksDB and SimKv contents");
        }
    }
}

fn run(seed: u64, ops: &[Op]) -> CrashCounts {
    let mut harness = Harness::new(seed);
    for op in ops {
        harness.apply(op);
    }
    // Every run ends with a crash, so every run checks recovery at least once.
    harness.apply(&Op::Crash);
    harness.counts
}

fn proptest_config() -> ProptestConfig {
    // PROPTEST_CASES overrides the default (kept small so the debug test stays fast).
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/meta_store_model.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn rocks_store_and_sim_kv_match_the_model(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..50)) {
        run(seed, &ops);
    }
}

/// The crash checks above only mean something if crashes really lose batches, all of them or some:
/// a fixed workload of unsynced writes between crashes must see both.
#[test]
fn crashes_in_the_harness_lose_all_or_part_of_the_pending_batches() {
    let mut ops = Vec::new();
    for round in 0..24u8 {
        ops.push(Op::Write { batch: WriteBatch { ops: vec![] }, sync: true });
        for idx in 0..4u8 {
            let mut batch = WriteBatch::new();
            batch.put(vec![b'a', idx], vec![round]).delete(vec![b'b', idx]);
            ops.push(Op::Write { batch, sync: false });
        }
        ops.push(Op::Crash);
    }
    let counts = run(7, &ops);
    assert!(counts.with_loss >= 5 && counts.partial >= 3, "{counts:?}");
}

/// Pins two contract details by hand: a synced write makes the earlier unsynced ones durable, and
/// `DeleteRange` is half-open in byte order.
#[test]
fn sync_covers_earlier_batches_and_delete_range_is_half_open() {
    let mut harness = Harness::new(11);
    let mut batch = WriteBatch::new();
    for key in KEYS {
        batch.put(key.to_vec(), b"v".to_vec());
    }
    harness.apply(&Op::Write { batch, sync: false });
    let mut batch = WriteBatch::new();
    batch.delete_range(b"a".to_vec(), b"b".to_vec()).delete_range(b"\xff".to_vec(), b"\x01".to_vec());
    harness.apply(&Op::Write { batch, sync: true });
    for _ in 0..8 {
        harness.apply(&Op::Crash);
        let keys: Vec<Vec<u8>> = all_of(&harness.sim, "SimKv").into_keys().collect();
        let expected: Vec<Vec<u8>> = [&b""[..], b"\x00", b"\x00\x00", b"\x01", b"b", b"\xff", b"\xff\x00"]
            .iter()
            .map(|key| key.to_vec())
            .collect();
        assert_eq!(keys, expected);
    }
}
