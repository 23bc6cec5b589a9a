//! Consumer groups on the command line: `keel consume TOPIC --group G` (a member of the group, through
//! [`GroupConsumer`]) and `keel group list | describe | reset-offsets`.
//!
//! `consume --group` without `--follow` reads each assigned partition up to the log end it saw when
//! its assignment arrived, commits exactly past what it printed, leaves the group and exits 0. With
//! `--follow` it stays, commits every [`FOLLOW_COMMIT_INTERVAL_MS`], and on SIGINT or SIGTERM commits
//! and leaves (so the rest of the group takes its partitions at once, without waiting for its
//! session to expire), then exits 0. Delivery is at least once: a process killed with SIGKILL leaves
//! records after its last commit to be printed again by the group's next owner of their partition.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use tokio::time::Instant;

use super::{client, fail, print_line, print_record, Cli, CliError, ConsumeArgs};
use crate::client::group::{
    GroupConsumer, GroupConsumerConfig, GroupDescription, GroupError, GroupListing, Offsets, PolledRecord, ResetPolicy,
    TopicPartition,
};
use crate::client::{Client, ClientError};
use crate::protocol::{ErrorCode, TopicInfo, LIST_OFFSETS_EARLIEST, LIST_OFFSETS_LATEST};
use crate::types::Offset;

/// How often `consume --group --follow` commits what it printed.
pub const FOLLOW_COMMIT_INTERVAL_MS: u64 = 1_000;
/// How long one poll of `consume --group` waits for records before looking at its stop conditions.
pub const POLL_WAIT_MS: u64 = 200;

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List the consumer groups (every broker is asked about the groups it coordinates).
    List,
    /// A group's state, members and their partitions, and per partition the committed offset, the
    /// log end and the lag between them.
    Describe { group: String },
    /// Move a group's committed offsets (only while it has no members: stop its consumers first).
    ResetOffsets(ResetOffsetsArgs),
}

#[derive(Args, Debug)]
pub struct ResetOffsetsArgs {
    pub group: String,
    #[arg(long)]
    pub topic: String,
    /// Only this partition (default: every partition of the topic).
    #[arg(long)]
    pub partition: Option<u32>,
    #[command(flatten)]
    pub to: ResetTarget,
}

/// Where `group reset-offsets` moves the committed offsets: exactly one of these.
#[derive(Args, Debug, Clone, Copy, PartialEq, Eq)]
#[group(required = true, multiple = false)]
pub struct ResetTarget {
    /// Each partition's log start.
    #[arg(long)]
    pub to_earliest: bool,
    /// Each partition's log end (skip everything produced so far).
    #[arg(long)]
    pub to_latest: bool,
    /// This offset, kept within each partition's log (a value past the end becomes the end).
    #[arg(long, value_name = "OFFSET", allow_negative_numbers = true, value_parser = parse_offset)]
    pub to_offset: Option<i64>,
    /// The first record at or after this time: RFC 3339 (2026-11-29T10:00:00Z, or with an offset
    /// such as +01:00) or milliseconds since the Unix epoch. Past the newest record: the log end.
    #[arg(long, value_name = "TIME", value_parser = parse_datetime_ms)]
    pub to_datetime: Option<i64>,
}

/// `consume --group --assignor`: how the coordinator splits the partitions among the members.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignor {
    /// Each topic's partitions in contiguous ranges, one per member.
    Range,
    /// All partitions dealt out one by one.
    Roundrobin,
}

impl Assignor {
    fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::Roundrobin => "roundrobin",
        }
    }
}

/// `--to-offset`: a whole offset, not negative.
fn parse_offset(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(offset) if offset >= 0 => Ok(offset),
        Ok(offset) => Err(format!("an offset is never negative, got {offset}")),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

/// `--to-datetime`: RFC 3339, or whole milliseconds since the Unix epoch; not before 1970 (the wire
/// gives negative timestamps other meanings).
pub fn parse_datetime_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let ms = match text.parse::<i64>() {
        Ok(ms) => ms,
        Err(_) => {
            let format = time::format_description::well_known::Rfc3339;
            let parsed = time::OffsetDateTime::parse(text, &format).map_err(|error| {
                format!(
                    "{text:?} is not an RFC 3339 time like 2026-11-29T10:00:00Z nor milliseconds since the epoch \
                     ({error})"
                )
            })?;
            i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).map_err(|_| format!("{text:?} is out of range"))?
        }
    };
    if ms < 0 {
        return Err(format!("{text:?} is before 1970-01-01T00:00:00Z"));
    }
    Ok(ms)
}

impl From<GroupError> for CliError {
    fn from(error: GroupError) -> CliError {
        match error {
            GroupError::Client(error) => error.into(),
            other => fail(other.to_string()),
        }
    }
}

pub async fn run(cli: &Cli, command: &GroupCommand) -> Result<(), CliError> {
    let client = client(cli);
    let mut out = std::io::stdout().lock();
    match command {
        GroupCommand::List => list(cli, &client, &mut out).await,
        GroupCommand::Describe { group } => describe(cli, &client, group, &mut out).await,
        GroupCommand::ResetOffsets(args) => reset_offsets(cli, &client, args, &mut out).await,
    }
}

/// `keel group list --json`, and the admin API's `/v1/groups`: every group of every broker that
/// answered, and the brokers that did not (`unanswered`: their groups are missing).
pub fn groups_value(listing: &GroupListing) -> serde_json::Value {
    let groups: Vec<_> = listing
        .groups
        .iter()
        .map(|g| {
            json!({"group": g.group, "state": g.state, "generation": g.generation, "members": g.members,
                   "coordinator": g.coordinator})
        })
        .collect();
    let unanswered: Vec<_> = listing
        .unanswered
        .iter()
        .map(|(node_id, addr, error)| json!({"node_id": node_id, "addr": addr, "error": error.to_string()}))
        .collect();
    json!({ "groups": groups, "unanswered": unanswered })
}

async fn list(cli: &Cli, client: &Client, out: &mut impl Write) -> Result<(), CliError> {
    let listing = client.list_groups().await?;
    for (node_id, addr, error) in &listing.unanswered {
        eprintln!("warning: broker {node_id} ({addr}) did not answer ({error}); the groups it coordinates are missing");
    }
    if cli.json {
        print_line(out, &groups_value(&listing).to_string());
    } else {
        for g in &listing.groups {
            print_line(
                out,
                &format!(
                    "{}\t{}\tgeneration {}\t{} member(s)\tcoordinator {}",
                    g.group, g.state, g.generation, g.members, g.coordinator
                ),
            );
        }
    }
    Ok(())
}

/// One partition of `group describe`: its committed offset, log end, lag and owner.
struct PartitionRow {
    tp: TopicPartition,
    committed: Option<Offset>,
    /// `None` when the log end could not be read (the topic was deleted, or has no leader).
    log_end: Option<Offset>,
    owner: Option<String>,
}

impl PartitionRow {
    fn lag(&self) -> Option<i64> {
        Some(self.log_end?.0 - self.committed?.0)
    }
}

/// `keel group describe --json`, and the admin API's `/v1/groups/{group}`.
pub async fn group_json(client: &Client, group: &str) -> Result<serde_json::Value, ClientError> {
    let description = client.describe_group(group).await?;
    let rows = partition_rows(client, &description).await;
    Ok(describe_json(&description, &rows))
}

/// Each partition's lag of `group` (the `keel_consumer_group_lag` metric): committed partitions
/// whose log end could be read.
pub async fn group_lags(client: &Client, group: &str) -> Result<Vec<(TopicPartition, i64)>, ClientError> {
    let description = client.describe_group(group).await?;
    let rows = partition_rows(client, &description).await;
    Ok(rows.into_iter().filter_map(|row| Some((row.tp.clone(), row.lag()?))).collect())
}

async fn describe(cli: &Cli, client: &Client, group: &str, out: &mut impl Write) -> Result<(), CliError> {
    let description = match client.describe_group(group).await {
        Err(ClientError::Server { code: ErrorCode::UnknownGroup, .. }) => {
            return Err(fail(format!("unknown group {group:?} (it has no members and no committed offsets)")))
        }
        result => result?,
    };
    let rows = partition_rows(client, &description).await;
    if cli.json {
        print_line(out, &describe_json(&description, &rows).to_string());
        return Ok(());
    }
    let s = &description.summary;
    print_line(
        out,
        &format!(
            "group {}: {}, generation {}, assignor {}, coordinator {}, {} member(s)",
            s.group,
            s.state,
            s.generation,
            if description.assignor.is_empty() { "none" } else { &description.assignor },
            s.coordinator,
            description.members.len()
        ),
    );
    if !description.members.is_empty() {
        let mut members = vec![vec!["MEMBER".to_owned(), "CLIENT".to_owned(), "ASSIGNMENT".to_owned()]];
        for member in &description.members {
            let assigned: Vec<String> =
                member.assignment.iter().map(|a| format!("{} {:?}", a.topic, a.partitions)).collect();
            members.push(vec![member.member_id.clone(), member.client_id.clone(), assigned.join(", ")]);
        }
        for line in aligned(&members) {
            print_line(out, &format!("  {line}"));
        }
    }
    for line in aligned(&partition_table(&rows)) {
        print_line(out, &format!("  {line}"));
    }
    Ok(())
}

/// `group describe`'s partition table: a header, then one row per partition (`-` where unknown).
fn partition_table(rows: &[PartitionRow]) -> Vec<Vec<String>> {
    let header = ["TOPIC", "PARTITION", "COMMITTED", "LOG END", "LAG", "MEMBER"];
    let mut table = vec![header.map(str::to_owned).to_vec()];
    let known = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    for row in rows {
        table.push(vec![
            row.tp.topic.clone(),
            row.tp.partition.to_string(),
            known(row.committed.map(|offset| offset.to_string())),
            known(row.log_end.map(|offset| offset.to_string())),
            known(row.lag().map(|lag| lag.to_string())),
            known(row.owner.clone()),
        ]);
    }
    table
}

/// The cells of each row padded to their column's width, two spaces apart.
fn aligned(table: &[Vec<String>]) -> Vec<String> {
    let mut widths = Vec::new();
    for row in table {
        widths.resize(widths.len().max(row.len()), 0);
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |row: &Vec<String>| {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        cells.join("  ").trim_end().to_owned()
    };
    table.iter().map(line).collect()
}

/// Every partition the group committed or assigned, with its log end asked of its leader.
async fn partition_rows(client: &Client, description: &GroupDescription) -> Vec<PartitionRow> {
    let mut rows: BTreeMap<TopicPartition, PartitionRow> = BTreeMap::new();
    for (tp, &offset) in &description.committed {
        rows.insert(tp.clone(), PartitionRow { tp: tp.clone(), committed: Some(offset), log_end: None, owner: None });
    }
    for member in &description.members {
        for assigned in &member.assignment {
            for &partition in &assigned.partitions {
                let tp = TopicPartition::new(assigned.topic.clone(), partition);
                let row =
                    rows.entry(tp.clone()).or_insert(PartitionRow { tp, committed: None, log_end: None, owner: None });
                row.owner = Some(member.member_id.clone());
            }
        }
    }
    let ends = rows.keys().map(|tp| client.list_offsets(&tp.topic, tp.partition, LIST_OFFSETS_LATEST));
    let ends = futures::future::join_all(ends).await;
    let mut rows: Vec<PartitionRow> = rows.into_values().collect();
    for (row, end) in rows.iter_mut().zip(ends) {
        row.log_end = match end {
            Ok(found) => Some(found.map_or(Offset(0), |(offset, _)| offset)),
            Err(error) => {
                tracing::warn!(partition = %row.tp, %error, "cannot read the log end");
                None
            }
        };
    }
    rows
}

/// `group describe --json`: the summary, the members with their assignments, and every committed or
/// assigned partition with `committed` and `lag` `null` where nothing is committed.
fn describe_json(description: &GroupDescription, rows: &[PartitionRow]) -> serde_json::Value {
    let members: Vec<_> = description
        .members
        .iter()
        .map(|member| {
            let assignment: Vec<_> =
                member.assignment.iter().map(|a| json!({"topic": a.topic, "partitions": a.partitions})).collect();
            json!({"member_id": member.member_id, "client_id": member.client_id, "topics": member.topics,
                   "assignment": assignment})
        })
        .collect();
    let partitions: Vec<_> = rows
        .iter()
        .map(|row| {
            json!({"topic": row.tp.topic, "partition": row.tp.partition, "committed": row.committed.map(|o| o.0),
                   "log_end": row.log_end.map(|o| o.0), "lag": row.lag(), "member_id": row.owner})
        })
        .collect();
    let s = &description.summary;
    json!({"group": s.group, "state": s.state, "generation": s.generation, "assignor": description.assignor,
           "coordinator": s.coordinator, "members": members, "partitions": partitions})
}

/// The partitions `reset-offsets` covers: `--partition`, or all of the topic's.
fn reset_partitions(topic: &TopicInfo, partition: Option<u32>) -> Result<Vec<u32>, CliError> {
    match partition {
        Some(partition) if partition as usize >= topic.partitions.len() => Err(fail(format!(
            "topic {:?} has {} partition(s); there is no partition {partition}",
            topic.name,
            topic.partitions.len()
        ))),
        Some(partition) => Ok(vec![partition]),
        None => Ok(topic.partitions.iter().map(|p| p.partition).collect()),
    }
}

async fn reset_offsets(
    cli: &Cli,
    client: &Client,
    args: &ResetOffsetsArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let topic = client.topic(&args.topic).await?;
    let mut offsets = Offsets::new();
    for partition in reset_partitions(&topic, args.partition)? {
        let offset = reset_target(client, &args.topic, partition, args.to).await?;
        offsets.insert(TopicPartition::new(args.topic.clone(), partition), offset);
    }
    match client.reset_offsets(&args.group, &offsets).await {
        Err(ClientError::Server { code: ErrorCode::GroupNotEmpty, message }) => {
            let advice = if message.contains("stop its consumers first") { "" } else { "; stop its consumers first" };
            return Err(fail(format!("cannot reset the offsets of group {:?}: {message}{advice}", args.group)));
        }
        result => result?,
    }
    if cli.json {
        let set: Vec<_> = offsets
            .iter()
            .map(|(tp, offset)| json!({"topic": tp.topic, "partition": tp.partition, "offset": offset.0}))
            .collect();
        print_line(out, &json!({"group": args.group, "offsets": set}).to_string());
    } else {
        for (tp, offset) in &offsets {
            print_line(
                out,
                &format!(
                    "group {}: {} partition {} committed offset set to {offset}",
                    args.group, tp.topic, tp.partition
                ),
            );
        }
    }
    Ok(())
}

/// The offset `target` names for one partition.
async fn reset_target(client: &Client, topic: &str, partition: u32, target: ResetTarget) -> Result<Offset, CliError> {
    let list = |spec| async move {
        let found = client.list_offsets(topic, partition, spec).await?;
        Ok::<_, CliError>(found.map_or(Offset(0), |(offset, _)| offset))
    };
    if target.to_earliest {
        return list(LIST_OFFSETS_EARLIEST).await;
    }
    if let Some(timestamp) = target.to_datetime {
        return match client.list_offsets(topic, partition, timestamp).await? {
            Some((offset, _)) => Ok(offset),
            None => list(LIST_OFFSETS_LATEST).await,
        };
    }
    let latest = list(LIST_OFFSETS_LATEST).await?;
    let Some(wanted) = target.to_offset else { return Ok(latest) };
    let earliest = list(LIST_OFFSETS_EARLIEST).await?;
    let offset = Offset(wanted.clamp(earliest.0, latest.0.max(earliest.0)));
    if offset.0 != wanted {
        eprintln!(
            "{topic}/{partition}: offset {wanted} is outside the log ({earliest}..{latest}); using {offset} instead"
        );
    }
    Ok(offset)
}

/// The group consumer's settings from `keel consume`'s flags.
fn consumer_config(args: &ConsumeArgs, group: &str) -> GroupConsumerConfig {
    let mut config = GroupConsumerConfig::new(group, vec![args.topic.clone()]);
    config.client_id = format!("keel-consume-{}", std::process::id());
    if let Some(session_timeout_ms) = args.session_timeout_ms {
        config.session_timeout_ms = session_timeout_ms;
    }
    config.assignors = vec![args.assignor.unwrap_or(Assignor::Range).name().to_owned()];
    config.reset = match args.reset {
        super::ResetPolicy::Earliest => ResetPolicy::Earliest,
        super::ResetPolicy::Latest => ResetPolicy::Latest,
        super::ResetPolicy::None => ResetPolicy::None,
    };
    config
}

/// `keel consume TOPIC --group G`: see the module docs.
pub async fn run_consume(cli: &Cli, args: &ConsumeArgs, group: &str) -> Result<(), CliError> {
    let client = client(cli);
    // Fail fast and clearly on an unknown topic, before joining anything.
    client.topic(&args.topic).await?;
    let mut stop = Stop::install()?;
    let mut consumer = GroupConsumer::new(client, consumer_config(args, group));
    consumer.on_notice(|line| eprintln!("{line}"));
    let mut run = GroupRun { cli, args, printed: 0, ends: BTreeMap::new(), seen_generation: None };
    let consumed = run.consume(&mut consumer, &mut stop).await;
    // Also after a failure: a member that leaves hands its partitions over at once.
    let left = consumer.leave().await;
    consumed?;
    left.map_err(|error| fail(format!("committing and leaving group {group:?} failed: {error}")))?;
    Ok(())
}

/// One `consume --group` run's progress.
struct GroupRun<'a> {
    cli: &'a Cli,
    args: &'a ConsumeArgs,
    printed: u64,
    /// Without `--follow`: per assigned partition, the log end when it was assigned (where this run
    /// stops reading it).
    ends: BTreeMap<TopicPartition, Offset>,
    seen_generation: Option<i32>,
}

impl GroupRun<'_> {
    /// Joins, then prints until done: `--count` records, or (without `--follow`) every assigned
    /// partition read up to its end, or (with `--follow`) a signal.
    async fn consume(&mut self, consumer: &mut GroupConsumer, stop: &mut Stop) -> Result<(), CliError> {
        tokio::select! {
            biased;
            signal = stop.recv() => {
                tracing::info!(signal, "stopping before the first join completed");
                return Ok(());
            }
            joined = consumer.join() => joined?,
        }
        let mut out = std::io::stdout().lock();
        let mut commit_at = Instant::now() + Duration::from_millis(FOLLOW_COMMIT_INTERVAL_MS);
        loop {
            if !self.args.follow && self.read_to_ends(consumer).await? {
                return Ok(());
            }
            let polled = tokio::select! {
                biased;
                signal = stop.recv() => {
                    tracing::info!(signal, "stopping: committing and leaving the group");
                    return Ok(());
                }
                polled = consumer.poll(Duration::from_millis(POLL_WAIT_MS)) => polled?,
            };
            if self.print(&mut out, consumer, polled) {
                return Ok(());
            }
            if self.args.follow && Instant::now() >= commit_at {
                if let Err(error) = consumer.commit().await {
                    if error.code().and_then(crate::client::group::rejoin_for).is_none() {
                        return Err(error.into());
                    }
                    eprintln!("commit refused ({error}); rejoining the group");
                }
                commit_at = Instant::now() + Duration::from_millis(FOLLOW_COMMIT_INTERVAL_MS);
            }
        }
    }

    /// Without `--follow`: learns the log end of each newly assigned partition, and says whether
    /// every assigned partition has been read up to its end.
    async fn read_to_ends(&mut self, consumer: &GroupConsumer) -> Result<bool, CliError> {
        if self.seen_generation != Some(consumer.generation()) {
            self.seen_generation = Some(consumer.generation());
            let client = consumer.client();
            for tp in consumer.assignment() {
                if !self.ends.contains_key(tp) {
                    let end = client.list_offsets(&tp.topic, tp.partition, LIST_OFFSETS_LATEST).await?;
                    self.ends.insert(tp.clone(), end.map_or(Offset(0), |(offset, _)| offset));
                }
            }
        }
        let positions = consumer.positions();
        Ok(consumer.assignment().iter().all(|tp| positions.get(tp).zip(self.ends.get(tp)).is_some_and(|(p, e)| p >= e)))
    }

    /// Prints what `--count` and the stop offsets allow, and moves the consumer back to the first
    /// record of each partition it did not print, so the next commit covers exactly the printed
    /// ones. True once `--count` records are printed.
    fn print(&mut self, out: &mut impl Write, consumer: &mut GroupConsumer, polled: Vec<PolledRecord>) -> bool {
        let limit = self.args.count.unwrap_or(u64::MAX);
        let mut rewind: BTreeMap<TopicPartition, Offset> = BTreeMap::new();
        for (topic, partition, record) in polled {
            let tp = TopicPartition::new(topic, partition);
            let past_end = !self.args.follow && self.ends.get(&tp).is_some_and(|&end| record.offset >= end);
            if self.printed >= limit || past_end || rewind.contains_key(&tp) {
                rewind.entry(tp).or_insert(record.offset);
                continue;
            }
            print_record(out, self.cli.json, partition, &record);
            self.printed += 1;
        }
        for (tp, offset) in &rewind {
            consumer.seek(tp, *offset);
        }
        self.printed >= limit
    }
}

/// SIGINT and SIGTERM, listened for from the start (so neither kills the process before it has left
/// its group). The simulation has no SIGTERM (madsim-tokio lacks `signal::unix`): there it is
/// Ctrl-C only.
struct Stop {
    #[cfg(not(madsim))]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(not(madsim))]
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    #[cfg(not(madsim))]
    fn install() -> Result<Stop, CliError> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind| signal(kind).map_err(|error| fail(format!("cannot listen for signals: {error}")));
        Ok(Stop { interrupt: install(SignalKind::interrupt())?, terminate: install(SignalKind::terminate())? })
    }

    #[cfg(madsim)]
    fn install() -> Result<Stop, CliError> {
        Ok(Stop {})
    }

    /// Waits for the next signal and names it.
    #[cfg(not(madsim))]
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            biased;
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }

    #[cfg(madsim)]
    async fn recv(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;
    use clap::error::ErrorKind;

    fn parse(args: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_checked_from(std::iter::once("keel").chain(args.split_whitespace()))
    }

    #[test]
    fn a_group_consumer_takes_its_positions_from_the_group() {
        for flags in ["--offset 3", "--from-beginning", "--from-timestamp 5", "--partition 1"] {
            let error = parse(&format!("consume t --group g {flags}")).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ArgumentConflict, "{flags}: {error}");
        }
        for flags in ["--assignor roundrobin", "--session-timeout-ms 6000"] {
            let error = parse(&format!("consume t {flags}")).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument, "{flags}: {error}");
        }
        let cli = parse("consume t --group g --follow --assignor roundrobin --session-timeout-ms 6000 --reset latest")
            .unwrap();
        let Command::Consume(args) = cli.command else { panic!("parsed as {:?}", cli.command) };
        let config = consumer_config(&args, "g");
        assert_eq!((config.group.as_str(), config.topics.clone()), ("g", vec!["t".to_owned()]));
        assert_eq!(config.assignors, vec!["roundrobin".to_owned()]);
        assert_eq!((config.session_timeout_ms, config.reset), (6000, ResetPolicy::Latest));
        let Command::Consume(args) = parse("consume t --group g").unwrap().command else { unreachable!() };
        let config = consumer_config(&args, "g");
        assert_eq!(config.assignors, vec!["range".to_owned()]);
        assert_eq!((config.session_timeout_ms, config.reset), (10_000, ResetPolicy::Earliest));
    }

    #[test]
    fn reset_offsets_needs_exactly_one_target() {
        let error = parse("group reset-offsets g --topic t").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument, "{error}");
        let error = parse("group reset-offsets g --topic t --to-earliest --to-latest").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict, "{error}");
        let error = parse("group reset-offsets g --topic t --to-offset -4").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ValueValidation, "{error}");
        assert!(error.to_string().contains("an offset is never negative, got -4"), "{error}");
        let cli = parse("group reset-offsets g --topic t --partition 2 --to-offset 7").unwrap();
        let Command::Group(GroupCommand::ResetOffsets(args)) = cli.command else { panic!("{:?}", cli.command) };
        assert_eq!((args.group.as_str(), args.partition, args.to.to_offset), ("g", Some(2), Some(7)));
    }

    #[test]
    fn datetimes_are_rfc_3339_or_epoch_milliseconds() {
        assert_eq!(parse_datetime_ms("2026-11-29T10:00:00Z"), Ok(1_795_946_400_000));
        assert_eq!(parse_datetime_ms("2026-11-29T11:00:00+01:00"), Ok(1_795_946_400_000));
        assert_eq!(parse_datetime_ms("2026-11-29T10:00:00.250Z"), Ok(1_795_946_400_250));
        assert_eq!(parse_datetime_ms("1795946400000"), Ok(1_795_946_400_000));
        assert_eq!(parse_datetime_ms("0"), Ok(0));
        for bad in ["yesterday", "2026-11-29", "2026-11-29T10:00:00", "-5", "1969-12-31T23:59:59Z"] {
            assert!(parse_datetime_ms(bad).is_err(), "{bad}");
        }
        assert!(parse_datetime_ms("soon").unwrap_err().contains("like 2026-11-29T10:00:00Z"));
    }

    #[test]
    fn tables_line_up() {
        let table = vec![
            vec!["TOPIC".to_owned(), "LAG".to_owned(), "MEMBER".to_owned()],
            vec!["orders".to_owned(), "12345".to_owned(), "-".to_owned()],
        ];
        assert_eq!(aligned(&table), vec!["TOPIC   LAG    MEMBER", "orders  12345  -"]);
    }

    #[test]
    fn lag_is_unknown_without_a_commit_or_a_log_end() {
        let row = |committed: Option<i64>, log_end: Option<i64>| PartitionRow {
            tp: TopicPartition::new("t", 0),
            committed: committed.map(Offset),
            log_end: log_end.map(Offset),
            owner: None,
        };
        assert_eq!(row(Some(3), Some(10)).lag(), Some(7));
        assert_eq!(row(None, Some(10)).lag(), None);
        assert_eq!(row(Some(3), None).lag(), None);
    }
}
