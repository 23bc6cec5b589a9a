//! Table tests for the replica core's arithmetic (raft-rs's `testdata/` style): every row of
//! `src/partition/testdata/hw_isr.txt` is checked against the broker's functions and, where the
//! model has one, against the independent reference in `keel_model::replicated_log`.

use std::collections::BTreeMap;

use keel::leader_epochs::{EpochEndOffset, LeaderEpochs};
use keel::partition::replica::{
    divergence_truncation_offset, is_lagging, isr_for_min_check, maximal_isr, may_join_isr, supported_high_watermark,
};
use keel::types::{LeaderEpoch, NodeId, Offset};
use keel_model::replicated_log as model;

const TABLE: &str = include_str!("../src/partition/testdata/hw_isr.txt");

struct Row<'a> {
    line: usize,
    kind: &'a str,
    args: BTreeMap<&'a str, &'a str>,
    expected: &'a str,
}

fn rows() -> Vec<Row<'static>> {
    let mut rows = Vec::new();
    for (index, raw) in TABLE.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (left, expected) = line.split_once(" -> ").unwrap_or_else(|| panic!("line {}: no ` -> `", index + 1));
        let mut words = left.split_whitespace();
        let kind = words.next().expect("a kind");
        let args = words
            .map(|word| word.split_once('=').unwrap_or_else(|| panic!("line {}: `{word}` is not key=value", index + 1)))
            .collect();
        rows.push(Row { line: index + 1, kind, args, expected: expected.trim() });
    }
    rows
}

impl Row<'_> {
    fn get(&self, key: &str) -> &str {
        self.args.get(key).unwrap_or_else(|| panic!("line {}: missing {key}=", self.line))
    }

    fn int(&self, key: &str) -> i64 {
        self.get(key).parse().unwrap_or_else(|_| panic!("line {}: {key} is not a number", self.line))
    }

    fn nodes(&self, key: &str) -> Option<Vec<NodeId>> {
        self.args.get(key).map(|list| list.split(',').map(|id| NodeId(id.parse().expect("a node id"))).collect())
    }

    /// `(e,s),(e,s)` pairs.
    fn pairs(&self, key: &str) -> Vec<(i32, i64)> {
        let text = self.get(key);
        if text.is_empty() {
            return Vec::new();
        }
        text.trim_start_matches('(')
            .trim_end_matches(')')
            .split("),(")
            .map(|pair| {
                let (epoch, start) = pair.split_once(',').expect("(epoch,start)");
                (epoch.parse().expect("epoch"), start.parse().expect("start"))
            })
            .collect()
    }
}

fn cache(pairs: &[(i32, i64)]) -> LeaderEpochs {
    let mut epochs = LeaderEpochs::new();
    for &(epoch, start) in pairs {
        epochs.assign(LeaderEpoch(epoch), Offset(start)).expect("an ordered table cache");
    }
    epochs
}

fn check_hw(row: &Row) {
    let leader = NodeId(row.int("leader") as u64);
    let stable = Offset(row.int("stable"));
    let isr = row.nodes("isr").expect("isr=");
    let pending = row.nodes("pending");
    let durable: BTreeMap<NodeId, Option<Offset>> = row
        .get("durable")
        .split(',')
        .map(|entry| {
            let (node, end) = entry.split_once(':').expect("node:end");
            (NodeId(node.parse().unwrap()), (end != "-").then(|| Offset(end.parse().unwrap())))
        })
        .collect();
    let members = maximal_isr(&isr, pending.as_deref());
    let got = supported_high_watermark(leader, stable, &members, |node| durable.get(&node).copied().flatten());
    let got = got.map_or("none".to_string(), |offset| offset.0.to_string());
    assert_eq!(got, row.expected, "line {}: replica core", row.line);
    let ends: Vec<Option<i64>> = members
        .iter()
        .map(|node| if *node == leader { Some(stable.0) } else { durable.get(node).copied().flatten().map(|o| o.0) })
        .collect();
    let model = model::high_watermark_over(&ends).map_or("none".to_string(), |offset| offset.to_string());
    assert_eq!(model, row.expected, "line {}: model", row.line);
}

fn check_end_offset_for(row: &Row) {
    let pairs = row.pairs("epochs");
    let (log_end, epoch) = (row.int("leo"), row.int("epoch") as i32);
    let got = match cache(&pairs).end_offset_for(LeaderEpoch(epoch), Offset(log_end)) {
        EpochEndOffset { epoch: Some(found), end_offset: Some(end) } => format!("({},{})", found.0, end.0),
        EpochEndOffset { epoch: None, end_offset: None } => "undefined".to_string(),
        other => panic!("line {}: a half-defined answer {other:?}", row.line),
    };
    assert_eq!(got, row.expected, "line {}: leader_epochs", row.line);
    let model =
        model::end_offset_for(&pairs, epoch, log_end).map_or("undefined".to_string(), |(e, o)| format!("({e},{o})"));
    assert_eq!(model, row.expected, "line {}: model", row.line);
}

fn check_truncate(row: &Row) {
    let ours = cache(&row.pairs("ours"));
    let log_end = Offset(row.int("leo"));
    let leader = row.get("leader");
    let (found, end) = match leader.strip_prefix("undefined:") {
        Some(start) => (None, Offset(start.parse().unwrap())),
        None => {
            let pair = row.pairs("leader")[0];
            (Some(LeaderEpoch(pair.0)), Offset(pair.1))
        }
    };
    let got = divergence_truncation_offset(&ours, Offset(0), log_end, found, end);
    assert_eq!(got.0.to_string(), row.expected, "line {}", row.line);
}

#[test]
fn replica_arithmetic_matches_the_table() {
    let rows = rows();
    let mut checked: BTreeMap<&str, usize> = BTreeMap::new();
    for row in &rows {
        match row.kind {
            "hw" => check_hw(row),
            "min_isr" => {
                let got = isr_for_min_check(&row.nodes("isr").unwrap(), row.nodes("pending").as_deref());
                assert_eq!(got.to_string(), row.expected, "line {}", row.line);
            }
            "join" => {
                let got =
                    may_join_isr(Offset(row.int("durable")), Offset(row.int("hw")), Offset(row.int("epoch_start")));
                assert_eq!(if got { "yes" } else { "no" }, row.expected, "line {}", row.line);
            }
            "lagging" => {
                let fetch = (row.get("fetch") != "-").then(|| Offset(row.int("fetch")));
                let got = is_lagging(
                    fetch,
                    Offset(row.int("leader_end")),
                    row.int("caught_up"),
                    row.int("now"),
                    row.int("lag_max"),
                );
                assert_eq!(if got { "yes" } else { "no" }, row.expected, "line {}", row.line);
            }
            "end_offset_for" => check_end_offset_for(row),
            "truncate" => check_truncate(row),
            other => panic!("line {}: unknown row kind {other}", row.line),
        }
        *checked.entry(row.kind).or_default() += 1;
    }
    // The table covers every kind (a renamed kind must not silently skip its rows).
    for kind in ["hw", "min_isr", "join", "lagging", "end_offset_for", "truncate"] {
        assert!(checked.get(kind).copied().unwrap_or(0) >= 3, "too few `{kind}` rows: {checked:?}");
    }
}
