//! The report: `report.html`, `throughput.png` and `latency.png`, from the history and the checker's
//! verdict.
//!
//! Plots follow Jepsen's: time on x; completions per second (throughput) and latency percentiles
//! (p50, p99, log scale) per one-second bucket, ok / fail / info in Jepsen's colours (blue, pink,
//! orange); every nemesis interval shaded and labelled with its fault. The anomaly table lists each
//! kind the checker found with examples in the checker's own words, split into unexpected (the run
//! fails) and expected (data loss under `corrupt` before replication; see ADR 0013).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use keel_model::history::{EventKind, History, Op};
use keel_model::queue_checker::{AnomalyKind, QueueReport};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// The font the PNGs' text is drawn with (Debian's fonts-dejavu-core, installed by .ci/deps).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const EXAMPLES_PER_KIND: usize = 8;

const OK_COLOR: RGBColor = RGBColor(0x2b, 0x7b, 0xd8);
const FAIL_COLOR: RGBColor = RGBColor(0xe0, 0x1e, 0x90);
const INFO_COLOR: RGBColor = RGBColor(0xf5, 0x9b, 0x00);

/// Registers the plots' font once. Without it plotters cannot draw text.
pub fn register_font() -> Result<(), String> {
    let bytes = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (install fonts-dejavu-core: bash .ci/deps)"))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{FONT}: not a usable font"))
}

/// [`register_font`], once per process (the matrix draws many plots).
pub fn register_font_once() -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED.get_or_init(register_font).clone()
}

/// One fault, from its start event to its end event (or the end of the run).
#[derive(Clone, Debug)]
pub struct FaultInterval {
    pub f: String,
    pub start_s: f64,
    pub end_s: f64,
    pub value: String,
}

/// Pairs nemesis start and end events by their `id`.
pub fn fault_intervals(history: &History) -> Vec<FaultInterval> {
    let end_s = history.events().last().map_or(0.0, |e| e.time_ns as f64 / 1e9);
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    let mut intervals: Vec<FaultInterval> = Vec::new();
    for fault in history.nemesis_events() {
        let id = fault.value.get("id").and_then(|id| id.as_u64());
        let time_s = fault.time_ns as f64 / 1e9;
        let is_end = matches!(fault.f.as_str(), "heal" | "start" | "resume");
        match (id, is_end) {
            (Some(id), false) => {
                open.insert(id, intervals.len());
                intervals.push(FaultInterval {
                    f: fault.f.clone(),
                    start_s: time_s,
                    end_s,
                    value: fault.value.to_string(),
                });
            }
            (Some(id), true) => {
                if let Some(idx) = open.remove(&id) {
                    intervals[idx].end_s = time_s;
                }
            }
            (None, _) => {}
        }
    }
    intervals
}

/// Per one-second bucket of completion time: completions and latencies (ms) by outcome.
#[derive(Default, Clone)]
struct Bucket {
    latencies_ms: [Vec<f64>; 3],
}

fn outcome_slot(kind: EventKind) -> Option<usize> {
    match kind {
        EventKind::Ok => Some(0),
        EventKind::Fail => Some(1),
        EventKind::Info => Some(2),
        EventKind::Invoke => None,
    }
}

fn buckets(history: &History) -> Vec<Bucket> {
    let mut invoked_at: BTreeMap<u64, u64> = BTreeMap::new();
    let mut buckets: Vec<Bucket> = Vec::new();
    for event in history.events() {
        if !matches!(event.op, Op::Send { .. } | Op::Poll { .. }) {
            continue;
        }
        if event.kind == EventKind::Invoke {
            invoked_at.insert(event.process.0, event.time_ns);
            continue;
        }
        let (Some(slot), Some(invoke_ns)) = (outcome_slot(event.kind), invoked_at.remove(&event.process.0)) else {
            continue;
        };
        let second = (event.time_ns / 1_000_000_000) as usize;
        if buckets.len() <= second {
            buckets.resize(second + 1, Bucket::default());
        }
        buckets[second].latencies_ms[slot].push(event.time_ns.saturating_sub(invoke_ns) as f64 / 1e6);
    }
    buckets
}

fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * quantile).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn fault_color(f: &str) -> RGBColor {
    match f {
        "partition" => RGBColor(0x99, 0x66, 0xcc),
        "kill" => RGBColor(0xcc, 0x33, 0x33),
        "pause" => RGBColor(0x33, 0x99, 0x99),
        "clock" => RGBColor(0x99, 0x99, 0x33),
        "packet" => RGBColor(0x33, 0x66, 0xcc),
        _ => RGBColor(0x66, 0x66, 0x66),
    }
}

type Chart<'a, Y> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

fn shade<Y>(chart: &mut Chart<'_, Y>, faults: &[FaultInterval], y_low: f64, y_high: f64) -> Result<(), String>
where
    Y: Ranged<ValueType = f64>,
{
    for (idx, fault) in faults.iter().enumerate() {
        let color = fault_color(&fault.f);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(fault.start_s, y_low), (fault.end_s, y_high)],
                color.mix(0.18).filled(),
            )))
            .map_err(|e| e.to_string())?;
        // Labels alternate between two rows so neighbours do not overlap.
        let row = if idx % 2 == 0 { 0.0 } else { 1.0 };
        let label_y = if y_low > 0.0 { y_high / 1.6f64.powf(1.0 + row) } else { y_high * (0.95 - 0.06 * row) };
        chart
            .draw_series(std::iter::once(Text::new(
                fault.f.clone(),
                (fault.start_s, label_y),
                ("sans-serif", 13).into_font().color(&color),
            )))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

const OUTCOMES: [(&str, RGBColor); 3] = [("ok", OK_COLOR), ("fail", FAIL_COLOR), ("info", INFO_COLOR)];

/// Completions per second by outcome.
pub fn plot_throughput(history: &History, faults: &[FaultInterval], path: &Path) -> Result<(), String> {
    let buckets = buckets(history);
    let t_max = (buckets.len() as f64).max(1.0);
    let y_max = buckets.iter().flat_map(|b| b.latencies_ms.iter().map(Vec::len)).max().unwrap_or(0) as f64 * 1.15 + 1.0;
    let root = BitMapBackend::new(path, (1200, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Throughput (completions per second)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("time (s)").y_desc("ops/s").draw().map_err(|e| e.to_string())?;
    shade(&mut chart, faults, 0.0, y_max)?;
    for (slot, (name, color)) in OUTCOMES.iter().enumerate() {
        let points: Vec<(f64, f64)> =
            buckets.iter().enumerate().map(|(s, b)| (s as f64 + 0.5, b.latencies_ms[slot].len() as f64)).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// p50 (thin) and p99 (thick) latency per second by outcome, log scale.
pub fn plot_latency(history: &History, faults: &[FaultInterval], path: &Path) -> Result<(), String> {
    let mut buckets = buckets(history);
    for bucket in &mut buckets {
        for latencies in &mut bucket.latencies_ms {
            latencies.sort_by(f64::total_cmp);
        }
    }
    let t_max = (buckets.len() as f64).max(1.0);
    let y_max =
        buckets.iter().flat_map(|b| b.latencies_ms.iter().filter_map(|l| l.last().copied())).fold(10.0, f64::max) * 2.0;
    let y_min = 0.05;
    let root = BitMapBackend::new(path, (1200, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency (p50 thin, p99 thick) by completion time", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..t_max, (y_min..y_max).log_scale())
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("time (s)").y_desc("latency (ms)").draw().map_err(|e| e.to_string())?;
    shade(&mut chart, faults, y_min, y_max)?;
    for (slot, (name, color)) in OUTCOMES.iter().enumerate() {
        for (quantile, width) in [(0.5, 1), (0.99, 3)] {
            let points: Vec<(f64, f64)> = buckets
                .iter()
                .enumerate()
                .filter(|(_, b)| !b.latencies_ms[slot].is_empty())
                .map(|(s, b)| (s as f64 + 0.5, percentile(&b.latencies_ms[slot], quantile).max(y_min)))
                .collect();
            let series = chart
                .draw_series(points.iter().map(|point| Circle::new(*point, width + 1, color.filled())))
                .map_err(|e| e.to_string())?;
            if quantile > 0.9 {
                series.label(*name).legend(move |(x, y)| Circle::new((x + 9, y), 4, color.filled()));
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Everything the HTML page shows.
pub struct Summary<'a> {
    pub title: String,
    pub verdict: String,
    pub valid: bool,
    pub parameters: Vec<(String, String)>,
    pub counts: Vec<(String, String)>,
    pub report: &'a QueueReport,
    /// Anomaly kinds (with counts) excused as expected, and why.
    pub expected: Vec<(AnomalyKind, usize, String)>,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
    pub faults: &'a [FaultInterval],
}

pub fn write_html(summary: &Summary<'_>, path: &Path) -> std::io::Result<()> {
    let mut html = String::new();
    let colour = if summary.valid { "#1a7f37" } else { "#cf222e" };
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>\
         body{{font-family:sans-serif;max-width:1240px;margin:1em auto}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}}\
         code{{font-size:90%}}</style></head><body><h1>{title}</h1>\
         <p style=\"font-size:1.3em;color:{colour}\"><b>{verdict}</b></p>",
        title = escape(&summary.title),
        verdict = escape(&summary.verdict)
    );
    let table = |html: &mut String, rows: &[(String, String)]| {
        html.push_str("<table>");
        for (key, value) in rows {
            let _ = write!(html, "<tr><th>{}</th><td>{}</td></tr>", escape(key), escape(value));
        }
        html.push_str("</table>");
    };
    html.push_str("<h2>Run</h2>");
    table(&mut html, &summary.parameters);
    html.push_str("<h2>Operations</h2>");
    table(&mut html, &summary.counts);
    html.push_str(
        "<h2>Plots</h2><p>Shaded: nemesis intervals, labelled with the fault.</p>\
                   <img src=\"throughput.png\" alt=\"throughput\"><br><img src=\"latency.png\" alt=\"latency\">",
    );
    html.push_str("<h2>Anomalies</h2>");
    if !summary.problems.is_empty() {
        html.push_str("<p><b>Problems besides the checker's anomalies:</b></p><ul>");
        for problem in &summary.problems {
            let _ = write!(html, "<li>{}</li>", escape(problem));
        }
        html.push_str("</ul>");
    }
    let kinds = summary.report.anomaly_kinds();
    if kinds.is_empty() {
        html.push_str("<p>The checker (keel_model::queue_checker) found no anomaly.</p>");
    } else {
        html.push_str(
            "<table><tr><th>kind</th><th>count</th><th>status</th><th>examples (op N = history index)</th></tr>",
        );
        for kind in kinds {
            let expected = summary.expected.iter().find(|(k, _, _)| *k == kind);
            let count = summary.report.count(kind);
            let status = match expected {
                Some((_, excused, why)) if *excused == count => format!("expected: {why}"),
                Some((_, excused, why)) => format!("{} unexpected; {excused} expected: {why}", count - excused),
                None => "unexpected".to_owned(),
            };
            let examples: Vec<String> =
                summary.report.example_lines(kind, EXAMPLES_PER_KIND).iter().map(|line| escape(line)).collect();
            let _ = write!(
                html,
                "<tr><td>{kind}</td><td>{count}</td><td>{}</td><td><code>{}</code></td></tr>",
                escape(&status),
                examples.join("<br>")
            );
        }
        html.push_str("</table>");
    }
    let _ = write!(html, "<h3>Checker output</h3><pre>{}</pre>", escape(&summary.report.to_string()));
    html.push_str("<h2>Faults</h2><table><tr><th>fault</th><th>start (s)</th><th>end (s)</th><th>what</th></tr>");
    for fault in summary.faults {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:.1}</td><td>{:.1}</td><td><code>{}</code></td></tr>",
            escape(&fault.f),
            fault.start_s,
            fault.end_s,
            escape(&fault.value)
        );
    }
    html.push_str("</table>");
    if !summary.notes.is_empty() {
        html.push_str("<h2>Notes</h2><ul>");
        for note in &summary.notes {
            let _ = write!(html, "<li>{}</li>", escape(note));
        }
        html.push_str("</ul>");
    }
    html.push_str(
        "<p>Files: <a href=\"history.jsonl\">history.jsonl</a>, <a href=\"summary.json\">summary.json</a>, \
                   <a href=\"logs/\">broker logs</a>.</p></body></html>\n",
    );
    std::fs::write(path, html)
}

/// The matrix's index page.
pub fn write_index(entries: &[(String, String, bool, String)], path: &Path) -> std::io::Result<()> {
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Keel Jepsen matrix</title><style>\
         body{font-family:sans-serif;max-width:1100px;margin:1em auto}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body><h1>Keel Jepsen matrix</h1>\
         <table><tr><th>nemesis</th><th>verdict</th><th>summary</th></tr>",
    );
    for (name, link, valid, line) in entries {
        let colour = if *valid { "#1a7f37" } else { "#cf222e" };
        let _ = write!(
            html,
            "<tr><td><a href=\"{}\">{}</a></td><td style=\"color:{colour}\">{}</td><td>{}</td></tr>",
            escape(link),
            escape(name),
            if *valid { "valid" } else { "INVALID" },
            escape(line)
        );
    }
    html.push_str("</table></body></html>\n");
    std::fs::write(path, html)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::history::{Offset, ProcessId};

    #[test]
    fn faults_pair_by_id_and_plots_and_page_are_written() {
        let mut history = History::new();
        let send = history.invoke_send(ProcessId(0), 100_000_000, "t/0", "0-0");
        history.nemesis(1_000_000_000, "kill", serde_json::json!({"id": 1, "nodes": [2]}));
        history.send_ok(send, 1_500_000_000, Offset(0));
        history.nemesis(2_000_000_000, "partition", serde_json::json!({"id": 2, "shape": "halves"}));
        history.nemesis(3_000_000_000, "start", serde_json::json!({"id": 1, "fault": "kill"}));
        let send = history.invoke_send(ProcessId(0), 3_100_000_000, "t/0", "0-1");
        history.send_info(send, 4_000_000_000);
        let faults = fault_intervals(&history);
        assert_eq!(faults.len(), 2);
        assert_eq!((faults[0].f.as_str(), faults[0].start_s, faults[0].end_s), ("kill", 1.0, 3.0));
        // Never healed: shaded to the end of the history.
        assert_eq!((faults[1].f.as_str(), faults[1].end_s), ("partition", 4.0));

        let dir = std::env::temp_dir().join(format!("keel-jepsen-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        register_font_once().unwrap();
        plot_throughput(&history, &faults, &dir.join("throughput.png")).unwrap();
        plot_latency(&history, &faults, &dir.join("latency.png")).unwrap();
        for png in ["throughput.png", "latency.png"] {
            let bytes = std::fs::read(dir.join(png)).unwrap();
            assert!(bytes.starts_with(b"\x89PNG"), "{png}");
        }
        let checked = keel_model::queue_checker::check(&history);
        let summary = Summary {
            title: "t <&>".into(),
            verdict: "valid".into(),
            valid: true,
            parameters: vec![("seed".into(), "1".into())],
            counts: vec![],
            report: &checked,
            expected: vec![],
            problems: vec!["a <problem>".into()],
            notes: vec![],
            faults: &faults,
        };
        write_html(&summary, &dir.join("report.html")).unwrap();
        let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
        assert!(
            html.contains("t &lt;&amp;&gt;") && html.contains("a &lt;problem&gt;") && html.contains("throughput.png")
        );
        assert!(html.contains("<td>kill</td><td>1.0</td><td>3.0</td>"), "{html}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
