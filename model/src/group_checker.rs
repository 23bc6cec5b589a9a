//! The consumer-group checker (ADR 0020): judges what the members of one group saw during a run.
//!
//! Its input is what the clients recorded, on one clock (the simulation's): every join answer a
//! member received (generation and assignment), every poll a member completed (the generation it
//! was in and the offsets it got), every commit with its outcome, and every committed-offsets read
//! of an observer; plus, after the heal, the acknowledged sends of the topic and the group's final
//! committed offsets (the harness waits for the group to catch up first).
//!
//! Anomalies:
//! - `generation-shared`: two members were given the same partition in the same generation.
//! - `commit-regressed`: a committed-offsets read returned less for a partition than a read that
//!   completed before it was invoked, or than a commit acknowledged before it was invoked (the
//!   final committed offsets count as a read after everything).
//! - `unconsumed` (at-least-once): an acknowledged record below its partition's final committed
//!   offset that no member consumed while its generation was the group's newest. A poll completed
//!   by a member after another member received a newer generation is a zombie's: it does not count,
//!   since that member's commits must be refused (and the new owner start from the committed
//!   offset, reading the records again).

use std::collections::{BTreeMap, BTreeSet};

/// A member received the answer to its join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinEvent {
    pub member: String,
    pub generation: i32,
    pub partitions: Vec<u32>,
    pub at_ns: u64,
}

/// A member's completed poll of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollEvent {
    pub member: String,
    pub generation: i32,
    pub partition: u32,
    pub offsets: Vec<i64>,
    pub at_ns: u64,
}

/// A commit of one partition's offset, acknowledged (`ok`) or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitEvent {
    pub partition: u32,
    pub offset: i64,
    pub ok: bool,
    pub completed_ns: u64,
}

/// An observer's read of the group's committed offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetsRead {
    pub offsets: BTreeMap<u32, i64>,
    pub invoked_ns: u64,
    pub completed_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupHistory {
    pub joins: Vec<JoinEvent>,
    pub polls: Vec<PollEvent>,
    pub commits: Vec<CommitEvent>,
    pub reads: Vec<OffsetsRead>,
    /// Per partition, the offsets of acknowledged sends.
    pub acked: BTreeMap<u32, Vec<i64>>,
    /// Per partition, the first offset still in the log at the end (retention); 0 without.
    pub log_starts: BTreeMap<u32, i64>,
    /// The group's committed offsets after the heal.
    pub final_committed: BTreeMap<u32, i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupReport {
    /// Anomaly name -> examples (at most a few each).
    pub anomalies: BTreeMap<&'static str, Vec<String>>,
    pub generations: usize,
    pub polls_counted: usize,
    pub polls_zombie: usize,
    pub commits_ok: usize,
    pub records_checked: usize,
}

impl GroupReport {
    pub fn valid(&self) -> bool {
        self.anomalies.is_empty()
    }

    fn add(&mut self, anomaly: &'static str, example: String) {
        let examples = self.anomalies.entry(anomaly).or_default();
        if examples.len() < 5 {
            examples.push(example);
        }
    }
}

pub fn check(history: &GroupHistory) -> GroupReport {
    let mut report = GroupReport::default();
    check_generations(history, &mut report);
    check_regressions(history, &mut report);
    check_consumed(history, &mut report);
    report.commits_ok = history.commits.iter().filter(|c| c.ok).count();
    report
}

fn check_generations(history: &GroupHistory, report: &mut GroupReport) {
    let mut owners: BTreeMap<(i32, u32), &str> = BTreeMap::new();
    let mut generations = BTreeSet::new();
    for join in &history.joins {
        generations.insert(join.generation);
        for partition in &join.partitions {
            match owners.insert((join.generation, *partition), &join.member) {
                Some(other) if other != join.member => report.add(
                    "generation-shared",
                    format!("generation {} gave partition {partition} to {other} and {}", join.generation, join.member),
                ),
                _ => {}
            }
        }
    }
    report.generations = generations.len();
}

fn check_regressions(history: &GroupHistory, report: &mut GroupReport) {
    // Floors: (time it became known, partition, offset, what).
    let mut floors: Vec<(u64, u32, i64, String)> = Vec::new();
    for commit in history.commits.iter().filter(|c| c.ok) {
        floors.push((commit.completed_ns, commit.partition, commit.offset, "an acknowledged commit".into()));
    }
    for read in &history.reads {
        for (partition, offset) in &read.offsets {
            floors.push((
                read.completed_ns,
                *partition,
                *offset,
                format!("a read completed at {} ns", read.completed_ns),
            ));
        }
    }
    floors.sort();
    let mut reads: Vec<&OffsetsRead> = history.reads.iter().collect();
    reads.sort_by_key(|read| read.invoked_ns);
    let final_read =
        OffsetsRead { offsets: history.final_committed.clone(), invoked_ns: u64::MAX, completed_ns: u64::MAX };
    reads.push(&final_read);
    let mut highest: BTreeMap<u32, (i64, &str)> = BTreeMap::new();
    let mut next = 0;
    for read in reads {
        while next < floors.len() && floors[next].0 < read.invoked_ns {
            let (_, partition, offset, what) = &floors[next];
            if highest.get(partition).is_none_or(|(high, _)| offset > high) {
                highest.insert(*partition, (*offset, what));
            }
            next += 1;
        }
        for (partition, (high, what)) in &highest {
            let seen = read.offsets.get(partition).copied().unwrap_or(-1);
            if seen < *high {
                let when = if read.invoked_ns == u64::MAX {
                    "the final read".to_owned()
                } else {
                    format!("a read at {} ns", read.invoked_ns)
                };
                report.add(
                    "commit-regressed",
                    format!("partition {partition}: {when} saw {seen} after {what} had {high}"),
                );
            }
        }
    }
}

fn check_consumed(history: &GroupHistory, report: &mut GroupReport) {
    // The newest generation handed out by each moment: (time, generation), running maximum.
    let mut handed: Vec<(u64, i32)> = history.joins.iter().map(|j| (j.at_ns, j.generation)).collect();
    handed.sort();
    let mut newest = i32::MIN;
    for entry in &mut handed {
        newest = newest.max(entry.1);
        entry.1 = newest;
    }
    let newest_at = |at_ns: u64| -> i32 {
        let index = handed.partition_point(|(time, _)| *time <= at_ns);
        if index == 0 {
            i32::MIN
        } else {
            handed[index - 1].1
        }
    };
    let mut consumed: BTreeMap<u32, BTreeSet<i64>> = BTreeMap::new();
    for poll in &history.polls {
        if poll.generation >= newest_at(poll.at_ns) {
            report.polls_counted += 1;
            consumed.entry(poll.partition).or_default().extend(&poll.offsets);
        } else {
            report.polls_zombie += 1;
        }
    }
    for (partition, offsets) in &history.acked {
        let committed = history.final_committed.get(partition).copied().unwrap_or(0);
        let start = history.log_starts.get(partition).copied().unwrap_or(0);
        for offset in offsets.iter().filter(|o| **o >= start && **o < committed) {
            report.records_checked += 1;
            if !consumed.get(partition).is_some_and(|set| set.contains(offset)) {
                report.add(
                    "unconsumed",
                    format!("partition {partition}: acknowledged offset {offset} is below the committed {committed} but no current member consumed it"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(member: &str, generation: i32, partitions: &[u32], at_ns: u64) -> JoinEvent {
        JoinEvent { member: member.into(), generation, partitions: partitions.to_vec(), at_ns }
    }

    fn poll(member: &str, generation: i32, partition: u32, offsets: std::ops::Range<i64>, at_ns: u64) -> PollEvent {
        PollEvent { member: member.into(), generation, partition, offsets: offsets.collect(), at_ns }
    }

    fn commit(partition: u32, offset: i64, completed_ns: u64) -> CommitEvent {
        CommitEvent { partition, offset, ok: true, completed_ns }
    }

    fn read(offset: i64, invoked_ns: u64, completed_ns: u64) -> OffsetsRead {
        OffsetsRead { offsets: BTreeMap::from([(0, offset)]), invoked_ns, completed_ns }
    }

    /// a (gen 1) reads 0..10 and commits 10; b joins gen 2 with partition 0 and reads 10..20.
    fn good() -> GroupHistory {
        GroupHistory {
            joins: vec![join("a", 1, &[0], 10), join("a", 2, &[], 100), join("b", 2, &[0], 100)],
            polls: vec![poll("a", 1, 0, 0..10, 20), poll("b", 2, 0, 10..20, 120)],
            commits: vec![commit(0, 10, 30), commit(0, 20, 130)],
            reads: vec![read(10, 40, 50), read(20, 140, 150)],
            acked: BTreeMap::from([(0, (0..25).collect())]),
            log_starts: BTreeMap::new(),
            final_committed: BTreeMap::from([(0, 20)]),
        }
    }

    #[test]
    fn a_clean_history_is_valid() {
        let report = check(&good());
        assert!(report.valid(), "{report:?}");
        assert_eq!((report.generations, report.polls_counted, report.records_checked), (2, 2, 20));
    }

    #[test]
    fn two_owners_in_one_generation_are_caught() {
        let mut history = good();
        history.joins.push(join("c", 2, &[0], 101));
        assert!(check(&history).anomalies.contains_key("generation-shared"));
    }

    #[test]
    fn a_regressed_commit_is_caught_after_a_read_or_an_ack() {
        let mut history = good();
        history.reads.push(read(9, 60, 70)); // after a read of 10 completed at 50
        assert!(check(&history).anomalies.contains_key("commit-regressed"));
        let mut history = good();
        history.final_committed.insert(0, 15); // below the acknowledged commit of 20
        assert!(check(&history).anomalies.contains_key("commit-regressed"));
        // Overlapping reads may see either order.
        let mut history = good();
        history.reads.push(read(10, 125, 160));
        assert!(check(&history).valid(), "{:?}", check(&history));
    }

    #[test]
    fn records_only_a_zombie_consumed_are_caught() {
        // a reads 10..20 after b got generation 2 (a zombie), its commit of 20 is (wrongly)
        // accepted, and b starts at 20: nobody current consumed 10..20.
        let mut history = good();
        history.polls = vec![poll("a", 1, 0, 0..10, 20), poll("a", 1, 0, 10..20, 110), poll("b", 2, 0, 20..22, 130)];
        history.final_committed.insert(0, 22);
        history.commits.push(commit(0, 22, 131));
        let report = check(&history);
        assert!(report.anomalies.contains_key("unconsumed"), "{report:?}");
        assert_eq!(report.polls_zombie, 1);
        // Below the log start nothing is owed.
        let mut history = good();
        history.polls.remove(0);
        history.log_starts.insert(0, 10);
        assert!(check(&history).valid());
    }
}
