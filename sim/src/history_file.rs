//! The history file every scenario writes with `KEEL_SIM_HISTORY=DIR`: one JSON Lines file per run,
//! `DIR/<scenario>-<seed>.jsonl`, that an outside checker (or [`parse`] and the same checkers) can
//! judge.
//!
//! In: the run's queue [`History`] (if its workload has one), its metadata events with what the
//! client said, the final topic list (if read), and the nemesis's trace lines. Out: the text, and
//! back from it a [`HistoryFile`].
//!
//! # Format
//! One event per line, in time order (queue events in their recorded order), `index` counting every
//! line from 0:
//! - Queue events exactly as in `shared/HISTORY-FORMAT.md` (`f` = `send`, `poll`, `assign`,
//!   `subscribe`, `crash`; numeric `process`).
//! - Metadata operations, an `invoke` line and a completion line (`ok`, `fail` or `info`) per
//!   operation, numeric `process` (one operation outstanding per process), `f` and `value`:
//!
//!   | `f`        | invoke `value`                      | completion `value` (ok)                       |
//!   |------------|-------------------------------------|-----------------------------------------------|
//!   | `create`   | `{"topic": "t", "partitions": 3}`   | the same                                      |
//!   | `delete`   | `{"topic": "t"}`                    | the same                                      |
//!   | `describe` | `{"topic": "t"}`                    | `{"topic": "t", "partitions": 3}` (or `null` partitions: no such topic) |
//!   | `list`     | `null`                              | `["a", "b"]`                                  |
//!
//!   A `fail` or `info` completion carries the invoke's value, and `"error"` with what the client
//!   said. The final topic list the checker compares with is one line
//!   `{"process": "final", "type": "ok", "f": "list", "value": [...]}`.
//! - Faults, as Jepsen records them: `{"process": "nemesis", "type": "info", "f": "<action>",
//!   "value": "<what it hit>"}`, one per nemesis line of the trace (`f` is the action: `kill`,
//!   `power_loss`, `restart`, `pause`, `resume`, `clog`, `clog_link`, `partition`, `disk_faults`,
//!   `bit_flip`, `heal`, ...). A `bit_flip` is instantaneous; its value says where:
//!   `"broker-2 topics/t-0/00000000000000000000.log byte 1234 bit 5"`. Checkers ignore them; reports and plots shade fault intervals with them.
//! - How the queue history is to be judged, when not the default: one line first,
//!   `{"process": "checker", "type": "info", "f": "options", "value": {"exactly_once": true}}`
//!   for a run with idempotent producers (the queue checker's exactly-once mode), with
//!   `"compaction_keys": N` for a compacted topic whose values carry one of N keys.
//!
//! Invariant: [`parse`] of [`write`]'s text gives back the same queue history, the same metadata
//! events in the same order and the same final topic list, so a checker gives the same verdict on
//! either. Pure: no I/O (the driver writes the text), builds outside madsim.

use std::collections::BTreeMap;

use keel_model::history::{History, Offset, Partition};
use keel_model::metadata_checker::{MetaEvent, MetaOp, MetaOutcome};
use serde_json::{json, Value as Json};

/// The nemesis process's name in the file.
pub const NEMESIS_PROCESS: &str = "nemesis";
/// The process name of the final topic list's line.
pub const FINAL_PROCESS: &str = "final";
/// The process name of the line with the checker's options.
pub const CHECKER_PROCESS: &str = "checker";

/// A fault line of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NemesisEvent {
    pub time_ns: u64,
    /// The action (`kill`, `clog_link`, `heal`, ...).
    pub f: String,
    /// What it hit, as the trace said it.
    pub value: String,
}

impl NemesisEvent {
    /// The nemesis event of a trace line, if it is one (`nemesis <action> <what>`, `heal begin`,
    /// `heal end`).
    pub fn of_trace_line(time_ns: u64, what: &str) -> Option<NemesisEvent> {
        if let Some(rest) = what.strip_prefix("nemesis ") {
            let (f, value) = rest.split_once(' ').unwrap_or((rest, ""));
            return Some(NemesisEvent { time_ns, f: f.to_owned(), value: value.to_owned() });
        }
        what.starts_with("heal ").then(|| NemesisEvent { time_ns, f: "heal".to_owned(), value: what[5..].to_owned() })
    }
}

/// What a history file holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryFile {
    pub queue: Option<History>,
    /// Metadata operations with what the client said, in completion order.
    pub metadata: Vec<(MetaEvent, String)>,
    pub final_topics: Option<Vec<String>>,
    pub nemesis: Vec<NemesisEvent>,
    /// The queue history is judged in the queue checker's exactly-once mode (idempotent producers).
    pub exactly_once: bool,
    /// The topic is compacted and its values carry one of this many keys
    /// (`queue_checker::CheckOptions::compaction_keys`).
    pub compaction_keys: Option<u64>,
    /// Each partition's log start after the final read, where retention moved it past 0: acked sends
    /// below it expired (`queue_checker::check_retained`). A checker info line
    /// `{"process": "checker", "type": "info", "f": "log_starts", "value": {"t/0": 120}}`.
    pub log_starts: BTreeMap<Partition, Offset>,
}

/// The file's text: every event as one line, in time order (ties keep queue, metadata, final list,
/// nemesis order, and each source's own order).
pub fn write(file: &HistoryFile) -> String {
    // (time, line without its index)
    let mut lines: Vec<(u64, Json)> = Vec::new();
    if file.exactly_once || file.compaction_keys.is_some() {
        let mut value = json!({"exactly_once": file.exactly_once});
        if let Some(keys) = file.compaction_keys {
            value["compaction_keys"] = json!(keys);
        }
        let options = json!({"time_ns": 0, "process": CHECKER_PROCESS, "type": "info", "f": "options", "value": value});
        lines.push((0, options));
    }
    if !file.log_starts.is_empty() {
        let starts: serde_json::Map<String, Json> =
            file.log_starts.iter().map(|(partition, start)| (partition.0.clone(), json!(start.0))).collect();
        let line =
            json!({"time_ns": 0, "process": CHECKER_PROCESS, "type": "info", "f": "log_starts", "value": starts});
        lines.push((0, line));
    }
    if let Some(history) = &file.queue {
        // Sorted by the running maximum of their times, so queue events keep their order (and their
        // own index sequence survives the merge) even if a recorder's clock stood still or stepped.
        let mut time_ns = 0;
        for line in history.to_jsonl().lines() {
            let mut event: Json = serde_json::from_str(line).expect("the model writes valid JSON");
            time_ns = time_ns.max(event["time_ns"].as_u64().unwrap_or(0));
            if let Some(object) = event.as_object_mut() {
                object.remove("index");
            }
            lines.push((time_ns, event));
        }
    }
    for (event, detail) in &file.metadata {
        let (f, value) = meta_op_json(&event.op);
        let invoke =
            json!({"time_ns": event.invoke_ns, "process": event.process, "type": "invoke", "f": f, "value": value});
        lines.push((event.invoke_ns, invoke));
        lines.push((event.complete_ns, meta_completion_json(event, detail)));
    }
    if let Some(topics) = &file.final_topics {
        let time_ns = lines.iter().map(|(time_ns, _)| *time_ns).max().unwrap_or(0);
        lines.push((
            time_ns,
            json!({"time_ns": time_ns, "process": FINAL_PROCESS, "type": "ok", "f": "list", "value": topics}),
        ));
    }
    for event in &file.nemesis {
        let line = json!({"time_ns": event.time_ns, "process": NEMESIS_PROCESS, "type": "info", "f": event.f, "value": event.value});
        lines.push((event.time_ns, line));
    }
    lines.sort_by_key(|(time_ns, _)| *time_ns);
    let mut text = String::new();
    for (index, (_, line)) in lines.into_iter().enumerate() {
        text.push_str(&with_index(index, line));
        text.push('\n');
    }
    text
}

/// `{"index": i, ...}` with `index` first, then the line's fields in their order.
fn with_index(index: usize, line: Json) -> String {
    let Json::Object(fields) = line else { unreachable!("every line is an object") };
    let mut out = format!("{{\"index\":{index}");
    // The fields in a fixed order, so the text is canonical.
    for key in ["time_ns", "process", "type", "f", "value", "error"] {
        if let Some(value) = fields.get(key) {
            out.push_str(&format!(",{}:{}", Json::String(key.to_owned()), value));
        }
    }
    out.push('}');
    out
}

fn meta_op_json(op: &MetaOp) -> (&'static str, Json) {
    match op {
        MetaOp::CreateTopic { name, partitions } => ("create", json!({"topic": name, "partitions": partitions})),
        MetaOp::DeleteTopic { name } => ("delete", json!({"topic": name})),
        MetaOp::DescribeTopic { name } => ("describe", json!({"topic": name})),
        MetaOp::ListTopics => ("list", Json::Null),
    }
}

fn meta_completion_json(event: &MetaEvent, detail: &str) -> Json {
    let (f, invoke_value) = meta_op_json(&event.op);
    let (kind, value) = match &event.outcome {
        MetaOutcome::Ok => ("ok", invoke_value),
        MetaOutcome::Fail => ("fail", invoke_value),
        MetaOutcome::Info => ("info", invoke_value),
        MetaOutcome::Listed(names) => ("ok", json!(names)),
        MetaOutcome::Described(partitions) => ("ok", json!({"topic": invoke_value["topic"], "partitions": partitions})),
    };
    let mut line =
        json!({"time_ns": event.complete_ns, "process": event.process, "type": kind, "f": f, "value": value});
    if !detail.is_empty() {
        line["error"] = Json::String(detail.to_owned());
    }
    line
}

/// Reads a history file back. Errors name the line.
pub fn parse(text: &str) -> Result<HistoryFile, String> {
    let mut file = HistoryFile::default();
    let mut queue_lines = Vec::new();
    // Per metadata process: its outstanding invoke (time, op).
    let mut invoked: std::collections::BTreeMap<u64, (u64, MetaOp)> = std::collections::BTreeMap::new();
    for (line_idx, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let context = |message: String| format!("line {}: {message}", line_idx + 1);
        let mut event: Json = serde_json::from_str(line).map_err(|error| context(error.to_string()))?;
        let time_ns = event["time_ns"].as_u64().ok_or_else(|| context("no time_ns".to_owned()))?;
        let f = event["f"].as_str().unwrap_or_default().to_owned();
        match (&event["process"], f.as_str()) {
            (Json::String(process), _) if process == NEMESIS_PROCESS => {
                let value = event["value"].as_str().unwrap_or_default().to_owned();
                file.nemesis.push(NemesisEvent { time_ns, f, value });
            }
            (Json::String(process), "list") if process == FINAL_PROCESS => {
                file.final_topics = Some(string_list(&event["value"]).ok_or_else(|| context("bad list".to_owned()))?);
            }
            (Json::String(process), "options") if process == CHECKER_PROCESS => {
                file.exactly_once = event["value"]["exactly_once"].as_bool().unwrap_or(false);
                file.compaction_keys = event["value"]["compaction_keys"].as_u64();
            }
            (Json::String(process), "log_starts") if process == CHECKER_PROCESS => {
                let starts = event["value"].as_object().ok_or_else(|| context("bad log starts".to_owned()))?;
                for (partition, start) in starts {
                    let start = start.as_u64().ok_or_else(|| context(format!("bad log start for {partition}")))?;
                    file.log_starts.insert(Partition(partition.clone()), Offset(start));
                }
            }
            (Json::Number(_), "create" | "delete" | "describe" | "list") => {
                parse_meta_line(&event, time_ns, &mut invoked, &mut file.metadata).map_err(context)?;
            }
            _ => {
                // A queue event: renumber it in the queue history's own index sequence.
                event["index"] = json!(queue_lines.len());
                queue_lines.push(event.to_string());
            }
        }
    }
    if !queue_lines.is_empty() {
        let history = History::from_jsonl(&queue_lines.join("\n")).map_err(|error| error.to_string())?;
        file.queue = Some(history);
    }
    Ok(file)
}

fn parse_meta_line(
    event: &Json,
    time_ns: u64,
    invoked: &mut std::collections::BTreeMap<u64, (u64, MetaOp)>,
    metadata: &mut Vec<(MetaEvent, String)>,
) -> Result<(), String> {
    let process = event["process"].as_u64().ok_or("a metadata process is a number")?;
    let value = &event["value"];
    let topic = || value["topic"].as_str().map(str::to_owned).ok_or("no topic");
    let kind = event["type"].as_str().unwrap_or_default();
    if kind == "invoke" {
        let op = match event["f"].as_str().unwrap_or_default() {
            "create" => {
                let partitions = value["partitions"].as_u64().ok_or("no partitions")? as u32;
                MetaOp::CreateTopic { name: topic()?, partitions }
            }
            "delete" => MetaOp::DeleteTopic { name: topic()? },
            "describe" => MetaOp::DescribeTopic { name: topic()? },
            _ => MetaOp::ListTopics,
        };
        if invoked.insert(process, (time_ns, op)).is_some() {
            return Err(format!("process {process} invoked twice"));
        }
        return Ok(());
    }
    let (invoke_ns, op) = invoked.remove(&process).ok_or_else(|| format!("process {process} completes nothing"))?;
    let outcome = match (kind, &op) {
        ("ok", MetaOp::ListTopics) => MetaOutcome::Listed(string_list(value).ok_or("bad list")?),
        ("ok", MetaOp::DescribeTopic { .. }) => MetaOutcome::Described(value["partitions"].as_u64().map(|p| p as u32)),
        ("ok", _) => MetaOutcome::Ok,
        ("fail", _) => MetaOutcome::Fail,
        ("info", _) => MetaOutcome::Info,
        (other, _) => return Err(format!("unknown type {other:?}")),
    };
    let detail = event["error"].as_str().unwrap_or_default().to_owned();
    metadata.push((MetaEvent { process, invoke_ns, complete_ns: time_ns, op, outcome }, detail));
    Ok(())
}

fn string_list(value: &Json) -> Option<Vec<String>> {
    value.as_array()?.iter().map(|name| name.as_str().map(str::to_owned)).collect()
}

#[cfg(test)]
mod tests {
    use keel_model::history::{Offset, PollReads, ProcessId};
    use keel_model::metadata_checker::check_metadata;
    use keel_model::queue_checker;

    use super::*;

    fn queue_history(lose_an_acked_send: bool) -> History {
        let mut history = History::new();
        let send = history.invoke_send(ProcessId(1), 10, "t/0", "1-0");
        history.send_ok(send, 20, Offset(0));
        let send = history.invoke_send(ProcessId(2), 21, "t/0", "2-0");
        history.send_info(send, 40);
        let poll = history.invoke_poll(ProcessId(3), 50);
        let mut reads = PollReads::new();
        let read = if lose_an_acked_send { vec![] } else { vec![(Offset(0), "1-0".into())] };
        reads.insert("t/0".into(), read);
        history.poll_ok(poll, 60, reads);
        history
    }

    fn meta(process: u64, invoke_ns: u64, complete_ns: u64, op: MetaOp, outcome: MetaOutcome) -> (MetaEvent, String) {
        let detail = if matches!(outcome, MetaOutcome::Info) { "timed out".to_owned() } else { String::new() };
        (MetaEvent { process, invoke_ns, complete_ns, op, outcome }, detail)
    }

    fn metadata_events(phantom: bool) -> Vec<(MetaEvent, String)> {
        let create = |name: &str| MetaOp::CreateTopic { name: name.to_owned(), partitions: 2 };
        let describe = MetaOp::DescribeTopic { name: "a".to_owned() };
        let shown = if phantom { vec!["a".to_owned(), "b".to_owned()] } else { vec!["a".to_owned()] };
        vec![
            meta(1, 5, 30, create("a"), MetaOutcome::Ok),
            meta(2, 12, 35, create("b"), MetaOutcome::Fail),
            meta(1, 31, 45, describe, MetaOutcome::Described(Some(2))),
            meta(2, 36, 70, MetaOp::ListTopics, MetaOutcome::Listed(shown)),
            meta(1, 46, 80, MetaOp::DeleteTopic { name: "x".to_owned() }, MetaOutcome::Info),
        ]
    }

    fn file(bug: bool) -> HistoryFile {
        HistoryFile {
            queue: Some(queue_history(bug)),
            metadata: metadata_events(bug),
            final_topics: Some(vec!["a".to_owned()]),
            nemesis: vec![
                NemesisEvent::of_trace_line(25, "nemesis kill broker-1").unwrap(),
                NemesisEvent::of_trace_line(26, "nemesis bit_flip broker-2 t-0/0.log byte 7 bit 1").unwrap(),
                NemesisEvent::of_trace_line(90, "heal begin").unwrap(),
            ],
            // One file of each mode (the options line round-trips too), and one with log starts.
            exactly_once: bug,
            compaction_keys: bug.then_some(8),
            log_starts: if bug { BTreeMap::from([(Partition("t/1".into()), Offset(3))]) } else { BTreeMap::new() },
        }
    }

    #[test]
    fn the_file_parses_back_to_what_was_written_and_gets_the_same_verdicts() {
        for bug in [false, true] {
            let written = file(bug);
            let text = write(&written);
            let parsed = parse(&text).unwrap();
            assert_eq!(parsed, written, "{text}");
            let queue_verdict = |file: &HistoryFile| {
                let options = queue_checker::CheckOptions {
                    exactly_once: file.exactly_once,
                    compaction_keys: file.compaction_keys,
                };
                queue_checker::check_retained(file.queue.as_ref().unwrap(), options, &file.log_starts).is_valid()
            };
            let metadata_verdict = |file: &HistoryFile| {
                let events: Vec<MetaEvent> = file.metadata.iter().map(|(event, _)| event.clone()).collect();
                check_metadata(&events, file.final_topics.as_deref().unwrap()).is_valid()
            };
            assert_eq!(queue_verdict(&parsed), queue_verdict(&written));
            assert_eq!(metadata_verdict(&parsed), metadata_verdict(&written));
            // The planted bugs (an acked send never read, a listed topic whose create failed) fail.
            assert_eq!(queue_verdict(&parsed), !bug, "{text}");
            assert_eq!(metadata_verdict(&parsed), !bug, "{text}");
        }
    }

    #[test]
    fn lines_are_in_time_order_with_nemesis_events_and_one_index_sequence() {
        let text = write(&file(false));
        let lines: Vec<Json> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        for (index, line) in lines.iter().enumerate() {
            assert_eq!(line["index"], json!(index));
        }
        let times: Vec<u64> = lines.iter().map(|line| line["time_ns"].as_u64().unwrap()).collect();
        assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "{times:?}");
        let kill = lines.iter().find(|line| line["process"] == json!("nemesis")).unwrap();
        assert_eq!(
            (kill["type"].clone(), kill["f"].clone(), kill["value"].clone()),
            (json!("info"), json!("kill"), json!("broker-1"))
        );
        let flip = lines.iter().find(|line| line["f"] == json!("bit_flip")).unwrap();
        assert_eq!(
            (flip["process"].clone(), flip["value"].clone()),
            (json!("nemesis"), json!("broker-2 t-0/0.log byte 7 bit 1"))
        );
        let info = lines.iter().find(|line| line["f"] == json!("delete") && line["type"] == json!("info")).unwrap();
        assert_eq!(info["error"], json!("timed out"));
        assert!(
            text.starts_with("{\"index\":0,\"time_ns\":5,\"process\":1,\"type\":\"invoke\",\"f\":\"create\""),
            "{text}"
        );
    }

    #[test]
    fn bad_lines_are_errors_not_panics() {
        assert!(parse("{").is_err());
        assert!(parse(
            r#"{"index":0,"time_ns":1,"process":1,"type":"ok","f":"create","value":{"topic":"a","partitions":1}}"#
        )
        .is_err());
        assert!(parse(r#"{"index":0,"process":1}"#).is_err());
    }
}
