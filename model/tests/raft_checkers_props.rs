//! Property tests for the Raft invariant checker and the metadata history checker.
//!
//! A small but faithful Raft cluster (elections with the up-to-date vote rule, AppendEntries that
//! truncate only conflicting suffixes, commit by majority in the leader's own term, snapshots, compaction,
//! restarts, stale leaders, arbitrary message loss) is observed after random steps; the checker must find
//! nothing. Then one corruption is injected and the checker must report it.
//!
//! A linearizable register per topic, driven by concurrent clients whose ops take effect at a point
//! inside their call (or, for `Info` ops, possibly later or never), produces metadata histories the
//! checker must find valid. Mutations then plant a stale read, a lost create, a duplicate create, a
//! phantom or a resurrected topic, and the checker must report exactly that kind at that place.

use std::collections::BTreeMap;

use keel_model::metadata_checker::{
    check_metadata, MetaEvent, MetaOp, MetaOutcome, MetadataViolation, MetadataViolationKind, OpRef,
};
use keel_model::raft_checker::{RaftChecker, RaftObservation, RaftViolationKind};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// Failing seeds go to the workspace's `proptest-regressions/`, which is committed.
const REGRESSIONS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/raft_checkers.txt");

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS_PATH))),
        ..ProptestConfig::default()
    }
}

// ---- Raft ------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct SimNode {
    term: u64,
    is_leader: bool,
    commit_index: u64,
    applied_index: u64,
    /// The compaction point: `(index, term)` of the last entry folded into the snapshot.
    snapshot: (u64, u64),
    /// `(index, term, fingerprint)` of the entries after the snapshot.
    log: Vec<(u64, u64, u64)>,
    /// Leader only: the highest index known replicated on each node in this term.
    match_index: Vec<u64>,
    applied_unobserved: Vec<(u64, u64)>,
}

impl SimNode {
    fn last(&self) -> (u64, u64) {
        self.log.last().map_or(self.snapshot, |&(index, term, _)| (index, term))
    }

    fn entry(&self, index: u64) -> Option<(u64, u64, u64)> {
        let first = self.snapshot.0 + 1;
        if index < first {
            return None;
        }
        self.log.get((index - first) as usize).copied()
    }

    fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.snapshot.0 {
            return Some(self.snapshot.1);
        }
        self.entry(index).map(|(_, term, _)| term)
    }
}

struct RaftSim {
    nodes: Vec<SimNode>,
    checker: RaftChecker,
    entries_n: u64,
    /// The last commit index each node reported in its current incarnation.
    reported_commit: Vec<Option<u64>>,
    /// The leader observed in each term.
    leaders_observed: BTreeMap<u64, u64>,
    /// `(index, term) -> fingerprint` of every entry some observation showed in a log: what the checker
    /// has pinned, and so what a planted log mismatch can contradict even after every node has compacted
    /// the entry away.
    entries_observed: BTreeMap<(u64, u64), u64>,
}

impl RaftSim {
    fn new(nodes_n: usize) -> RaftSim {
        let mut checker = RaftChecker::new();
        for node_idx in 0..nodes_n {
            checker.node_restarted(node_idx as u64, 0);
        }
        RaftSim {
            nodes: vec![SimNode::default(); nodes_n],
            checker,
            entries_n: 0,
            reported_commit: vec![None; nodes_n],
            leaders_observed: BTreeMap::new(),
            entries_observed: BTreeMap::new(),
        }
    }

    fn majority(&self, count: usize) -> bool {
        count * 2 > self.nodes.len()
    }

    fn append(&mut self, leader_idx: usize) {
        self.entries_n += 1;
        let node = &mut self.nodes[leader_idx];
        let (last_index, _) = node.last();
        // Distinct data for every entry ever created.
        let fingerprint = self.entries_n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ node.term;
        node.log.push((last_index + 1, node.term, fingerprint));
        node.match_index[leader_idx] = last_index + 1;
    }

    /// `candidate_idx` runs for a new term; the nodes in `voters_mask` hear it and vote if its log is
    /// at least as up to date as theirs.
    fn elect(&mut self, candidate_idx: usize, voters_mask: u8) {
        let term = self.nodes.iter().map(|node| node.term).max().unwrap_or(0) + 1;
        let candidate_last = {
            let (index, term) = self.nodes[candidate_idx].last();
            (term, index)
        };
        let mut votes = 0;
        for (node_idx, node) in self.nodes.iter_mut().enumerate() {
            let hears = node_idx == candidate_idx || voters_mask & (1 << node_idx) != 0;
            if !hears {
                continue;
            }
            // Hearing a higher term makes a node a follower of that term, whether it votes or not.
            node.term = term;
            node.is_leader = false;
            let (index, last_term) = node.last();
            if (last_term, index) <= candidate_last {
                votes += 1;
            }
        }
        if self.majority(votes) {
            let nodes_n = self.nodes.len();
            let candidate = &mut self.nodes[candidate_idx];
            candidate.is_leader = true;
            candidate.match_index = vec![0; nodes_n];
            self.append(candidate_idx);
        }
    }

    fn propose(&mut self, leader_idx: usize) {
        if self.nodes[leader_idx].is_leader {
            self.append(leader_idx);
        }
    }

    /// One AppendEntries (or InstallSnapshot) exchange from `leader_idx` to `follower_idx`, carrying the
    /// leader's entries up to a point chosen by `reach`.
    fn replicate(&mut self, leader_idx: usize, follower_idx: usize, reach: u8) {
        if leader_idx == follower_idx || !self.nodes[leader_idx].is_leader {
            return;
        }
        let leader = self.nodes[leader_idx].clone();
        if self.nodes[follower_idx].term > leader.term {
            let follower_term = self.nodes[follower_idx].term;
            let leader = &mut self.nodes[leader_idx];
            leader.term = follower_term;
            leader.is_leader = false;
            return;
        }
        {
            let follower = &mut self.nodes[follower_idx];
            follower.term = leader.term;
            follower.is_leader = false;
        }
        // The highest index both logs hold with the same term.
        let follower = &self.nodes[follower_idx];
        let floor = follower.snapshot.0.max(leader.snapshot.0);
        let mut matched = None;
        let mut probe = follower.last().0.min(leader.last().0);
        while probe >= floor {
            if let (Some(a), Some(b)) = (follower.term_at(probe), leader.term_at(probe)) {
                if a == b {
                    matched = Some(probe);
                    break;
                }
            }
            if probe == 0 {
                break;
            }
            probe -= 1;
        }
        let matched = match matched {
            Some(matched) => matched,
            None if leader.snapshot.0 > follower.commit_index => {
                // The follower is behind the leader's compaction point: send the snapshot.
                self.observe(follower_idx);
                let follower = &mut self.nodes[follower_idx];
                follower.snapshot = leader.snapshot;
                follower.log.clear();
                follower.commit_index = leader.snapshot.0;
                follower.applied_index = leader.snapshot.0;
                self.checker.snapshot_installed(follower_idx as u64, leader.snapshot.0);
                leader.snapshot.0
            }
            None => panic!("simulation bug: no match point between {leader:?} and {follower:?}"),
        };
        let leader_last = leader.last().0;
        let reach_index = matched + u64::from(reach) % (leader_last - matched + 1);
        let follower = &mut self.nodes[follower_idx];
        for index in matched + 1..=reach_index {
            let entry = leader.entry(index).expect("the leader holds everything after its compaction point");
            match follower.entry(index) {
                Some((_, term, _)) if term == entry.1 => {}
                _ => {
                    assert!(index > follower.commit_index, "simulation bug: truncating committed entry {index}");
                    let keep = (index - follower.snapshot.0 - 1) as usize;
                    follower.log.truncate(keep);
                    follower.log.push(entry);
                }
            }
        }
        follower.commit_index = follower.commit_index.max(leader.commit_index.min(reach_index));
        let leader = &mut self.nodes[leader_idx];
        leader.match_index[follower_idx] = leader.match_index[follower_idx].max(reach_index);
    }

    fn advance_commit(&mut self, leader_idx: usize) {
        let leader = &self.nodes[leader_idx];
        if !leader.is_leader {
            return;
        }
        let mut index = leader.last().0;
        while index > leader.commit_index {
            let replicas = leader.match_index.iter().filter(|matched| **matched >= index).count();
            if leader.term_at(index) == Some(leader.term) && self.majority(replicas) {
                self.nodes[leader_idx].commit_index = index;
                return;
            }
            index -= 1;
        }
    }

    fn apply(&mut self, node_idx: usize, count: u8) {
        let node = &mut self.nodes[node_idx];
        for _ in 0..=count {
            if node.applied_index >= node.commit_index {
                break;
            }
            let index = node.applied_index + 1;
            let (_, _, fingerprint) = node.entry(index).expect("applied entries are never compacted");
            node.applied_index = index;
            node.applied_unobserved.push((index, fingerprint));
        }
    }

    fn compact(&mut self, node_idx: usize, arg: u8) {
        let node = &mut self.nodes[node_idx];
        if node.applied_index <= node.snapshot.0 {
            return;
        }
        let index = node.snapshot.0 + 1 + u64::from(arg) % (node.applied_index - node.snapshot.0);
        let term = node.term_at(index).expect("compacting an entry the node holds");
        let drop = (index - node.snapshot.0) as usize;
        node.log.drain(..drop);
        node.snapshot = (index, term);
    }

    /// The node crashes and comes back: volatile state is gone, the state machine restarts from the
    /// snapshot, and (as after reading an older hard state) the commit index may come back lower.
    fn restart(&mut self, node_idx: usize, arg: u8) {
        self.observe(node_idx);
        let node = &mut self.nodes[node_idx];
        node.is_leader = false;
        node.match_index.clear();
        node.applied_index = node.snapshot.0;
        node.commit_index = node.snapshot.0.max(node.commit_index.saturating_sub(u64::from(arg % 3)));
        self.checker.node_restarted(node_idx as u64, node.snapshot.0);
        self.reported_commit[node_idx] = None;
    }

    fn observation(&mut self, node_idx: usize) -> RaftObservation {
        let node = &mut self.nodes[node_idx];
        RaftObservation {
            node: node_idx as u64,
            term: node.term,
            is_leader: node.is_leader,
            commit_index: node.commit_index,
            log: node.log.clone(),
            applied: std::mem::take(&mut node.applied_unobserved),
        }
    }

    fn observe(&mut self, node_idx: usize) {
        let observation = self.observation(node_idx);
        let found = self.checker.observe(&observation);
        assert!(found.is_empty(), "false positive on {observation:?}: {found:?}\n{}", self.checker);
        self.reported_commit[node_idx] = Some(observation.commit_index);
        if observation.is_leader {
            self.leaders_observed.insert(observation.term, node_idx as u64);
        }
        for &(index, term, fingerprint) in &observation.log {
            self.entries_observed.insert((index, term), fingerprint);
        }
    }

    fn step(&mut self, choice: u8, a: u8, b: u8) {
        let nodes_n = self.nodes.len();
        let node_idx = usize::from(a) % nodes_n;
        match choice % 32 {
            0 => self.elect(node_idx, b),
            1..=4 => {
                let leader_idx =
                    (0..nodes_n).filter(|idx| self.nodes[*idx].is_leader).max_by_key(|idx| self.nodes[*idx].term);
                self.propose(if b.is_multiple_of(4) { node_idx } else { leader_idx.unwrap_or(node_idx) });
            }
            5..=14 => {
                // Most traffic comes from the newest leader; some from stale ones.
                let leader_idx =
                    (0..nodes_n).filter(|idx| self.nodes[*idx].is_leader).max_by_key(|idx| self.nodes[*idx].term);
                let leader_idx = if b.is_multiple_of(4) { Some(node_idx) } else { leader_idx };
                if let Some(leader_idx) = leader_idx {
                    self.replicate(leader_idx, usize::from(b) % nodes_n, b / 8);
                }
            }
            15..=18 => {
                let leader_idx =
                    (0..nodes_n).filter(|idx| self.nodes[*idx].is_leader).max_by_key(|idx| self.nodes[*idx].term);
                self.advance_commit(if b.is_multiple_of(4) { node_idx } else { leader_idx.unwrap_or(node_idx) });
            }
            19..=22 => self.apply(node_idx, b % 4),
            23 | 24 => self.compact(node_idx, b),
            25 => {
                if b.is_multiple_of(4) {
                    self.restart(node_idx, b / 4);
                }
            }
            _ => self.observe(node_idx),
        }
    }
}

/// A run of a correct cluster: node 0 first wins term 1 and commits its first entry everywhere, then
/// `steps` happen, then every node is observed. No violation may be reported on the way.
fn run_raft(nodes_n: usize, steps: &[(u8, u8, u8)]) -> RaftSim {
    let mut sim = RaftSim::new(nodes_n);
    sim.elect(0, u8::MAX);
    for follower_idx in 1..nodes_n {
        sim.replicate(0, follower_idx, u8::MAX);
    }
    sim.advance_commit(0);
    for follower_idx in 1..nodes_n {
        sim.replicate(0, follower_idx, u8::MAX);
    }
    for node_idx in 0..nodes_n {
        sim.apply(node_idx, 0);
        sim.observe(node_idx);
    }
    for &(choice, a, b) in steps {
        sim.step(choice, a, b);
    }
    for node_idx in 0..nodes_n {
        sim.observe(node_idx);
    }
    assert!(sim.checker.is_valid(), "{}", sim.checker);
    sim
}

#[derive(Clone, Copy, Debug)]
enum RaftCorruption {
    SecondLeader,
    LogDataDiffers,
    CommittedEntryLost,
    CommitIndexGoesBack,
    AppliedDifferentData,
    AppliedGap,
    AppliedUncommitted,
}

fn raft_corruption() -> impl Strategy<Value = RaftCorruption> {
    prop_oneof![
        Just(RaftCorruption::SecondLeader),
        Just(RaftCorruption::LogDataDiffers),
        Just(RaftCorruption::CommittedEntryLost),
        Just(RaftCorruption::CommitIndexGoesBack),
        Just(RaftCorruption::AppliedDifferentData),
        Just(RaftCorruption::AppliedGap),
        Just(RaftCorruption::AppliedUncommitted),
    ]
}

/// Feeds one corrupted observation (or restart + observation) and returns the kind that must be reported,
/// or `None` when this run offers nothing to corrupt that way.
fn inject(sim: &mut RaftSim, corruption: RaftCorruption, pick: usize) -> Option<RaftViolationKind> {
    let nodes_n = sim.nodes.len();
    let node_idx = pick % nodes_n;
    let mut observation = sim.observation(node_idx);
    observation.applied.clear();
    let expected = match corruption {
        RaftCorruption::SecondLeader => {
            let (&term, &leader) = sim.leaders_observed.iter().nth(pick % sim.leaders_observed.len())?;
            observation.node = (leader + 1) % nodes_n as u64;
            observation.term = term;
            observation.is_leader = true;
            RaftViolationKind::TwoLeadersInTerm
        }
        RaftCorruption::LogDataDiffers => {
            // Any entry ever observed, not only one some node still holds: compaction may have emptied
            // every log, and the checker still knows the entry's data.
            let (&(index, term), &fingerprint) = sim.entries_observed.iter().nth(pick % sim.entries_observed.len())?;
            observation.log = vec![(index, term, fingerprint ^ 1)];
            observation.commit_index = sim.reported_commit[node_idx].unwrap_or(0);
            RaftViolationKind::LogMismatch
        }
        RaftCorruption::CommittedEntryLost => {
            // A new leader whose log holds other data at index 1, committed in term 1 at the start.
            let term = sim.nodes.iter().map(|node| node.term).max().unwrap_or(0) + 1;
            observation.term = term;
            observation.is_leader = true;
            observation.log = vec![(1, term, 0xdead)];
            observation.commit_index = sim.reported_commit[node_idx].unwrap_or(0);
            RaftViolationKind::CommittedEntryLost
        }
        RaftCorruption::CommitIndexGoesBack => {
            let node_idx =
                (0..nodes_n).map(|idx| (idx + pick) % nodes_n).find(|idx| sim.reported_commit[*idx] >= Some(1))?;
            observation = sim.observation(node_idx);
            observation.commit_index = sim.reported_commit[node_idx]? - 1;
            RaftViolationKind::CommitIndexWentBack
        }
        RaftCorruption::AppliedDifferentData => {
            // Everyone applied entry 1 at the start; this node re-applies it with other data.
            sim.checker.node_restarted(node_idx as u64, 0);
            observation.commit_index = 1;
            observation.applied = vec![(1, 0xbad)];
            RaftViolationKind::AppliedDivergence
        }
        RaftCorruption::AppliedGap => {
            sim.checker.node_restarted(node_idx as u64, 0);
            observation.commit_index = 0;
            observation.applied = vec![(2, 0xbad)];
            RaftViolationKind::AppliedDivergence
        }
        RaftCorruption::AppliedUncommitted => {
            let commit_index_max = sim.checker.commit_index_max();
            sim.checker.node_restarted(node_idx as u64, commit_index_max);
            observation.commit_index = 0;
            observation.applied = vec![(commit_index_max + 1, 0xbad)];
            RaftViolationKind::AppliedUncommitted
        }
    };
    let found = sim.checker.observe(&observation);
    assert!(
        found.iter().any(|violation| violation.kind() == expected),
        "{corruption:?} via {observation:?} not reported as {expected}: {found:?}\n{}",
        sim.checker
    );
    assert!(!sim.checker.is_valid());
    assert!(sim.checker.to_string().contains(expected.name()), "{}", sim.checker);
    Some(expected)
}

fn raft_steps() -> impl Strategy<Value = Vec<(u8, u8, u8)>> {
    proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 0..400)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn correct_raft_runs_have_no_violations(nodes_n in prop_oneof![Just(3usize), Just(5usize)], steps in raft_steps()) {
        let sim = run_raft(nodes_n, &steps);
        prop_assert!(sim.checker.observations_count() > nodes_n as u64);
    }

    #[test]
    fn injected_raft_corruptions_are_detected(
        nodes_n in prop_oneof![Just(3usize), Just(5usize)],
        steps in raft_steps(),
        corruption in raft_corruption(),
        pick in any::<usize>(),
    ) {
        let mut sim = run_raft(nodes_n, &steps);
        // Node 0 led term 1 and every node applied entry 1 and showed it in its log, so every corruption
        // has something to work on (even when every node has since compacted entry 1 away) except a
        // commit index going back when every node restarted with commit index 0.
        let injected = inject(&mut sim, corruption, pick);
        prop_assert!(injected.is_some() || matches!(corruption, RaftCorruption::CommitIndexGoesBack));
    }

    #[test]
    fn raft_checker_never_panics(
        observations in proptest::collection::vec(
            (0u64..4, 0u64..5, any::<bool>(), 0u64..8,
             proptest::collection::vec((0u64..8, 0u64..5, 0u64..3), 0..6),
             proptest::collection::vec((0u64..8, 0u64..3), 0..4),
             proptest::option::of(0u64..8)),
            0..40),
    ) {
        let mut checker = RaftChecker::new();
        for (node, term, is_leader, commit_index, log, applied, restart) in observations {
            if let Some(applied_from_index) = restart {
                checker.node_restarted(node, applied_from_index);
            }
            checker.observe(&RaftObservation { node, term, is_leader, commit_index, log, applied });
        }
        let _ = checker.to_string();
    }
}

// ---- Metadata -------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Effect {
    /// A write that applied (`Ok`) or was rejected by the state (`Fail`).
    Write(bool),
    Listed(Vec<String>),
    Described(Option<u32>),
}

#[derive(Clone, Debug)]
struct InFlight {
    invoke_ns: u64,
    op: MetaOp,
    /// Set once the op took effect (its linearization point).
    effect: Option<Effect>,
}

/// A linearizable metadata store: topic name -> partition count.
#[derive(Default)]
struct MetaSim {
    topics: BTreeMap<String, u32>,
    events: Vec<MetaEvent>,
    /// `Info` writes that have not taken effect yet and still may.
    zombies: Vec<MetaOp>,
}

impl MetaSim {
    fn apply(&mut self, op: &MetaOp) -> Effect {
        match op {
            MetaOp::CreateTopic { name, partitions } => {
                let created = !self.topics.contains_key(name);
                if created {
                    self.topics.insert(name.clone(), *partitions);
                }
                Effect::Write(created)
            }
            MetaOp::DeleteTopic { name } => Effect::Write(self.topics.remove(name).is_some()),
            MetaOp::ListTopics => Effect::Listed(self.topics.keys().cloned().collect()),
            MetaOp::DescribeTopic { name } => Effect::Described(self.topics.get(name).copied()),
        }
    }

    fn complete(&mut self, process: u64, in_flight: InFlight, complete_ns: u64, as_info: bool) {
        let outcome = match in_flight.effect {
            None if as_info => {
                self.zombies.push(in_flight.op.clone());
                MetaOutcome::Info
            }
            None => MetaOutcome::Fail,
            Some(_) if as_info => MetaOutcome::Info,
            Some(Effect::Write(true)) => MetaOutcome::Ok,
            Some(Effect::Write(false)) => MetaOutcome::Fail,
            Some(Effect::Listed(names)) => MetaOutcome::Listed(names),
            Some(Effect::Described(partitions)) => MetaOutcome::Described(partitions),
        };
        self.events.push(MetaEvent { process, invoke_ns: in_flight.invoke_ns, complete_ns, op: in_flight.op, outcome });
    }
}

/// A correct history from `steps`, ending with a suffix that gives every mutation something to work on:
/// `z` created, `y` created and deleted, then a list of everything.
fn simulate_metadata(topics_n: usize, processes_n: usize, steps: &[(u8, u8, u8)]) -> (Vec<MetaEvent>, Vec<String>) {
    let mut sim = MetaSim::default();
    let mut in_flight: Vec<Option<InFlight>> = vec![None; processes_n];
    let mut time_ns = 0;
    for &(choice, a, b) in steps {
        time_ns += 10;
        let process_idx = usize::from(a) % processes_n;
        let topic = format!("t{}", usize::from(b) % topics_n);
        match in_flight[process_idx].take() {
            None => {
                if choice % 16 == 15 && !sim.zombies.is_empty() {
                    // An earlier info write takes effect now, long after its client gave up.
                    let op = sim.zombies.remove(usize::from(b) % sim.zombies.len());
                    sim.apply(&op);
                    continue;
                }
                let op = match choice % 10 {
                    0..=3 => MetaOp::CreateTopic { name: topic, partitions: u32::from(b % 5) + 1 },
                    4 | 5 => MetaOp::DeleteTopic { name: topic },
                    6 | 7 => MetaOp::ListTopics,
                    _ => MetaOp::DescribeTopic { name: topic },
                };
                in_flight[process_idx] = Some(InFlight { invoke_ns: time_ns, op, effect: None });
            }
            Some(mut op) => match (op.effect.is_some(), choice % 8) {
                (false, 0..=5) => {
                    op.effect = Some(sim.apply(&op.op));
                    in_flight[process_idx] = Some(op);
                }
                (false, 6) => sim.complete(process_idx as u64, op, time_ns, false),
                (false, _) => sim.complete(process_idx as u64, op, time_ns, true),
                (true, choice) => sim.complete(process_idx as u64, op, time_ns, choice == 7),
            },
        }
    }
    // Outstanding ops end indeterminate.
    for (process_idx, op) in in_flight.into_iter().enumerate() {
        if let Some(op) = op {
            time_ns += 10;
            sim.complete(process_idx as u64, op, time_ns, true);
        }
    }
    sim.zombies.clear();
    let writer = processes_n as u64;
    for op in [
        MetaOp::CreateTopic { name: "z".into(), partitions: 1 },
        MetaOp::CreateTopic { name: "y".into(), partitions: 1 },
        MetaOp::DeleteTopic { name: "y".into() },
        MetaOp::ListTopics,
    ] {
        time_ns += 10;
        let effect = Some(sim.apply(&op));
        let in_flight = InFlight { invoke_ns: time_ns, op, effect };
        time_ns += 10;
        sim.complete(writer, in_flight, time_ns, false);
    }
    let final_topics = sim.topics.keys().cloned().collect();
    (sim.events, final_topics)
}

fn metadata_scenario() -> impl Strategy<Value = (usize, usize, Vec<(u8, u8, u8)>)> {
    (1usize..=4, 1usize..=6, proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 0..150))
}

fn name_of(op: &MetaOp) -> Option<&str> {
    match op {
        MetaOp::CreateTopic { name, .. } | MetaOp::DeleteTopic { name } | MetaOp::DescribeTopic { name } => Some(name),
        MetaOp::ListTopics => None,
    }
}

fn is_create(event: &MetaEvent, topic: &str) -> bool {
    matches!(&event.op, MetaOp::CreateTopic { name, .. } if name == topic)
}

fn is_delete(event: &MetaEvent, topic: &str) -> bool {
    matches!(&event.op, MetaOp::DeleteTopic { name } if name == topic)
}

/// When an op may take effect up to: its completion, or forever for an `Info` one.
fn effective_until(event: &MetaEvent) -> u64 {
    if event.outcome == MetaOutcome::Info {
        u64::MAX
    } else {
        event.complete_ns
    }
}

/// Whether some create or delete of `topic` (`Ok` or `Info`) could take effect after `after` was invoked
/// and before `before_ns`.
fn write_could_come_between(
    events: &[MetaEvent],
    topic: &str,
    creates: bool,
    after: &MetaEvent,
    before_ns: u64,
) -> bool {
    events.iter().any(|event| {
        let kind_matches = if creates { is_create(event, topic) } else { is_delete(event, topic) };
        kind_matches
            && matches!(event.outcome, MetaOutcome::Ok | MetaOutcome::Info)
            && effective_until(event) > after.invoke_ns
            && event.invoke_ns < before_ns
    })
}

#[derive(Clone, Copy, Debug)]
enum MetaCorruption {
    StaleRead,
    LostCreate,
    DuplicateCreate,
    Phantom,
    DeletedTopicVisible,
}

fn meta_corruption() -> impl Strategy<Value = MetaCorruption> {
    prop_oneof![
        Just(MetaCorruption::StaleRead),
        Just(MetaCorruption::LostCreate),
        Just(MetaCorruption::DuplicateCreate),
        Just(MetaCorruption::Phantom),
        Just(MetaCorruption::DeletedTopicVisible),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn linearizable_metadata_histories_are_valid((topics_n, processes_n, steps) in metadata_scenario()) {
        let (events, final_topics) = simulate_metadata(topics_n, processes_n, &steps);
        let report = check_metadata(&events, &final_topics);
        prop_assert!(report.is_valid(), "{report}\n{events:#?}\nfinal {final_topics:?}");
        prop_assert!(report.is_conclusive(), "{report}");
    }

    #[test]
    fn planted_metadata_anomalies_are_detected(
        (topics_n, processes_n, steps) in metadata_scenario(),
        corruption in meta_corruption(),
        pick in any::<usize>(),
    ) {
        let (mut events, mut final_topics) = simulate_metadata(topics_n, processes_n, &steps);
        let end_ns = events.iter().map(|event| event.complete_ns).max().unwrap_or(0);
        let expected = match corruption {
            MetaCorruption::StaleRead => {
                // A listing that shows a topic whose ok create completed before the listing started, with
                // no delete that could come between: drop the topic from it.
                let mut candidates = Vec::new();
                for (read_idx, read) in events.iter().enumerate() {
                    let MetaOutcome::Listed(names) = &read.outcome else { continue };
                    for topic in names {
                        let create = events.iter().enumerate().find(|(_, create)| {
                            is_create(create, topic)
                                && create.outcome == MetaOutcome::Ok
                                && create.complete_ns < read.invoke_ns
                                && !write_could_come_between(&events, topic, false, create, read.complete_ns)
                        });
                        if let Some((create_idx, _)) = create {
                            candidates.push((read_idx, topic.clone(), create_idx));
                        }
                    }
                }
                let (read_idx, topic, _) = candidates[pick % candidates.len()].clone();
                if let MetaOutcome::Listed(names) = &mut events[read_idx].outcome {
                    names.retain(|name| *name != topic);
                }
                (MetadataViolationKind::StaleRead, topic, Some(OpRef::Event(read_idx)))
            }
            MetaCorruption::LostCreate => {
                let candidates: Vec<&String> = final_topics
                    .iter()
                    .filter(|topic| {
                        events.iter().any(|create| {
                            is_create(create, topic)
                                && create.outcome == MetaOutcome::Ok
                                && !write_could_come_between(&events, topic, false, create, u64::MAX)
                        })
                    })
                    .collect();
                let topic = candidates[pick % candidates.len()].clone();
                final_topics.retain(|name| *name != topic);
                (MetadataViolationKind::LostCreate, topic, None)
            }
            MetaCorruption::DuplicateCreate => {
                // A second ok create of a topic no delete could ever have removed.
                let candidates: Vec<&String> = final_topics
                    .iter()
                    .filter(|topic| {
                        events.iter().any(|create| {
                            is_create(create, topic)
                                && create.outcome == MetaOutcome::Ok
                                && !write_could_come_between(&events, topic, false, create, u64::MAX)
                        })
                    })
                    .collect();
                let topic = candidates[pick % candidates.len()].clone();
                events.push(MetaEvent {
                    process: 1_000,
                    invoke_ns: end_ns + 10,
                    complete_ns: end_ns + 20,
                    op: MetaOp::CreateTopic { name: topic.clone(), partitions: 1 },
                    outcome: MetaOutcome::Ok,
                });
                (MetadataViolationKind::DuplicateCreate, topic, None)
            }
            MetaCorruption::Phantom => {
                let reads: Vec<usize> = events
                    .iter()
                    .enumerate()
                    .filter(|(_, event)| matches!(event.outcome, MetaOutcome::Listed(_)))
                    .map(|(idx, _)| idx)
                    .collect();
                let read_idx = reads[pick % reads.len()];
                if let MetaOutcome::Listed(names) = &mut events[read_idx].outcome {
                    names.push("ghost".into());
                }
                (MetadataViolationKind::Phantom, "ghost".to_owned(), Some(OpRef::Event(read_idx)))
            }
            MetaCorruption::DeletedTopicVisible => {
                // A topic whose ok delete completed before some listing started, with no create that could
                // come between, appears in that listing.
                let mut candidates = Vec::new();
                for (read_idx, read) in events.iter().enumerate() {
                    let MetaOutcome::Listed(names) = &read.outcome else { continue };
                    for delete in events.iter().filter(|delete| delete.outcome == MetaOutcome::Ok) {
                        let Some(topic) = name_of(&delete.op).filter(|_| matches!(delete.op, MetaOp::DeleteTopic { .. })) else {
                            continue;
                        };
                        if delete.complete_ns < read.invoke_ns
                            && !names.iter().any(|name| name == topic)
                            && !write_could_come_between(&events, topic, true, delete, read.complete_ns)
                        {
                            candidates.push((read_idx, topic.to_owned()));
                        }
                    }
                }
                let (read_idx, topic) = candidates[pick % candidates.len()].clone();
                if let MetaOutcome::Listed(names) = &mut events[read_idx].outcome {
                    names.push(topic.clone());
                }
                (MetadataViolationKind::DeletedTopicVisible, topic, Some(OpRef::Event(read_idx)))
            }
        };
        let (kind, topic, read) = expected;
        let report = check_metadata(&events, &final_topics);
        prop_assert!(!report.is_valid(), "{corruption:?} on {topic} not detected\n{report}");
        let matching = report.violations.iter().any(|violation| {
            violation.kind() == kind
                && violation.topic() == Some(topic.as_str())
                && match (violation, read) {
                    (MetadataViolation::StaleRead { read: found, .. }, Some(OpRef::Event(idx))) => *found == idx,
                    (MetadataViolation::Phantom { read: found, .. }, Some(read))
                    | (MetadataViolation::DeletedTopicVisible { read: found, .. }, Some(read)) => *found == read,
                    _ => true,
                }
        });
        prop_assert!(matching, "{corruption:?} on {topic} at {read:?} not reported as {kind}\n{report}");
        // Only the planted topic is affected.
        prop_assert!(
            report.violations.iter().all(|violation| violation.topic() == Some(topic.as_str())),
            "{report}"
        );
    }

    #[test]
    fn metadata_checker_never_panics(
        events in proptest::collection::vec(
            (0u64..4, 0u64..100, 0u64..100, 0u8..4, 0u8..3, 0u8..5, proptest::collection::vec(0u8..3, 0..4)),
            0..40),
        final_topics in proptest::collection::vec(0u8..3, 0..4),
    ) {
        let events: Vec<MetaEvent> = events
            .into_iter()
            .map(|(process, invoke_ns, length_ns, op, topic, outcome, listed)| {
                let name = format!("t{topic}");
                let op = match op {
                    0 => MetaOp::CreateTopic { name, partitions: 1 },
                    1 => MetaOp::DeleteTopic { name },
                    2 => MetaOp::ListTopics,
                    _ => MetaOp::DescribeTopic { name },
                };
                let outcome = match outcome {
                    0 => MetaOutcome::Ok,
                    1 => MetaOutcome::Fail,
                    2 => MetaOutcome::Info,
                    3 => MetaOutcome::Listed(listed.iter().map(|topic| format!("t{topic}")).collect()),
                    _ => MetaOutcome::Described(listed.first().map(|count| u32::from(*count))),
                };
                // Some events complete before they start, on purpose.
                let complete_ns = if length_ns < 5 { invoke_ns.saturating_sub(1) } else { invoke_ns + length_ns };
                MetaEvent { process, invoke_ns, complete_ns, op, outcome }
            })
            .collect();
        let final_topics: Vec<String> = final_topics.iter().map(|topic| format!("t{topic}")).collect();
        let report = check_metadata(&events, &final_topics);
        let _ = report.to_string();
    }
}
