//! The coordinator core's rules, driven as the shell drives it: requests, ticks, append outcomes.

use super::*;

const SESSION_MS: u32 = 1_000;

/// A coordinator and the shell's bookkeeping: appends not yet reported, and replies by request.
struct Harness {
    core: GroupCoordinator,
    now_ms: i64,
    next_id: RequestId,
    appends: Vec<Append>,
    /// Every record whose append was reported committed, in order: what a reload reads.
    log: Vec<GroupRecord>,
    replies: BTreeMap<RequestId, Reply>,
}

impl Harness {
    fn new() -> Harness {
        Harness::loaded(Vec::new())
    }

    /// A core loaded from `log` behind a marker at offset `log.len()` (as the shell's would be).
    fn loaded(log: Vec<GroupRecord>) -> Harness {
        let core = GroupCoordinator::load(CoordinatorConfig::default(), 7 + log.len() as i64, &log, 0);
        Harness { core, now_ms: 0, next_id: 0, appends: Vec::new(), log, replies: BTreeMap::new() }
    }

    fn drain(&mut self) {
        let ready = self.core.take_ready();
        self.appends.extend(ready.appends);
        for (id, reply) in ready.replies {
            assert!(self.replies.insert(id, reply).is_none(), "request {id} answered twice");
        }
    }

    fn send(&mut self, request: Request) -> RequestId {
        self.next_id += 1;
        self.core.step(Input::Request { id: self.next_id, request, now_ms: self.now_ms });
        self.drain();
        self.next_id
    }

    fn reply(&mut self, id: RequestId) -> Option<Reply> {
        self.replies.remove(&id)
    }

    /// Reports every append so far as `outcome` (committed ones go to the log).
    fn settle(&mut self, outcome: AppendOutcome) {
        while !self.appends.is_empty() {
            for append in std::mem::take(&mut self.appends) {
                if outcome == AppendOutcome::Committed {
                    self.log.extend(append.records.clone());
                }
                self.core.step(Input::Appended { token: append.token, outcome: outcome.clone() });
                self.drain();
            }
        }
    }

    fn tick(&mut self, ms: i64) {
        self.now_ms += ms;
        self.core.step(Input::Tick { now_ms: self.now_ms });
        self.drain();
    }

    /// A join; one without a member id first asks for one, as a client does (KIP-394).
    fn join(&mut self, member_id: &str, topics: &[&str]) -> RequestId {
        if member_id.is_empty() {
            let first = self.join_request("", topics);
            let Some(Reply::MemberIdRequired(named)) = self.reply(first) else {
                panic!("a new member gets an id first")
            };
            return self.join_request(&named, topics);
        }
        self.join_request(member_id, topics)
    }

    fn join_request(&mut self, member_id: &str, topics: &[&str]) -> RequestId {
        self.send(Request::Join(JoinRequest {
            group: "g".into(),
            member_id: member_id.into(),
            client_id: "c".into(),
            session_timeout_ms: SESSION_MS,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            assignors: vec![Assignor::Range],
            partitions: BTreeMap::from([("t".to_string(), 4), ("u".to_string(), 2)]),
        }))
    }

    fn heartbeat(&mut self, generation: i32, member_id: &str) -> Reply {
        let id = self.send(Request::Heartbeat { group: "g".into(), generation, member_id: member_id.into() });
        self.reply(id).expect("heartbeats are answered at once")
    }

    fn commit(&mut self, generation: i32, member_id: &str, offsets: &[(&str, u32, i64)]) -> RequestId {
        let offsets = offsets.iter().map(|(t, p, o)| ((t.to_string(), *p), *o)).collect();
        self.send(Request::Commit { group: "g".into(), generation, member_id: member_id.into(), offsets })
    }

    fn committed(&mut self) -> Vec<(TopicPartition, i64)> {
        let id = self.send(Request::FetchOffsets { group: "g".into() });
        match self.reply(id) {
            Some(Reply::Offsets(offsets)) => offsets,
            other => panic!("{other:?}"),
        }
    }

    fn describe(&mut self) -> GroupDescription {
        let id = self.send(Request::Describe { group: "g".into() });
        match self.reply(id) {
            Some(Reply::Described(description)) => *description,
            other => panic!("{other:?}"),
        }
    }
}

fn joined(reply: Option<Reply>) -> (i32, String, Vec<TopicPartition>) {
    match reply {
        Some(Reply::Joined { generation, member_id, assignment, .. }) => (generation, member_id, assignment),
        other => panic!("expected a join answer, got {other:?}"),
    }
}

fn code(reply: Option<Reply>) -> ErrorCode {
    match reply {
        Some(Reply::Error { code, .. }) => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// One member joined and its generation persisted.
fn one_member() -> (Harness, String) {
    let mut h = Harness::new();
    let id = h.join("", &["t"]);
    assert_eq!(h.reply(id), None, "answered only once the generation is committed");
    assert_eq!(h.appends.len(), 1);
    h.settle(AppendOutcome::Committed);
    let (generation, member, assignment) = joined(h.reply(id));
    assert_eq!(generation, 1);
    assert_eq!(assignment.len(), 4);
    (h, member)
}

/// Two members in generation 2 (the first alone had generation 1), 2 partitions of t each.
fn two_members() -> (Harness, String, String) {
    let (mut h, a) = one_member();
    let b_join = h.join("", &["t"]);
    assert_eq!(code(Some(h.heartbeat(1, &a))), ErrorCode::RebalanceInProgress);
    let a_join = h.join(&a, &["t"]);
    h.settle(AppendOutcome::Committed);
    let (ga, _, owned_a) = joined(h.reply(a_join));
    let (gb, b, owned_b) = joined(h.reply(b_join));
    assert_eq!((ga, gb), (2, 2));
    assert_eq!((owned_a.len(), owned_b.len()), (2, 2));
    assert!(owned_a.iter().all(|p| !owned_b.contains(p)), "{owned_a:?} {owned_b:?}");
    (h, a, b)
}

#[test]
fn a_join_is_answered_only_after_its_generation_is_committed() {
    let (mut h, member) = one_member();
    assert_eq!(h.heartbeat(1, &member), Reply::Done);
    assert!(member.starts_with("c-7-"), "{member}");
    let description = h.describe();
    assert_eq!((description.state, description.generation, description.members.len()), (GroupState::Stable, 1, 1));
    assert!(matches!(&h.log[..], [GroupRecord::Generation { generation: 1, .. }]));
}

#[test]
fn a_rebalance_waits_for_every_member_and_splits_the_partitions() {
    let (mut h, a, b) = two_members();
    assert_eq!(h.heartbeat(2, &a), Reply::Done);
    assert_eq!(h.heartbeat(2, &b), Reply::Done);
    assert_eq!(code(Some(h.heartbeat(1, &a))), ErrorCode::IllegalGeneration);
    assert_eq!(code(Some(h.heartbeat(2, "nobody"))), ErrorCode::UnknownMemberId);
}

#[test]
fn a_member_that_misses_its_session_is_removed_and_the_rest_rebalance() {
    let (mut h, a, b) = two_members();
    h.tick(600);
    assert_eq!(h.heartbeat(2, &a), Reply::Done);
    h.tick(600); // b silent for 1200 ms > 1000
    assert_eq!(code(Some(h.heartbeat(2, &a))), ErrorCode::RebalanceInProgress);
    assert_eq!(code(Some(h.heartbeat(2, &b))), ErrorCode::UnknownMemberId);
    let rejoin = h.join(&a, &["t"]);
    h.settle(AppendOutcome::Committed);
    let (generation, _, owned) = joined(h.reply(rejoin));
    assert_eq!((generation, owned.len()), (3, 4));
}

#[test]
fn members_that_do_not_rejoin_by_the_deadline_are_removed() {
    let (mut h, a, b) = two_members();
    let c_join = h.join("", &["t"]);
    let a_join = h.join(&a, &["t"]);
    // b keeps heartbeating but never rejoins.
    h.tick(500);
    assert_eq!(code(Some(h.heartbeat(2, &b))), ErrorCode::RebalanceInProgress);
    assert!(h.appends.is_empty(), "still waiting for b");
    h.tick(600);
    h.settle(AppendOutcome::Committed);
    let (generation, _, owned_a) = joined(h.reply(a_join));
    let (_, _, owned_c) = joined(h.reply(c_join));
    assert_eq!((generation, owned_a.len() + owned_c.len()), (3, 4));
    assert_eq!(code(Some(h.heartbeat(3, &b))), ErrorCode::UnknownMemberId);
}

/// A member with nothing to commit (a zombie without partitions sent one) is answered at once,
/// without an append: a batch holds at least one record (`groups_3` seed 9 once killed the
/// coordinator task this way).
#[test]
fn an_empty_commit_is_answered_without_an_append() {
    let (mut h, a, _) = two_members();
    let empty = h.commit(2, &a, &[]);
    assert_eq!(h.reply(empty), Some(Reply::Done));
    assert!(h.appends.is_empty(), "nothing appended for an empty commit");
}

#[test]
fn a_commit_from_an_older_generation_is_refused() {
    let (mut h, a, b) = two_members();
    let owned_a = h.describe().members.into_iter().find(|m| m.id == a).unwrap().assignment;
    let (topic, partition) = owned_a[0].clone();
    let ok = h.commit(2, &a, &[(&topic, partition, 10)]);
    assert_eq!(h.reply(ok), None, "answered once committed");
    h.settle(AppendOutcome::Committed);
    assert_eq!(h.reply(ok), Some(Reply::Done));
    let stale = h.commit(1, &a, &[(&topic, partition, 20)]);
    assert_eq!(code(h.reply(stale)), ErrorCode::IllegalGeneration);
    assert!(h.appends.is_empty(), "nothing appended for a stale commit");
    let not_owned = h.commit(2, &b, &[(&topic, partition, 20)]);
    assert_eq!(code(h.reply(not_owned)), ErrorCode::PartitionNotAssigned);
    let back = h.commit(2, &a, &[(&topic, partition, 5)]);
    assert_eq!(code(h.reply(back)), ErrorCode::OffsetRegression);
    let gone = h.commit(2, "nobody", &[(&topic, partition, 50)]);
    assert_eq!(code(h.reply(gone)), ErrorCode::UnknownMemberId);
    assert_eq!(h.committed(), vec![((topic, partition), 10)]);
}

#[test]
fn commits_are_accepted_while_preparing_and_the_round_waits_for_them() {
    let (mut h, a) = one_member();
    let c = h.commit(1, &a, &[("t", 0, 3)]);
    let b_join = h.join("", &["t"]);
    assert_eq!(code(Some(h.heartbeat(1, &a))), ErrorCode::RebalanceInProgress);
    let late = h.commit(1, &a, &[("t", 1, 4)]);
    let a_join = h.join(&a, &["t"]);
    // Everyone joined, but two commits are in flight: no generation record yet.
    assert_eq!(h.appends.len(), 2, "{:?}", h.appends);
    let first = h.appends.remove(0);
    h.log.extend(first.records.clone());
    h.core.step(Input::Appended { token: first.token, outcome: AppendOutcome::Committed });
    h.drain();
    assert_eq!(h.reply(c), Some(Reply::Done));
    assert_eq!(h.appends.len(), 1, "the second commit still holds the round");
    h.settle(AppendOutcome::Committed);
    assert_eq!(h.reply(late), Some(Reply::Done));
    joined(h.reply(a_join));
    joined(h.reply(b_join));
    let generation_at = h.log.iter().position(|r| matches!(r, GroupRecord::Generation { generation: 2, .. })).unwrap();
    assert_eq!(generation_at, h.log.len() - 1, "the generation comes after every commit of the one before");
}

#[test]
fn a_generation_whose_append_fails_is_never_handed_out_and_its_number_is_skipped() {
    let mut h = Harness::new();
    let first = h.join("", &["t"]);
    h.settle(AppendOutcome::Failed { code: ErrorCode::NotEnoughReplicas, message: "isr".into() });
    assert_eq!(code(h.reply(first)), ErrorCode::RebalanceInProgress);
    // The member was named before the failure; it joins again with its id... which it never learnt,
    // so it joins as new (its first id expires at the deadline).
    let again = h.join("", &["t"]);
    h.tick(1_100);
    h.settle(AppendOutcome::Committed);
    let (generation, _, owned) = joined(h.reply(again));
    assert_eq!((generation, owned.len()), (2, 4), "1 was attempted, so 2");
}

#[test]
fn a_reload_rebuilds_generations_and_offsets_and_members_keep_their_generation() {
    let (mut h, a, b) = two_members();
    let owned_a = h.describe().members.into_iter().find(|m| m.id == a).unwrap().assignment;
    let (topic, partition) = owned_a[0].clone();
    h.commit(2, &a, &[(&topic, partition, 42)]);
    h.settle(AppendOutcome::Committed);
    let mut reloaded = Harness::loaded(h.log.clone());
    assert_eq!(reloaded.committed(), vec![((topic.clone(), partition), 42)]);
    assert_eq!(reloaded.heartbeat(2, &a), Reply::Done);
    assert_eq!(reloaded.heartbeat(2, &b), Reply::Done);
    let regress = reloaded.commit(2, &a, &[(&topic, partition, 41)]);
    assert_eq!(code(reloaded.reply(regress)), ErrorCode::OffsetRegression);
    // A new member: generation 3, never a number the old coordinator used.
    let c_join = reloaded.join("", &["t"]);
    let a_join = reloaded.join(&a, &["t"]);
    let b_join = reloaded.join(&b, &["t"]);
    reloaded.settle(AppendOutcome::Committed);
    for id in [a_join, b_join, c_join] {
        assert_eq!(joined(reloaded.reply(id)).0, 3);
    }
}

#[test]
fn resets_need_an_empty_group_and_may_go_back() {
    let (mut h, a) = one_member();
    h.commit(1, &a, &[("t", 0, 30)]);
    h.settle(AppendOutcome::Committed);
    let refused = h.send(Request::Reset { group: "g".into(), offsets: vec![(("t".into(), 0), 0)] });
    assert_eq!(code(h.reply(refused)), ErrorCode::GroupNotEmpty);
    let leave = h.send(Request::Leave { group: "g".into(), member_id: a.clone() });
    assert_eq!(h.reply(leave), Some(Reply::Done));
    // While the empty generation is written the group has no members: a reset is told to retry,
    // not that the group has members.
    let early = h.send(Request::Reset { group: "g".into(), offsets: vec![(("t".into(), 0), 0)] });
    assert_eq!(code(h.reply(early)), ErrorCode::Busy);
    h.settle(AppendOutcome::Committed); // the empty generation
    assert_eq!(h.describe().state, GroupState::Empty);
    assert_eq!(h.describe().generation, 2);
    let stale = h.commit(1, &a, &[("t", 0, 40)]);
    assert_eq!(code(h.reply(stale)), ErrorCode::UnknownMemberId);
    let reset = h.send(Request::Reset { group: "g".into(), offsets: vec![(("t".into(), 0), 5)] });
    h.settle(AppendOutcome::Committed);
    assert_eq!(h.reply(reset), Some(Reply::Done));
    assert_eq!(h.committed(), vec![(("t".into(), 0), 5)]);
    // Reloading applies the reset the same way.
    assert_eq!(Harness::loaded(h.log.clone()).committed(), vec![(("t".into(), 0), 5)]);
    // A commit outside any generation is allowed while the group is empty, never backwards.
    let simple = h.commit(NO_GENERATION, "", &[("t", 0, 4)]);
    assert_eq!(code(h.reply(simple)), ErrorCode::OffsetRegression);
}

#[test]
fn an_unknown_outcome_asks_for_a_reload_and_unload_answers_everything_waiting() {
    let (mut h, a) = one_member();
    let commit = h.commit(1, &a, &[("t", 0, 3)]);
    let b_join = h.join("", &["t"]);
    h.appends.clear();
    h.core.step(Input::Appended { token: 2, outcome: AppendOutcome::Unknown { message: "timeout".into() } });
    let ready = h.core.take_ready();
    assert!(ready.reload);
    assert_eq!(ready.replies.len(), 1);
    assert_eq!(ready.replies[0].0, commit);
    let replies =
        std::mem::replace(&mut h.core, GroupCoordinator::load(CoordinatorConfig::default(), 9, &[], 0)).unload();
    assert_eq!(replies.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![b_join]);
    assert!(matches!(replies[0].1, Reply::Error { code: ErrorCode::NotCoordinator, .. }));
}

#[test]
fn bad_joins_are_refused_with_their_reason() {
    let mut h = Harness::new();
    let bad = |session_timeout_ms, topics: &[&str], assignors: Vec<Assignor>, member: &str| {
        Request::Join(JoinRequest {
            group: "g".into(),
            member_id: member.into(),
            client_id: "c".into(),
            session_timeout_ms,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            assignors,
            partitions: BTreeMap::new(),
        })
    };
    let id = h.send(bad(10, &["t"], vec![Assignor::Range], ""));
    assert_eq!(code(h.reply(id)), ErrorCode::InvalidSessionTimeout);
    let id = h.send(bad(1_000, &[], vec![Assignor::Range], ""));
    assert_eq!(code(h.reply(id)), ErrorCode::InvalidRequest);
    let id = h.send(bad(1_000, &["t"], vec![], ""));
    assert_eq!(code(h.reply(id)), ErrorCode::InvalidRequest);
    let id = h.send(bad(1_000, &["t"], vec![Assignor::Range], "ghost"));
    assert_eq!(code(h.reply(id)), ErrorCode::UnknownMemberId);
    let id = h.send(Request::Describe { group: "g".into() });
    assert_eq!(code(h.reply(id)), ErrorCode::UnknownGroup, "no phantom group from refused joins");
    let id = h.send(Request::Commit {
        group: "g".into(),
        generation: -1,
        member_id: String::new(),
        offsets: vec![(("t".into(), 0), -3)],
    });
    assert_eq!(code(h.reply(id)), ErrorCode::InvalidRequest);
}

#[test]
fn a_member_that_leaves_mid_round_is_not_in_the_generation() {
    let (mut h, a, b) = two_members();
    let c_join = h.join("", &["t"]);
    let a_join = h.join(&a, &["t"]);
    let leave = h.send(Request::Leave { group: "g".into(), member_id: b.clone() });
    assert_eq!(h.reply(leave), Some(Reply::Done));
    h.settle(AppendOutcome::Committed);
    let (generation, _, owned_a) = joined(h.reply(a_join));
    let (_, _, owned_c) = joined(h.reply(c_join));
    assert_eq!(generation, 3);
    assert_eq!(owned_a.len() + owned_c.len(), 4);
    assert_eq!(h.describe().members.len(), 2);
}

#[test]
fn an_empty_commit_or_reset_is_answered_without_an_append() {
    let (mut h, a) = one_member();
    let commit = h.commit(1, &a, &[]);
    assert_eq!(h.reply(commit), Some(Reply::Done));
    let stale = h.commit(0, &a, &[]);
    assert_eq!(code(h.reply(stale)), ErrorCode::IllegalGeneration, "still checked");
    let reset = h.send(Request::Reset { group: "other".into(), offsets: vec![] });
    assert_eq!(h.reply(reset), Some(Reply::Done));
    assert!(h.appends.is_empty());
}

#[test]
fn a_new_member_exists_only_once_it_joins_with_its_id() {
    let mut h = Harness::new();
    let first = h.join_request("", &["t"]);
    let Some(Reply::MemberIdRequired(named)) = h.reply(first) else { panic!() };
    // The answer was lost: no member, no round, nothing to wait for.
    let id = h.send(Request::Describe { group: "g".into() });
    assert_eq!(code(h.reply(id)), ErrorCode::UnknownGroup);
    assert!(h.appends.is_empty());
    // Used in time, the id joins; an id unused for a session timeout is forgotten.
    let again = h.join_request(&named, &["t"]);
    h.settle(AppendOutcome::Committed);
    assert_eq!(joined(h.reply(again)).1, named);
    let late = h.join_request("", &["t"]);
    let Some(Reply::MemberIdRequired(unused)) = h.reply(late) else { panic!() };
    h.tick(i64::from(SESSION_MS) + 1);
    let expired = h.join_request(&unused, &["t"]);
    assert_eq!(code(h.reply(expired)), ErrorCode::UnknownMemberId);
    // Another group's id is not this group's.
    let other = h.send(Request::Join(JoinRequest {
        group: "other".into(),
        member_id: String::new(),
        client_id: "c".into(),
        session_timeout_ms: SESSION_MS,
        topics: BTreeSet::from(["t".to_string()]),
        assignors: vec![Assignor::Range],
        partitions: BTreeMap::new(),
    }));
    let Some(Reply::MemberIdRequired(foreign)) = h.reply(other) else { panic!() };
    let stolen = h.join_request(&foreign, &["t"]);
    assert_eq!(code(h.reply(stolen)), ErrorCode::UnknownMemberId);
}
