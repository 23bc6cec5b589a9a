//! Property tests for the queue history format and the queue checker.
//!
//! A simulated correct queue (several processes sending to and polling several partitions, with definite
//! failures, indeterminate outcomes, reassignments and crashes, then a final read of everything) produces
//! histories the checker must find clean. Each mutation of such a history then plants one known anomaly,
//! and the checker must report exactly that anomaly at the planted place. The same histories round-trip
//! through the JSON Lines text with an unchanged fingerprint, and no input makes the decoder or the
//! checker panic.

use std::collections::{BTreeMap, BTreeSet};

use keel_model::history::{
    Event, EventKind, History, Offset, Op, OpIndex, Partition, PendingPoll, PendingSend, PollReads, ProcessId, Value,
};
use keel_model::queue_checker::{check, check_with, CheckOptions, G1aReason, LostReadReason};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::FileFailurePersistence;

/// Failing seeds go to the workspace's `proptest-regressions/`, which is committed.
const REGRESSIONS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/queue_history_props.txt");

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS_PATH))),
        ..ProptestConfig::default()
    }
}

#[derive(Clone, Debug)]
struct Step {
    process_idx: usize,
    choice: u8,
    arg: u8,
}

#[derive(Clone, Debug)]
struct Scenario {
    partitions_n: usize,
    processes_n: usize,
    steps: Vec<Step>,
    /// Prepended to every partition name and value, to exercise JSON escaping.
    name_prefix: String,
}

fn scenario(name_prefix: impl Strategy<Value = String>) -> impl Strategy<Value = Scenario> {
    let step =
        (0usize..8, any::<u8>(), any::<u8>()).prop_map(|(process_idx, choice, arg)| Step { process_idx, choice, arg });
    (1usize..=3, 1usize..=4, proptest::collection::vec(step, 0..120), name_prefix).prop_map(
        |(partitions_n, processes_n, steps, name_prefix)| Scenario { partitions_n, processes_n, steps, name_prefix },
    )
}

/// How many sends one simulated process keeps in flight at most, like the producer's batches in flight per
/// partition.
const SENDS_IN_FLIGHT_MAX: usize = 5;

/// Whether a simulated send is in its partition's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Landing {
    /// Not yet; it may still be appended.
    NotYet,
    Appended(Offset),
    /// Never: it failed, or a send of its process invoked after it was appended to its partition first.
    Never,
}

/// A send the simulated queue is not done with: in flight (`pending` is `Some`), or completed `info` and
/// possibly still on its way to the log (a retry the client gave up waiting for).
struct SimSend {
    pending: Option<PendingSend>,
    invoke: OpIndex,
    value: Value,
    partition_idx: usize,
    landing: Landing,
}

#[derive(Default)]
struct SimProcess {
    poll: Option<PendingPoll>,
    /// The sends it is not done with, in invoke order.
    sends: Vec<SimSend>,
    /// Assigned partition index -> the consumer's next offset.
    positions: BTreeMap<usize, usize>,
}

impl SimProcess {
    fn in_flight(&self) -> usize {
        self.sends.iter().filter(|send| send.pending.is_some()).count()
    }

    /// Appends send `send_idx`, which must not have landed, as an idempotent producer does: in send order,
    /// so the process's earlier sends to that partition that have not landed never will.
    fn append(&mut self, send_idx: usize, logs: &mut [Vec<Value>]) -> Offset {
        let partition_idx = self.sends[send_idx].partition_idx;
        assert_eq!(self.sends[send_idx].landing, Landing::NotYet);
        for earlier in &mut self.sends[..send_idx] {
            if earlier.partition_idx == partition_idx && earlier.landing == Landing::NotYet {
                earlier.landing = Landing::Never;
            }
        }
        let log = &mut logs[partition_idx];
        let offset = Offset(log.len() as u64);
        log.push(self.sends[send_idx].value.clone());
        self.sends[send_idx].landing = Landing::Appended(offset);
        offset
    }

    /// Completes send `send_idx` (which is in flight) the way `outcome` picks, consistently with its landing.
    fn complete(&mut self, send_idx: usize, outcome: u8, h: &mut History, time_ns: u64, logs: &mut [Vec<Value>]) {
        let landing = self.sends[send_idx].landing;
        let landing = match (landing, outcome % 16) {
            (Landing::NotYet, 0..=7) => Landing::Appended(self.append(send_idx, logs)),
            (landing, _) => landing,
        };
        let pending = self.sends[send_idx].pending.take().expect("completing a send in flight");
        match (landing, outcome % 16) {
            (Landing::Appended(offset), 0..=5 | 12..=13) => {
                h.send_ok(pending, time_ns, offset);
            }
            (Landing::Appended(_), 6..=7 | 14) => {
                h.send_ok(pending, time_ns, None);
            }
            (Landing::NotYet | Landing::Never, 8..=9) | (Landing::Never, 10..=11) => {
                self.sends[send_idx].landing = Landing::Never;
                h.send_fail(pending, time_ns);
            }
            // Unknown outcome: a send that has not landed may still land later.
            _ => {
                h.send_info(pending, time_ns);
            }
        }
        self.sends.retain(|send| send.pending.is_some() || send.landing == Landing::NotYet);
    }
}

/// A correct queue driven by `scenario`, recorded into a history. Producers are idempotent and pipeline:
/// a process keeps up to [`SENDS_IN_FLIGHT_MAX`] sends in flight, which the queue appends in send order
/// (some never, some after their `info`) and which complete in any order; a process polls, is assigned
/// partitions or crashes only with no send in flight. Returns the history; its last event is the final poll
/// that read every partition from offset 0, by a process that polled nothing else.
fn simulate(scenario: &Scenario) -> History {
    let partitions: Vec<Partition> =
        (0..scenario.partitions_n).map(|idx| Partition(format!("{}t/{idx}", scenario.name_prefix))).collect();
    let mut logs: Vec<Vec<Value>> = vec![Vec::new(); scenario.partitions_n];
    let mut processes: Vec<SimProcess> = (0..scenario.processes_n).map(|_| SimProcess::default()).collect();
    let mut h = History::new();
    let mut time_ns = 0u64;
    let mut values_n = 0u64;

    for step in &scenario.steps {
        time_ns += 1_000;
        let process_idx = step.process_idx % scenario.processes_n;
        let process = ProcessId(process_idx as u64);
        let sim = &mut processes[process_idx];
        if let Some(pending) = sim.poll.take() {
            match step.choice % 6 {
                0..=3 => {
                    let mut reads = PollReads::new();
                    for (partition_idx, position) in sim.positions.iter_mut() {
                        let log = &logs[*partition_idx];
                        let end = log.len().min(*position + usize::from(step.arg % 4));
                        let records: Vec<(Offset, Value)> =
                            (*position..end).map(|offset| (Offset(offset as u64), log[offset].clone())).collect();
                        *position = end;
                        if !records.is_empty() {
                            reads.insert(partitions[*partition_idx].clone(), records);
                        }
                    }
                    h.poll_ok(pending, time_ns, reads);
                }
                4 => {
                    h.poll_fail(pending, time_ns);
                }
                _ => {
                    // The client consumed records but the poll's outcome never reached the workload.
                    for (partition_idx, position) in sim.positions.iter_mut() {
                        *position = logs[*partition_idx].len().min(*position + usize::from(step.arg % 3));
                    }
                    h.poll_info(pending, time_ns);
                }
            }
            continue;
        }
        let in_flight = sim.in_flight();
        match step.choice % 16 {
            0..=4 if in_flight < SENDS_IN_FLIGHT_MAX => {
                let partition_idx = usize::from(step.arg) % scenario.partitions_n;
                let value = Value(format!("{}{process_idx}-{values_n}", scenario.name_prefix));
                values_n += 1;
                let pending = h.invoke_send(process, time_ns, &partitions[partition_idx], value.clone());
                let invoke = pending.invoke_index();
                sim.sends.push(SimSend {
                    pending: Some(pending),
                    invoke,
                    value,
                    partition_idx,
                    landing: Landing::NotYet,
                });
            }
            5..=7 if in_flight == 0 => sim.poll = Some(h.invoke_poll(process, time_ns)),
            8 if in_flight == 0 => {
                sim.positions.clear();
                for (partition_idx, log) in logs.iter().enumerate() {
                    if step.arg & (1 << partition_idx) != 0 {
                        let start = usize::from(step.arg >> 3) % (log.len() + 1);
                        sim.positions.insert(partition_idx, start);
                    }
                }
                h.assign(process, time_ns, sim.positions.keys().map(|idx| &partitions[*idx]));
            }
            9 if in_flight == 0 => {
                sim.positions.clear();
                h.crash(process, time_ns);
            }
            10..=11 => {
                // The queue appends one of the process's sends that has not landed, in flight or not.
                let not_yet: Vec<usize> =
                    (0..sim.sends.len()).filter(|idx| sim.sends[*idx].landing == Landing::NotYet).collect();
                if let Some(send_idx) = not_yet.get(usize::from(step.arg) % not_yet.len().max(1)) {
                    sim.append(*send_idx, &mut logs);
                    sim.sends.retain(|send| send.pending.is_some() || send.landing == Landing::NotYet);
                }
            }
            _ => {
                let in_flight: Vec<usize> =
                    (0..sim.sends.len()).filter(|idx| sim.sends[*idx].pending.is_some()).collect();
                if let Some(send_idx) = in_flight.get(usize::from(step.arg) % in_flight.len().max(1)) {
                    sim.complete(*send_idx, step.arg / 16 + step.choice / 16, &mut h, time_ns, &mut logs);
                }
            }
        }
    }

    // Operations still outstanding stay so; a send in flight, or one that ended info, may or may not reach
    // the log (in send order).
    for sim in &mut processes {
        for send_idx in 0..sim.sends.len() {
            if sim.sends[send_idx].landing == Landing::NotYet && sim.sends[send_idx].invoke.0 % 2 == 0 {
                sim.append(send_idx, &mut logs);
            }
        }
    }

    // A final writer guarantees every partition has two acked sends by one process and one failed send,
    // so every mutation below has something to work on.
    let writer = ProcessId(scenario.processes_n as u64);
    for (partition_idx, partition) in partitions.iter().enumerate() {
        for name in ["final-a", "final-b", "final-fail"] {
            time_ns += 1_000;
            let value = format!("{}{name}-{partition_idx}", scenario.name_prefix);
            let pending = h.invoke_send(writer, time_ns, partition, value);
            time_ns += 1_000;
            if name == "final-fail" {
                h.send_fail(pending, time_ns);
            } else {
                let offset = Offset(logs[partition_idx].len() as u64);
                logs[partition_idx].push(pending.value().clone());
                h.send_ok(pending, time_ns, offset);
            }
        }
    }

    let reader = ProcessId(scenario.processes_n as u64 + 1);
    time_ns += 1_000;
    h.assign(reader, time_ns, &partitions);
    let pending = h.invoke_poll(reader, time_ns);
    let mut reads = PollReads::new();
    for (partition, log) in partitions.iter().zip(&logs) {
        reads.insert(
            partition.clone(),
            log.iter().enumerate().map(|(offset, value)| (Offset(offset as u64), value.clone())).collect(),
        );
    }
    h.poll_ok(pending, time_ns + 1_000, reads);
    h
}

fn final_reads(events: &mut [Event]) -> &mut PollReads {
    match events.last_mut().map(|event| &mut event.op) {
        Some(Op::Poll { reads: Some(reads) }) => reads,
        other => panic!("the simulated history ends with the final poll, not {other:?}"),
    }
}

fn final_poll_index(events: &[Event]) -> OpIndex {
    OpIndex(events.len() as u64 - 1)
}

/// Every send acknowledged at an offset: (partition, offset, value).
fn acked(events: &[Event]) -> Vec<(Partition, Offset, Value)> {
    events
        .iter()
        .filter_map(|event| match (&event.op, event.kind) {
            (Op::Send { partition, value, offset: Some(offset) }, EventKind::Ok) => {
                Some((partition.clone(), *offset, value.clone()))
            }
            _ => None,
        })
        .collect()
}

fn rebuild(events: Vec<Event>) -> History {
    History::from_events(events).expect("mutations keep the history well-formed")
}

const EXACTLY_ONCE: CheckOptions = CheckOptions { exactly_once: true, compaction_keys: None };

/// Two sends by one process to one partition, with no crash of the process between their invokes, adjacent
/// in invoke order among the sends the final poll read: `((earlier invoke, value), (later invoke, value))`.
fn adjacent_logged_sends(events: &[Event]) -> Vec<((OpIndex, Value), (OpIndex, Value))> {
    let Some(Op::Poll { reads: Some(final_reads) }) = events.last().map(|event| &event.op) else {
        panic!("the simulated history ends with the final poll");
    };
    let logged: BTreeSet<(&Partition, &Value)> = final_reads
        .iter()
        .flat_map(|(partition, records)| records.iter().map(move |(_, value)| (partition, value)))
        .collect();
    let mut incarnation: BTreeMap<ProcessId, u64> = BTreeMap::new();
    let mut last: BTreeMap<(ProcessId, u64, &Partition), (OpIndex, Value)> = BTreeMap::new();
    let mut pairs = Vec::new();
    for event in events {
        match (&event.op, event.kind) {
            (Op::Crash, _) => *incarnation.entry(event.process).or_default() += 1,
            (Op::Send { partition, value, .. }, EventKind::Invoke) if logged.contains(&(partition, value)) => {
                let key = (event.process, incarnation.get(&event.process).copied().unwrap_or(0), partition);
                if let Some(earlier) = last.insert(key, (event.index, value.clone())) {
                    pairs.push((earlier, (event.index, value.clone())));
                }
            }
            _ => {}
        }
    }
    pairs
}

/// How often each process had more than one send in flight: counts the send invokes made while another send
/// of the same process was outstanding.
fn overlapping_send_invokes(events: &[Event]) -> usize {
    let mut in_flight: BTreeMap<ProcessId, usize> = BTreeMap::new();
    let mut overlapping = 0;
    for event in events {
        if let Op::Send { .. } = event.op {
            let count = in_flight.entry(event.process).or_default();
            if event.kind == EventKind::Invoke {
                overlapping += usize::from(*count > 0);
                *count += 1;
            } else {
                *count -= 1;
            }
        }
    }
    overlapping
}

#[test]
fn the_generator_pipelines_sends_and_lands_info_sends() {
    // The exactly-once properties below mean little unless the correct queue overlaps one process's sends
    // and lands sends that ended info; check a fixed sample of scenarios does both.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut overlapping, mut info_landed) = (0, 0);
    for _ in 0..64 {
        let scenario = scenario(Just(String::new())).new_tree(&mut runner).unwrap().current();
        let history = simulate(&scenario);
        overlapping += overlapping_send_invokes(history.events());
        let events = history.events();
        let read: BTreeSet<&Value> = match &events.last().unwrap().op {
            Op::Poll { reads: Some(reads) } => reads.values().flatten().map(|(_, value)| value).collect(),
            _ => unreachable!(),
        };
        info_landed += events
            .iter()
            .filter(|event| event.kind == EventKind::Info)
            .filter(|event| matches!(&event.op, Op::Send { value, .. } if read.contains(value)))
            .count();
    }
    assert!(overlapping > 200, "{overlapping} overlapping send invokes in 64 scenarios");
    assert!(info_landed > 50, "{info_landed} info sends landed in 64 scenarios");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn correct_queue_histories_are_clean(scenario in scenario(Just(String::new()))) {
        let history = simulate(&scenario);
        prop_assert_eq!(history.validate(), Ok(()));
        let report = check(&history);
        prop_assert!(report.is_valid(), "{}", report);
        prop_assert_eq!(report.anomaly_count(), 0);
        prop_assert_eq!(check(&history), report, "the checker is deterministic");
        // The simulated producers are idempotent, so the history is exactly-once too.
        let report = check_with(&history, EXACTLY_ONCE);
        prop_assert!(report.is_valid(), "{}", report);
        prop_assert_eq!(report.anomaly_count(), 0);
    }

    #[test]
    fn swapping_two_sends_of_one_process_in_the_log_is_a_reordered_send(scenario in scenario(Just(String::new())), pick in any::<usize>()) {
        // The log holds the later send where the earlier one was and the other way round: every read and
        // every ack of either value moves to the other's offset.
        let mut events = simulate(&scenario).into_events();
        let pairs = adjacent_logged_sends(&events);
        prop_assert!(!pairs.is_empty(), "the final writer sends twice to every partition");
        let ((earlier_invoke, earlier), (later_invoke, later)) = pairs[pick % pairs.len()].clone();
        let offset_in_final_read = |events: &mut [Event], value: &Value| {
            final_reads(events).values().flatten().find(|(_, read)| read == value).map(|(offset, _)| *offset).unwrap()
        };
        let (earlier_offset, later_offset) =
            (offset_in_final_read(&mut events, &earlier), offset_in_final_read(&mut events, &later));
        prop_assert!(earlier_offset < later_offset);
        for event in &mut events {
            match &mut event.op {
                Op::Poll { reads: Some(reads) } => {
                    for (_, value) in reads.values_mut().flatten() {
                        if *value == earlier {
                            *value = later.clone();
                        } else if *value == later {
                            *value = earlier.clone();
                        }
                    }
                }
                Op::Send { value, offset: Some(offset), .. } => {
                    *offset = if *value == earlier { later_offset } else if *value == later { earlier_offset } else { *offset };
                }
                _ => {}
            }
        }
        let history = rebuild(events);
        prop_assert!(check(&history).reordered_sends.is_empty(), "only the exactly-once mode looks for it");
        let report = check_with(&history, EXACTLY_ONCE);
        prop_assert!(!report.is_valid(), "{}", report);
        let found: Vec<(OpIndex, Offset, OpIndex, Offset)> = report
            .reordered_sends
            .iter()
            .map(|r| (r.earlier.invoke, r.earlier.offset, r.later.invoke, r.later.offset))
            .collect();
        prop_assert_eq!(found, vec![(earlier_invoke, later_offset, later_invoke, earlier_offset)], "{}", report);
    }

    #[test]
    fn dropping_a_read_value_is_a_lost_or_unseen_write(scenario in scenario(Just(String::new())), pick in any::<usize>()) {
        let mut events = simulate(&scenario).into_events();
        let acked = acked(&events);
        let (partition, offset, value) = acked[pick % acked.len()].clone();
        for event in &mut events {
            if let Op::Poll { reads: Some(reads) } = &mut event.op {
                for records in reads.values_mut() {
                    records.retain(|(_, read)| *read != value);
                }
            }
        }
        let read_past = final_reads(&mut events).get(&partition).is_some_and(|records| records.iter().any(|(o, _)| *o > offset));
        let report = check(&rebuild(events));
        prop_assert!(report.lost_or_unseen().iter().any(|w| w.value == value && w.offset == offset), "{}", report);
        if read_past {
            prop_assert!(report.lost_writes.iter().any(|w| w.value == value && w.partition == partition), "{}", report);
        } else {
            prop_assert!(report.unseen.iter().any(|w| w.value == value), "{}", report);
        }
        prop_assert!(!report.is_valid());
    }

    #[test]
    fn reading_a_value_at_a_second_offset_is_a_duplicate(scenario in scenario(Just(String::new())), pick in any::<usize>()) {
        let mut events = simulate(&scenario).into_events();
        let reads = final_reads(&mut events);
        let all: Vec<(Partition, Value)> =
            reads.iter().flat_map(|(p, records)| records.iter().map(move |(_, v)| (p.clone(), v.clone()))).collect();
        let (partition, value) = all[pick % all.len()].clone();
        let records = reads.get_mut(&partition).unwrap();
        let next_offset = Offset(records.last().unwrap().0 .0 + 1);
        records.push((next_offset, value.clone()));
        let report = check(&rebuild(events));
        prop_assert!(
            report.duplicates.iter().any(|d| d.value == value && d.positions.iter().any(|(_, o, _)| *o == next_offset)),
            "{}", report
        );
    }

    #[test]
    fn swapping_two_acked_values_is_inconsistent_offsets(scenario in scenario(Just(String::new())), pick in any::<usize>()) {
        let mut events = simulate(&scenario).into_events();
        let acked = acked(&events);
        let reads = final_reads(&mut events);
        let partition = reads.keys().nth(pick % reads.len()).unwrap().clone();
        let records = reads.get_mut(&partition).unwrap();
        let acked_positions: Vec<usize> = (0..records.len())
            .filter(|idx| acked.iter().any(|(p, o, v)| *p == partition && (*o, v) == (records[*idx].0, &records[*idx].1)))
            .collect();
        prop_assert!(acked_positions.len() >= 2, "the final writer acks two sends per partition");
        let (first, second) = (acked_positions[pick % acked_positions.len()], acked_positions[(pick / 7 + 1) % acked_positions.len()]);
        let (first, second) = if first == second { (acked_positions[0], acked_positions[1]) } else { (first, second) };
        let first_value = records[first].1.clone();
        records[first].1 = records[second].1.clone();
        records[second].1 = first_value;
        let (first_offset, second_offset) = (records[first].0, records[second].0);
        let report = check(&rebuild(events));
        for offset in [first_offset, second_offset] {
            prop_assert!(
                report.inconsistent_offsets.iter().any(|i| i.partition == partition && i.offset == offset),
                "offset {}: {}", offset, report
            );
        }
    }

    #[test]
    fn reading_a_phantom_or_failed_value_is_g1a(scenario in scenario(Just(String::new())), pick in any::<usize>()) {
        let history = simulate(&scenario);
        let failed: Vec<Value> = history
            .events()
            .iter()
            .filter(|event| event.kind == EventKind::Fail)
            .filter_map(|event| match &event.op { Op::Send { value, .. } => Some(value.clone()), _ => None })
            .collect();
        let failed_value = failed[pick % failed.len()].clone();
        let phantom = Value::from("phantom");
        let mut events = history.into_events();
        let reads = final_reads(&mut events);
        let partition = reads.keys().nth(pick % reads.len()).unwrap().clone();
        let records = reads.get_mut(&partition).unwrap();
        let next_offset = records.last().map_or(0, |(offset, _)| offset.0 + 1);
        records.push((Offset(next_offset), phantom.clone()));
        records.push((Offset(next_offset + 1), failed_value.clone()));
        let report = check(&rebuild(events));
        prop_assert!(report.g1a.iter().any(|g| g.value == phantom && g.reason == G1aReason::NeverSent), "{}", report);
        prop_assert!(
            report.g1a.iter().any(|g| g.value == failed_value && matches!(g.reason, G1aReason::SendFailed { .. })),
            "{}", report
        );
    }

    #[test]
    fn reordering_a_poll_is_a_nonmonotonic_poll(scenario in scenario(Just(String::new())), pick in any::<usize>()) {
        let mut events = simulate(&scenario).into_events();
        let poll = final_poll_index(&events);
        let reads = final_reads(&mut events);
        let partition = reads.keys().nth(pick % reads.len()).unwrap().clone();
        let records = reads.get_mut(&partition).unwrap();
        let at = pick % (records.len() - 1);
        records.swap(at, at + 1);
        let report = check(&rebuild(events));
        prop_assert!(
            report.nonmonotonic_polls.iter().any(|n| n.poll == poll && n.partition == partition),
            "{}", report
        );
    }

    #[test]
    fn swapping_one_process_acked_offsets_is_a_nonmonotonic_send(scenario in scenario(Just(String::new())), pick in any::<usize>()) {
        let mut events = simulate(&scenario).into_events();
        // The final writer's two acks to one partition, in order.
        let writer = ProcessId(scenario.processes_n as u64);
        let partition_idx = pick % scenario.partitions_n;
        let suffix = format!("-{partition_idx}");
        let ack_positions: Vec<usize> = (0..events.len())
            .filter(|idx| {
                let event = &events[*idx];
                event.process == writer
                    && matches!(&event.op, Op::Send { value, offset: Some(_), .. } if value.0.ends_with(&suffix))
            })
            .collect();
        prop_assert_eq!(ack_positions.len(), 2);
        let offset_of = |event: &Event| match &event.op { Op::Send { offset: Some(offset), .. } => *offset, _ => unreachable!() };
        let (first_offset, second_offset) = (offset_of(&events[ack_positions[0]]), offset_of(&events[ack_positions[1]]));
        for (position, offset) in [(ack_positions[0], second_offset), (ack_positions[1], first_offset)] {
            if let Op::Send { offset: ack, .. } = &mut events[position].op {
                *ack = Some(offset);
            }
        }
        let report = check(&rebuild(events));
        prop_assert!(
            report.nonmonotonic_sends.iter().any(|n| n.process == writer && n.send_ok == OpIndex(ack_positions[1] as u64)),
            "{}", report
        );
    }

    #[test]
    fn a_later_send_acked_below_read_offsets_makes_them_lost_reads(scenario in scenario(Just(String::new())), pick in any::<usize>()) {
        // As if a crash dropped a partition's records after they were read and a new send took offset 0.
        let mut history = simulate(&scenario);
        let final_poll = final_poll_index(history.events());
        let mut events = history.clone().into_events();
        let reads = final_reads(&mut events).clone();
        let (partition, records) = reads.iter().nth(pick % reads.len()).unwrap();
        let time_ns = history.events().last().unwrap().time_ns + 1_000;
        let late = ProcessId(scenario.processes_n as u64 + 2);
        let pending = history.invoke_send(late, time_ns, partition, "late");
        let ack = history.send_ok(pending, time_ns + 1_000, Offset(0));
        let report = check(&history);
        prop_assert!(!report.is_valid_ignoring_unseen());
        for (offset, _) in records {
            let lost = report.lost_reads.iter().find(|l| l.partition == *partition && l.offset == *offset);
            prop_assert!(lost.is_some(), "offset {}: {}", offset, report);
            let lost = lost.unwrap();
            prop_assert!(lost.read_by <= final_poll);
            let expected = if offset.0 == 0 {
                LostReadReason::Overwritten { value: Value::from("late"), by: ack }
            } else {
                LostReadReason::Truncated { offset: Offset(0), value: Value::from("late"), send_ok: ack }
            };
            prop_assert_eq!(&lost.reason, &expected);
        }
        prop_assert!(report.lost_reads.iter().all(|l| l.partition == *partition), "{}", report);
    }

    #[test]
    fn histories_round_trip_through_jsonl(scenario in scenario("(?s).{0,6}")) {
        let history = simulate(&scenario);
        let text = history.to_jsonl();
        let parsed = History::from_jsonl(&text);
        prop_assert_eq!(parsed.as_ref(), Ok(&history));
        let parsed = parsed.unwrap();
        prop_assert_eq!(&parsed.to_jsonl(), &text);
        prop_assert_eq!(parsed.fingerprint(), history.fingerprint());
        let mut written = Vec::new();
        history.write_jsonl(&mut written).unwrap();
        prop_assert_eq!(written, text.into_bytes());
    }

    #[test]
    fn decoding_arbitrary_text_never_panics(text in any::<String>()) {
        let _ = History::from_jsonl(&text);
    }

    #[test]
    fn decoding_corrupted_histories_never_panics(
        scenario in scenario(Just(String::new())),
        corruptions in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut bytes = simulate(&scenario).to_jsonl().into_bytes();
        for (at, byte) in corruptions {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        if let Ok(history) = History::from_jsonl(&String::from_utf8_lossy(&bytes)) {
            // Whatever decodes is a well-formed history the checker can judge.
            let _ = check(&history).to_string();
        }
    }

    #[test]
    fn the_checker_never_panics_on_arbitrary_polls(
        polls in proptest::collection::vec(
            (0u64..3, proptest::collection::vec((0usize..2, prop_oneof![0u64..4, Just(u64::MAX), Just(u64::MAX - 1)], 0usize..4), 0..5)),
            0..12,
        ),
    ) {
        let partitions = [Partition::from("t/0"), Partition::from("t/1")];
        let mut h = History::new();
        // Some sends, one per outcome, so reads hit every kind of send.
        let send = h.invoke_send(ProcessId(9), 0, "t/0", "v0");
        h.send_ok(send, 1, Offset(0));
        let send = h.invoke_send(ProcessId(9), 2, "t/0", "v1");
        h.send_fail(send, 3);
        let send = h.invoke_send(ProcessId(9), 4, "t/1", "v2");
        h.send_ok(send, 5, Offset(u64::MAX));
        for (time_ns, (process, records)) in polls.into_iter().enumerate() {
            let pending = h.invoke_poll(ProcessId(process), time_ns as u64);
            let mut reads = PollReads::new();
            for (partition_idx, offset, value_idx) in records {
                reads.entry(partitions[partition_idx].clone()).or_default().push((Offset(offset), Value(format!("v{value_idx}"))));
            }
            h.poll_ok(pending, time_ns as u64, reads);
        }
        let report = check(&h);
        let _ = report.to_string();
        prop_assert_eq!(report.history_error, None);
    }
}
