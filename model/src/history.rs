//! One history of queue operations, as recorded by a workload and judged by
//! [`crate::queue_checker`].
//!
//! # What goes in, what comes out
//!
//! In: a workload's calls to the [`History`] recorder (`invoke_send` then `send_ok` / `send_fail` /
//! `send_info`, `invoke_poll` then `poll_ok` / ..., `assign`, `subscribe`, `crash`), or the JSON Lines
//! text of `/work/shared/HISTORY-FORMAT.md` (one event per line, modelled on Jepsen's kafka workload).
//! Out: the ordered list of [`Event`]s, its canonical JSON Lines text, and a stable 64-bit fingerprint.
//!
//! # Invariants
//!
//! - Indices count every line: the queue [`Event`]s and the [`NemesisEvent`]s (faults, `"process":
//!   "nemesis"`) together carry `0, 1, 2, ...` in the order they happened, each list in increasing index
//!   order. Without nemesis events (the simulation's histories) that is `events()[i].index == OpIndex(i)`.
//!   The recorder assigns indices in order, and [`History::from_jsonl`] rejects text whose indices are not
//!   `0, 1, 2, ...`.
//! - Nemesis events are context, not operations: queue checkers never read them (a report shades the fault
//!   intervals with them). A history without them writes exactly the text it wrote before they existed.
//! - The value of an event has the shape its `f` and `type` require (a send's offset only on `ok`, a poll's
//!   reads exactly on `ok`). The typed [`Op`] plus [`History::validate`] enforce it.
//! - A well-formed history (one that passes [`History::validate`]) pairs every send/poll completion with
//!   the outstanding invoke of the same process (a send's by its value), and sends every value at most
//!   once. A process has either one poll outstanding or any number of sends (a pipelining producer keeps
//!   several batches in flight), never a poll and a send together. The recorder's [`PendingSend`] /
//!   [`PendingPoll`] tokens make a mispaired completion impossible to write; value uniqueness is the
//!   workload's job, and `validate` reports a violation.
//! - The JSON Lines text is canonical: struct fields in a fixed order and poll reads sorted by partition
//!   (a `BTreeMap`), so the same history always yields the same bytes and the same [`History::fingerprint`],
//!   in every run and every process. Nothing here uses `std`'s randomly seeded hashers.
//! - Decoding never panics: bad input becomes a [`HistoryError`].
//!
//! This module is pure: no I/O beyond the caller's `io::Write`, no clocks (times come in as `time_ns`
//! arguments), no threads, no randomness.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::fnv::Fnv1a64;

/// The position of an event in a history (its `index` field), starting at 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpIndex(pub u64);

/// A logical client (a Jepsen "process"): at any time it has at most one poll outstanding, or any number of
/// sends (a producer that pipelines), but never a poll and a send together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProcessId(pub u64);

/// The offset of a record in one partition's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offset(pub u64);

/// A partition name, `"<topic>/<partition index>"`, e.g. `"t/0"`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Partition(pub String);

/// A record's value. Workloads send every value at most once in a history, so a value identifies its send.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Value(pub String);

impl Partition {
    /// The conventional name of partition `partition_idx` of `topic`: `"<topic>/<partition_idx>"`.
    pub fn of_topic(topic: &str, partition_idx: u32) -> Partition {
        Partition(format!("{topic}/{partition_idx}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Value {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Partition {
    fn from(name: &str) -> Partition {
        Partition(name.to_owned())
    }
}

impl From<String> for Partition {
    fn from(name: String) -> Partition {
        Partition(name)
    }
}

impl From<&Partition> for Partition {
    fn from(partition: &Partition) -> Partition {
        partition.clone()
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Value {
        Value(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Value {
        Value(value)
    }
}

impl fmt::Display for OpIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op {}", self.0)
    }
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process {}", self.0)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug quoting keeps odd characters in values visible in reports.
        write!(f, "{:?}", self.0)
    }
}

/// The `type` field: how an operation stands at this event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The operation started.
    Invoke,
    /// The operation definitely happened.
    Ok,
    /// The operation definitely did not happen.
    Fail,
    /// The operation may or may not have happened (a timeout, a torn-down connection).
    Info,
}

/// The `f` field: which operation an event belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    Send,
    Poll,
    Assign,
    Subscribe,
    Crash,
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventKind::Invoke => "invoke",
            EventKind::Ok => "ok",
            EventKind::Fail => "fail",
            EventKind::Info => "info",
        })
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Function::Send => "send",
            Function::Poll => "poll",
            Function::Assign => "assign",
            Function::Subscribe => "subscribe",
            Function::Crash => "crash",
        })
    }
}

/// What one poll returned: for each partition, the `(offset, value)` records in the order the consumer got
/// them. A `BTreeMap` so that the JSON text (and so the fingerprint) does not depend on insertion order.
pub type PollReads = BTreeMap<Partition, Vec<(Offset, Value)>>;

/// The `f` and `value` fields of an event, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A produce of one record. `offset` is only ever present on `ok`, and may be absent there too when the
    /// producer does not learn offsets (acks=none style).
    Send { partition: Partition, value: Value, offset: Option<Offset> },
    /// A consumer poll. `reads` is `Some` exactly on `ok` (possibly an empty map) and `None` otherwise,
    /// because only a completed poll has a result.
    Poll { reads: Option<PollReads> },
    /// The consumer's partitions were set explicitly; it resets the checker's position tracking.
    Assign { partitions: Vec<Partition> },
    /// The consumer subscribed (group membership); it resets the checker's position tracking.
    Subscribe { partitions: Vec<Partition> },
    /// The process's client was torn down; it resets the checker's position tracking.
    Crash,
}

impl Op {
    pub fn function(&self) -> Function {
        match self {
            Op::Send { .. } => Function::Send,
            Op::Poll { .. } => Function::Poll,
            Op::Assign { .. } => Function::Assign,
            Op::Subscribe { .. } => Function::Subscribe,
            Op::Crash => Function::Crash,
        }
    }
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub index: OpIndex,
    pub time_ns: u64,
    pub process: ProcessId,
    pub kind: EventKind,
    pub op: Op,
}

impl Event {
    pub fn function(&self) -> Function {
        self.op.function()
    }

    /// Why this event's value does not fit its `f` and `type`, if it does not.
    fn shape_problem(&self) -> Option<&'static str> {
        match (&self.op, self.kind) {
            (Op::Send { offset: Some(_), .. }, kind) if kind != EventKind::Ok => {
                Some("only an ok send may carry an offset")
            }
            (Op::Poll { reads: Some(_) }, kind) if kind != EventKind::Ok => {
                Some("only an ok poll carries reads; other poll events have value null")
            }
            (Op::Poll { reads: None }, EventKind::Ok) => Some("an ok poll must carry its reads (an object)"),
            _ => None,
        }
    }
}

/// A fault the nemesis started or ended: a line with `"process": "nemesis"` and `"type": "info"`. `f` names
/// it (`partition`, `kill`, `start`, `pause`, `resume`, `clock`, `packet`, `corrupt`, `heal`, ...) and
/// `value` says what it hit, in whatever JSON shape suits the fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NemesisEvent {
    pub index: OpIndex,
    pub time_ns: u64,
    pub f: String,
    pub value: serde_json::Value,
}

/// An outstanding send, returned by [`History::invoke_send`] and consumed by exactly one of
/// [`History::send_ok`], [`History::send_fail`] or [`History::send_info`]. Dropping it leaves the send
/// pending forever, which the checker treats like `info` (it may or may not have happened).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "complete the send with send_ok, send_fail or send_info; dropping it leaves the send indeterminate"]
pub struct PendingSend {
    invoke: OpIndex,
    process: ProcessId,
    partition: Partition,
    value: Value,
}

impl PendingSend {
    pub fn invoke_index(&self) -> OpIndex {
        self.invoke
    }

    pub fn process(&self) -> ProcessId {
        self.process
    }

    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    pub fn value(&self) -> &Value {
        &self.value
    }
}

/// An outstanding poll, returned by [`History::invoke_poll`] and consumed by exactly one of
/// [`History::poll_ok`], [`History::poll_fail`] or [`History::poll_info`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "complete the poll with poll_ok, poll_fail or poll_info"]
pub struct PendingPoll {
    invoke: OpIndex,
    process: ProcessId,
}

impl PendingPoll {
    pub fn invoke_index(&self) -> OpIndex {
        self.invoke
    }

    pub fn process(&self) -> ProcessId {
        self.process
    }
}

/// Why a history's text or events were rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryError {
    /// Line `line` (1-based) is not JSON of the expected shape: bad syntax, a missing field, a wrong type,
    /// an unknown `type` or `f`.
    Json { line: usize, message: String },
    /// The event at position `position` (0-based, counting events, not lines) has `index` `found`.
    IndexOutOfOrder { position: usize, found: OpIndex },
    /// The event's value does not fit its `f` and `type` (e.g. an offset on a failed send).
    BadValue { index: OpIndex, f: Function, kind: EventKind, reason: &'static str },
    /// One poll result names the same partition twice.
    DuplicatePartitionInPoll { index: OpIndex, partition: Partition },
    /// An `ok` / `fail` / `info` of a send or poll without an outstanding invoke of the same `f` by the
    /// same process.
    CompletionWithoutInvoke { index: OpIndex, process: ProcessId, f: Function },
    /// A process invoked a poll while one of its operations (`pending`) was still outstanding, or a send while
    /// its poll `pending` was. (Sends may overlap other sends of the same process.)
    InvokeWhilePending { index: OpIndex, process: ProcessId, pending: OpIndex },
    /// A send's completion names a different partition than its invoke, or (when the process has exactly one
    /// send outstanding, `invoke`) a different value.
    SendCompletionMismatch { index: OpIndex, invoke: OpIndex },
    /// A value was sent twice (`first` and `index`); values must be unique across a history.
    DuplicateSendValue { index: OpIndex, first: OpIndex, value: Value },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Json { line, message } => write!(f, "history line {line}: {message}"),
            HistoryError::IndexOutOfOrder { position, found } => {
                write!(f, "event at position {position} has index {}, expected {position}", found.0)
            }
            HistoryError::BadValue { index, f: function, kind, reason } => {
                write!(f, "{index} ({kind} {function}): bad value: {reason}")
            }
            HistoryError::DuplicatePartitionInPoll { index, partition } => {
                write!(f, "{index}: poll result names partition {partition} twice")
            }
            HistoryError::CompletionWithoutInvoke { index, process, f: function } => {
                write!(f, "{index}: {process} completes a {function} it never invoked")
            }
            HistoryError::InvokeWhilePending { index, process, pending } => {
                write!(f, "{index}: {process} invokes while {pending} is still outstanding")
            }
            HistoryError::SendCompletionMismatch { index, invoke } => {
                write!(f, "{index}: send completion names a different partition or value than its invoke {invoke}")
            }
            HistoryError::DuplicateSendValue { index, first, value } => {
                write!(f, "{index}: value {value} was already sent by {first}; values must be unique")
            }
        }
    }
}

impl std::error::Error for HistoryError {}

/// A history: the events in the order they happened. Also the recorder workloads write into.
///
/// A workload with many concurrent processes shares one `History` (e.g. in an `Rc<RefCell<_>>` inside a
/// single-threaded simulation) and keeps each process's [`PendingSend`] / [`PendingPoll`] token across
/// its await points.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    events: Vec<Event>,
    /// Faults, interleaved with `events` by index (see the module invariants).
    nemesis: Vec<NemesisEvent>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The nemesis's fault events, in index order.
    pub fn nemesis_events(&self) -> &[NemesisEvent] {
        &self.nemesis
    }

    pub fn into_events(self) -> Vec<Event> {
        self.events
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Builds a history from events, e.g. ones a test mutated, after checking it is well-formed.
    pub fn from_events(events: Vec<Event>) -> Result<History, HistoryError> {
        let history = History { events, nemesis: Vec::new() };
        history.validate()?;
        Ok(history)
    }

    fn next_index(&self) -> OpIndex {
        OpIndex((self.events.len() + self.nemesis.len()) as u64)
    }

    fn push(&mut self, time_ns: u64, process: ProcessId, kind: EventKind, op: Op) -> OpIndex {
        let index = self.next_index();
        self.events.push(Event { index, time_ns, process, kind, op });
        index
    }

    /// Records (as `info`, process `nemesis`) that a fault `f` started or ended, with what it hit.
    pub fn nemesis(&mut self, time_ns: u64, f: impl Into<String>, value: serde_json::Value) -> OpIndex {
        let index = self.next_index();
        self.nemesis.push(NemesisEvent { index, time_ns, f: f.into(), value });
        index
    }

    /// Records the start of a send of `value` to `partition`.
    pub fn invoke_send(
        &mut self,
        process: ProcessId,
        time_ns: u64,
        partition: impl Into<Partition>,
        value: impl Into<Value>,
    ) -> PendingSend {
        let partition = partition.into();
        let value = value.into();
        let op = Op::Send { partition: partition.clone(), value: value.clone(), offset: None };
        let invoke = self.push(time_ns, process, EventKind::Invoke, op);
        PendingSend { invoke, process, partition, value }
    }

    /// Records that the send was acknowledged, at `offset` if the producer learned it
    /// (pass `Offset(n)` or `None`).
    pub fn send_ok(&mut self, pending: PendingSend, time_ns: u64, offset: impl Into<Option<Offset>>) -> OpIndex {
        let op = Op::Send { partition: pending.partition, value: pending.value, offset: offset.into() };
        self.push(time_ns, pending.process, EventKind::Ok, op)
    }

    /// Records that the send definitely did not happen.
    pub fn send_fail(&mut self, pending: PendingSend, time_ns: u64) -> OpIndex {
        let op = Op::Send { partition: pending.partition, value: pending.value, offset: None };
        self.push(time_ns, pending.process, EventKind::Fail, op)
    }

    /// Records that the send's outcome is unknown.
    pub fn send_info(&mut self, pending: PendingSend, time_ns: u64) -> OpIndex {
        let op = Op::Send { partition: pending.partition, value: pending.value, offset: None };
        self.push(time_ns, pending.process, EventKind::Info, op)
    }

    /// Records the start of a poll.
    pub fn invoke_poll(&mut self, process: ProcessId, time_ns: u64) -> PendingPoll {
        let invoke = self.push(time_ns, process, EventKind::Invoke, Op::Poll { reads: None });
        PendingPoll { invoke, process }
    }

    /// Records what the poll returned.
    pub fn poll_ok(&mut self, pending: PendingPoll, time_ns: u64, reads: PollReads) -> OpIndex {
        self.push(time_ns, pending.process, EventKind::Ok, Op::Poll { reads: Some(reads) })
    }

    /// Records that the poll definitely returned nothing and moved no position.
    pub fn poll_fail(&mut self, pending: PendingPoll, time_ns: u64) -> OpIndex {
        self.push(time_ns, pending.process, EventKind::Fail, Op::Poll { reads: None })
    }

    /// Records that the poll's outcome is unknown: the consumer may have moved past records nobody saw.
    pub fn poll_info(&mut self, pending: PendingPoll, time_ns: u64) -> OpIndex {
        self.push(time_ns, pending.process, EventKind::Info, Op::Poll { reads: None })
    }

    /// Records (as `ok`) that the consumer of `process` was assigned exactly `partitions`.
    pub fn assign<P: Into<Partition>>(
        &mut self,
        process: ProcessId,
        time_ns: u64,
        partitions: impl IntoIterator<Item = P>,
    ) -> OpIndex {
        let partitions = partitions.into_iter().map(Into::into).collect();
        self.push(time_ns, process, EventKind::Ok, Op::Assign { partitions })
    }

    /// Records (as `ok`) that the consumer of `process` subscribed and now owns `partitions`.
    pub fn subscribe<P: Into<Partition>>(
        &mut self,
        process: ProcessId,
        time_ns: u64,
        partitions: impl IntoIterator<Item = P>,
    ) -> OpIndex {
        let partitions = partitions.into_iter().map(Into::into).collect();
        self.push(time_ns, process, EventKind::Ok, Op::Subscribe { partitions })
    }

    /// Records (as `info`) that the client of `process` was torn down.
    pub fn crash(&mut self, process: ProcessId, time_ns: u64) -> OpIndex {
        self.push(time_ns, process, EventKind::Info, Op::Crash)
    }

    /// Checks the invariants in the module doc: indices in order, values shaped for their `f` and `type`,
    /// completions paired with invokes, a poll never overlapping another operation of its process, send
    /// values unique. Returns the first problem found.
    pub fn validate(&self) -> Result<(), HistoryError> {
        let mut outstanding: BTreeMap<ProcessId, Outstanding<'_>> = BTreeMap::new();
        let mut first_send_of_value: BTreeMap<&Value, OpIndex> = BTreeMap::new();
        // Indices over both lists together must be 0, 1, 2, ...: walk them merged.
        let mut nemesis = self.nemesis.iter().peekable();
        let mut position = 0usize;
        for event in &self.events {
            while nemesis.next_if(|fault| fault.index.0 == position as u64).is_some() {
                position += 1;
            }
            if event.index.0 != position as u64 {
                return Err(HistoryError::IndexOutOfOrder { position, found: event.index });
            }
            position += 1;
            if let Some(reason) = event.shape_problem() {
                return Err(HistoryError::BadValue {
                    index: event.index,
                    f: event.function(),
                    kind: event.kind,
                    reason,
                });
            }
            if !matches!(event.op, Op::Send { .. } | Op::Poll { .. }) {
                continue;
            }
            let process = outstanding.entry(event.process).or_default();
            if event.kind != EventKind::Invoke {
                process.complete(event)?;
                continue;
            }
            process.invoke(event)?;
            if let Op::Send { value, .. } = &event.op {
                if let Some(first) = first_send_of_value.insert(value, event.index) {
                    return Err(HistoryError::DuplicateSendValue { index: event.index, first, value: value.clone() });
                }
            }
        }
        for fault in nemesis {
            if fault.index.0 != position as u64 {
                return Err(HistoryError::IndexOutOfOrder { position, found: fault.index });
            }
            position += 1;
        }
        Ok(())
    }

    /// The canonical JSON Lines text: one event per line, each line ending in `\n`.
    pub fn to_jsonl(&self) -> String {
        let mut bytes = Vec::new();
        // Writing into memory has no I/O error, and every value we serialize is plain strings, integers and
        // string-keyed maps, which serde_json always accepts; a failure here is a bug in this module.
        self.write_jsonl(&mut bytes).expect("serializing a history into memory cannot fail");
        String::from_utf8(bytes).expect("serde_json always writes UTF-8")
    }

    /// Writes the canonical JSON Lines text to `out`.
    pub fn write_jsonl(&self, mut out: impl io::Write) -> io::Result<()> {
        let mut nemesis = self.nemesis.iter().peekable();
        for event in &self.events {
            while let Some(fault) = nemesis.next_if(|fault| fault.index < event.index) {
                serde_json::to_writer(&mut out, &WireNemesis::from(fault)).map_err(io::Error::from)?;
                out.write_all(b"\n")?;
            }
            serde_json::to_writer(&mut out, &WireEventOut::from(event)).map_err(io::Error::from)?;
            out.write_all(b"\n")?;
        }
        for fault in nemesis {
            serde_json::to_writer(&mut out, &WireNemesis::from(fault)).map_err(io::Error::from)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Parses JSON Lines text (blank lines are skipped; unknown top-level fields such as a Jepsen `error`
    /// are ignored) and checks the result with [`History::validate`].
    pub fn from_jsonl(text: &str) -> Result<History, HistoryError> {
        let mut events = Vec::new();
        let mut nemesis = Vec::new();
        for (line_idx, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(line, line_idx + 1)? {
                Line::Queue(event) => events.push(event),
                Line::Nemesis(fault) => nemesis.push(fault),
            }
        }
        let history = History { events, nemesis };
        history.validate()?;
        Ok(history)
    }

    /// A 64-bit FNV-1a hash of [`History::to_jsonl`]'s bytes: identical for identical histories in every run
    /// and process, so the simulation can print it as part of its trace hash.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = Fnv1a64::new();
        // The hasher's `write` never fails; see `to_jsonl` for why serialization cannot fail either.
        self.write_jsonl(&mut hasher).expect("hashing a history cannot fail");
        hasher.finish()
    }
}

/// What one process has outstanding while [`History::validate`] walks a history: one poll, or any number of
/// sends (a producer that pipelines batches), never both.
#[derive(Default)]
struct Outstanding<'h> {
    poll: Option<&'h Event>,
    /// Send invokes by value: values are unique, and a send's completion repeats its invoke's value, so the
    /// value pairs a completion with its invoke whatever order the sends complete in.
    sends: BTreeMap<&'h Value, &'h Event>,
}

impl<'h> Outstanding<'h> {
    /// Records a send or poll invoke, unless an outstanding operation forbids it: a poll may overlap nothing,
    /// a send only other sends.
    fn invoke(&mut self, event: &'h Event) -> Result<(), HistoryError> {
        let poll = self.poll.map(|poll| poll.index);
        let blocking = match &event.op {
            Op::Send { .. } => poll,
            _ => poll.or_else(|| self.sends.values().map(|send| send.index).min()),
        };
        if let Some(pending) = blocking {
            return Err(HistoryError::InvokeWhilePending { index: event.index, process: event.process, pending });
        }
        match &event.op {
            Op::Send { value, .. } => {
                self.sends.insert(value, event);
            }
            _ => self.poll = Some(event),
        }
        Ok(())
    }

    /// Pairs a send or poll completion with its outstanding invoke (a send's by value) and checks that a send
    /// completes the partition it was invoked for.
    fn complete(&mut self, event: &'h Event) -> Result<(), HistoryError> {
        let without_invoke =
            HistoryError::CompletionWithoutInvoke { index: event.index, process: event.process, f: event.function() };
        let Op::Send { partition, value, .. } = &event.op else {
            return self.poll.take().map(|_| ()).ok_or(without_invoke);
        };
        let invoke = match self.sends.remove(value) {
            Some(invoke) => invoke,
            // With one send outstanding, a completion of another value is that send's, mismatched.
            None if self.sends.len() == 1 => {
                let invoke = self.sends.values().next().map_or(event.index, |invoke| invoke.index);
                return Err(HistoryError::SendCompletionMismatch { index: event.index, invoke });
            }
            None => return Err(without_invoke),
        };
        match &invoke.op {
            Op::Send { partition: invoke_partition, .. } if invoke_partition == partition => Ok(()),
            _ => Err(HistoryError::SendCompletionMismatch { index: event.index, invoke: invoke.index }),
        }
    }
}

// ---- Wire format ------------------------------------------------------------------------------------------

/// The outgoing shape of one line. Field order here is the canonical field order of the text.
#[derive(Serialize)]
struct WireEventOut<'a> {
    index: OpIndex,
    time_ns: u64,
    process: ProcessId,
    #[serde(rename = "type")]
    kind: EventKind,
    f: Function,
    value: WireValueOut<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireValueOut<'a> {
    Null,
    Send {
        partition: &'a Partition,
        value: &'a Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<Offset>,
    },
    Reads(&'a PollReads),
    Partitions(&'a [Partition]),
}

impl<'a> From<&'a Event> for WireEventOut<'a> {
    fn from(event: &'a Event) -> WireEventOut<'a> {
        let value = match &event.op {
            Op::Send { partition, value, offset } => WireValueOut::Send { partition, value, offset: *offset },
            Op::Poll { reads: Some(reads) } => WireValueOut::Reads(reads),
            Op::Poll { reads: None } | Op::Crash => WireValueOut::Null,
            Op::Assign { partitions } | Op::Subscribe { partitions } => WireValueOut::Partitions(partitions),
        };
        WireEventOut {
            index: event.index,
            time_ns: event.time_ns,
            process: event.process,
            kind: event.kind,
            f: event.function(),
            value,
        }
    }
}

/// A nemesis line, both ways. Field order here is the canonical field order of the text.
#[derive(Serialize, Deserialize)]
struct WireNemesis {
    index: OpIndex,
    time_ns: u64,
    process: NemesisProcess,
    #[serde(rename = "type")]
    kind: NemesisKind,
    f: String,
    value: serde_json::Value,
}

/// The only `process` of a nemesis line: the string `"nemesis"`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum NemesisProcess {
    Nemesis,
}

/// The only `type` of a nemesis line: `"info"` (a fault's effect is never known to be complete).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum NemesisKind {
    Info,
}

impl From<&NemesisEvent> for WireNemesis {
    fn from(fault: &NemesisEvent) -> WireNemesis {
        WireNemesis {
            index: fault.index,
            time_ns: fault.time_ns,
            process: NemesisProcess::Nemesis,
            kind: NemesisKind::Info,
            f: fault.f.clone(),
            value: fault.value.clone(),
        }
    }
}

/// The zeroth parsing pass: is this a client's line (a number) or the nemesis's (a string)?
#[derive(Deserialize)]
struct WireProcessProbe {
    process: serde_json::Value,
}

/// One parsed line.
enum Line {
    Queue(Event),
    Nemesis(NemesisEvent),
}

/// The first parsing pass: everything but `value`, whose shape depends on `f`.
#[derive(Deserialize)]
struct WireHeader {
    index: OpIndex,
    time_ns: u64,
    process: ProcessId,
    #[serde(rename = "type")]
    kind: EventKind,
    f: Function,
}

/// The second parsing pass: only `value`, as the type `f` calls for.
#[derive(Deserialize)]
struct WireValueField<T> {
    value: T,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSend {
    partition: Partition,
    value: Value,
    #[serde(default)]
    offset: Option<Offset>,
}

/// A poll result as a list of entries, so that a partition named twice is an error rather than silently
/// collapsed (a checker that dropped reads could miss anomalies).
struct WireReads(Vec<(Partition, Vec<(Offset, Value)>)>);

impl<'de> Deserialize<'de> for WireReads {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<WireReads, D::Error> {
        struct ReadsVisitor;

        impl<'de> Visitor<'de> for ReadsVisitor {
            type Value = WireReads;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object mapping partition to a list of [offset, value] pairs")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireReads, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<Partition, Vec<(Offset, Value)>>()? {
                    entries.push(entry);
                }
                Ok(WireReads(entries))
            }
        }

        deserializer.deserialize_map(ReadsVisitor)
    }
}

fn json_error(line: usize, error: serde_json::Error) -> HistoryError {
    HistoryError::Json { line, message: error.to_string() }
}

fn parse_line(line: &str, line_number: usize) -> Result<Line, HistoryError> {
    let probe: WireProcessProbe = serde_json::from_str(line).map_err(|e| json_error(line_number, e))?;
    if probe.process.is_string() {
        let wire: WireNemesis = serde_json::from_str(line).map_err(|e| json_error(line_number, e))?;
        return Ok(Line::Nemesis(NemesisEvent {
            index: wire.index,
            time_ns: wire.time_ns,
            f: wire.f,
            value: wire.value,
        }));
    }
    let header: WireHeader = serde_json::from_str(line).map_err(|e| json_error(line_number, e))?;
    let op = match header.f {
        Function::Send => {
            let wire: WireValueField<WireSend> = serde_json::from_str(line).map_err(|e| json_error(line_number, e))?;
            Op::Send { partition: wire.value.partition, value: wire.value.value, offset: wire.value.offset }
        }
        Function::Poll => {
            let wire: WireValueField<Option<WireReads>> =
                serde_json::from_str(line).map_err(|e| json_error(line_number, e))?;
            let reads = match wire.value {
                None => None,
                Some(WireReads(entries)) => {
                    let mut reads = PollReads::new();
                    for (partition, records) in entries {
                        if reads.contains_key(&partition) {
                            return Err(HistoryError::DuplicatePartitionInPoll { index: header.index, partition });
                        }
                        reads.insert(partition, records);
                    }
                    Some(reads)
                }
            };
            Op::Poll { reads }
        }
        Function::Assign | Function::Subscribe => {
            let wire: WireValueField<Vec<Partition>> =
                serde_json::from_str(line).map_err(|e| json_error(line_number, e))?;
            if header.f == Function::Assign {
                Op::Assign { partitions: wire.value }
            } else {
                Op::Subscribe { partitions: wire.value }
            }
        }
        Function::Crash => {
            let _: WireValueField<()> = serde_json::from_str(line).map_err(|e| json_error(line_number, e))?;
            Op::Crash
        }
    };
    Ok(Line::Queue(Event {
        index: header.index,
        time_ns: header.time_ns,
        process: header.process,
        kind: header.kind,
        op,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"index": 0, "time_ns": 1200, "process": 3, "type": "invoke", "f": "send", "value": {"partition": "t/0", "value": "3-17"}}
{"index": 1, "time_ns": 9800, "process": 3, "type": "ok",     "f": "send", "value": {"partition": "t/0", "value": "3-17", "offset": 41}}
{"index": 2, "time_ns": 9900, "process": 5, "type": "invoke", "f": "poll", "value": null}
{"index": 3, "time_ns": 15000, "process": 5, "type": "ok",    "f": "poll", "value": {"t/0": [[40, "2-9"], [41, "3-17"]]}}
{"index": 4, "time_ns": 15100, "process": 5, "type": "ok",    "f": "assign", "value": ["t/0", "t/1"]}
"#;

    fn example_recorded() -> History {
        let mut h = History::new();
        let send = h.invoke_send(ProcessId(3), 1200, "t/0", "3-17");
        h.send_ok(send, 9800, Offset(41));
        let poll = h.invoke_poll(ProcessId(5), 9900);
        let mut reads = PollReads::new();
        reads.insert("t/0".into(), vec![(Offset(40), "2-9".into()), (Offset(41), "3-17".into())]);
        h.poll_ok(poll, 15000, reads);
        h.assign(ProcessId(5), 15100, ["t/0", "t/1"]);
        h
    }

    #[test]
    fn parses_the_format_doc_example_into_what_the_recorder_records() {
        let parsed = History::from_jsonl(EXAMPLE).unwrap();
        assert_eq!(parsed, example_recorded());
    }

    #[test]
    fn writes_canonical_compact_lines() {
        let text = example_recorded().to_jsonl();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            r#"{"index":1,"time_ns":9800,"process":3,"type":"ok","f":"send","value":{"partition":"t/0","value":"3-17","offset":41}}"#
        );
        assert_eq!(lines[2], r#"{"index":2,"time_ns":9900,"process":5,"type":"invoke","f":"poll","value":null}"#);
        assert_eq!(
            lines[3],
            r#"{"index":3,"time_ns":15000,"process":5,"type":"ok","f":"poll","value":{"t/0":[[40,"2-9"],[41,"3-17"]]}}"#
        );
        assert!(text.ends_with('\n'));
        let mut written = Vec::new();
        example_recorded().write_jsonl(&mut written).unwrap();
        assert_eq!(written, text.as_bytes());
    }

    #[test]
    fn recorder_writes_crash_subscribe_and_indeterminate_outcomes() {
        let mut h = History::new();
        let send = h.invoke_send(ProcessId(1), 10, Partition::of_topic("t", 2), "1-0");
        assert_eq!(send.invoke_index(), OpIndex(0));
        assert_eq!(h.send_info(send, 20), OpIndex(1));
        let send = h.invoke_send(ProcessId(1), 30, "t/2", "1-1");
        h.send_fail(send, 40);
        let send = h.invoke_send(ProcessId(1), 50, "t/2", "1-2");
        h.send_ok(send, 60, None);
        let poll = h.invoke_poll(ProcessId(2), 70);
        h.poll_info(poll, 80);
        let poll = h.invoke_poll(ProcessId(2), 90);
        h.poll_fail(poll, 100);
        h.subscribe(ProcessId(2), 110, vec![Partition::from("t/2")]);
        h.crash(ProcessId(2), 120);
        assert!(h.validate().is_ok());
        let text = h.to_jsonl();
        assert!(text.contains(r#""type":"info","f":"crash","value":null"#), "{text}");
        assert!(text.contains(r#""type":"ok","f":"send","value":{"partition":"t/2","value":"1-2"}}"#), "{text}");
        assert_eq!(History::from_jsonl(&text).unwrap(), h);
    }

    #[test]
    fn nemesis_events_interleave_by_index_and_round_trip() {
        let mut h = History::new();
        let send = h.invoke_send(ProcessId(1), 10, "t/0", "1-0");
        let start = h.nemesis(15, "partition", serde_json::json!({"groups": [[1, 2], [3, 4, 5]]}));
        assert_eq!(start, OpIndex(1));
        assert_eq!(h.send_ok(send, 20, Offset(0)), OpIndex(2));
        h.nemesis(30, "heal", serde_json::Value::Null);
        assert!(h.validate().is_ok());
        let text = h.to_jsonl();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            r#"{"index":1,"time_ns":15,"process":"nemesis","type":"info","f":"partition","value":{"groups":[[1,2],[3,4,5]]}}"#
        );
        assert!(lines[3].contains(r#""process":"nemesis""#) && lines[3].contains(r#""f":"heal""#), "{text}");
        let parsed = History::from_jsonl(&text).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(parsed.events().len(), 2);
        assert_eq!(parsed.nemesis_events().len(), 2);
        // The format file's own nemesis example parses.
        let example = r#"{"index": 0, "time_ns": 16000, "process": "nemesis", "type": "info", "f": "partition", "value": {"groups": [[1, 2], [3, 4, 5]]}}"#;
        assert_eq!(History::from_jsonl(example).unwrap().nemesis_events()[0].f, "partition");
        // A nemesis line is always info, from the process "nemesis", and takes its place in the indices.
        let not_info = r#"{"index":0,"time_ns":0,"process":"nemesis","type":"ok","f":"kill","value":null}"#;
        assert!(matches!(error_of(not_info), HistoryError::Json { line: 1, .. }));
        let other_name = r#"{"index":0,"time_ns":0,"process":"chaos","type":"info","f":"kill","value":null}"#;
        assert!(matches!(error_of(other_name), HistoryError::Json { line: 1, .. }));
        let gap = r#"{"index":1,"time_ns":0,"process":"nemesis","type":"info","f":"kill","value":null}"#;
        assert_eq!(error_of(gap), HistoryError::IndexOutOfOrder { position: 0, found: OpIndex(1) });
        let clash = format!("{}\n{}", lines[0], lines[3].replace(r#""index":3"#, r#""index":0"#));
        assert!(History::from_jsonl(&clash).is_err(), "two lines with index 0");
    }

    #[test]
    fn fingerprint_is_fnv1a_of_the_text_and_pinned() {
        let h = example_recorded();
        let mut expected: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in h.to_jsonl().bytes() {
            expected ^= u64::from(byte);
            expected = expected.wrapping_mul(0x0000_0100_0000_01b3);
        }
        assert_eq!(h.fingerprint(), expected);
        // Pinned so that a change to the text format (and so to every simulation trace hash) is deliberate.
        assert_eq!(h.fingerprint(), 0xb0d9_a212_5f48_788b, "{:#x}", h.fingerprint());
        assert_eq!(History::new().fingerprint(), 0xcbf2_9ce4_8422_2325);
    }

    fn error_of(text: &str) -> HistoryError {
        History::from_jsonl(text).unwrap_err()
    }

    #[test]
    fn rejects_bad_json_with_the_line_number() {
        let text = format!("{}\n\n{{\"index\": 1,", example_recorded().to_jsonl().lines().next().unwrap());
        assert!(matches!(error_of(&text), HistoryError::Json { line: 3, .. }), "{:?}", error_of(&text));
        assert!(matches!(error_of("[1,2]"), HistoryError::Json { line: 1, .. }));
        let unknown_f = r#"{"index":0,"time_ns":0,"process":0,"type":"ok","f":"frobnicate","value":null}"#;
        assert!(matches!(error_of(unknown_f), HistoryError::Json { line: 1, .. }));
        let negative_offset = r#"{"index":0,"time_ns":0,"process":0,"type":"ok","f":"send","value":{"partition":"t/0","value":"a","offset":-1}}"#;
        assert!(matches!(error_of(negative_offset), HistoryError::Json { .. }));
        let extra_field_in_value = r#"{"index":0,"time_ns":0,"process":0,"type":"invoke","f":"send","value":{"partition":"t/0","value":"a","x":1}}"#;
        assert!(matches!(error_of(extra_field_in_value), HistoryError::Json { .. }));
        let missing_value = r#"{"index":0,"time_ns":0,"process":0,"type":"info","f":"crash"}"#;
        assert!(matches!(error_of(missing_value), HistoryError::Json { .. }));
    }

    #[test]
    fn ignores_unknown_top_level_fields() {
        let text = r#"{"index":0,"time_ns":0,"process":0,"type":"invoke","f":"poll","value":null}
{"index":1,"time_ns":5,"process":0,"type":"fail","f":"poll","value":null,"error":"timeout"}"#;
        assert_eq!(History::from_jsonl(text).unwrap().len(), 2);
    }

    #[test]
    fn rejects_structural_problems() {
        let skipped_index = r#"{"index":1,"time_ns":0,"process":0,"type":"info","f":"crash","value":null}"#;
        assert_eq!(error_of(skipped_index), HistoryError::IndexOutOfOrder { position: 0, found: OpIndex(1) });

        let offset_on_invoke = r#"{"index":0,"time_ns":0,"process":0,"type":"invoke","f":"send","value":{"partition":"t/0","value":"a","offset":3}}"#;
        assert!(matches!(error_of(offset_on_invoke), HistoryError::BadValue { index: OpIndex(0), .. }));

        let ok_poll_without_reads = r#"{"index":0,"time_ns":0,"process":0,"type":"invoke","f":"poll","value":null}
{"index":1,"time_ns":0,"process":0,"type":"ok","f":"poll","value":null}"#;
        assert!(matches!(error_of(ok_poll_without_reads), HistoryError::BadValue { index: OpIndex(1), .. }));

        let duplicate_partition = r#"{"index":0,"time_ns":0,"process":0,"type":"invoke","f":"poll","value":null}
{"index":1,"time_ns":0,"process":0,"type":"ok","f":"poll","value":{"t/0":[[0,"a"]],"t/0":[[1,"b"]]}}"#;
        assert_eq!(
            error_of(duplicate_partition),
            HistoryError::DuplicatePartitionInPoll { index: OpIndex(1), partition: "t/0".into() }
        );

        let orphan_completion = r#"{"index":0,"time_ns":0,"process":4,"type":"fail","f":"poll","value":null}"#;
        assert_eq!(
            error_of(orphan_completion),
            HistoryError::CompletionWithoutInvoke { index: OpIndex(0), process: ProcessId(4), f: Function::Poll }
        );

        let double_invoke = r#"{"index":0,"time_ns":0,"process":4,"type":"invoke","f":"poll","value":null}
{"index":1,"time_ns":0,"process":4,"type":"invoke","f":"send","value":{"partition":"t/0","value":"a"}}"#;
        assert_eq!(
            error_of(double_invoke),
            HistoryError::InvokeWhilePending { index: OpIndex(1), process: ProcessId(4), pending: OpIndex(0) }
        );

        let mismatch = r#"{"index":0,"time_ns":0,"process":4,"type":"invoke","f":"send","value":{"partition":"t/0","value":"a"}}
{"index":1,"time_ns":0,"process":4,"type":"ok","f":"send","value":{"partition":"t/0","value":"b","offset":0}}"#;
        assert_eq!(error_of(mismatch), HistoryError::SendCompletionMismatch { index: OpIndex(1), invoke: OpIndex(0) });

        let mut h = History::new();
        let send = h.invoke_send(ProcessId(0), 0, "t/0", "same");
        h.send_ok(send, 1, Offset(0));
        let send = h.invoke_send(ProcessId(1), 2, "t/1", "same");
        h.send_ok(send, 3, Offset(0));
        assert_eq!(
            h.validate(),
            Err(HistoryError::DuplicateSendValue { index: OpIndex(2), first: OpIndex(0), value: "same".into() })
        );
        // Every error has a readable message.
        assert!(h.validate().unwrap_err().to_string().contains("already sent"));
    }

    #[test]
    fn a_process_may_have_several_sends_in_flight_but_a_poll_overlaps_nothing() {
        let mut h = History::new();
        let a = h.invoke_send(ProcessId(1), 0, "t/0", "a");
        let b = h.invoke_send(ProcessId(1), 1, "t/0", "b");
        let c = h.invoke_send(ProcessId(1), 2, "t/1", "c");
        // Pipelined sends complete in any order; each completion pairs with its invoke by value.
        h.send_ok(b, 3, Offset(1));
        h.send_info(c, 4);
        h.send_ok(a, 5, Offset(0));
        assert_eq!(h.validate(), Ok(()));
        assert_eq!(History::from_jsonl(&h.to_jsonl()).as_ref(), Ok(&h));

        let mut poll_among_sends = h.clone();
        let _d = poll_among_sends.invoke_send(ProcessId(1), 6, "t/0", "d");
        let _e = poll_among_sends.invoke_send(ProcessId(1), 7, "t/0", "e");
        let _poll = poll_among_sends.invoke_poll(ProcessId(1), 8);
        assert_eq!(
            poll_among_sends.validate(),
            Err(HistoryError::InvokeWhilePending { index: OpIndex(8), process: ProcessId(1), pending: OpIndex(6) })
        );

        let two_out = r#"{"index":0,"time_ns":0,"process":4,"type":"invoke","f":"send","value":{"partition":"t/0","value":"a"}}
{"index":1,"time_ns":0,"process":4,"type":"invoke","f":"send","value":{"partition":"t/0","value":"b"}}"#;
        let unknown_value = format!(
            "{two_out}\n{}",
            r#"{"index":2,"time_ns":0,"process":4,"type":"ok","f":"send","value":{"partition":"t/0","value":"c","offset":0}}"#
        );
        assert_eq!(
            error_of(&unknown_value),
            HistoryError::CompletionWithoutInvoke { index: OpIndex(2), process: ProcessId(4), f: Function::Send }
        );
        let other_partition = format!(
            "{two_out}\n{}",
            r#"{"index":2,"time_ns":0,"process":4,"type":"info","f":"send","value":{"partition":"t/1","value":"b"}}"#
        );
        assert_eq!(
            error_of(&other_partition),
            HistoryError::SendCompletionMismatch { index: OpIndex(2), invoke: OpIndex(1) }
        );
        // Another process's outstanding send is no invoke for this one's completion.
        let other_process = format!(
            "{two_out}\n{}",
            r#"{"index":2,"time_ns":0,"process":5,"type":"ok","f":"send","value":{"partition":"t/0","value":"a","offset":0}}"#
        );
        assert_eq!(
            error_of(&other_process),
            HistoryError::CompletionWithoutInvoke { index: OpIndex(2), process: ProcessId(5), f: Function::Send }
        );
    }
}
