//! An online checker of Raft's safety invariants, fed with observations of every node taken during a run.
//!
//! # What goes in, what comes out
//!
//! In: [`RaftObservation`]s (one node's term, leadership, commit index, the log entries it holds and the
//! entries it applied since its previous observation), in the order they were taken, plus
//! [`RaftChecker::node_restarted`] when a node lost its volatile state and
//! [`RaftChecker::snapshot_installed`] when a node's applied index jumped over entries by installing a
//! snapshot. Out: [`RaftViolation`]s, returned by the observation that revealed them and kept for
//! [`RaftChecker::violations`], and a [`fmt::Display`] summary with at most [`EXAMPLES_PER_KIND_MAX`]
//! examples per kind.
//!
//! Entries are identified by `(index, term)` and carry a fingerprint of their data. The fingerprints in
//! `log` and in `applied` must come from the same function, since applied data is compared with log data.
//!
//! # What it checks, from what it remembers
//!
//! The checker remembers, across observations: the leaders seen in each term; the data and predecessor
//! term of every `(index, term)` ever seen in a log; the committed entry at every index (an entry at or
//! below the commit index of the node whose log holds it); the canonical applied data per index; and per
//! node, the highest term and commit index of its current incarnation and its next expected applied index.
//!
//! - `TwoLeadersInTerm` (election safety): two nodes reported `is_leader` in the same term.
//! - `LogMismatch` (log matching): one `(index, term)` seen with two fingerprints, or with two different
//!   predecessor terms. Since every `(index, term)` is written by the one leader of that term, this is
//!   the log matching property checked link by link, so it holds across compaction points.
//! - `MalformedLog`: one log whose indices are not consecutive or whose terms decrease.
//! - `CommittedEntriesDiffer` (state machine safety): two nodes hold different entries at an index at or
//!   below their own commit index. A follower only advances its commit index over entries it has matched
//!   with its leader, so an entry at or below a node's commit index is the committed one.
//! - `CommittedEntryLost` (leader completeness): the log of a leader of term `T` lacks a committed entry,
//!   or holds another at its index, although `T` is above the term of some node that reported the entry
//!   committed (that node's term bounds the term the entry was committed in). Logs compacted past the
//!   index are not judged; a leader log that ends below the index is.
//! - `CommitIndexWentBack`, `TermWentBack`: within one incarnation of a node.
//! - `AppliedDivergence`: two nodes applied different data at one index, applied data differs from the
//!   committed log entry, or a node applied indices out of order or with a gap.
//! - `AppliedUncommitted`: a node applied an index above every commit index reported so far.
//!
//! # Not false positives
//!
//! A follower's uncommitted suffix may be overwritten by a later leader (only committed entries are
//! pinned, and only `(index, term)` pairs are compared). A log may start after a compaction point. After
//! [`RaftChecker::node_restarted`], the node's term and commit index may be reported lower than before
//! and its applied sequence restarts at the given index. A node's first applied entry, if neither
//! `node_restarted` nor `snapshot_installed` was called for it, is taken as its starting point (so call
//! `node_restarted(node, applied_index)` at boot for a strict check from the first entry). Stale leaders
//! of older terms may keep reporting `is_leader`; only two leaders in one term are a violation.
//!
//! # Invariants
//!
//! Pure and deterministic: ordered maps only, no clocks, no randomness. Each distinct violation is
//! reported once, however many observations show it again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// How many examples of each violation kind the `Display` summary lists.
pub const EXAMPLES_PER_KIND_MAX: usize = 10;

/// One node's state at one moment of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftObservation {
    pub node: u64,
    pub term: u64,
    pub is_leader: bool,
    pub commit_index: u64,
    /// `(index, term, fingerprint of the entry data)` of the entries the node currently holds, in index
    /// order. May start after a compaction point.
    pub log: Vec<(u64, u64, u64)>,
    /// `(index, fingerprint)` of the entries applied since the node's previous observation, in order.
    pub applied: Vec<(u64, u64)>,
}

/// The kinds of violation, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RaftViolationKind {
    TwoLeadersInTerm,
    LogMismatch,
    MalformedLog,
    CommittedEntriesDiffer,
    CommittedEntryLost,
    CommitIndexWentBack,
    TermWentBack,
    AppliedDivergence,
    AppliedUncommitted,
}

impl RaftViolationKind {
    pub const ALL: [RaftViolationKind; 9] = [
        RaftViolationKind::TwoLeadersInTerm,
        RaftViolationKind::LogMismatch,
        RaftViolationKind::MalformedLog,
        RaftViolationKind::CommittedEntriesDiffer,
        RaftViolationKind::CommittedEntryLost,
        RaftViolationKind::CommitIndexWentBack,
        RaftViolationKind::TermWentBack,
        RaftViolationKind::AppliedDivergence,
        RaftViolationKind::AppliedUncommitted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RaftViolationKind::TwoLeadersInTerm => "two-leaders-in-term",
            RaftViolationKind::LogMismatch => "log-mismatch",
            RaftViolationKind::MalformedLog => "malformed-log",
            RaftViolationKind::CommittedEntriesDiffer => "committed-entries-differ",
            RaftViolationKind::CommittedEntryLost => "committed-entry-lost",
            RaftViolationKind::CommitIndexWentBack => "commit-index-went-back",
            RaftViolationKind::TermWentBack => "term-went-back",
            RaftViolationKind::AppliedDivergence => "applied-divergence",
            RaftViolationKind::AppliedUncommitted => "applied-uncommitted",
        }
    }
}

impl fmt::Display for RaftViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One log entry as one node holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryWitness {
    pub node: u64,
    pub term: u64,
    pub fingerprint: u64,
}

/// How one `(index, term)` was seen two ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogMismatchDetail {
    /// Two fingerprints for the same `(index, term)`.
    DifferentData { first_fingerprint: u64, fingerprint: u64 },
    /// The entry at `index - 1` has different terms in two logs that both hold `(index, term)`.
    DifferentPredecessor { first_previous_term: u64, previous_term: u64 },
}

/// What is wrong with one log on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MalformedLogProblem {
    /// The entry before this one has index `previous_index`, not `index - 1`.
    NotContiguous { previous_index: u64 },
    /// This entry's term is below the previous entry's term.
    TermDecreases { previous_term: u64, term: u64 },
}

/// What is wrong with one applied entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AppliedProblem {
    /// `other_node` applied `other_fingerprint` at this index.
    DifferentData { fingerprint: u64, other_node: u64, other_fingerprint: u64 },
    /// The committed log entry at this index has other data.
    DiffersFromCommitted { fingerprint: u64, committed: EntryWitness },
    /// The node's next applied index should have been `expected_index`.
    OutOfOrder { expected_index: u64 },
}

/// A broken Raft invariant. Node ids and terms are those of the observations that showed it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RaftViolation {
    /// More than one node reported `is_leader` in `term`; `nodes` is every such node so far, sorted.
    TwoLeadersInTerm { term: u64, nodes: Vec<u64> },
    /// Log matching broke at `(index, term)`: `first_node` showed it one way, `node` another.
    LogMismatch { index: u64, term: u64, first_node: u64, node: u64, detail: LogMismatchDetail },
    /// One node's log is not a log.
    MalformedLog { node: u64, index: u64, problem: MalformedLogProblem },
    /// Two nodes hold different entries at `index`, each at or below its own commit index.
    CommittedEntriesDiffer { index: u64, first: EntryWitness, second: EntryWitness },
    /// Leader `leader` of `leader_term` lacks the entry `committed` at `index` (`found` is what it holds
    /// there, `None` if its log ends before `index`). `committed_bound_term` is the lowest term of a node
    /// that reported the entry committed: every leader of a higher term must hold it.
    CommittedEntryLost {
        index: u64,
        committed: EntryWitness,
        committed_bound_term: u64,
        leader: u64,
        leader_term: u64,
        found: Option<(u64, u64)>,
    },
    /// `node`'s commit index went from `previous` down to `current` within one incarnation.
    CommitIndexWentBack { node: u64, previous: u64, current: u64 },
    /// `node`'s term went from `previous` down to `current` within one incarnation.
    TermWentBack { node: u64, previous: u64, current: u64 },
    /// `node` applied something wrong at `index`.
    AppliedDivergence { node: u64, index: u64, problem: AppliedProblem },
    /// `node` applied `index`, above the highest commit index any node had reported.
    AppliedUncommitted { node: u64, index: u64, commit_index_max: u64 },
}

impl RaftViolation {
    pub fn kind(&self) -> RaftViolationKind {
        match self {
            RaftViolation::TwoLeadersInTerm { .. } => RaftViolationKind::TwoLeadersInTerm,
            RaftViolation::LogMismatch { .. } => RaftViolationKind::LogMismatch,
            RaftViolation::MalformedLog { .. } => RaftViolationKind::MalformedLog,
            RaftViolation::CommittedEntriesDiffer { .. } => RaftViolationKind::CommittedEntriesDiffer,
            RaftViolation::CommittedEntryLost { .. } => RaftViolationKind::CommittedEntryLost,
            RaftViolation::CommitIndexWentBack { .. } => RaftViolationKind::CommitIndexWentBack,
            RaftViolation::TermWentBack { .. } => RaftViolationKind::TermWentBack,
            RaftViolation::AppliedDivergence { .. } => RaftViolationKind::AppliedDivergence,
            RaftViolation::AppliedUncommitted { .. } => RaftViolationKind::AppliedUncommitted,
        }
    }
}

impl fmt::Display for EntryWitness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} (term {}, data {:#018x})", self.node, self.term, self.fingerprint)
    }
}

impl fmt::Display for RaftViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RaftViolation::TwoLeadersInTerm { term, nodes } => {
                let nodes: Vec<String> = nodes.iter().map(u64::to_string).collect();
                write!(f, "term {term}: nodes {} all reported being leader", nodes.join(", "))
            }
            RaftViolation::LogMismatch { index, term, first_node, node, detail } => match detail {
                LogMismatchDetail::DifferentData { first_fingerprint, fingerprint } => write!(
                    f,
                    "entry {index}@term {term}: node {first_node} holds data {first_fingerprint:#018x}, \
                     node {node} holds {fingerprint:#018x}"
                ),
                LogMismatchDetail::DifferentPredecessor { first_previous_term, previous_term } => write!(
                    f,
                    "entry {index}@term {term}: preceded by term {first_previous_term} on node {first_node}, \
                     by term {previous_term} on node {node}"
                ),
            },
            RaftViolation::MalformedLog { node, index, problem } => match problem {
                MalformedLogProblem::NotContiguous { previous_index } => {
                    write!(f, "node {node}: log entry {index} follows entry {previous_index}")
                }
                MalformedLogProblem::TermDecreases { previous_term, term } => {
                    write!(f, "node {node}: log entry {index} has term {term} after term {previous_term}")
                }
            },
            RaftViolation::CommittedEntriesDiffer { index, first, second } => {
                write!(f, "index {index}: committed as {first} and as {second}")
            }
            RaftViolation::CommittedEntryLost {
                index,
                committed,
                committed_bound_term,
                leader,
                leader_term,
                found,
            } => {
                let found = match found {
                    Some((term, fingerprint)) => format!("holds term {term}, data {fingerprint:#018x} there"),
                    None => "log ends before it".to_owned(),
                };
                write!(
                    f,
                    "index {index}: committed by term {committed_bound_term} as {committed}, but leader {leader} \
                     of term {leader_term} {found}"
                )
            }
            RaftViolation::CommitIndexWentBack { node, previous, current } => {
                write!(f, "node {node}: commit index went from {previous} back to {current}")
            }
            RaftViolation::TermWentBack { node, previous, current } => {
                write!(f, "node {node}: term went from {previous} back to {current}")
            }
            RaftViolation::AppliedDivergence { node, index, problem } => match problem {
                AppliedProblem::DifferentData { fingerprint, other_node, other_fingerprint } => write!(
                    f,
                    "index {index}: node {node} applied data {fingerprint:#018x}, node {other_node} applied \
                     {other_fingerprint:#018x}"
                ),
                AppliedProblem::DiffersFromCommitted { fingerprint, committed } => write!(
                    f,
                    "index {index}: node {node} applied data {fingerprint:#018x}, but the committed entry is \
                     {committed}"
                ),
                AppliedProblem::OutOfOrder { expected_index } => {
                    write!(f, "node {node} applied index {index}, expected {expected_index}")
                }
            },
            RaftViolation::AppliedUncommitted { node, index, commit_index_max } => {
                write!(
                    f,
                    "node {node} applied index {index}, but no node reported a commit index above {commit_index_max}"
                )
            }
        }
    }
}

/// What the checker knows about one node.
#[derive(Clone, Debug, Default)]
struct NodeState {
    /// Incarnations seen (restarts + 1); only for the summary.
    incarnation: u64,
    /// The highest term reported by this incarnation.
    term_max: Option<u64>,
    /// The highest commit index reported by this incarnation.
    commit_index_max: Option<u64>,
    /// The highest term this node ever reported, across incarnations.
    term_max_ever: u64,
    /// The index the node must apply next, when known.
    applied_index_next: Option<u64>,
}

/// What is known about one `(index, term)`.
#[derive(Clone, Copy, Debug)]
struct EntryKnowledge {
    fingerprint: u64,
    node: u64,
    /// The term of the entry before it, and the node that showed it, once some log held both.
    previous_term: Option<(u64, u64)>,
}

/// A committed entry, and the lowest term of a node that reported it committed.
#[derive(Clone, Copy, Debug)]
struct CommittedEntry {
    witness: EntryWitness,
    bound_term: u64,
}

/// The online Raft checker. See the module doc.
#[derive(Clone, Debug, Default)]
pub struct RaftChecker {
    nodes: BTreeMap<u64, NodeState>,
    leaders_by_term: BTreeMap<u64, BTreeSet<u64>>,
    entries: BTreeMap<(u64, u64), EntryKnowledge>,
    committed: BTreeMap<u64, CommittedEntry>,
    /// Index -> (fingerprint, first node that applied it).
    applied: BTreeMap<u64, (u64, u64)>,
    commit_index_max: u64,
    observations_n: u64,
    violations: Vec<RaftViolation>,
    reported: BTreeSet<RaftViolation>,
}

impl RaftChecker {
    pub fn new() -> RaftChecker {
        RaftChecker::default()
    }

    /// Feeds one node's current state; returns the violations this observation revealed (also kept).
    pub fn observe(&mut self, obs: &RaftObservation) -> Vec<RaftViolation> {
        let mut found = Vec::new();
        self.observations_n += 1;
        let node_id = obs.node;

        // Term and commit index, within this incarnation.
        let node = self.nodes.entry(node_id).or_insert_with(|| NodeState { incarnation: 1, ..NodeState::default() });
        let mut new = Vec::new();
        if let Some(previous) = node.term_max {
            if obs.term < previous {
                new.push(RaftViolation::TermWentBack { node: node_id, previous, current: obs.term });
            }
        }
        node.term_max = Some(node.term_max.map_or(obs.term, |term| term.max(obs.term)));
        node.term_max_ever = node.term_max_ever.max(obs.term);
        if let Some(previous) = node.commit_index_max {
            if obs.commit_index < previous {
                new.push(RaftViolation::CommitIndexWentBack { node: node_id, previous, current: obs.commit_index });
            }
        }
        node.commit_index_max = Some(node.commit_index_max.map_or(obs.commit_index, |c| c.max(obs.commit_index)));
        // The node's term when it learned its commit index was at most the highest term it ever reported.
        let committed_bound_term = node.term_max_ever;
        self.commit_index_max = self.commit_index_max.max(obs.commit_index);
        for violation in new {
            self.record(violation, &mut found);
        }

        if obs.is_leader {
            let leaders = self.leaders_by_term.entry(obs.term).or_default();
            if leaders.insert(node_id) && leaders.len() > 1 {
                let nodes = leaders.iter().copied().collect();
                self.record(RaftViolation::TwoLeadersInTerm { term: obs.term, nodes }, &mut found);
            }
        }

        self.observe_log(obs, committed_bound_term, &mut found);
        if obs.is_leader {
            self.check_leader_completeness(obs, &mut found);
        }
        self.observe_applied(obs, &mut found);
        found
    }

    /// A node restarted: its volatile state is gone, its term and commit index may be reported lower than
    /// before, and its applied sequence restarts after `applied_from_index` (its snapshot or persisted
    /// applied index: the next entry it applies is `applied_from_index + 1`).
    pub fn node_restarted(&mut self, node: u64, applied_from_index: u64) {
        let state = self.nodes.entry(node).or_default();
        state.incarnation += 1;
        state.term_max = None;
        state.commit_index_max = None;
        state.applied_index_next = Some(applied_from_index.saturating_add(1));
    }

    /// A node installed a snapshot up to `snapshot_index`: the next entry it applies is
    /// `snapshot_index + 1`, and the entries it skipped are not a gap.
    pub fn snapshot_installed(&mut self, node: u64, snapshot_index: u64) {
        let state = self.nodes.entry(node).or_insert_with(|| NodeState { incarnation: 1, ..NodeState::default() });
        state.applied_index_next = Some(snapshot_index.saturating_add(1));
    }

    pub fn violations(&self) -> &[RaftViolation] {
        &self.violations
    }

    pub fn is_valid(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many violations of `kind` were found.
    pub fn count(&self, kind: RaftViolationKind) -> usize {
        self.violations.iter().filter(|violation| violation.kind() == kind).count()
    }

    /// The highest commit index any node has reported.
    pub fn commit_index_max(&self) -> u64 {
        self.commit_index_max
    }

    /// How many observations were fed.
    pub fn observations_count(&self) -> u64 {
        self.observations_n
    }

    /// How many indices have a known committed entry.
    pub fn committed_entries_count(&self) -> usize {
        self.committed.len()
    }

    fn record(&mut self, violation: RaftViolation, found: &mut Vec<RaftViolation>) {
        if self.reported.insert(violation.clone()) {
            self.violations.push(violation.clone());
            found.push(violation);
        }
    }

    /// Log shape, log matching, and the committed entries this log reveals.
    fn observe_log(&mut self, obs: &RaftObservation, committed_bound_term: u64, found: &mut Vec<RaftViolation>) {
        let mut previous: Option<(u64, u64)> = None;
        for &(index, term, fingerprint) in &obs.log {
            let mut predecessor_term = None;
            if let Some((previous_index, previous_term)) = previous {
                if index != previous_index.wrapping_add(1) {
                    let problem = MalformedLogProblem::NotContiguous { previous_index };
                    self.record(RaftViolation::MalformedLog { node: obs.node, index, problem }, found);
                } else {
                    predecessor_term = Some(previous_term);
                }
                if term < previous_term {
                    let problem = MalformedLogProblem::TermDecreases { previous_term, term };
                    self.record(RaftViolation::MalformedLog { node: obs.node, index, problem }, found);
                }
            }
            previous = Some((index, term));

            let knowledge = *self.entries.entry((index, term)).or_insert(EntryKnowledge {
                fingerprint,
                node: obs.node,
                previous_term: None,
            });
            if knowledge.fingerprint != fingerprint {
                let detail = LogMismatchDetail::DifferentData { first_fingerprint: knowledge.fingerprint, fingerprint };
                let violation =
                    RaftViolation::LogMismatch { index, term, first_node: knowledge.node, node: obs.node, detail };
                self.record(violation, found);
            }
            if let Some(previous_term) = predecessor_term {
                match knowledge.previous_term {
                    None => {
                        if let Some(known) = self.entries.get_mut(&(index, term)) {
                            known.previous_term = Some((previous_term, obs.node));
                        }
                    }
                    Some((first_previous_term, first_node)) if first_previous_term != previous_term => {
                        let detail = LogMismatchDetail::DifferentPredecessor { first_previous_term, previous_term };
                        let violation = RaftViolation::LogMismatch { index, term, first_node, node: obs.node, detail };
                        self.record(violation, found);
                    }
                    Some(_) => {}
                }
            }

            if index == 0 || index > obs.commit_index {
                continue;
            }
            let witness = EntryWitness { node: obs.node, term, fingerprint };
            match self.committed.get_mut(&index) {
                Some(committed) => {
                    if (committed.witness.term, committed.witness.fingerprint) != (term, fingerprint) {
                        let first = committed.witness;
                        self.record(RaftViolation::CommittedEntriesDiffer { index, first, second: witness }, found);
                    } else {
                        committed.bound_term = committed.bound_term.min(committed_bound_term);
                    }
                }
                None => {
                    self.committed.insert(index, CommittedEntry { witness, bound_term: committed_bound_term });
                    if let Some(&(applied_fingerprint, applied_node)) = self.applied.get(&index) {
                        if applied_fingerprint != fingerprint {
                            let problem = AppliedProblem::DiffersFromCommitted {
                                fingerprint: applied_fingerprint,
                                committed: witness,
                            };
                            self.record(RaftViolation::AppliedDivergence { node: applied_node, index, problem }, found);
                        }
                    }
                }
            }
        }
    }

    /// Every committed entry whose bound term is below this leader's term must be in its log, unless the
    /// log was compacted past it.
    fn check_leader_completeness(&mut self, obs: &RaftObservation, found: &mut Vec<RaftViolation>) {
        let Some(&(first_index, _, _)) = obs.log.first() else {
            // An empty log says nothing: everything may be compacted into a snapshot.
            return;
        };
        let mut lost = Vec::new();
        for (&index, committed) in self.committed.range(first_index..) {
            if committed.bound_term >= obs.term {
                continue;
            }
            let held = obs
                .log
                .get((index - first_index) as usize)
                .filter(|(held_index, _, _)| *held_index == index)
                .or_else(|| obs.log.iter().find(|(held_index, _, _)| *held_index == index))
                .map(|&(_, term, fingerprint)| (term, fingerprint));
            if held != Some((committed.witness.term, committed.witness.fingerprint)) {
                lost.push(RaftViolation::CommittedEntryLost {
                    index,
                    committed: committed.witness,
                    committed_bound_term: committed.bound_term,
                    leader: obs.node,
                    leader_term: obs.term,
                    found: held,
                });
            }
        }
        for violation in lost {
            self.record(violation, found);
        }
    }

    fn observe_applied(&mut self, obs: &RaftObservation, found: &mut Vec<RaftViolation>) {
        for &(index, fingerprint) in &obs.applied {
            let node = self.nodes.entry(obs.node).or_default();
            let expected = node.applied_index_next;
            node.applied_index_next = Some(index.saturating_add(1));
            if let Some(expected_index) = expected {
                if index != expected_index {
                    let problem = AppliedProblem::OutOfOrder { expected_index };
                    self.record(RaftViolation::AppliedDivergence { node: obs.node, index, problem }, found);
                }
            }
            if index > self.commit_index_max {
                let violation = RaftViolation::AppliedUncommitted {
                    node: obs.node,
                    index,
                    commit_index_max: self.commit_index_max,
                };
                self.record(violation, found);
            }
            match self.applied.get(&index) {
                Some(&(other_fingerprint, other_node)) if other_fingerprint != fingerprint => {
                    let problem = AppliedProblem::DifferentData { fingerprint, other_node, other_fingerprint };
                    self.record(RaftViolation::AppliedDivergence { node: obs.node, index, problem }, found);
                }
                Some(_) => {}
                None => {
                    self.applied.insert(index, (fingerprint, obs.node));
                }
            }
            if let Some(committed) = self.committed.get(&index) {
                if committed.witness.fingerprint != fingerprint {
                    let problem = AppliedProblem::DiffersFromCommitted { fingerprint, committed: committed.witness };
                    self.record(RaftViolation::AppliedDivergence { node: obs.node, index, problem }, found);
                }
            }
        }
    }
}

impl fmt::Display for RaftChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts: Vec<String> = RaftViolationKind::ALL
            .iter()
            .filter_map(|kind| {
                let count = self.count(*kind);
                (count > 0).then(|| format!("{count} {kind}"))
            })
            .collect();
        if counts.is_empty() {
            writeln!(f, "raft check: valid, no violations")?;
        } else {
            writeln!(f, "raft check: INVALID: {}", counts.join(", "))?;
        }
        let restarts: u64 = self.nodes.values().map(|node| node.incarnation.saturating_sub(1)).sum();
        writeln!(
            f,
            "  {} observations of {} nodes ({restarts} restarts); {} terms with a leader; commit index max {}; \
             {} committed entries known; {} applied indices known",
            self.observations_n,
            self.nodes.len(),
            self.leaders_by_term.len(),
            self.commit_index_max,
            self.committed.len(),
            self.applied.len()
        )?;
        for kind in RaftViolationKind::ALL {
            let of_kind = self.violations.iter().filter(|v| v.kind() == kind);
            crate::report::write_kind(f, kind, self.count(kind), of_kind, EXAMPLES_PER_KIND_MAX)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(node: u64, term: u64, is_leader: bool, commit_index: u64, log: &[(u64, u64, u64)]) -> RaftObservation {
        RaftObservation { node, term, is_leader, commit_index, log: log.to_vec(), applied: Vec::new() }
    }

    fn applied(mut observation: RaftObservation, applied: &[(u64, u64)]) -> RaftObservation {
        observation.applied = applied.to_vec();
        observation
    }

    fn feed(checker: &mut RaftChecker, observations: &[RaftObservation]) -> Vec<RaftViolation> {
        observations.iter().flat_map(|observation| checker.observe(observation)).collect()
    }

    fn kinds(violations: &[RaftViolation]) -> Vec<RaftViolationKind> {
        violations.iter().map(RaftViolation::kind).collect()
    }

    #[test]
    fn overwritten_uncommitted_follower_entries_and_stale_leaders_are_legal() {
        let mut checker = RaftChecker::new();
        let found = feed(
            &mut checker,
            &[
                // Term 1: leader 1 commits entry 1 and appends entry 2 (to node 2 only).
                applied(obs(1, 1, true, 1, &[(1, 1, 0xa), (2, 1, 0xb)]), &[(1, 0xa)]),
                obs(2, 1, false, 1, &[(1, 1, 0xa), (2, 1, 0xb)]),
                obs(3, 1, false, 1, &[(1, 1, 0xa)]),
                // Term 2: node 3 wins without entry 2, overwrites it on node 2 and commits.
                obs(3, 2, true, 1, &[(1, 1, 0xa), (2, 2, 0xc)]),
                applied(obs(3, 2, true, 2, &[(1, 1, 0xa), (2, 2, 0xc)]), &[(1, 0xa), (2, 0xc)]),
                applied(obs(2, 2, false, 2, &[(1, 1, 0xa), (2, 2, 0xc)]), &[(1, 0xa), (2, 0xc)]),
                // Node 1 is partitioned and still believes it leads term 1.
                obs(1, 1, true, 1, &[(1, 1, 0xa), (2, 1, 0xb), (3, 1, 0xd)]),
                // Then it hears of term 2 and is overwritten.
                applied(obs(1, 2, false, 2, &[(1, 1, 0xa), (2, 2, 0xc)]), &[(2, 0xc)]),
            ],
        );
        assert!(found.is_empty(), "{found:?}");
        assert!(checker.is_valid(), "{checker}");
        assert_eq!(checker.commit_index_max(), 2);
        assert_eq!(checker.committed_entries_count(), 2);
        assert!(checker.to_string().starts_with("raft check: valid"), "{checker}");
    }

    #[test]
    fn compaction_restarts_and_snapshots_are_legal() {
        let mut checker = RaftChecker::new();
        checker.node_restarted(1, 0);
        checker.node_restarted(2, 0);
        let log: Vec<(u64, u64, u64)> = (1..=6).map(|index| (index, 1, 100 + index)).collect();
        let applied_all: Vec<(u64, u64)> = (1..=6).map(|index| (index, 100 + index)).collect();
        let mut found = feed(
            &mut checker,
            &[
                applied(obs(1, 1, true, 6, &log), &applied_all),
                applied(obs(2, 1, false, 6, &log), &applied_all),
                // Node 1 compacts up to 4.
                obs(1, 1, true, 6, &log[4..]),
            ],
        );
        // Node 2 restarts from its snapshot at 4, reporting a lower term and commit index at first.
        checker.node_restarted(2, 4);
        found.extend(feed(
            &mut checker,
            &[
                obs(2, 0, false, 4, &log[4..]),
                applied(obs(2, 1, false, 6, &log[4..]), &[(5, 105), (6, 106)]),
                // Node 2 then leads term 2 with a compacted log: committed entries below it are not judged.
                obs(2, 2, true, 7, &[(6, 1, 106), (7, 2, 107)]),
            ],
        ));
        // Node 3 was far behind and gets a snapshot at 6.
        checker.node_restarted(3, 0);
        checker.snapshot_installed(3, 6);
        found.extend(feed(&mut checker, &[applied(obs(3, 2, false, 7, &[(7, 2, 107)]), &[(7, 107)])]));
        // A node first seen mid-run starts wherever its first applied entry is.
        found.extend(feed(&mut checker, &[applied(obs(4, 2, false, 7, &[(7, 2, 107)]), &[(7, 107)])]));
        assert!(found.is_empty(), "{found:?}");
        assert!(checker.is_valid(), "{checker}");
        // The calls at boot are not restarts; node 2's second call is.
        assert!(checker.to_string().contains("of 4 nodes (1 restarts)"), "{checker}");
    }

    #[test]
    fn two_leaders_in_one_term() {
        let mut checker = RaftChecker::new();
        let found = feed(&mut checker, &[obs(1, 3, true, 0, &[]), obs(2, 3, true, 0, &[]), obs(1, 4, true, 0, &[])]);
        assert_eq!(found, vec![RaftViolation::TwoLeadersInTerm { term: 3, nodes: vec![1, 2] }]);
        assert!(!checker.is_valid());
        assert!(checker.to_string().contains("term 3: nodes 1, 2 all reported being leader"), "{checker}");
    }

    #[test]
    fn log_mismatch_on_data_and_on_predecessor() {
        let mut checker = RaftChecker::new();
        let found = feed(&mut checker, &[obs(1, 2, false, 0, &[(3, 2, 0xa)]), obs(2, 2, false, 0, &[(3, 2, 0xb)])]);
        assert_eq!(
            found,
            vec![RaftViolation::LogMismatch {
                index: 3,
                term: 2,
                first_node: 1,
                node: 2,
                detail: LogMismatchDetail::DifferentData { first_fingerprint: 0xa, fingerprint: 0xb },
            }]
        );

        let mut checker = RaftChecker::new();
        let found = feed(
            &mut checker,
            &[obs(1, 2, false, 0, &[(2, 1, 0xa), (3, 2, 0xc)]), obs(2, 2, false, 0, &[(2, 2, 0xb), (3, 2, 0xc)])],
        );
        assert_eq!(
            found,
            vec![RaftViolation::LogMismatch {
                index: 3,
                term: 2,
                first_node: 1,
                node: 2,
                detail: LogMismatchDetail::DifferentPredecessor { first_previous_term: 1, previous_term: 2 },
            }]
        );
        // The same corrupt log observed again is not reported again.
        assert!(checker.observe(&obs(2, 2, false, 0, &[(2, 2, 0xb), (3, 2, 0xc)])).is_empty());
        assert_eq!(checker.violations().len(), 1);
    }

    #[test]
    fn malformed_logs() {
        let mut checker = RaftChecker::new();
        let found = feed(
            &mut checker,
            &[obs(1, 2, false, 0, &[(1, 1, 0xa), (3, 1, 0xb)]), obs(2, 2, false, 0, &[(1, 2, 0xc), (2, 1, 0xd)])],
        );
        assert_eq!(kinds(&found), vec![RaftViolationKind::MalformedLog, RaftViolationKind::MalformedLog], "{found:?}");
        assert!(found.contains(&RaftViolation::MalformedLog {
            node: 1,
            index: 3,
            problem: MalformedLogProblem::NotContiguous { previous_index: 1 },
        }));
    }

    #[test]
    fn committed_entry_lost_by_a_later_leader() {
        let mut checker = RaftChecker::new();
        let committed = obs(1, 1, true, 2, &[(1, 1, 0xa), (2, 1, 0xb)]);
        // A leader of the same term is not judged (the entry may have been committed in that very term
        // by a stale leader); one of a later term is.
        let found = feed(&mut checker, &[committed.clone(), obs(2, 2, true, 1, &[(1, 1, 0xa)])]);
        assert_eq!(
            found,
            vec![RaftViolation::CommittedEntryLost {
                index: 2,
                committed: EntryWitness { node: 1, term: 1, fingerprint: 0xb },
                committed_bound_term: 1,
                leader: 2,
                leader_term: 2,
                found: None,
            }]
        );
        let found = feed(&mut checker, &[obs(3, 3, true, 1, &[(1, 1, 0xa), (2, 3, 0xe)])]);
        assert!(
            matches!(found.as_slice(), [RaftViolation::CommittedEntryLost { index: 2, found: Some((3, 0xe)), .. }]),
            "{found:?}"
        );
        // A leader log compacted past the entry is not judged.
        assert!(feed(&mut checker, &[obs(3, 4, true, 3, &[(3, 4, 0xf)])]).is_empty());
        assert!(checker.to_string().contains("committed-entry-lost (2)"), "{checker}");
    }

    #[test]
    fn committed_entries_differ() {
        let mut checker = RaftChecker::new();
        let found = feed(
            &mut checker,
            &[obs(1, 1, false, 2, &[(1, 1, 0xa), (2, 1, 0xb)]), obs(2, 2, false, 2, &[(1, 1, 0xa), (2, 2, 0xc)])],
        );
        assert_eq!(
            found,
            vec![RaftViolation::CommittedEntriesDiffer {
                index: 2,
                first: EntryWitness { node: 1, term: 1, fingerprint: 0xb },
                second: EntryWitness { node: 2, term: 2, fingerprint: 0xc },
            }]
        );
    }

    #[test]
    fn commit_index_and_term_go_back_only_within_an_incarnation() {
        let mut checker = RaftChecker::new();
        let found = feed(&mut checker, &[obs(1, 3, false, 5, &[]), obs(1, 2, false, 4, &[])]);
        assert_eq!(
            found,
            vec![
                RaftViolation::TermWentBack { node: 1, previous: 3, current: 2 },
                RaftViolation::CommitIndexWentBack { node: 1, previous: 5, current: 4 },
            ]
        );
        checker.node_restarted(1, 0);
        assert!(checker.observe(&obs(1, 1, false, 1, &[])).is_empty());
        assert_eq!(checker.violations().len(), 2);
    }

    #[test]
    fn applied_divergence_gaps_and_uncommitted() {
        let mut checker = RaftChecker::new();
        let found = feed(
            &mut checker,
            &[applied(obs(1, 1, false, 2, &[]), &[(1, 0xa), (2, 0xb)]), applied(obs(2, 1, false, 2, &[]), &[(1, 0xc)])],
        );
        assert_eq!(
            found,
            vec![RaftViolation::AppliedDivergence {
                node: 2,
                index: 1,
                problem: AppliedProblem::DifferentData { fingerprint: 0xc, other_node: 1, other_fingerprint: 0xa },
            }]
        );

        // A gap, and an index no node has committed.
        let found = feed(&mut checker, &[applied(obs(2, 1, false, 2, &[]), &[(3, 0xd)])]);
        assert_eq!(
            found,
            vec![
                RaftViolation::AppliedDivergence {
                    node: 2,
                    index: 3,
                    problem: AppliedProblem::OutOfOrder { expected_index: 2 },
                },
                RaftViolation::AppliedUncommitted { node: 2, index: 3, commit_index_max: 2 },
            ]
        );

        // Applied data that differs from the committed log entry, learned in either order.
        let found = feed(&mut checker, &[obs(3, 1, false, 2, &[(1, 1, 0xa), (2, 1, 0xe)])]);
        assert!(
            matches!(
                found.as_slice(),
                [RaftViolation::AppliedDivergence {
                    node: 1,
                    index: 2,
                    problem: AppliedProblem::DiffersFromCommitted { fingerprint: 0xb, .. },
                }]
            ),
            "{found:?}"
        );
        checker.node_restarted(3, 1);
        let found = feed(&mut checker, &[applied(obs(3, 1, false, 2, &[]), &[(2, 0xe)])]);
        assert!(
            found.iter().any(|violation| matches!(
                violation,
                RaftViolation::AppliedDivergence { node: 3, index: 2, problem: AppliedProblem::DifferentData { .. } }
            )),
            "{found:?}"
        );
    }

    #[test]
    fn display_lists_at_most_ten_examples_per_kind() {
        let mut checker = RaftChecker::new();
        for term in 1..=12 {
            checker.observe(&obs(1, term, true, 0, &[]));
            checker.observe(&obs(2, term, true, 0, &[]));
        }
        assert_eq!(checker.count(RaftViolationKind::TwoLeadersInTerm), 12);
        let text = checker.to_string();
        assert!(text.starts_with("raft check: INVALID: 12 two-leaders-in-term"), "{text}");
        assert_eq!(text.matches("all reported being leader").count(), EXAMPLES_PER_KIND_MAX, "{text}");
        assert!(text.contains("... and 2 more"), "{text}");
    }
}
