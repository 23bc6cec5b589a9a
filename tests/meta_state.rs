//! proptest: the metadata state machine under random command sequences.
//!
//! Abstract ops are resolved against the state as it is when they apply (so leader/ISR changes often
//! carry the current epoch and a plausible ISR, and fences target brokers that are due), giving one
//! concrete list of `(index, MetaCommand)`. Properties:
//! 1. `check_invariants` holds after every apply;
//! 2. applying the list to two fresh states gives equal states and equal hashes (determinism);
//! 3. a snapshot at a random point, restored and fed the rest, equals applying everything;
//! 4. encode -> decode of every command is the identity;
//! 5. a topic is visible (same incarnation) from its successful `CreateTopic` until its successful
//!    `DeleteTopic`, creating an existing topic or deleting a missing one is rejected, producer-id
//!    blocks follow each other from 0, and a rejected command changes nothing but `applied_index`;
//! 6. partition leadership (ADR 0012): a leader is always an eligible broker (not fenced, not shutting
//!    down); after a broker is fenced or shut down it leads nothing and is in no ISR but as the last
//!    member; after a broker becomes eligible no offline partition has it in its ISR (an election ran);
//!    a `ChangeIsr` is applied only when its leader and both epochs were the current ones, and its
//!    result carries the partition's state; unclean elections happen only in topics that allow them.

use std::collections::BTreeMap;

use keel::meta::state::{
    decode_command, encode_command, BrokerRecord, IsrChangeRejection, MetaCommand, MetaResult, MetadataState,
    TopicRecord,
};
use keel::protocol::ErrorCode;
use keel::types::{LeaderEpoch, NodeId, PartitionEpoch, ProducerId};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const NAMES: [&str; 6] = ["a", "b", "c.d", "e_f-1", "bad name", ""];
const NODE_IDS_MAX: u64 = 5;

#[derive(Debug, Clone)]
enum Op {
    Register {
        node: u64,
        addr_idx: u8,
    },
    Heartbeat {
        node: u64,
    },
    /// Fence `node` as decided `age_ms` ago (may be stale, or unknown).
    Fence {
        node: u64,
        age_ms: i64,
    },
    /// Fence the first broker `brokers_to_fence` reports, if any (what the leader does).
    FenceDue {
        fence_after_ms: i64,
    },
    CreateTopic {
        name_idx: usize,
        partitions: u32,
        replication: u32,
        min_insync_replicas: Option<u32>,
        unclean_leader_election: bool,
    },
    /// `ControlledShutdown` of `node`, from its current incarnation unless `stale`.
    ControlledShutdown {
        node: u64,
        stale: bool,
    },
    DeleteTopic {
        name_idx: usize,
    },
    AllocateProducerIds {
        count: u64,
    },
    /// `leader_pick`: 0 = offline, 1..=3 = an ISR member by position, 4 = any node id.
    ChangeLeader {
        name_idx: usize,
        partition: u32,
        leader_pick: u8,
        node: u64,
        epoch_delta: i32,
    },
    /// ISR = the replicas selected by `mask` (plus the leader when `keep_leader`), proposed by the
    /// current leader (or by `node` when there is none or `other_proposer`).
    ChangeIsr {
        name_idx: usize,
        partition: u32,
        mask: u8,
        keep_leader: bool,
        epoch_delta: i32,
        partition_epoch_delta: i32,
        other_proposer: bool,
        node: u64,
    },
}

fn epoch_delta() -> impl Strategy<Value = i32> {
    prop_oneof![6 => Just(0), 1 => Just(-1), 1 => Just(1)]
}

fn op() -> impl Strategy<Value = Op> {
    let node = 1..=NODE_IDS_MAX;
    let name_idx = prop_oneof![8 => 0usize..4, 1 => 4usize..NAMES.len()];
    // Mostly an existing topic (see `topic_name`), sometimes any name.
    let target_idx = prop_oneof![8 => NAMES.len()..NAMES.len() + 4, 2 => 0usize..NAMES.len()];
    prop_oneof![
        4 => (node.clone(), 0u8..3).prop_map(|(node, addr_idx)| Op::Register { node, addr_idx }),
        3 => node.clone().prop_map(|node| Op::Heartbeat { node }),
        1 => (node.clone(), -5i64..50).prop_map(|(node, age_ms)| Op::Fence { node, age_ms }),
        2 => (0i64..300).prop_map(|fence_after_ms| Op::FenceDue { fence_after_ms }),
        5 => (
            name_idx.clone(),
            prop_oneof![8 => 1u32..5, 1 => Just(0u32), 1 => Just(1025u32)],
            prop_oneof![8 => 1u32..4, 1 => 0u32..6],
            prop_oneof![3 => Just(None), 2 => (0u32..5).prop_map(Some)],
            prop::bool::weighted(0.4),
        )
            .prop_map(|(name_idx, partitions, replication, min_insync_replicas, unclean_leader_election)| {
                Op::CreateTopic { name_idx, partitions, replication, min_insync_replicas, unclean_leader_election }
            }),
        1 => (node.clone(), prop::bool::weighted(0.2)).prop_map(|(node, stale)| Op::ControlledShutdown { node, stale }),
        2 => prop_oneof![name_idx.clone(), target_idx.clone()].prop_map(|name_idx| Op::DeleteTopic { name_idx }),
        2 => prop_oneof![4 => 1u64..100, 1 => Just(0u64), 1 => Just(u64::MAX)]
            .prop_map(|count| Op::AllocateProducerIds { count }),
        4 => (target_idx.clone(), 0u32..5, 0u8..5, node.clone(), epoch_delta()).prop_map(
            |(name_idx, partition, leader_pick, node, epoch_delta)| Op::ChangeLeader {
                name_idx,
                partition,
                leader_pick,
                node,
                epoch_delta
            }
        ),
        6 => (
            (target_idx, 0u32..5, any::<u8>(), prop::bool::weighted(0.8)),
            (epoch_delta(), epoch_delta(), prop::bool::weighted(0.1), node.clone()),
        )
            .prop_map(
                |((name_idx, partition, mask, keep_leader), (epoch_delta, partition_epoch_delta, other_proposer, node))| {
                    Op::ChangeIsr {
                        name_idx,
                        partition,
                        mask,
                        keep_leader,
                        epoch_delta,
                        partition_epoch_delta,
                        other_proposer,
                        node,
                    }
                }
            ),
    ]
}

/// A step: the op, the time that passes before it, and the gap to the next Raft index.
fn steps() -> impl Strategy<Value = Vec<(Op, i64, u64)>> {
    prop::collection::vec((op(), 0i64..40, prop_oneof![6 => Just(1u64), 1 => 2u64..4]), 0..80)
}

/// `NAMES[name_idx]`, or for `name_idx >= NAMES.len()` an existing topic (the first name if none).
fn topic_name(state: &MetadataState, name_idx: usize) -> String {
    let n_topics = state.topics().count();
    if name_idx < NAMES.len() || n_topics == 0 {
        return NAMES[name_idx % NAMES.len()].to_owned();
    }
    state.topics().nth((name_idx - NAMES.len()) % n_topics).expect("in range").name.clone()
}

/// Partitions 0..=3 address an existing partition of an existing topic, 4 the one past the end.
fn partition_idx(state: &MetadataState, name: &str, partition: u32) -> u32 {
    match state.topic(name) {
        Some(topic) if partition < 4 => partition % topic.partitions.len() as u32,
        Some(topic) => topic.partitions.len() as u32,
        None => partition,
    }
}

/// Turns an op into a concrete command against the state it will apply to.
fn resolve(op: &Op, state: &MetadataState, now_ms: i64) -> Option<MetaCommand> {
    let partition_of = |name: &str, partition: u32| {
        state.topic(name).and_then(|topic| topic.partitions.get(partition as usize)).cloned()
    };
    let epoch = |current: Option<LeaderEpoch>, delta: i32| LeaderEpoch(current.map_or(0, |epoch| epoch.0) + delta);
    let command = match op {
        Op::Register { node, addr_idx } => MetaCommand::RegisterBroker {
            node_id: NodeId(*node),
            addr: format!("10.0.0.{node}:{addr_idx}"),
            kafka_addr: String::new(),
            now_ms,
        },
        Op::Heartbeat { node } => MetaCommand::BrokerHeartbeat { node_id: NodeId(*node), now_ms },
        Op::Fence { node, age_ms } => MetaCommand::FenceBroker { node_id: NodeId(*node), now_ms: now_ms - age_ms },
        Op::FenceDue { fence_after_ms } => {
            let node_id = *state.brokers_to_fence(now_ms, *fence_after_ms).first()?;
            MetaCommand::FenceBroker { node_id, now_ms }
        }
        Op::CreateTopic { name_idx, partitions, replication, min_insync_replicas, unclean_leader_election } => {
            MetaCommand::CreateTopic {
                name: NAMES[*name_idx].to_owned(),
                partitions: *partitions,
                replication: *replication,
                min_insync_replicas: *min_insync_replicas,
                unclean_leader_election: *unclean_leader_election,
                log: Default::default(),
            }
        }
        Op::ControlledShutdown { node, stale } => {
            let registered_index = state.broker(NodeId(*node)).map_or(0, |broker| broker.registered_index);
            MetaCommand::ControlledShutdown {
                node_id: NodeId(*node),
                registered_index: registered_index.saturating_sub(u64::from(*stale)),
            }
        }
        Op::DeleteTopic { name_idx } => MetaCommand::DeleteTopic { name: topic_name(state, *name_idx) },
        Op::AllocateProducerIds { count } => MetaCommand::AllocateProducerIds { count: *count },
        Op::ChangeLeader { name_idx, partition, leader_pick, node, epoch_delta } => {
            let topic = topic_name(state, *name_idx);
            let partition = partition_idx(state, &topic, *partition);
            let current = partition_of(&topic, partition);
            let leader = match leader_pick {
                0 => None,
                4 => Some(NodeId(*node)),
                position => {
                    let isr = current.as_ref().map(|record| record.isr.clone()).unwrap_or_default();
                    Some(isr.get(*position as usize - 1).copied().unwrap_or(NodeId(*node)))
                }
            };
            MetaCommand::ChangePartitionLeader {
                topic,
                partition,
                leader,
                expected_epoch: epoch(current.as_ref().map(|record| record.leader_epoch), *epoch_delta),
            }
        }
        Op::ChangeIsr {
            name_idx,
            partition,
            mask,
            keep_leader,
            epoch_delta,
            partition_epoch_delta,
            other_proposer,
            node,
        } => {
            let topic = topic_name(state, *name_idx);
            let partition = partition_idx(state, &topic, *partition);
            let current = partition_of(&topic, partition);
            let mut isr: Vec<NodeId> = match &current {
                Some(record) => record
                    .replicas
                    .iter()
                    .enumerate()
                    .filter(|(replica_idx, _)| mask & (1 << replica_idx) != 0)
                    .map(|(_, node_id)| *node_id)
                    .collect(),
                // No such partition: some node ids, the command is rejected anyway.
                None => (1..=NODE_IDS_MAX).filter(|node| mask & (1 << node) != 0).map(NodeId).collect(),
            };
            if *keep_leader {
                if let Some(leader) = current.as_ref().and_then(|record| record.leader) {
                    if !isr.contains(&leader) {
                        isr.insert(0, leader);
                    }
                }
            }
            let leader = match current.as_ref().and_then(|record| record.leader) {
                Some(leader) if !*other_proposer => leader,
                _ => NodeId(*node),
            };
            let partition_epoch = current.as_ref().map_or(0, |record| record.partition_epoch.0);
            MetaCommand::ChangeIsr {
                topic,
                partition,
                leader,
                leader_epoch: epoch(current.as_ref().map(|record| record.leader_epoch), *epoch_delta),
                partition_epoch: PartitionEpoch(partition_epoch + partition_epoch_delta),
                isr,
            }
        }
    };
    Some(command)
}

/// Property 6 for one applied command.
fn check_leadership(before: &MetadataState, after: &MetadataState, command: &MetaCommand, result: &MetaResult) {
    let eligible = |node_id: NodeId| after.broker(node_id).is_some_and(BrokerRecord::is_eligible);
    for topic in after.topics() {
        for partition in &topic.partitions {
            if let Some(leader) = partition.leader {
                assert!(
                    eligible(leader),
                    "{}/{} led by ineligible broker {leader} after {command:?}",
                    topic.name,
                    partition.partition
                );
            }
            let old = before
                .topic(&topic.name)
                .filter(|old| old.created_index == topic.created_index)
                .map(|old| &old.partitions[partition.partition as usize]);
            if let Some(old) = old {
                if partition.unclean_elections > old.unclean_elections {
                    assert!(topic.unclean_leader_election, "unclean election in {} after {command:?}", topic.name);
                    assert_eq!(partition.isr, vec![partition.leader.expect("an unclean election elects")]);
                }
            }
        }
    }
    match (command, result) {
        (
            MetaCommand::FenceBroker { node_id, .. } | MetaCommand::ControlledShutdown { node_id, .. },
            MetaResult::Ok,
        ) => {
            for partition in after.topics().flat_map(|topic| &topic.partitions) {
                assert_ne!(partition.leader, Some(*node_id), "{partition:?}");
                assert!(!partition.isr.contains(node_id) || partition.isr == [*node_id], "{partition:?}");
            }
        }
        (
            MetaCommand::RegisterBroker { node_id, .. } | MetaCommand::BrokerHeartbeat { node_id, .. },
            MetaResult::Ok,
        ) => {
            let was_eligible = before.broker(*node_id).is_some_and(BrokerRecord::is_eligible);
            if !was_eligible && eligible(*node_id) {
                for (topic, partition) in after.offline_partitions() {
                    assert!(!partition.isr.contains(node_id), "{}/{}: {partition:?}", topic.name, partition.partition);
                }
            }
        }
        (MetaCommand::ChangeIsr { topic, partition, leader, leader_epoch, partition_epoch, isr }, result) => {
            let old = before.topic(topic).and_then(|record| record.partitions.get(*partition as usize));
            let new = after.topic(topic).and_then(|record| record.partitions.get(*partition as usize));
            match result {
                MetaResult::IsrChanged { leader_epoch: le, partition_epoch: pe, isr: now } => {
                    let (old, new) = (old.expect("changed a partition"), new.expect("still there"));
                    assert_eq!(
                        (old.leader, old.leader_epoch, old.partition_epoch),
                        (Some(*leader), *leader_epoch, *partition_epoch),
                        "a ChangeIsr from a stale view was applied"
                    );
                    assert_eq!((&new.isr, new.leader_epoch, new.partition_epoch), (isr, *le, *pe));
                    assert_eq!(now, isr);
                    let bumped = if old.isr == *isr { 0 } else { 1 };
                    assert_eq!(new.partition_epoch.0, old.partition_epoch.0 + bumped);
                }
                MetaResult::IsrChangeRejected {
                    leader: current,
                    leader_epoch: le,
                    partition_epoch: pe,
                    isr: now,
                    ..
                } => {
                    let (old, new) = (old.expect("a refusal names an existing partition"), new.expect("still there"));
                    // It reports the partition as it is now; only an ineligible join bumped its epoch.
                    let bumped = i32::from(refused_ineligible_join(result));
                    assert_eq!((current, le, now), (&old.leader, &old.leader_epoch, &old.isr));
                    assert_eq!(pe.0, old.partition_epoch.0 + bumped);
                    assert_eq!((&new.isr, new.leader, new.partition_epoch), (&old.isr, old.leader, *pe));
                }
                MetaResult::Error { code, .. } => {
                    assert!(old.is_none(), "{code:?} for an existing partition");
                }
                other => panic!("ChangeIsr gave {other:?}"),
            }
        }
        _ => {}
    }
}

/// Everything observable except `applied_index`.
fn contents(state: &MetadataState) -> (Vec<BrokerRecord>, Vec<TopicRecord>, ProducerId) {
    (state.brokers().cloned().collect(), state.topics().cloned().collect(), state.next_producer_id())
}

/// The reference run: resolves the ops, applies them, and checks properties 1, 4 and 5 on the way.
fn run_reference(steps: &[(Op, i64, u64)]) -> (Vec<(u64, MetaCommand)>, MetadataState) {
    let mut state = MetadataState::new();
    let mut commands = Vec::new();
    let mut now_ms = 0i64;
    let mut index = 0u64;
    // Model: topic name -> created index; the next producer id.
    let mut topics: BTreeMap<String, u64> = BTreeMap::new();
    let mut next_producer_id = 0i64;
    for (op, elapsed_ms, index_gap) in steps {
        now_ms += elapsed_ms;
        let Some(command) = resolve(op, &state, now_ms) else { continue };
        index += index_gap;
        assert_eq!(decode_command(&encode_command(&command)), Ok(command.clone()), "encode/decode identity");

        let before = contents(&state);
        let state_before = state.clone();
        let result = state.apply(index, &command);
        state.check_invariants();
        assert_eq!(state.applied_index(), index);

        if let MetaResult::Error { code, message } = &result {
            assert!(!message.is_empty());
            assert_eq!(contents(&state), before, "rejected {command:?} ({code:?}: {message}) changed the state");
        }
        // A refused ISR expansion to a fenced or shutting-down broker bumps the partition epoch
        // (fencing the leader's re-sent copies; checked in `check_leadership`); any other refusal
        // changes nothing.
        if result.is_rejection() && !refused_ineligible_join(&result) {
            assert_eq!(contents(&state), before, "refused {command:?} ({result:?}) changed the state");
        }
        check_leadership(&state_before, &state, &command, &result);
        match (&command, &result) {
            (MetaCommand::CreateTopic { name, partitions, .. }, MetaResult::TopicCreated { assignment }) => {
                assert!(!topics.contains_key(name), "{name:?} created twice");
                topics.insert(name.clone(), index);
                let topic = state.topic(name).expect("a created topic is visible");
                assert_eq!(topic.partitions.len(), *partitions as usize);
                for (assigned, partition) in assignment.iter().zip(&topic.partitions) {
                    assert_eq!(assigned.replicas, partition.replicas);
                    assert_eq!(Some(assigned.leader), partition.leader);
                    assert!(assigned.replicas.iter().all(|node_id| state.broker(*node_id).unwrap().is_alive()));
                }
            }
            (MetaCommand::CreateTopic { name, .. }, MetaResult::Error { code, .. }) => {
                assert_eq!(*code == ErrorCode::TopicAlreadyExists, topics.contains_key(name), "{name:?}: {code:?}");
            }
            (MetaCommand::CreateTopic { .. }, other) => panic!("CreateTopic gave {other:?}"),
            (MetaCommand::DeleteTopic { name }, result) => {
                if topics.remove(name).is_some() {
                    assert_eq!(*result, MetaResult::Ok);
                } else {
                    assert!(matches!(result, MetaResult::Error { code: ErrorCode::UnknownTopic, .. }), "{result:?}");
                }
            }
            (MetaCommand::AllocateProducerIds { count }, MetaResult::ProducerIds { first, count: granted }) => {
                assert_eq!((*first, granted), (ProducerId(next_producer_id), count));
                next_producer_id += *count as i64;
            }
            (MetaCommand::RegisterBroker { node_id, addr, .. }, MetaResult::Ok) => {
                let broker = state.broker(*node_id).unwrap();
                assert!(broker.is_alive() && broker.addr == *addr && broker.registered_index == index);
            }
            (MetaCommand::BrokerHeartbeat { node_id, .. }, MetaResult::Ok) => {
                assert!(state.broker(*node_id).unwrap().is_alive());
            }
            (MetaCommand::FenceBroker { node_id, .. }, MetaResult::Ok) => {
                assert!(!state.broker(*node_id).unwrap().is_alive());
            }
            _ => {}
        }
        let visible: BTreeMap<String, u64> =
            state.topics().map(|topic| (topic.name.clone(), topic.created_index)).collect();
        assert_eq!(visible, topics, "topics visible after {command:?}");
        assert_eq!(state.next_producer_id(), ProducerId(next_producer_id));
        commands.push((index, command));
    }
    (commands, state)
}

fn apply_all(state: &mut MetadataState, commands: &[(u64, MetaCommand)]) -> Vec<MetaResult> {
    commands.iter().map(|(index, command)| state.apply(*index, command)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/meta_state.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_command_sequences(steps in steps(), snapshot_at in 0.0f64..=1.0) {
        let (commands, reference) = run_reference(&steps);

        // Determinism: two fresh replicas agree with each other and with the reference, result by result.
        let mut first = MetadataState::new();
        let mut second = MetadataState::new();
        let first_results = apply_all(&mut first, &commands);
        let second_results = apply_all(&mut second, &commands);
        prop_assert_eq!(&first_results, &second_results);
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(first.state_hash(), second.state_hash());
        prop_assert_eq!(&first, &reference);
        prop_assert_eq!(first.state_hash(), reference.state_hash());

        // Snapshot at a random point, restore, apply the rest.
        let split = ((commands.len() as f64) * snapshot_at) as usize;
        let mut prefix = MetadataState::new();
        apply_all(&mut prefix, &commands[..split]);
        let mut restored = MetadataState::restore(&prefix.snapshot()).expect("a snapshot restores");
        prop_assert_eq!(&restored, &prefix);
        prop_assert_eq!(restored.state_hash(), prefix.state_hash());
        let rest_results = apply_all(&mut restored, &commands[split..]);
        prop_assert_eq!(&rest_results[..], &first_results[split..]);
        prop_assert_eq!(&restored, &reference);
        prop_assert_eq!(restored.state_hash(), reference.state_hash());
    }
}

/// The one refusal that changes the state: an ISR expansion to a fenced or shutting-down broker.
fn refused_ineligible_join(result: &MetaResult) -> bool {
    matches!(
        result,
        MetaResult::IsrChangeRejected { reason: IsrChangeRejection::InvalidIsr { reason }, .. }
            if reason.contains("cannot join the ISR")
    )
}
