//! The consumer-group workload (ADR 0020): member processes of one group consuming the queue
//! workload's topic, and an observer reading the group's committed offsets, recording a
//! [`GroupHistory`] for `keel_model::group_checker`.
//!
//! - A *member process* runs one [`GroupConsumer`] at a time: it polls, records each poll (its
//!   generation and offsets per partition) and each new generation it finds itself in (with its
//!   assignment), commits after every poll and records each acknowledged commit. After a drawn
//!   lifetime it either leaves cleanly or *crashes*: drops the consumer without leaving, so the
//!   coordinator removes it only when its session times out; then it starts a new member.
//!   Some lives end as a *zombie* instead: the member stops heartbeating but goes on fetching its
//!   partitions and committing with its old generation and member id (as a consumer whose
//!   heartbeats stopped while its processing went on would), until it gives up. The coordinator
//!   must refuse those commits once the member is gone; its polls after another member got a newer
//!   generation do not count as consumption (the group checker's `unconsumed`).
//! - The *observer* reads the committed offsets now and then.
//! - After the heal ([`GroupRun::catch_up`]) the members keep going until the committed offsets
//!   reach the final high watermarks (the group consumed everything), within the liveness bound;
//!   then they leave and the final committed offsets are read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::client::group::{GroupConsumer, GroupConsumerConfig, TopicPartition};
use keel::client::Client;
use keel_model::group_checker::{CommitEvent, GroupHistory, JoinEvent, OffsetsRead, PollEvent};
use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lock;
use crate::trace::Trace;
use crate::workload::client_config;

pub const GROUP: &str = "sim-group";

/// What the group's processes record, on the simulation's clock.
pub struct GroupRecorder {
    start: Instant,
    trace: Trace,
    history: Mutex<GroupHistory>,
    /// The latest committed offsets the observer read.
    latest: Mutex<BTreeMap<u32, i64>>,
}

impl GroupRecorder {
    pub fn new(start: Instant, trace: Trace) -> Arc<GroupRecorder> {
        Arc::new(GroupRecorder { start, trace, history: Mutex::default(), latest: Mutex::default() })
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn history(&self) -> GroupHistory {
        lock(&self.history).clone()
    }

    pub fn latest(&self) -> BTreeMap<u32, i64> {
        lock(&self.latest).clone()
    }

    fn note(&self, what: String) {
        self.trace.record(self.now_ns(), what);
    }
}

/// One member process (a client node of its own).
pub struct MemberProcess {
    pub addr: String,
    pub topic: String,
    pub process: u64,
    pub session_timeout_ms: u32,
    pub assignor: &'static str,
    /// Out of 100: how often a member's life ends in a crash instead of a clean leave.
    pub crash_percent: u32,
    pub lifetime_ms_max: u64,
    /// Out of 100: how often a member's life ends as a zombie.
    pub zombie_percent: u32,
    pub rng: StdRng,
}

impl MemberProcess {
    /// Runs members one after another until `stop`; the last one leaves.
    pub async fn run(mut self, recorder: Arc<GroupRecorder>, stop: CancellationToken) {
        let client = Client::new(self.addr.clone(), client_config());
        let mut incarnation = 0;
        while !stop.is_cancelled() {
            incarnation += 1;
            let mut config = GroupConsumerConfig::new(GROUP, vec![self.topic.clone()]);
            config.client_id = format!("p{}-{incarnation}", self.process);
            config.session_timeout_ms = self.session_timeout_ms;
            config.assignors = vec![self.assignor.to_owned()];
            let mut consumer = GroupConsumer::new(client.clone(), config);
            let lifetime = Duration::from_millis(self.rng.random_range(500..=self.lifetime_ms_max));
            let crash = self.rng.random_range(0..100) < self.crash_percent;
            let until = Instant::now() + lifetime;
            let mut seen_generation = -1;
            while !stop.is_cancelled() && Instant::now() < until {
                self.step(&mut consumer, &recorder, &mut seen_generation).await;
            }
            let zombie = self.rng.random_range(0..100) < self.zombie_percent;
            if zombie && !stop.is_cancelled() && !consumer.positions().is_empty() {
                self.zombie(&client, &consumer, &recorder, &stop).await;
                continue;
            }
            if crash && !stop.is_cancelled() {
                recorder.note(format!("group: member {} of process {} crashes", consumer.member_id(), self.process));
                continue; // dropped without leaving: its session times out at the coordinator
            }
            let leaving_generation = consumer.generation();
            let member = consumer.member_id().to_owned();
            let left = consumer.leave().await;
            if let Ok(committed) = &left {
                record_commits(&recorder, &self.topic, committed);
            }
            recorder.note(format!("group: member {member} (generation {leaving_generation}) left: {left:?}"));
        }
    }

    /// Fetches and commits as the member `consumer` was, without heartbeats, for up to three
    /// session timeouts.
    async fn zombie(
        &mut self,
        client: &Arc<Client>,
        consumer: &GroupConsumer,
        recorder: &GroupRecorder,
        stop: &CancellationToken,
    ) {
        let (generation, member) = (consumer.generation(), consumer.member_id().to_owned());
        let mut positions = consumer.positions().clone();
        recorder
            .note(format!("group: member {member} (generation {generation}) of process {} turns zombie", self.process));
        let until = Instant::now() + Duration::from_millis(3 * u64::from(self.session_timeout_ms));
        while !stop.is_cancelled() && Instant::now() < until {
            for (tp, position) in positions.iter_mut() {
                let Ok(fetched) = client.fetch(&tp.topic, tp.partition, *position, 16 * 1024, Duration::ZERO).await
                else {
                    continue;
                };
                let offsets: Vec<i64> = fetched.records.iter().map(|record| record.offset.0).collect();
                if let Some(last) = fetched.records.last() {
                    *position = last.offset.next();
                    let at_ns = recorder.now_ns();
                    let poll =
                        PollEvent { member: member.clone(), generation, partition: tp.partition, offsets, at_ns };
                    lock(&recorder.history).polls.push(poll);
                }
            }
            match client.commit_offsets(GROUP, generation, &member, &positions).await {
                Ok(()) => record_commits(recorder, &self.topic, &positions),
                Err(error) => recorder.note(format!("group: zombie {member} commit {positions:?} refused: {error}")),
            }
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(10..200))).await;
        }
        recorder.note(format!("group: zombie {member} gives up"));
    }

    /// One poll and commit.
    async fn step(&mut self, consumer: &mut GroupConsumer, recorder: &GroupRecorder, seen_generation: &mut i32) {
        let wait = Duration::from_millis(self.rng.random_range(0..300));
        match consumer.poll(wait).await {
            Ok(records) => {
                let at_ns = recorder.now_ns();
                let generation = consumer.generation();
                if generation != *seen_generation {
                    *seen_generation = generation;
                    let partitions = consumer.assignment().iter().map(|tp| tp.partition).collect();
                    let join = JoinEvent { member: consumer.member_id().to_owned(), generation, partitions, at_ns };
                    recorder.note(format!("group: {join:?}"));
                    lock(&recorder.history).joins.push(join);
                }
                let mut by_partition: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
                for (_, partition, record) in &records {
                    by_partition.entry(*partition).or_default().push(record.offset.0);
                }
                let member = consumer.member_id().to_owned();
                let mut history = lock(&recorder.history);
                for (partition, offsets) in by_partition {
                    history.polls.push(PollEvent { member: member.clone(), generation, partition, offsets, at_ns });
                }
            }
            Err(error) => {
                recorder.note(format!("group: poll of process {} failed: {error}", self.process));
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        }
        match consumer.commit().await {
            Ok(committed) => record_commits(recorder, &self.topic, &committed),
            Err(error) => recorder.note(format!("group: commit of process {} failed: {error}", self.process)),
        }
    }
}

fn record_commits(recorder: &GroupRecorder, topic: &str, committed: &BTreeMap<TopicPartition, keel::types::Offset>) {
    let completed_ns = recorder.now_ns();
    let mut history = lock(&recorder.history);
    for (tp, offset) in committed.iter().filter(|(tp, _)| tp.topic == topic) {
        history.commits.push(CommitEvent { partition: tp.partition, offset: offset.0, ok: true, completed_ns });
    }
}

/// Reads the group's committed offsets every `interval` until `stop`.
pub async fn observe(
    addr: String,
    topic: String,
    interval: Duration,
    recorder: Arc<GroupRecorder>,
    stop: CancellationToken,
) {
    let client = Client::new(addr, client_config());
    while !stop.is_cancelled() {
        let invoked_ns = recorder.now_ns();
        if let Ok(offsets) = client.committed_offsets(GROUP).await {
            let offsets: BTreeMap<u32, i64> = offsets
                .iter()
                .filter(|(tp, _)| tp.topic == topic)
                .map(|(tp, offset)| (tp.partition, offset.0))
                .collect();
            let completed_ns = recorder.now_ns();
            lock(&recorder.latest).clone_from(&offsets);
            lock(&recorder.history).reads.push(OffsetsRead { offsets, invoked_ns, completed_ns });
        }
        tokio::time::sleep(interval).await;
    }
}

/// The group's committed offsets, read once (retried within `bound`).
pub async fn final_committed(addr: String, topic: String, bound: Duration) -> Result<BTreeMap<u32, i64>, String> {
    let client = Client::new(addr, client_config());
    let deadline = Instant::now() + bound;
    loop {
        match client.committed_offsets(GROUP).await {
            Ok(offsets) => {
                return Ok(offsets
                    .iter()
                    .filter(|(tp, _)| tp.topic == topic)
                    .map(|(tp, offset)| (tp.partition, offset.0))
                    .collect())
            }
            Err(error) if Instant::now() >= deadline => return Err(format!("final committed offsets: {error}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
