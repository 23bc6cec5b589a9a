//! The assignors (pure): which member of a generation consumes which partition. The coordinator
//! runs them (server-side assignment, as KIP-848 moves Kafka to), so an assignment is decided once,
//! persisted with its generation, and the same for every member.
//!
//! Both give every partition of every subscribed topic to exactly one member subscribed to that
//! topic, and are deterministic in their inputs (members sorted by id).

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition, by name and index.
pub type TopicPartition = (String, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Assignor {
    /// Kafka's RangeAssignor: per topic, consecutive runs of partitions; the first
    /// `partitions % members` members get one more.
    Range,
    /// Kafka's RoundRobinAssignor: every subscribed partition in (topic, partition) order, dealt to
    /// the members in turn (skipping a member not subscribed to the topic).
    RoundRobin,
}

impl Assignor {
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
        }
    }

    pub fn parse(name: &str) -> Option<Assignor> {
        match name {
            "range" => Some(Assignor::Range),
            "roundrobin" => Some(Assignor::RoundRobin),
            _ => None,
        }
    }
}

/// `members`: each member's subscribed topics; `partitions`: each topic's partition count (a topic
/// missing here has none). Every member appears in the result, possibly with nothing.
pub fn assign(
    assignor: Assignor,
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut out: BTreeMap<String, Vec<TopicPartition>> = members.keys().map(|id| (id.clone(), Vec::new())).collect();
    let subscribers = |topic: &str| -> Vec<&String> {
        members.iter().filter(|(_, topics)| topics.contains(topic)).map(|(id, _)| id).collect()
    };
    let topics: BTreeSet<&String> = members.values().flatten().collect();
    match assignor {
        Assignor::Range => {
            for topic in topics {
                let count = partitions.get(topic).copied().unwrap_or(0);
                let owners = subscribers(topic);
                let (each, extra) = (count / owners.len() as u32, count % owners.len() as u32);
                let mut next = 0;
                for (index, owner) in owners.iter().enumerate() {
                    let take = each + u32::from((index as u32) < extra);
                    let owned = out.get_mut(*owner).expect("every member has an entry");
                    owned.extend((next..next + take).map(|partition| (topic.clone(), partition)));
                    next += take;
                }
            }
        }
        Assignor::RoundRobin => {
            let ids: Vec<&String> = members.keys().collect();
            let mut turn = 0;
            for topic in topics {
                for partition in 0..partitions.get(topic).copied().unwrap_or(0) {
                    // The next member in turn subscribed to the topic (one exists: the topic came
                    // from some member's subscription).
                    while !members[ids[turn % ids.len()]].contains(topic) {
                        turn += 1;
                    }
                    out.get_mut(ids[turn % ids.len()]).expect("member").push((topic.clone(), partition));
                    turn += 1;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(list: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        list.iter().map(|(id, topics)| (id.to_string(), topics.iter().map(|t| t.to_string()).collect())).collect()
    }

    fn owned(assignment: &BTreeMap<String, Vec<TopicPartition>>, id: &str) -> Vec<String> {
        assignment[id].iter().map(|(topic, partition)| format!("{topic}/{partition}")).collect()
    }

    #[test]
    fn range_gives_consecutive_runs_and_the_extra_to_the_first() {
        let members = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let partitions = BTreeMap::from([("t".to_string(), 7)]);
        let out = assign(Assignor::Range, &members, &partitions);
        assert_eq!(owned(&out, "a"), ["t/0", "t/1", "t/2"]);
        assert_eq!(owned(&out, "b"), ["t/3", "t/4"]);
        assert_eq!(owned(&out, "c"), ["t/5", "t/6"]);
    }

    #[test]
    fn round_robin_deals_in_turn_and_skips_members_not_subscribed() {
        let members = members(&[("a", &["t", "u"]), ("b", &["t"]), ("c", &["u"])]);
        let partitions = BTreeMap::from([("t".to_string(), 3), ("u".to_string(), 2)]);
        let out = assign(Assignor::RoundRobin, &members, &partitions);
        assert_eq!(owned(&out, "a"), ["t/0", "t/2", "u/1"]);
        assert_eq!(owned(&out, "b"), ["t/1"]);
        assert_eq!(owned(&out, "c"), ["u/0"]);
    }

    #[test]
    fn more_members_than_partitions_leaves_some_idle_and_unknown_topics_give_nothing() {
        let members = members(&[("a", &["t", "gone"]), ("b", &["t"]), ("c", &["t"])]);
        let partitions = BTreeMap::from([("t".to_string(), 2)]);
        for assignor in [Assignor::Range, Assignor::RoundRobin] {
            let out = assign(assignor, &members, &partitions);
            assert_eq!(out.values().map(Vec::len).sum::<usize>(), 2, "{assignor:?}");
            assert_eq!(out.len(), 3, "every member has an entry");
        }
    }

    proptest! {
        /// Every subscribed partition goes to exactly one member subscribed to its topic; with one
        /// topic everyone shares, the counts differ by at most one.
        #[test]
        fn every_partition_has_exactly_one_subscribed_owner(
            subscriptions in prop::collection::vec(prop::collection::btree_set(0..4usize, 1..4), 1..7),
            counts in prop::collection::vec(0..9u32, 4),
            round_robin: bool,
        ) {
            let members: BTreeMap<String, BTreeSet<String>> = subscriptions.iter().enumerate()
                .map(|(i, topics)| (format!("m{i:02}"), topics.iter().map(|t| format!("t{t}")).collect()))
                .collect();
            let partitions: BTreeMap<String, u32> = counts.iter().enumerate().map(|(t, n)| (format!("t{t}"), *n)).collect();
            let assignor = if round_robin { Assignor::RoundRobin } else { Assignor::Range };
            let out = assign(assignor, &members, &partitions);
            let mut seen = BTreeMap::new();
            for (id, owned) in &out {
                for (topic, partition) in owned {
                    prop_assert!(members[id].contains(topic), "{id} owns {topic}/{partition} unsubscribed");
                    prop_assert!(*partition < partitions[topic]);
                    prop_assert!(seen.insert((topic.clone(), *partition), id.clone()).is_none(), "owned twice");
                }
            }
            let subscribed: BTreeSet<&String> = members.values().flatten().collect();
            let expected: u32 = subscribed.iter().map(|t| partitions[*t]).sum();
            prop_assert_eq!(seen.len(), expected as usize);
            if subscribed.len() == 1 && members.values().all(|t| t.len() == 1) {
                let sizes: Vec<usize> = out.values().map(Vec::len).collect();
                prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
            }
        }
    }
}
