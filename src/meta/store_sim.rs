//! `SimKv`: an in-memory [`MetaStore`] for the simulation that can lose unsynced batches.
//!
//! In: [`WriteBatch`]es with a `sync` flag, reads, `crash()`, one fault knob. Out: the same contract
//! as `RocksStore` (see `store.rs`), with power loss made explicit. Everything random is drawn from
//! one seeded RNG, so a run is a function of its seed and the order of calls.
//!
//! # Model
//! - `SimKv` is the persistent "disk": it outlives process incarnations and clones share it.
//!   [`SimKv::open`] gives a [`SimKvHandle`] for one incarnation; it implements `MetaStore`.
//! - The state is the durable map plus the ordered list of batches written since the last sync.
//!   Reads see the durable map with every pending batch applied (kept as `current`).
//! - `write(batch, sync = false)` appends `batch` to the pending list. `write(batch, sync = true)`
//!   makes every pending batch and `batch` durable, in order (RocksDB's WAL semantics).
//! - `crash()` (power loss) keeps a random prefix of the pending batches, each batch whole or not at
//!   all, drops the rest, and makes every handle opened before it stale ([`MetaStoreError::Stale`]).
//! - An injected write error (probability `write_error_probability`) means the batch was **not**
//!   applied; earlier pending batches stay pending.
//!
//! # Limits
//! No panics on any input: an inverted `DeleteRange` or `scan` range is empty.
//!
//! # Lock order
//! One `std::sync::Mutex` around all state; the trait is synchronous, so it is never held across an
//! `.await`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::store::{MetaStore, MetaStoreError, WriteBatch, WriteOp};

/// Counters for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimKvStats {
    /// Batches applied by `write` (synced or not; injected failures not counted).
    pub batches_written: u64,
    /// Batches made durable by a `write(.., sync = true)`, including the earlier pending ones it
    /// covered.
    pub batches_synced: u64,
    /// Batches that were pending at a crash and did not survive it.
    pub batches_lost: u64,
    /// Writes that failed with an injected error (their batch was not applied).
    pub write_errors: u64,
    pub crashes: u64,
}

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

struct State {
    rng: StdRng,
    /// Bumped by every crash; a handle with an older generation is stale.
    generation: u64,
    durable: Map,
    /// Batches written since the last sync, in write order.
    pending: Vec<WriteBatch>,
    /// `durable` with every pending batch applied: what reads see.
    current: Map,
    write_error_probability: f64,
    stats: SimKvStats,
}

/// The persistent side of a simulated metadata store; clones share the same state.
#[derive(Clone)]
pub struct SimKv {
    state: Arc<Mutex<State>>,
}

/// One incarnation's view of a [`SimKv`]; every operation fails with [`MetaStoreError::Stale`]
/// after the next crash.
#[derive(Clone)]
pub struct SimKvHandle {
    state: Arc<Mutex<State>>,
    generation: u64,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state is updated only by infallible code after all checks, so a poisoned lock (a panic in
    // another test thread) cannot leave it half-updated.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn apply_batch(map: &mut Map, batch: &WriteBatch) {
    for op in &batch.ops {
        match op {
            WriteOp::Put { key, value } => {
                map.insert(key.clone(), value.clone());
            }
            WriteOp::Delete { key } => {
                map.remove(key);
            }
            WriteOp::DeleteRange { start, end } => {
                if start < end {
                    let doomed: Vec<Vec<u8>> = map
                        .range::<[u8], _>((Bound::Included(start.as_slice()), Bound::Excluded(end.as_slice())))
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in doomed {
                        map.remove(&key);
                    }
                }
            }
        }
    }
}

impl SimKv {
    pub fn new(seed: u64) -> SimKv {
        SimKv {
            state: Arc::new(Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                generation: 0,
                durable: Map::new(),
                pending: Vec::new(),
                current: Map::new(),
                write_error_probability: 0.0,
                stats: SimKvStats::default(),
            })),
        }
    }

    /// A handle for the current incarnation; it goes stale at the next [`SimKv::crash`].
    pub fn open(&self) -> SimKvHandle {
        SimKvHandle { state: self.state.clone(), generation: lock(&self.state).generation }
    }

    /// Simulated power loss: a random prefix of the pending batches survives (each batch whole or
    /// not at all), the rest is lost, and every handle opened before now goes stale.
    pub fn crash(&self) {
        let mut state = lock(&self.state);
        let state = &mut *state;
        state.generation += 1;
        state.stats.crashes += 1;
        let pending = std::mem::take(&mut state.pending);
        let n_kept = state.rng.random_range(0..=pending.len());
        for batch in &pending[..n_kept] {
            apply_batch(&mut state.durable, batch);
        }
        state.stats.batches_lost += (pending.len() - n_kept) as u64;
        state.current = state.durable.clone();
    }

    /// Probability that a `write` fails with an injected [`MetaStoreError::Io`] without applying its
    /// batch. Values outside `[0, 1]` are clamped; NaN counts as 0.
    pub fn set_write_error_probability(&self, probability: f64) {
        let probability = if probability.is_nan() { 0.0 } else { probability.clamp(0.0, 1.0) };
        lock(&self.state).write_error_probability = probability;
    }

    pub fn write_error_probability(&self) -> f64 {
        lock(&self.state).write_error_probability
    }

    pub fn stats(&self) -> SimKvStats {
        lock(&self.state).stats
    }

    /// Batches written but not yet durable, for tests.
    pub fn pending_batches(&self) -> usize {
        lock(&self.state).pending.len()
    }

    /// The durable contents (what a crash that keeps no pending batch leaves), for tests.
    pub fn durable_snapshot(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        lock(&self.state).durable.iter().map(|(key, value)| (key.clone(), value.clone())).collect()
    }
}

impl SimKvHandle {
    fn state(&self) -> Result<MutexGuard<'_, State>, MetaStoreError> {
        let state = lock(&self.state);
        if state.generation != self.generation {
            return Err(MetaStoreError::Stale);
        }
        Ok(state)
    }
}

impl MetaStore for SimKvHandle {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaStoreError> {
        Ok(self.state()?.current.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, MetaStoreError> {
        let state = self.state()?;
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(state
            .current
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), MetaStoreError> {
        let mut state = self.state()?;
        let state = &mut *state;
        let error_probability = state.write_error_probability;
        if error_probability > 0.0 && state.rng.random_bool(error_probability) {
            state.stats.write_errors += 1;
            return Err(MetaStoreError::Io("simkv: injected write error (batch not applied)".to_string()));
        }
        apply_batch(&mut state.current, &batch);
        state.stats.batches_written += 1;
        state.pending.push(batch);
        if sync {
            for batch in &state.pending {
                apply_batch(&mut state.durable, batch);
            }
            state.stats.batches_synced += state.pending.len() as u64;
            state.pending.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put(key.as_bytes(), value.as_bytes());
        batch
    }

    fn all(store: &SimKvHandle) -> Vec<(String, String)> {
        store
            .scan(b"", &[0xff; 8])
            .unwrap()
            .into_iter()
            .map(|(key, value)| (String::from_utf8(key).unwrap(), String::from_utf8(value).unwrap()))
            .collect()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
    }

    #[test]
    fn unsynced_batch_is_lost_on_some_crashes_and_reads_see_it_before() {
        let kv = SimKv::new(1);
        let (mut lost, mut kept) = (0, 0);
        for round in 0..32 {
            let store = kv.open();
            store.write(put("a", &round.to_string()), true).unwrap();
            store.write(put("b", "x"), false).unwrap();
            assert_eq!(store.get(b"b").unwrap(), Some(b"x".to_vec()), "reads see unsynced batches");
            kv.crash();
            let store = kv.open();
            assert_eq!(store.get(b"a").unwrap(), Some(round.to_string().into_bytes()), "synced batch survives");
            match store.get(b"b").unwrap() {
                None => lost += 1,
                Some(_) => kept += 1,
            }
            store.write(WriteBatch { ops: vec![WriteOp::Delete { key: b"b".to_vec() }] }, true).unwrap();
        }
        assert!(lost > 0 && kept > 0, "lost {lost}, kept {kept}");
        assert_eq!(kv.stats().batches_lost, lost);
        assert_eq!(kv.stats().crashes, 32);
    }

    #[test]
    fn a_synced_write_makes_earlier_unsynced_batches_durable() {
        let kv = SimKv::new(2);
        let store = kv.open();
        store.write(put("a", "1"), false).unwrap();
        store.write(put("b", "2"), false).unwrap();
        assert_eq!(kv.pending_batches(), 2);
        store.write(put("c", "3"), true).unwrap();
        assert_eq!(kv.pending_batches(), 0);
        assert_eq!(kv.stats().batches_synced, 3);
        for _ in 0..8 {
            kv.crash();
            assert_eq!(all(&kv.open()), pairs(&[("a", "1"), ("b", "2"), ("c", "3")]));
        }
        assert_eq!(kv.stats().batches_lost, 0);
    }

    #[test]
    fn a_batch_survives_a_crash_whole_or_not_at_all() {
        let kv = SimKv::new(3);
        let mut outcomes = std::collections::BTreeSet::new();
        for _ in 0..32 {
            let store = kv.open();
            let mut batch = WriteBatch::new();
            batch.put(b"x", b"1").put(b"y", b"2").delete(b"z");
            store.write(put("z", "old"), true).unwrap();
            store.write(batch, false).unwrap();
            kv.crash();
            let seen = all(&kv.open());
            assert!(
                seen == pairs(&[("z", "old")]) || seen == pairs(&[("x", "1"), ("y", "2")]),
                "a torn batch survived: {seen:?}"
            );
            outcomes.insert(seen);
            let mut reset = WriteBatch::new();
            reset.delete_range(b"".to_vec(), vec![0xff; 8]);
            kv.open().write(reset, true).unwrap();
        }
        assert_eq!(outcomes.len(), 2, "both outcomes occur");
    }

    #[test]
    fn batches_survive_a_crash_as_a_prefix() {
        let kv = SimKv::new(4);
        let mut prefix_lengths = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let store = kv.open();
            for idx in 0..5 {
                store.write(put(&format!("k{idx}"), "v"), false).unwrap();
            }
            kv.crash();
            let store = kv.open();
            let present: Vec<bool> =
                (0..5).map(|idx| store.get(format!("k{idx}").as_bytes()).unwrap().is_some()).collect();
            let n_kept = present.iter().take_while(|present| **present).count();
            assert!(present[n_kept..].iter().all(|present| !present), "not a prefix: {present:?}");
            prefix_lengths.insert(n_kept);
            let mut reset = WriteBatch::new();
            reset.delete_range(b"k".to_vec(), b"l".to_vec());
            store.write(reset, true).unwrap();
            assert!(all(&store).is_empty());
        }
        assert!(prefix_lengths.len() >= 4, "prefix lengths seen: {prefix_lengths:?}");
    }

    #[test]
    fn handles_go_stale_after_a_crash() {
        let kv = SimKv::new(5);
        let old = kv.open();
        let old_clone = old.clone();
        old.write(put("a", "1"), true).unwrap();
        kv.crash();
        assert_eq!(old.get(b"a"), Err(MetaStoreError::Stale));
        assert_eq!(old_clone.scan(b"", b"z"), Err(MetaStoreError::Stale));
        assert_eq!(old.write(put("b", "2"), true), Err(MetaStoreError::Stale));
        let new = kv.open();
        assert_eq!(new.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(new.get(b"b").unwrap(), None, "a stale write applies nothing");
    }

    #[test]
    fn delete_range_is_half_open_in_byte_order_and_inverted_ranges_are_empty() {
        let kv = SimKv::new(6);
        let store = kv.open();
        let mut batch = WriteBatch::new();
        for key in ["a", "b", "ba", "bb", "c", "d"] {
            batch.put(key, "v");
        }
        store.write(batch, false).unwrap();
        let mut batch = WriteBatch::new();
        batch.delete_range("b", "c").delete_range("z", "a").delete_range("d", "d");
        store.write(batch, true).unwrap();
        assert_eq!(all(&store), pairs(&[("a", "v"), ("c", "v"), ("d", "v")]));
        assert!(store.scan(b"z", b"a").unwrap().is_empty());
        assert!(store.scan(b"c", b"c").unwrap().is_empty());
        assert_eq!(store.scan(b"b", b"c\0").unwrap(), vec![(b"c".to_vec(), b"v".to_vec())]);
        kv.crash();
        assert_eq!(all(&kv.open()), pairs(&[("a", "v"), ("c", "v"), ("d", "v")]));
    }

    #[test]
    fn an_injected_write_error_applies_nothing_and_keeps_earlier_batches_pending() {
        let kv = SimKv::new(7);
        let store = kv.open();
        store.write(put("a", "1"), false).unwrap();
        kv.set_write_error_probability(1.0);
        assert!(matches!(store.write(put("b", "2"), true), Err(MetaStoreError::Io(_))));
        assert_eq!(store.get(b"b").unwrap(), None);
        assert_eq!(kv.pending_batches(), 1, "the failed sync made nothing durable");
        kv.set_write_error_probability(f64::NAN);
        assert_eq!(kv.write_error_probability(), 0.0);
        kv.set_write_error_probability(7.0);
        assert_eq!(kv.write_error_probability(), 1.0);
        kv.set_write_error_probability(-1.0);
        store.write(put("c", "3"), true).unwrap();
        assert_eq!(
            kv.stats(),
            SimKvStats { batches_written: 2, batches_synced: 2, write_errors: 1, ..Default::default() }
        );
        assert_eq!(kv.durable_snapshot().len(), 2);
    }

    #[test]
    fn the_same_seed_loses_the_same_batches() {
        let run = |seed| {
            let kv = SimKv::new(seed);
            let mut survivors = Vec::new();
            for round in 0..16 {
                let store = kv.open();
                for idx in 0..4 {
                    store.write(put(&format!("{round}/{idx}"), "v"), false).unwrap();
                }
                kv.crash();
                survivors.push(all(&kv.open()).len());
            }
            survivors
        };
        assert_eq!(run(42), run(42));
    }
}
