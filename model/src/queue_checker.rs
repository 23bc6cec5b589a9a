//! A checker for queue histories, in the spirit of Jepsen's kafka workload checker.
//!
//! # What goes in, what comes out
//!
//! In: one [`History`] (see [`crate::history`]) and [`CheckOptions`] ([`check`] uses the defaults,
//! [`check_with`] takes them). Out: a [`QueueReport`] listing every anomaly found, each with the partition,
//! offset, value and op indices needed to find it in the history, plus counts and a short human-readable
//! [`fmt::Display`] summary.
//!
//! # Anomalies (Jepsen's names)
//!
//! - `lost-write`: a send acknowledged `ok` at an offset, whose value no poll of its partition ever
//!   returned, although some poll of that partition read at or past that offset.
//! - `unseen`: a send acknowledged `ok` at an offset, whose value no poll of its partition returned and no
//!   poll read that far. Histories end with a phase that polls every partition from offset 0, so by default
//!   unseen counts against validity ([`QueueReport::is_valid`]); use
//!   [`QueueReport::is_valid_ignoring_unseen`] for a history cut off mid-run.
//! - `duplicate`: one value observed at more than one (partition, offset), by polls or by its send's ack.
//! - `inconsistent-offsets`: one (partition, offset) observed with more than one value.
//! - `G1a`: a poll returned a value that was never sent, whose send definitely failed, or (a phantom in
//!   that partition) that was sent to another partition.
//! - `poll-skip`: a process's consecutive reads of a partition jump over an offset known to exist (some
//!   poll read it or some send was acknowledged at it).
//! - `nonmonotonic-poll`: a process read an offset of a partition not greater than the previous offset it
//!   read there, within one poll or across consecutive polls.
//! - `nonmonotonic-send`: a process's send to a partition was acknowledged at an offset not above one of its
//!   acks there that completed before this send was invoked (a process may have several sends in flight;
//!   only the real-time order counts).
//! - `lost-read`: a poll returned a value at an offset (so the offset was committed), and an operation invoked
//!   after that poll completed shows the log lost it: it found another value at that offset (acked or read
//!   there), or a send was acknowledged at a lower offset (a committed log only grows, so a later append
//!   lands past every offset read before it). This is the signature of records served before they were
//!   durable and then dropped by a crash. The first case is also an `inconsistent-offsets`; this one adds
//!   the order (read first, replaced later) and also catches a log that lost the offset and was never read
//!   there again.
//! - `reordered-send` (Keel's own; only with [`CheckOptions::exactly_once`]): two sends by one process to one
//!   partition, both in the log (acknowledged at an offset or read by a poll), where the one invoked later
//!   sits at the lower offset. See below.
//!
//! # Exactly-once mode
//!
//! An idempotent producer appends each record once and in the order it was sent, even when it retries.
//! With [`CheckOptions::exactly_once`] the checker holds a history to that:
//!
//! - a send acknowledged `ok` at an offset appears exactly once: not lost or unseen, not a `duplicate`;
//! - a send that ended `info` or never completed appears at most once (more is a `duplicate`);
//! - a send that ended `fail` does not appear (`G1a`);
//! - `reordered-send`: per process and partition, the sends that appear in the log sit in the order they
//!   were invoked. A send stands at the lowest offset it appears at in the partition it was sent to (a
//!   second copy is a `duplicate` of its own). A `crash` of the process ends the promise: its next client
//!   is a new producer, and a send of the old one still in flight may land after the new one's. The
//!   report lists each pair of sends adjacent in invoke order that goes down (a sequence is out of order
//!   exactly when some adjacent pair is), so a send that landed far too late is reported once.
//!
//! The first three rules hold in both modes: `duplicate` and `G1a` always make a report invalid. So the
//! mode adds `reordered-send` only, and a report says which mode judged it. The workload must record a
//! send's invoke in the order it hands sends to the producer (for example by recording under the same
//! lock that enqueues), or two concurrent sends of one process may look reordered when they are not.
//!
//! Per-process poll tracking restarts at every `assign`, `subscribe` or `crash` of that process, since the
//! consumer's position legitimately jumps there. A poll that ends `info` may have consumed records nobody
//! saw, so the next read of each partition is not checked for skips (but still for going backwards).
//! A workload in subscribe mode must record rebalances as `subscribe`/`assign` events, or rebalances will
//! show up as skips and nonmonotonic polls.
//!
//! Sends that end `info`, that never complete, or that are acknowledged without an offset (acks=none
//! style) are indeterminate: they may appear or not, and can be neither lost nor unseen; appearing at more
//! than one position is still a duplicate.
//!
//! # Invariants
//!
//! The checker is pure and deterministic (ordered maps only, no hashing with random seeds): the same
//! history always yields the same report, in the same order. It never panics, whatever the history; a
//! history that fails [`History::validate`] is checked anyway, best-effort, and the problem is reported in
//! [`QueueReport::history_error`], which makes the report invalid.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::history::{Event, EventKind, History, HistoryError, Offset, Op, OpIndex, Partition, ProcessId, Value};

/// How many examples of each anomaly kind [`QueueReport`]'s `Display` lists.
pub const EXAMPLES_PER_KIND_MAX: usize = 10;

/// How many skipped offsets one [`PollSkip`] lists; `skipped_count` has the full count.
pub const SKIPPED_OFFSETS_LISTED_MAX: usize = 16;

/// The kinds of anomaly the checker knows, named as in Jepsen's kafka workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnomalyKind {
    LostWrite,
    Unseen,
    Duplicate,
    InconsistentOffsets,
    G1a,
    PollSkip,
    NonmonotonicPoll,
    NonmonotonicSend,
    LostRead,
    ReorderedSend,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 10] = [
        AnomalyKind::LostWrite,
        AnomalyKind::Unseen,
        AnomalyKind::Duplicate,
        AnomalyKind::InconsistentOffsets,
        AnomalyKind::G1a,
        AnomalyKind::PollSkip,
        AnomalyKind::NonmonotonicPoll,
        AnomalyKind::NonmonotonicSend,
        AnomalyKind::LostRead,
        AnomalyKind::ReorderedSend,
    ];

    /// Jepsen's name for the anomaly.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::LostWrite => "lost-write",
            AnomalyKind::Unseen => "unseen",
            AnomalyKind::Duplicate => "duplicate",
            AnomalyKind::InconsistentOffsets => "inconsistent-offsets",
            AnomalyKind::G1a => "G1a",
            AnomalyKind::PollSkip => "poll-skip",
            AnomalyKind::NonmonotonicPoll => "nonmonotonic-poll",
            AnomalyKind::NonmonotonicSend => "nonmonotonic-send",
            AnomalyKind::LostRead => "lost-read",
            AnomalyKind::ReorderedSend => "reordered-send",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The ops that observed one value at one (partition, offset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Witnesses {
    /// Send `ok` events that acknowledged the value at this position.
    pub acked_by: Vec<OpIndex>,
    /// Poll `ok` events that returned the value at this position.
    pub read_by: Vec<OpIndex>,
}

impl fmt::Display for Witnesses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut separator = "";
        if let Some(ack) = self.acked_by.first() {
            write!(f, "acked by {ack}")?;
            separator = ", ";
        }
        if let Some(read) = self.read_by.first() {
            write!(f, "{separator}read by {read}")?;
            if self.read_by.len() > 1 {
                write!(f, " (+{} more)", self.read_by.len() - 1)?;
            }
        }
        Ok(())
    }
}

/// An acknowledged send whose value no poll of its partition returned (a lost write or an unseen one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingWrite {
    pub partition: Partition,
    pub offset: Offset,
    pub value: Value,
    pub process: ProcessId,
    pub send_invoke: OpIndex,
    pub send_ok: OpIndex,
    /// The highest offset any poll read in the partition, and the first poll that read it. For a lost write
    /// this is at or past `offset`; for an unseen one it is below, or `None` if the partition was never read.
    pub max_read: Option<(Offset, OpIndex)>,
}

/// One value observed at more than one position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    pub value: Value,
    /// Every position the value was observed at, in (partition, offset) order.
    pub positions: Vec<(Partition, Offset, Witnesses)>,
}

/// One (partition, offset) observed with more than one value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InconsistentOffset {
    pub partition: Partition,
    pub offset: Offset,
    /// Every value observed there, in value order.
    pub values: Vec<(Value, Witnesses)>,
}

/// Why a read value is a G1a (aborted or phantom) read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum G1aReason {
    /// No send of this value appears in the history.
    NeverSent,
    /// The only send of this value definitely failed.
    SendFailed { send_fail: OpIndex },
    /// The value was sent to another partition, so it cannot be in this one.
    WrongPartition { sent_to: Partition, send_invoke: OpIndex },
}

/// A value read at one (partition, offset) that cannot legitimately be there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct G1a {
    pub partition: Partition,
    pub offset: Offset,
    pub value: Value,
    /// The polls that returned it there.
    pub read_by: Vec<OpIndex>,
    pub reason: G1aReason,
}

/// A process's reads of a partition jumped from `from_offset` to `to_offset` over offsets known to exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollSkip {
    pub process: ProcessId,
    pub partition: Partition,
    /// The poll that read `from_offset` (equal to `poll` when the skip is inside one poll).
    pub previous_poll: OpIndex,
    /// The poll that read `to_offset`.
    pub poll: OpIndex,
    pub from_offset: Offset,
    pub to_offset: Offset,
    /// The first known offsets strictly between the two, at most [`SKIPPED_OFFSETS_LISTED_MAX`].
    pub skipped: Vec<Offset>,
    pub skipped_count: usize,
}

/// A process read `offset` of a partition after `previous_offset`, which is not smaller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonmonotonicPoll {
    pub process: ProcessId,
    pub partition: Partition,
    /// The poll that read `previous_offset` (equal to `poll` when the disorder is inside one poll).
    pub previous_poll: OpIndex,
    pub poll: OpIndex,
    pub previous_offset: Offset,
    pub offset: Offset,
}

/// A process's send to a partition was acknowledged at `offset`, not above `previous_offset`: the highest of
/// its acks there that completed before this send was invoked (the first such ack on a tie).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonmonotonicSend {
    pub process: ProcessId,
    pub partition: Partition,
    pub previous_send_ok: OpIndex,
    pub previous_offset: Offset,
    pub previous_value: Value,
    pub send_ok: OpIndex,
    pub offset: Offset,
    pub value: Value,
}

/// What showed that a read value was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostReadReason {
    /// An operation invoked after the read completed found `value` at the same offset: a send acknowledged
    /// there (`by` is its `ok`) or a poll that read it there (`by` is the poll's `ok`).
    Overwritten { value: Value, by: OpIndex },
    /// A send invoked after the read completed was acknowledged at `offset`, below the read one: the log's
    /// end had gone back past the read offset. Of all such sends, the one acknowledged lowest (the first of
    /// them on a tie).
    Truncated { offset: Offset, value: Value, send_ok: OpIndex },
}

/// A value a poll returned at (partition, offset), which the log later lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostRead {
    pub partition: Partition,
    pub offset: Offset,
    pub value: Value,
    /// The first poll that returned the value at this position.
    pub read_by: OpIndex,
    pub reason: LostReadReason,
}

/// One send of a [`ReorderedSend`] pair, where it sits in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedSend {
    pub invoke: OpIndex,
    pub value: Value,
    /// The lowest offset the value appears at in the partition it was sent to.
    pub offset: Offset,
    /// The ops that showed it there.
    pub witnesses: Witnesses,
}

/// Two sends by one process to one partition (in one client incarnation), adjacent in invoke order among
/// its sends that appear in the log, where `later` (invoked after `earlier`) sits at the lower offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReorderedSend {
    pub process: ProcessId,
    pub partition: Partition,
    pub earlier: LoggedSend,
    pub later: LoggedSend,
}

/// What the checker holds a history to, beyond the anomalies it always reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// The producers are idempotent: also report `reordered-send` (see "Exactly-once mode" in the module
    /// doc).
    pub exactly_once: bool,
    /// The topic is compacted (ADR 0022) and each value's key is [`compaction_key`] of it among this
    /// many: a position whose value has a later position of the same key in its partition may be
    /// gone (superseded), so it is neither lost nor unseen, and reads may pass over it.
    pub compaction_keys: Option<u64>,
}

/// The key a compacted-topic workload gives `value`, one of `keys` (FNV-1a of the value).
pub fn compaction_key(value: &str, keys: u64) -> u64 {
    crate::fnv::fnv1a_64(value.as_bytes()) % keys.max(1)
}

/// Counts of what the history contains, for context in reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub events: usize,
    pub sends_invoked: usize,
    pub sends_ok_with_offset: usize,
    pub sends_ok_without_offset: usize,
    pub sends_failed: usize,
    pub sends_info: usize,
    /// Sends invoked and never completed.
    pub sends_pending: usize,
    pub polls_ok: usize,
    /// Records returned by all `ok` polls together.
    pub records_read: usize,
    pub distinct_values_read: usize,
    /// Sends acknowledged at an offset below their partition's final log start (retention deleted
    /// them; see [`check_retained`]) that no poll read: neither lost nor unseen.
    pub sends_ok_expired: usize,
    /// Sends acknowledged at a position that a later record of their key supersedes, that no poll
    /// read (compacted topics only): compaction may have removed them.
    pub sends_ok_superseded: usize,
}

/// Everything [`check`] or [`check_with`] found. Every list is sorted deterministically (by partition and
/// offset, by value, or by op index).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueReport {
    /// The options the history was checked with.
    pub options: CheckOptions,
    pub stats: QueueStats,
    /// Set when the history is not well-formed (see [`History::validate`]); the anomalies below were then
    /// found best-effort.
    pub history_error: Option<HistoryError>,
    pub lost_writes: Vec<MissingWrite>,
    pub unseen: Vec<MissingWrite>,
    pub duplicates: Vec<Duplicate>,
    pub inconsistent_offsets: Vec<InconsistentOffset>,
    pub g1a: Vec<G1a>,
    pub poll_skips: Vec<PollSkip>,
    pub nonmonotonic_polls: Vec<NonmonotonicPoll>,
    pub nonmonotonic_sends: Vec<NonmonotonicSend>,
    pub lost_reads: Vec<LostRead>,
    /// Found only with [`CheckOptions::exactly_once`]; always empty otherwise. In the order of the later
    /// send's invoke.
    pub reordered_sends: Vec<ReorderedSend>,
}

impl QueueReport {
    /// Whether the history is well-formed and shows no anomaly at all, unseen writes included (histories
    /// end with a phase that reads every partition, so an acked write still unseen then is lost).
    pub fn is_valid(&self) -> bool {
        self.is_valid_ignoring_unseen() && self.unseen.is_empty()
    }

    /// Like [`QueueReport::is_valid`], but for a history without a final read-everything phase, where an
    /// acked write nobody has read yet is not an error.
    pub fn is_valid_ignoring_unseen(&self) -> bool {
        self.history_error.is_none()
            && AnomalyKind::ALL.iter().all(|kind| *kind == AnomalyKind::Unseen || self.count(*kind) == 0)
    }

    /// How many anomalies of `kind` were found.
    pub fn count(&self, kind: AnomalyKind) -> usize {
        match kind {
            AnomalyKind::LostWrite => self.lost_writes.len(),
            AnomalyKind::Unseen => self.unseen.len(),
            AnomalyKind::Duplicate => self.duplicates.len(),
            AnomalyKind::InconsistentOffsets => self.inconsistent_offsets.len(),
            AnomalyKind::G1a => self.g1a.len(),
            AnomalyKind::PollSkip => self.poll_skips.len(),
            AnomalyKind::NonmonotonicPoll => self.nonmonotonic_polls.len(),
            AnomalyKind::NonmonotonicSend => self.nonmonotonic_sends.len(),
            AnomalyKind::LostRead => self.lost_reads.len(),
            AnomalyKind::ReorderedSend => self.reordered_sends.len(),
        }
    }

    /// The kinds with at least one anomaly, in [`AnomalyKind::ALL`] order.
    pub fn anomaly_kinds(&self) -> Vec<AnomalyKind> {
        AnomalyKind::ALL.into_iter().filter(|kind| self.count(*kind) > 0).collect()
    }

    /// The number of anomalies of all kinds together.
    pub fn anomaly_count(&self) -> usize {
        AnomalyKind::ALL.into_iter().map(|kind| self.count(kind)).sum()
    }

    /// Lost and unseen writes together, by partition and offset: after a final read-everything phase, both
    /// mean an acknowledged write is gone.
    pub fn lost_or_unseen(&self) -> Vec<&MissingWrite> {
        let mut missing: Vec<&MissingWrite> = self.lost_writes.iter().chain(&self.unseen).collect();
        missing.sort_by(|a, b| (&a.partition, a.offset, &a.value).cmp(&(&b.partition, b.offset, &b.value)));
        missing
    }

    /// One line per example of `kind`, at most `limit`.
    pub fn example_lines(&self, kind: AnomalyKind, limit: usize) -> Vec<String> {
        fn take<T>(items: &[T], limit: usize, line: impl Fn(&T) -> String) -> Vec<String> {
            items.iter().take(limit).map(line).collect()
        }
        match kind {
            AnomalyKind::LostWrite | AnomalyKind::Unseen => {
                let items = if kind == AnomalyKind::LostWrite { &self.lost_writes } else { &self.unseen };
                take(items, limit, |w| {
                    let read = match w.max_read {
                        Some((offset, poll)) => format!("partition read up to {offset} ({poll})"),
                        None => "partition never read".to_owned(),
                    };
                    format!(
                        "{}@{} {}: sent by {} ({}), acked by {}; {read}",
                        w.partition, w.offset, w.value, w.process, w.send_invoke, w.send_ok
                    )
                })
            }
            AnomalyKind::Duplicate => take(&self.duplicates, limit, |d| {
                let positions: Vec<String> =
                    d.positions.iter().map(|(p, o, witnesses)| format!("{p}@{o} ({witnesses})")).collect();
                format!("{} at {}", d.value, positions.join(", "))
            }),
            AnomalyKind::InconsistentOffsets => take(&self.inconsistent_offsets, limit, |i| {
                let values: Vec<String> = i.values.iter().map(|(v, witnesses)| format!("{v} ({witnesses})")).collect();
                format!("{}@{} holds {}", i.partition, i.offset, values.join(" vs "))
            }),
            AnomalyKind::G1a => take(&self.g1a, limit, |g| {
                let why = match &g.reason {
                    G1aReason::NeverSent => "never sent".to_owned(),
                    G1aReason::SendFailed { send_fail } => format!("its send failed ({send_fail})"),
                    G1aReason::WrongPartition { sent_to, send_invoke } => {
                        format!("it was sent to {sent_to} ({send_invoke})")
                    }
                };
                let first_read = g.read_by.first().map_or_else(String::new, |op| format!(" by {op}"));
                format!("{}@{} {} read{first_read}, but {why}", g.partition, g.offset, g.value)
            }),
            AnomalyKind::PollSkip => take(&self.poll_skips, limit, |s| {
                let skipped: Vec<String> = s.skipped.iter().map(|o| o.to_string()).collect();
                let more = s.skipped_count.saturating_sub(s.skipped.len());
                let more = if more > 0 { format!(" and {more} more") } else { String::new() };
                format!(
                    "{} {}: {} read {}, then {} read {}, skipping {}{more}",
                    s.process,
                    s.partition,
                    s.previous_poll,
                    s.from_offset,
                    s.poll,
                    s.to_offset,
                    skipped.join(", ")
                )
            }),
            AnomalyKind::NonmonotonicPoll => take(&self.nonmonotonic_polls, limit, |n| {
                format!(
                    "{} {}: {} read {}, then {} read {}",
                    n.process, n.partition, n.previous_poll, n.previous_offset, n.poll, n.offset
                )
            }),
            AnomalyKind::NonmonotonicSend => take(&self.nonmonotonic_sends, limit, |n| {
                format!(
                    "{} {}: {} acked {} at {}, then {} acked {} at {}",
                    n.process,
                    n.partition,
                    n.previous_send_ok,
                    n.previous_value,
                    n.previous_offset,
                    n.send_ok,
                    n.value,
                    n.offset
                )
            }),
            AnomalyKind::LostRead => take(&self.lost_reads, limit, |l| {
                let then = match &l.reason {
                    LostReadReason::Overwritten { value, by } => format!("then {by} found {value} there"),
                    LostReadReason::Truncated { offset, value, send_ok } => {
                        format!("then a later send of {value} was acked at {offset} ({send_ok})")
                    }
                };
                format!("{}@{} {} read by {}, {then}", l.partition, l.offset, l.value, l.read_by)
            }),
            AnomalyKind::ReorderedSend => take(&self.reordered_sends, limit, |r| {
                let (earlier, later) = (&r.earlier, &r.later);
                format!(
                    "{} {}: {} sent {}, then {} sent {}, but {} is at {} ({}), before {} at {} ({})",
                    r.process,
                    r.partition,
                    earlier.invoke,
                    earlier.value,
                    later.invoke,
                    later.value,
                    later.value,
                    later.offset,
                    later.witnesses,
                    earlier.value,
                    earlier.offset,
                    earlier.witnesses
                )
            }),
        }
    }
}

impl fmt::Display for QueueReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.is_valid() { "valid" } else { "INVALID" };
        let mode = if self.options.exactly_once { " (exactly-once)" } else { "" };
        let kinds: Vec<String> =
            self.anomaly_kinds().into_iter().map(|kind| format!("{} {kind}", self.count(kind))).collect();
        if kinds.is_empty() {
            writeln!(f, "queue check{mode}: {verdict}, no anomalies")?;
        } else {
            writeln!(f, "queue check{mode}: {verdict}: {}", kinds.join(", "))?;
        }
        let s = &self.stats;
        writeln!(
            f,
            "  {} events; sends: {} invoked, {} ok at an offset, {} ok without offset, {} fail, {} info, {} pending; \
             polls: {} ok, {} records, {} distinct values",
            s.events,
            s.sends_invoked,
            s.sends_ok_with_offset,
            s.sends_ok_without_offset,
            s.sends_failed,
            s.sends_info,
            s.sends_pending,
            s.polls_ok,
            s.records_read,
            s.distinct_values_read
        )?;
        if let Some(error) = &self.history_error {
            writeln!(f, "  malformed history: {error}")?;
        }
        for kind in self.anomaly_kinds() {
            let count = self.count(kind);
            writeln!(f, "  {kind} ({count}):")?;
            for line in self.example_lines(kind, EXAMPLES_PER_KIND_MAX) {
                writeln!(f, "    {line}")?;
            }
            if count > EXAMPLES_PER_KIND_MAX {
                writeln!(f, "    ... and {} more", count - EXAMPLES_PER_KIND_MAX)?;
            }
        }
        Ok(())
    }
}

/// How a send stands at the end of the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendOutcome {
    Pending,
    Ok { send_ok: OpIndex, offset: Option<Offset> },
    Fail { send_fail: OpIndex },
    Info,
}

#[derive(Clone, Debug)]
struct SendRecord {
    partition: Partition,
    process: ProcessId,
    invoke: OpIndex,
    outcome: SendOutcome,
}

/// A process's read position in one partition, for the skip and monotonicity checks.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    last_offset: Offset,
    last_poll: OpIndex,
    /// False after an `info` poll, which may have consumed records nobody saw.
    contiguous: bool,
}

/// What the first pass over the history learns.
#[derive(Default)]
struct Observations<'h> {
    sends: BTreeMap<&'h Value, SendRecord>,
    /// Who saw which value at each position, from send acks and poll reads.
    by_position: BTreeMap<(&'h Partition, Offset), BTreeMap<&'h Value, Witnesses>>,
    /// Positions each value was seen at (acks and reads).
    positions_of_value: BTreeMap<&'h Value, BTreeSet<(&'h Partition, Offset)>>,
    /// Partitions each value was read in (reads only).
    partitions_read_of_value: BTreeMap<&'h Value, BTreeSet<&'h Partition>>,
    /// Offsets known to exist in each partition.
    known_offsets: BTreeMap<&'h Partition, BTreeSet<Offset>>,
    /// Highest offset read in each partition, and the first poll that read it.
    max_read: BTreeMap<&'h Partition, (Offset, OpIndex)>,
}

/// Checks a queue history for the anomalies in the module doc, with the default [`CheckOptions`] (not
/// exactly-once).
pub fn check(history: &History) -> QueueReport {
    check_with(history, CheckOptions::default())
}

/// Checks a queue history for the anomalies in the module doc, holding it to `options`.
pub fn check_with(history: &History, options: CheckOptions) -> QueueReport {
    check_retained(history, options, &BTreeMap::new())
}

/// [`check_with`] for a topic with retention: `log_starts` is each partition's log start after the
/// final read (retention deleted everything below it). A send acknowledged below its partition's
/// log start that no poll read is expired (counted in [`QueueStats::sends_ok_expired`]), not lost or
/// unseen; everything at or above it is held to the same rules as without retention. A partition
/// missing from the map starts at 0.
pub fn check_retained(
    history: &History,
    options: CheckOptions,
    log_starts: &BTreeMap<Partition, Offset>,
) -> QueueReport {
    let events = history.events();
    let mut report = QueueReport { options, history_error: history.validate().err(), ..QueueReport::default() };
    report.stats.events = events.len();

    let mut observations = observe(events, &mut report.stats);
    let superseded = options.compaction_keys.map(|keys| superseded(&observations, keys)).unwrap_or_default();
    for (partition, offset) in &superseded {
        if let Some(known) = observations.known_offsets.get_mut(partition) {
            known.remove(offset);
        }
    }
    report.nonmonotonic_sends = nonmonotonic_sends(events);
    if options.exactly_once {
        report.reordered_sends = reordered_sends(events, &observations);
    }
    let (poll_skips, nonmonotonic_polls) = poll_order(events, &observations.known_offsets);
    report.poll_skips = poll_skips;
    report.nonmonotonic_polls = nonmonotonic_polls;
    report.lost_reads = lost_reads(events);

    for ((partition, offset), values) in &observations.by_position {
        if values.len() > 1 {
            report.inconsistent_offsets.push(InconsistentOffset {
                partition: (*partition).clone(),
                offset: *offset,
                values: values.iter().map(|(value, witnesses)| ((*value).clone(), witnesses.clone())).collect(),
            });
        }
        for (value, witnesses) in values {
            if witnesses.read_by.is_empty() {
                continue;
            }
            let reason = match observations.sends.get(value) {
                None => Some(G1aReason::NeverSent),
                Some(SendRecord { outcome: SendOutcome::Fail { send_fail }, .. }) => {
                    Some(G1aReason::SendFailed { send_fail: *send_fail })
                }
                Some(send) if send.partition != **partition => {
                    Some(G1aReason::WrongPartition { sent_to: send.partition.clone(), send_invoke: send.invoke })
                }
                Some(_) => None,
            };
            if let Some(reason) = reason {
                report.g1a.push(G1a {
                    partition: (*partition).clone(),
                    offset: *offset,
                    value: (*value).clone(),
                    read_by: witnesses.read_by.clone(),
                    reason,
                });
            }
        }
    }

    for (value, positions) in &observations.positions_of_value {
        if positions.len() > 1 {
            let positions = positions
                .iter()
                .map(|(partition, offset)| {
                    let witnesses = observations
                        .by_position
                        .get(&(*partition, *offset))
                        .and_then(|values| values.get(value))
                        .cloned()
                        .unwrap_or_default();
                    ((*partition).clone(), *offset, witnesses)
                })
                .collect();
            report.duplicates.push(Duplicate { value: (*value).clone(), positions });
        }
    }

    for (value, send) in &observations.sends {
        let SendOutcome::Ok { send_ok, offset: Some(offset) } = send.outcome else { continue };
        let read_in_partition = observations
            .partitions_read_of_value
            .get(value)
            .is_some_and(|partitions| partitions.contains(&send.partition));
        if read_in_partition {
            continue;
        }
        if log_starts.get(&send.partition).is_some_and(|start| offset < *start) {
            report.stats.sends_ok_expired += 1;
            continue;
        }
        if superseded.contains(&(&send.partition, offset)) {
            report.stats.sends_ok_superseded += 1;
            continue;
        }
        let max_read = observations.max_read.get(&send.partition).copied();
        let missing = MissingWrite {
            partition: send.partition.clone(),
            offset,
            value: (*value).clone(),
            process: send.process,
            send_invoke: send.invoke,
            send_ok,
            max_read,
        };
        match max_read {
            Some((max_offset, _)) if max_offset >= offset => report.lost_writes.push(missing),
            _ => report.unseen.push(missing),
        }
    }
    let by_position = |a: &MissingWrite, b: &MissingWrite| (&a.partition, a.offset).cmp(&(&b.partition, b.offset));
    report.lost_writes.sort_by(by_position);
    report.unseen.sort_by(by_position);
    report
}

/// The positions of a compacted topic whose every value has a later position of the same key in its
/// partition ([`CheckOptions::compaction_keys`]): compaction may have removed them.
fn superseded<'h>(observations: &Observations<'h>, keys: u64) -> BTreeSet<(&'h Partition, Offset)> {
    let mut found = BTreeSet::new();
    let mut later_keys: BTreeSet<u64> = BTreeSet::new();
    let mut current: Option<&Partition> = None;
    for ((partition, offset), values) in observations.by_position.iter().rev() {
        if current != Some(*partition) {
            current = Some(*partition);
            later_keys.clear();
        }
        let here: BTreeSet<u64> = values.keys().map(|value| compaction_key(&value.0, keys)).collect();
        if here.iter().all(|key| later_keys.contains(key)) {
            found.insert((*partition, *offset));
        }
        later_keys.extend(here);
    }
    found
}

/// The first pass: sends and their outcomes, and every position each value was seen at.
fn observe<'h>(events: &'h [Event], stats: &mut QueueStats) -> Observations<'h> {
    let mut seen = Observations::default();
    for event in events {
        match (&event.op, event.kind) {
            (Op::Send { partition, value, .. }, EventKind::Invoke) => {
                stats.sends_invoked += 1;
                // With unique values (a well-formed history) each value is invoked once; if not, the first
                // invoke wins and later completions still update the outcome.
                seen.sends.entry(value).or_insert(SendRecord {
                    partition: partition.clone(),
                    process: event.process,
                    invoke: event.index,
                    outcome: SendOutcome::Pending,
                });
            }
            (Op::Send { partition, value, offset }, kind) => {
                let outcome = match (kind, offset) {
                    (EventKind::Ok, Some(_)) => {
                        stats.sends_ok_with_offset += 1;
                        SendOutcome::Ok { send_ok: event.index, offset: *offset }
                    }
                    (EventKind::Ok, None) => {
                        stats.sends_ok_without_offset += 1;
                        SendOutcome::Ok { send_ok: event.index, offset: None }
                    }
                    (EventKind::Fail, _) => {
                        stats.sends_failed += 1;
                        SendOutcome::Fail { send_fail: event.index }
                    }
                    _ => {
                        stats.sends_info += 1;
                        SendOutcome::Info
                    }
                };
                let send = seen.sends.entry(value).or_insert(SendRecord {
                    partition: partition.clone(),
                    process: event.process,
                    invoke: event.index,
                    outcome,
                });
                send.outcome = outcome;
                if let (EventKind::Ok, Some(offset)) = (kind, offset) {
                    seen.by_position
                        .entry((partition, *offset))
                        .or_default()
                        .entry(value)
                        .or_default()
                        .acked_by
                        .push(event.index);
                    seen.positions_of_value.entry(value).or_default().insert((partition, *offset));
                    seen.known_offsets.entry(partition).or_default().insert(*offset);
                }
            }
            (Op::Poll { reads: Some(reads) }, EventKind::Ok) => {
                stats.polls_ok += 1;
                for (partition, records) in reads {
                    for (offset, value) in records {
                        stats.records_read += 1;
                        let witnesses =
                            seen.by_position.entry((partition, *offset)).or_default().entry(value).or_default();
                        // A poll returning the same record twice is one read by that poll.
                        if witnesses.read_by.last() != Some(&event.index) {
                            witnesses.read_by.push(event.index);
                        }
                        seen.positions_of_value.entry(value).or_default().insert((partition, *offset));
                        seen.partitions_read_of_value.entry(value).or_default().insert(partition);
                        seen.known_offsets.entry(partition).or_default().insert(*offset);
                        let max = seen.max_read.entry(partition).or_insert((*offset, event.index));
                        if *offset > max.0 {
                            *max = (*offset, event.index);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    stats.sends_pending = seen.sends.values().filter(|send| send.outcome == SendOutcome::Pending).count();
    stats.distinct_values_read = seen.partitions_read_of_value.len();
    seen
}

/// An ack of a send: where, which op, which value.
type Ack<'h> = (Offset, OpIndex, &'h Value);

/// A send invoked after an ack of its process in its partition completed must land past that ack in a
/// linearizable log. Each ack is compared with the highest ack of the process in the partition that had
/// completed when its send was invoked (with one send in flight per process, every earlier ack; with
/// several, sends in flight together may complete in either order). A crash does not reset this, for the
/// same reason.
fn nonmonotonic_sends(events: &[Event]) -> Vec<NonmonotonicSend> {
    let mut found = Vec::new();
    // Per (process, partition), the highest ack so far (the first on a tie).
    let mut highest_ack: BTreeMap<(ProcessId, &Partition), Ack<'_>> = BTreeMap::new();
    // Per send in flight (by value), `highest_ack` of its process and partition when it was invoked.
    let mut highest_at_invoke: BTreeMap<&Value, Option<Ack<'_>>> = BTreeMap::new();
    for event in events {
        let Op::Send { partition, value, offset } = &event.op else { continue };
        let key = (event.process, partition);
        match (event.kind, offset) {
            (EventKind::Invoke, _) => {
                highest_at_invoke.insert(value, highest_ack.get(&key).copied());
            }
            (EventKind::Ok, Some(offset)) => {
                // In a malformed history an ack without an invoke counts as invoked when it completed.
                let previous = highest_at_invoke.remove(value).unwrap_or_else(|| highest_ack.get(&key).copied());
                if let Some((previous_offset, previous_send_ok, previous_value)) = previous {
                    if *offset <= previous_offset {
                        found.push(NonmonotonicSend {
                            process: event.process,
                            partition: partition.clone(),
                            previous_send_ok,
                            previous_offset,
                            previous_value: previous_value.clone(),
                            send_ok: event.index,
                            offset: *offset,
                            value: value.clone(),
                        });
                    }
                }
                let highest = highest_ack.entry(key).or_insert((*offset, event.index, value));
                if *offset > highest.0 {
                    *highest = (*offset, event.index, value);
                }
            }
            _ => {
                highest_at_invoke.remove(value);
            }
        }
    }
    found
}

/// The idempotent producer's order promise (`reordered-send` in the module doc): per process, client
/// incarnation (a `crash` starts the next) and partition, the sends that appear in the log must sit at
/// increasing offsets in invoke order. Compares each such send with the previous one only: a sequence has
/// an inversion exactly when it has an adjacent one, and a send that landed far too late is then reported
/// once rather than once per send that overtook it.
fn reordered_sends<'h>(events: &'h [Event], observations: &Observations<'h>) -> Vec<ReorderedSend> {
    let logged = |invoke: OpIndex, value: &'h Value, partition: &'h Partition| -> Option<LoggedSend> {
        let positions = observations.positions_of_value.get(value)?;
        let (_, offset) = positions.range((partition, Offset(0))..).next().filter(|(p, _)| *p == partition)?;
        let witnesses = observations.by_position.get(&(partition, *offset)).and_then(|values| values.get(value));
        Some(LoggedSend {
            invoke,
            value: value.clone(),
            offset: *offset,
            witnesses: witnesses.cloned().unwrap_or_default(),
        })
    };
    let mut incarnation: BTreeMap<ProcessId, u64> = BTreeMap::new();
    // Per (process, incarnation, partition), the last send invoked that appears in the log.
    let mut last_logged: BTreeMap<(ProcessId, u64, &Partition), LoggedSend> = BTreeMap::new();
    let mut found = Vec::new();
    for event in events {
        match (&event.op, event.kind) {
            (Op::Crash, _) => *incarnation.entry(event.process).or_default() += 1,
            (Op::Send { partition, value, .. }, EventKind::Invoke) => {
                let Some(send) = logged(event.index, value, partition) else { continue };
                let key = (event.process, incarnation.get(&event.process).copied().unwrap_or(0), partition);
                let Some(earlier) = last_logged.insert(key, send.clone()) else { continue };
                if send.offset < earlier.offset {
                    found.push(ReorderedSend {
                        process: event.process,
                        partition: partition.clone(),
                        earlier,
                        later: send,
                    });
                }
            }
            _ => {}
        }
    }
    found
}

/// A poll's read or a send's acknowledgement of one value at one position, with the index of the operation's
/// invoke (to order it after other completions) and of its completion (to cite it).
#[derive(Clone, Copy)]
struct Sighting<'h> {
    invoke: OpIndex,
    completion: OpIndex,
    value: &'h Value,
}

/// Finds reads that operations invoked after them contradict (see `lost-read` in the module doc). Only the
/// real-time order counts: an operation invoked before the read completed is concurrent with it and may
/// legitimately see the log before the read's records were committed.
fn lost_reads(events: &[Event]) -> Vec<LostRead> {
    // Which invoke each completion belongs to: a poll's is its process's outstanding poll (a poll overlaps
    // no other operation of its process), a send's is the invoke of its value (a process may have several
    // sends in flight). In a malformed history a completion without an invoke counts as invoked when it
    // completed.
    let mut poll_invokes: BTreeMap<ProcessId, OpIndex> = BTreeMap::new();
    let mut send_invokes: BTreeMap<&Value, OpIndex> = BTreeMap::new();
    let mut sightings: BTreeMap<(&Partition, Offset), Vec<Sighting<'_>>> = BTreeMap::new();
    // The first poll that read each value at each position.
    let mut first_reads: BTreeMap<(&Partition, Offset, &Value), OpIndex> = BTreeMap::new();
    // Per partition, acknowledged sends as (invoke, offset, value, ok), in invoke order.
    let mut acks: BTreeMap<&Partition, Vec<(OpIndex, Offset, &Value, OpIndex)>> = BTreeMap::new();
    for event in events {
        let invoke = match (&event.op, event.kind) {
            (Op::Send { value, .. }, EventKind::Invoke) => {
                send_invokes.insert(value, event.index);
                continue;
            }
            (Op::Poll { .. }, EventKind::Invoke) => {
                poll_invokes.insert(event.process, event.index);
                continue;
            }
            (Op::Send { value, .. }, _) => send_invokes.remove(value),
            (Op::Poll { .. }, _) => poll_invokes.remove(&event.process),
            _ => continue,
        };
        let invoke = invoke.unwrap_or(event.index);
        match (&event.op, event.kind) {
            (Op::Send { partition, value, offset: Some(offset) }, EventKind::Ok) => {
                sightings.entry((partition, *offset)).or_default().push(Sighting {
                    invoke,
                    completion: event.index,
                    value,
                });
                acks.entry(partition).or_default().push((invoke, *offset, value, event.index));
            }
            (Op::Poll { reads: Some(reads) }, EventKind::Ok) => {
                for (partition, records) in reads {
                    for (offset, value) in records {
                        sightings.entry((partition, *offset)).or_default().push(Sighting {
                            invoke,
                            completion: event.index,
                            value,
                        });
                        first_reads.entry((partition, *offset, value)).or_insert(event.index);
                    }
                }
            }
            _ => {}
        }
    }
    // Per partition, for each position in invoke order: the lowest acknowledged offset among this and all
    // later-invoked sends, with the first send that got it.
    let mut lowest_later_ack: BTreeMap<&Partition, Vec<(OpIndex, Offset, &Value, OpIndex)>> = BTreeMap::new();
    for (partition, mut sends) in acks {
        sends.sort_by_key(|(invoke, ..)| *invoke);
        let mut lowest: Vec<(OpIndex, Offset, &Value, OpIndex)> = Vec::with_capacity(sends.len());
        for send in sends.iter().rev() {
            let best = match lowest.last() {
                Some(later) if later.1 < send.1 => (send.0, later.1, later.2, later.3),
                _ => *send,
            };
            lowest.push(best);
        }
        lowest.reverse();
        lowest_later_ack.insert(partition, lowest);
    }

    let mut found = Vec::new();
    for ((partition, offset, value), read_by) in first_reads {
        let overwritten = sightings
            .get(&(partition, offset))
            .into_iter()
            .flatten()
            .filter(|sighting| sighting.invoke > read_by && sighting.value != value)
            .min_by_key(|sighting| sighting.completion);
        let reason = if let Some(sighting) = overwritten {
            Some(LostReadReason::Overwritten { value: sighting.value.clone(), by: sighting.completion })
        } else {
            lowest_later_ack.get(partition).and_then(|lowest| {
                let first_later = lowest.partition_point(|(invoke, ..)| *invoke <= read_by);
                let (_, ack_offset, ack_value, send_ok) = lowest.get(first_later)?;
                (*ack_offset < offset).then(|| LostReadReason::Truncated {
                    offset: *ack_offset,
                    value: (*ack_value).clone(),
                    send_ok: *send_ok,
                })
            })
        };
        if let Some(reason) = reason {
            found.push(LostRead { partition: partition.clone(), offset, value: value.clone(), read_by, reason });
        }
    }
    found
}

/// Follows each process's reads of each partition in history order and finds skips and reads that go
/// backwards.
fn poll_order(
    events: &[Event],
    known_offsets: &BTreeMap<&Partition, BTreeSet<Offset>>,
) -> (Vec<PollSkip>, Vec<NonmonotonicPoll>) {
    let mut skips = Vec::new();
    let mut nonmonotonic = Vec::new();
    let mut cursors: BTreeMap<ProcessId, BTreeMap<&Partition, Cursor>> = BTreeMap::new();
    for event in events {
        match (&event.op, event.kind) {
            // A failed assign or subscribe did not move the consumer; anything else may have.
            (Op::Assign { .. } | Op::Subscribe { .. }, EventKind::Fail) => {}
            (Op::Assign { .. } | Op::Subscribe { .. } | Op::Crash, _) => {
                cursors.remove(&event.process);
            }
            (Op::Poll { .. }, EventKind::Info) => {
                for cursor in cursors.entry(event.process).or_default().values_mut() {
                    cursor.contiguous = false;
                }
            }
            (Op::Poll { reads: Some(reads) }, EventKind::Ok) => {
                let process_cursors = cursors.entry(event.process).or_default();
                for (partition, records) in reads {
                    for (offset, _value) in records {
                        let next = Cursor { last_offset: *offset, last_poll: event.index, contiguous: true };
                        let Some(cursor) = process_cursors.insert(partition, next) else { continue };
                        if *offset <= cursor.last_offset {
                            nonmonotonic.push(NonmonotonicPoll {
                                process: event.process,
                                partition: partition.clone(),
                                previous_poll: cursor.last_poll,
                                poll: event.index,
                                previous_offset: cursor.last_offset,
                                offset: *offset,
                            });
                            continue;
                        }
                        if !cursor.contiguous {
                            continue;
                        }
                        let Some(known) = known_offsets.get(partition) else { continue };
                        let between = (cursor.last_offset.0 + 1)..offset.0;
                        let skipped_count = known.range(Offset(between.start)..Offset(between.end)).count();
                        if skipped_count > 0 {
                            skips.push(PollSkip {
                                process: event.process,
                                partition: partition.clone(),
                                previous_poll: cursor.last_poll,
                                poll: event.index,
                                from_offset: cursor.last_offset,
                                to_offset: *offset,
                                skipped: known
                                    .range(Offset(between.start)..Offset(between.end))
                                    .take(SKIPPED_OFFSETS_LISTED_MAX)
                                    .copied()
                                    .collect(),
                                skipped_count,
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (skips, nonmonotonic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{PendingSend, PollReads};

    /// A tiny history builder: every operation completes right after its invoke.
    #[derive(Default)]
    struct Builder {
        history: History,
        time_ns: u64,
    }

    impl Builder {
        fn tick(&mut self) -> u64 {
            self.time_ns += 10;
            self.time_ns
        }

        fn send_ok(&mut self, process: u64, partition: &str, value: &str, offset: Option<u64>) -> OpIndex {
            let time_ns = self.tick();
            let pending = self.history.invoke_send(ProcessId(process), time_ns, partition, value);
            let time_ns = self.tick();
            self.history.send_ok(pending, time_ns, offset.map(Offset))
        }

        fn send_fail(&mut self, process: u64, partition: &str, value: &str) -> OpIndex {
            let time_ns = self.tick();
            let pending = self.history.invoke_send(ProcessId(process), time_ns, partition, value);
            let time_ns = self.tick();
            self.history.send_fail(pending, time_ns)
        }

        fn send_info(&mut self, process: u64, partition: &str, value: &str) -> OpIndex {
            let time_ns = self.tick();
            let pending = self.history.invoke_send(ProcessId(process), time_ns, partition, value);
            let time_ns = self.tick();
            self.history.send_info(pending, time_ns)
        }

        fn poll(&mut self, process: u64, reads: &[(&str, &[(u64, &str)])]) -> OpIndex {
            let mut poll_reads = PollReads::new();
            for (partition, records) in reads {
                let records = records.iter().map(|(offset, value)| (Offset(*offset), Value::from(*value))).collect();
                poll_reads.insert(Partition::from(*partition), records);
            }
            let time_ns = self.tick();
            let pending = self.history.invoke_poll(ProcessId(process), time_ns);
            let time_ns = self.tick();
            self.history.poll_ok(pending, time_ns, poll_reads)
        }

        fn poll_info(&mut self, process: u64) -> OpIndex {
            let time_ns = self.tick();
            let pending = self.history.invoke_poll(ProcessId(process), time_ns);
            let time_ns = self.tick();
            self.history.poll_info(pending, time_ns)
        }

        fn check(&self) -> QueueReport {
            let report = check(&self.history);
            assert_eq!(report.history_error, None, "test histories are well-formed");
            report
        }

        fn check_exactly_once(&self) -> QueueReport {
            let report = check_with(&self.history, CheckOptions { exactly_once: true, ..CheckOptions::default() });
            assert_eq!(report.history_error, None, "test histories are well-formed");
            report
        }

        /// Starts a send and leaves it in flight, for sends that overlap.
        fn invoke_send(&mut self, process: u64, partition: &str, value: &str) -> PendingSend {
            let time_ns = self.tick();
            self.history.invoke_send(ProcessId(process), time_ns, partition, value)
        }

        fn complete_ok(&mut self, pending: PendingSend, offset: u64) -> OpIndex {
            let time_ns = self.tick();
            self.history.send_ok(pending, time_ns, Offset(offset))
        }
    }

    /// Three acked sends to t/0 at offsets 0, 1, 2 by process 1.
    fn three_acked() -> Builder {
        let mut b = Builder::default();
        b.send_ok(1, "t/0", "a", Some(0));
        b.send_ok(1, "t/0", "b", Some(1));
        b.send_ok(1, "t/0", "c", Some(2));
        b
    }

    #[test]
    fn clean_history_has_no_anomalies() {
        let mut b = three_acked();
        b.send_ok(1, "t/1", "d", Some(0));
        b.send_fail(1, "t/1", "never");
        b.send_info(1, "t/1", "maybe-not");
        b.send_info(1, "t/1", "maybe");
        b.send_ok(1, "t/1", "no-offset", None);
        b.poll(2, &[("t/0", &[(0, "a"), (1, "b")]), ("t/1", &[(0, "d"), (1, "maybe")])]);
        b.poll(2, &[("t/0", &[(2, "c")]), ("t/1", &[(2, "no-offset")])]);
        b.poll(3, &[("t/0", &[(1, "b"), (2, "c")])]);
        let report = b.check();
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.anomaly_count(), 0);
        assert_eq!(report.stats.sends_invoked, 8);
        assert_eq!(report.stats.sends_ok_with_offset, 4);
        assert_eq!(report.stats.sends_ok_without_offset, 1);
        assert_eq!(report.stats.sends_failed, 1);
        assert_eq!(report.stats.sends_info, 2);
        assert_eq!(report.stats.records_read, 8);
        assert_eq!(report.stats.distinct_values_read, 6);
        assert!(report.to_string().starts_with("queue check: valid, no anomalies"), "{report}");
    }

    #[test]
    fn indeterminate_sends_may_be_missing_or_appear_once() {
        let mut b = Builder::default();
        b.send_ok(1, "t/0", "acks-none", None);
        b.send_info(1, "t/0", "info-missing");
        b.send_info(1, "t/0", "info-present");
        let time_ns = b.tick();
        let _pending = b.history.invoke_send(ProcessId(4), time_ns, "t/0", "never-completed");
        b.send_ok(1, "t/0", "acked", Some(1));
        b.poll(2, &[("t/0", &[(0, "info-present"), (1, "acked"), (2, "never-completed")])]);
        let report = b.check();
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.sends_pending, 1);
    }

    /// Compaction: an unread acked write with a later write of its key in its partition is
    /// superseded (not lost), and reads may pass over it; a write without a later one of its key is
    /// held as always, and so is a read that passes over it.
    #[test]
    fn compacted_writes_superseded_by_a_later_one_of_their_key_may_be_gone() {
        let key = |value: &str| compaction_key(value, 2);
        let values: Vec<String> = (0..20).map(|n| format!("v{n}")).collect();
        let x1 = values.iter().find(|v| key(v) == 0).unwrap().clone();
        let x2 = values.iter().filter(|v| key(v) == 0).nth(1).unwrap().clone();
        let y = values.iter().find(|v| key(v) == 1).unwrap().clone();
        let compacted = CheckOptions { compaction_keys: Some(2), ..CheckOptions::default() };
        let mut b = Builder::default();
        b.send_ok(1, "t/0", &x1, Some(0));
        b.send_ok(1, "t/0", &y, Some(1));
        b.send_ok(1, "t/0", &x2, Some(2));
        b.poll(2, &[("t/0", &[(1, &y), (2, &x2)])]);
        b.poll(3, &[("t/0", &[(1, &y)])]);
        b.poll(3, &[("t/0", &[(2, &x2)])]);
        let report = check_with(&b.history, compacted);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.sends_ok_superseded, 1, "{report}");
        assert!(!b.check().is_valid(), "without compaction the same history loses a write");

        let mut b = Builder::default();
        b.send_ok(1, "t/0", &x1, Some(0));
        b.send_ok(1, "t/0", &y, Some(1));
        b.send_ok(1, "t/0", &x2, Some(2));
        b.poll(2, &[("t/0", &[(0, &x1), (2, &x2)])]);
        let report = check_with(&b.history, compacted);
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::LostWrite, AnomalyKind::PollSkip], "{report}");
        assert_eq!(report.lost_writes[0].value.0, y, "the last write of its key is held: {report}");
    }

    /// Retention: an acked write below its partition's final log start that nobody read expired; one
    /// at or above it is lost (or unseen) as always, and other partitions are not excused.
    #[test]
    fn writes_below_the_final_log_start_expired_the_rest_are_held_as_always() {
        let mut b = three_acked();
        b.send_ok(1, "t/1", "other", Some(0));
        b.poll(2, &[("t/0", &[(2, "c")])]);
        let starts = BTreeMap::from([(Partition("t/0".into()), Offset(1))]);
        let report = check_retained(&b.history, CheckOptions::default(), &starts);
        assert_eq!(report.stats.sends_ok_expired, 1, "{report}");
        let missing: Vec<(&str, Offset)> =
            report.lost_or_unseen().iter().map(|m| (m.value.as_str(), m.offset)).collect();
        assert_eq!(missing, vec![("b", Offset(1)), ("other", Offset(0))], "{report}");
        let starts = BTreeMap::from([(Partition("t/0".into()), Offset(2)), (Partition("t/1".into()), Offset(1))]);
        let report = check_retained(&b.history, CheckOptions::default(), &starts);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.sends_ok_expired, 3);
        assert!(!b.check().is_valid(), "without log starts the same history loses writes");
    }

    #[test]
    fn lost_write() {
        let mut b = three_acked();
        let poll = b.poll(2, &[("t/0", &[(1, "b"), (2, "c")])]);
        let report = b.check();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::LostWrite], "{report}");
        let lost = &report.lost_writes[0];
        assert_eq!((lost.partition.as_str(), lost.offset, lost.value.as_str()), ("t/0", Offset(0), "a"));
        assert_eq!((lost.send_invoke, lost.send_ok), (OpIndex(0), OpIndex(1)));
        assert_eq!(lost.max_read, Some((Offset(2), poll)));
        assert_eq!(report.lost_or_unseen().len(), 1);
        assert!(!report.is_valid() && !report.is_valid_ignoring_unseen());
        let text = report.to_string();
        assert!(text.contains("1 lost-write") && text.contains("t/0@0 \"a\""), "{text}");
    }

    #[test]
    fn a_read_of_exactly_the_acked_offset_makes_an_unread_write_lost() {
        let mut b = three_acked();
        b.poll(2, &[("t/0", &[(0, "a"), (1, "b")])]);
        b.poll(3, &[("t/0", &[(2, "x")])]);
        let report = b.check();
        assert_eq!(report.lost_writes.len(), 1, "{report}");
        assert_eq!(report.lost_writes[0].value.as_str(), "c");
    }

    #[test]
    fn unseen_write() {
        let mut b = three_acked();
        b.poll(2, &[("t/0", &[(0, "a"), (1, "b")])]);
        b.send_ok(1, "t/1", "never-polled", Some(0));
        let report = b.check();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::Unseen], "{report}");
        assert_eq!(report.unseen.len(), 2);
        assert_eq!(report.unseen[0].value.as_str(), "c");
        assert_eq!(report.unseen[0].max_read.map(|(offset, _)| offset), Some(Offset(1)));
        assert_eq!(report.unseen[1].max_read, None);
        assert!(!report.is_valid());
        assert!(report.is_valid_ignoring_unseen());
        let lost_or_unseen: Vec<&str> = report.lost_or_unseen().iter().map(|w| w.value.as_str()).collect();
        assert_eq!(lost_or_unseen, vec!["c", "never-polled"]);
    }

    #[test]
    fn duplicate_read_at_two_offsets() {
        let mut b = Builder::default();
        b.send_info(1, "t/0", "a");
        let first = b.poll(2, &[("t/0", &[(0, "a")])]);
        let second = b.poll(3, &[("t/0", &[(1, "a")])]);
        let report = b.check();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::Duplicate], "{report}");
        let duplicate = &report.duplicates[0];
        assert_eq!(duplicate.value.as_str(), "a");
        let positions: Vec<(Offset, Vec<OpIndex>)> =
            duplicate.positions.iter().map(|(_, offset, w)| (*offset, w.read_by.clone())).collect();
        assert_eq!(positions, vec![(Offset(0), vec![first]), (Offset(1), vec![second])]);
    }

    #[test]
    fn duplicate_acked_at_one_offset_and_read_at_another() {
        let mut b = Builder::default();
        let ack = b.send_ok(1, "t/0", "a", Some(0));
        let poll = b.poll(2, &[("t/0", &[(3, "a")])]);
        let report = b.check();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::Duplicate], "{report}");
        let positions = &report.duplicates[0].positions;
        assert_eq!(positions[0].2.acked_by, vec![ack]);
        assert_eq!(positions[1].2.read_by, vec![poll]);
    }

    #[test]
    fn duplicates_of_a_send_acked_without_offset_are_still_reported() {
        let mut b = Builder::default();
        b.send_ok(1, "t/0", "a", None);
        b.poll(2, &[("t/0", &[(0, "a"), (1, "a")])]);
        let report = b.check();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::Duplicate], "{report}");
    }

    #[test]
    fn inconsistent_offsets() {
        let mut b = Builder::default();
        b.send_ok(1, "t/0", "a", None);
        b.send_info(1, "t/0", "b");
        let read_a = b.poll(2, &[("t/0", &[(0, "a")])]);
        let read_b = b.poll(3, &[("t/0", &[(0, "b")])]);
        let report = b.check();
        // The second poll was invoked after the first completed, so a's read was also lost.
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::InconsistentOffsets, AnomalyKind::LostRead], "{report}");
        let inconsistent = &report.inconsistent_offsets[0];
        assert_eq!((inconsistent.partition.as_str(), inconsistent.offset), ("t/0", Offset(0)));
        let values: Vec<(&str, Vec<OpIndex>)> =
            inconsistent.values.iter().map(|(v, w)| (v.as_str(), w.read_by.clone())).collect();
        assert_eq!(values, vec![("a", vec![read_a]), ("b", vec![read_b])]);
    }

    #[test]
    fn inconsistent_offsets_between_two_acks() {
        let mut b = Builder::default();
        b.send_ok(1, "t/0", "a", Some(0));
        b.send_ok(2, "t/0", "b", Some(0));
        b.poll(3, &[("t/0", &[(0, "a")])]);
        let report = b.check();
        assert_eq!(report.inconsistent_offsets.len(), 1, "{report}");
        // b's value is gone although offset 0 was read: it is also a lost write.
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::LostWrite, AnomalyKind::InconsistentOffsets]);
    }

    #[test]
    fn g1a_read_of_a_value_never_sent() {
        let mut b = Builder::default();
        let poll = b.poll(2, &[("t/0", &[(0, "ghost")])]);
        let report = b.check();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::G1a], "{report}");
        assert_eq!(
            report.g1a,
            vec![G1a {
                partition: "t/0".into(),
                offset: Offset(0),
                value: "ghost".into(),
                read_by: vec![poll],
                reason: G1aReason::NeverSent
            }]
        );
    }

    #[test]
    fn g1a_read_of_a_failed_send() {
        let mut b = Builder::default();
        let fail = b.send_fail(1, "t/0", "aborted");
        b.poll(2, &[("t/0", &[(0, "aborted")])]);
        let report = b.check();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::G1a], "{report}");
        assert_eq!(report.g1a[0].reason, G1aReason::SendFailed { send_fail: fail });
        assert!(report.to_string().contains("its send failed"), "{report}");
    }

    #[test]
    fn g1a_read_in_another_partition() {
        let mut b = Builder::default();
        b.send_info(1, "t/0", "a");
        b.poll(2, &[("t/1", &[(0, "a")])]);
        let report = b.check();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::G1a], "{report}");
        assert_eq!(report.g1a[0].reason, G1aReason::WrongPartition { sent_to: "t/0".into(), send_invoke: OpIndex(0) });
    }

    #[test]
    fn poll_skip_across_polls() {
        let mut b = three_acked();
        let first = b.poll(2, &[("t/0", &[(0, "a")])]);
        let second = b.poll(2, &[("t/0", &[(2, "c")])]);
        b.poll(3, &[("t/0", &[(1, "b")])]);
        let report = b.check();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::PollSkip], "{report}");
        assert_eq!(
            report.poll_skips,
            vec![PollSkip {
                process: ProcessId(2),
                partition: "t/0".into(),
                previous_poll: first,
                poll: second,
                from_offset: Offset(0),
                to_offset: Offset(2),
                skipped: vec![Offset(1)],
                skipped_count: 1,
            }]
        );
    }

    #[test]
    fn poll_skip_inside_one_poll_known_only_from_an_ack() {
        let mut b = three_acked();
        // Offset 1 is known only from b's ack; b is then lost too.
        let poll = b.poll(2, &[("t/0", &[(0, "a"), (2, "c")])]);
        let report = b.check();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::LostWrite, AnomalyKind::PollSkip], "{report}");
        let skip = &report.poll_skips[0];
        assert_eq!((skip.previous_poll, skip.poll, skip.skipped.clone()), (poll, poll, vec![Offset(1)]));
    }

    #[test]
    fn position_jumps_after_assign_subscribe_crash_or_info_poll_are_not_skips() {
        for reset in ["assign", "subscribe", "crash", "info-poll"] {
            let mut b = three_acked();
            b.poll(2, &[("t/0", &[(0, "a")])]);
            let time_ns = b.tick();
            match reset {
                "assign" => {
                    b.history.assign(ProcessId(2), time_ns, ["t/0"]);
                }
                "subscribe" => {
                    b.history.subscribe(ProcessId(2), time_ns, ["t/0"]);
                }
                "crash" => {
                    b.history.crash(ProcessId(2), time_ns);
                }
                _ => {
                    b.poll_info(2);
                }
            }
            b.poll(2, &[("t/0", &[(2, "c")])]);
            b.poll(3, &[("t/0", &[(1, "b")])]);
            let report = b.check();
            assert!(report.is_valid(), "after {reset}: {report}");
        }
    }

    #[test]
    fn nonmonotonic_poll_across_polls() {
        let mut b = Builder::default();
        b.send_ok(1, "t/0", "a", Some(0));
        b.send_ok(1, "t/0", "b", Some(1));
        let first = b.poll(2, &[("t/0", &[(0, "a"), (1, "b")])]);
        let second = b.poll(2, &[("t/0", &[(0, "a")])]);
        let report = b.check();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::NonmonotonicPoll], "{report}");
        assert_eq!(
            report.nonmonotonic_polls,
            vec![NonmonotonicPoll {
                process: ProcessId(2),
                partition: "t/0".into(),
                previous_poll: first,
                poll: second,
                previous_offset: Offset(1),
                offset: Offset(0),
            }]
        );
    }

    #[test]
    fn nonmonotonic_poll_inside_one_poll() {
        let mut b = Builder::default();
        b.send_ok(1, "t/0", "a", Some(0));
        b.send_ok(1, "t/0", "b", Some(1));
        let poll = b.poll(2, &[("t/0", &[(1, "b"), (0, "a")])]);
        let report = b.check();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::NonmonotonicPoll], "{report}");
        let n = &report.nonmonotonic_polls[0];
        assert_eq!((n.previous_poll, n.poll, n.previous_offset, n.offset), (poll, poll, Offset(1), Offset(0)));
    }

    #[test]
    fn rereading_after_assign_is_monotonic() {
        let mut b = Builder::default();
        b.send_ok(1, "t/0", "a", Some(0));
        b.poll(2, &[("t/0", &[(0, "a")])]);
        let time_ns = b.tick();
        b.history.assign(ProcessId(2), time_ns, ["t/0"]);
        b.poll(2, &[("t/0", &[(0, "a")])]);
        assert!(b.check().is_valid());
    }

    #[test]
    fn nonmonotonic_send() {
        let mut b = Builder::default();
        let first = b.send_ok(1, "t/0", "a", Some(1));
        let second = b.send_ok(1, "t/0", "b", Some(0));
        // Another process's ack and another partition's do not count.
        b.send_ok(2, "t/0", "c", Some(2));
        b.send_ok(1, "t/1", "d", Some(0));
        b.poll(3, &[("t/0", &[(0, "b"), (1, "a"), (2, "c")]), ("t/1", &[(0, "d")])]);
        let report = b.check();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::NonmonotonicSend], "{report}");
        assert_eq!(
            report.nonmonotonic_sends,
            vec![NonmonotonicSend {
                process: ProcessId(1),
                partition: "t/0".into(),
                previous_send_ok: first,
                previous_offset: Offset(1),
                previous_value: "a".into(),
                send_ok: second,
                offset: Offset(0),
                value: "b".into(),
            }]
        );
    }

    #[test]
    fn malformed_history_is_reported_and_invalid() {
        let mut b = Builder::default();
        b.send_ok(1, "t/0", "same", Some(0));
        b.send_ok(2, "t/0", "same", Some(1));
        b.poll(3, &[("t/0", &[(0, "same"), (1, "same")])]);
        let report = check(&b.history);
        assert!(matches!(report.history_error, Some(HistoryError::DuplicateSendValue { .. })), "{report}");
        assert!(!report.is_valid() && !report.is_valid_ignoring_unseen());
        assert!(report.to_string().contains("malformed history"), "{report}");
    }

    #[test]
    fn summary_lists_at_most_ten_examples_per_kind() {
        let mut b = Builder::default();
        for offset in 0..15 {
            b.send_ok(1, "t/0", &format!("v{offset}"), Some(offset));
        }
        b.poll(2, &[("t/0", &[(15, "ghost")])]);
        let report = b.check();
        assert_eq!(report.count(AnomalyKind::LostWrite), 15);
        let text = report.to_string();
        assert!(text.contains("lost-write (15):"), "{text}");
        assert!(text.contains("... and 5 more"), "{text}");
        assert!(text.contains("\"v9\"") && !text.contains("\"v10\""), "{text}");
        assert!(text.lines().count() <= 2 + 2 * (EXAMPLES_PER_KIND_MAX + 2), "{text}");
    }

    #[test]
    fn anomaly_names_are_jepsens() {
        let names: Vec<&str> = AnomalyKind::ALL.iter().map(|kind| kind.name()).collect();
        assert_eq!(
            names,
            vec![
                "lost-write",
                "unseen",
                "duplicate",
                "inconsistent-offsets",
                "G1a",
                "poll-skip",
                "nonmonotonic-poll",
                "nonmonotonic-send",
                // Keel's own: Jepsen reports these as inconsistent offsets at most.
                "lost-read",
                // Keel's own, exactly-once mode only: an idempotent producer's records out of send order.
                "reordered-send"
            ]
        );
    }

    #[test]
    fn lost_read_when_a_later_poll_finds_another_value_at_the_offset() {
        // A poll returned a (served before it was durable), a crash dropped it, and b took its offset.
        let mut b = Builder::default();
        b.send_info(1, "t/0", "a");
        let read_a = b.poll(2, &[("t/0", &[(0, "a")])]);
        b.send_info(1, "t/0", "b");
        let read_b = b.poll(3, &[("t/0", &[(0, "b")])]);
        let report = b.check();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::InconsistentOffsets, AnomalyKind::LostRead], "{report}");
        assert_eq!(
            report.lost_reads,
            vec![LostRead {
                partition: "t/0".into(),
                offset: Offset(0),
                value: "a".into(),
                read_by: read_a,
                reason: LostReadReason::Overwritten { value: "b".into(), by: read_b },
            }]
        );
        assert!(!report.is_valid() && !report.is_valid_ignoring_unseen());
        let text = report.to_string();
        assert!(
            text.contains("lost-read (1):") && text.contains(&format!("then {read_b} found \"b\" there")),
            "{text}"
        );
    }

    #[test]
    fn lost_read_when_a_later_send_is_acked_at_the_offset() {
        let mut b = Builder::default();
        b.send_info(1, "t/0", "a");
        let read_a = b.poll(2, &[("t/0", &[(0, "a")])]);
        let ack_b = b.send_ok(1, "t/0", "b", Some(0));
        let report = b.check();
        assert_eq!(report.lost_reads.len(), 1, "{report}");
        assert_eq!(report.lost_reads[0].read_by, read_a);
        assert_eq!(report.lost_reads[0].reason, LostReadReason::Overwritten { value: "b".into(), by: ack_b });
    }

    #[test]
    fn lost_read_when_a_later_send_is_acked_below_the_offset_and_nobody_reads_there_again() {
        // Offsets 0..=2 were read; after a crash the log ended at 1 and a new send got offset 1. Nobody
        // read offset 2 again, so no two values ever met at one offset: only the ack order shows the loss.
        let mut b = Builder::default();
        b.send_ok(1, "t/0", "a", Some(0));
        b.send_info(1, "t/0", "b");
        b.send_info(1, "t/0", "c");
        let read = b.poll(2, &[("t/0", &[(0, "a"), (1, "b"), (2, "c")])]);
        let ack_d = b.send_ok(1, "t/0", "d", Some(1));
        let report = b.check();
        let lost: Vec<(Offset, &str, &LostReadReason)> =
            report.lost_reads.iter().map(|l| (l.offset, l.value.as_str(), &l.reason)).collect();
        let truncated = LostReadReason::Truncated { offset: Offset(1), value: "d".into(), send_ok: ack_d };
        let overwritten = LostReadReason::Overwritten { value: "d".into(), by: ack_d };
        assert_eq!(lost, vec![(Offset(1), "b", &overwritten), (Offset(2), "c", &truncated)], "{report}");
        assert!(report.lost_reads.iter().all(|l| l.read_by == read));
        assert!(!report.is_valid_ignoring_unseen());
        assert!(report.to_string().contains("then a later send of \"d\" was acked at 1"), "{report}");
    }

    #[test]
    fn no_lost_read_when_the_log_only_grows() {
        let mut b = Builder::default();
        // A send invoked before the read completed may be acked below it: it was appended first.
        let time_ns = b.tick();
        let early = b.history.invoke_send(ProcessId(1), time_ns, "t/0", "early");
        b.send_info(4, "t/0", "x");
        b.poll(2, &[("t/0", &[(0, "early"), (1, "x")])]);
        let time_ns = b.tick();
        b.history.send_ok(early, time_ns, Offset(0));
        // Later sends land past everything read; rereading the same values is fine.
        b.send_ok(1, "t/0", "later", Some(2));
        b.poll(3, &[("t/0", &[(0, "early"), (1, "x"), (2, "later")])]);
        // Another partition's low offsets say nothing about t/0.
        b.send_ok(1, "t/1", "other", Some(0));
        b.poll(3, &[("t/1", &[(0, "other")])]);
        let report = b.check();
        assert!(report.is_valid(), "{report}");
        assert!(report.lost_reads.is_empty());
    }

    #[test]
    fn nonmonotonic_send_compares_with_the_acks_completed_before_the_invoke() {
        let mut b = Builder::default();
        // a and b are in flight together: acked in either order, at either offset, they are fine.
        let a = b.invoke_send(1, "t/0", "a");
        let pending_b = b.invoke_send(1, "t/0", "b");
        let ack_b = b.complete_ok(pending_b, 6);
        b.complete_ok(a, 4);
        // c was invoked after b's ack at 6 completed, so it must land past 6, whatever a's ack says.
        let ack_c = b.send_ok(1, "t/0", "c", Some(5));
        let report = b.check();
        let found: Vec<(OpIndex, OpIndex, Offset)> =
            report.nonmonotonic_sends.iter().map(|n| (n.previous_send_ok, n.send_ok, n.previous_offset)).collect();
        assert_eq!(found, vec![(ack_b, ack_c, Offset(6))], "{report}");
    }

    #[test]
    fn a_pipelined_send_counts_as_invoked_at_its_own_invoke() {
        // a was appended and read before b was invoked, and acked after: it is no later send acked below
        // the read (which a lost-read by truncation would be).
        let mut b = Builder::default();
        let a = b.invoke_send(1, "t/0", "a");
        b.send_info(3, "t/0", "x");
        b.poll(2, &[("t/0", &[(0, "a"), (1, "x")])]);
        let pending_b = b.invoke_send(1, "t/0", "b");
        b.complete_ok(a, 0);
        b.complete_ok(pending_b, 2);
        b.poll(2, &[("t/0", &[(2, "b")])]);
        assert!(b.check().is_valid(), "{}", b.check());
        assert!(b.check_exactly_once().is_valid(), "{}", b.check_exactly_once());
    }

    #[test]
    fn exactly_once_flags_a_duplicate_of_an_info_send_in_both_modes() {
        let mut b = Builder::default();
        b.send_info(1, "t/0", "a");
        b.send_ok(1, "t/0", "b", Some(1));
        b.poll(2, &[("t/0", &[(0, "a"), (1, "b"), (2, "a")])]);
        for report in [b.check(), b.check_exactly_once()] {
            assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::Duplicate], "{report}");
            let offsets: Vec<Offset> = report.duplicates[0].positions.iter().map(|(_, offset, _)| *offset).collect();
            assert_eq!((report.duplicates[0].value.as_str(), offsets), ("a", vec![Offset(0), Offset(2)]));
            assert!(!report.is_valid() && !report.is_valid_ignoring_unseen());
        }
        assert!(b.check_exactly_once().to_string().starts_with("queue check (exactly-once): INVALID: 1 duplicate"));
    }

    #[test]
    fn exactly_once_allows_one_appearance_of_an_indeterminate_send_and_none() {
        let mut b = Builder::default();
        b.send_info(1, "t/0", "info-present");
        b.send_info(1, "t/0", "info-missing");
        b.send_fail(1, "t/0", "failed");
        let _pending = b.invoke_send(4, "t/0", "never-completed");
        b.send_ok(1, "t/0", "acked", Some(1));
        b.poll(2, &[("t/0", &[(0, "info-present"), (1, "acked"), (2, "never-completed")])]);
        let report = b.check_exactly_once();
        assert!(report.is_valid(), "{report}");
        assert!(report.to_string().starts_with("queue check (exactly-once): valid, no anomalies"), "{report}");
        assert_eq!(report.options, CheckOptions { exactly_once: true, ..CheckOptions::default() });
    }

    #[test]
    fn reordered_send_is_flagged_only_in_exactly_once_mode() {
        // a's outcome was unknown and b was acked: no ack order is broken, but a landed after b.
        let mut b = Builder::default();
        b.send_info(1, "t/0", "a");
        let ack_b = b.send_ok(1, "t/0", "b", Some(0));
        let poll = b.poll(2, &[("t/0", &[(0, "b"), (1, "a")])]);
        assert!(b.check().is_valid(), "{}", b.check());
        assert!(b.check().reordered_sends.is_empty());
        let report = b.check_exactly_once();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::ReorderedSend], "{report}");
        assert_eq!(
            report.reordered_sends,
            vec![ReorderedSend {
                process: ProcessId(1),
                partition: "t/0".into(),
                earlier: LoggedSend {
                    invoke: OpIndex(0),
                    value: "a".into(),
                    offset: Offset(1),
                    witnesses: Witnesses { acked_by: vec![], read_by: vec![poll] },
                },
                later: LoggedSend {
                    invoke: OpIndex(2),
                    value: "b".into(),
                    offset: Offset(0),
                    witnesses: Witnesses { acked_by: vec![ack_b], read_by: vec![poll] },
                },
            }]
        );
        assert!(!report.is_valid() && !report.is_valid_ignoring_unseen());
        let text = report.to_string();
        assert!(text.starts_with("queue check (exactly-once): INVALID: 1 reordered-send"), "{text}");
        assert!(
            text.contains(&format!(
                "process 1 t/0: op 0 sent \"a\", then op 2 sent \"b\", but \"b\" is at 0 (acked by {ack_b}, read by \
                 {poll}), before \"a\" at 1 (read by {poll})"
            )),
            "{text}"
        );
    }

    #[test]
    fn reordered_send_among_pipelined_sends_known_from_acks_alone() {
        let mut b = Builder::default();
        let a = b.invoke_send(1, "t/0", "a");
        let pending_b = b.invoke_send(1, "t/0", "b");
        b.complete_ok(pending_b, 0);
        b.complete_ok(a, 1);
        // Concurrent sends may land in either order in a plain queue, so only exactly-once objects.
        assert!(b.check().is_valid_ignoring_unseen(), "{}", b.check());
        let report = b.check_exactly_once();
        assert_eq!(report.anomaly_kinds(), vec![AnomalyKind::Unseen, AnomalyKind::ReorderedSend], "{report}");
        let pair = &report.reordered_sends[0];
        assert_eq!((pair.earlier.value.as_str(), pair.later.value.as_str()), ("a", "b"));

        // The same sends acked out of order but appended in send order are fine.
        let mut b = Builder::default();
        let a = b.invoke_send(1, "t/0", "a");
        let pending_b = b.invoke_send(1, "t/0", "b");
        b.complete_ok(pending_b, 1);
        b.complete_ok(a, 0);
        b.poll(2, &[("t/0", &[(0, "a"), (1, "b")])]);
        assert!(b.check_exactly_once().is_valid(), "{}", b.check_exactly_once());
    }

    #[test]
    fn a_send_that_landed_far_too_late_is_one_reordered_send() {
        let mut b = Builder::default();
        b.send_info(1, "t/0", "late");
        for (offset, value) in ["b", "c", "d"].into_iter().enumerate() {
            b.send_ok(1, "t/0", value, Some(offset as u64));
        }
        b.poll(2, &[("t/0", &[(0, "b"), (1, "c"), (2, "d"), (3, "late")])]);
        let report = b.check_exactly_once();
        assert_eq!(report.count(AnomalyKind::ReorderedSend), 1, "{report}");
        let pair = &report.reordered_sends[0];
        assert_eq!((pair.earlier.value.as_str(), pair.later.value.as_str()), ("late", "b"));
    }

    #[test]
    fn reordered_send_does_not_confuse_processes_partitions_or_incarnations() {
        let mut b = Builder::default();
        // Processes 1 and 2 interleave in t/0; each one's own sends are in order.
        b.send_info(1, "t/0", "1-a");
        b.send_info(2, "t/0", "2-a");
        b.send_info(1, "t/0", "1-b");
        b.send_info(2, "t/0", "2-b");
        // Process 1 sends to t/1 after t/0, and it lands at a lower offset: another partition.
        b.send_ok(1, "t/1", "1-c", Some(0));
        // Process 3 sends x, its client crashes, and its next client's y lands first: another producer.
        b.send_info(3, "t/0", "3-x");
        let time_ns = b.tick();
        b.history.crash(ProcessId(3), time_ns);
        b.send_info(3, "t/0", "3-y");
        b.poll(
            4,
            &[
                ("t/0", &[(0, "2-a"), (1, "2-b"), (2, "1-a"), (3, "3-y"), (4, "1-b"), (5, "3-x")]),
                ("t/1", &[(0, "1-c")]),
            ],
        );
        let report = b.check_exactly_once();
        assert!(report.is_valid(), "{report}");

        // Without the crash, process 3's pair is reordered.
        let mut events = b.history.clone().into_events();
        let crash = events.iter().position(|event| event.op == Op::Crash).unwrap();
        events.remove(crash);
        for (index, event) in events.iter_mut().enumerate() {
            event.index = OpIndex(index as u64);
        }
        let report = check_with(
            &History::from_events(events).unwrap(),
            CheckOptions { exactly_once: true, ..CheckOptions::default() },
        );
        let pairs: Vec<(&str, &str)> =
            report.reordered_sends.iter().map(|r| (r.earlier.value.as_str(), r.later.value.as_str())).collect();
        assert_eq!(pairs, vec![("3-x", "3-y")], "{report}");
    }
}
