//! Keel's simulation scenarios (one test binary). Built only with `--cfg madsim` (run from `sim/`).
//!
//! Each `#[madsim::test]` runs one seed by default; `MADSIM_TEST_SEED`, `MADSIM_TEST_NUM` and
//! `MADSIM_TEST_CHECK_DETERMINISM` work as madsim documents them. Each seed prints its checker report
//! and, last, `seed=<n> trace_hash=<16 hex digits>`.
#![cfg(madsim)]

use keel::partition::FsyncPolicy;
use keel_sim::driver::{self, run_seed, run_seed_with, RunOptions};
use keel_sim::scenario::{self, Scenario};

/// Default durability (fsync=always, acks=all): power loss and process crashes must never lose an
/// acked record, reorder a partition or make the high watermark go back.
#[madsim::test]
async fn single_broker_power_loss_fsync_always() {
    keel_sim::init_logging();
    driver::run(&scenario::single_broker_power_loss(FsyncPolicy::Always)).await.assert_valid();
}

/// Slow fsyncs and injected fsync errors (the partition must fail its pending appends as
/// indeterminate and recover), with power loss on top.
#[madsim::test]
async fn single_broker_slow_and_failing_fsync() {
    keel_sim::init_logging();
    driver::run(&scenario::single_broker_slow_and_failing_fsync()).await.assert_valid();
}

/// `fsync = "never"` with write errors (EIO, ENOSPC) and process restarts but no power loss: nothing
/// acked may be lost, since a failed write must never be acked and the page cache survives the rest.
#[madsim::test]
async fn single_broker_write_errors_fsync_never() {
    keel_sim::init_logging();
    driver::run(&scenario::single_broker_write_errors_fsync_never()).await.assert_valid();
}

/// A paused broker and clogged nodes: requests time out as `info`, nothing hangs, and after the heal
/// everything acked is readable.
#[madsim::test]
async fn single_broker_pause_and_clog() {
    keel_sim::init_logging();
    driver::run(&scenario::single_broker_pause_and_clog()).await.assert_valid();
}

/// Every fault class, rates and mix drawn per seed.
#[madsim::test]
async fn single_broker_swarm() {
    keel_sim::init_logging();
    driver::run(&scenario::single_broker_swarm()).await.assert_valid();
}

/// The harness judges every broker exit: a stop it asked for and a stop after an injected storage
/// fault are explained; a broker that stops on its own with healthy storage is a violation (before,
/// only bind and load errors were, and `heal` restarted any exited broker without a word).
#[madsim::test]
async fn harness_judges_every_broker_exit() {
    use keel::config::BrokerConfig;
    use keel_sim::cluster::{Cluster, ExitCause};
    use std::time::Duration;

    let start = tokio::time::Instant::now();
    let mut cluster = Cluster::new(keel_sim::trace::Trace::new(), start);
    let bound = Duration::from_secs(10);
    let healthy = cluster.add_broker(BrokerConfig::default(), 1);
    assert!(cluster.wait_serving(healthy, bound).await);

    // Asked for: a clean restart's ctrl-c.
    cluster.clean_restart(healthy).await;
    assert!(cluster.wait_serving(healthy, bound).await);

    // Explained: every metadata-store write fails, so the next metadata change stops the Raft node and
    // the broker exits.
    cluster.set_meta_write_errors(healthy, 1.0);
    let addr = cluster.broker_addr(healthy);
    let admin = cluster.add_client();
    admin.spawn(async move {
        let client = keel::client::Client::new(addr, keel_sim::workload::client_config());
        let _ = client.create_topic("t", 1, 1).await;
    });
    let deadline = tokio::time::Instant::now() + bound;
    while cluster.current_exit(healthy).is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Unexplained: a broker that cannot start (its own id is not among its peers) on healthy storage.
    let broken_config =
        BrokerConfig { peers: [("7".to_owned(), "10.0.1.9:9400".to_owned())].into(), ..BrokerConfig::default() };
    let broken = cluster.add_broker(broken_config, 2);
    let deadline = tokio::time::Instant::now() + bound;
    while cluster.current_exit(broken).is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let causes: Vec<(usize, ExitCause)> = cluster.exits().into_iter().map(|exit| (exit.broker, exit.cause)).collect();
    assert_eq!(
        causes,
        vec![
            (healthy, ExitCause::Requested),
            (healthy, ExitCause::StorageFault("1 failed metadata-store writes".to_owned())),
            (broken, ExitCause::Unexplained),
        ]
    );
    let violations = cluster.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].starts_with("broker-2 incarnation 1 exited without a ctrl-c"), "{violations:?}");
}

/// The bit-flip fault class on its own (the `isr_*` scenarios use it with replication): on 5 brokers
/// with synced `.log` files, the nemesis flips bits only on a minority (at most 2 distinct brokers over
/// the run), every flip is in the trace and the history as a `bit_flip` nemesis event, and each really
/// changed exactly the reported bit of the durable bytes (other files untouched).
#[madsim::test]
async fn bit_flip_nemesis_rots_durable_segments_of_a_minority_only() {
    use keel::config::BrokerConfig;
    use keel::storage::{Disk, DiskFile};
    use keel_sim::cluster::Cluster;
    use keel_sim::history_file::NemesisEvent;
    use keel_sim::nemesis::Nemesis;
    use keel_sim::swarm::{FaultClass, NemesisSwarm, Use};
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    let mut cluster = Cluster::new(keel_sim::trace::Trace::new(), tokio::time::Instant::now());
    let n_brokers = 5;
    for disk_seed in 1..=n_brokers as u64 {
        cluster.add_broker(BrokerConfig::default(), disk_seed);
    }
    // Files of known content on every disk (outside the broker's own directories): two segments, an
    // index (a bit flip rots segments only) and an unsynced segment (not durable: never rotted).
    let original: Vec<u8> = (0..=255u8).cycle().take(4_096).collect();
    for index in 0..n_brokers {
        let disk = cluster.broker(index).disk.clone();
        disk.create_dir_all("scratch").unwrap();
        for name in ["scratch/a.log", "scratch/b.log", "scratch/a.index"] {
            let file = disk.open(name, true).unwrap();
            file.write_at(0, &original).unwrap();
            file.sync().await.unwrap();
        }
        disk.sync_dir("scratch").await.unwrap();
        disk.open("scratch/c.log", true).unwrap().write_at(0, &original).unwrap();
    }
    let scenario = Scenario {
        name: "bit_flip_only",
        brokers: n_brokers,
        // Flips stay on a minority of a partition's replicas: with every broker a replica, that is
        // a minority of the brokers.
        replication: n_brokers as u32,
        fsync: FsyncPolicy::Always,
        faults: vec![(FaultClass::BitFlip, Use::Always)],
        workload: scenario::WorkloadKind::Queue,
        checkers: &[],
        duration: Duration::from_secs(5),
        compression: false,
        retention: false,
        compact: false,
        groups: false,
        push: false,
        partitions: None,
        open_files_max: None,
        campaign_stride: 1,
        kafka: false,
    };
    let swarm = NemesisSwarm {
        interval_ms: 100,
        outage_ms_max: 300,
        concurrent_faults_max: 3,
        weights: vec![(FaultClass::BitFlip, 4)],
        fsync_latency_ms_max: 0,
        fsync_error_probability_max: 0.0,
        write_error_probability_max: 0.0,
        meta_write_error_probability_max: 0.0,
        packet_loss_max: 0.0,
        clock_skew_ms_max: 0,
    };
    let counts = Nemesis::new(&mut cluster, &scenario, &swarm, None, Vec::new()).run(scenario.duration).await;
    let flips_counted = counts.get(&FaultClass::BitFlip).copied().unwrap_or(0);
    assert!(flips_counted >= 10, "{counts:?}");

    // Replay the flips of the trace (as the history file records them) on the original content.
    let mut expected: BTreeMap<(usize, String), Vec<u8>> = BTreeMap::new();
    let mut hit = BTreeSet::new();
    let mut n_events = 0;
    for event in cluster.trace().events() {
        // Only bit flips (and the note of the forced one) are in this trace.
        let Some(nemesis) = NemesisEvent::of_trace_line(event.time_ns, &event.what) else { continue };
        if nemesis.f == "forced" {
            continue;
        }
        assert_eq!(nemesis.f, "bit_flip", "{nemesis:?}");
        let words: Vec<&str> = nemesis.value.split(' ').collect();
        let broker: usize = words[0].strip_prefix("broker-").unwrap().parse::<usize>().unwrap() - 1;
        let (byte, bit): (usize, u8) = (words[3].parse().unwrap(), words[5].parse().unwrap());
        let content = expected.entry((broker, words[1].to_owned())).or_insert_with(|| original.clone());
        content[byte] ^= 1 << bit;
        hit.insert(broker);
        n_events += 1;
    }
    assert_eq!(n_events, flips_counted);
    assert!(!hit.is_empty() && hit.len() <= (n_brokers - 1) / 2, "brokers hit: {hit:?}");
    for index in 0..n_brokers {
        let disk = &cluster.broker(index).disk;
        let flips_here = expected.keys().filter(|(broker, _)| *broker == index).count();
        assert_eq!(disk.stats().bit_flips > 0, flips_here > 0, "broker {index}");
        for name in ["scratch/a.log", "scratch/b.log"] {
            let want = expected.get(&(index, name.to_owned())).unwrap_or(&original);
            assert_eq!(&disk.durable_content(name).unwrap(), want, "broker {index} {name}: durable bytes");
        }
        assert_eq!(disk.durable_content("scratch/a.index").unwrap(), original, "broker {index}: index rotted");
        assert_eq!(disk.durable_content("scratch/c.log"), None, "broker {index}: unsynced file");
    }
}

/// Three brokers (every one a metadata voter, default config) on a fresh simulated cluster.
fn three_voter_cluster() -> keel_sim::cluster::Cluster {
    use keel::config::BrokerConfig;
    use keel_sim::cluster::{Cluster, BROKER_PORT};

    let mut cluster = Cluster::new(keel_sim::trace::Trace::new(), tokio::time::Instant::now());
    let peers: std::collections::BTreeMap<String, String> =
        (1..=3).map(|number| (number.to_string(), format!("10.0.1.{number}:{BROKER_PORT}"))).collect();
    for disk_seed in 1..=3 {
        cluster.add_broker(BrokerConfig { peers: peers.clone(), ..BrokerConfig::default() }, disk_seed);
    }
    cluster
}

/// Controller elections (ADR 0012) with replication on the real broker shell: 3 brokers, a topic with
/// 6 partitions on all three. A new partition's ISR is its leader alone; the followers join once they
/// have fetched everything. A killed leader is fenced after its heartbeats stop and each partition it
/// led moves to another member of its ISR (never outside it) in a new leader epoch; back, the broker
/// catches up and rejoins every ISR. A clean restart (ctrl-c) of another leader goes through
/// controlled shutdown (not fencing): its partitions move before it stops. No harness violation.
#[madsim::test]
async fn controller_moves_leadership_within_the_isr_through_fencing_and_shutdown() {
    use keel::meta::state::MetadataState;
    use keel::types::NodeId;
    use keel_sim::cluster::Cluster;
    use std::time::Duration;
    use tokio::time::Instant;

    keel_sim::init_logging();
    let mut cluster = three_voter_cluster();
    let bound = Duration::from_secs(30);
    for index in 0..3 {
        assert!(cluster.wait_serving(index, bound).await, "broker {index} serving");
    }
    // Waits (in simulated time) until broker `index`'s applied metadata satisfies `check`.
    async fn wait_for<T>(
        cluster: &Cluster,
        index: usize,
        what: &str,
        check: impl Fn(&MetadataState) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(found) = cluster.meta_slot(index).node.and_then(|node| node.with_state(&check)) {
                return found;
            }
            assert!(Instant::now() < deadline, "broker {index}: {what} within 40 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let addr = cluster.broker_addr(0);
    let admin = cluster.add_client();
    admin
        .spawn(async move {
            let client = keel::client::Client::new(addr, keel_sim::workload::client_config());
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match client.create_topic("t", 6, 3).await {
                    Ok(()) => return,
                    Err(keel::client::ClientError::Server {
                        code: keel::protocol::ErrorCode::TopicAlreadyExists,
                        ..
                    }) => return,
                    Err(error) => assert!(Instant::now() < deadline, "create t: {error}"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .unwrap();
    let full_isr = |state: &MetadataState| {
        let topic = state.topic("t")?;
        topic.partitions.iter().all(|p| p.leader.is_some() && p.isr.len() == 3).then(|| topic.clone())
    };
    let topic = wait_for(&cluster, 0, "topic t with every follower in the ISR", full_isr).await;
    let leaders: std::collections::BTreeSet<NodeId> = topic.partitions.iter().filter_map(|p| p.leader).collect();
    assert!(leaders.len() >= 2, "partitions spread over the brokers: {topic:?}");
    let victim = topic.partitions[0].leader.expect("a leader");
    let victim_index = victim.0 as usize - 1;
    let led_by_victim: Vec<u32> =
        topic.partitions.iter().filter(|p| p.leader == Some(victim)).map(|p| p.partition).collect();

    // Kill -9: fenced after 6 s without heartbeats; its partitions move within their ISR.
    cluster.kill(victim_index);
    let killed_at = Instant::now();
    let survivor_index = (victim_index + 1) % 3;
    let moved = wait_for(&cluster, survivor_index, "the dead leader fenced, its partitions moved", |state| {
        let fenced = state.broker(victim).is_some_and(|broker| broker.fenced);
        let now = state.topic("t")?;
        let all_led = now.partitions.iter().all(|p| p.leader.is_some_and(|leader| leader != victim));
        (fenced && all_led).then(|| now.clone())
    })
    .await;
    let fenced_after = killed_at.elapsed();
    assert!(fenced_after >= Duration::from_secs(6), "fenced before the fence timeout: {fenced_after:?}");
    for partition in &led_by_victim {
        let (before, after) = (&topic.partitions[*partition as usize], &moved.partitions[*partition as usize]);
        let leader = after.leader.unwrap();
        assert!(before.isr.contains(&leader), "elected {leader} outside the ISR {:?}", before.isr);
        assert!(after.leader_epoch > before.leader_epoch, "{after:?}");
        assert!(!after.isr.contains(&victim), "a fenced broker stays out of the ISR: {after:?}");
        assert_eq!(after.unclean_elections, 0);
    }
    println!("fenced {fenced_after:?} after the kill; {} partition(s) moved", led_by_victim.len());

    // Back: it catches up and rejoins every ISR.
    cluster.restart(victim_index);
    assert!(cluster.wait_serving(victim_index, bound).await);
    wait_for(&cluster, survivor_index, "the restarted broker back in every ISR", full_isr).await;

    // Clean restart of a leader: controlled shutdown, not fencing; its partitions move first.
    let second = moved.partitions.iter().filter_map(|p| p.leader).find(|node| *node != victim).expect("a leader");
    let second_index = second.0 as usize - 1;
    cluster.clean_restart(second_index).await;
    let observer_index = (0..3).find(|index| *index != second_index).unwrap();
    wait_for(&cluster, observer_index, "every partition led with a full ISR again", full_isr).await;
    let state = cluster.meta_slot(observer_index).node.unwrap().with_state(|state| state.clone());
    assert_eq!(state.offline_partitions().count(), 0);
    assert!(!state.broker(second).unwrap().fenced, "stopped by controlled shutdown, not by fencing");
    assert!(cluster.violations().is_empty(), "{:?}", cluster.violations());
}

/// Graceful shutdown (ctrl-c) of the broker that leads the metadata group: it hands that leadership
/// over before it proposes its `ControlledShutdown`, so a new leader appends the entry, in a later
/// term. The ISR changes the shutdown sets off (a partition leader proposes re-adding the stopping
/// broker while it still fetches) then reach a leader that takes them; a leader in the middle of a
/// transfer drops them, and before this order acks=all stalled for `isr_change_retry_ms` (1 s) on
/// every partition the broker followed (tests/cluster_process.rs, the rolling restart).
#[madsim::test]
async fn a_stopping_metadata_leader_hands_its_leadership_over_before_its_controlled_shutdown() {
    use keel::meta::state::{encode_command, MetaCommand};
    use std::time::Duration;
    use tokio::time::Instant;

    keel_sim::init_logging();
    let mut cluster = three_voter_cluster();
    for index in 0..3 {
        assert!(cluster.wait_serving(index, Duration::from_secs(30)).await, "broker {index} serving");
    }
    // The metadata leader, its term and its registration, once every broker is registered (eligible:
    // a controlled shutdown needs another broker to hand to).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (leader, term, registered_index) = loop {
        let found = (0..3).find_map(|index| {
            let node = cluster.meta_slot(index).node?;
            let status = node.status();
            let registered = node.with_state(|state| {
                let brokers: Vec<_> = state.brokers().filter(|broker| broker.is_eligible()).collect();
                let own = brokers.iter().find(|broker| broker.node_id == status.node_id);
                own.filter(|_| brokers.len() == 3).map(|broker| broker.registered_index)
            });
            status.role.is_leader().then_some((status.node_id, status.term, registered?))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "a metadata leader with every broker registered within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let leader_index = leader.0 as usize - 1;
    cluster.clean_restart(leader_index).await;

    let shutdown = MetaCommand::ControlledShutdown { node_id: leader, registered_index };
    let hash = keel_model::fnv::fnv1a_64(&encode_command(&shutdown));
    let survivor = cluster.meta_slot((leader_index + 1) % 3).node.expect("a survivor's metadata node");
    let view = survivor.observe().await.expect("the survivor runs");
    let terms: Vec<u64> = view.log.iter().filter(|entry| entry.2 == hash).map(|entry| entry.1).collect();
    assert!(!terms.is_empty(), "no ControlledShutdown of {leader} in the survivor's log");
    assert!(
        terms.iter().all(|appended| *appended > term),
        "the ControlledShutdown of {leader} was appended in term(s) {terms:?}, by {leader} itself (it led term {term})"
    );
    println!("{leader} led term {term}; its ControlledShutdown was appended in term(s) {terms:?}");
    assert!(cluster.violations().is_empty(), "{:?}", cluster.violations());
}

/// Metadata Raft, 3 voters: the leader is killed and restarted over and over. Election safety, log
/// matching, committed entries never lost, applied data identical everywhere; metadata operations
/// linearizable; after the heal one leader, a create through every broker, identical state.
#[madsim::test]
async fn raft_3_voters_leader_kill_and_restart() {
    keel_sim::init_logging();
    driver::run(&scenario::raft_3_voters_leader_kill_and_restart()).await.assert_valid();
}

/// Metadata Raft, 3 voters: power loss (an abrupt stop; every metadata write is synced, so nothing of
/// the store is dropped) and metadata-store write errors: a vote or an acknowledged entry must never
/// be forgotten, and a node must rebuild its state from snapshot and log.
#[madsim::test]
async fn raft_3_voters_power_loss() {
    keel_sim::init_logging();
    driver::run(&scenario::raft_3_voters_power_loss()).await.assert_valid();
}

/// Metadata Raft, 3 voters: every fault class, rates drawn per seed.
#[madsim::test]
async fn raft_3_voters_swarm() {
    keel_sim::init_logging();
    driver::run(&scenario::raft_3_voters_swarm()).await.assert_valid();
}

/// Metadata Raft, 5 voters: minority/majority and bridge partitions, one-way clogs, message delay.
#[madsim::test]
async fn raft_5_voters_partitions_and_clogs() {
    keel_sim::init_logging();
    driver::run(&scenario::raft_5_voters_partitions_and_clogs()).await.assert_valid();
}

/// Metadata Raft, 5 voters: every fault class, rates and mix drawn per seed.
#[madsim::test]
async fn raft_5_voters_swarm() {
    keel_sim::init_logging();
    driver::run(&scenario::raft_5_voters_swarm()).await.assert_valid();
}

/// Every seed in `sim/failing-seeds.jsonl` (seeds that once found a bug) passes. The CI campaign
/// (`sim/tests/campaign.rs`) replays them first too.
#[test]
fn raft_regression_seeds() {
    keel_sim::init_logging();
    let entries = scenario::regression_seeds();
    assert!(!entries.is_empty(), "sim/failing-seeds.jsonl lists no seed");
    for entry in entries {
        let config = scenario::by_name(&entry.scenario).expect("checked by regression_seeds");
        let outcome = run_seed(config, entry.seed);
        if outcome.trace_hash != entry.trace_hash {
            println!(
                "note: {} seed {} drifted (trace hash {:016x}, listed {:016x}): it no longer replays the run \
                 that found its bug",
                entry.scenario, entry.seed, outcome.trace_hash, entry.trace_hash
            );
        }
        outcome.assert_valid();
    }
}

/// Teeth: the checker must notice a broker that acks before fsync. With fsync=never, power loss has
/// to lose acked records on some seed within 200.
#[test]
fn fsync_never_loses_acked_records_on_power_loss() {
    const SEEDS_MAX: u64 = 200;
    for seed in 1..=SEEDS_MAX {
        let outcome = run_seed(scenario::single_broker_power_loss(FsyncPolicy::Never), seed);
        assert!(outcome.acked > 0, "seed {seed}: no send was acked, so the run proves nothing");
        if outcome.lost_acked_writes() > 0 {
            println!(
                "fsync=never lost {} acked records at seed {seed} (after {seed} seeds)",
                outcome.lost_acked_writes()
            );
            return;
        }
    }
    panic!("fsync=never lost no acked record in {SEEDS_MAX} seeds: the power-loss scenario has no teeth");
}

/// The same seed twice gives the same trace hash.
#[test]
fn same_seed_same_trace_hash() {
    let seed = 7;
    let first = run_seed(scenario::single_broker_swarm(), seed);
    let second = run_seed(scenario::single_broker_swarm(), seed);
    assert!(first.acked > 0);
    assert_eq!(first.trace_hash, second.trace_hash, "seed {seed} is not deterministic");
}

/// `KEEL_SIM_HISTORY` (here its option) writes a history file that parses back to the same
/// histories, on which the checkers give the same verdicts and reports as in the run: for the queue
/// workload, the metadata workload and the idempotent queue workload (judged exactly-once; short
/// runs of one seed each).
#[test]
fn history_file_parses_back_with_the_same_verdict() {
    use keel_sim::history_file;
    use keel_sim::outcome::Verdicts;

    let dir = std::env::temp_dir().join(format!("keel-sim-history-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let short = |scenario: Scenario| Scenario { duration: std::time::Duration::from_secs(3), ..scenario };
    for scenario in [
        short(scenario::single_broker_swarm()),
        short(scenario::raft_3_voters_swarm()),
        short(scenario::idempotent_swarm()),
    ] {
        let name = scenario.name;
        let scenario_exactly_once = scenario.checks(scenario::Checker::ExactlyOnce);
        let outcome =
            run_seed_with(scenario, 3, RunOptions { history_dir: Some(dir.clone()), ..RunOptions::default() });
        let path = dir.join(format!("{name}-3.jsonl"));
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = history_file::parse(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert!(!parsed.nemesis.is_empty(), "{name}: no nemesis events in the file");
        assert!(parsed.queue.is_some() || !parsed.metadata.is_empty(), "{name}: an empty history");
        assert_eq!(parsed.exactly_once, scenario_exactly_once, "{name}: the checker's mode");
        let verdicts = Verdicts::judge(&parsed);
        assert_eq!(verdicts.is_valid(), outcome.verdicts.is_valid(), "{name}");
        assert_eq!(format!("{verdicts:?}"), format!("{:?}", outcome.verdicts), "{name}: the reports differ");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// ISR (RF 3, min ISR 2): partition leaders killed again and again during produce.
#[madsim::test]
async fn isr_3_leader_kill() {
    keel_sim::init_logging();
    driver::run(&scenario::isr_3_leader_kill()).await.assert_valid();
}

/// ISR: every broker loses power at the same moment; nothing acknowledged is lost.
#[madsim::test]
async fn isr_3_all_power_loss() {
    keel_sim::init_logging();
    driver::run(&scenario::isr_3_all_power_loss()).await.assert_valid();
}

/// ISR: a leader cut off from the controller but reachable by clients must not acknowledge alone.
#[madsim::test]
async fn isr_3_zombie_leader() {
    keel_sim::init_logging();
    driver::run(&scenario::isr_3_zombie_leader()).await.assert_valid();
}

/// Two failovers in quick succession (KIP-101): a partition's leader crashes, the controller elects
/// another from the ISR, and that one crashes within 0-2 s while the first is down or just back. The
/// last replica standing refuses `acks=all` below min ISR (no ack while the controller's ISR is below
/// it), nothing acknowledged is lost, and every ISR is whole again after the heal.
#[madsim::test]
async fn isr_3_double_failover() {
    keel_sim::init_logging();
    driver::run(&scenario::isr_3_double_failover()).await.assert_valid();
}

/// A slow follower: its replicas' syncs stall past `replica_lag_ms_max`; the controller's metadata
/// must show it leave an ISR (shrink) and come back (expand) on every seed, and every ISR whole after
/// the heal; no ack while an ISR is below the minimum; nothing acknowledged lost.
#[madsim::test]
async fn isr_3_slow_follower() {
    keel_sim::init_logging();
    driver::run(&scenario::isr_3_slow_follower()).await.assert_valid();
}

/// ISR: clogs, pauses, delay and slow fsyncs (followers leave the ISR and come back).
#[madsim::test]
async fn isr_3_clogs_pauses_delay() {
    keel_sim::init_logging();
    driver::run(&scenario::isr_3_clogs_pauses_delay()).await.assert_valid();
}

/// ISR: graceful restarts one after another under load.
#[madsim::test]
async fn isr_3_rolling_restart() {
    keel_sim::init_logging();
    driver::run(&scenario::isr_3_rolling_restart()).await.assert_valid();
}

/// ISR: retention deletes segments on every replica under faults; nothing acknowledged at or above
/// the final log start is lost.
#[madsim::test]
async fn isr_3_retention() {
    keel_sim::init_logging();
    driver::run(&scenario::isr_3_retention()).await.assert_valid();
}

/// ISR: bit rot on one broker's durable segments: detected, never served, repaired from the leader.
#[madsim::test]
async fn isr_3_bit_flips() {
    keel_sim::init_logging();
    driver::run(&scenario::isr_3_bit_flips()).await.assert_valid();
}

/// ISR, 5 brokers: every fault class, rates drawn per seed.
#[madsim::test]
async fn isr_5_swarm() {
    keel_sim::init_logging();
    driver::run(&scenario::isr_5_swarm()).await.assert_valid();
}

/// Idempotent producers (exactly-once checker), partition leaders killed mid-batch again and again:
/// batches sent again to the next leader are appended once, in order.
#[madsim::test]
async fn idempotent_leader_kill() {
    keel_sim::init_logging();
    driver::run(&scenario::idempotent_leader_kill()).await.assert_valid();
}

/// Idempotent producers cut off from a partition leader mid-batch (both ways, or only its answers)
/// and leaders cut off from their followers: copies sent again, and stale requests delivered when a
/// link opens, are recognised.
#[madsim::test]
async fn idempotent_partitions() {
    keel_sim::init_logging();
    driver::run(&scenario::idempotent_partitions()).await.assert_valid();
}

/// Idempotent producers, every broker losing power at once (fsync=always): the dedup state comes
/// back from the logs.
#[madsim::test]
async fn idempotent_all_power_loss() {
    keel_sim::init_logging();
    driver::run(&scenario::idempotent_all_power_loss()).await.assert_valid();
}

/// Idempotent producers, 3 brokers, every fault class that applies, rates drawn per seed.
#[madsim::test]
async fn idempotent_swarm() {
    keel_sim::init_logging();
    driver::run(&scenario::idempotent_swarm()).await.assert_valid();
}

/// Idempotent producers speaking Kafka's wire protocol beside native ones (ADR 0026), partition
/// leaders killed, brokers crashing, losing power and cut off: exactly once through both listeners.
#[madsim::test]
async fn kafka_idempotent_failover() {
    keel_sim::init_logging();
    driver::run(&scenario::kafka_idempotent_failover()).await.assert_valid();
}

/// Consumer groups under member crashes, coordinator failover, partitions and power loss: no
/// partition owned twice in a generation, committed offsets never go back, at-least-once.
#[madsim::test]
async fn groups_3() {
    keel_sim::init_logging();
    driver::run(&scenario::groups_3()).await.assert_valid();
}

/// Compaction on a keyed, compacted topic under crashes, power loss, pauses and cuts: nothing
/// acknowledged is lost unless a later record of its key supersedes it.
#[madsim::test]
async fn compact_3() {
    keel_sim::init_logging();
    driver::run(&scenario::compact_3()).await.assert_valid();
}

/// Push subscriptions with small credit windows under leader kills, power loss, pauses and cuts:
/// pushes hold to what polls do (no skip, no duplicate), and every subscriber catches up.
#[madsim::test]
async fn push_3() {
    keel_sim::init_logging();
    driver::run(&scenario::push_3()).await.assert_valid();
}

/// 3,000 partitions on one broker with 96 partition files open at once, under power loss, crashes,
/// graceful restarts and slow fsyncs: handles closed and reopened, lazy opens, coalesced syncs;
/// nothing acknowledged lost.
#[madsim::test]
async fn many_partitions_small_file_budget() {
    keel_sim::init_logging();
    driver::run(&scenario::many_partitions_small_file_budget()).await.assert_valid();
}

/// 300 partitions of 3 replicas with 32 partition files open per broker, under partition leader
/// kills, crashes, power loss, graceful restarts and slow fsyncs: followers' background opens and
/// fetches share the budget with the leaders' appends; nothing acknowledged with acks=all lost.
#[madsim::test]
async fn isr_3_many_partitions_small_file_budget() {
    keel_sim::init_logging();
    driver::run(&scenario::isr_3_many_partitions_small_file_budget()).await.assert_valid();
}
