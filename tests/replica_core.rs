//! The replica core (`partition::replica`) driven as a three-replica partition through a fake shell,
//! judged by the reference model `keel_model::replicated_log`.
//!
//! The fake shell gives each broker a log with page-cache and durable parts (a power loss keeps the
//! durable batches plus a random prefix of the rest, and may undo an unsynced truncation), a persisted
//! epoch cache that follows the Ready contract (assign: synced before the writes; truncation: cut
//! after the log's truncation is synced), and a network that delivers, drops, duplicates and
//! reorders every message: partition states from the controller, follower fetches, fetch
//! responses and ISR change proposals. A fake controller applies ISR proposals with the leader- and
//! partition-epoch fences, fences brokers (removing them from the ISR, electing a new leader from
//! the ISR when the leader goes), elects from the ISR only, and bumps the leader epoch when a leader
//! restarts. Clients produce with every `acks` setting and read with and without a leader epoch.
//!
//! Checked after every operation (the model's rules):
//! - every leader's HW is committed, and never moves back while it leads;
//! - every `acks=all` acknowledgement names the batch it appended, is below the HW, and came while
//!   the leader's ISR had at least `min_isr` members; `acks=leader` only once durable on the leader;
//!   a definite `NotEnoughReplicas` appended nothing;
//! - a consumer never reads at or above the HW;
//! - every member of the controller's ISR holds everything committed, durably and in its live log
//!   (so whoever the controller elects has every acknowledged batch);
//! - at the end, after every fault heals: all replicas' logs are identical to the leader's (truncation
//!   by epoch made them agree), the ISR is full again and the HW is the log end.
//!
//! Idempotent producers (the second property test; ADR 0015): producers 1 and 2, epoch 0, number
//! their batches with sequences, keep at most five unacknowledged batches out, and re-send a batch
//! whose outcome they do not know (an error, an ambiguous answer, a broker that crashed before
//! answering, a request given up) with the same bytes, `acks=all`. A request reaches its broker at
//! once or travels the network (late, reordered, duplicated or lost). Wherever the real shell hands
//! the core the log's producer state (truncation, recovery, restart), the fake one rebuilds it from
//! its log (`producers_of`). Checked:
//! - no log ever holds one (producer id, sequence) twice;
//! - in the committed log each producer's batches are its batches 0, 1, 2, ... in order, each once;
//! - every acknowledgement of a batch (first attempt or retry) names the offset it is committed at;
//! - at the end, once healed, every batch ever sent is acknowledged after retries in order to the
//!   leader, and the oldest unacknowledged one is never refused as out of order or unknown (the
//!   partition never loses a producer's state without expiry).

use std::collections::BTreeMap;

use keel::batch::{encode_batch, Batch, ProducerFields, Record};
use keel::leader_epochs::{EpochEntry, LeaderEpochs};
use keel::partition::core::{CoreConfig, Reply};
use keel::partition::replica::{
    FetchRequest, FetchResponse, FetchResult, Input, IsrChange, OpenedLog, PartitionEpoch, PartitionState, Ready,
    ReplicaConfig, ReplicaCore, RoleKind,
};
use keel::producer_state::{BatchIdentity, ProducerStates};
use keel::protocol::{Acks, ErrorCode};
use keel::types::{LeaderEpoch, NodeId, Offset, ProducerEpoch, ProducerId, Sequence};
use keel_model::replicated_log::{elect, BatchRef, ReplicatedLogModel};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const N_NODES: usize = 3;
const MIN_ISR: usize = 2;

fn config() -> ReplicaConfig {
    ReplicaConfig {
        core: CoreConfig::default(),
        replica_lag_ms_max: 1_000,
        isr_change_retry_ms: 300,
        follower_fetch_wait_ms: 200,
        follower_fetch_timeout_ms: 500,
        follower_retry_backoff_ms: 50,
        follower_fetch_bytes_max: 600,
        parked_follower_fetches_max: 8,
        ..ReplicaConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// To the leader the controller names (`to_leader`) or to broker `node`.
    Produce {
        to_leader: bool,
        node: u8,
        records: u8,
        acks: u8,
    },
    Read {
        node: u8,
        back: u8,
        with_epoch: bool,
    },
    Deliver {
        index: u16,
    },
    DeliverAll,
    /// Deliver everything in flight and complete every sync: a quiet moment.
    Settle,
    Drop {
        index: u16,
    },
    Duplicate {
        index: u16,
    },
    Sync {
        node: u8,
    },
    Tick {
        ms: u16,
    },
    Crash {
        node: u8,
        keep: u8,
    },
    /// A failed fsync: the broker stays up, its unsynced data is in the state a crash leaves, and the
    /// log is reopened (recovered) at once.
    FailStorage {
        node: u8,
        keep: u8,
    },
    Restart {
        node: u8,
    },
    /// The controller moves leadership to another live ISR member (or elects one if there is none).
    Elect,
    /// The controller fences a broker: out of the ISR, and a new leader if it led.
    Fence {
        node: u8,
    },
    /// Idempotent producer `producer % 2` sends up to `count` batches it has not sent yet (new ones
    /// of `records` records when its queue is empty), while it has fewer than five unacknowledged.
    /// A `delayed` request travels the network (delivered late, reordered, duplicated or lost);
    /// otherwise the broker takes it at once.
    Send {
        producer: u8,
        to_leader: bool,
        node: u8,
        count: u8,
        records: u8,
        delayed: bool,
    },
    /// It re-sends, with the same bytes, one sent and unacknowledged batch (the `pick`th) that has
    /// no attempt awaiting an answer, or any such batch when `timed_out` (it gave up waiting).
    Retry {
        producer: u8,
        pick: u8,
        to_leader: bool,
        node: u8,
        timed_out: bool,
        delayed: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<bool>(), 0u8..3, 1u8..4, 0u8..3).prop_map(|(to_leader, node, records, acks)| Op::Produce { to_leader, node, records, acks }),
        2 => (0u8..3, 1u8..12, any::<bool>()).prop_map(|(node, back, with_epoch)| Op::Read { node, back, with_epoch }),
        10 => any::<u16>().prop_map(|index| Op::Deliver { index }),
        3 => Just(Op::DeliverAll),
        4 => Just(Op::Settle),
        1 => any::<u16>().prop_map(|index| Op::Drop { index }),
        1 => any::<u16>().prop_map(|index| Op::Duplicate { index }),
        6 => (0u8..3).prop_map(|node| Op::Sync { node }),
        2 => (1u16..700).prop_map(|ms| Op::Tick { ms }),
        1 => (0u8..3, any::<u8>()).prop_map(|(node, keep)| Op::Crash { node, keep }),
        1 => (0u8..3, any::<u8>()).prop_map(|(node, keep)| Op::FailStorage { node, keep }),
        1 => (0u8..3).prop_map(|node| Op::Restart { node }),
        1 => Just(Op::Elect),
        1 => (0u8..3).prop_map(|node| Op::Fence { node }),
    ]
}

/// [`op`] (unchanged, so the plain test's persisted seeds still replay the cases they recorded) and
/// the idempotent producers' sends and retries.
fn op_with_producers() -> impl Strategy<Value = Op> {
    prop_oneof![
        40 => op(),
        6 => (0u8..2, any::<bool>(), 0u8..3, 1u8..6, 1u8..4, prop::bool::weighted(0.3)).prop_map(
            |(producer, to_leader, node, count, records, delayed)| Op::Send { producer, to_leader, node, count, records, delayed }
        ),
        5 => (0u8..2, any::<u8>(), any::<bool>(), 0u8..3, prop::bool::weighted(0.2), prop::bool::weighted(0.3)).prop_map(
            |(producer, pick, to_leader, node, timed_out, delayed)| Op::Retry { producer, pick, to_leader, node, timed_out, delayed }
        ),
    ]
}

/// What travels the network; `Produce` is an idempotent producer's request sent `delayed`.
#[derive(Debug, Clone)]
enum Msg {
    State { to: u64, state: PartitionState },
    Fetch { from: u64, to: u64, request: u64, fetch: FetchRequest },
    Response { from: u64, to: u64, response: FetchResponse },
    Isr { change: IsrChange },
    Produce { to: u64, request: u64, batch: Batch },
}

struct Node {
    id: u64,
    core: Option<ReplicaCore>,
    incarnation: u64,
    /// What reads see (the page cache).
    log: Vec<Batch>,
    /// What survives a power loss.
    durable: Vec<Batch>,
    /// The persisted epoch cache (entries are synced before the batches that need them).
    epoch_file: LeaderEpochs,
    /// A truncation whose log sync has not completed: the cache is cut when it does.
    pending_cache_cut: Option<Offset>,
    /// A sync in flight: (batches covered, offset covered).
    sync_in_flight: Option<(usize, Offset)>,
}

/// A recovered log from offset 0 with no remembered HW (the core starts from the log start).
fn opened(log_end: Offset, epochs: LeaderEpochs) -> OpenedLog {
    OpenedLog {
        log_start: Offset(0),
        log_end,
        epochs,
        high_watermark: Offset(0),
        lost_committed: None,
        producers: ProducerStates::new(),
    }
}

/// The producer state of a log, as `PartitionLog` rebuilds it from its batches.
fn producers_of(log: &[Batch]) -> ProducerStates {
    let mut producers = ProducerStates::new();
    for batch in log {
        producers.apply(&BatchIdentity::of(batch), batch.base_offset());
    }
    producers
}

/// No log ever holds one idempotent batch (producer id, epoch, sequence) twice: `batch`, about to be
/// written to broker `id`'s `log`, must not be there already.
fn assert_sequence_new(id: u64, log: &[Batch], batch: &Batch) {
    let fields = batch.producer();
    if fields.producer_id.0 < 0 {
        return;
    }
    if let Some(held) = log.iter().find(|held| held.producer() == fields) {
        panic!(
            "broker {id} writes producer {} sequence {} at {}, and holds it at {} already",
            fields.producer_id,
            fields.base_sequence,
            batch.base_offset(),
            held.base_offset()
        );
    }
}

fn end_of(log: &[Batch]) -> Offset {
    log.last().map_or(Offset(0), Batch::next_offset)
}

fn refs(log: &[Batch]) -> Vec<BatchRef> {
    log.iter()
        .map(|batch| BatchRef {
            base: batch.base_offset().0,
            next: batch.next_offset().0,
            epoch: batch.leader_epoch().0,
            id: u64::from(batch.crc()),
        })
        .collect()
}

/// Whole batches from the one containing `offset`, ending at or below `up_to`, at most `bytes_max`
/// (at least one batch), as `PartitionLog::read` returns them.
fn read_log(log: &[Batch], offset: Offset, up_to: Offset, bytes_max: u32) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    let mut bytes = 0usize;
    for batch in log.iter().filter(|batch| batch.next_offset() > offset) {
        if batch.next_offset() > up_to || (!out.is_empty() && bytes + batch.len() > bytes_max as usize) {
            break;
        }
        bytes += batch.len();
        out.push(batch.clone());
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct Produced {
    node: u64,
    crc: u32,
    acks: Acks,
    /// The broker's log end when the request reached it: what this request appended is at or above.
    log_end_at_send: Offset,
}

/// Unacknowledged batches an idempotent producer has out at most (the broker dedups the last five).
const IN_FLIGHT_MAX: usize = 5;
/// Rounds of in-order retries to the healed leader before a sent batch counts as never acknowledged.
const FINISH_ROUNDS: usize = 40;

/// One batch of an idempotent producer, as its client holds it.
struct IdemBatch {
    /// The encoded batch with its producer fields, re-sent as it is.
    batch: Batch,
    sequence: i32,
    sent: bool,
    /// The offset its first acknowledgement named.
    acked: Option<Offset>,
    /// Attempts awaiting an answer: request id to broker.
    in_flight: BTreeMap<u64, u64>,
}

/// An idempotent producer (epoch 0) of the partition.
struct IdemProducer {
    id: i64,
    batches: Vec<IdemBatch>,
    next_sequence: i32,
    /// Where its batches 0, 1, ... are in the committed log (filled as the committed prefix grows).
    committed_at: Vec<Offset>,
}

impl IdemProducer {
    fn first_unacked(&self) -> usize {
        self.batches.iter().position(|batch| batch.acked.is_none()).unwrap_or(self.batches.len())
    }

    /// Indices of the batches sent and not acknowledged, oldest first.
    fn unacked_sent(&self) -> Vec<usize> {
        (0..self.batches.len()).filter(|&k| self.batches[k].sent && self.batches[k].acked.is_none()).collect()
    }
}

/// An idempotent producer's batch of `records` records, its payload tagged with `tag`.
fn idempotent_batch(producer: i64, epoch: i16, sequence: i32, records: usize, tag: &str) -> Batch {
    let records: Vec<Record> = (0..records).map(|i| Record::value(format!("{tag}-{i}"))).collect();
    let fields = ProducerFields {
        producer_id: ProducerId(producer),
        producer_epoch: ProducerEpoch(epoch),
        base_sequence: Sequence(sequence),
    };
    Batch::parse(encode_batch(&records, 1_000, fields)).unwrap()
}

struct World {
    nodes: Vec<Node>,
    controller: PartitionState,
    net: Vec<Msg>,
    now_ms: i64,
    next_request: u64,
    next_batch: u64,
    produced: BTreeMap<u64, Produced>,
    /// Follower fetch requests by request id: who asked.
    fetchers: BTreeMap<u64, u64>,
    model: ReplicatedLogModel,
    /// Replies seen, for scripted tests: (request, reply).
    replies: Vec<(u64, Reply)>,
    /// Coverage counters: truncations that cut batches, ISR shrinks and expansions the controller took.
    cutting_truncations: u64,
    resignations: u64,
    storage_failures: u64,
    isr_shrinks: u64,
    isr_expansions: u64,
    producers: Vec<IdemProducer>,
    /// Idempotent produce requests awaiting an answer: request id to (producer index, batch index).
    idem_requests: BTreeMap<u64, (usize, usize)>,
    /// Committed batches already checked for the producers' order.
    idem_checked: usize,
    /// The end-of-case retries: the oldest unacknowledged batch must never be refused for order.
    finishing: bool,
    retries: u64,
    /// Coverage: idempotent replies by kind ("dup-ack" is a retry answered with an earlier append's offset).
    idem_replies: BTreeMap<String, u64>,
}

impl World {
    fn new() -> World {
        let replicas: Vec<NodeId> = (1..=N_NODES as u64).map(NodeId).collect();
        let controller = PartitionState {
            leader: Some(NodeId(1)),
            leader_epoch: LeaderEpoch(0),
            partition_epoch: PartitionEpoch(0),
            isr: replicas.clone(),
            replicas,
            min_isr: MIN_ISR,
            log: Default::default(),
        };
        let nodes = (1..=N_NODES as u64)
            .map(|id| Node {
                id,
                core: Some(ReplicaCore::new(
                    NodeId(id),
                    config(),
                    controller.clone(),
                    opened(Offset(0), LeaderEpochs::new()),
                    0,
                )),
                incarnation: 0,
                log: Vec::new(),
                durable: Vec::new(),
                epoch_file: LeaderEpochs::new(),
                pending_cache_cut: None,
                sync_in_flight: None,
            })
            .collect();
        let mut world = World {
            nodes,
            controller,
            net: Vec::new(),
            now_ms: 0,
            next_request: 1,
            next_batch: 1,
            produced: BTreeMap::new(),
            fetchers: BTreeMap::new(),
            model: ReplicatedLogModel::new(),
            replies: Vec::new(),
            cutting_truncations: 0,
            resignations: 0,
            storage_failures: 0,
            isr_shrinks: 0,
            isr_expansions: 0,
            producers: (1..=2)
                .map(|id| IdemProducer { id, batches: Vec::new(), next_sequence: 0, committed_at: Vec::new() })
                .collect(),
            idem_requests: BTreeMap::new(),
            idem_checked: 0,
            finishing: false,
            retries: 0,
            idem_replies: BTreeMap::new(),
        };
        world.drain_all();
        world
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    fn alive(&self, id: u64) -> bool {
        self.nodes[(id - 1) as usize].core.is_some()
    }

    fn step(&mut self, id: u64, input: Input) {
        if let Some(core) = self.node(id).core.as_mut() {
            core.step(input);
        }
        self.drain(id);
    }

    fn drain_all(&mut self) {
        for id in 1..=N_NODES as u64 {
            self.drain(id);
        }
    }

    fn drain(&mut self, id: u64) {
        loop {
            let Some(core) = self.node(id).core.as_mut() else { return };
            let ready = core.ready();
            if ready.is_empty() {
                return;
            }
            self.perform(id, ready);
        }
    }

    fn perform(&mut self, id: u64, ready: Ready) {
        let Ready {
            epoch_assign,
            truncate_to,
            reset_to,
            writes,
            start_sync,
            reads,
            follower_reads,
            replies,
            follower_replies,
            fetch,
            isr_change,
            resign,
        } = ready;
        assert_eq!(reset_to, None, "nothing deletes segments in this world, so no follower starts over");
        if resign {
            // The leader lost data it had sent to followers: the controller moves leadership away.
            self.resignations += 1;
            if self.controller.leader == Some(NodeId(id)) {
                self.elect_leader(Some(id));
            }
        }
        let node = self.node(id);
        for (epoch, start) in epoch_assign {
            node.epoch_file.assign(epoch, start).expect("the persisted cache accepts what the core assigned");
        }
        if let Some(to) = truncate_to {
            assert!(writes.is_empty() && !start_sync, "a truncation comes alone");
            let before = node.log.len();
            node.log.retain(|batch| batch.next_offset() <= to);
            let cut = node.log.len() < before;
            let log_end = end_of(&node.log);
            node.pending_cache_cut = Some(log_end);
            let core = node.core.as_mut().expect("alive");
            core.step(Input::Truncated { log_end, producers: producers_of(&node.log) });
            self.cutting_truncations += u64::from(cut);
        }
        let node = self.node(id);
        if !writes.is_empty() {
            for batch in writes {
                assert_eq!(batch.base_offset(), end_of(&node.log), "writes must be contiguous");
                let epoch = batch.leader_epoch();
                let cached = node.epoch_file.end_offset_for(epoch, Offset(i64::MAX)).epoch;
                assert_eq!(cached, Some(epoch), "a batch of epoch {epoch} written before its cache entry");
                assert_sequence_new(id, &node.log, &batch);
                node.log.push(batch);
            }
            let up_to = end_of(&node.log);
            node.core.as_mut().expect("alive").step(Input::Written { up_to });
        }
        if start_sync {
            assert!(node.sync_in_flight.is_none(), "two syncs in flight");
            node.sync_in_flight = Some((node.log.len(), end_of(&node.log)));
        }
        let core = node.core.as_ref().expect("alive");
        let high_watermark = core.high_watermark();
        let leader_epoch = core.state().leader_epoch;
        let isr_len = core.state().isr.len();
        // Copies of the log only when something below reads it (the cost of the harness grows with it).
        let log_refs = if reads.is_empty() { Vec::new() } else { refs(&node.log) };
        let durable_end = end_of(&node.durable);
        let needs_log = !reads.is_empty() || !follower_reads.is_empty() || !replies.is_empty();
        let log = if needs_log { node.log.clone() } else { Vec::new() };
        for read in reads {
            assert!(
                read.up_to <= high_watermark,
                "broker {id}: a consumer read up to {} past the HW {high_watermark}",
                read.up_to
            );
            let batches = read_log(&log, read.offset, read.up_to, read.bytes_max);
            if let Err(violation) = self.model.on_read(&log_refs, &refs(&batches), high_watermark.0) {
                panic!("broker {id}: {violation}");
            }
        }
        for read in follower_reads {
            let batches = read_log(&log, read.offset, read.up_to, read.bytes_max);
            let response = FetchResponse {
                fetch_id: read.fetch_id,
                leader_epoch: read.leader_epoch,
                high_watermark: read.high_watermark,
                log_start: Some(read.log_start),
                result: FetchResult::Data { batches },
            };
            let to = self.fetchers.remove(&read.request).expect("a fetch we sent");
            self.net.push(Msg::Response { from: id, to, response });
        }
        for (request, response) in follower_replies {
            let to = self.fetchers.remove(&request).expect("a fetch we sent");
            self.net.push(Msg::Response { from: id, to, response });
        }
        for (request, reply) in replies {
            if let Some(produced) = self.produced.get(&request).copied() {
                assert_eq!(produced.node, id, "answered by another broker");
                self.judge_produce_reply(id, produced, &reply, &log, high_watermark, isr_len, durable_end);
            }
            if let Some((producer, index)) = self.idem_requests.remove(&request) {
                self.on_idempotent_reply(id, producer, index, request, &reply);
            }
            self.replies.push((request, reply));
        }
        if let Some((leader, fetch)) = fetch {
            assert_eq!(fetch.leader_epoch, leader_epoch);
            let request = self.next_request;
            self.next_request += 1;
            self.fetchers.insert(request, id);
            self.net.push(Msg::Fetch { from: id, to: leader.0, request, fetch });
        }
        if let Some(change) = isr_change {
            self.net.push(Msg::Isr { change });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn judge_produce_reply(
        &mut self,
        id: u64,
        produced: Produced,
        reply: &Reply,
        log: &[Batch],
        high_watermark: Offset,
        isr_len: usize,
        durable_end: Offset,
    ) {
        let appended = log.iter().find(|batch| batch.crc() == produced.crc);
        // An idempotent retry finds its batch appended by an earlier attempt: only what this request
        // could have appended (at or above the log end it found) counts as its own.
        let appended_now =
            log.iter().any(|batch| batch.crc() == produced.crc && batch.base_offset() >= produced.log_end_at_send);
        match reply {
            Reply::Produced { base_offset } => {
                let batch = appended.unwrap_or_else(|| panic!("broker {id}: acked a batch it does not hold"));
                assert_eq!(batch.base_offset(), *base_offset, "acked with another offset");
                match produced.acks {
                    Acks::All => {
                        assert!(isr_len >= MIN_ISR, "broker {id}: acks=all acked with an ISR of {isr_len} < {MIN_ISR}");
                        if let Err(violation) =
                            self.model.on_ack(&refs(log), base_offset.0, u64::from(produced.crc), high_watermark.0)
                        {
                            panic!("broker {id}: {violation}");
                        }
                    }
                    Acks::Leader => {
                        assert!(batch.next_offset() <= durable_end, "acks=leader acked before the leader's fsync")
                    }
                    Acks::None => {}
                }
            }
            Reply::Error { code: ErrorCode::NotEnoughReplicas, .. } => {
                assert!(!appended_now, "NotEnoughReplicas is definite, but the batch was appended");
            }
            _ => {}
        }
    }

    /// The model's rules, after every operation.
    fn check(&mut self) {
        for index in 0..N_NODES {
            let node = &self.nodes[index];
            let Some(core) = &node.core else { continue };
            if core.role() == RoleKind::Leader {
                let (id, incarnation) = (node.id, node.incarnation);
                let (epoch, hw) = (core.state().leader_epoch.0, core.high_watermark().0);
                // Only the batches below the HW matter to the model (the same verdict, found faster).
                let below = node.log.partition_point(|batch| batch.next_offset().0 <= hw);
                let below = (below + 1).min(node.log.len());
                if let Err(violation) = self.model.on_leader_hw(id, incarnation, epoch, hw, &refs(&node.log[..below])) {
                    panic!("{violation}");
                }
            }
        }
        let committed_len = self.model.committed().len();
        for member in self.controller.isr.clone() {
            let node = self.node(member.0);
            // The committed prefix's length of each log, and one batch more: the same verdict as the
            // whole log, found faster.
            let prefix = |log: &[Batch]| refs(&log[..log.len().min(committed_len + 1)]);
            let (durable, live) = (prefix(&node.durable), node.core.is_some().then(|| prefix(&node.log)));
            if let Err(violation) = self.model.check_in_sync(member.0, "durable", &durable) {
                panic!("{violation}");
            }
            if let Some(live) = live {
                if let Err(violation) = self.model.check_in_sync(member.0, "live", &live) {
                    panic!("{violation}");
                }
            }
        }
        self.check_producers_committed();
    }

    /// The committed log holds each producer's batches 0, 1, 2, ... in order, each once, and every
    /// acknowledged batch at the offset its acknowledgement named. The committed prefix only grows
    /// (the model checks that), so each committed batch is looked at once.
    fn check_producers_committed(&mut self) {
        let committed_len = self.model.committed().len();
        if committed_len > self.idem_checked {
            // Every ISR member's durable log begins with the committed prefix (checked above): read
            // the committed batches' producer fields there.
            let holder = self.controller.isr[0].0;
            let batches = self.nodes[(holder - 1) as usize].durable[self.idem_checked..committed_len].to_vec();
            for batch in batches {
                let fields = batch.producer();
                if fields.producer_id.0 < 0 {
                    continue;
                }
                let producer = self
                    .producers
                    .iter_mut()
                    .find(|producer| producer.id == fields.producer_id.0)
                    .expect("a producer of this test");
                let index = producer
                    .batches
                    .iter()
                    .position(|made| made.sequence == fields.base_sequence.0)
                    .unwrap_or_else(|| panic!("committed sequence {} was never sent", fields.base_sequence));
                let expected = producer.committed_at.len();
                assert!(
                    index >= expected,
                    "producer {}'s batch {index} (sequence {}) is committed twice: at {} and at {}",
                    producer.id,
                    fields.base_sequence,
                    producer.committed_at[index],
                    batch.base_offset()
                );
                assert_eq!(
                    index,
                    expected,
                    "producer {}'s batch {index} is committed at {} before its batch {expected}",
                    producer.id,
                    batch.base_offset()
                );
                assert_eq!(batch.crc(), producer.batches[index].batch.crc(), "a committed batch's payload changed");
                producer.committed_at.push(batch.base_offset());
            }
            self.idem_checked = committed_len;
        }
        for producer in &self.producers {
            for (index, made) in producer.batches.iter().enumerate() {
                if let Some(acked) = made.acked {
                    assert_eq!(
                        producer.committed_at.get(index),
                        Some(&acked),
                        "producer {}'s batch {index} was acknowledged at {acked}, but is not committed there",
                        producer.id
                    );
                }
            }
        }
    }

    // ---- the controller -----------------------------------------------------------------------

    fn broadcast(&mut self) {
        for id in 1..=N_NODES as u64 {
            if self.alive(id) {
                self.net.push(Msg::State { to: id, state: self.controller.clone() });
            }
        }
    }

    fn durable_end(&self, id: u64) -> i64 {
        end_of(&self.nodes[(id - 1) as usize].durable).0
    }

    /// A new leader from the ISR (excluding `avoid` when another live member exists), new epochs.
    fn elect_leader(&mut self, avoid: Option<u64>) {
        let isr: Vec<u64> = self.controller.isr.iter().map(|node| node.0).collect();
        let others: Vec<u64> = isr.iter().copied().filter(|node| Some(*node) != avoid).collect();
        let alive = |node: u64| self.alive(node);
        let durable = |node: u64| self.durable_end(node);
        let chosen = elect(&others, alive, durable).or_else(|| elect(&isr, alive, durable));
        self.controller.leader = chosen.map(NodeId);
        self.controller.leader_epoch.0 += 1;
        self.controller.partition_epoch.0 += 1;
        self.broadcast();
    }

    fn on_isr_change(&mut self, change: IsrChange) {
        let state = &self.controller;
        let fenced = change.leader_epoch != state.leader_epoch
            || change.partition_epoch != state.partition_epoch
            || Some(change.leader) != state.leader;
        let valid =
            change.new_isr.contains(&change.leader) && change.new_isr.iter().all(|node| state.replicas.contains(node));
        if fenced || !valid {
            return;
        }
        if change.new_isr.len() < self.controller.isr.len() {
            self.isr_shrinks += 1;
        } else {
            self.isr_expansions += 1;
        }
        self.controller.isr = change.new_isr;
        self.controller.partition_epoch.0 += 1;
        self.broadcast();
    }

    fn fence(&mut self, id: u64) {
        let node = NodeId(id);
        if !self.controller.isr.contains(&node) || self.controller.isr.len() == 1 {
            return;
        }
        self.controller.isr.retain(|member| *member != node);
        if self.controller.leader == Some(node) {
            self.elect_leader(Some(id));
        } else {
            self.controller.partition_epoch.0 += 1;
            self.broadcast();
        }
    }

    fn crash(&mut self, id: u64, keep: u8) {
        let node = self.node(id);
        if node.core.is_none() {
            return;
        }
        node.core = None;
        Self::lose_unsynced(node, keep);
        // Its clients' requests will never be answered (and those on their way are lost with the
        // connections).
        self.net.retain(|msg| !matches!(msg, Msg::Produce { to, .. } if *to == id));
        for producer in &mut self.producers {
            for batch in &mut producer.batches {
                batch.in_flight.retain(|_, node| *node != id);
            }
        }
        self.idem_requests.retain(|request, _| self.produced[request].node != id);
    }

    /// What a power loss (or a failed fsync) leaves of the log: the durable batches and a random prefix
    /// of the rest; an unsynced truncation may be undone.
    fn lose_unsynced(node: &mut Node, keep: u8) {
        node.sync_in_flight = None;
        node.pending_cache_cut = None;
        let durable_len = node.durable.len();
        let extends = node.log.len() >= durable_len && node.log[..durable_len] == node.durable[..];
        if extends {
            // The durable batches and a prefix of the rest survive (a torn batch is cut by recovery).
            let extra = node.log.len() - durable_len;
            let kept = if extra == 0 { 0 } else { keep as usize % (extra + 1) };
            node.log.truncate(durable_len + kept);
        } else if keep % 2 == 0 {
            // An unsynced truncation is undone.
            node.log = node.durable.clone();
        }
        node.durable = node.log.clone();
    }

    fn fail_storage(&mut self, id: u64, keep: u8) {
        if !self.alive(id) {
            return;
        }
        self.storage_failures += 1;
        let node = self.node(id);
        node.core.as_mut().expect("alive").step(Input::StorageFailed { reason: "injected fsync error".into() });
        Self::lose_unsynced(node, keep);
        let log_end = end_of(&node.log);
        // The shell's side of `Recovered`: the epoch cache loses the epochs the failure took, and the
        // core takes the recovered cache.
        node.epoch_file.truncate_from_end(log_end);
        let epochs = node.epoch_file.clone();
        let producers = producers_of(&node.log);
        self.step(id, Input::Recovered { log_start: Offset(0), log_end, epochs, producers });
    }

    fn restart(&mut self, id: u64) {
        if self.alive(id) {
            return;
        }
        let node = self.node(id);
        node.incarnation += 1;
        // EpochCache::open: entries at or past the recovered log end go.
        let log_end = end_of(&node.log);
        node.epoch_file.truncate_from_end(log_end);
        let epochs = node.epoch_file.clone();
        // A broker never leads an epoch it led before its restart: the controller re-elects.
        if self.controller.leader == Some(NodeId(id)) || self.controller.leader.is_none() {
            let placeholder = self.placeholder_state();
            let node = self.node(id);
            node.core = Some(ReplicaCore::new(
                NodeId(id),
                config(),
                placeholder,
                OpenedLog { producers: producers_of(&node.log), ..opened(log_end, epochs.clone()) },
                0,
            ));
            self.elect_leader(None);
            let state = self.controller.clone();
            let now_ms = self.now_ms;
            self.step(id, Input::PartitionStateChanged { state, now_ms });
        } else {
            let state = self.controller.clone();
            let now_ms = self.now_ms;
            let node = self.node(id);
            node.core = Some(ReplicaCore::new(
                NodeId(id),
                config(),
                state,
                OpenedLog { producers: producers_of(&node.log), ..opened(log_end, epochs) },
                now_ms,
            ));
            self.drain(id);
        }
    }

    /// The state a restarting broker starts from before the controller's election reaches it: the
    /// current state with no leader (so it neither leads nor fetches with an epoch it led before).
    fn placeholder_state(&self) -> PartitionState {
        PartitionState { leader: None, ..self.controller.clone() }
    }

    // ---- operations -------------------------------------------------------------------------------

    fn produce(&mut self, to: u64, records: usize, acks: Acks) -> u64 {
        let batch_id = self.next_batch;
        self.next_batch += 1;
        let records: Vec<Record> = (0..records).map(|i| Record::value(format!("b{batch_id}-{i}"))).collect();
        let batch = Batch::parse(encode_batch(&records, 1_000, ProducerFields::NONE)).unwrap();
        self.send_batch(to, batch, acks)
    }

    /// A client's produce request with this batch, to broker `to` (alive); returns its request id.
    fn send_batch(&mut self, to: u64, batch: Batch, acks: Acks) -> u64 {
        let request = self.next_request;
        self.next_request += 1;
        let log_end_at_send = end_of(&self.node(to).log);
        self.produced.insert(request, Produced { node: to, crc: batch.crc(), acks, log_end_at_send });
        self.step(to, Input::Produce { request, batch, acks });
        request
    }

    /// Producer `producer` sends up to `count` batches it has not sent, in sequence order, while
    /// fewer than [`IN_FLIGHT_MAX`] of its batches are unacknowledged; new batches get `records`.
    /// Returns the requests sent.
    fn send_idempotent(&mut self, producer: usize, to: u64, count: usize, records: usize, delayed: bool) -> Vec<u64> {
        let mut requests = Vec::new();
        for _ in 0..count {
            let state = &mut self.producers[producer];
            let next = state.batches.iter().position(|batch| !batch.sent).unwrap_or(state.batches.len());
            if next >= state.first_unacked() + IN_FLIGHT_MAX {
                break;
            }
            if next == state.batches.len() {
                let sequence = state.next_sequence;
                state.next_sequence += records as i32;
                let tag = format!("p{}-s{sequence}", state.id);
                let batch = idempotent_batch(state.id, 0, sequence, records, &tag);
                state.batches.push(IdemBatch { batch, sequence, sent: false, acked: None, in_flight: BTreeMap::new() });
            }
            self.producers[producer].batches[next].sent = true;
            requests.push(self.send_attempt(producer, next, to, delayed));
        }
        requests
    }

    /// One attempt (first or retry) at an idempotent batch, with its bytes unchanged: into the
    /// network when `delayed`, else straight to the broker.
    fn send_attempt(&mut self, producer: usize, index: usize, to: u64, delayed: bool) -> u64 {
        let request = self.next_request;
        let batch = self.register_attempt(producer, index, to, request);
        if delayed {
            self.next_request += 1;
            let log_end_at_send = Offset(i64::MAX); // set when it arrives
            self.produced.insert(request, Produced { node: to, crc: batch.crc(), acks: Acks::All, log_end_at_send });
            self.net.push(Msg::Produce { to, request, batch });
            return request;
        }
        let sent = self.send_batch(to, batch, Acks::All);
        debug_assert_eq!(sent, request);
        sent
    }

    /// Records `request` as an attempt at the batch; returns the batch.
    fn register_attempt(&mut self, producer: usize, index: usize, to: u64, request: u64) -> Batch {
        let made = &mut self.producers[producer].batches[index];
        made.in_flight.insert(request, to);
        self.idem_requests.insert(request, (producer, index));
        made.batch.clone()
    }

    /// An attempt that will never be answered (lost on the way): its producer stops waiting for it.
    fn forget_attempt(&mut self, request: u64) {
        if let Some((producer, index)) = self.idem_requests.remove(&request) {
            self.producers[producer].batches[index].in_flight.remove(&request);
        }
    }

    /// Producer `producer` re-sends one batch whose outcome it does not know (see [`Op::Retry`]).
    fn retry_idempotent(&mut self, producer: usize, pick: usize, to: u64, timed_out: bool, delayed: bool) {
        let state = &self.producers[producer];
        let candidates: Vec<usize> = state
            .unacked_sent()
            .into_iter()
            .filter(|&index| timed_out || state.batches[index].in_flight.is_empty())
            .collect();
        if candidates.is_empty() {
            return;
        }
        self.retries += 1;
        self.send_attempt(producer, candidates[pick % candidates.len()], to, delayed);
    }

    fn on_idempotent_reply(&mut self, id: u64, producer: usize, index: usize, request: u64, reply: &Reply) {
        let finishing = self.finishing;
        let state = &mut self.producers[producer];
        let oldest = state.first_unacked() == index;
        let made = &mut state.batches[index];
        made.in_flight.remove(&request);
        if std::env::var("REPLICA_STATS").is_ok() {
            let kind = match reply {
                Reply::Produced { base_offset } if *base_offset < self.produced[&request].log_end_at_send => {
                    "dup-ack".to_string()
                }
                Reply::Produced { .. } => "ack".to_string(),
                Reply::Error { code, .. } => format!("{code:?}"),
                other => format!("{other:?}"),
            };
            *self.idem_replies.entry(kind).or_default() += 1;
        }
        match reply {
            Reply::Produced { base_offset } => match made.acked {
                Some(acked) => assert_eq!(
                    acked, *base_offset,
                    "broker {id}: producer {}'s batch {index} acknowledged at {acked}, then at {base_offset}",
                    state.id
                ),
                None => made.acked = Some(*base_offset),
            },
            Reply::Error { code: ErrorCode::ProducerFenced, message } => {
                panic!("broker {id}: producer {} has only ever used epoch 0, yet: {message}", state.id)
            }
            Reply::Error { code: code @ (ErrorCode::OutOfOrderSequence | ErrorCode::UnknownProducerId), message }
                if finishing && oldest =>
            {
                panic!(
                    "broker {id}: producer {}'s oldest unacknowledged batch {index} refused with {code:?} by the \
                     healed leader (every earlier batch is committed): {message}",
                    state.id
                )
            }
            // Refused, or outcome unknown: the producer re-sends it (Op::Retry, finish_producers).
            _ => {}
        }
    }

    /// After healing: each producer re-sends its unacknowledged batches to the leader, in order,
    /// until every batch it ever sent is acknowledged (each exactly once, `check`).
    fn finish_producers(&mut self) {
        self.finishing = true;
        for _round in 0..FINISH_ROUNDS {
            let leader = self.controller.leader.filter(|leader| self.alive(leader.0));
            let mut waiting = false;
            for producer in 0..self.producers.len() {
                for index in self.producers[producer].unacked_sent() {
                    waiting = true;
                    // A batch with an attempt awaiting an answer waits for it (no broker is down now).
                    let answer_due = !self.producers[producer].batches[index].in_flight.is_empty();
                    if let Some(leader) = leader.filter(|_| !answer_due) {
                        self.send_attempt(producer, index, leader.0, false);
                    }
                }
            }
            if !waiting {
                self.check();
                return;
            }
            if leader.is_none() {
                self.elect_leader(None);
            }
            for _ in 0..self.net.len() {
                self.deliver(0);
            }
            for id in 1..=N_NODES as u64 {
                self.sync(id);
            }
            self.tick(50);
            self.check();
        }
        let left: Vec<(i64, Vec<usize>)> =
            self.producers.iter().map(|producer| (producer.id, producer.unacked_sent())).collect();
        panic!("sent batches never acknowledged after {FINISH_ROUNDS} rounds of retries: {left:?}");
    }

    fn deliver(&mut self, index: usize) {
        if self.net.is_empty() {
            return;
        }
        let message = self.net.remove(index % self.net.len());
        if std::env::var("REPLICA_TRACE").is_ok() {
            eprintln!("TRACE t={} {message:?}", self.now_ms);
        }
        let now_ms = self.now_ms;
        match message {
            Msg::State { to, state } => self.step(to, Input::PartitionStateChanged { state, now_ms }),
            Msg::Fetch { from: _, to, request, fetch } => {
                if self.alive(to) {
                    self.step(to, Input::FollowerFetch { request, fetch, now_ms });
                } else {
                    self.fetchers.remove(&request);
                }
            }
            Msg::Response { from, to, response } => {
                self.step(to, Input::FetchResponse { from: NodeId(from), response, now_ms })
            }
            Msg::Isr { change } => self.on_isr_change(change),
            Msg::Produce { to, request, batch } => {
                if self.alive(to) {
                    let log_end_at_send = end_of(&self.node(to).log);
                    self.produced.get_mut(&request).expect("a request we sent").log_end_at_send = log_end_at_send;
                    self.step(to, Input::Produce { request, batch, acks: Acks::All });
                } else {
                    self.forget_attempt(request);
                }
            }
        }
    }

    fn sync(&mut self, id: u64) {
        let node = self.node(id);
        let Some((n_batches, up_to)) = node.sync_in_flight.take() else { return };
        node.durable = node.log[..n_batches].to_vec();
        if let Some(cut) = node.pending_cache_cut.take() {
            node.epoch_file.truncate_from_end(cut);
        }
        self.step(id, Input::SyncCompleted { up_to });
    }

    fn tick(&mut self, ms: i64) {
        self.now_ms += ms;
        let now_ms = self.now_ms;
        for id in 1..=N_NODES as u64 {
            self.step(id, Input::Tick { now_ms });
        }
    }

    fn apply(&mut self, op: &Op) {
        if std::env::var("REPLICA_TRACE").is_ok() {
            let states: Vec<String> = self
                .nodes
                .iter()
                .map(|node| match &node.core {
                    Some(core) => format!(
                        "{}:{:?}/e{}/hw{}/end{}/dur{}/{:?}",
                        node.id,
                        core.role(),
                        core.state().leader_epoch,
                        core.high_watermark(),
                        core.log_end(),
                        end_of(&node.durable),
                        core.epochs().entries().iter().map(|e| (e.epoch.0, e.start_offset.0)).collect::<Vec<_>>()
                    ),
                    None => format!("{}:down", node.id),
                })
                .collect();
            eprintln!(
                "TRACE op {op:?} | controller {:?} isr {:?} | {}",
                self.controller.leader,
                self.controller.isr,
                states.join(" ")
            );
        }
        let node_id = |node: u8| u64::from(node) % N_NODES as u64 + 1;
        match *op {
            Op::Produce { to_leader, node, records, acks } => {
                let leader = self.controller.leader.map(|leader| leader.0).filter(|leader| self.alive(*leader));
                let to = if to_leader { leader.unwrap_or(node_id(node)) } else { node_id(node) };
                if self.alive(to) {
                    let acks = [Acks::All, Acks::Leader, Acks::None][acks as usize % 3];
                    self.produce(to, records as usize, acks);
                }
            }
            Op::Read { node, back, with_epoch } => {
                let to = node_id(node);
                let Some(core) = self.node(to).core.as_ref() else { return };
                let offset = Offset((core.high_watermark().0 - i64::from(back)).max(0));
                let leader_epoch = with_epoch.then(|| core.state().leader_epoch);
                let request = self.next_request;
                self.next_request += 1;
                let now_ms = self.now_ms;
                let input =
                    Input::ConsumerFetch { request, offset, bytes_max: 400, wait_ms_max: 0, leader_epoch, now_ms };
                self.step(to, input);
            }
            Op::Deliver { index } => self.deliver(index as usize),
            Op::DeliverAll => {
                for _ in 0..self.net.len() {
                    self.deliver(0);
                }
            }
            Op::Drop { index } => {
                if !self.net.is_empty() {
                    let len = self.net.len();
                    match self.net.remove(index as usize % len) {
                        Msg::Fetch { request, .. } => {
                            self.fetchers.remove(&request);
                        }
                        Msg::Produce { request, .. } => self.forget_attempt(request),
                        _ => {}
                    }
                }
            }
            Op::Duplicate { index } => {
                if !self.net.is_empty() {
                    let message = self.net[index as usize % self.net.len()].clone();
                    // A duplicated fetch is a new request at the leader (a retry by the transport).
                    let message = match message {
                        Msg::Fetch { from, to, fetch, .. } => {
                            let request = self.next_request;
                            self.next_request += 1;
                            self.fetchers.insert(request, from);
                            Msg::Fetch { from, to, request, fetch }
                        }
                        // So is a duplicated produce request (the producer awaits both answers).
                        Msg::Produce { to, request, batch } => {
                            let copy = self.next_request;
                            self.next_request += 1;
                            let produced = self.produced[&request];
                            self.produced.insert(copy, produced);
                            if let Some(&(producer, index)) = self.idem_requests.get(&request) {
                                self.register_attempt(producer, index, to, copy);
                            }
                            Msg::Produce { to, request: copy, batch }
                        }
                        other => other,
                    };
                    self.net.push(message);
                }
            }
            Op::Settle => {
                for _ in 0..self.net.len() {
                    self.deliver(0);
                }
                for id in 1..=N_NODES as u64 {
                    self.sync(id);
                }
            }
            Op::Sync { node } => self.sync(node_id(node)),
            Op::Tick { ms } => self.tick(i64::from(ms)),
            Op::Crash { node, keep } => self.crash(node_id(node), keep),
            Op::FailStorage { node, keep } => self.fail_storage(node_id(node), keep),
            Op::Restart { node } => self.restart(node_id(node)),
            Op::Elect => {
                let leader = self.controller.leader.map(|leader| leader.0).filter(|leader| self.alive(*leader));
                self.elect_leader(leader);
            }
            Op::Fence { node } => self.fence(node_id(node)),
            Op::Send { producer, to_leader, node, count, records, delayed } => {
                let leader = self.controller.leader.map(|leader| leader.0).filter(|leader| self.alive(*leader));
                let to = if to_leader { leader.unwrap_or(node_id(node)) } else { node_id(node) };
                if self.alive(to) {
                    let (producer, count, records) =
                        (usize::from(producer % 2), usize::from(count), usize::from(records));
                    self.send_idempotent(producer, to, count, records, delayed);
                }
            }
            Op::Retry { producer, pick, to_leader, node, timed_out, delayed } => {
                let leader = self.controller.leader.map(|leader| leader.0).filter(|leader| self.alive(*leader));
                let to = if to_leader { leader.unwrap_or(node_id(node)) } else { node_id(node) };
                if self.alive(to) {
                    self.retry_idempotent(usize::from(producer % 2), usize::from(pick), to, timed_out, delayed);
                }
            }
        }
        self.check();
    }

    fn converged(&self) -> bool {
        let Some(leader) = self.controller.leader else { return false };
        let leader_node = &self.nodes[(leader.0 - 1) as usize];
        let Some(core) = &leader_node.core else { return false };
        core.role() == RoleKind::Leader
            && core.high_watermark() == end_of(&leader_node.log)
            && core.state().isr.len() == N_NODES
            && self.controller.isr.len() == N_NODES
            && self
                .nodes
                .iter()
                .all(|node| node.core.is_some() && node.log == leader_node.log && node.durable == node.log)
    }

    /// Every fault heals; then the replicas must converge and hold everything committed.
    fn heal(&mut self) {
        for id in 1..=N_NODES as u64 {
            self.restart(id);
        }
        self.check();
        for _round in 0..400 {
            let leader_alive = self.controller.leader.is_some_and(|leader| self.alive(leader.0));
            if !leader_alive {
                self.elect_leader(None);
            } else {
                // Brokers learn the controller's state eventually (a lost update is not lost forever).
                self.broadcast();
            }
            for _ in 0..self.net.len() {
                self.deliver(0);
            }
            for id in 1..=N_NODES as u64 {
                self.sync(id);
            }
            self.tick(50);
            self.check();
            if self.converged() {
                let leader = self.controller.leader.expect("converged").0;
                let logs: Vec<(u64, Vec<BatchRef>)> =
                    self.nodes.iter().map(|node| (node.id, refs(&node.log))).collect();
                if let Err(violation) = self.model.check_converged(leader, &logs) {
                    panic!("{violation}");
                }
                return;
            }
        }
        let summary: Vec<String> = self
            .nodes
            .iter()
            .map(|node| {
                let core = node.core.as_ref().expect("all restarted");
                let batches: Vec<(i64, i32)> = refs(&node.log).iter().map(|batch| (batch.base, batch.epoch)).collect();
                format!(
                    "broker {}: {:?} epoch {} hw {} log_end {} isr {:?} epochs {:?} batches (base, epoch) {batches:?}",
                    node.id,
                    core.role(),
                    core.state().leader_epoch,
                    core.high_watermark(),
                    core.log_end(),
                    core.state().isr,
                    core.epochs().entries(),
                )
            })
            .collect();
        panic!("no convergence after healing: controller {:?}; {summary:#?}", self.controller);
    }
}

fn run(ops: &[Op]) {
    if std::env::var("REPLICA_STATS").is_ok() {
        eprintln!("CASE");
    }
    let mut world = World::new();
    for op in ops {
        world.apply(op);
    }
    world.heal();
    world.finish_producers();
    if std::env::var("REPLICA_STATS").is_ok() {
        let truncations = world.nodes.iter().map(|node| node.incarnation).sum::<u64>();
        eprintln!(
            "STATS ops={} acks={} reads={} committed_end={} epoch={} restarts={truncations} replies={} cuts={} shrinks={} expansions={} storage_failures={} resignations={} idem_batches={} idem_committed={} retries={}",
            ops.len(),
            world.model.acks,
            world.model.reads,
            world.model.committed_end(),
            world.controller.leader_epoch,
            world.replies.len(),
            world.cutting_truncations,
            world.isr_shrinks,
            world.isr_expansions,
            world.storage_failures,
            world.resignations,
            world.producers.iter().map(|producer| producer.batches.len()).sum::<usize>(),
            world.producers.iter().map(|producer| producer.committed_at.len()).sum::<usize>(),
            world.retries
        );
        eprintln!("IDEM {:?}", world.idem_replies);
    }
}

/// `PROPTEST_CASES` overrides both tests' defaults. The defaults share out the time one test of 1024
/// plain cases took: the idempotent test's ops include every plain op (and its checks), so most
/// cases go to it; the plain test still replays its persisted seeds first, as they were recorded.
fn proptest_config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/replica_core.txt"))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config(256))]

    #[test]
    fn replicas_keep_committed_data_through_faults(ops in proptest::collection::vec(op(), 1..120)) {
        run(&ops);
    }
}

proptest! {
    #![proptest_config(proptest_config(640))]

    #[test]
    fn idempotent_producers_append_each_batch_once_through_faults(
        ops in proptest::collection::vec(op_with_producers(), 1..120)
    ) {
        run(&ops);
    }
}

// ---- scripted scenarios ---------------------------------------------------------------------------

fn reply_of(world: &World, request: u64) -> Option<&Reply> {
    world.replies.iter().find(|(id, _)| *id == request).map(|(_, reply)| reply)
}

fn settle(world: &mut World, rounds: usize) {
    for _ in 0..rounds {
        world.apply(&Op::DeliverAll);
        for node in 0..N_NODES as u8 {
            world.apply(&Op::Sync { node });
        }
    }
}

/// acks=all is answered only when every ISR member reported the batch durable; acks=leader when the
/// leader's fsync covers it.
#[test]
fn acks_all_waits_for_every_isr_member_to_fsync() {
    let mut world = World::new();
    settle(&mut world, 2);
    let all = world.produce(1, 2, Acks::All);
    let leader = world.produce(1, 1, Acks::Leader);
    // The first sync was begun before the acks=leader batch was written; the second covers it.
    world.apply(&Op::Sync { node: 0 });
    assert!(reply_of(&world, leader).is_none(), "acks=leader before the leader's fsync");
    world.apply(&Op::Sync { node: 0 });
    assert!(matches!(reply_of(&world, leader), Some(Reply::Produced { .. })), "acks=leader after the leader's fsync");
    assert!(reply_of(&world, all).is_none(), "acks=all before the followers' fsync");
    // Followers fetch and write, but do not fsync yet: still not acked.
    for _ in 0..4 {
        world.apply(&Op::DeliverAll);
    }
    assert!(reply_of(&world, all).is_none(), "acks=all before the followers' fsync");
    settle(&mut world, 3);
    assert_eq!(reply_of(&world, all), Some(&Reply::Produced { base_offset: Offset(0) }));
    world.heal();
}

/// With the ISR below min_isr, acks=all is refused before appending (definite); a batch appended
/// before the ISR shrank below it gets an outcome-unknown error, never a success.
#[test]
fn not_enough_replicas_before_and_after_append() {
    let mut world = World::new();
    settle(&mut world, 2);
    let pending = world.produce(1, 1, Acks::All);
    world.apply(&Op::Sync { node: 0 });
    world.apply(&Op::Fence { node: 1 }); // broker 2 out
    world.apply(&Op::Fence { node: 2 }); // broker 3 out: ISR = {1}
    for _ in 0..3 {
        world.apply(&Op::DeliverAll);
    }
    let code = |reply: Option<&Reply>| match reply {
        Some(Reply::Error { code, .. }) => Some(*code),
        _ => None,
    };
    assert_eq!(code(reply_of(&world, pending)), Some(ErrorCode::NotEnoughReplicasAfterAppend));
    let refused = world.produce(1, 1, Acks::All);
    assert_eq!(code(reply_of(&world, refused)), Some(ErrorCode::NotEnoughReplicas));
    let relaxed = world.produce(1, 1, Acks::Leader);
    world.apply(&Op::Sync { node: 0 });
    assert!(matches!(reply_of(&world, relaxed), Some(Reply::Produced { .. })));
    world.heal();
}

/// A leader cut off from the controller (its followers moved to a new leader, its ISR shrink never
/// answered) cannot advance its HW alone, so it cannot acknowledge acks=all.
#[test]
fn a_zombie_leader_cannot_acknowledge() {
    let mut world = World::new();
    settle(&mut world, 2);
    // The controller moves leadership to broker 2; broker 1 never hears of it.
    world.apply(&Op::Elect);
    let to_old_leader: Vec<usize> = world
        .net
        .iter()
        .enumerate()
        .filter(|(_, msg)| matches!(msg, Msg::State { to: 1, .. }))
        .map(|(i, _)| i)
        .collect();
    for index in to_old_leader.into_iter().rev() {
        world.net.remove(index);
    }
    let zombie = world.produce(1, 1, Acks::All);
    for _ in 0..6 {
        settle(&mut world, 1);
        world.apply(&Op::Tick { ms: 400 });
        // Drop the zombie's state updates and ISR proposals (it is cut off from the controller).
        world.net.retain(|msg| match msg {
            Msg::State { to, .. } => *to != 1,
            Msg::Isr { change } => change.leader != NodeId(1),
            _ => true,
        });
    }
    assert_eq!(world.nodes[0].core.as_ref().unwrap().role(), RoleKind::Leader, "still a zombie");
    assert!(reply_of(&world, zombie).is_none(), "a zombie acknowledged: {:?}", reply_of(&world, zombie));
    world.heal();
}

// ---- idempotent producers: dedup through the whole partition ---------------------------------

fn error_of(reply: Option<&Reply>) -> Option<ErrorCode> {
    match reply {
        Some(Reply::Error { code, .. }) => Some(*code),
        _ => None,
    }
}

/// Every broker's log, as the model sees it.
fn all_logs(world: &World) -> Vec<Vec<BatchRef>> {
    world.nodes.iter().map(|node| refs(&node.log)).collect()
}

/// A retry of a committed batch is answered with the offset of the first append; nothing is appended.
#[test]
fn a_retry_of_a_committed_batch_gets_its_original_offset_and_appends_nothing() {
    let mut world = World::new();
    settle(&mut world, 2);
    world.produce(1, 3, Acks::All); // offsets [0, 3): the idempotent batch lands at 3
    let first = world.send_idempotent(0, 1, 1, 2, false)[0];
    settle(&mut world, 5);
    assert_eq!(reply_of(&world, first), Some(&Reply::Produced { base_offset: Offset(3) }));
    let before = all_logs(&world);
    let retry = world.send_attempt(0, 0, 1, false);
    assert_eq!(reply_of(&world, retry), Some(&Reply::Produced { base_offset: Offset(3) }));
    settle(&mut world, 2);
    assert_eq!(all_logs(&world), before, "the retry appended nothing, anywhere");
    world.heal();
    world.finish_producers();
}

/// A retry of a batch the leader appended but has not committed gets `DuplicatePending` (and appends
/// nothing); once the HW passes the batch, a retry gets the original offset.
#[test]
fn a_retry_of_an_uncommitted_batch_is_pending_until_the_high_watermark_passes_it() {
    let mut world = World::new();
    settle(&mut world, 2);
    let first = world.send_idempotent(0, 1, 1, 2, false)[0];
    assert_eq!(world.nodes[0].log.len(), 1, "written on the leader");
    let early = world.send_attempt(0, 0, 1, false);
    assert_eq!(error_of(reply_of(&world, early)), Some(ErrorCode::DuplicatePending));
    world.apply(&Op::Sync { node: 0 }); // durable on the leader, not yet on the followers
    let later = world.send_attempt(0, 0, 1, false);
    assert_eq!(error_of(reply_of(&world, later)), Some(ErrorCode::DuplicatePending), "not committed yet");
    assert!(reply_of(&world, first).is_none());
    assert_eq!(world.nodes[0].log.len(), 1, "the retries appended nothing");
    settle(&mut world, 3);
    assert_eq!(reply_of(&world, first), Some(&Reply::Produced { base_offset: Offset(0) }));
    let retry = world.send_attempt(0, 0, 1, false);
    assert_eq!(reply_of(&world, retry), Some(&Reply::Produced { base_offset: Offset(0) }));
    assert!(world.nodes.iter().all(|node| node.log.len() == 1), "one copy on every broker");
    world.heal();
    world.finish_producers();
}

/// The new leader got the batch by replication (its dedup table follows every replicated batch): a
/// retry is pending until the new leader's HW passes the batch, then answered with the original
/// offset, never appended again; the producer's next sequence is appended after it.
#[test]
fn after_a_failover_the_new_leader_answers_a_retry_with_the_original_offset() {
    let mut world = World::new();
    settle(&mut world, 2);
    let first = world.send_idempotent(0, 1, 1, 2, false)[0];
    // The followers' parked fetches get the batch; they write it but do not sync it: not committed.
    world.apply(&Op::DeliverAll);
    assert!(world.nodes[1..].iter().all(|node| node.log.len() == 1 && node.durable.is_empty()));
    // Leadership moves to broker 2 (the controller's choice among equals: the lowest id).
    world.apply(&Op::Elect);
    world.apply(&Op::DeliverAll);
    assert_eq!(world.controller.leader, Some(NodeId(2)));
    assert_eq!(world.nodes[1].core.as_ref().unwrap().role(), RoleKind::Leader);
    assert_eq!(error_of(reply_of(&world, first)), Some(ErrorCode::NotLeaderAfterAppend), "outcome unknown");
    let pending = world.send_attempt(0, 0, 2, false);
    assert_eq!(error_of(reply_of(&world, pending)), Some(ErrorCode::DuplicatePending));
    settle(&mut world, 4);
    let retry = world.send_attempt(0, 0, 2, false);
    assert_eq!(reply_of(&world, retry), Some(&Reply::Produced { base_offset: Offset(0) }));
    assert!(world.nodes.iter().all(|node| node.log.len() == 1), "one copy on every broker");
    let next = world.send_idempotent(0, 2, 1, 1, false)[0];
    settle(&mut world, 4);
    assert_eq!(reply_of(&world, next), Some(&Reply::Produced { base_offset: Offset(2) }));
    assert!(world.nodes.iter().all(|node| node.log.len() == 2));
    world.heal();
    world.finish_producers();
}

// ---- single-core scenarios: typed errors, divergence answers, truncation rounds, ISR proposals ---

fn state(leader: u64, epoch: i32, isr: &[u64]) -> PartitionState {
    PartitionState {
        leader: Some(NodeId(leader)),
        leader_epoch: LeaderEpoch(epoch),
        partition_epoch: PartitionEpoch(epoch),
        isr: isr.iter().copied().map(NodeId).collect(),
        replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
        min_isr: MIN_ISR,
        log: Default::default(),
    }
}

fn epochs(pairs: &[(i32, i64)]) -> LeaderEpochs {
    let mut epochs = LeaderEpochs::new();
    for &(epoch, start) in pairs {
        epochs.assign(LeaderEpoch(epoch), Offset(start)).unwrap();
    }
    epochs
}

fn fetch(replica: u64, epoch: i32, offset: i64, last: Option<i32>) -> FetchRequest {
    FetchRequest {
        fetch_id: 7,
        replica: NodeId(replica),
        leader_epoch: LeaderEpoch(epoch),
        fetch_offset: Offset(offset),
        last_fetched_epoch: last.map(LeaderEpoch),
        durable_end: Offset(offset),
        bytes_max: 1 << 20,
        wait_ms_max: 0,
    }
}

fn one_result(ready: &Ready) -> &FetchResult {
    assert_eq!(ready.follower_replies.len(), 1, "{ready:?}");
    &ready.follower_replies[0].1.result
}

fn error_code(result: &FetchResult) -> Option<ErrorCode> {
    match result {
        FetchResult::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// A leader whose log holds epochs 1 (from 0) and 3 (from 10) up to 20 and now leads epoch 5.
fn leader_over_old_epochs() -> ReplicaCore {
    let log = OpenedLog {
        log_start: Offset(0),
        log_end: Offset(20),
        epochs: epochs(&[(1, 0), (3, 10)]),
        high_watermark: Offset(0),
        lost_committed: None,
        producers: ProducerStates::new(),
    };
    let mut core = ReplicaCore::new(NodeId(1), config(), state(1, 5, &[1, 2, 3]), log, 0);
    let ready = core.ready();
    assert_eq!(ready.epoch_assign, vec![(LeaderEpoch(5), Offset(20))], "a new leader records its epoch's start");
    core
}

#[test]
fn a_leader_answers_follower_fetches_with_typed_errors_or_the_divergence() {
    let mut core = leader_over_old_epochs();
    let mut ask = |request: u64, fetch: FetchRequest| {
        core.step(Input::FollowerFetch { request, fetch, now_ms: 10 });
        core.ready()
    };
    let stale = ask(1, fetch(2, 4, 20, Some(3)));
    assert_eq!(error_code(one_result(&stale)), Some(ErrorCode::FencedLeaderEpoch));
    let future = ask(2, fetch(2, 6, 20, Some(3)));
    assert_eq!(error_code(one_result(&future)), Some(ErrorCode::UnknownLeaderEpoch));
    // The follower has an epoch 4 the leader never had: epoch 3 ends at 20 here.
    let diverging = ask(3, fetch(2, 5, 25, Some(4)));
    assert_eq!(one_result(&diverging), &FetchResult::Diverging { epoch: Some(LeaderEpoch(3)), end_offset: Offset(20) });
    // The follower's epoch 1 runs past where the leader's ended (10).
    let diverging = ask(4, fetch(3, 5, 12, Some(1)));
    assert_eq!(one_result(&diverging), &FetchResult::Diverging { epoch: Some(LeaderEpoch(1)), end_offset: Offset(10) });
    // An epoch below everything the leader knows: start over from the leader's log start.
    let mut low = leader_over_old_epochs();
    low.step(Input::FollowerFetch { request: 5, fetch: fetch(2, 5, 5, Some(0)), now_ms: 10 });
    assert_eq!(one_result(&low.ready()), &FetchResult::Diverging { epoch: None, end_offset: Offset(0) });
    // Agreeing: data from the fetch offset up to what the leader has written.
    let agreeing = ask(6, fetch(2, 5, 15, Some(3)));
    assert!(agreeing.follower_replies.is_empty());
    assert_eq!(agreeing.follower_reads.len(), 1);
    assert_eq!((agreeing.follower_reads[0].offset, agreeing.follower_reads[0].up_to), (Offset(15), Offset(20)));
    // Not a replica of this partition.
    let stranger = ask(7, fetch(9, 5, 0, None));
    assert_eq!(error_code(one_result(&stranger)), Some(ErrorCode::InvalidRequest));
}

#[test]
fn consumer_fetches_are_fenced_by_leader_epoch_and_refused_off_the_leader() {
    let mut core = leader_over_old_epochs();
    let consumer = |request: u64, leader_epoch: Option<i32>| Input::ConsumerFetch {
        request,
        offset: Offset(0),
        bytes_max: 100,
        wait_ms_max: 0,
        leader_epoch: leader_epoch.map(LeaderEpoch),
        now_ms: 0,
    };
    core.step(consumer(1, Some(4)));
    core.step(consumer(2, Some(6)));
    core.step(consumer(3, Some(5)));
    let ready = core.ready();
    let codes: Vec<Option<ErrorCode>> = ready
        .replies
        .iter()
        .map(|(_, reply)| match reply {
            Reply::Error { code, .. } => Some(*code),
            _ => None,
        })
        .collect();
    assert_eq!(codes[..2], [Some(ErrorCode::FencedLeaderEpoch), Some(ErrorCode::UnknownLeaderEpoch)]);
    // The right epoch, but the HW (0) has not reached the epoch's start (20, where this leadership
    // began): answering would show consumers a HW below what a predecessor may have shown them.
    assert!(ready.reads.is_empty());
    assert!(matches!(ready.replies[2], (3, Reply::Error { code: ErrorCode::LeaderNotReady, .. })));
    assert!(!core.serves_consumers());
    let log = OpenedLog {
        log_start: Offset(0),
        log_end: Offset(20),
        epochs: epochs(&[(1, 0)]),
        high_watermark: Offset(20),
        lost_committed: None,
        producers: ProducerStates::new(),
    };
    let mut follower = ReplicaCore::new(NodeId(2), config(), state(1, 5, &[1, 2, 3]), log, 0);
    follower.step(consumer(4, None));
    let ready = follower.ready();
    assert!(matches!(ready.replies[0], (4, Reply::Error { code: ErrorCode::NotLeader, .. })));
}

/// KIP-279 rounds: the follower truncates to the smaller of the leader's end for the epoch and its
/// own, drops the epochs above, and asks again with its new last epoch.
#[test]
fn a_follower_truncates_by_epoch_in_rounds_never_to_its_high_watermark() {
    let log = OpenedLog {
        log_start: Offset(0),
        log_end: Offset(20),
        epochs: epochs(&[(1, 0), (3, 10)]),
        high_watermark: Offset(4),
        lost_committed: None,
        producers: ProducerStates::new(),
    };
    let mut core = ReplicaCore::new(NodeId(2), config(), state(1, 5, &[1, 2, 3]), log, 0);
    let ready = core.ready();
    assert!(ready.truncate_to.is_none(), "becoming a follower truncates nothing by itself (not to the HW 4)");
    let (leader, first) = ready.fetch.clone().expect("a settled follower fetches");
    assert_eq!(leader, NodeId(1));
    assert_eq!(
        (first.fetch_offset, first.last_fetched_epoch, first.durable_end),
        (Offset(20), Some(LeaderEpoch(3)), Offset(20))
    );
    let answer = |fetch_id: u64, result: FetchResult| Input::FetchResponse {
        from: NodeId(1),
        response: FetchResponse {
            fetch_id,
            leader_epoch: LeaderEpoch(5),
            high_watermark: Offset(4),
            log_start: None,
            result,
        },
        now_ms: 0,
    };
    core.step(answer(first.fetch_id, FetchResult::Diverging { epoch: Some(LeaderEpoch(3)), end_offset: Offset(15) }));
    let ready = core.ready();
    assert_eq!(ready.truncate_to, Some(Offset(15)));
    assert!(ready.fetch.is_none(), "no fetch while the truncation is not reported");
    core.step(Input::Truncated { log_end: Offset(15), producers: ProducerStates::new() });
    let ready = core.ready();
    assert!(ready.start_sync && ready.fetch.is_none(), "the truncation is synced before anything else");
    core.step(Input::SyncCompleted { up_to: Offset(15) });
    let (_, second) = core.ready().fetch.expect("fetching again");
    assert_eq!((second.fetch_offset, second.last_fetched_epoch), (Offset(15), Some(LeaderEpoch(3))));
    // A late duplicate of the first answer is ignored.
    core.step(answer(first.fetch_id, FetchResult::Diverging { epoch: Some(LeaderEpoch(1)), end_offset: Offset(0) }));
    assert!(core.ready().is_empty());
    // The leader never had epoch 3; its epoch 1 ended at 8 (ours at 10): cut to 8, epoch 3 goes.
    core.step(answer(second.fetch_id, FetchResult::Diverging { epoch: Some(LeaderEpoch(1)), end_offset: Offset(8) }));
    assert_eq!(core.ready().truncate_to, Some(Offset(8)));
    core.step(Input::Truncated { log_end: Offset(8), producers: ProducerStates::new() });
    assert_eq!(core.epochs().latest_epoch(), Some(LeaderEpoch(1)));
    assert_eq!(core.high_watermark(), Offset(4), "the HW stays: committed data is never truncated");
    assert!(core.ready().start_sync);
    core.step(Input::SyncCompleted { up_to: Offset(8) });
    let (_, third) = core.ready().fetch.expect("fetching again");
    assert_eq!((third.fetch_offset, third.last_fetched_epoch), (Offset(8), Some(LeaderEpoch(1))));
}

/// A lagging ISR is shrunk through a fenced proposal; while it is pending the HW and min ISR count
/// the larger/smaller set respectively; a caught-up follower is proposed back in.
#[test]
fn isr_shrink_and_expand_are_fenced_proposals() {
    let mut core = leader_over_old_epochs();
    core.step(Input::Tick { now_ms: 500 });
    assert!(core.ready().isr_change.is_none(), "not lagging yet");
    // Broker 2 catches up (durably, to the log end); broker 3 never fetches.
    core.step(Input::FollowerFetch { request: 1, fetch: fetch(2, 5, 20, Some(3)), now_ms: 900 });
    let _ = core.ready();
    core.step(Input::Tick { now_ms: 1_200 });
    let change = core.ready().isr_change.expect("broker 3 lags past replica_lag_ms_max");
    assert_eq!(
        change,
        IsrChange {
            leader: NodeId(1),
            leader_epoch: LeaderEpoch(5),
            partition_epoch: PartitionEpoch(5),
            new_isr: vec![NodeId(1), NodeId(2)],
        }
    );
    assert_eq!(core.maximal_isr(), vec![NodeId(1), NodeId(2), NodeId(3)], "3 still counts for the HW");
    assert_eq!(core.high_watermark(), Offset(0), "broker 3 never confirmed anything");
    // Unanswered, the same proposal goes out again after the retry interval.
    core.step(Input::Tick { now_ms: 1_600 });
    assert_eq!(core.ready().isr_change.as_ref(), Some(&change));
    // The controller accepts: the HW moves to what 1 and 2 hold durably.
    let mut accepted = state(1, 5, &[1, 2]);
    accepted.partition_epoch = PartitionEpoch(6);
    core.step(Input::PartitionStateChanged { state: accepted, now_ms: 1_700 });
    let _ = core.ready();
    assert_eq!(core.high_watermark(), Offset(20));
    // Broker 3 comes back and catches up: proposed back in, counted at once.
    core.step(Input::FollowerFetch { request: 2, fetch: fetch(3, 5, 20, Some(3)), now_ms: 1_800 });
    let change = core.ready().isr_change.expect("an expansion");
    assert_eq!(change.partition_epoch, PartitionEpoch(6));
    assert_eq!(change.new_isr, vec![NodeId(1), NodeId(2), NodeId(3)]);
    assert_eq!(core.maximal_isr(), vec![NodeId(1), NodeId(2), NodeId(3)]);
    // A stale state (older partition epoch) changes nothing.
    core.step(Input::PartitionStateChanged { state: state(1, 5, &[1, 2, 3]), now_ms: 1_900 });
    assert_eq!(core.state().partition_epoch, PartitionEpoch(6));
}

/// A leader whose storage recovery lost data it had already sent to followers must not append in
/// this epoch again: it refuses produce and asks to resign.
#[test]
fn a_leader_that_lost_replicated_data_resigns() {
    let mut core =
        ReplicaCore::new(NodeId(1), config(), state(1, 1, &[1, 2, 3]), opened(Offset(0), LeaderEpochs::new()), 0);
    let _ = core.ready();
    let records = vec![Record::value("x")];
    let batch = Batch::parse(encode_batch(&records, 0, ProducerFields::NONE)).unwrap();
    core.step(Input::Produce { request: 1, batch: batch.clone(), acks: Acks::All });
    let ready = core.ready();
    assert_eq!(ready.writes.len(), 1);
    core.step(Input::Written { up_to: Offset(1) });
    let _ = core.ready();
    core.step(Input::FollowerFetch { request: 2, fetch: fetch(2, 1, 0, None), now_ms: 0 });
    assert_eq!(core.ready().follower_reads.len(), 1, "the follower gets the written, not yet durable batch");
    core.step(Input::StorageFailed { reason: "fsync: EIO".into() });
    let producers = ProducerStates::new();
    core.step(Input::Recovered { log_start: Offset(0), log_end: Offset(0), epochs: LeaderEpochs::new(), producers });
    let ready = core.ready();
    assert!(ready.resign);
    assert!(matches!(ready.replies[0], (1, Reply::Error { code: ErrorCode::StorageIndeterminate, .. })));
    core.step(Input::Produce { request: 3, batch, acks: Acks::All });
    assert!(matches!(core.ready().replies[0], (3, Reply::Error { code: ErrorCode::NotLeader, .. })));
}

/// A replica whose log could not be opened refuses everything with a storage error that says why
/// (the latest cause, issue 15), and leads normally once the shell recovered the log (its epoch
/// starts at the recovered end).
#[test]
fn a_replica_whose_log_failed_to_open_recovers() {
    let reason = "cannot open the partition storage: Too many open files (os error 24)".to_string();
    let mut core = ReplicaCore::new_failed(NodeId(1), config(), state(1, 3, &[1, 2, 3]), 0, reason);
    let records = vec![Record::value("x")];
    let batch = Batch::parse(encode_batch(&records, 0, ProducerFields::NONE)).unwrap();
    core.step(Input::Produce { request: 1, batch: batch.clone(), acks: Acks::Leader });
    let ready = core.ready();
    let (_, Reply::Error { code: ErrorCode::StorageError, message }) = &ready.replies[0] else { panic!("{ready:?}") };
    assert!(message.contains("Too many open files"), "{message}");
    core.step(Input::StillFailed { reason: "cannot open the partition storage: No space left".into() });
    core.step(Input::Produce { request: 9, batch: batch.clone(), acks: Acks::Leader });
    let ready = core.ready();
    let (_, Reply::Error { message, .. }) = &ready.replies[0] else { panic!("{ready:?}") };
    assert!(message.contains("No space left"), "the latest cause: {message}");
    assert!(ready.epoch_assign.is_empty(), "no epoch cache to write to while the log is failed");
    let producers = ProducerStates::new();
    core.step(Input::Recovered { log_start: Offset(0), log_end: Offset(5), epochs: epochs(&[(1, 0)]), producers });
    let ready = core.ready();
    assert_eq!(ready.epoch_assign, vec![(LeaderEpoch(3), Offset(5))]);
    core.step(Input::Produce { request: 2, batch, acks: Acks::Leader });
    let ready = core.ready();
    assert_eq!(ready.writes.len(), 1);
    assert_eq!((ready.writes[0].base_offset(), ready.writes[0].leader_epoch()), (Offset(5), LeaderEpoch(3)));
}

/// KIP-966: the HW moves only while the ISR has `min_isr` members. A leader alone in its ISR (min 2)
/// keeps its HW; what it appends meanwhile (acks=leader) becomes visible once a follower is back in.
#[test]
fn the_high_watermark_stays_while_the_isr_is_below_min_isr() {
    let mut core = leader_over_old_epochs(); // leads epoch 5 over [0, 20), HW 0, ISR {1, 2, 3}
    core.step(Input::FollowerFetch { request: 1, fetch: fetch(2, 5, 20, Some(3)), now_ms: 10 });
    core.step(Input::FollowerFetch { request: 2, fetch: fetch(3, 5, 20, Some(3)), now_ms: 10 });
    let _ = core.ready();
    assert_eq!(core.high_watermark(), Offset(20), "every member holds [0, 20) durably");
    // The controller shrinks the ISR to the leader alone.
    let mut alone = state(1, 5, &[1]);
    alone.partition_epoch = PartitionEpoch(6);
    core.step(Input::PartitionStateChanged { state: alone, now_ms: 20 });
    let _ = core.ready();
    let batch = Batch::parse(encode_batch(&[Record::value("x")], 0, ProducerFields::NONE)).unwrap();
    core.step(Input::Produce { request: 3, batch, acks: Acks::Leader });
    assert_eq!(core.ready().writes.len(), 1);
    core.step(Input::Written { up_to: Offset(21) });
    let _ = core.ready();
    core.step(Input::SyncCompleted { up_to: Offset(21) });
    let ready = core.ready();
    assert!(matches!(ready.replies[..], [(3, Reply::Produced { base_offset: Offset(20) })]), "acks=leader answered");
    assert_eq!(core.high_watermark(), Offset(20), "the HW moved with the ISR below min_isr");
    // Broker 2 catches up and the ISR is back at two: the HW moves.
    core.step(Input::FollowerFetch { request: 4, fetch: fetch(2, 5, 21, Some(5)), now_ms: 30 });
    let change = core.ready().isr_change.expect("broker 2 is proposed back in");
    assert_eq!(change.new_isr, vec![NodeId(1), NodeId(2)]);
    assert_eq!(core.high_watermark(), Offset(20), "a pending expansion does not lift the ISR to min_isr");
    let mut back = state(1, 5, &[1, 2]);
    back.partition_epoch = PartitionEpoch(7);
    core.step(Input::PartitionStateChanged { state: back, now_ms: 40 });
    let _ = core.ready();
    assert_eq!(core.high_watermark(), Offset(21));
}

/// A replica whose recovery cut its log below its checkpointed HW (`OpenedLog::lost_committed`)
/// resigns as soon as it leads, serves no consumer, and asks again if the answer never comes; once
/// it has followed a leader it may lead normally.
#[test]
fn a_replica_that_lost_committed_batches_resigns_when_it_leads() {
    let log = OpenedLog {
        log_start: Offset(0),
        log_end: Offset(10),
        epochs: epochs(&[(1, 0)]),
        high_watermark: Offset(0),
        lost_committed: Some(Offset(15)),
        producers: ProducerStates::new(),
    };
    let mut core = ReplicaCore::new(NodeId(1), config(), state(1, 2, &[1, 2, 3]), log.clone(), 0);
    let ready = core.ready();
    assert!(ready.resign, "a leader that lost committed batches resigns at once");
    core.step(Input::ConsumerFetch {
        request: 1,
        offset: Offset(0),
        bytes_max: 1024,
        wait_ms_max: 0,
        leader_epoch: None,
        now_ms: 0,
    });
    assert!(matches!(core.ready().replies[..], [(1, Reply::Error { .. })]), "it serves no consumer");
    let retry_ms = config().isr_change_retry_ms;
    core.step(Input::Tick { now_ms: retry_ms + 1 });
    assert!(core.ready().resign, "the resignation is asked again when no new state came");
    core.step(Input::Tick { now_ms: retry_ms + 2 });
    assert!(!core.ready().resign, "not on every tick");
    // The controller keeps it leading in a new epoch (it was the last ISR member, no ELR): it leads.
    core.step(Input::PartitionStateChanged { state: state(1, 3, &[1, 2, 3]), now_ms: retry_ms + 3 });
    assert!(!core.ready().resign, "resigns once, not for ever");

    // As a follower that has not fetched back to the checkpointed HW: it still resigns when it is
    // elected (found by `isr_3_bit_flips` seed 32, where one was elected mid-repair).
    let mut core = ReplicaCore::new(NodeId(1), config(), state(2, 2, &[1, 2, 3]), log.clone(), 0);
    assert!(!core.ready().resign);
    core.step(Input::PartitionStateChanged { state: state(1, 3, &[1, 2, 3]), now_ms: 10 });
    assert!(core.ready().resign, "elected with [0, 10) of a committed [0, 15)");
    // A log that reaches the checkpointed HW again leads normally.
    let repaired = OpenedLog { log_end: Offset(15), ..log };
    let mut core = ReplicaCore::new(NodeId(1), config(), state(2, 2, &[1, 2, 3]), repaired, 0);
    let _ = core.ready();
    core.step(Input::PartitionStateChanged { state: state(1, 3, &[1, 2, 3]), now_ms: 10 });
    assert!(!core.ready().resign);
}

/// A follower's dedup table follows its log: after a truncation (`Input::Truncated` carries the table
/// rebuilt from what is left) a batch that was cut is no longer a duplicate, so when this replica
/// leads, a retry of it is appended; a retry of a batch that was kept is still answered from the log.
#[test]
fn a_follower_that_truncated_no_longer_treats_a_cut_batch_as_a_duplicate() {
    let mut core =
        ReplicaCore::new(NodeId(2), config(), state(1, 1, &[1, 2, 3]), opened(Offset(0), LeaderEpochs::new()), 0);
    let (_, first) = core.ready().fetch.expect("a follower fetches");
    // Leader 1 (epoch 1) sends producer 1's sequences 0 and 2 (two records each).
    let kept = idempotent_batch(1, 0, 0, 2, "kept");
    let cut = idempotent_batch(1, 0, 2, 2, "cut");
    let log = vec![kept.clone().stamped(Offset(0), LeaderEpoch(1)), cut.clone().stamped(Offset(2), LeaderEpoch(1))];
    let data = FetchResponse {
        fetch_id: first.fetch_id,
        leader_epoch: LeaderEpoch(1),
        high_watermark: Offset(0),
        log_start: Some(Offset(0)),
        result: FetchResult::Data { batches: log.clone() },
    };
    core.step(Input::FetchResponse { from: NodeId(1), response: data, now_ms: 0 });
    assert_eq!(core.ready().writes.len(), 2);
    core.step(Input::Written { up_to: Offset(4) });
    assert!(core.ready().start_sync);
    core.step(Input::SyncCompleted { up_to: Offset(4) });
    let last_sequence =
        |core: &ReplicaCore| core.producer_states().get(ProducerId(1)).map(|entry| entry.last().first_sequence);
    assert_eq!(last_sequence(&core), Some(Sequence(2)), "a follower applies every replicated batch");
    // Broker 3 leads epoch 2 without the second batch: this follower cuts it.
    core.step(Input::PartitionStateChanged { state: state(3, 2, &[1, 2, 3]), now_ms: 10 });
    let (leader, second) = core.ready().fetch.expect("fetching from the new leader");
    assert_eq!(leader, NodeId(3));
    let diverging = FetchResponse {
        fetch_id: second.fetch_id,
        leader_epoch: LeaderEpoch(2),
        high_watermark: Offset(2),
        log_start: Some(Offset(0)),
        result: FetchResult::Diverging { epoch: Some(LeaderEpoch(1)), end_offset: Offset(2) },
    };
    core.step(Input::FetchResponse { from: NodeId(3), response: diverging, now_ms: 10 });
    assert_eq!(core.ready().truncate_to, Some(Offset(2)));
    core.step(Input::Truncated { log_end: Offset(2), producers: producers_of(&log[..1]) });
    assert_eq!(last_sequence(&core), Some(Sequence(0)), "the table is the truncated log's");
    assert!(core.ready().start_sync);
    core.step(Input::SyncCompleted { up_to: Offset(2) });
    let _ = core.ready();
    // It leads epoch 3: the cut batch's retry is appended, the kept batch's answered from the log.
    core.step(Input::PartitionStateChanged { state: state(2, 3, &[1, 2, 3]), now_ms: 20 });
    assert_eq!(core.ready().epoch_assign, vec![(LeaderEpoch(3), Offset(2))]);
    core.step(Input::Produce { request: 1, batch: cut, acks: Acks::Leader });
    let ready = core.ready();
    assert!(ready.replies.is_empty(), "{ready:?}");
    assert_eq!(ready.writes.len(), 1, "the cut batch is appended again");
    assert_eq!(ready.writes[0].base_offset(), Offset(2));
    core.step(Input::Written { up_to: Offset(4) });
    let _ = core.ready();
    core.step(Input::Produce { request: 2, batch: kept, acks: Acks::Leader });
    let ready = core.ready();
    assert!(ready.writes.is_empty());
    assert_eq!(ready.replies, vec![(2, Reply::Produced { base_offset: Offset(0) })]);
}

/// Broker 2, a follower of broker 1 (epoch 1), that was sent offsets [0, 5) in two batches with
/// the leader's HW `leader_hw`, and has not reported their write yet.
fn follower_with_two_writes_pending(leader_hw: Offset) -> ReplicaCore {
    let mut core =
        ReplicaCore::new(NodeId(2), config(), state(1, 1, &[1, 2, 3]), opened(Offset(0), LeaderEpochs::new()), 0);
    let (_, first) = core.ready().fetch.expect("a follower fetches");
    let batches = vec![
        idempotent_batch(1, 0, 0, 2, "a").stamped(Offset(0), LeaderEpoch(1)),
        idempotent_batch(1, 0, 2, 3, "b").stamped(Offset(2), LeaderEpoch(1)),
    ];
    let data = FetchResponse {
        fetch_id: first.fetch_id,
        leader_epoch: LeaderEpoch(1),
        high_watermark: leader_hw,
        log_start: Some(Offset(0)),
        result: FetchResult::Data { batches },
    };
    core.step(Input::FetchResponse { from: NodeId(1), response: data, now_ms: 0 });
    assert_eq!(core.ready().writes.len(), 2, "both batches go to the write queue");
    core
}

/// A follower made leader while replicated batches still wait for their write starts its epoch at
/// their end. If that write then fails, the log ends at what was written: the new epoch, which
/// starts past it, holds nothing and is forgotten until recovery, and the leader assigns its epoch
/// again at the recovered end (found by `isr_3_many_partitions_small_file_budget`, where a write
/// failed while the replica's log end was past its written end: the invariant check panicked).
#[test]
fn a_write_failing_under_a_new_epoch_that_starts_past_the_written_end_forgets_that_epoch() {
    let mut core = follower_with_two_writes_pending(Offset(0));
    // Elected before the writes are reported: epoch 2 starts at offset 5, past the written end 0.
    core.step(Input::PartitionStateChanged { state: state(2, 2, &[1, 2, 3]), now_ms: 10 });
    assert_eq!(core.role(), RoleKind::Leader);
    let _ = core.ready();
    assert_eq!(core.epochs().latest(), Some(EpochEntry { epoch: LeaderEpoch(2), start_offset: Offset(5) }));
    // The first batch is written, the second fails: the log ends at 2 and epoch 2 is forgotten.
    core.step(Input::WriteFailed { written_up_to: Offset(2), disk_full: false, reason: "EIO".into() });
    assert_eq!(core.epochs().latest(), Some(EpochEntry { epoch: LeaderEpoch(1), start_offset: Offset(0) }));
    let _ = core.ready();
    // Recovery finds the written batch (its cache has epoch 1 only): epoch 2 starts again at 2.
    let recovered = LeaderEpochs::from_entries([EpochEntry { epoch: LeaderEpoch(1), start_offset: Offset(0) }]);
    core.step(Input::Recovered {
        log_start: Offset(0),
        log_end: Offset(2),
        epochs: recovered,
        producers: ProducerStates::new(),
    });
    assert_eq!(core.epochs().latest(), Some(EpochEntry { epoch: LeaderEpoch(2), start_offset: Offset(2) }));
    assert_eq!(core.ready().epoch_assign, vec![(LeaderEpoch(2), Offset(2))]);
}

/// A follower learns its leader's HW up to its own log end, which counts replicated batches still
/// waiting for their write; when that write fails, its HW comes back to what was written
/// (`isr_3_many_partitions_small_file_budget` seeds 40306 and 40388 panicked: HW past the log end).
#[test]
fn a_followers_hw_comes_back_to_the_written_end_when_a_replicated_write_fails() {
    let mut core = follower_with_two_writes_pending(Offset(5));
    assert_eq!(core.high_watermark(), Offset(5), "learned up to the log end, writes pending");
    core.step(Input::WriteFailed { written_up_to: Offset(2), disk_full: false, reason: "EIO".into() });
    assert_eq!(core.high_watermark(), Offset(2));
}

/// Sequence errors are answers to the client, before anything is appended: a gap is
/// `OutOfOrderSequence`, an epoch older than the producer's is `ProducerFenced`, an unknown producer
/// that does not start at sequence 0 is `UnknownProducerId`.
#[test]
fn sequence_errors_reach_the_client_and_append_nothing() {
    let mut core =
        ReplicaCore::new(NodeId(1), config(), state(1, 1, &[1, 2, 3]), opened(Offset(0), LeaderEpochs::new()), 0);
    let _ = core.ready();
    core.step(Input::Produce { request: 1, batch: idempotent_batch(1, 0, 0, 2, "e0"), acks: Acks::Leader });
    assert_eq!(core.ready().writes.len(), 1);
    core.step(Input::Written { up_to: Offset(2) });
    let _ = core.ready();
    // Producer 1 moves to epoch 1, starting again at sequence 0.
    core.step(Input::Produce { request: 2, batch: idempotent_batch(1, 1, 0, 1, "e1"), acks: Acks::Leader });
    assert_eq!(core.ready().writes.len(), 1);
    core.step(Input::Written { up_to: Offset(3) });
    let _ = core.ready();
    let table = core.producer_states().clone();
    let refused = [
        (3, idempotent_batch(1, 1, 5, 1, "gap"), ErrorCode::OutOfOrderSequence),
        (4, idempotent_batch(1, 1, 0, 2, "another size"), ErrorCode::OutOfOrderSequence),
        (5, idempotent_batch(1, 0, 2, 1, "old epoch"), ErrorCode::ProducerFenced),
        (6, idempotent_batch(2, 0, 3, 1, "unknown"), ErrorCode::UnknownProducerId),
    ];
    for (request, batch, expected) in refused {
        core.step(Input::Produce { request, batch, acks: Acks::All });
        let ready = core.ready();
        assert!(ready.writes.is_empty(), "request {request} appended: {ready:?}");
        assert_eq!(ready.replies.len(), 1, "{ready:?}");
        assert_eq!(ready.replies[0].0, request);
        assert_eq!(error_of(Some(&ready.replies[0].1)), Some(expected), "request {request}: {:?}", ready.replies[0]);
    }
    assert_eq!(core.log_end(), Offset(3));
    assert_eq!(core.producer_states(), &table, "refusals change no producer's state");
}

/// Retention (ADR 0019): the shell deletes segments and reports the new log start, which the leader
/// gives in every answer; a follower whose log ends below it is refused with `OffsetOutOfRange`,
/// asks the shell to start its log over at the leader's log start (no fetch meanwhile), and after
/// `LogReset` fetches from there with an empty epoch cache and dedup table.
#[test]
fn retention_moves_the_log_start_and_a_follower_below_it_starts_over() {
    let mut leader = leader_over_old_epochs();
    let (data, hw) = (Offset(20), Offset(20));
    for follower in [2, 3] {
        leader.step(Input::FollowerFetch { request: follower, fetch: fetch(follower, 5, 20, Some(3)), now_ms: 10 });
        let _ = leader.ready();
    }
    assert_eq!(leader.high_watermark(), hw, "both followers hold [0, {data})");
    leader.step(Input::LogStartAdvanced { log_start: Offset(12) });
    assert_eq!(leader.log_start(), Offset(12));
    // A follower at 5 (it was away) is below the log start: refused, with the log start in the answer.
    leader.step(Input::FollowerFetch { request: 9, fetch: fetch(2, 5, 5, Some(1)), now_ms: 20 });
    let ready = leader.ready();
    assert_eq!(error_code(one_result(&ready)), Some(ErrorCode::OffsetOutOfRange), "{:?}", one_result(&ready));
    let (_, refusal) = ready.follower_replies[0].clone();
    assert_eq!(refusal.log_start, Some(Offset(12)));

    // That follower: its log is [0, 5) in epoch 1.
    let log = OpenedLog { log_end: Offset(5), ..opened(Offset(5), epochs(&[(1, 0)])) };
    let mut follower = ReplicaCore::new(NodeId(2), config(), state(1, 5, &[1, 3]), log, 0);
    let (_, first) = follower.ready().fetch.expect("a follower fetches");
    let response = FetchResponse { fetch_id: first.fetch_id, ..refusal };
    follower.step(Input::FetchResponse { from: NodeId(1), response, now_ms: 30 });
    let ready = follower.ready();
    assert_eq!(ready.reset_to, Some(Offset(12)));
    assert!(ready.fetch.is_none(), "no fetch until the reset is done");
    assert_eq!(follower.leader_log_start(), Some(Offset(12)));
    follower.step(Input::Tick { now_ms: 1_000 });
    assert!(follower.ready().fetch.is_none(), "still resetting");
    follower.step(Input::LogReset { to: Offset(12) });
    assert_eq!(
        (follower.log_start(), follower.log_end(), follower.high_watermark()),
        (Offset(12), Offset(12), Offset(12))
    );
    let (_, next) = follower.ready().fetch.expect("fetching again after the reset");
    assert_eq!((next.fetch_offset, next.last_fetched_epoch), (Offset(12), None));

    // A refusal for another reason, or with the follower at or past the log start, is not a reset.
    let mut other =
        ReplicaCore::new(NodeId(3), config(), state(1, 5, &[1, 3]), opened(Offset(15), epochs(&[(1, 0)])), 0);
    let (_, fetch) = other.ready().fetch.expect("a follower fetches");
    let response = FetchResponse {
        fetch_id: fetch.fetch_id,
        leader_epoch: LeaderEpoch(5),
        high_watermark: Offset(20),
        log_start: Some(Offset(12)),
        result: FetchResult::Error { code: ErrorCode::OffsetOutOfRange, message: "past the end".into() },
    };
    other.step(Input::FetchResponse { from: NodeId(1), response, now_ms: 30 });
    assert_eq!(other.ready().reset_to, None);

    // At or past the log start, but with epochs the leader no longer knows: where it diverges is
    // below the leader's log start, so it starts over there too (truncating to it would keep a
    // divergent tail and get the same answer for ever).
    let mut stale =
        ReplicaCore::new(NodeId(3), config(), state(1, 5, &[1, 3]), opened(Offset(15), epochs(&[(1, 0)])), 0);
    let (_, fetch) = stale.ready().fetch.expect("a follower fetches");
    let response = FetchResponse {
        fetch_id: fetch.fetch_id,
        leader_epoch: LeaderEpoch(5),
        high_watermark: Offset(20),
        log_start: Some(Offset(12)),
        result: FetchResult::Diverging { epoch: None, end_offset: Offset(12) },
    };
    stale.step(Input::FetchResponse { from: NodeId(1), response, now_ms: 30 });
    let ready = stale.ready();
    assert_eq!((ready.reset_to, ready.truncate_to), (Some(Offset(12)), None));
    stale.step(Input::LogReset { to: Offset(12) });
    assert_eq!((stale.log_start(), stale.log_end()), (Offset(12), Offset(12)));

    // An empty log that starts past the leader's log start (it was cut to its own start) cannot be
    // truncated back to the leader's: it starts over there (`isr_3_retention` seed 72477).
    let empty = OpenedLog { log_start: Offset(20), ..opened(Offset(20), LeaderEpochs::new()) };
    let mut behind = ReplicaCore::new(NodeId(3), config(), state(1, 5, &[1, 3]), empty, 0);
    let (_, fetch) = behind.ready().fetch.expect("a follower fetches");
    let response = FetchResponse {
        fetch_id: fetch.fetch_id,
        leader_epoch: LeaderEpoch(5),
        high_watermark: Offset(8),
        log_start: Some(Offset(4)),
        result: FetchResult::Diverging { epoch: None, end_offset: Offset(4) },
    };
    behind.step(Input::FetchResponse { from: NodeId(1), response, now_ms: 30 });
    assert_eq!(behind.ready().reset_to, Some(Offset(4)));
    behind.step(Input::LogReset { to: Offset(4) });
    let (_, next) = behind.ready().fetch.expect("fetching from the leader's log start");
    assert_eq!((next.fetch_offset, next.last_fetched_epoch), (Offset(4), None));
}
