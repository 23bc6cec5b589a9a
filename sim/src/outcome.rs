//! Checkers and the verdict: what one seed of one scenario produced, whether it passes, and the
//! report a failing seed panics with.
//!
//! In: the recorded histories (queue and/or metadata), the Raft checker fed during the run, the
//! violations the harness, the workload and the monitor found, the faults the nemesis injected.
//! Out: an [`Outcome`]; [`Outcome::assert_valid`] is the one assertion every scenario ends with.
//!
//! A run passes when every checker the scenario names passes (an inconclusive metadata search
//! fails), no violation was recorded during the run (unexplained broker exits, missed liveness
//! bounds, required faults that were not injected, the workload's durability invariants), and the
//! workload got at least one operation acknowledged (a run that did nothing proves nothing).

use keel::buggify::Point;
use keel::sometimes::Sometimes;
use keel_model::metadata_checker::{check_metadata, MetaEvent, MetaOp, MetaOutcome, MetadataReport};
use keel_model::queue_checker::{self, AnomalyKind, CheckOptions, QueueReport};
use keel_model::raft_checker::RaftChecker;

use crate::history_file::HistoryFile;
use crate::nemesis::FaultCounts;
use crate::swarm::Swarm;
use crate::trace::summary_line;

/// How many trace lines a failure report shows.
pub const TRACE_TAIL_LINES: usize = 60;

/// The history checkers' verdicts over one run's histories.
#[derive(Debug, Default)]
pub struct Verdicts {
    pub queue: Option<QueueReport>,
    pub metadata: Option<MetadataReport>,
}

impl Verdicts {
    /// Judges every history the file holds: the queue history with `queue_checker` (in its
    /// exactly-once mode when the file says so), the metadata history with `check_metadata`
    /// against the final topic list (none read: an empty list).
    pub fn judge(file: &HistoryFile) -> Verdicts {
        let options = CheckOptions { exactly_once: file.exactly_once, compaction_keys: file.compaction_keys };
        let queue =
            file.queue.as_ref().map(|history| queue_checker::check_retained(history, options, &file.log_starts));
        let metadata = (!file.metadata.is_empty() || file.final_topics.is_some()).then(|| {
            let events: Vec<MetaEvent> = file.metadata.iter().map(|(event, _)| event.clone()).collect();
            check_metadata(&events, file.final_topics.as_deref().unwrap_or_default())
        });
        Verdicts { queue, metadata }
    }

    pub fn is_valid(&self) -> bool {
        self.queue.as_ref().is_none_or(QueueReport::is_valid)
            && self.metadata.as_ref().is_none_or(MetadataReport::is_valid)
    }
}

/// What one seed of one scenario produced.
pub struct Outcome {
    pub scenario: &'static str,
    pub seed: u64,
    pub swarm: Swarm,
    pub verdicts: Verdicts,
    /// The Raft checker, fed during the run (scenarios with the Raft checker).
    pub raft: Option<RaftChecker>,
    /// Invariants broken during the run or bounds missed.
    pub violations: Vec<String>,
    /// Durability breaks seen during the run that the fsync policy allows (fsync=never).
    pub expected_anomalies: usize,
    /// Operations acknowledged: sends acked with an offset, creates and deletes acked.
    pub acked: usize,
    pub nemesis_actions: usize,
    /// The faults the nemesis phase injected, per class.
    pub faults: FaultCounts,
    /// How often the run reached each interesting state ([`keel::sometimes`]).
    pub coverage: Vec<(Sometimes, u64)>,
    /// How often each BUGGIFY point fired ([`keel::buggify`]; all 0 when the seed did not enable it).
    pub buggify_fired: Vec<(Point, u64)>,
    /// Simulated time the run took, setup to verdict.
    pub simulated_ms: u64,
    pub trace_hash: u64,
    pub trace_tail: String,
}

/// Sends acked with an offset (as the queue checker counted them) plus creates and deletes acked.
pub fn acked_operations(verdicts: &Verdicts, metadata: &[(MetaEvent, String)]) -> usize {
    let sends = verdicts.queue.as_ref().map_or(0, |report| report.stats.sends_ok_with_offset);
    let writes = metadata
        .iter()
        .filter(|(event, _)| {
            event.outcome == MetaOutcome::Ok
                && matches!(event.op, MetaOp::CreateTopic { .. } | MetaOp::DeleteTopic { .. })
        })
        .count();
    sends + writes
}

impl Outcome {
    /// Acked records the queue checker found lost or never read.
    pub fn lost_acked_writes(&self) -> usize {
        self.verdicts
            .queue
            .as_ref()
            .map_or(0, |report| report.count(AnomalyKind::LostWrite) + report.count(AnomalyKind::Unseen))
    }

    pub fn is_valid(&self) -> bool {
        self.verdicts.is_valid()
            && self.raft.as_ref().is_none_or(RaftChecker::is_valid)
            && self.violations.is_empty()
            && self.acked > 0
    }

    pub fn summary_line(&self) -> String {
        summary_line(self.seed, self.trace_hash)
    }

    /// The checkers' reports, as printed after every run.
    pub fn reports(&self) -> String {
        let mut text = String::new();
        if let Some(report) = &self.verdicts.queue {
            text.push_str(&format!("{report}"));
        }
        if let Some(report) = &self.verdicts.metadata {
            text.push_str(&format!("metadata history: {report}\n"));
        }
        if let Some(raft) = &self.raft {
            text.push_str(&format!("raft: {raft}\n"));
        }
        text
    }

    /// Prints the reports, a summary and, last, `seed=<n> trace_hash=<hex>`.
    pub fn print(&self) {
        print!("{}", self.reports());
        println!(
            "scenario {}: {} nemesis actions ({:?}), {} acked operations, {} violations, {} expected durability \
             anomalies",
            self.scenario,
            self.nemesis_actions,
            self.faults,
            self.acked,
            self.violations.len(),
            self.expected_anomalies
        );
        println!("{}", self.summary_line());
    }

    /// Why the run failed (the reports, the violations, the trace's tail and the command that
    /// replays it), or `None` when it is valid.
    pub fn failure(&self) -> Option<String> {
        if self.is_valid() {
            return None;
        }
        Some(format!(
            "scenario {} FAILED with seed {} (reproduce: sim/replay {} {})\n\
             swarm: {:?}\nacked operations: {}\n{}violations during the run ({}):\n{}\nlast trace events:\n{}",
            self.scenario,
            self.seed,
            self.scenario,
            self.seed,
            self.swarm,
            self.acked,
            self.reports(),
            self.violations.len(),
            self.violations.iter().map(|violation| format!("  {violation}\n")).collect::<String>(),
            self.trace_tail,
        ))
    }

    /// Panics with [`Outcome::failure`] unless the run is valid.
    pub fn assert_valid(&self) {
        if let Some(failure) = self.failure() {
            panic!("{failure}");
        }
    }
}
