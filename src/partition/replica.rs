//! The sans-IO replica core: one replica of one partition, leader or follower, Kafka's pull-based ISR
//! with fsync before the high watermark (ADR 0011).
//!
//! It composes a [`PartitionCore`] (the local log's offsets, writes, group-commit syncs, storage
//! failures and parked consumer fetches, whose Ready contract it keeps) with what replication adds:
//! the partition state the controller decided, the leader-epoch cache ([`LeaderEpochs`]), per-follower
//! fetch state, the replicated high watermark, ISR change proposals, and the follower's fetch loop.
//!
//! # In
//! [`Input`]: the partition state from the controller ([`Input::PartitionStateChanged`]: leader,
//! leader epoch, partition epoch, ISR, replicas, min ISR), client produce and consumer fetch
//! requests, follower fetch requests (at a leader), fetch responses (at a follower), the local log's
//! completions (`Written`, `WriteFailed`, `SyncCompleted`, `StorageFailed` as [`PartitionCore`] takes
//! them; `Truncated` after a `truncate_to`; `Recovered` with the recovered epoch cache), and `Tick`.
//! Time comes in as `now_ms`.
//!
//! # Ordering hazards (what the core does about them)
//! - A former follower whose last truncation is not synced yet refuses produce with `Busy` and holds
//!   back its new epoch's cache entry until that sync: appending over an unsynced truncation could,
//!   after a crash, leave new batches followed by resurrected old ones.
//! - A leader whose storage recovery cut its log clamps what it knows of its followers' durable ends
//!   to the recovered end (they vouched for batches that are gone), and resigns if followers were
//!   sent any of them.
//!
//! # Out
//! [`Ready`], performed by the shell in field order:
//! 1. `epoch_assign`: apply each to the persisted epoch cache (`log::epoch_cache::EpochCache::assign`)
//!    and **await its sync before this Ready's writes** (a durable batch always has a durable epoch).
//! 2. `truncate_to` (follower): `PartitionLog::truncate_to` (it cuts the whole batch containing the
//!    offset), then report [`Input::Truncated`] with the log end it left. The next Ready starts a sync;
//!    when that completes, `EpochCache::truncate_from_end(log_end)` and its sync, and only then report
//!    `SyncCompleted` (the cache's cut must never be durable before the log's: `log::epoch_cache`).
//! 3. `writes`: append in order, report `Written` / `WriteFailed` as for [`PartitionCore`].
//! 4. `start_sync`: begin a log sync; report `SyncCompleted { up_to }` or `StorageFailed`.
//! 5. `reads` (consumers, bounded by the high watermark) and `follower_reads` (followers, bounded by
//!    what was written): read whole batches and answer; a follower read becomes a
//!    [`FetchResponse`] with `FetchResult::Data` and the `high_watermark` and `leader_epoch` given.
//! 6. `replies` (clients) and `follower_replies` (complete fetch responses: errors, divergence, empty).
//! 7. `fetch` (follower): send this fetch request to the leader; deliver its response with
//!    [`Input::FetchResponse`]. At most one is in flight; a lost one times out on `Tick`.
//! 8. `isr_change` (leader): propose it to the controller (fenced by leader epoch and partition epoch).
//!    The answer comes back as a new partition state; a lost proposal is re-sent after
//!    `isr_change_retry_ms`. `resign`: this leader lost data it had already sent to followers (a storage
//!    failure); ask the controller for a new leader epoch (controlled shutdown of this partition).
//!
//! The shell ticks at least every `replica_lag_ms_max / 4` and at [`ReplicaCore::next_deadline_ms`].
//!
//! # The shell's contract beyond the Ready order
//! - After a restart the core is rebuilt with [`ReplicaCore::new`] from the recovered log and epoch
//!   cache. **A broker never leads an epoch it led before it restarted**: the controller bumps the
//!   leader epoch when a restarted broker registers (a leader that lost its page cache might otherwise
//!   write new batches at offsets its followers hold with the same epoch: an undetectable divergence).
//! - Fetch responses and partition states may arrive late, twice, or not at all: the core ignores
//!   stale partition states (by leader and partition epoch) and responses to fetches it no longer
//!   waits for (by `fetch_id`).
//! - On a storage failure the shell drops a pending epoch-cache cut (its log truncation may not have
//!   survived), reopens the log, cuts the cache at the recovered log end, and hands the cache's
//!   entries to the core with `Input::Recovered` (they replace the core's copy).
//! - Batches in a fetch response are forwarded as stored bytes (the shell parses the bytes into
//!   [`Batch`]es, which checks their CRCs, and never re-encodes them).
//!
//! # Invariants (`check_invariants`, after every step)
//! - The partition state is well formed: the ISR is a subset of the replicas, the leader is in it.
//! - Leader: HW <= its own stable (durable) end; HW never moves back while it leads; HW is either the
//!   HW it started its leadership with or at most the durable end of every member of the *maximal*
//!   ISR (committed ISR plus any pending expansion: KIP-497/KIP-841), as reported by fetches that
//!   passed the divergence check.
//! - Nothing at or above HW is served to a consumer (the inner core's cap is the HW).
//! - The epoch cache is ordered and ends no later than the log.
//!
//! - Leader: the HW moves only while the ISR, less a pending shrink, has at least `min_isr` members
//!   (KIP-966; what the controller's eligible leader replicas rely on).
//!
//! Acknowledgements: `acks=all` is answered only when the HW covers the batch and the ISR has at
//! least `min_isr` members (else `NotEnoughReplicas` before appending, `NotEnoughReplicasAfterAppend`
//! after); `acks=leader` when the leader's own fsync covers it; `acks=none` once written.
//!
//! Architecture invariant: this module never touches sockets, files, clocks, threads or an RNG
//! (checked by `tests/tidy.rs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::batch::Batch;
use crate::leader_epochs::{EpochEndOffset, LeaderEpochs};
use crate::partition::core::{self, CoreConfig, PartitionCore, Read, RequestId};
use crate::partition::retention::LogPolicy;
use crate::producer_state::{BatchIdentity, ProducerStates, Verdict};
use crate::protocol::{Acks, ErrorCode};
use crate::sometimes::{self, Sometimes};
use crate::types::{LeaderEpoch, NodeId, Offset, TimestampMs};

pub use crate::partition::core::Reply;

/// Bumped by the controller on every change of a partition's leader or ISR (`meta::state`); an ISR
/// change proposal names the partition epoch it was based on, so a stale one is refused (KIP-497).
pub use crate::types::PartitionEpoch;

/// What the controller decided for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub leader: Option<NodeId>,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
    pub isr: Vec<NodeId>,
    pub replicas: Vec<NodeId>,
    pub min_isr: usize,
    /// The topic's retention and segment size (the shell applies them; ADR 0019).
    pub log: LogPolicy,
}

impl PartitionState {
    /// Why this state cannot be acted on, if it is malformed.
    pub fn validate(&self) -> Result<(), String> {
        let unique = |list: &[NodeId]| list.iter().collect::<BTreeSet<_>>().len() == list.len();
        if self.replicas.is_empty() || !unique(&self.replicas) || !unique(&self.isr) {
            return Err(format!("replicas {:?} / isr {:?} empty or repeated", self.replicas, self.isr));
        }
        if let Some(stray) = self.isr.iter().find(|member| !self.replicas.contains(member)) {
            return Err(format!("isr member {stray} is not a replica"));
        }
        if let Some(leader) = self.leader {
            if !self.isr.contains(&leader) {
                return Err(format!("leader {leader} is not in the isr {:?}", self.isr));
            }
        }
        if self.min_isr == 0 {
            return Err("min_isr is 0".into());
        }
        Ok(())
    }
}

/// Seven days, Kafka's `transactional.id.expiration.ms` default for producer state.
pub const PRODUCER_STATE_MS_MAX_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;
/// How often expired producers are looked for.
const PRODUCER_EXPIRY_INTERVAL_MS: i64 = 60_000;

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub core: CoreConfig,
    /// A follower not caught up to the leader's log end for this long leaves the ISR.
    pub replica_lag_ms_max: i64,
    /// An ISR change proposal without an answer (a new partition state) is sent again after this.
    pub isr_change_retry_ms: i64,
    /// How long a follower's fetch may wait at the leader for new data (long poll).
    pub follower_fetch_wait_ms: u32,
    /// A fetch without a response for this long (beyond its wait) is given up and sent again.
    pub follower_fetch_timeout_ms: i64,
    /// After an error response, the follower waits this long before fetching again.
    pub follower_retry_backoff_ms: i64,
    pub follower_fetch_bytes_max: u32,
    /// Follower fetches parked at a leader before new ones are answered at once.
    pub parked_follower_fetches_max: usize,
    /// How often the shell applies retention to the log (ADR 0019; Kafka's
    /// `log.retention.check.interval.ms`, 5 minutes there).
    pub retention_check_interval_ms: u64,
    /// An idempotent producer whose newest batch is older than this is forgotten (its next batch
    /// gets `UnknownProducerId` unless it starts a new epoch).
    pub producer_state_ms_max: i64,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            core: CoreConfig::default(),
            replica_lag_ms_max: 10_000,
            isr_change_retry_ms: 1_000,
            follower_fetch_wait_ms: 500,
            follower_fetch_timeout_ms: 2_000,
            follower_retry_backoff_ms: 100,
            follower_fetch_bytes_max: 8 * 1024 * 1024,
            parked_follower_fetches_max: 64,
            retention_check_interval_ms: RETENTION_CHECK_INTERVAL_MS_DEFAULT,
            producer_state_ms_max: PRODUCER_STATE_MS_MAX_DEFAULT,
        }
    }
}

/// `retention_check_interval_ms` when the broker's config does not set it: 30 s.
pub const RETENTION_CHECK_INTERVAL_MS_DEFAULT: u64 = 30_000;

/// A follower's fetch, sent to the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// Chosen by the follower, echoed in the response: a response to any other fetch is ignored.
    pub fetch_id: u64,
    pub replica: NodeId,
    /// The leader epoch the follower believes current (KIP-320 fencing).
    pub leader_epoch: LeaderEpoch,
    /// The follower's log end: the next offset it wants.
    pub fetch_offset: Offset,
    /// The epoch of the follower's last batch (its latest cache entry); `None` for an empty log.
    pub last_fetched_epoch: Option<LeaderEpoch>,
    /// Everything below this is fsynced on the follower. The leader counts only this toward its HW.
    pub durable_end: Offset,
    pub bytes_max: u32,
    pub wait_ms_max: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchResult {
    /// Whole batches from the fetch offset, as stored (possibly none: the wait ended).
    Data {
        batches: Vec<Batch>,
    },
    /// The follower's log diverges from the leader's: the leader's largest epoch `<=` the follower's
    /// last fetched epoch, and where that epoch ends on the leader (KIP-320). `epoch: None` means the
    /// leader knows no such epoch; `end_offset` is then the leader's log start.
    Diverging {
        epoch: Option<LeaderEpoch>,
        end_offset: Offset,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponse {
    pub fetch_id: u64,
    /// The leader's epoch when it answered.
    pub leader_epoch: LeaderEpoch,
    pub high_watermark: Offset,
    /// The leader's log start when it answered (`None`: unknown, e.g. the call itself failed). A
    /// follower deletes its segments below it, and one whose log ends below it starts over there.
    pub log_start: Option<Offset>,
    pub result: FetchResult,
}

/// A follower fetch the shell answers with data: read whole batches in `[offset, up_to)`, at most
/// `bytes_max` (at least one batch), and send a [`FetchResponse`] with these fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerRead {
    pub request: RequestId,
    pub replica: NodeId,
    pub fetch_id: u64,
    pub offset: Offset,
    pub bytes_max: u32,
    pub up_to: Offset,
    pub high_watermark: Offset,
    pub leader_epoch: LeaderEpoch,
    pub log_start: Offset,
}

/// A proposal to the controller: set the ISR to `new_isr`, if the partition is still at
/// `leader_epoch` and `partition_epoch` (else refuse it: this leader's view is stale).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    pub leader: NodeId,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
    pub new_isr: Vec<NodeId>,
}

#[derive(Debug)]
pub enum Input {
    PartitionStateChanged {
        state: PartitionState,
        now_ms: TimestampMs,
    },
    Produce {
        request: RequestId,
        batch: Batch,
        acks: Acks,
    },
    /// A consumer's fetch; `leader_epoch` is the epoch its metadata named, if it sent one (KIP-320).
    ConsumerFetch {
        request: RequestId,
        offset: Offset,
        bytes_max: u32,
        wait_ms_max: u32,
        leader_epoch: Option<LeaderEpoch>,
        now_ms: TimestampMs,
    },
    /// At a leader: a follower's fetch.
    FollowerFetch {
        request: RequestId,
        fetch: FetchRequest,
        now_ms: TimestampMs,
    },
    /// At a follower: the leader's answer to a fetch.
    FetchResponse {
        from: NodeId,
        response: FetchResponse,
        now_ms: TimestampMs,
    },
    /// The shell performed `Ready::truncate_to`: the log now ends at `log_end` (at or below the
    /// offset asked for: the batch containing it was cut whole).
    Truncated {
        log_end: Offset,
        /// The log's producer state after the cut (`PartitionLog::producer_states`): replaces the core's.
        producers: ProducerStates,
    },
    Written {
        up_to: Offset,
    },
    WriteFailed {
        written_up_to: Offset,
        disk_full: bool,
        reason: String,
    },
    SyncCompleted {
        up_to: Offset,
    },
    StorageFailed {
        reason: String,
    },
    /// Reopening the failed log failed again: the failure stands, with this cause.
    StillFailed {
        reason: String,
    },
    /// The shell reopened the log after a failure, and the epoch cache with it: `epochs` is the
    /// cache as recovered (`EpochCache::truncate_from_end(log_end)` applied), which replaces the
    /// core's copy (a failure may have undone a truncation the core already applied to its copy).
    Recovered {
        log_start: Offset,
        log_end: Offset,
        epochs: LeaderEpochs,
        /// The recovered log's producer state: replaces the core's (appends that failed are gone).
        producers: ProducerStates,
    },
    /// The shell deleted whole segments from the start of the log (retention, ADR 0019): the log
    /// now starts at `log_start` (at or below the high watermark).
    LogStartAdvanced {
        log_start: Offset,
    },
    /// The shell performed `Ready::reset_to`: the follower's log is empty and starts (and ends) at
    /// `to`, its epoch cache and producer state are empty.
    LogReset {
        to: Offset,
    },
    /// Nobody waits for consumer fetch `request` any more: dropped if it is parked
    /// (`core::Input::CancelFetch`).
    CancelFetch {
        request: RequestId,
    },
    Tick {
        now_ms: TimestampMs,
    },
    /// The shell's wall clock (ms since the Unix epoch), sent beside ticks: idle producers are
    /// forgotten when their newest batch timestamp (a wall-clock time) is older than
    /// `producer_state_ms_max` (looked at once per `PRODUCER_EXPIRY_INTERVAL_MS`).
    WallClock {
        wall_clock_ms: TimestampMs,
    },
}

#[derive(Debug, Default)]
pub struct Ready {
    pub epoch_assign: Vec<(LeaderEpoch, Offset)>,
    pub truncate_to: Option<Offset>,
    /// A follower whose log ends below its leader's log start (retention deleted what it still
    /// needs), or whose epochs its leader no longer knows while the leader's log starts past its
    /// own: empty the log and start it at this offset, then report `Input::LogReset`.
    pub reset_to: Option<Offset>,
    pub writes: Vec<Batch>,
    pub start_sync: bool,
    pub reads: Vec<Read>,
    pub follower_reads: Vec<FollowerRead>,
    pub replies: Vec<(RequestId, Reply)>,
    pub follower_replies: Vec<(RequestId, FetchResponse)>,
    /// Send to this leader.
    pub fetch: Option<(NodeId, FetchRequest)>,
    pub isr_change: Option<IsrChange>,
    pub resign: bool,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.epoch_assign.is_empty()
            && self.truncate_to.is_none()
            && self.reset_to.is_none()
            && self.writes.is_empty()
            && !self.start_sync
            && self.reads.is_empty()
            && self.follower_reads.is_empty()
            && self.replies.is_empty()
            && self.follower_replies.is_empty()
            && self.fetch.is_none()
            && self.isr_change.is_none()
            && !self.resign
    }
}

/// What the leader knows of one follower in its current epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The follower's log end at its last fetch that passed the divergence check.
    pub fetch_offset: Option<Offset>,
    /// The durable end its latest fetch that passed the divergence check reported (capped by that
    /// fetch's offset). `None` until its first such fetch in this epoch. The latest, not the
    /// largest: a follower that restarted in this epoch may hold less than it once reported (bit
    /// rot that its recovery cut out), and it must be counted for what it holds now, for the HW and
    /// for joining the ISR (`isr_3_bit_flips` seed 32: a follower cut to offset 6 was let back into
    /// the ISR on the 122 it reported before its restart, and then elected).
    pub durable_end: Option<Offset>,
    /// The largest durable end it reported in this epoch: what the HW was computed from at some
    /// point, so the HW never exceeds it (`check_invariants`).
    durable_max: Option<Offset>,
    pub last_fetch_ms: TimestampMs,
    pub last_caught_up_ms: TimestampMs,
    /// The leader's log end at the follower's previous fetch (Kafka's lastFetchLeaderLogEndOffset).
    leader_end_at_last_fetch: Option<Offset>,
}

#[derive(Debug)]
struct PendingIsr {
    change: IsrChange,
    proposed_ms: TimestampMs,
}

#[derive(Debug)]
struct ParkedFollowerFetch {
    request: RequestId,
    replica: NodeId,
    fetch_id: u64,
    offset: Offset,
    bytes_max: u32,
    deadline_ms: TimestampMs,
}

#[derive(Debug)]
struct LeaderState {
    followers: BTreeMap<NodeId, FollowerProgress>,
    /// The HW this leadership started with (it does not advance until the ISR has confirmed).
    hw_floor: Offset,
    /// The log end when this leadership began: where this epoch starts.
    epoch_start: Offset,
    pending_isr: Option<PendingIsr>,
    parked: Vec<ParkedFollowerFetch>,
    /// The highest offset handed to a follower in this epoch.
    served_end: Offset,
    /// Storage recovery took data this leader had already sent to followers, or committed data
    /// (`lost_committed`): it must not append in this epoch again (module doc), so it refuses
    /// appends and consumers and asks to resign.
    lost_replicated_data: bool,
    /// When the last resignation was asked (re-asked after `isr_change_retry_ms`: the proposal or
    /// its answer may be lost).
    resigned_ms: Option<TimestampMs>,
    /// The leadership began while the log was failed (its end unknown): the epoch really starts at
    /// the log end recovery finds.
    began_failed: bool,
}

#[derive(Debug)]
struct FollowerState {
    leader: NodeId,
    /// (fetch id, sent at, fetch offset) of the fetch in flight.
    in_flight: Option<(u64, TimestampMs, Offset)>,
    /// A truncation handed to the shell and not yet reported (`Input::Truncated`): no fetch meanwhile.
    truncating: Option<Offset>,
    /// A reset handed to the shell and not yet reported (`Input::LogReset`): no fetch meanwhile.
    resetting: Option<Offset>,
    /// The leader's log start as its latest response in this epoch gave it.
    leader_log_start: Option<Offset>,
    blocked_until_ms: TimestampMs,
}

#[derive(Debug)]
enum Role {
    Leader(LeaderState),
    Follower(FollowerState),
    /// No leader, or this broker is not a replica: everything is refused.
    Offline,
}

/// What the shell recovered before building a [`ReplicaCore`].
#[derive(Debug, Clone)]
pub struct OpenedLog {
    pub log_start: Offset,
    pub log_end: Offset,
    /// The persisted epoch cache after `EpochCache::open` (its `epochs()`).
    pub epochs: LeaderEpochs,
    /// The HW this replica last knew, if it kept one (else `log_start`); clamped to the log.
    pub high_watermark: Offset,
    /// Recovery cut the log below the synced end this replica had checkpointed (the checkpoint's
    /// value): synced batches, possibly committed ones, are gone from it. If it is to lead before its log reaches that offset
    /// again (fetched from a leader), it resigns at once and serves nothing (the controller then
    /// elects a replica that holds them, `meta::state`).
    pub lost_committed: Option<Offset>,
    /// The idempotent producers' state of the recovered log (`PartitionLog::producer_states`).
    pub producers: ProducerStates,
}

/// What the replica core's role is, for the shell and for `describe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleKind {
    Leader,
    Follower { leader: NodeId },
    Offline,
}

#[derive(Debug, Clone, Copy)]
struct ClientAppend {
    acks: Acks,
    next_offset: Offset,
    /// Answered already (leadership lost): the inner core's later reply is swallowed.
    answered: bool,
}

#[derive(Debug, Clone, Copy)]
struct AwaitingHw {
    request: RequestId,
    base_offset: Offset,
    next_offset: Offset,
}

#[derive(Debug)]
pub struct ReplicaCore {
    me: NodeId,
    config: ReplicaConfig,
    state: PartitionState,
    inner: PartitionCore,
    epochs: LeaderEpochs,
    role: Role,
    /// The high watermark: on a leader, the replicated HW; on a follower, what it learned.
    high_watermark: Offset,
    now_ms: TimestampMs,
    next_fetch_id: u64,
    /// Accepted client appends the inner core has not answered yet, by request.
    client_appends: BTreeMap<RequestId, ClientAppend>,
    /// `acks=all` appends durable on the leader, waiting for the HW, in offset order.
    awaiting_hw: VecDeque<AwaitingHw>,
    /// Partition states refused as malformed (the shell may log them).
    rejected_states: u64,
    /// A new leader's epoch entry, held back while a truncation is not yet durable: the shell cuts the
    /// persisted cache only after that sync, and the cut must not remove this entry.
    deferred_epoch_assign: Option<(LeaderEpoch, Offset)>,
    /// From [`OpenedLog::lost_committed`] until this replica first leads (and resigns if its log has
    /// not reached that offset again by then).
    lost_committed: Option<Offset>,
    /// The idempotent producers' dedup state (`producer_state`) of every batch in the log and every
    /// append handed to the inner core (a leader's retry of a batch not yet written is a duplicate).
    producers: ProducerStates,
    /// When expired producers were last looked for.
    producers_expired_ms: TimestampMs,
    ready: Ready,
}

// ---- the arithmetic, as pure functions (table-tested in tests/replica_tables.rs) ------------------

/// The committed ISR plus the members a pending change would add (KIP-497's maximal ISR): while a
/// change is pending, the HW needs the larger set, so a leader whose shrink the controller has not
/// accepted cannot advance its HW alone.
pub fn maximal_isr(isr: &[NodeId], pending: Option<&[NodeId]>) -> Vec<NodeId> {
    let mut members: BTreeSet<NodeId> = isr.iter().copied().collect();
    members.extend(pending.unwrap_or_default().iter().copied());
    members.into_iter().collect()
}

/// The ISR size `min_isr` is checked against: the committed ISR minus members a pending change
/// removes (a leader about to lose followers refuses `acks=all` before it appends).
pub fn isr_for_min_check(isr: &[NodeId], pending: Option<&[NodeId]>) -> usize {
    isr.iter().filter(|member| pending.is_none_or(|pending| pending.contains(member))).count()
}

/// The HW the members support: the least durable end among them (the leader's own stable end for
/// itself); `None` while some member's durable end is unknown (it has not fetched in this epoch).
pub fn supported_high_watermark(
    leader: NodeId,
    leader_stable_end: Offset,
    members: &[NodeId],
    durable_end: impl Fn(NodeId) -> Option<Offset>,
) -> Option<Offset> {
    let mut supported = leader_stable_end;
    for &member in members.iter().filter(|member| **member != leader) {
        supported = supported.min(durable_end(member)?);
    }
    Some(supported)
}

/// Kafka's ISR expansion rule with durability: the follower holds, durably, everything up to the HW
/// and up to the start of the current leader epoch (so everything earlier leaders committed).
pub fn may_join_isr(durable_end: Offset, high_watermark: Offset, epoch_start: Offset) -> bool {
    durable_end >= high_watermark && durable_end >= epoch_start
}

/// Kafka's ISR shrink rule: behind the leader's log end, and not caught up for longer than the limit.
pub fn is_lagging(
    fetch_offset: Option<Offset>,
    leader_log_end: Offset,
    last_caught_up_ms: TimestampMs,
    now_ms: TimestampMs,
    lag_ms_max: i64,
) -> bool {
    let behind = fetch_offset.is_none_or(|offset| offset < leader_log_end);
    behind && now_ms - last_caught_up_ms > lag_ms_max
}

/// Where a follower truncates after a diverging answer (KIP-279): the smaller of the leader's end
/// offset for the epoch it found and our own end offset for that same epoch. If we know no epoch
/// that old, everything from our first epoch on is suspect. Never below our log start, never above
/// our log end. (An answer at our log end still drops epochs that own no batch.)
pub fn divergence_truncation_offset(
    ours: &LeaderEpochs,
    log_start: Offset,
    log_end: Offset,
    leader_epoch_found: Option<LeaderEpoch>,
    leader_end: Offset,
) -> Offset {
    let target = match leader_epoch_found {
        None => leader_end,
        Some(epoch) => match ours.end_offset_for(epoch, log_end) {
            EpochEndOffset { end_offset: Some(our_end), .. } => leader_end.min(our_end),
            _ => leader_end.min(ours.entries().first().map_or(log_end, |entry| entry.start_offset)),
        },
    };
    target.min(log_end).max(log_start)
}

fn error_reply(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::Error { code, message: message.into() }
}

impl ReplicaCore {
    /// A replica over a log that was just opened (everything in it durable), in the partition state
    /// the controller last published.
    pub fn new(
        me: NodeId,
        config: ReplicaConfig,
        state: PartitionState,
        log: OpenedLog,
        now_ms: TimestampMs,
    ) -> ReplicaCore {
        let inner = PartitionCore::new(config.core.clone(), state.leader_epoch, log.log_start, log.log_end);
        let log = OpenedLog { high_watermark: log.high_watermark.clamp(log.log_start, log.log_end), ..log };
        ReplicaCore::with_inner(me, config, state, inner, log, now_ms)
    }

    /// A replica whose log could not be opened: produce and fetches get `StorageError` until the shell
    /// reports `Recovered` (with the log and epoch cache it then opened).
    pub fn new_failed(
        me: NodeId,
        config: ReplicaConfig,
        state: PartitionState,
        now_ms: TimestampMs,
        reason: String,
    ) -> ReplicaCore {
        let inner = PartitionCore::new_failed(config.core.clone(), state.leader_epoch, reason);
        let nothing = OpenedLog {
            log_start: Offset::ZERO,
            log_end: Offset::ZERO,
            epochs: LeaderEpochs::new(),
            high_watermark: Offset::ZERO,
            lost_committed: None,
            producers: ProducerStates::new(),
        };
        ReplicaCore::with_inner(me, config, state, inner, nothing, now_ms)
    }

    fn with_inner(
        me: NodeId,
        config: ReplicaConfig,
        state: PartitionState,
        inner: PartitionCore,
        log: OpenedLog,
        now_ms: TimestampMs,
    ) -> ReplicaCore {
        // The inner core holds the log's offsets; the rest is the replica's.
        let OpenedLog { epochs, high_watermark, lost_committed, producers, .. } = log;
        let mut core = ReplicaCore {
            me,
            config,
            state: PartitionState {
                leader: None,
                leader_epoch: LeaderEpoch(-1),
                partition_epoch: PartitionEpoch(-1),
                isr: Vec::new(),
                replicas: Vec::new(),
                min_isr: 1,
                log: LogPolicy::default(),
            },
            inner,
            epochs,
            role: Role::Offline,
            high_watermark,
            now_ms,
            next_fetch_id: 1,
            client_appends: BTreeMap::new(),
            awaiting_hw: VecDeque::new(),
            rejected_states: 0,
            deferred_epoch_assign: None,
            lost_committed,
            producers,
            producers_expired_ms: now_ms,
            ready: Ready::default(),
        };
        core.inner.set_high_watermark_cap(core.high_watermark);
        core.step(Input::PartitionStateChanged { state, now_ms });
        core
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    pub fn state(&self) -> &PartitionState {
        &self.state
    }

    pub fn role(&self) -> RoleKind {
        match &self.role {
            Role::Leader(_) => RoleKind::Leader,
            Role::Follower(follower) => RoleKind::Follower { leader: follower.leader },
            Role::Offline => RoleKind::Offline,
        }
    }

    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    pub fn log_start(&self) -> Offset {
        self.inner.log_start()
    }

    pub fn log_end(&self) -> Offset {
        self.inner.log_end()
    }

    /// What this replica holds durably (written, with `fsync=never`).
    pub fn stable_end(&self) -> Offset {
        self.inner.stable_end()
    }

    pub fn epochs(&self) -> &LeaderEpochs {
        &self.epochs
    }

    pub fn rejected_states(&self) -> u64 {
        self.rejected_states
    }

    /// The leader's view of a follower (for `topic describe`: log end and lag).
    pub fn follower_progress(&self, replica: NodeId) -> Option<&FollowerProgress> {
        match &self.role {
            Role::Leader(leader) => leader.followers.get(&replica),
            _ => None,
        }
    }

    fn pending_isr(&self) -> Option<&[NodeId]> {
        match &self.role {
            Role::Leader(leader) => leader.pending_isr.as_ref().map(|pending| pending.change.new_isr.as_slice()),
            _ => None,
        }
    }

    /// The set the HW is computed over: the committed ISR plus any member a pending change adds.
    pub fn maximal_isr(&self) -> Vec<NodeId> {
        maximal_isr(&self.state.isr, self.pending_isr())
    }

    fn isr_for_min_check(&self) -> usize {
        isr_for_min_check(&self.state.isr, self.pending_isr())
    }

    fn under_min_isr(&self) -> bool {
        self.isr_for_min_check() < self.state.min_isr
    }

    /// The earliest time the shell must tick (long polls, fetch timeouts, retries); it also ticks
    /// at least every `replica_lag_ms_max / 4`.
    pub fn next_deadline_ms(&self) -> Option<TimestampMs> {
        let mut deadline = self.inner.next_deadline_ms();
        let mut consider = |at: TimestampMs| deadline = Some(deadline.map_or(at, |current| current.min(at)));
        match &self.role {
            Role::Leader(leader) => {
                for fetch in &leader.parked {
                    consider(fetch.deadline_ms);
                }
                if let Some(pending) = &leader.pending_isr {
                    consider(pending.proposed_ms + self.config.isr_change_retry_ms);
                }
            }
            Role::Follower(follower) => {
                if let Some((_, sent_ms, _)) = follower.in_flight {
                    consider(
                        sent_ms + i64::from(self.config.follower_fetch_wait_ms) + self.config.follower_fetch_timeout_ms,
                    );
                } else if follower.blocked_until_ms > self.now_ms {
                    consider(follower.blocked_until_ms);
                }
            }
            Role::Offline => {}
        }
        deadline
    }

    pub fn step(&mut self, input: Input) {
        match input {
            Input::PartitionStateChanged { state, now_ms } => {
                self.advance_time(now_ms);
                self.on_partition_state(state);
            }
            Input::Produce { request, batch, acks } => self.on_produce(request, batch, acks),
            Input::ConsumerFetch { request, offset, bytes_max, wait_ms_max, leader_epoch, now_ms } => {
                self.advance_time(now_ms);
                self.on_consumer_fetch(request, offset, bytes_max, wait_ms_max, leader_epoch);
            }
            Input::FollowerFetch { request, fetch, now_ms } => {
                self.advance_time(now_ms);
                self.on_follower_fetch(request, fetch);
            }
            Input::FetchResponse { from, response, now_ms } => {
                self.advance_time(now_ms);
                self.on_fetch_response(from, response);
            }
            Input::Truncated { log_end, producers } => {
                self.on_truncated(log_end);
                self.producers = producers;
            }
            Input::LogStartAdvanced { log_start } => self.on_log_start_advanced(log_start),
            Input::LogReset { to } => self.on_log_reset(to),
            Input::CancelFetch { request } => self.inner.step(core::Input::CancelFetch { request }),
            Input::Written { up_to } => {
                self.inner.step(core::Input::Written { up_to });
                // With `fsync = "never"` a write is as stable as this replica gets: the HW may move.
                self.recompute_high_watermark();
                self.serve_parked_follower_fetches();
            }
            Input::WriteFailed { written_up_to, disk_full, reason } => {
                self.inner.step(core::Input::WriteFailed { written_up_to, disk_full, reason });
                self.fall_back_to_the_written_end();
                self.drop_fetch_in_flight();
            }
            Input::SyncCompleted { up_to } => {
                self.inner.step(core::Input::SyncCompleted { up_to });
                self.recompute_high_watermark();
            }
            Input::StillFailed { reason } => self.inner.step(core::Input::StillFailed { reason }),
            Input::StorageFailed { reason } => {
                self.inner.step(core::Input::StorageFailed { reason });
                self.fall_back_to_the_written_end();
                self.drop_fetch_in_flight();
            }
            Input::Recovered { log_start, log_end, epochs, producers } => {
                self.producers = producers;
                self.on_recovered(log_start, log_end, epochs);
            }
            Input::Tick { now_ms } => {
                self.advance_time(now_ms);
                self.inner.step(core::Input::Tick { now_ms: self.now_ms });
                self.on_tick();
            }
            Input::WallClock { wall_clock_ms } => self.expire_producers(wall_clock_ms),
        }
        self.check_invariants();
    }

    /// Takes what the shell must do now (module doc: the order to perform it in).
    pub fn ready(&mut self) -> Ready {
        let inner = self.inner.ready();
        for (request, reply) in inner.replies {
            self.route_inner_reply(request, reply);
        }
        self.release_acks();
        self.maybe_send_fetch();
        if !self.inner.is_truncation_unsynced() && !self.inner.is_failed() {
            if let Some(assign) = self.deferred_epoch_assign.take() {
                // Appends were refused until now, so this still comes before any batch of the epoch.
                self.ready.epoch_assign.push(assign);
            }
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.writes = inner.writes;
        ready.start_sync = inner.start_sync;
        ready.reads = inner.reads;
        ready
    }

    fn advance_time(&mut self, now_ms: TimestampMs) {
        // Time from the shell never runs backwards inside the core.
        self.now_ms = self.now_ms.max(now_ms);
    }

    fn reply(&mut self, request: RequestId, reply: Reply) {
        self.ready.replies.push((request, reply));
    }

    fn follower_reply(&mut self, request: RequestId, fetch_id: u64, result: FetchResult) {
        let response = FetchResponse {
            fetch_id,
            leader_epoch: self.state.leader_epoch,
            high_watermark: self.high_watermark,
            log_start: Some(self.inner.log_start()),
            result,
        };
        self.ready.follower_replies.push((request, response));
    }

    fn follower_error(&mut self, request: RequestId, fetch_id: u64, code: ErrorCode, message: String) {
        self.follower_reply(request, fetch_id, FetchResult::Error { code, message });
    }

    // ---- partition state and role changes -------------------------------------------------------

    fn on_partition_state(&mut self, state: PartitionState) {
        if let Err(reason) = state.validate() {
            let _ = reason;
            self.rejected_states += 1;
            return;
        }
        let current = (self.state.leader_epoch, self.state.partition_epoch);
        if (state.leader_epoch, state.partition_epoch) <= current || state.leader_epoch < self.state.leader_epoch {
            return; // Stale or repeated: the controller's later decision already arrived.
        }
        let leader_changed = state.leader_epoch > self.state.leader_epoch;
        let isr_before = std::mem::replace(&mut self.state, state).isr;
        if !self.state.replicas.contains(&self.me) {
            return self.become_offline("this broker is not a replica of the partition");
        }
        if leader_changed {
            match self.state.leader {
                Some(leader) if leader == self.me => self.become_leader(),
                Some(leader) => self.become_follower(leader),
                None => self.become_offline("the partition has no leader"),
            }
            return;
        }
        // Same leadership, new ISR (or min ISR).
        if let Role::Leader(leader) = &mut self.role {
            let settled = leader
                .pending_isr
                .as_ref()
                .is_some_and(|pending| pending.change.partition_epoch < self.state.partition_epoch);
            if settled {
                if let Some(pending) = leader.pending_isr.take() {
                    let proposed = pending.change.new_isr.len();
                    if self.state.isr == pending.change.new_isr && proposed != isr_before.len() {
                        let grew = proposed > isr_before.len();
                        sometimes::hit(if grew { Sometimes::IsrExpand } else { Sometimes::IsrShrink });
                    }
                }
            }
            self.recompute_high_watermark();
            if self.under_min_isr() {
                self.fail_awaiting(ErrorCode::NotEnoughReplicasAfterAppend, "the ISR shrank below min_insync_replicas");
            }
        }
    }

    /// Answers everything a leader had accepted: the outcome of an appended batch is unknown.
    fn abandon_leadership(&mut self, reason: &str) {
        if !self.awaiting_hw.is_empty() || self.client_appends.values().any(|append| !append.answered) {
            sometimes::hit(Sometimes::LeaderChangeDuringProduce);
        }
        self.fail_awaiting(ErrorCode::NotLeaderAfterAppend, reason);
        self.inner.refuse_parked_fetches(ErrorCode::NotLeader, &format!("no longer the leader: {reason}"));
        let accepted: Vec<RequestId> =
            self.client_appends.iter().filter(|(_, append)| !append.answered).map(|(request, _)| *request).collect();
        for request in accepted {
            self.client_appends.get_mut(&request).expect("listed above").answered = true;
            self.reply(request, error_reply(ErrorCode::NotLeaderAfterAppend, format!("appended, then {reason}")));
        }
        if let Role::Leader(leader) = &mut self.role {
            let parked = std::mem::take(&mut leader.parked);
            for fetch in parked {
                let message = format!("no longer the leader: {reason}");
                self.follower_error(fetch.request, fetch.fetch_id, ErrorCode::NotLeader, message);
            }
        }
    }

    fn fail_awaiting(&mut self, code: ErrorCode, reason: &str) {
        for AwaitingHw { request, .. } in std::mem::take(&mut self.awaiting_hw) {
            self.reply(request, error_reply(code, format!("appended on the leader, then {reason}: outcome unknown")));
        }
    }

    fn become_offline(&mut self, reason: &str) {
        self.abandon_leadership(reason);
        self.role = Role::Offline;
    }

    fn become_leader(&mut self) {
        self.abandon_leadership("a new leader epoch began");
        let epoch = self.state.leader_epoch;
        let log_end = self.inner.log_end();
        self.inner.set_leader_epoch(epoch);
        match self.epochs.assign(epoch, log_end) {
            Ok(_) => self.deferred_epoch_assign = Some((epoch, log_end)),
            Err(error) => panic!("replica {}: becoming leader of epoch {epoch}: {error}", self.me),
        }
        // A new leader's HW stays where it was until every ISR member has confirmed (KIP-101): it
        // counts only fetches in this epoch. It never exceeds what this replica holds durably.
        self.high_watermark = self.high_watermark.min(self.inner.stable_end());
        self.inner.set_high_watermark_cap(self.high_watermark);
        let now_ms = self.now_ms;
        let followers = self
            .state
            .replicas
            .iter()
            .filter(|replica| **replica != self.me)
            .map(|replica| {
                let progress = FollowerProgress {
                    fetch_offset: None,
                    durable_end: None,
                    durable_max: None,
                    last_fetch_ms: now_ms,
                    last_caught_up_ms: now_ms,
                    leader_end_at_last_fetch: None,
                };
                (*replica, progress)
            })
            .collect();
        self.role = Role::Leader(LeaderState {
            followers,
            hw_floor: self.high_watermark,
            epoch_start: log_end,
            pending_isr: None,
            parked: Vec::new(),
            served_end: Offset(i64::MIN),
            lost_replicated_data: false,
            resigned_ms: None,
            began_failed: self.inner.is_failed(),
        });
        // Committed batches are missing here: leading would make the followers cut them too. Once:
        // if the controller keeps this replica leading after it resigned (the last ISR member, no
        // eligible leader replica), nobody is known to hold more, and it leads (`isr_5_swarm`
        // seed 30017 resigned 800 times in a row).
        let log_end = self.inner.log_end();
        if self.lost_committed.take().is_some_and(|committed| log_end < committed) {
            self.resign_now();
        }
        self.recompute_high_watermark();
    }

    /// Asks the controller to move leadership away (see `lost_replicated_data`).
    fn resign_now(&mut self) {
        if let Role::Leader(leader) = &mut self.role {
            leader.lost_replicated_data = true;
            leader.resigned_ms = Some(self.now_ms);
            self.ready.resign = true;
        }
    }

    fn become_follower(&mut self, leader: NodeId) {
        self.abandon_leadership("the partition has another leader");
        self.high_watermark = self.high_watermark.min(self.inner.log_end());
        self.inner.set_high_watermark_cap(self.high_watermark);
        // No truncation here: the first fetch carries our last epoch, and the leader's answer says
        // where our log diverges (KIP-279). Truncating to the HW instead can lose committed data.
        self.role = Role::Follower(FollowerState {
            leader,
            in_flight: None,
            truncating: None,
            resetting: None,
            leader_log_start: None,
            blocked_until_ms: self.now_ms,
        });
    }

    /// Follower fetches parked before a storage failure passed the divergence check against the log
    /// that recovery may just have cut: answered later, from batches written over the cut, they
    /// would hand a follower new batches after its old ones at the same offsets, and its next fetch
    /// would pass the check (the replica_core proptest found an ISR member holding a committed batch
    /// differently that way). They fetch again, checked against the recovered log.
    fn refuse_parked_follower_fetches(&mut self) {
        let Role::Leader(leader) = &mut self.role else { return };
        for fetch in std::mem::take(&mut leader.parked) {
            let message = "the leader's storage recovered from a failure; fetch again".to_owned();
            self.follower_error(fetch.request, fetch.fetch_id, ErrorCode::LeaderNotReady, message);
        }
    }

    /// A storage failure takes the log end back to what was written: offsets assigned to batches
    /// never written are not in the log. What was counted on them goes back with it until recovery
    /// says where the log ends (`on_recovered` then does the same from the recovered log):
    /// - an epoch that starts past that end holds nothing of it (a follower made leader while
    ///   replicated batches still waited for their write starts its epoch at their end), so it is
    ///   forgotten; the recovered cache replaces these entries and a leader that goes on leading
    ///   assigns its epoch again at the recovered end;
    /// - a follower's HW, learned from its leader up to its log end, comes down to it (a leader's
    ///   never counted unwritten batches: its own durable end bounds it).
    ///
    /// Found by `isr_3_many_partitions_small_file_budget` seeds 40182, 40306 and 40388, where the
    /// invariant checks panicked after a write failed.
    fn fall_back_to_the_written_end(&mut self) {
        let log_end = self.inner.log_end();
        self.epochs.truncate_from_end(Offset(log_end.0 + 1));
        if self.high_watermark > log_end {
            self.high_watermark = log_end;
            self.inner.set_high_watermark_cap(log_end);
        }
    }

    fn on_recovered(&mut self, log_start: Offset, log_end: Offset, epochs: LeaderEpochs) {
        // Long polls parked before the failure would be answered from the recovered log, whose end
        // (and so HW cap) may be below what those consumers already saw (`isr_3_bit_flips` seed
        // 20025): they ask again, and get what the replica can serve now.
        let message = "the partition's storage recovered from a failure; retry";
        self.inner.refuse_parked_fetches(ErrorCode::LeaderNotReady, message);
        self.inner.step(core::Input::Recovered { log_start, log_end });
        assert!(
            epochs.latest().is_none_or(|latest| latest.start_offset < log_end),
            "replica {}: the recovered epoch cache {epochs:?} reaches past the recovered log end {log_end}",
            self.me
        );
        self.epochs = epochs;
        self.deferred_epoch_assign = None;
        let epoch = self.state.leader_epoch;
        self.refuse_parked_follower_fetches();
        if let Role::Leader(leader) = &mut self.role {
            // Bit rot that recovery cut out can take batches below the HW too (committed ones): the
            // same answer, and the HW floor follows the log (consumers are refused meanwhile).
            let lost_committed = log_end < self.high_watermark;
            if (log_end < leader.served_end || lost_committed) && !leader.lost_replicated_data {
                leader.lost_replicated_data = true;
                leader.resigned_ms = Some(self.now_ms);
                self.ready.resign = true;
            }
            leader.hw_floor = leader.hw_floor.min(log_end);
            // The failure may have taken every batch of this epoch and with them its entry. A leader
            // that keeps leading (no follower saw what was lost) writes on in this epoch, which
            // starts again at the recovered end. One that resigns must not: followers may hold this
            // epoch's batches from an earlier start, and two starts for one epoch would hide a
            // divergence from the epoch check.
            leader.epoch_start =
                if std::mem::take(&mut leader.began_failed) { log_end } else { leader.epoch_start.min(log_end) };
            // A follower's durable end vouched for the log this leader had when it fetched; above the
            // recovered end that log is gone, and new batches there are not what the follower holds
            // (found by the proptest: the HW counted a follower for data written after the loss).
            for progress in leader.followers.values_mut() {
                progress.durable_end = progress.durable_end.map(|durable| durable.min(log_end));
                progress.durable_max = progress.durable_max.map(|durable| durable.min(log_end));
                progress.fetch_offset = progress.fetch_offset.map(|offset| offset.min(log_end));
            }
            if !leader.lost_replicated_data && self.epochs.latest_epoch() != Some(epoch) {
                match self.epochs.assign(epoch, log_end) {
                    Ok(_) => self.deferred_epoch_assign = Some((epoch, log_end)),
                    Err(error) => panic!("replica {}: re-assigning epoch {epoch} after recovery: {error}", self.me),
                }
            }
        }
        self.high_watermark = self.high_watermark.min(self.inner.log_end());
        self.inner.set_high_watermark_cap(self.high_watermark);
        // Everything recovery kept is durable: a leader whose ISR confirmed it may move its HW now
        // (a single replica at once), not only after the next sync (single_broker_swarm seed 1 showed
        // consumers a HW of 0 after a failed open).
        self.recompute_high_watermark();
    }

    // ---- leader: produce, consumer fetch, follower fetch, HW, ISR -------------------------------

    fn leader_refusal(&self) -> Option<Reply> {
        match &self.role {
            Role::Leader(leader) if leader.lost_replicated_data => Some(error_reply(
                ErrorCode::NotLeader,
                "this leader lost replicated data in a storage failure; waiting for a new leader epoch",
            )),
            Role::Leader(_) => None,
            Role::Follower(follower) => {
                Some(error_reply(ErrorCode::NotLeader, format!("not the leader; broker {} is", follower.leader)))
            }
            Role::Offline => Some(error_reply(ErrorCode::NotLeader, "the partition has no leader here")),
        }
    }

    fn on_produce(&mut self, request: RequestId, batch: Batch, acks: Acks) {
        if let Some(refusal) = self.leader_refusal() {
            return self.reply(request, refusal);
        }
        if self.inner.is_truncation_unsynced() {
            // A former follower whose last truncation is not durable yet: appending now could, after a
            // crash, leave new batches followed by resurrected old ones. It lasts one fsync.
            return self.reply(request, error_reply(ErrorCode::Busy, "the log is syncing a truncation; retry"));
        }
        if acks == Acks::All && self.under_min_isr() {
            let message = format!(
                "the ISR has {} member(s) (counting a pending shrink), fewer than min_insync_replicas {}",
                self.isr_for_min_check(),
                self.state.min_isr
            );
            sometimes::hit(Sometimes::NotEnoughReplicas);
            return self.reply(request, error_reply(ErrorCode::NotEnoughReplicas, message));
        }
        let identity = BatchIdentity::of(&batch);
        if !self.inner.is_failed() {
            if let Some(reply) = self.dedup(&identity, acks) {
                return self.reply(request, reply);
            }
        }
        let base_offset = self.inner.log_end();
        let next_offset = Offset(base_offset.0 + i64::from(batch.last_offset_delta()) + 1);
        // acks=leader waits for the leader's own fsync; acks=none for the write.
        let local_acks = if acks == Acks::None { Acks::None } else { Acks::All };
        self.inner.step(core::Input::Append { request, batch, acks: local_acks });
        if self.inner.log_end() != base_offset {
            self.producers.apply(&identity, base_offset);
            self.client_appends.insert(request, ClientAppend { acks, next_offset, answered: false });
        }
    }

    /// The answer to an idempotent producer's batch that must not be appended, or `None` to append
    /// it (`producer_state`'s rules). A retry of an appended batch gets its original offsets once
    /// they are as safe as `acks` asks; before that, `DuplicatePending` (nothing appended; retry).
    fn dedup(&self, batch: &BatchIdentity, acks: Acks) -> Option<Reply> {
        let (producer, epoch, sequence) = (batch.producer_id, batch.producer_epoch, batch.base_sequence);
        match self.producers.check(batch) {
            Verdict::Append => None,
            Verdict::Duplicate { base_offset, last_offset } => {
                let safe = match acks {
                    Acks::All => last_offset < self.high_watermark,
                    Acks::Leader => last_offset < self.inner.stable_end(),
                    Acks::None => true,
                };
                sometimes::hit(if safe { Sometimes::DuplicateAnswered } else { Sometimes::DuplicatePending });
                Some(if safe {
                    Reply::Produced { base_offset }
                } else {
                    let message = format!(
                        "producer {producer} epoch {epoch} sequence {sequence}: a retry of the batch at offset \
                         {base_offset}, not yet committed; retry"
                    );
                    error_reply(ErrorCode::DuplicatePending, message)
                })
            }
            Verdict::OutOfOrder { expected } => Some({
                sometimes::hit(Sometimes::OutOfOrderSequence);
                error_reply(
                    ErrorCode::OutOfOrderSequence,
                    format!("producer {producer} epoch {epoch}: sequence {sequence} where {expected} was expected"),
                )
            }),
            Verdict::Fenced { current } => Some(error_reply(
                ErrorCode::ProducerFenced,
                format!("producer {producer}: epoch {epoch} is older than its epoch {current} here"),
            )),
            Verdict::UnknownProducer => Some(error_reply(
                ErrorCode::UnknownProducerId,
                format!(
                    "producer {producer} epoch {epoch}: no state here (expired, or its first batch never \
                     arrived) and sequence {sequence} is not 0; start a new epoch"
                ),
            )),
        }
    }

    /// Forgets idle producers (at most once per `PRODUCER_EXPIRY_INTERVAL_MS` of the monotonic clock).
    fn expire_producers(&mut self, wall_clock_ms: TimestampMs) {
        if self.now_ms - self.producers_expired_ms >= PRODUCER_EXPIRY_INTERVAL_MS {
            self.producers_expired_ms = self.now_ms;
            self.producers.expire(wall_clock_ms, self.config.producer_state_ms_max);
        }
    }

    /// The idempotent producers' state (for tests and `describe`).
    pub fn producer_states(&self) -> &ProducerStates {
        &self.producers
    }

    fn route_inner_reply(&mut self, request: RequestId, reply: Reply) {
        let Some(append) = self.client_appends.remove(&request) else {
            return self.reply(request, reply); // A consumer fetch, or an append refused at once.
        };
        if append.answered {
            return; // Already told the outcome is unknown (leadership lost).
        }
        match reply {
            Reply::Produced { base_offset } if append.acks == Acks::All => {
                if self.under_min_isr() {
                    let message = "appended on the leader, but the ISR is below min_insync_replicas: outcome unknown";
                    self.reply(request, error_reply(ErrorCode::NotEnoughReplicasAfterAppend, message));
                } else {
                    let next_offset = append.next_offset;
                    self.awaiting_hw.push_back(AwaitingHw { request, base_offset, next_offset });
                }
            }
            other => self.reply(request, other),
        }
    }

    /// Answers `acks=all` appends the HW now covers (called from `ready`, after routing).
    fn release_acks(&mut self) {
        if !matches!(self.role, Role::Leader(_)) {
            return;
        }
        while let Some(&AwaitingHw { request, base_offset, next_offset }) = self.awaiting_hw.front() {
            if next_offset > self.high_watermark {
                break;
            }
            self.awaiting_hw.pop_front();
            if self.under_min_isr() {
                let message = "committed while the ISR was below min_insync_replicas: outcome unknown";
                self.reply(request, error_reply(ErrorCode::NotEnoughReplicasAfterAppend, message));
            } else {
                self.reply(request, Reply::Produced { base_offset });
            }
        }
    }

    fn on_consumer_fetch(
        &mut self,
        request: RequestId,
        offset: Offset,
        bytes_max: u32,
        wait_ms_max: u32,
        leader_epoch: Option<LeaderEpoch>,
    ) {
        if let Some(refusal) = self.leader_refusal().filter(|_| !matches!(self.role, Role::Leader(_))) {
            return self.reply(request, refusal);
        }
        if let Some(epoch) = leader_epoch {
            if let Some(reply) = self.epoch_mismatch(epoch) {
                return self.reply(request, reply);
            }
        }
        if let Some(refusal) = self.not_ready_refusal() {
            return self.reply(request, refusal);
        }
        let now_ms = self.now_ms;
        self.inner.step(core::Input::Fetch { request, offset, bytes_max, wait_ms_max, now_ms });
    }

    /// Whether this leader may show its HW to consumers: only once it has reached the start of its
    /// epoch. Everything a predecessor committed (and showed) is below that start, so before it a
    /// consumer could see the HW go back, and miss an offset already acknowledged (Kafka's
    /// KAFKA-2334, answered there with `OFFSET_NOT_AVAILABLE`).
    pub fn serves_consumers(&self) -> bool {
        match &self.role {
            Role::Leader(leader) => self.high_watermark >= leader.epoch_start && !leader.lost_replicated_data,
            _ => false,
        }
    }

    fn not_ready_refusal(&self) -> Option<Reply> {
        let Role::Leader(leader) = &self.role else { return None };
        (self.high_watermark < leader.epoch_start || leader.lost_replicated_data).then(|| {
            let message = format!(
                "a new leader's high watermark {} has not reached its epoch's start {} yet; retry",
                self.high_watermark, leader.epoch_start
            );
            error_reply(ErrorCode::LeaderNotReady, message)
        })
    }

    fn epoch_mismatch(&self, epoch: LeaderEpoch) -> Option<Reply> {
        let current = self.state.leader_epoch;
        if epoch < current {
            Some(error_reply(ErrorCode::FencedLeaderEpoch, format!("leader epoch {epoch} is older than {current}")))
        } else if epoch > current {
            Some(error_reply(ErrorCode::UnknownLeaderEpoch, format!("leader epoch {epoch} is newer than {current}")))
        } else {
            None
        }
    }

    /// KIP-320: whether the follower's log disagrees with ours up to its fetch offset, and if so the
    /// end offset of its last fetched epoch here (where it must truncate to).
    fn divergence(&self, fetch: &FetchRequest, log_start: Offset, log_end: Offset) -> Option<EpochEndOffset> {
        match fetch.last_fetched_epoch {
            Some(epoch) => {
                let answer = self.epochs.end_offset_for(epoch, log_end);
                let agrees =
                    answer.epoch == Some(epoch) && answer.end_offset.is_some_and(|end| end >= fetch.fetch_offset);
                (!agrees).then_some(answer)
            }
            None => (fetch.fetch_offset > log_start).then_some(EpochEndOffset::UNDEFINED),
        }
    }

    /// A follower's fetch passed the divergence check: record what it holds and when it was caught up.
    fn record_follower_progress(&mut self, fetch: &FetchRequest, log_end: Offset) {
        let now_ms = self.now_ms;
        let Role::Leader(leader) = &mut self.role else { unreachable!("leader_refusal passed") };
        let progress = leader.followers.get_mut(&fetch.replica).expect("every replica has progress");
        // Kafka's caught-up rule: at the leader's log end now, or at least at the log end the leader
        // had at this follower's previous fetch (then it was caught up as of that fetch).
        if fetch.fetch_offset >= log_end {
            progress.last_caught_up_ms = now_ms;
        } else if progress.leader_end_at_last_fetch.is_some_and(|end| fetch.fetch_offset >= end) {
            progress.last_caught_up_ms = progress.last_caught_up_ms.max(progress.last_fetch_ms);
        }
        progress.leader_end_at_last_fetch = Some(log_end);
        progress.last_fetch_ms = now_ms;
        progress.fetch_offset = Some(fetch.fetch_offset);
        // Only durable offsets count, and only those below an offset the divergence check vouched for.
        let durable = fetch.durable_end.min(fetch.fetch_offset);
        progress.durable_end = Some(durable);
        progress.durable_max = Some(progress.durable_max.map_or(durable, |known| known.max(durable)));
    }

    fn on_follower_fetch(&mut self, request: RequestId, fetch: FetchRequest) {
        let fetch_id = fetch.fetch_id;
        if let Some(Reply::Error { code, message }) = self.leader_refusal() {
            return self.follower_error(request, fetch_id, code, message);
        }
        if fetch.replica == self.me || !self.state.replicas.contains(&fetch.replica) {
            let message = format!("broker {} is not a follower of this partition", fetch.replica);
            return self.follower_error(request, fetch_id, ErrorCode::InvalidRequest, message);
        }
        if let Some(Reply::Error { code, message }) = self.epoch_mismatch(fetch.leader_epoch) {
            return self.follower_error(request, fetch_id, code, message);
        }
        let log_start = self.inner.log_start();
        let log_end = self.inner.log_end();
        if fetch.fetch_offset < log_start {
            // Retention deleted what this follower lacks (whatever its epochs say: a divergence
            // answer would point it at the log start, which is past its end, for ever). It starts
            // over at the log start this answer carries.
            let message = format!("fetch offset {} is below the log start {log_start}", fetch.fetch_offset);
            return self.follower_error(request, fetch_id, ErrorCode::OffsetOutOfRange, message);
        }
        let diverging = self.divergence(&fetch, log_start, log_end);
        if let Some(answer) = diverging {
            let end_offset = answer.end_offset.unwrap_or(log_start);
            return self.follower_reply(request, fetch_id, FetchResult::Diverging { epoch: answer.epoch, end_offset });
        }
        if fetch.fetch_offset < log_start || fetch.fetch_offset > log_end {
            let message = format!("fetch offset {} is outside the log [{log_start}, {log_end}]", fetch.fetch_offset);
            return self.follower_error(request, fetch_id, ErrorCode::OffsetOutOfRange, message);
        }
        self.record_follower_progress(&fetch, log_end);
        let now_ms = self.now_ms;
        self.maybe_expand_isr(fetch.replica);
        self.recompute_high_watermark();
        let written_end = self.inner.written_end();
        let Role::Leader(leader) = &mut self.role else { unreachable!() };
        if fetch.fetch_offset < written_end {
            leader.served_end = leader.served_end.max(written_end);
            let read = FollowerRead {
                request,
                replica: fetch.replica,
                fetch_id,
                offset: fetch.fetch_offset,
                bytes_max: fetch.bytes_max,
                up_to: written_end,
                high_watermark: self.high_watermark,
                leader_epoch: self.state.leader_epoch,
                log_start: self.inner.log_start(),
            };
            self.ready.follower_reads.push(read);
        } else if fetch.wait_ms_max == 0 || leader.parked.len() >= self.config.parked_follower_fetches_max {
            self.follower_reply(request, fetch_id, FetchResult::Data { batches: Vec::new() });
        } else {
            leader.parked.push(ParkedFollowerFetch {
                request,
                replica: fetch.replica,
                fetch_id,
                offset: fetch.fetch_offset,
                bytes_max: fetch.bytes_max,
                deadline_ms: now_ms.saturating_add(i64::from(fetch.wait_ms_max)),
            });
        }
    }

    fn serve_parked_follower_fetches(&mut self) {
        let written_end = self.inner.written_end();
        let high_watermark = self.high_watermark;
        let leader_epoch = self.state.leader_epoch;
        let log_start = self.inner.log_start();
        let Role::Leader(leader) = &mut self.role else { return };
        let mut index = 0;
        while index < leader.parked.len() {
            if leader.parked[index].offset < written_end {
                let fetch = leader.parked.swap_remove(index);
                leader.served_end = leader.served_end.max(written_end);
                self.ready.follower_reads.push(FollowerRead {
                    request: fetch.request,
                    replica: fetch.replica,
                    fetch_id: fetch.fetch_id,
                    offset: fetch.offset,
                    bytes_max: fetch.bytes_max,
                    up_to: written_end,
                    high_watermark,
                    leader_epoch,
                    log_start,
                });
            } else {
                index += 1;
            }
        }
    }

    /// The HW the maximal ISR supports: the least durable end among its members (this leader's own
    /// stable end included); `None` while some member has not fetched in this epoch.
    fn supported_high_watermark(&self) -> Option<Offset> {
        let Role::Leader(leader) = &self.role else { return None };
        let durable = |member: NodeId| leader.followers.get(&member).and_then(|progress| progress.durable_end);
        supported_high_watermark(self.me, self.inner.stable_end(), &self.maximal_isr(), durable)
    }

    /// The HW moves only while the ISR (less a pending shrink) has at least `min_isr` members
    /// (KIP-966): then every offset below it is durable on `min_isr` replicas, and a member the
    /// controller drops from an ISR that falls below `min_isr` keeps every committed offset, so it
    /// may lead (the controller's eligible leader replicas, `meta::state`). A leader alone in its
    /// ISR keeps its HW until a follower rejoins; `acks=leader` batches it takes meanwhile are
    /// durable on it but not yet visible to consumers.
    fn recompute_high_watermark(&mut self) {
        if self.under_min_isr() {
            return;
        }
        let Some(supported) = self.supported_high_watermark() else { return };
        if supported > self.high_watermark {
            self.high_watermark = supported;
            self.inner.set_high_watermark_cap(supported);
        }
    }

    fn maybe_expand_isr(&mut self, replica: NodeId) {
        if self.state.isr.contains(&replica) {
            return;
        }
        let Role::Leader(leader) = &self.role else { return };
        if leader.pending_isr.is_some() {
            return;
        }
        let durable = leader.followers.get(&replica).and_then(|progress| progress.durable_end);
        // Caught up to the HW and to the start of this epoch, durably: then it holds everything any
        // earlier leader committed, even what this leader's HW does not show yet.
        if !durable.is_some_and(|durable| may_join_isr(durable, self.high_watermark, leader.epoch_start)) {
            return;
        }
        let mut new_isr = self.state.isr.clone();
        new_isr.push(replica);
        new_isr.sort();
        self.propose_isr(new_isr);
    }

    fn propose_isr(&mut self, new_isr: Vec<NodeId>) {
        let change = IsrChange {
            leader: self.me,
            leader_epoch: self.state.leader_epoch,
            partition_epoch: self.state.partition_epoch,
            new_isr,
        };
        let now_ms = self.now_ms;
        if let Role::Leader(leader) = &mut self.role {
            leader.pending_isr = Some(PendingIsr { change: change.clone(), proposed_ms: now_ms });
            self.ready.isr_change = Some(change);
        }
    }

    /// A leader answers the parked follower fetches whose wait is over, with no data.
    fn answer_expired_follower_fetches(&mut self) {
        let now_ms = self.now_ms;
        let Role::Leader(leader) = &mut self.role else { return };
        let mut expired = Vec::new();
        leader.parked.retain(|fetch| {
            let keep = fetch.deadline_ms > now_ms;
            if !keep {
                expired.push((fetch.request, fetch.fetch_id));
            }
            keep
        });
        for (request, fetch_id) in expired {
            self.follower_reply(request, fetch_id, FetchResult::Data { batches: Vec::new() });
        }
    }

    fn on_tick(&mut self) {
        self.answer_expired_follower_fetches();
        let now_ms = self.now_ms;
        let log_end = self.inner.log_end();
        match &mut self.role {
            Role::Leader(_) => {
                let Role::Leader(leader) = &mut self.role else { unreachable!() };
                let retry_ms = self.config.isr_change_retry_ms;
                if leader.resigned_ms.is_some_and(|sent| now_ms - sent >= retry_ms) {
                    // Still leading this epoch: the resignation or its answer was lost.
                    leader.resigned_ms = Some(now_ms);
                    self.ready.resign = true;
                }
                if let Some(pending) = &leader.pending_isr {
                    if now_ms - pending.proposed_ms >= self.config.isr_change_retry_ms {
                        // The proposal or its answer may have been lost: send it again, same fences.
                        let change = pending.change.clone();
                        leader.pending_isr = Some(PendingIsr { change: change.clone(), proposed_ms: now_ms });
                        self.ready.isr_change = Some(change);
                    }
                    return;
                }
                let lag_max = self.config.replica_lag_ms_max;
                let lagging: Vec<NodeId> = self
                    .state
                    .isr
                    .iter()
                    .filter(|member| **member != self.me)
                    .filter(|member| {
                        leader.followers.get(member).is_some_and(|progress| {
                            is_lagging(progress.fetch_offset, log_end, progress.last_caught_up_ms, now_ms, lag_max)
                        })
                    })
                    .copied()
                    .collect();
                if !lagging.is_empty() {
                    let new_isr = self.state.isr.iter().filter(|member| !lagging.contains(member)).copied().collect();
                    self.propose_isr(new_isr);
                }
            }
            Role::Follower(follower) => {
                if let Some((_, sent_ms, _)) = follower.in_flight {
                    let give_up_ms =
                        sent_ms + i64::from(self.config.follower_fetch_wait_ms) + self.config.follower_fetch_timeout_ms;
                    if now_ms >= give_up_ms {
                        follower.in_flight = None;
                    }
                }
            }
            Role::Offline => {}
        }
    }

    // ---- follower: fetch loop, truncation by epoch, replicated appends --------------------------

    /// After a storage failure: the fetch in flight and a truncation not yet reported (the shell may
    /// have failed performing it) are forgotten; the next fetch finds any divergence again.
    fn drop_fetch_in_flight(&mut self) {
        if let Role::Follower(follower) = &mut self.role {
            follower.in_flight = None;
            follower.truncating = None;
            follower.resetting = None;
        }
    }

    /// A follower fetches when nothing is in flight and everything it holds is durable, so the fetch
    /// reports its whole log as durable and a parked fetch never hides a finished fsync.
    fn maybe_send_fetch(&mut self) {
        let settled = self.inner.is_settled();
        let Role::Follower(follower) = &mut self.role else { return };
        let busy = follower.in_flight.is_some() || follower.truncating.is_some() || follower.resetting.is_some();
        if busy || follower.blocked_until_ms > self.now_ms || !settled {
            return;
        }
        let fetch_id = self.next_fetch_id;
        self.next_fetch_id += 1;
        let fetch_offset = self.inner.log_end();
        follower.in_flight = Some((fetch_id, self.now_ms, fetch_offset));
        let fetch = FetchRequest {
            fetch_id,
            replica: self.me,
            leader_epoch: self.state.leader_epoch,
            fetch_offset,
            last_fetched_epoch: self.epochs.latest_epoch(),
            durable_end: self.inner.stable_end(),
            bytes_max: self.config.follower_fetch_bytes_max,
            wait_ms_max: self.config.follower_fetch_wait_ms,
        };
        self.ready.fetch = Some((follower.leader, fetch));
    }

    fn on_fetch_response(&mut self, from: NodeId, response: FetchResponse) {
        let now_ms = self.now_ms;
        let backoff_ms = self.config.follower_retry_backoff_ms;
        let Role::Follower(follower) = &mut self.role else { return };
        let Some((fetch_id, _, fetch_offset)) = follower.in_flight else { return };
        if from != follower.leader || response.fetch_id != fetch_id {
            return; // Late, duplicated, or from a former leader.
        }
        follower.in_flight = None;
        if response.leader_epoch != self.state.leader_epoch {
            // The leader is at another epoch: wait for the controller's news.
            follower.blocked_until_ms = now_ms + backoff_ms;
            return;
        }
        if response.log_start.is_some() {
            follower.leader_log_start = response.log_start;
        }
        if fetch_offset != self.inner.log_end() || !self.inner.is_settled() {
            return; // Our log changed since the fetch went out (a storage failure): ask again.
        }
        match response.result {
            FetchResult::Error { code: ErrorCode::OffsetOutOfRange, .. }
                if response.log_start.is_some_and(|start| fetch_offset < start) =>
            {
                // Retention deleted what this follower still lacks: it starts over at the leader's
                // log start (Kafka's truncate-fully-and-start-at).
                let start = response.log_start.expect("checked");
                sometimes::hit(Sometimes::FollowerLogReset);
                follower.resetting = Some(start);
                self.ready.reset_to = Some(start);
            }
            FetchResult::Diverging { epoch: None, end_offset }
                if response.log_start == Some(end_offset) && end_offset != self.inner.log_start() =>
            {
                // The leader knows none of this follower's epochs (or it has none), and the two logs
                // start at different offsets (retention): nothing of ours can be trusted, and a
                // truncation cannot get there (past our start it keeps a divergent tail and asks again
                // for ever, `isr_3_retention` seed 71855; below it, an empty log at our start is asked
                // to go back to the leader's, seed 72477). Start over at the leader's log start.
                sometimes::hit(Sometimes::FollowerLogReset);
                follower.resetting = Some(end_offset);
                self.ready.reset_to = Some(end_offset);
            }
            FetchResult::Error { .. } => follower.blocked_until_ms = now_ms + backoff_ms,
            FetchResult::Diverging { epoch, end_offset } => self.truncate_for_divergence(epoch, end_offset),
            FetchResult::Data { batches } => self.append_replicated(batches, response.high_watermark),
        }
    }

    /// KIP-279: truncate to where our log stops agreeing with the leader's, found from the leader's
    /// end offset for the epoch and our own end offset for that same epoch. The next fetch carries
    /// our new last epoch, so rounds repeat until the leader finds no divergence.
    fn truncate_for_divergence(&mut self, leader_epoch_found: Option<LeaderEpoch>, leader_end: Offset) {
        let (log_start, log_end) = (self.inner.log_start(), self.inner.log_end());
        let target = divergence_truncation_offset(&self.epochs, log_start, log_end, leader_epoch_found, leader_end);
        if target < log_end {
            sometimes::hit(Sometimes::TruncationByEpoch);
        }
        if let Role::Follower(follower) = &mut self.role {
            follower.truncating = Some(target);
        }
        self.ready.truncate_to = Some(target);
    }

    fn on_log_start_advanced(&mut self, log_start: Offset) {
        assert!(
            log_start <= self.high_watermark.max(self.inner.log_start()),
            "replica {}: retention moved the log start to {log_start}, past the high watermark {}",
            self.me,
            self.high_watermark
        );
        self.inner.step(core::Input::LogStartAdvanced { log_start });
        self.epochs.truncate_from_start(log_start);
    }

    fn on_log_reset(&mut self, to: Offset) {
        let Role::Follower(follower) = &mut self.role else {
            panic!("replica {}: a log reset reported while not a follower", self.me)
        };
        let asked = follower.resetting.take().expect("a reset was asked for");
        assert_eq!(asked, to, "replica {}: the shell reset the log to {to}, not the {asked} asked for", self.me);
        self.inner.step(core::Input::Reset { to });
        self.epochs = LeaderEpochs::new();
        self.deferred_epoch_assign = None;
        self.producers = ProducerStates::new();
        // Everything below the leader's log start was committed (retention deletes only below the
        // high watermark), and none of it is here any more.
        self.high_watermark = to;
        self.inner.set_high_watermark_cap(to);
    }

    /// A follower's leader's log start, as its latest fetch response in this epoch gave it.
    pub fn leader_log_start(&self) -> Option<Offset> {
        match &self.role {
            Role::Follower(follower) => follower.leader_log_start,
            _ => None,
        }
    }

    fn on_truncated(&mut self, log_end: Offset) {
        let Role::Follower(follower) = &mut self.role else {
            panic!("replica {}: a truncation reported while not a follower", self.me)
        };
        let target = follower.truncating.take().expect("a truncation was asked for");
        assert!(log_end <= target, "the shell truncated to {log_end}, above the {target} asked for");
        self.inner.step(core::Input::Truncated { to: log_end });
        self.epochs.truncate_from_end(log_end);
        self.high_watermark = self.high_watermark.min(log_end);
        self.inner.set_high_watermark_cap(self.high_watermark);
    }

    fn append_replicated(&mut self, batches: Vec<Batch>, leader_high_watermark: Offset) {
        let leader_epoch = self.state.leader_epoch;
        for batch in batches {
            let epoch = batch.leader_epoch();
            // A malformed response (a gap, an epoch from the future or going back) ends here; the
            // next fetch asks again from where the log ends.
            if batch.base_offset() != self.inner.log_end() || epoch > leader_epoch {
                break;
            }
            match self.epochs.latest_epoch() {
                Some(latest) if epoch < latest => break,
                Some(latest) if epoch == latest => {}
                _ => {
                    if self.epochs.assign(epoch, batch.base_offset()).is_err() {
                        break;
                    }
                    self.ready.epoch_assign.push((epoch, batch.base_offset()));
                }
            }
            self.producers.apply(&BatchIdentity::of(&batch), batch.base_offset());
            self.inner.step(core::Input::AppendReplicated { batch });
        }
        let learned = leader_high_watermark.min(self.inner.log_end());
        if learned > self.high_watermark {
            self.high_watermark = learned;
            self.inner.set_high_watermark_cap(learned);
        }
    }

    /// Panics, with context, when the replica's bookkeeping is broken (module doc: Invariants).
    pub fn check_invariants(&self) {
        if !cfg!(any(debug_assertions, madsim)) {
            return;
        }
        self.epochs.check_invariants();
        if let Some(latest) = self.epochs.latest() {
            assert!(latest.start_offset <= self.inner.log_end(), "epoch {latest:?} starts past the log end");
        }
        if self.state.replicas.is_empty() {
            assert!(matches!(self.role, Role::Offline), "a replica with no partition state");
            return;
        }
        assert!(self.state.validate().is_ok(), "malformed partition state kept: {:?}", self.state);
        assert!(self.high_watermark <= self.inner.log_end(), "HW {} past the log end", self.high_watermark);
        match &self.role {
            Role::Leader(leader) => {
                assert_eq!(self.state.leader, Some(self.me), "leading without being the leader");
                assert!(self.state.isr.contains(&self.me), "the leader is not in the ISR");
                assert!(self.high_watermark >= leader.hw_floor, "HW moved back on a leader");
                assert!(
                    self.high_watermark <= self.inner.stable_end(),
                    "HW {} past the leader's own durable end {}",
                    self.high_watermark,
                    self.inner.stable_end()
                );
                if self.high_watermark > leader.hw_floor {
                    // Against the largest durable ends reported: a follower that lost data since
                    // (rot cut by its restart) may now hold less than the HW it helped commit.
                    let durable_max =
                        |member: NodeId| leader.followers.get(&member).and_then(|progress| progress.durable_max);
                    let supported =
                        supported_high_watermark(self.me, self.inner.stable_end(), &self.maximal_isr(), durable_max);
                    assert!(
                        supported.is_some_and(|supported| self.high_watermark <= supported),
                        "HW {} is not durable on every member of the maximal ISR {:?} (supported: {supported:?})",
                        self.high_watermark,
                        self.maximal_isr()
                    );
                }
                assert!(self.inner.high_watermark() <= self.high_watermark, "consumers can see past the HW");
            }
            Role::Follower(follower) => {
                assert_eq!(self.state.leader, Some(follower.leader), "following a broker that is not the leader");
            }
            Role::Offline => {}
        }
    }
}
