//! Table tests for the controller's partition rules (ADR 0012): elections on fencing, controlled
//! shutdown and return, new epochs for a restarted leader, the fenced `ChangeIsr` and
//! `ResignLeadership`.
//!
//! Every row starts from the same cluster: brokers 1-4 registered, topic `t` with one partition whose
//! replicas are `[1, 2, 3]` (broker 4 is not a replica), in the state the row gives (leader, ISR,
//! leader epoch / partition epoch), with the listed brokers fenced or shutting down beforehand. The row
//! applies one command and checks the result and the partition after it. Rejected commands must leave
//! the partition as it was. Every apply also runs `check_invariants` and the epoch checks.

use super::*;

/// A partition's leader-and-ISR state: leader, ISR, leader epoch, partition epoch.
#[derive(Clone, Copy, Debug)]
struct Part {
    leader: Option<u64>,
    isr: &'static [u64],
    leader_epoch: i32,
    partition_epoch: i32,
}

const fn p(leader: Option<u64>, isr: &'static [u64], leader_epoch: i32, partition_epoch: i32) -> Part {
    Part { leader, isr, leader_epoch, partition_epoch }
}

#[derive(Clone, Copy, Debug)]
enum Cmd {
    Fence(u64),
    /// `ControlledShutdown` from the broker's current incarnation.
    Shutdown(u64),
    /// `ControlledShutdown` from an earlier incarnation.
    ShutdownStale(u64),
    Register(u64),
    /// `RegisterBrokerFormat2`: a registration replayed from a format-1 or -2 entry.
    RegisterFormat2(u64),
    Heartbeat(u64),
    /// `ResignLeadership` proposed by `leader` with its leader epoch.
    Resign {
        leader: u64,
        leader_epoch: i32,
    },
    /// `ChangeIsr` proposed by `leader` with its leader epoch and partition epoch.
    Isr {
        leader: u64,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: &'static [u64],
    },
}
use Cmd::*;

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Ok,
    IsrChanged,
    Resigned,
    Refused(IsrChangeRejection),
    /// `InvalidIsr`, whatever the reason text.
    InvalidIsr,
    Error(ErrorCode),
}

struct Row {
    name: &'static str,
    unclean: bool,
    fenced: &'static [u64],
    shutting_down: &'static [u64],
    before: Part,
    command: Cmd,
    outcome: Outcome,
    /// `None`: unchanged.
    after: Option<Part>,
    unclean_elections: u64,
}

const NO: &[u64] = &[];

#[rustfmt::skip]
#[allow(clippy::too_many_arguments)]
fn row(
    name: &'static str, unclean: bool, fenced: &'static [u64], shutting_down: &'static [u64], before: Part,
    command: Cmd, outcome: Outcome, after: Option<Part>, unclean_elections: u64,
) -> Row {
    Row { name, unclean, fenced, shutting_down, before, command, outcome, after, unclean_elections }
}

fn rows() -> Vec<Row> {
    [election_rows(), restart_and_resign_rows(), change_isr_rows()].into_iter().flatten().collect()
}

// Columns of every row:
// name                                                               unclean fenced   shutting  before                                command    outcome  after                                      unclean

#[rustfmt::skip]
fn election_rows() -> Vec<Row> {
    use Outcome::*;
    vec![
        // Fencing a broker (missed heartbeats).
        row("fenced leader: first eligible ISR member in replica order leads", false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Fence(1), Ok, Some(p(Some(2), &[2, 3], 1, 1)), 0),
        row("replica order, not ISR order",                                  false, NO,      NO,      p(Some(1), &[3, 1, 2], 0, 0), Fence(1), Ok, Some(p(Some(2), &[3, 2], 1, 1)), 0),
        row("fenced follower leaves the ISR, the leader stays",              false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Fence(2), Ok, Some(p(Some(1), &[1, 3], 0, 1)), 0),
        row("an eligible replica outside the ISR is skipped",                false, NO,      NO,      p(Some(1), &[1, 3], 0, 1),    Fence(1), Ok, Some(p(Some(3), &[3], 1, 2)), 0),
        row("last ISR member fenced: ISR keeps it, offline",                 false, NO,      NO,      p(Some(1), &[1], 0, 2),       Fence(1), Ok, Some(p(None, &[1], 1, 3)), 0),
        row("unclean on, no eligible ISR member: first eligible replica",    true,  NO,      NO,      p(Some(1), &[1], 0, 2),       Fence(1), Ok, Some(p(Some(2), &[2], 1, 3)), 1),
        row("unclean on skips a fenced replica",                             true,  &[2],    NO,      p(Some(1), &[1], 0, 2),       Fence(1), Ok, Some(p(Some(3), &[3], 1, 3)), 1),
        row("unclean on but an ISR member is eligible: clean",               true,  NO,      NO,      p(Some(1), &[1, 3], 0, 1),    Fence(1), Ok, Some(p(Some(3), &[3], 1, 2)), 0),
        row("unclean on, every replica down: offline",                       true,  &[2, 3], NO,      p(Some(1), &[1], 0, 2),       Fence(1), Ok, Some(p(None, &[1], 1, 3)), 0),
        row("a shutting-down ISR member is not elected",                     false, NO,      &[2],    p(Some(1), &[1, 2, 3], 0, 0), Fence(1), Ok, Some(p(Some(3), &[2, 3], 1, 1)), 0),
        row("fencing a fenced broker again changes nothing",                 false, &[1],    NO,      p(Some(2), &[2, 3], 1, 1),    Fence(1), Ok, None, 0),
        row("fencing a broker that holds no replica changes nothing",        false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Fence(4), Ok, None, 0),
        // Controlled shutdown.
        row("controlled shutdown of the leader moves leadership",            false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Shutdown(1), Ok, Some(p(Some(2), &[2, 3], 1, 1)), 0),
        row("controlled shutdown of a follower shrinks the ISR",             false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Shutdown(3), Ok, Some(p(Some(1), &[1, 2], 0, 1)), 0),
        row("controlled shutdown of the last ISR member: offline",           false, NO,      NO,      p(Some(1), &[1], 0, 2),       Shutdown(1), Ok, Some(p(None, &[1], 1, 3)), 0),
        row("controlled shutdown from an earlier incarnation is refused",    false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), ShutdownStale(1), Error(ErrorCode::InvalidRequest), None, 0),
        // A broker comes back.
        row("offline partition: the last ISR member re-registers and leads", false, &[1],    NO,      p(None, &[1], 1, 3),          Register(1), Ok, Some(p(Some(1), &[1], 2, 4)), 0),
        row("... or its heartbeat unfences it",                              false, &[1],    NO,      p(None, &[1], 1, 3),          Heartbeat(1), Ok, Some(p(Some(1), &[1], 2, 4)), 0),
        row("a shut-down ISR member re-registers and leads",                 false, NO,      &[1],    p(None, &[1], 1, 3),          Register(1), Ok, Some(p(Some(1), &[1], 2, 4)), 0),
        row("a heartbeat does not end a controlled shutdown",                false, NO,      &[1],    p(None, &[1], 1, 3),          Heartbeat(1), Ok, None, 0),
        row("a returning replica outside the ISR does not lead",             false, &[1, 2], NO,      p(None, &[1], 1, 3),          Register(2), Ok, None, 0),
        row("... unless unclean election is on",                             true,  &[1, 2, 3], NO,   p(None, &[1], 1, 3),          Register(2), Ok, Some(p(Some(2), &[2], 2, 4)), 1),
        row("returning does not rejoin the ISR (the leader expands it)",     false, &[1],    NO,      p(Some(2), &[2, 3], 1, 1),    Register(1), Ok, None, 0),
    ]
}

#[rustfmt::skip]
fn restart_and_resign_rows() -> Vec<Row> {
    use Outcome::*;
    vec![
        // A broker registers again without having been fenced (a quick restart): it never leads an
        // epoch it led before it restarted.
        // Its log may have lost committed batches (bit rot recovery cut out): where another eligible
        // ISR member exists it leaves the ISR and leadership moves; it rejoins by catching up.
        row("a restarted leader leaves the ISR; the next member leads",      false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Register(1), Ok, Some(p(Some(2), &[2, 3], 1, 1)), 0),
        row("... as the last ISR member it keeps leading, in a new epoch",   false, NO,      NO,      p(Some(1), &[1], 2, 4),       Register(1), Ok, Some(p(Some(1), &[1], 3, 5)), 0),
        row("... or when no other ISR member is eligible",                   false, &[2],    NO,      p(Some(1), &[1, 2], 2, 4),    Register(1), Ok, Some(p(Some(1), &[1, 2], 3, 5)), 0),
        row("a restarted follower in the ISR leaves it",                     false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Register(2), Ok, Some(p(Some(1), &[1, 3], 0, 1)), 0),
        row("a restarted follower outside the ISR: nothing changes",         false, NO,      NO,      p(Some(1), &[1, 2], 0, 1),    Register(3), Ok, None, 0),
        row("a restarted non-replica: nothing changes",                      false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Register(4), Ok, None, 0),
        row("a format-2 re-registration (replayed) keeps the epochs",        false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), RegisterFormat2(1), Ok, None, 0),
        row("a leader's heartbeat keeps the epochs",                         false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Heartbeat(1), Ok, None, 0),
        // A leader resigns (it lost data it had sent to followers).
        row("resign: the next ISR member in replica order leads; out of ISR", false, NO,     NO,      p(Some(1), &[1, 2, 3], 0, 0), Resign { leader: 1, leader_epoch: 0 }, Resigned, Some(p(Some(2), &[2, 3], 1, 1)), 0),
        row("resign: replica order, not ISR order",                          false, NO,      NO,      p(Some(2), &[3, 1, 2], 1, 1), Resign { leader: 2, leader_epoch: 1 }, Resigned, Some(p(Some(1), &[3, 1], 2, 2)), 0),
        row("resign: an ineligible ISR member is skipped and stays",         false, NO,      &[2],    p(Some(1), &[1, 2, 3], 0, 0), Resign { leader: 1, leader_epoch: 0 }, Resigned, Some(p(Some(3), &[2, 3], 1, 1)), 0),
        row("resign as the last ISR member: keeps leading, new epoch",       false, NO,      NO,      p(Some(1), &[1], 0, 2),       Resign { leader: 1, leader_epoch: 0 }, Resigned, Some(p(Some(1), &[1], 1, 3)), 0),
        row("resign, other ISR members all fenced: offline, waits for them", false, &[3],    NO,      p(Some(1), &[1, 3], 0, 1),    Resign { leader: 1, leader_epoch: 0 }, Resigned, Some(p(None, &[3], 1, 2)), 0),
        row("... or shutting down",                                          false, NO,      &[2],    p(Some(1), &[1, 2], 0, 1),    Resign { leader: 1, leader_epoch: 0 }, Resigned, Some(p(None, &[2], 1, 2)), 0),
        row("resign, unclean on, no eligible member: unclean, even itself",  true,  &[3],    NO,      p(Some(1), &[1, 3], 0, 1),    Resign { leader: 1, leader_epoch: 0 }, Resigned, Some(p(Some(1), &[1], 1, 2)), 1),
        row("resign, unclean on, an eligible member: clean",                 true,  NO,      NO,      p(Some(1), &[1, 3], 0, 1),    Resign { leader: 1, leader_epoch: 0 }, Resigned, Some(p(Some(3), &[3], 1, 2)), 0),
        row("resign from a replaced leader: stale leader epoch",             false, &[1],    NO,      p(Some(2), &[2, 3], 1, 1),    Resign { leader: 1, leader_epoch: 0 }, Refused(IsrChangeRejection::StaleLeaderEpoch), None, 0),
        row("resign sent again after it applied: stale leader epoch",        false, NO,      NO,      p(Some(1), &[1], 1, 3),       Resign { leader: 1, leader_epoch: 0 }, Refused(IsrChangeRejection::StaleLeaderEpoch), None, 0),
        row("resign from a follower at the current epoch: not the leader",   false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Resign { leader: 2, leader_epoch: 0 }, Refused(IsrChangeRejection::NotLeader), None, 0),
        row("resign of an offline partition: not the leader",                false, &[1],    NO,      p(None, &[1], 1, 3),          Resign { leader: 1, leader_epoch: 1 }, Refused(IsrChangeRejection::NotLeader), None, 0),
        row("resign with the leader epoch exhausted: refused",               false, NO,      NO,      p(Some(1), &[1, 2], i32::MAX, 5), Resign { leader: 1, leader_epoch: i32::MAX }, Error(ErrorCode::InvalidRequest), None, 0),
    ]
}

#[rustfmt::skip]
fn change_isr_rows() -> Vec<Row> {
    use Outcome::*;
    vec![
        // ChangeIsr from the partition's leader.
        row("shrink at the current epochs",                                  false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Isr { leader: 1, leader_epoch: 0, partition_epoch: 0, isr: &[1, 2] }, IsrChanged, Some(p(Some(1), &[1, 2], 0, 1)), 0),
        row("a new partition (leader alone) takes its first follower",       false, NO,      NO,      p(Some(1), &[1], 0, 0),       Isr { leader: 1, leader_epoch: 0, partition_epoch: 0, isr: &[1, 2] }, IsrChanged, Some(p(Some(1), &[1, 2], 0, 1)), 0),
        row("... or two at once",                                            false, NO,      NO,      p(Some(1), &[1], 0, 0),       Isr { leader: 1, leader_epoch: 0, partition_epoch: 0, isr: &[1, 2, 3] }, IsrChanged, Some(p(Some(1), &[1, 2, 3], 0, 1)), 0),
        row("an expansion from a stale view: stale partition epoch",         false, NO,      NO,      p(Some(1), &[1, 2], 0, 1),    Isr { leader: 1, leader_epoch: 0, partition_epoch: 0, isr: &[1, 2, 3] }, Refused(IsrChangeRejection::StalePartitionEpoch), None, 0),
        row("an expansion from a stale leader epoch is refused first",       false, NO,      NO,      p(Some(1), &[1, 2], 1, 3),    Isr { leader: 1, leader_epoch: 0, partition_epoch: 3, isr: &[1, 2, 3] }, Refused(IsrChangeRejection::StaleLeaderEpoch), None, 0),
        row("an expansion that drops the leader",                            false, NO,      NO,      p(Some(1), &[1], 0, 0),       Isr { leader: 1, leader_epoch: 0, partition_epoch: 0, isr: &[2, 3] }, InvalidIsr, None, 0),
        row("expand at the current epochs",                                  false, NO,      NO,      p(Some(1), &[1, 2], 0, 1),    Isr { leader: 1, leader_epoch: 0, partition_epoch: 1, isr: &[1, 2, 3] }, IsrChanged, Some(p(Some(1), &[1, 2, 3], 0, 2)), 0),
        row("the same ISR again: accepted, no new epoch",                    false, NO,      NO,      p(Some(1), &[1, 2], 0, 1),    Isr { leader: 1, leader_epoch: 0, partition_epoch: 1, isr: &[1, 2] }, IsrChanged, None, 0),
        row("a fenced member may stay while another leaves",                 false, &[3],    NO,      p(Some(1), &[1, 2, 3], 0, 0), Isr { leader: 1, leader_epoch: 0, partition_epoch: 0, isr: &[1, 3] }, IsrChanged, Some(p(Some(1), &[1, 3], 0, 1)), 0),
        row("a replaced leader: stale leader epoch",                         false, &[1],    NO,      p(Some(2), &[2, 3], 1, 1),    Isr { leader: 1, leader_epoch: 0, partition_epoch: 0, isr: &[1, 2] }, Refused(IsrChangeRejection::StaleLeaderEpoch), None, 0),
        row("a follower at the current leader epoch: not the leader",        false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Isr { leader: 2, leader_epoch: 0, partition_epoch: 0, isr: &[2, 3] }, Refused(IsrChangeRejection::NotLeader), None, 0),
        row("the controller changed the ISR since: stale partition epoch",   false, NO,      NO,      p(Some(1), &[1, 3], 0, 1),    Isr { leader: 1, leader_epoch: 0, partition_epoch: 0, isr: &[1] }, Refused(IsrChangeRejection::StalePartitionEpoch), None, 0),
        row("an offline partition has no leader to propose",                false, &[1],    NO,      p(None, &[1], 1, 3),          Isr { leader: 1, leader_epoch: 1, partition_epoch: 3, isr: &[1] }, Refused(IsrChangeRejection::NotLeader), None, 0),
        row("empty ISR",                                                     false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Isr { leader: 1, leader_epoch: 0, partition_epoch: 0, isr: &[] }, InvalidIsr, None, 0),
        row("duplicate member",                                              false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Isr { leader: 1, leader_epoch: 0, partition_epoch: 0, isr: &[1, 1] }, InvalidIsr, None, 0),
        row("a member that is not a replica",                                false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Isr { leader: 1, leader_epoch: 0, partition_epoch: 0, isr: &[1, 4] }, InvalidIsr, None, 0),
        row("an ISR without the leader",                                     false, NO,      NO,      p(Some(1), &[1, 2, 3], 0, 0), Isr { leader: 1, leader_epoch: 0, partition_epoch: 0, isr: &[2, 3] }, InvalidIsr, None, 0),
        row("a fenced broker cannot join",                                   false, &[3],    NO,      p(Some(1), &[1, 2], 0, 1),    Isr { leader: 1, leader_epoch: 0, partition_epoch: 1, isr: &[1, 2, 3] }, InvalidIsr, Some(p(Some(1), &[1, 2], 0, 2)), 0),
        // ... and the refusal bumps the partition epoch: it fences the leader's re-sent copies and
        // settles the expansion it counts toward its HW (it stalled acks=all after a SIGTERM).
        row("a shutting-down broker cannot join",                            false, NO,      &[3],    p(Some(1), &[1, 2], 0, 1),    Isr { leader: 1, leader_epoch: 0, partition_epoch: 1, isr: &[1, 2, 3] }, InvalidIsr, Some(p(Some(1), &[1, 2], 0, 2)), 0),
    ]
}

fn nodes(ids: &[u64]) -> Vec<NodeId> {
    ids.iter().copied().map(NodeId).collect()
}

/// The cluster of the module doc, with the partition in `row.before`.
fn before_state(row: &Row) -> MetadataState {
    let mut state = MetadataState::new();
    for node_id in 1..=4u64 {
        let register = register(NodeId(node_id), 1, 0);
        assert_eq!(state.apply(node_id, &register), MetaResult::Ok);
    }
    let create = MetaCommand::CreateTopic {
        name: "t".into(),
        partitions: 1,
        replication: 3,
        min_insync_replicas: None,
        unclean_leader_election: row.unclean,
        log: Default::default(),
    };
    assert!(matches!(state.apply(5, &create), MetaResult::TopicCreated { .. }));
    let partition = &mut state.topics.get_mut("t").unwrap().partitions[0];
    assert_eq!(partition.replicas, nodes(&[1, 2, 3]), "the rows assume this assignment");
    partition.leader = row.before.leader.map(NodeId);
    partition.isr = nodes(row.before.isr);
    partition.leader_epoch = LeaderEpoch(row.before.leader_epoch);
    partition.partition_epoch = PartitionEpoch(row.before.partition_epoch);
    for node_id in row.fenced {
        state.brokers.get_mut(&NodeId(*node_id)).unwrap().fenced = true;
    }
    for node_id in row.shutting_down {
        state.brokers.get_mut(&NodeId(*node_id)).unwrap().shutting_down = true;
    }
    state.check_invariants();
    state
}

fn command(state: &MetadataState, cmd: Cmd) -> MetaCommand {
    let registered_index = |node_id: u64| state.broker(NodeId(node_id)).unwrap().registered_index;
    match cmd {
        Fence(node_id) => MetaCommand::FenceBroker { node_id: NodeId(node_id), now_ms: 100 },
        Shutdown(node_id) => {
            MetaCommand::ControlledShutdown { node_id: NodeId(node_id), registered_index: registered_index(node_id) }
        }
        ShutdownStale(node_id) => MetaCommand::ControlledShutdown {
            node_id: NodeId(node_id),
            registered_index: registered_index(node_id) - 1,
        },
        Register(node_id) => register(NodeId(node_id), 2, 200),
        RegisterFormat2(node_id) => {
            MetaCommand::RegisterBrokerFormat2 { node_id: NodeId(node_id), addr: format!("b{node_id}:2"), now_ms: 200 }
        }
        Heartbeat(node_id) => MetaCommand::BrokerHeartbeat { node_id: NodeId(node_id), now_ms: 200 },
        Resign { leader, leader_epoch } => MetaCommand::ResignLeadership {
            topic: "t".into(),
            partition: 0,
            leader: NodeId(leader),
            leader_epoch: LeaderEpoch(leader_epoch),
        },
        Isr { leader, leader_epoch, partition_epoch, isr } => MetaCommand::ChangeIsr {
            topic: "t".into(),
            partition: 0,
            leader: NodeId(leader),
            leader_epoch: LeaderEpoch(leader_epoch),
            partition_epoch: PartitionEpoch(partition_epoch),
            isr: nodes(isr),
        },
    }
}

fn outcome(result: &MetaResult) -> Outcome {
    match result {
        MetaResult::Ok => Outcome::Ok,
        MetaResult::IsrChanged { .. } => Outcome::IsrChanged,
        MetaResult::LeadershipResigned { .. } => Outcome::Resigned,
        MetaResult::IsrChangeRejected { reason: IsrChangeRejection::InvalidIsr { .. }, .. } => Outcome::InvalidIsr,
        MetaResult::IsrChangeRejected { reason, .. } => Outcome::Refused(reason.clone()),
        MetaResult::Error { code, .. } => Outcome::Error(*code),
        other => panic!("unexpected result {other:?}"),
    }
}

#[test]
fn partition_rules_table() {
    let rows = rows();
    let mut failures = Vec::new();
    for row in &rows {
        let mut state = before_state(row);
        let before = state.topic("t").unwrap().partitions[0].clone();
        let command = command(&state, row.command);
        let result = state.apply(10, &command);
        let partition = state.topic("t").unwrap().partitions[0].clone();
        let expected = row.after.unwrap_or(row.before);
        let got = (
            outcome(&result),
            partition.leader,
            partition.isr.clone(),
            partition.leader_epoch,
            partition.partition_epoch,
            partition.unclean_elections,
        );
        let want = (
            row.outcome.clone(),
            expected.leader.map(NodeId),
            nodes(expected.isr),
            LeaderEpoch(expected.leader_epoch),
            PartitionEpoch(expected.partition_epoch),
            row.unclean_elections,
        );
        if got != want {
            failures.push(format!("{}:\n    got  {got:?}\n    want {want:?}\n    result {result:?}", row.name));
        }
        // A refusal reports the partition's state as it is now, so the proposer can catch up.
        if let MetaResult::IsrChangeRejected { leader, leader_epoch, partition_epoch, isr, .. } = &result {
            assert_eq!(
                (leader, leader_epoch, partition_epoch, isr),
                (&partition.leader, &partition.leader_epoch, &partition.partition_epoch, &partition.isr),
                "{}",
                row.name
            );
        }
        if let MetaResult::IsrChanged { leader_epoch, partition_epoch, isr } = &result {
            assert_eq!(
                (leader_epoch, partition_epoch, isr),
                (&partition.leader_epoch, &partition.partition_epoch, &partition.isr),
                "{}",
                row.name
            );
        }
        if let MetaResult::LeadershipResigned { leader, leader_epoch, partition_epoch, isr } = &result {
            assert_eq!(
                (leader, leader_epoch, partition_epoch, isr),
                (&partition.leader, &partition.leader_epoch, &partition.partition_epoch, &partition.isr),
                "{}",
                row.name
            );
        }
        if result.is_rejection() && row.after.is_none() {
            assert_eq!(partition, before, "{}: a refusal changed the partition", row.name);
        }
    }
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
}

#[test]
fn elect_leader_is_replica_order_within_the_isr_then_the_elr_then_unclean() {
    let eligible_except = |down: &'static [u64]| move |node_id: NodeId| !down.contains(&node_id.0);
    let replicas = nodes(&[3, 1, 2]);
    // (ISR, ELR, brokers down, unclean allowed) -> election
    type ElectionRow = (&'static [u64], &'static [u64], &'static [u64], bool, Election);
    let table: &[ElectionRow] = &[
        (&[1, 2, 3], NO, NO, false, Election::Clean(NodeId(3))),
        (&[2, 1], NO, NO, false, Election::Clean(NodeId(1))),
        (&[1, 2, 3], NO, &[3], false, Election::Clean(NodeId(1))),
        (&[2], NO, &[2], false, Election::Offline),
        (&[2], NO, &[2], true, Election::Unclean(NodeId(3))),
        (&[2], NO, &[2, 3], true, Election::Unclean(NodeId(1))),
        (&[2], NO, &[1, 2, 3], true, Election::Offline),
        (&[1, 2], NO, &[3], true, Election::Clean(NodeId(1))),
        // An eligible ISR member wins over the ELR; the ELR over unclean; replica order within it.
        (&[2], &[1], NO, false, Election::Clean(NodeId(2))),
        (&[2], &[1], &[2], false, Election::FromElr(NodeId(1))),
        (&[2], &[1, 3], &[2], true, Election::FromElr(NodeId(3))),
        (&[2], &[1, 3], &[2, 3], false, Election::FromElr(NodeId(1))),
        (&[2], &[1], &[1, 2], true, Election::Unclean(NodeId(3))),
        (&[2], &[1], &[1, 2], false, Election::Offline),
    ];
    for (isr, elr, down, unclean, expected) in table {
        let got = elect_leader(&replicas, &nodes(isr), &nodes(elr), eligible_except(down), *unclean);
        assert_eq!(got, *expected, "isr {isr:?}, elr {elr:?}, down {down:?}, unclean {unclean}");
    }
}

#[test]
fn fencing_moves_every_partition_it_leads_in_one_entry() {
    let mut state = MetadataState::new();
    for node_id in 1..=3u64 {
        let register = register(NodeId(node_id), 1, 0);
        state.apply(node_id, &register);
    }
    for (index, name) in [(4, "a"), (5, "b")] {
        let create = MetaCommand::CreateTopic {
            name: name.into(),
            partitions: 6,
            replication: 2,
            min_insync_replicas: None,
            unclean_leader_election: false,
            log: Default::default(),
        };
        assert!(matches!(state.apply(index, &create), MetaResult::TopicCreated { .. }));
    }
    // The followers caught up (the data path's ISR expansion), indexes 6.. .
    let mut index = 5;
    for command in super::sync_all_replicas_commands(&state) {
        index += 1;
        assert!(matches!(state.apply(index, &command), MetaResult::IsrChanged { .. }));
    }
    let led_by = |state: &MetadataState, node_id: u64| {
        state.topics().flat_map(|t| &t.partitions).filter(|p| p.leader == Some(NodeId(node_id))).count()
    };
    assert!(led_by(&state, 2) > 0);
    assert_eq!(state.apply(index + 1, &MetaCommand::FenceBroker { node_id: NodeId(2), now_ms: 1 }), MetaResult::Ok);
    assert_eq!(led_by(&state, 2), 0);
    for partition in state.topics().flat_map(|t| &t.partitions) {
        // RF 2: the other replica leads unless broker 2 was the last ISR member (never, here).
        assert!(partition.leader.is_some(), "{partition:?}");
        assert!(!partition.isr.contains(&NodeId(2)), "{partition:?}");
    }
    assert_eq!(state.offline_partitions().count(), 0);
    assert_eq!(
        state.under_replicated_partitions().count(),
        state.topics().flat_map(|t| &t.partitions).filter(|p| p.replicas.contains(&NodeId(2))).count()
    );
    // Broker 1 goes too: partitions on {1, 2} keep broker 1 as their last ISR member and go offline.
    assert_eq!(state.apply(index + 2, &MetaCommand::FenceBroker { node_id: NodeId(1), now_ms: 1 }), MetaResult::Ok);
    let offline: Vec<_> = state.offline_partitions().map(|(t, p)| (t.name.clone(), p.clone())).collect();
    assert!(!offline.is_empty());
    for (_, partition) in &offline {
        assert_eq!(partition.isr, [NodeId(1)], "{partition:?}");
        let mut replicas = partition.replicas.clone();
        replicas.sort();
        assert_eq!(replicas, nodes(&[1, 2]));
    }
    // Broker 2 left those ISRs below min ISR 2 (fenced first), so it is their eligible leader
    // replica: it holds every committed offset. It returns and leads them; broker 1 (fenced, it
    // holds them too) takes its place in the ELR.
    for (_, partition) in &offline {
        assert_eq!(partition.elr, [NodeId(2)], "{partition:?}");
    }
    state.apply(index + 3, &register(NodeId(2), 1, 5));
    assert_eq!(state.offline_partitions().count(), 0);
    for (topic, partition) in &offline {
        let now = state.partition(topic, partition.partition).unwrap();
        assert_eq!(now.leader, Some(NodeId(2)), "{now:?}");
        assert_eq!((now.isr.clone(), now.elr.clone()), (nodes(&[2]), nodes(&[1])), "{now:?}");
    }
    state.apply(index + 4, &MetaCommand::BrokerHeartbeat { node_id: NodeId(1), now_ms: 5 });
    assert_eq!(state.offline_partitions().count(), 0);
}

#[test]
fn create_topic_min_insync_replicas() {
    let mut state = MetadataState::new();
    for node_id in 1..=3u64 {
        let register = register(NodeId(node_id), 1, 0);
        state.apply(node_id, &register);
    }
    let mut index = 3;
    let mut create = |state: &mut MetadataState, name: &str, replication, min_isr, unclean| {
        index += 1;
        let command = MetaCommand::CreateTopic {
            name: name.into(),
            partitions: 1,
            replication,
            min_insync_replicas: min_isr,
            unclean_leader_election: unclean,
            log: Default::default(),
        };
        state.apply(index, &command)
    };
    // Defaults: min(2, replication), unclean off.
    for (name, replication, expected) in [("r1", 1, 1), ("r2", 2, 2), ("r3", 3, 2)] {
        assert!(!create(&mut state, name, replication, None, false).is_error());
        let topic = state.topic(name).unwrap();
        assert_eq!((topic.min_insync_replicas, topic.unclean_leader_election), (expected, false), "{name}");
    }
    assert!(!create(&mut state, "m3", 3, Some(3), true).is_error());
    let topic = state.topic("m3").unwrap();
    assert_eq!((topic.min_insync_replicas, topic.unclean_leader_election), (3, true));
    for (replication, min_isr) in [(3, 0), (3, 4), (1, 2)] {
        let result = create(&mut state, "bad", replication, Some(min_isr), false);
        let MetaResult::Error { code, message } = result else { panic!("{result:?}") };
        assert_eq!(code, ErrorCode::InvalidReplication);
        assert_eq!(
            message,
            format!("min insync replicas must be between 1 and the replication factor {replication}, got {min_isr}")
        );
        assert!(state.topic("bad").is_none());
    }
}

#[test]
fn shutting_down_brokers_get_no_new_replicas() {
    let mut state = MetadataState::new();
    for node_id in 1..=3u64 {
        let register = register(NodeId(node_id), 1, 0);
        state.apply(node_id, &register);
    }
    let shutdown = MetaCommand::ControlledShutdown { node_id: NodeId(3), registered_index: 3 };
    assert_eq!(state.apply(4, &shutdown), MetaResult::Ok);
    assert!(state.broker(NodeId(3)).unwrap().is_alive() && !state.broker(NodeId(3)).unwrap().is_eligible());
    let create = |replication| MetaCommand::CreateTopic {
        name: "t".into(),
        partitions: 4,
        replication,
        min_insync_replicas: Some(1),
        unclean_leader_election: false,
        log: Default::default(),
    };
    assert!(state.apply(5, &create(3)).is_error());
    assert!(!state.apply(6, &create(2)).is_error());
    assert!(state.topic("t").unwrap().partitions.iter().all(|p| !p.replicas.contains(&NodeId(3))));
    // A new incarnation is eligible again; an unknown broker cannot shut down.
    state.apply(7, &register(NodeId(3), 1, 1));
    assert!(state.broker(NodeId(3)).unwrap().is_eligible());
    let unknown = MetaCommand::ControlledShutdown { node_id: NodeId(9), registered_index: 0 };
    assert!(matches!(state.apply(8, &unknown), MetaResult::Error { code: ErrorCode::InvalidRequest, .. }));
}

#[test]
fn version_1_commands_and_snapshots_still_decode() {
    // Byte for byte what the version-1 build wrote (JSON payloads of its types).
    let v1_create =
        encode_envelope(COMMAND_MAGIC, 1, br#"{"CreateTopic":{"name":"t","partitions":2,"replication":3}}"#);
    assert_eq!(
        decode_command(&v1_create),
        Ok(MetaCommand::CreateTopic {
            name: "t".into(),
            partitions: 2,
            replication: 3,
            min_insync_replicas: None,
            unclean_leader_election: false,
            // Version 1 kept every record: the create replays as "retain forever" (and `delete`).
            log: LogSettingsChange {
                retention_ms: Some(-1),
                retention_bytes: Some(-1),
                ..LogSettingsChange::default()
            },
        })
    );
    let v1_fence = encode_envelope(COMMAND_MAGIC, 1, br#"{"FenceBroker":{"node_id":2,"now_ms":7}}"#);
    assert_eq!(decode_command(&v1_fence), Ok(MetaCommand::FenceBroker { node_id: NodeId(2), now_ms: 7 }));
    let v1_change_isr =
        encode_envelope(COMMAND_MAGIC, 1, br#"{"ChangeIsr":{"topic":"t","partition":0,"isr":[1],"expected_epoch":0}}"#);
    assert!(matches!(decode_command(&v1_change_isr), Err(MetaStateError::Retired { version: 1, .. })));

    let v1_snapshot = br#"{"applied_index":9,"brokers":{"1":{"node_id":1,"addr":"a:1","fenced":false,"last_heartbeat_ms":0,"registered_index":1},"2":{"node_id":2,"addr":"b:1","fenced":true,"last_heartbeat_ms":0,"registered_index":2},"3":{"node_id":3,"addr":"c:1","fenced":false,"last_heartbeat_ms":0,"registered_index":3}},"topics":{"t":{"name":"t","partitions":[{"partition":0,"replicas":[1,2,3],"leader":1,"leader_epoch":4,"isr":[1,2,3]}],"created_index":5}},"next_producer_id":0,"last_producer_id_block":null}"#;
    let restored = MetadataState::restore(&encode_envelope(SNAPSHOT_MAGIC, 1, v1_snapshot)).unwrap();
    let topic = restored.topic("t").unwrap();
    assert_eq!((topic.min_insync_replicas, topic.unclean_leader_election), (2, false));
    let partition = &topic.partitions[0];
    assert_eq!(
        (partition.leader_epoch, partition.partition_epoch, partition.unclean_elections),
        (LeaderEpoch(4), PartitionEpoch(0), 0)
    );
    assert!(!restored.broker(NodeId(1)).unwrap().shutting_down);
    // The restored state keeps everything and only deletes (log settings came with format 3, the
    // cleanup policy with format 4), snapshots as version 4 and reads back equal.
    assert_eq!(topic.log, LogSettings::default());
    assert_eq!(restored.snapshot()[4], 4);
    assert_eq!(MetadataState::restore(&restored.snapshot()).unwrap(), restored);
}

/// Three brokers, topics `a` and `b` (6 partitions each, RF 2), every follower caught up.
fn synced_cluster() -> MetadataState {
    let mut state = MetadataState::new();
    for node_id in 1..=3u64 {
        let register = register(NodeId(node_id), 1, 0);
        state.apply(node_id, &register);
    }
    for (index, name) in [(4, "a"), (5, "b")] {
        let create = MetaCommand::CreateTopic {
            name: name.into(),
            partitions: 6,
            replication: 2,
            min_insync_replicas: None,
            unclean_leader_election: false,
            log: Default::default(),
        };
        assert!(matches!(state.apply(index, &create), MetaResult::TopicCreated { .. }));
    }
    for command in super::sync_all_replicas_commands(&state) {
        let index = state.applied_index() + 1;
        assert!(matches!(state.apply(index, &command), MetaResult::IsrChanged { .. }));
    }
    state
}

#[test]
fn a_restarted_broker_leaves_every_isr_with_another_member_in_one_entry() {
    let mut state = synced_cluster();
    let before = state.clone();
    let led: Vec<(String, u32)> = state
        .partitions_on(NodeId(2))
        .filter(|(_, p)| p.leader == Some(NodeId(2)))
        .map(|(topic, p)| (topic.name.clone(), p.partition))
        .collect();
    let followed = state.partitions_on(NodeId(2)).filter(|(_, p)| p.leader != Some(NodeId(2))).count();
    assert!(!led.is_empty() && followed > 0);
    let index = state.applied_index() + 1;
    let register = register(NodeId(2), 1, 5);
    assert_eq!(state.apply(index, &register), MetaResult::Ok);
    for topic in state.topics() {
        for partition in &topic.partitions {
            let old = before.partition(&topic.name, partition.partition).unwrap();
            if !old.isr.contains(&NodeId(2)) || old.isr.len() == 1 {
                continue;
            }
            assert!(!partition.isr.contains(&NodeId(2)), "it left the ISR: {partition:?}");
            assert_eq!(partition.partition_epoch.0, old.partition_epoch.0 + 1);
            if led.contains(&(topic.name.clone(), partition.partition)) {
                let leader = partition.leader.expect("another member leads");
                assert!(leader != NodeId(2) && old.isr.contains(&leader), "{partition:?}");
                assert_eq!(partition.leader_epoch.0, old.leader_epoch.0 + 1);
            } else {
                assert_eq!((partition.leader, partition.leader_epoch), (old.leader, old.leader_epoch));
            }
        }
    }
    // Its previous incarnation's ISR change, built on the old epoch, is refused.
    let (name, partition) = &led[0];
    let old = before.partition(name, *partition).unwrap();
    let stale = MetaCommand::ChangeIsr {
        topic: name.clone(),
        partition: *partition,
        leader: NodeId(2),
        leader_epoch: old.leader_epoch,
        partition_epoch: old.partition_epoch,
        isr: vec![NodeId(2)],
    };
    let refused = state.apply(index + 1, &stale);
    assert!(
        matches!(refused, MetaResult::IsrChangeRejected { reason: IsrChangeRejection::StaleLeaderEpoch, .. }),
        "{refused:?}"
    );
}

#[test]
fn resign_leadership_unknown_topic_and_partition() {
    let mut state = synced_cluster();
    let resign = |topic: &str, partition| MetaCommand::ResignLeadership {
        topic: topic.into(),
        partition,
        leader: NodeId(1),
        leader_epoch: LeaderEpoch(0),
    };
    let index = state.applied_index();
    let unknown_topic = state.apply(index + 1, &resign("x", 0));
    assert!(matches!(unknown_topic, MetaResult::Error { code: ErrorCode::UnknownTopic, .. }), "{unknown_topic:?}");
    let unknown_partition = state.apply(index + 2, &resign("a", 6));
    assert!(
        matches!(unknown_partition, MetaResult::Error { code: ErrorCode::UnknownPartition, .. }),
        "{unknown_partition:?}"
    );
}

#[test]
fn format_2_registrations_replay_as_format_2_applied_them() {
    // Byte for byte what the version-2 build wrote.
    let v2_register =
        encode_envelope(COMMAND_MAGIC, 2, br#"{"RegisterBroker":{"node_id":2,"addr":"b2:1","now_ms":5}}"#);
    let decoded = decode_command(&v2_register).unwrap();
    assert_eq!(decoded, MetaCommand::RegisterBrokerFormat2 { node_id: NodeId(2), addr: "b2:1".into(), now_ms: 5 });
    let v1_register =
        encode_envelope(COMMAND_MAGIC, 1, br#"{"RegisterBroker":{"node_id":2,"addr":"b2:1","now_ms":5}}"#);
    assert_eq!(decode_command(&v1_register).unwrap(), decoded);
    // This build writes version 5, which decodes to the command it encoded.
    let current = register(NodeId(2), 1, 5);
    assert_eq!(encode_command(&current)[4], 5);
    assert_eq!(decode_command(&encode_command(&current)), Ok(current));
    // A command version 2 did not have, in a version-2 envelope, is not what a version-2 build wrote.
    for payload in [
        &br#"{"ResignLeadership":{"topic":"t","partition":0,"leader":1,"leader_epoch":0}}"#[..],
        &br#"{"RegisterBrokerFormat2":{"node_id":2,"addr":"b2:1","now_ms":5}}"#[..],
    ] {
        let bytes = encode_envelope(COMMAND_MAGIC, 2, payload);
        assert!(matches!(decode_command(&bytes), Err(MetaStateError::Malformed(_))), "{bytes:?}");
    }

    // Replayed, the old registration keeps the epochs, so the old log's next ChangeIsr, fenced by
    // them, applies as it did when the old build applied it.
    let mut state = synced_cluster();
    let (name, partition) = state
        .partitions_on(NodeId(2))
        .find(|(_, p)| p.leader == Some(NodeId(2)))
        .map(|(topic, p)| (topic.name.clone(), p.clone()))
        .unwrap();
    let index = state.applied_index() + 1;
    assert_eq!(state.apply(index, &decoded), MetaResult::Ok);
    assert_eq!(state.partition(&name, partition.partition), Some(&partition));
    let v2_change_isr = MetaCommand::ChangeIsr {
        topic: name.clone(),
        partition: partition.partition,
        leader: NodeId(2),
        leader_epoch: partition.leader_epoch,
        partition_epoch: partition.partition_epoch,
        isr: vec![NodeId(2)],
    };
    assert!(matches!(state.apply(index + 1, &v2_change_isr), MetaResult::IsrChanged { .. }));
}

/// One step of an ELR script: a command (ISR changes and resignations use the partition's current
/// epochs) and the partition's leader, ISR and ELR after it.
enum Step {
    Isr(&'static [u64]),
    Resign,
    Fence(u64),
    Heartbeat(u64),
    Register(u64),
}

/// Replays `steps` from partition `t/0` (replicas [1, 2, 3], min ISR 2, leader 1, full ISR) and checks
/// leader, ISR and ELR after each (KIP-966's eligible leader replicas).
/// A step and the leader, ISR and ELR after it.
type ElrStep = (Step, Option<u64>, &'static [u64], &'static [u64]);

fn elr_script(unclean: bool, steps: &[ElrStep]) {
    let row = row("elr script", unclean, NO, NO, p(Some(1), &[1, 2, 3], 0, 0), Heartbeat(1), Outcome::Ok, None, 0);
    let mut state = before_state(&row);
    for (number, (step, leader, isr, elr)) in steps.iter().enumerate() {
        let partition = state.partition("t", 0).unwrap().clone();
        let current_leader = partition.leader.map_or(0, |leader| leader.0);
        let cmd = match step {
            Step::Isr(isr) => Isr {
                leader: current_leader,
                leader_epoch: partition.leader_epoch.0,
                partition_epoch: partition.partition_epoch.0,
                isr,
            },
            Step::Resign => Resign { leader: current_leader, leader_epoch: partition.leader_epoch.0 },
            Step::Fence(node_id) => Fence(*node_id),
            Step::Heartbeat(node_id) => Heartbeat(*node_id),
            Step::Register(node_id) => Register(*node_id),
        };
        let index = state.applied_index() + 1;
        let result = state.apply(index, &command(&state, cmd));
        assert!(!result.is_error() && !result.is_rejection(), "step {number}: {result:?}");
        let after = state.partition("t", 0).unwrap();
        let got = (after.leader.map(|leader| leader.0), nodes_of(&after.isr), nodes_of(&after.elr));
        assert_eq!(got, (*leader, isr.to_vec(), elr.to_vec()), "step {number} ({cmd:?})");
    }
}

fn nodes_of(list: &[NodeId]) -> Vec<u64> {
    list.iter().map(|node_id| node_id.0).collect()
}

#[test]
fn the_elr_keeps_members_that_left_an_isr_below_min_and_leads_when_no_isr_member_can() {
    use Step::*;
    // A shrink to the minimum keeps no ELR; below it, the member that left joins it. The last ISR
    // member resigning (it lost committed data) hands the ISR to the ELR.
    elr_script(
        false,
        &[(Isr(&[1, 2]), Some(1), &[1, 2], &[]), (Isr(&[1]), Some(1), &[1], &[2]), (Resign, Some(2), &[2], &[])],
    );
    // The same, with the ELR member down: offline until it returns; the resigner stays out.
    elr_script(
        false,
        &[
            (Isr(&[1, 2]), Some(1), &[1, 2], &[]),
            (Isr(&[1]), Some(1), &[1], &[2]),
            (Fence(2), Some(1), &[1], &[2]),
            (Resign, None, &[2], &[]),
            (Heartbeat(1), None, &[2], &[]),
            (Heartbeat(2), Some(2), &[2], &[]),
        ],
    );
    // The last ISR member fenced: an eligible ELR member leads as the ISR, and the fenced one takes
    // its place in the ELR (it holds every committed offset too); the ISR back at the minimum
    // empties the ELR.
    elr_script(
        false,
        &[
            (Isr(&[1, 2]), Some(1), &[1, 2], &[]),
            (Isr(&[1]), Some(1), &[1], &[2]),
            (Fence(1), Some(2), &[2], &[1]),
            (Heartbeat(1), Some(2), &[2], &[1]),
            (Isr(&[2, 1]), Some(2), &[2, 1], &[]),
        ],
    );
    // Fencing shrinks below the minimum too; a member rejoining leaves the ELR, and the ISR back at
    // the minimum empties it.
    elr_script(
        false,
        &[
            (Fence(3), Some(1), &[1, 2], &[]),
            (Fence(2), Some(1), &[1], &[2]),
            (Register(3), Some(1), &[1], &[2]),
            (Isr(&[1, 3]), Some(1), &[1, 3], &[]),
        ],
    );
    // Several members in the ELR, in the order they left; the resigner never joins it.
    elr_script(
        false,
        &[
            (Isr(&[1, 2]), Some(1), &[1, 2], &[]),
            (Fence(2), Some(1), &[1], &[2]),
            (Resign, None, &[2], &[]),
            (Heartbeat(2), Some(2), &[2], &[]),
            (Isr(&[2, 3]), Some(2), &[2, 3], &[]),
        ],
    );
    // A restarted member leaving the ISR below the minimum joins the ELR (its own open tells it if
    // it lost committed data; then it resigns when elected).
    elr_script(false, &[(Isr(&[1, 2]), Some(1), &[1, 2], &[]), (Register(2), Some(1), &[1], &[2])]);
    // Unclean election only when neither ISR nor ELR has an eligible member; it empties the ELR.
    elr_script(
        true,
        &[
            (Isr(&[1, 2]), Some(1), &[1, 2], &[]),
            (Isr(&[1]), Some(1), &[1], &[2]),
            (Fence(2), Some(1), &[1], &[2]),
            (Fence(1), Some(3), &[3], &[]),
        ],
    );
}

/// A registration of `node_id` at `b{node_id}:{port}`, without a Kafka listener.
fn register(node_id: NodeId, port: u16, now_ms: i64) -> MetaCommand {
    MetaCommand::RegisterBroker { node_id, addr: format!("b{node_id}:{port}"), kafka_addr: String::new(), now_ms }
}
