//! A checker for histories of cluster metadata operations (create, delete, list and describe topics).
//!
//! # What goes in, what comes out
//!
//! In: [`MetaEvent`]s, one per client operation, Jepsen style (invoke and completion time, the op, the
//! outcome: `Ok`, `Fail` = definitely not applied, `Info` = unknown, or the value a read returned), plus
//! the topics that exist at the end of the run (after the cluster healed and every client stopped), and
//! optionally the topics that existed before the history started ([`check_metadata_from`]). Out: a
//! [`MetadataReport`] listing every violation with the event indices (positions in the input slice) needed
//! to find it, and a [`fmt::Display`] summary with at most [`EXAMPLES_PER_KIND_MAX`] examples per kind.
//!
//! # The model
//!
//! Each topic name is a register that is absent or present (with a partition count). A create applies
//! only to an absent topic and a delete only to a present one (Kafka's `TOPIC_ALREADY_EXISTS` and
//! `UNKNOWN_TOPIC_OR_PARTITION` come back as `Fail`). `ListTopics` reads every register at one instant;
//! it is checked per topic (a list projected on one name), which is weaker than checking a list as one
//! multi-register read, but keeps the search small. `DescribeTopic` reads one register. An `Info` write
//! may take effect at any time after its invocation, or never; a `Fail` write never does; reads that
//! fail or end `Info` say nothing. `final_topics` is a read after everything else.
//!
//! # Violations
//!
//! The specific ones, each a definite proof of non-linearizability with the ops that prove it:
//! - `lost-create`: an `Ok` create whose topic is not in `final_topics`, although no delete (`Ok` or
//!   `Info`) could have come after the create.
//! - `stale-read`: a read that started after an `Ok` create completed misses the topic, although no delete
//!   could have come between the two.
//! - `deleted-topic-visible`: a read (or `final_topics`) that started after an `Ok` delete completed shows
//!   the topic, although no create (`Ok` or `Info`) could have come between the two.
//! - `duplicate-create`: two `Ok` creates of one name (or an `Ok` create of an initially present topic)
//!   with no delete that could have come between them, in either order.
//! - `phantom`: a read shows a topic that was never created: every create of it definitely failed, or
//!   there was none, and it was not there initially.
//! - `duplicate-in-listing`: one listing names a topic twice.
//! - `malformed-event`: an outcome that does not fit its op, or a completion before the invocation; the
//!   event is otherwise ignored.
//!
//! Then, for each topic without a specific violation, a Knossos-style search for a linearization of the
//! topic's ops (depth-first over the ops that may go next in real time, memoized on the set of
//! linearized ops and the register's state, reads that fit taken greedily) finds everything else
//! (`not-linearizable`, with the deepest point the search reached), e.g. a read that sees a create which
//! a later read no longer sees. A search that exceeds [`SEARCH_CONFIGURATIONS_MAX`] leaves its topic in
//! [`MetadataReport::inconclusive_topics`] and makes the report invalid: a search that gives up proves
//! nothing, and it gives up exactly on the busy, ambiguous histories where bugs hide. (`Info` writes
//! of one kind are interchangeable, so the search tries one of each kind at a time: see `search`.)
//!
//! # Invariants
//!
//! Pure and deterministic: ordered maps only, no clocks, no randomness; the same input yields the same
//! report in the same order. Never panics on any input.

use std::collections::BTreeSet;
use std::fmt;

/// How many examples of each violation kind the `Display` summary lists.
pub const EXAMPLES_PER_KIND_MAX: usize = 10;

/// How many configurations the linearizability search of one topic may visit before it gives up.
pub const SEARCH_CONFIGURATIONS_MAX: usize = 1_000_000;

/// A client's metadata operation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetaOp {
    CreateTopic {
        name: String,
        partitions: u32,
    },
    DeleteTopic {
        name: String,
    },
    /// Reads the names of every existing topic; its `Ok` outcome is [`MetaOutcome::Listed`].
    ListTopics,
    /// Reads one topic; its `Ok` outcome is [`MetaOutcome::Described`].
    DescribeTopic {
        name: String,
    },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetaOutcome {
    /// A create or delete was acknowledged: it definitely happened.
    Ok,
    /// The operation definitely did not happen (or, for a read, returned nothing usable).
    Fail,
    /// Unknown: a write may have happened, at any time after its invocation, or not.
    Info,
    /// A `ListTopics` returned: the topics that exist.
    Listed(Vec<String>),
    /// A `DescribeTopic` returned: the topic's partition count, or `None` if it does not exist.
    Described(Option<u32>),
}

/// One completed client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaEvent {
    pub process: u64,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub op: MetaOp,
    pub outcome: MetaOutcome,
}

/// Which operation a violation points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpRef {
    /// `events[i]`.
    Event(usize),
    /// The topics that existed before the history (`initial_topics`).
    Initial,
    /// The topics that exist at the end (`final_topics`).
    Final,
}

impl fmt::Display for OpRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpRef::Event(idx) => write!(f, "event {idx}"),
            OpRef::Initial => f.write_str("the initial topics"),
            OpRef::Final => f.write_str("the final topics"),
        }
    }
}

/// One topic's register state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TopicState {
    Absent,
    /// `partitions` is `None` for an initial topic whose partition count is unknown (any fits).
    Present {
        partitions: Option<u32>,
    },
}

impl fmt::Display for TopicState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicState::Absent => f.write_str("absent"),
            TopicState::Present { partitions: Some(partitions) } => write!(f, "present ({partitions} partitions)"),
            TopicState::Present { partitions: None } => f.write_str("present"),
        }
    }
}

/// The kinds of violation, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetadataViolationKind {
    MalformedEvent,
    DuplicateInListing,
    LostCreate,
    StaleRead,
    DeletedTopicVisible,
    DuplicateCreate,
    Phantom,
    NotLinearizable,
}

impl MetadataViolationKind {
    pub const ALL: [MetadataViolationKind; 8] = [
        MetadataViolationKind::MalformedEvent,
        MetadataViolationKind::DuplicateInListing,
        MetadataViolationKind::LostCreate,
        MetadataViolationKind::StaleRead,
        MetadataViolationKind::DeletedTopicVisible,
        MetadataViolationKind::DuplicateCreate,
        MetadataViolationKind::Phantom,
        MetadataViolationKind::NotLinearizable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MetadataViolationKind::MalformedEvent => "malformed-event",
            MetadataViolationKind::DuplicateInListing => "duplicate-in-listing",
            MetadataViolationKind::LostCreate => "lost-create",
            MetadataViolationKind::StaleRead => "stale-read",
            MetadataViolationKind::DeletedTopicVisible => "deleted-topic-visible",
            MetadataViolationKind::DuplicateCreate => "duplicate-create",
            MetadataViolationKind::Phantom => "phantom",
            MetadataViolationKind::NotLinearizable => "not-linearizable",
        }
    }
}

impl fmt::Display for MetadataViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One violation; see the module doc for each kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetadataViolation {
    MalformedEvent {
        event: usize,
        reason: &'static str,
    },
    DuplicateInListing {
        topic: String,
        read: OpRef,
    },
    LostCreate {
        topic: String,
        create: usize,
    },
    StaleRead {
        topic: String,
        create: usize,
        read: usize,
    },
    DeletedTopicVisible {
        topic: String,
        delete: usize,
        read: OpRef,
    },
    /// `first` is an `Ok` create or [`OpRef::Initial`]; `second` the `Ok` create that should have failed.
    DuplicateCreate {
        topic: String,
        first: OpRef,
        second: usize,
    },
    /// `failed_creates` are the topic's creates, all of which definitely failed (empty: never created).
    Phantom {
        topic: String,
        read: OpRef,
        failed_creates: Vec<usize>,
    },
    /// No linearization exists. At the deepest point the search reached, `linearized_count` of the topic's
    /// required ops were linearized, the topic was `state`, and none of `stuck` (required ops that real
    /// time allowed next) fit.
    NotLinearizable {
        topic: String,
        linearized_count: usize,
        state: TopicState,
        stuck: Vec<OpRef>,
    },
}

impl MetadataViolation {
    pub fn kind(&self) -> MetadataViolationKind {
        match self {
            MetadataViolation::MalformedEvent { .. } => MetadataViolationKind::MalformedEvent,
            MetadataViolation::DuplicateInListing { .. } => MetadataViolationKind::DuplicateInListing,
            MetadataViolation::LostCreate { .. } => MetadataViolationKind::LostCreate,
            MetadataViolation::StaleRead { .. } => MetadataViolationKind::StaleRead,
            MetadataViolation::DeletedTopicVisible { .. } => MetadataViolationKind::DeletedTopicVisible,
            MetadataViolation::DuplicateCreate { .. } => MetadataViolationKind::DuplicateCreate,
            MetadataViolation::Phantom { .. } => MetadataViolationKind::Phantom,
            MetadataViolation::NotLinearizable { .. } => MetadataViolationKind::NotLinearizable,
        }
    }

    /// The topic the violation is about (`None` for a malformed event).
    pub fn topic(&self) -> Option<&str> {
        match self {
            MetadataViolation::MalformedEvent { .. } => None,
            MetadataViolation::DuplicateInListing { topic, .. }
            | MetadataViolation::LostCreate { topic, .. }
            | MetadataViolation::StaleRead { topic, .. }
            | MetadataViolation::DeletedTopicVisible { topic, .. }
            | MetadataViolation::DuplicateCreate { topic, .. }
            | MetadataViolation::Phantom { topic, .. }
            | MetadataViolation::NotLinearizable { topic, .. } => Some(topic),
        }
    }
}

impl fmt::Display for MetadataViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataViolation::MalformedEvent { event, reason } => write!(f, "event {event}: {reason}"),
            MetadataViolation::DuplicateInListing { topic, read } => {
                write!(f, "topic {topic:?}: named twice by {read}")
            }
            MetadataViolation::LostCreate { topic, create } => write!(
                f,
                "topic {topic:?}: created ok by event {create}, missing from the final topics, and no delete \
                 could have come after the create"
            ),
            MetadataViolation::StaleRead { topic, create, read } => write!(
                f,
                "topic {topic:?}: created ok by event {create}, which completed before read event {read} \
                 started, but the read misses it and no delete could have come between"
            ),
            MetadataViolation::DeletedTopicVisible { topic, delete, read } => write!(
                f,
                "topic {topic:?}: deleted ok by event {delete}, which completed before {read} started, but \
                 it shows the topic and no create could have come between"
            ),
            MetadataViolation::DuplicateCreate { topic, first, second } => write!(
                f,
                "topic {topic:?}: created ok by {first} and again by event {second}, with no delete that \
                 could have come between"
            ),
            MetadataViolation::Phantom { topic, read, failed_creates } => {
                if failed_creates.is_empty() {
                    write!(f, "topic {topic:?}: shown by {read}, but never created")
                } else {
                    let creates: Vec<String> = failed_creates.iter().map(|idx| format!("event {idx}")).collect();
                    write!(
                        f,
                        "topic {topic:?}: shown by {read}, but every create of it failed ({})",
                        creates.join(", ")
                    )
                }
            }
            MetadataViolation::NotLinearizable { topic, linearized_count, state, stuck } => {
                let stuck: Vec<String> = stuck.iter().map(OpRef::to_string).collect();
                write!(
                    f,
                    "topic {topic:?}: no linearization; the deepest attempt linearized {linearized_count} \
                     required ops, reached state {state}, and then none of [{}] fit",
                    stuck.join(", ")
                )
            }
        }
    }
}

/// Counts of what the history contains, for context in reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataStats {
    pub events: usize,
    pub topics: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// `Listed` and `Described` outcomes.
    pub reads_ok: usize,
}

/// Everything [`check_metadata`] found, violations in a deterministic order (malformed events first, then
/// by topic and kind).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataReport {
    pub stats: MetadataStats,
    pub violations: Vec<MetadataViolation>,
    /// Topics whose linearizability search gave up (see [`SEARCH_CONFIGURATIONS_MAX`]); any makes the
    /// report invalid.
    pub inconclusive_topics: Vec<String>,
}

impl MetadataReport {
    /// No violation found, and every topic's search finished: a search that gave up is a failure,
    /// never a pass.
    pub fn is_valid(&self) -> bool {
        self.violations.is_empty() && self.inconclusive_topics.is_empty()
    }

    /// Whether every topic's search finished.
    pub fn is_conclusive(&self) -> bool {
        self.inconclusive_topics.is_empty()
    }

    pub fn count(&self, kind: MetadataViolationKind) -> usize {
        self.violations.iter().filter(|violation| violation.kind() == kind).count()
    }
}

impl fmt::Display for MetadataReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts: Vec<String> = MetadataViolationKind::ALL
            .iter()
            .filter_map(|kind| {
                let count = self.count(*kind);
                (count > 0).then(|| format!("{count} {kind}"))
            })
            .collect();
        if counts.is_empty() && self.inconclusive_topics.is_empty() {
            writeln!(f, "metadata check: valid, no violations")?;
        } else if counts.is_empty() {
            writeln!(f, "metadata check: INVALID: inconclusive on {} topics", self.inconclusive_topics.len())?;
        } else {
            writeln!(f, "metadata check: INVALID: {}", counts.join(", "))?;
        }
        let s = &self.stats;
        writeln!(
            f,
            "  {} events on {} topics: {} ok, {} fail, {} info, {} reads with a value",
            s.events, s.topics, s.ok, s.fail, s.info, s.reads_ok
        )?;
        if !self.inconclusive_topics.is_empty() {
            let topics: Vec<String> = self.inconclusive_topics.iter().map(|topic| format!("{topic:?}")).collect();
            writeln!(f, "  INCONCLUSIVE (search gave up): {}", topics.join(", "))?;
        }
        for kind in MetadataViolationKind::ALL {
            let of_kind = self.violations.iter().filter(|v| v.kind() == kind);
            crate::report::write_kind(f, kind, self.count(kind), of_kind, EXAMPLES_PER_KIND_MAX)?;
        }
        Ok(())
    }
}

/// Checks a metadata history in which no topic existed before the first event.
pub fn check_metadata(events: &[MetaEvent], final_topics: &[String]) -> MetadataReport {
    check_metadata_from(events, &[], final_topics)
}

/// Checks a metadata history that started with `initial_topics` existing (partition counts unknown).
pub fn check_metadata_from(events: &[MetaEvent], initial_topics: &[String], final_topics: &[String]) -> MetadataReport {
    let mut report = MetadataReport::default();
    report.stats.events = events.len();

    // Which events are usable, and the universe of topic names.
    let mut usable = vec![false; events.len()];
    let mut topics: BTreeSet<&str> = initial_topics.iter().map(String::as_str).collect();
    topics.extend(final_topics.iter().map(String::as_str));
    for (event_idx, event) in events.iter().enumerate() {
        match &event.outcome {
            MetaOutcome::Ok => report.stats.ok += 1,
            MetaOutcome::Fail => report.stats.fail += 1,
            MetaOutcome::Info => report.stats.info += 1,
            MetaOutcome::Listed(_) | MetaOutcome::Described(_) => report.stats.reads_ok += 1,
        }
        if let Some(reason) = shape_problem(event) {
            report.violations.push(MetadataViolation::MalformedEvent { event: event_idx, reason });
            continue;
        }
        usable[event_idx] = true;
        match (&event.op, &event.outcome) {
            (MetaOp::CreateTopic { name, .. } | MetaOp::DeleteTopic { name } | MetaOp::DescribeTopic { name }, _) => {
                topics.insert(name);
            }
            (MetaOp::ListTopics, MetaOutcome::Listed(names)) => topics.extend(names.iter().map(String::as_str)),
            (MetaOp::ListTopics, _) => {}
        }
    }
    report.stats.topics = topics.len();

    // Listings that name a topic twice.
    let listings = events
        .iter()
        .enumerate()
        .filter(|(event_idx, _)| usable[*event_idx])
        .filter_map(|(event_idx, event)| match &event.outcome {
            MetaOutcome::Listed(names) => Some((OpRef::Event(event_idx), names.as_slice())),
            _ => None,
        })
        .chain(std::iter::once((OpRef::Final, final_topics)));
    let mut duplicates_in_listings = Vec::new();
    for (read, names) in listings {
        let mut seen = BTreeSet::new();
        let mut reported = BTreeSet::new();
        for name in names {
            if !seen.insert(name.as_str()) && reported.insert(name.as_str()) {
                duplicates_in_listings.push(MetadataViolation::DuplicateInListing { topic: name.clone(), read });
            }
        }
    }

    for topic in topics {
        let mut topic_violations: Vec<MetadataViolation> =
            duplicates_in_listings.iter().filter(|violation| violation.topic() == Some(topic)).cloned().collect();
        let initially_present = initial_topics.iter().any(|name| name == topic);
        let ops = topic_ops(events, &usable, topic, final_topics);
        let mut specific = specific_violations(topic, &ops, initially_present);
        with_failed_creates(events, &mut specific);
        let specific_found = !specific.is_empty();
        topic_violations.extend(specific);
        if !specific_found {
            match search(&ops, initially_present) {
                SearchResult::Linearizable => {}
                SearchResult::GaveUp => report.inconclusive_topics.push(topic.to_owned()),
                SearchResult::NotLinearizable { linearized_count, state, stuck } => {
                    topic_violations.push(MetadataViolation::NotLinearizable {
                        topic: topic.to_owned(),
                        linearized_count,
                        state,
                        stuck,
                    });
                }
            }
        }
        report.violations.extend(topic_violations);
    }
    report
}

/// Why an event cannot be used, if it cannot.
fn shape_problem(event: &MetaEvent) -> Option<&'static str> {
    if event.complete_ns < event.invoke_ns {
        return Some("completes before it was invoked");
    }
    match (&event.op, &event.outcome) {
        (
            MetaOp::CreateTopic { .. } | MetaOp::DeleteTopic { .. },
            MetaOutcome::Listed(_) | MetaOutcome::Described(_),
        ) => Some("a create or delete cannot return a read value"),
        (MetaOp::ListTopics, MetaOutcome::Ok) => Some("an ok list must carry its value (Listed)"),
        (MetaOp::ListTopics, MetaOutcome::Described(_)) => Some("a list returns Listed, not Described"),
        (MetaOp::DescribeTopic { .. }, MetaOutcome::Ok) => Some("an ok describe must carry its value (Described)"),
        (MetaOp::DescribeTopic { .. }, MetaOutcome::Listed(_)) => Some("a describe returns Described, not Listed"),
        _ => None,
    }
}

/// What one op does to one topic's register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Create {
        partitions: u32,
    },
    Delete,
    /// A list: whether the topic was in it.
    ReadPresence(bool),
    /// A describe: the partition count, or `None` for absent.
    ReadDescribe(Option<u32>),
}

/// One op projected on one topic. `complete` is `u64::MAX` for an `Info` write, which may take effect at
/// any later time or never.
#[derive(Clone, Copy, Debug)]
struct TopicOp {
    op_ref: OpRef,
    invoke: u64,
    complete: u64,
    /// `Ok` ops and reads must be linearized; `Info` writes may be.
    required: bool,
    action: Action,
}

impl TopicOp {
    fn is_read(&self) -> bool {
        matches!(self.action, Action::ReadPresence(_) | Action::ReadDescribe(_))
    }

    /// Whether the read shows the topic present (`None` for writes).
    fn read_presence(&self) -> Option<bool> {
        match self.action {
            Action::ReadPresence(present) => Some(present),
            Action::ReadDescribe(partitions) => Some(partitions.is_some()),
            Action::Create { .. } | Action::Delete => None,
        }
    }

    fn event_idx(&self) -> usize {
        match self.op_ref {
            OpRef::Event(idx) => idx,
            OpRef::Initial | OpRef::Final => usize::MAX,
        }
    }
}

/// Whether `op` can be linearized after `first` and before `second`.
fn could_be_between(first: &TopicOp, second: &TopicOp, op: &TopicOp) -> bool {
    op.complete > first.invoke && op.invoke < second.complete && first.invoke < second.complete
}

/// The topic's ops, sorted by invocation, the final read last. Failed writes and reads without a value are
/// left out: they say nothing about the register.
fn topic_ops(events: &[MetaEvent], usable: &[bool], topic: &str, final_topics: &[String]) -> Vec<TopicOp> {
    let mut ops = Vec::new();
    for (event_idx, event) in events.iter().enumerate() {
        if !usable[event_idx] {
            continue;
        }
        let (action, required) = match (&event.op, &event.outcome) {
            (MetaOp::CreateTopic { name, partitions }, MetaOutcome::Ok | MetaOutcome::Info) if name == topic => {
                (Action::Create { partitions: *partitions }, event.outcome == MetaOutcome::Ok)
            }
            (MetaOp::DeleteTopic { name }, MetaOutcome::Ok | MetaOutcome::Info) if name == topic => {
                (Action::Delete, event.outcome == MetaOutcome::Ok)
            }
            (MetaOp::ListTopics, MetaOutcome::Listed(names)) => {
                (Action::ReadPresence(names.iter().any(|name| name == topic)), true)
            }
            (MetaOp::DescribeTopic { name }, MetaOutcome::Described(partitions)) if name == topic => {
                (Action::ReadDescribe(*partitions), true)
            }
            _ => continue,
        };
        let complete = if required { event.complete_ns } else { u64::MAX };
        ops.push(TopicOp { op_ref: OpRef::Event(event_idx), invoke: event.invoke_ns, complete, required, action });
    }
    ops.sort_by_key(|op| (op.invoke, op.event_idx()));
    ops.push(TopicOp {
        op_ref: OpRef::Final,
        invoke: u64::MAX,
        complete: u64::MAX,
        required: true,
        action: Action::ReadPresence(final_topics.iter().any(|name| name == topic)),
    });
    ops
}

/// The violations that a pattern of a few ops proves, in kind order.
fn specific_violations(topic: &str, ops: &[TopicOp], initially_present: bool) -> Vec<MetadataViolation> {
    let mut violations = Vec::new();
    let creates_ok: Vec<&TopicOp> =
        ops.iter().filter(|op| op.required && matches!(op.action, Action::Create { .. })).collect();
    let creates_maybe: Vec<&TopicOp> = ops.iter().filter(|op| matches!(op.action, Action::Create { .. })).collect();
    let deletes_ok: Vec<&TopicOp> = ops.iter().filter(|op| op.required && op.action == Action::Delete).collect();
    let deletes_maybe: Vec<&TopicOp> = ops.iter().filter(|op| op.action == Action::Delete).collect();
    let reads: Vec<&TopicOp> = ops.iter().filter(|op| op.is_read()).collect();
    let final_read = ops.last().filter(|op| op.op_ref == OpRef::Final);

    // Lost creates: the final read misses the topic and no delete could follow the create.
    if let Some(final_read) = final_read {
        if final_read.read_presence() == Some(false) {
            for create in &creates_ok {
                if !deletes_maybe.iter().any(|delete| could_be_between(create, final_read, delete)) {
                    violations
                        .push(MetadataViolation::LostCreate { topic: topic.to_owned(), create: create.event_idx() });
                }
            }
        }
    }

    // Stale reads: a read that started after an ok create completed misses it.
    for read in reads.iter().filter(|read| read.op_ref != OpRef::Final && read.read_presence() == Some(false)) {
        let stale_against = creates_ok.iter().find(|create| {
            create.complete < read.invoke && !deletes_maybe.iter().any(|delete| could_be_between(create, read, delete))
        });
        if let Some(create) = stale_against {
            violations.push(MetadataViolation::StaleRead {
                topic: topic.to_owned(),
                create: create.event_idx(),
                read: read.event_idx(),
            });
        }
    }

    // Deleted topics that stay visible (to reads and to the final topics).
    for read in reads.iter().filter(|read| read.read_presence() == Some(true)) {
        let visible_after = deletes_ok.iter().find(|delete| {
            delete.complete < read.invoke && !creates_maybe.iter().any(|create| could_be_between(delete, read, create))
        });
        if let Some(delete) = visible_after {
            violations.push(MetadataViolation::DeletedTopicVisible {
                topic: topic.to_owned(),
                delete: delete.event_idx(),
                read: read.op_ref,
            });
        }
    }

    // Duplicate creates: two ok creates with no delete that could separate them, in either order.
    let initial = TopicOp { op_ref: OpRef::Initial, invoke: 0, complete: 0, required: true, action: Action::Delete };
    for (second_idx, second) in creates_ok.iter().enumerate() {
        let separable = |first: &TopicOp| {
            let separated =
                |a: &TopicOp, b: &TopicOp| deletes_maybe.iter().any(|delete| could_be_between(a, b, delete));
            separated(first, second) || (first.op_ref != OpRef::Initial && separated(second, first))
        };
        let earlier = creates_ok[..second_idx].iter().find(|first| !separable(first));
        let first = match earlier {
            Some(first) => Some(first.op_ref),
            None if initially_present && !separable(&initial) => Some(OpRef::Initial),
            None => None,
        };
        if let Some(first) = first {
            violations.push(MetadataViolation::DuplicateCreate {
                topic: topic.to_owned(),
                first,
                second: second.event_idx(),
            });
        }
    }

    // Phantoms: shown, but never (possibly) created.
    if !initially_present && creates_maybe.is_empty() {
        for read in reads.iter().filter(|read| read.read_presence() == Some(true)) {
            violations.push(MetadataViolation::Phantom {
                topic: topic.to_owned(),
                read: read.op_ref,
                failed_creates: Vec::new(),
            });
        }
    }
    violations
}

/// Fills in the failed creates of phantom violations (the topic's ops leave failed writes out).
fn with_failed_creates(events: &[MetaEvent], violations: &mut [MetadataViolation]) {
    for violation in violations {
        if let MetadataViolation::Phantom { topic, failed_creates, .. } = violation {
            *failed_creates = events
                .iter()
                .enumerate()
                .filter(|(_, event)| {
                    event.outcome == MetaOutcome::Fail
                        && matches!(&event.op, MetaOp::CreateTopic { name, .. } if name == topic)
                })
                .map(|(event_idx, _)| event_idx)
                .collect();
        }
    }
}

enum SearchResult {
    Linearizable,
    GaveUp,
    NotLinearizable { linearized_count: usize, state: TopicState, stuck: Vec<OpRef> },
}

/// The state after `action`, if it can be linearized in `state`.
fn step(state: TopicState, action: Action) -> Option<TopicState> {
    match (action, state) {
        (Action::Create { partitions }, TopicState::Absent) => {
            Some(TopicState::Present { partitions: Some(partitions) })
        }
        (Action::Create { .. }, TopicState::Present { .. }) => None,
        (Action::Delete, TopicState::Present { .. }) => Some(TopicState::Absent),
        (Action::Delete, TopicState::Absent) => None,
        (Action::ReadPresence(present), _) => (present == matches!(state, TopicState::Present { .. })).then_some(state),
        (Action::ReadDescribe(None), TopicState::Absent) => Some(state),
        (Action::ReadDescribe(Some(read)), TopicState::Present { partitions }) => {
            partitions.is_none_or(|partitions| partitions == read).then_some(state)
        }
        (Action::ReadDescribe(_), _) => None,
    }
}

type Linearized = Vec<u64>;

fn is_set(bits: &Linearized, idx: usize) -> bool {
    bits[idx / 64] & (1 << (idx % 64)) != 0
}

fn with_set(bits: &Linearized, idx: usize) -> Linearized {
    let mut bits = bits.clone();
    bits[idx / 64] |= 1 << (idx % 64);
    bits
}

/// Depth-first search for a linearization of `ops` (sorted by invocation). An op may go next when no
/// unlinearized required op completed before it was invoked. A read that fits the current state is taken
/// alone: moving a read that fits to the front of any valid continuation keeps it valid, since reads do
/// not change the state and nothing unlinearized had to precede it.
///
/// Of the `Info` writes that may go next, only the earliest-invoked of each action (delete, or create
/// of `p` partitions) is tried. Two such writes `a` (earlier) and `b` of one action are interchangeable:
/// an `Info` write never completes, so it never holds another op back, and `a` may go next whenever `b`
/// may (it was invoked no later, and the set of ops that may go next only grows as required ops are
/// linearized). Any linearization that uses `b` here stays one with `a` in its place and `b` left
/// unused or used where it used `a`. By induction the `Info` writes of one action that a configuration
/// has used are always the earliest ones, so a busy history of `n` ambiguous writes of one topic costs
/// the search about `(n / kinds)^kinds` configurations instead of `2^n`. Without this, 12 ambiguous
/// creates and 12 ambiguous deletes next to an impossible read exhausted
/// [`SEARCH_CONFIGURATIONS_MAX`], and a search that gives up proves nothing.
fn search(ops: &[TopicOp], initially_present: bool) -> SearchResult {
    let required_n = ops.iter().filter(|op| op.required).count();
    let initial_state = if initially_present { TopicState::Present { partitions: None } } else { TopicState::Absent };
    let initial_bits: Linearized = vec![0; ops.len().div_ceil(64).max(1)];
    let mut visited: BTreeSet<(Linearized, TopicState)> = BTreeSet::new();
    let mut stack: Vec<(Linearized, TopicState, usize)> = vec![(initial_bits.clone(), initial_state, 0)];
    visited.insert((initial_bits.clone(), initial_state));
    let mut deepest: (usize, Linearized, TopicState) = (0, initial_bits, initial_state);

    while let Some((bits, state, linearized_count)) = stack.pop() {
        if linearized_count == required_n {
            return SearchResult::Linearizable;
        }
        if visited.len() > SEARCH_CONFIGURATIONS_MAX {
            return SearchResult::GaveUp;
        }
        if linearized_count > deepest.0 {
            deepest = (linearized_count, bits.clone(), state);
        }
        let candidates = candidates(ops, &bits);
        let fitting_read =
            candidates.iter().copied().find(|&idx| ops[idx].is_read() && step(state, ops[idx].action).is_some());
        let next: Vec<usize> = match fitting_read {
            Some(read_idx) => vec![read_idx],
            None => {
                // Of the `Info` writes that may go next, only the earliest of each kind (delete, or
                // create with one partition count) is tried: see `search`'s doc for why that loses
                // nothing.
                let mut info_kinds_tried: Vec<Action> = Vec::new();
                candidates
                    .into_iter()
                    .filter(|&idx| !ops[idx].is_read())
                    .filter(|&idx| {
                        let op = &ops[idx];
                        if op.required {
                            return true;
                        }
                        if info_kinds_tried.contains(&op.action) {
                            return false;
                        }
                        info_kinds_tried.push(op.action);
                        true
                    })
                    .collect()
            }
        };
        // Pushed in reverse so that earlier-invoked ops are tried first.
        for &idx in next.iter().rev() {
            let Some(next_state) = step(state, ops[idx].action) else {
                continue;
            };
            let next_bits = with_set(&bits, idx);
            if visited.insert((next_bits.clone(), next_state)) {
                let next_count = linearized_count + usize::from(ops[idx].required);
                stack.push((next_bits, next_state, next_count));
            }
        }
    }

    let (linearized_count, bits, state) = deepest;
    let stuck =
        candidates(ops, &bits).into_iter().filter(|&idx| ops[idx].required).map(|idx| ops[idx].op_ref).collect();
    SearchResult::NotLinearizable { linearized_count, state, stuck }
}

/// The unlinearized ops that real time allows next.
fn candidates(ops: &[TopicOp], bits: &Linearized) -> Vec<usize> {
    let complete_min = ops
        .iter()
        .enumerate()
        .filter(|(idx, op)| op.required && !is_set(bits, *idx))
        .map(|(_, op)| op.complete)
        .min()
        .unwrap_or(u64::MAX);
    ops.iter()
        .enumerate()
        .take_while(|(_, op)| op.invoke <= complete_min)
        .filter(|(idx, _)| !is_set(bits, *idx))
        .map(|(idx, _)| idx)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(process: u64, invoke_ns: u64, complete_ns: u64, name: &str, outcome: MetaOutcome) -> MetaEvent {
        let op = MetaOp::CreateTopic { name: name.to_owned(), partitions: 3 };
        MetaEvent { process, invoke_ns, complete_ns, op, outcome }
    }

    fn delete(process: u64, invoke_ns: u64, complete_ns: u64, name: &str, outcome: MetaOutcome) -> MetaEvent {
        MetaEvent { process, invoke_ns, complete_ns, op: MetaOp::DeleteTopic { name: name.to_owned() }, outcome }
    }

    fn list(process: u64, invoke_ns: u64, complete_ns: u64, names: &[&str]) -> MetaEvent {
        let outcome = MetaOutcome::Listed(names.iter().map(|name| (*name).to_owned()).collect());
        MetaEvent { process, invoke_ns, complete_ns, op: MetaOp::ListTopics, outcome }
    }

    fn describe(process: u64, invoke_ns: u64, complete_ns: u64, name: &str, partitions: Option<u32>) -> MetaEvent {
        let op = MetaOp::DescribeTopic { name: name.to_owned() };
        MetaEvent { process, invoke_ns, complete_ns, op, outcome: MetaOutcome::Described(partitions) }
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn assert_valid(events: &[MetaEvent], final_topics: &[&str]) {
        let report = check_metadata(events, &names(final_topics));
        assert!(report.is_valid() && report.is_conclusive(), "{report}");
        assert!(report.to_string().starts_with("metadata check: valid"), "{report}");
    }

    fn violations(events: &[MetaEvent], final_topics: &[&str]) -> Vec<MetadataViolation> {
        let report = check_metadata(events, &names(final_topics));
        assert!(!report.is_valid(), "{report}");
        assert!(report.to_string().starts_with("metadata check: INVALID"), "{report}");
        report.violations
    }

    use MetaOutcome::{Fail, Info, Ok as Acked};

    #[test]
    fn sequential_create_list_delete_is_valid() {
        let events = vec![
            create(0, 0, 10, "a", Acked),
            list(1, 20, 30, &["a"]),
            describe(1, 31, 32, "a", Some(3)),
            create(0, 40, 50, "a", Fail),
            delete(0, 60, 70, "a", Acked),
            list(1, 80, 90, &[]),
            describe(1, 91, 92, "a", None),
            create(0, 100, 110, "a", Acked),
        ];
        assert_valid(&events, &["a"]);
    }

    #[test]
    fn concurrent_create_and_delete_may_go_either_way() {
        for (seen, final_topics) in [(true, vec![]), (false, vec![]), (true, vec!["a"]), (false, vec!["a"])] {
            // The delete overlaps the create and the read; the second create overlaps them too.
            let mut events = vec![
                create(0, 0, 10, "a", Acked),
                delete(1, 5, 15, "a", Acked),
                list(2, 6, 7, if seen { &["a"] } else { &[] }),
            ];
            if final_topics == ["a"] {
                events.push(create(3, 12, 20, "a", Acked));
            }
            assert_valid(&events, &final_topics);
        }
    }

    #[test]
    fn info_ops_may_apply_late_or_never() {
        // An info create that took effect after a read that missed it.
        assert_valid(&[create(0, 0, 5, "a", Info), list(1, 10, 11, &[]), list(1, 20, 21, &["a"])], &["a"]);
        // One that never took effect.
        assert_valid(&[create(0, 0, 5, "a", Info), list(1, 10, 11, &[])], &[]);
        // An info delete explains a read that misses an acknowledged create, and the final state.
        assert_valid(&[create(0, 0, 5, "a", Acked), delete(1, 6, 8, "a", Info), list(2, 10, 11, &[])], &[]);
        // A failed create of an existing topic is fine; a failed read says nothing.
        let failed_read = MetaEvent { process: 3, invoke_ns: 0, complete_ns: 1, op: MetaOp::ListTopics, outcome: Fail };
        assert_valid(&[create(0, 0, 5, "a", Acked), create(1, 6, 7, "a", Fail), failed_read], &["a"]);
    }

    #[test]
    fn initial_topics_exist_from_the_start() {
        let events = [list(0, 0, 1, &["pre"]), delete(0, 2, 3, "pre", Acked)];
        let report = check_metadata_from(&events, &names(&["pre"]), &[]);
        assert!(report.is_valid(), "{report}");
        let report = check_metadata_from(&[create(0, 0, 1, "pre", Acked)], &names(&["pre"]), &names(&["pre"]));
        assert_eq!(
            report.violations,
            vec![MetadataViolation::DuplicateCreate { topic: "pre".into(), first: OpRef::Initial, second: 0 }]
        );
    }

    #[test]
    fn lost_create() {
        let found = violations(&[create(0, 0, 10, "a", Acked), list(1, 20, 30, &["a"])], &[]);
        assert_eq!(found, vec![MetadataViolation::LostCreate { topic: "a".into(), create: 0 }]);
        // A delete that definitely failed does not explain it.
        let found = violations(&[create(0, 0, 10, "a", Acked), delete(0, 20, 30, "a", Fail)], &[]);
        assert_eq!(found, vec![MetadataViolation::LostCreate { topic: "a".into(), create: 0 }]);
    }

    #[test]
    fn stale_read() {
        let found = violations(
            &[create(0, 0, 10, "a", Acked), list(1, 20, 30, &["b"]), create(0, 0, 1, "b", Acked)],
            &["a", "b"],
        );
        assert_eq!(found, vec![MetadataViolation::StaleRead { topic: "a".into(), create: 0, read: 1 }]);
        let found = violations(&[create(0, 0, 10, "a", Acked), describe(1, 20, 30, "a", None)], &["a"]);
        assert_eq!(found, vec![MetadataViolation::StaleRead { topic: "a".into(), create: 0, read: 1 }]);
    }

    #[test]
    fn deleted_topic_visible() {
        let events = [create(0, 0, 10, "a", Acked), delete(0, 20, 30, "a", Acked), list(1, 40, 50, &["a"])];
        let found = violations(&events, &[]);
        assert_eq!(
            found,
            vec![MetadataViolation::DeletedTopicVisible { topic: "a".into(), delete: 1, read: OpRef::Event(2) }]
        );
        let found = violations(&events[..2], &["a"]);
        assert_eq!(
            found,
            vec![MetadataViolation::DeletedTopicVisible { topic: "a".into(), delete: 1, read: OpRef::Final }]
        );
    }

    #[test]
    fn duplicate_create() {
        let found = violations(&[create(0, 0, 10, "a", Acked), create(1, 20, 30, "a", Acked)], &["a"]);
        assert_eq!(
            found,
            vec![MetadataViolation::DuplicateCreate { topic: "a".into(), first: OpRef::Event(0), second: 1 }]
        );
        // Concurrent creates cannot both succeed either.
        let found = violations(&[create(0, 0, 10, "a", Acked), create(1, 5, 15, "a", Acked)], &["a"]);
        assert_eq!(
            found,
            vec![MetadataViolation::DuplicateCreate { topic: "a".into(), first: OpRef::Event(0), second: 1 }]
        );
        // A possible delete between them makes it legal.
        assert_valid(&[create(0, 0, 10, "a", Acked), delete(2, 8, 9, "a", Info), create(1, 5, 15, "a", Acked)], &["a"]);
    }

    #[test]
    fn phantom() {
        let found = violations(&[create(0, 0, 10, "a", Fail), list(1, 20, 30, &["a"])], &["a"]);
        assert_eq!(
            found,
            vec![
                MetadataViolation::Phantom { topic: "a".into(), read: OpRef::Event(1), failed_creates: vec![0] },
                MetadataViolation::Phantom { topic: "a".into(), read: OpRef::Final, failed_creates: vec![0] },
            ]
        );
        let found = violations(&[list(1, 20, 30, &["ghost"])], &[]);
        assert_eq!(
            found,
            vec![MetadataViolation::Phantom { topic: "ghost".into(), read: OpRef::Event(0), failed_creates: vec![] }]
        );
        assert!(check_metadata(&[list(1, 20, 30, &["ghost"])], &[]).to_string().contains("never created"));
    }

    #[test]
    fn non_linearizable_reads_found_by_the_search() {
        // The create overlaps both reads: the first sees it, the later one does not.
        let found = violations(&[create(0, 0, 50, "a", Acked), list(1, 1, 2, &["a"]), list(1, 3, 4, &[])], &["a"]);
        assert!(
            matches!(
                found.as_slice(),
                [MetadataViolation::NotLinearizable { topic, state: TopicState::Present { .. }, stuck, .. }]
                    if topic == "a" && stuck == &vec![OpRef::Event(2)]
            ),
            "{found:?}"
        );
        // A describe with the wrong partition count.
        let found = violations(&[create(0, 0, 10, "a", Acked), describe(1, 20, 30, "a", Some(5))], &["a"]);
        assert_eq!(
            found,
            vec![MetadataViolation::NotLinearizable {
                topic: "a".into(),
                linearized_count: 1,
                state: TopicState::Present { partitions: Some(3) },
                stuck: vec![OpRef::Event(1)],
            }]
        );
        // A delete of a topic that does not exist cannot be acknowledged.
        let found = violations(&[delete(0, 0, 10, "a", Acked)], &[]);
        assert!(matches!(found.as_slice(), [MetadataViolation::NotLinearizable { .. }]), "{found:?}");
    }

    #[test]
    fn malformed_events_and_duplicate_listings() {
        let backwards = create(0, 10, 5, "a", Acked);
        let list_without_value =
            MetaEvent { process: 0, invoke_ns: 0, complete_ns: 1, op: MetaOp::ListTopics, outcome: Acked };
        let report = check_metadata(&[backwards, list_without_value, list(1, 2, 3, &[])], &names(&["b", "b"]));
        assert_eq!(report.count(MetadataViolationKind::MalformedEvent), 2, "{report}");
        assert_eq!(
            report.violations[0],
            MetadataViolation::MalformedEvent { event: 0, reason: "completes before it was invoked" }
        );
        assert!(report
            .violations
            .contains(&MetadataViolation::DuplicateInListing { topic: "b".into(), read: OpRef::Final }));
        assert_eq!(report.stats.events, 3);
    }

    #[test]
    fn display_lists_at_most_ten_examples_per_kind() {
        let events: Vec<MetaEvent> = (0..12).map(|idx| create(idx, 0, 1, &format!("t{idx:02}"), Acked)).collect();
        let report = check_metadata(&events, &[]);
        assert_eq!(report.count(MetadataViolationKind::LostCreate), 12);
        let text = report.to_string();
        assert!(text.starts_with("metadata check: INVALID: 12 lost-create"), "{text}");
        assert_eq!(text.matches("missing from the final topics").count(), EXAMPLES_PER_KIND_MAX, "{text}");
        assert!(text.contains("... and 2 more"), "{text}");
    }

    /// An impossible describe (an ok create of 3 partitions read back as 5) next to 12 ambiguous
    /// creates and 12 ambiguous deletes of the same topic. The search used to try every subset of the
    /// ambiguous writes, gave up at `SEARCH_CONFIGURATIONS_MAX`, and the report counted as valid.
    #[test]
    fn impossible_read_among_many_ambiguous_writes_is_found() {
        let mut events = vec![create(0, 0, 10, "a", Acked)];
        for process in 1..=12 {
            let partitions = [1, 2, 3][process as usize % 3];
            let op = MetaOp::CreateTopic { name: "a".to_owned(), partitions };
            events.push(MetaEvent { process, invoke_ns: 20 + process, complete_ns: 900, op, outcome: Info });
            events.push(delete(process + 100, 20 + process, 900, "a", Info));
        }
        events.push(describe(999, 1_000, 1_010, "a", Some(5)));
        let report = check_metadata(&events, &names(&["a"]));
        assert!(report.is_conclusive(), "the search gave up: {report}");
        assert!(!report.is_valid(), "{report}");
        assert!(
            matches!(
                report.violations.as_slice(),
                [MetadataViolation::NotLinearizable { topic, stuck, .. }] if topic == "a" && stuck == &vec![OpRef::Event(25)]
            ),
            "{report}"
        );
    }

    /// A search that gives up fails the report: it proved nothing.
    #[test]
    fn an_inconclusive_report_is_not_valid() {
        let report = MetadataReport { inconclusive_topics: vec!["a".to_owned()], ..MetadataReport::default() };
        assert!(!report.is_valid());
        assert!(report.to_string().starts_with("metadata check: INVALID: inconclusive on 1 topics"), "{report}");
    }

    #[test]
    fn search_handles_many_concurrent_ops() {
        // 40 processes create and delete one topic, all concurrently; all info. Any outcome is legal.
        let mut events = Vec::new();
        for process in 0..40 {
            events.push(create(process, process, 1_000, "a", Info));
            events.push(delete(process + 100, process, 1_000, "a", Info));
        }
        events.push(list(999, 500, 501, &["a"]));
        events.push(list(999, 502, 503, &[]));
        assert_valid(&events, &["a"]);
    }
}
