//! Reports: the figures of docs/design.md (Figures) gathered from the ledger, rendered as memory_profiler's
//! table with the exact columns beside it or as JSON (docs/design.md, Reports).

use serde::{Deserialize, Serialize};

use crate::causes::{note, Causes, NoteFacts};
use crate::hints::{self, Hint};
use crate::ledger::{FuncId, FuncInfo, Ledger, LineStats, ProcessStats};

/// The schema every JSON report names in its `schema` field.
pub const SCHEMA: &str = "memsleuth.report/1";

/// One line's figures (docs/design.md, Figures), or a function's totals: the one definition of
/// them, whose field order is the JSON's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    pub hits: u64,
    pub allocated_bytes: u64,
    pub allocations: u64,
    pub freed_bytes: u64,
    pub frees: u64,
    pub net_bytes: i64,
    pub peak_bytes: i64,
    pub retained_bytes: u64,
    pub rss_after_bytes: Option<u64>,
    pub rss_delta_bytes: i64,
    pub gc_collections: u64,
    pub gc_freed_bytes: u64,
    /// Reports written before the arena counts existed have none.
    #[serde(default)]
    pub arenas_mapped: u64,
    #[serde(default)]
    pub arenas_unmapped: u64,
    pub causes: Causes,
    pub note: Option<String>,
    /// Rewrites the figures and the source make clear (`hints.rs`); empty for totals. Reports
    /// written before hints existed have none.
    #[serde(default)]
    pub hints: Vec<Hint>,
}

impl Figures {
    fn from_stats(s: &LineStats, teardown: bool) -> Self {
        Figures {
            hits: s.hits,
            allocated_bytes: s.allocated_bytes,
            allocations: s.allocations,
            freed_bytes: s.freed_bytes,
            frees: s.frees,
            net_bytes: s.net_bytes(),
            peak_bytes: s.peak_bytes,
            retained_bytes: s.retained_bytes(),
            rss_after_bytes: s.rss_after,
            rss_delta_bytes: s.rss_delta,
            gc_collections: s.gc_collections,
            gc_freed_bytes: s.gc_freed_bytes,
            arenas_mapped: s.arenas_mapped,
            arenas_unmapped: s.arenas_unmapped,
            causes: s.causes,
            note: note(&NoteFacts {
                hits: s.hits,
                rss_delta: s.rss_delta,
                allocated: s.allocated_bytes,
                freed: s.freed_bytes,
                gc_collections: s.gc_collections,
                gc_freed: s.gc_freed_bytes,
                arenas_mapped: s.arenas_mapped,
                arenas_unmapped: s.arenas_unmapped,
                causes: s.causes,
                teardown,
            }),
            hints: Vec::new(),
        }
    }

    /// Adds another process's figures for the same line: counts and byte sums add up, RSS
    /// changes too (each process's adds to the machine's); the peak is the larger, and the RSS
    /// after a line and the note belong to no single process any more.
    fn add_process(&mut self, other: &Figures) {
        self.hits += other.hits;
        self.allocated_bytes += other.allocated_bytes;
        self.allocations += other.allocations;
        self.freed_bytes += other.freed_bytes;
        self.frees += other.frees;
        self.net_bytes += other.net_bytes;
        self.peak_bytes = self.peak_bytes.max(other.peak_bytes);
        self.retained_bytes += other.retained_bytes;
        self.rss_after_bytes = None;
        self.rss_delta_bytes += other.rss_delta_bytes;
        self.gc_collections += other.gc_collections;
        self.gc_freed_bytes += other.gc_freed_bytes;
        self.arenas_mapped += other.arenas_mapped;
        self.arenas_unmapped += other.arenas_unmapped;
        self.causes.add(&other.causes);
        self.forget_process();
    }

    /// Drops what belongs to one process only: the RSS after the line, the note and the hints.
    fn forget_process(&mut self) {
        self.rss_after_bytes = None;
        self.note = None;
        self.hints.clear();
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LineReport {
    pub lineno: u32,
    /// The line's text; the JSON's is without its indentation.
    #[serde(serialize_with = "trimmed")]
    pub source: String,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FunctionReport {
    /// Identity of the function's code object; not in the JSON.
    #[serde(skip)]
    pub code: usize,
    pub name: String,
    pub module: String,
    pub filename: String,
    pub first_lineno: u32,
    /// The function's last source line (reports written before it existed have none).
    #[serde(default)]
    pub last_lineno: u32,
    #[serde(default)]
    pub calls: u64,
    #[serde(rename = "rss_at_entry_bytes", default)]
    pub rss_at_entry: Option<u64>,
    pub totals: Figures,
    /// Lines that ran, in source order.
    #[serde(default)]
    pub lines: Vec<LineReport>,
    /// The frame's teardown after each return (its locals released), when a return was seen;
    /// reports written before it existed have none.
    #[serde(default)]
    pub teardown: Option<Figures>,
    /// The whole source of the function, from `first_lineno`; a saved report's is read back
    /// from the file, or rebuilt from its lines.
    #[serde(skip)]
    pub source: Vec<String>,
}

/// The whole program's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessReport {
    pub allocated_bytes: u64,
    pub freed_bytes: u64,
    pub live_bytes: u64,
    /// The peaks belong to one process: a summary over several has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracked_peak_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_peak_bytes: Option<u64>,
    pub untracked_frees: u64,
    /// The sink process's own peak RSS, apart from the program's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink_rss_peak_bytes: Option<u64>,
    /// What was live at the tracked peak, by line of the report's functions, most first.
    pub peak_live_by_line: Vec<PeakLine>,
}

impl ProcessReport {
    pub fn new(stats: &ProcessStats, rss_peak_bytes: u64) -> Self {
        ProcessReport {
            allocated_bytes: stats.allocated_bytes,
            freed_bytes: stats.freed_bytes,
            live_bytes: stats.live_bytes,
            tracked_peak_bytes: Some(stats.tracked_peak_bytes),
            rss_peak_bytes: Some(rss_peak_bytes),
            untracked_frees: stats.untracked_frees,
            sink_rss_peak_bytes: None,
            peak_live_by_line: Vec::new(),
        }
    }
}

/// A report (docs/design.md, Reports); its JSON is this struct's fields after `schema`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    #[serde(default)]
    pub python_version: String,
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// What was profiled and why, when the command line chose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<String>,
    /// Where the books were kept: "process" (a sink process) or "thread" (in the program).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    /// How many processes a summary adds up (`memsleuth run --follow-fork`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    pub functions: Vec<FunctionReport>,
    #[serde(default)]
    pub process: ProcessReport,
}

fn trimmed<S: serde::Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(text.trim())
}

/// What `to_json` writes: the schema, then the report.
#[derive(Serialize)]
struct Document<'a> {
    schema: &'static str,
    #[serde(flatten)]
    report: &'a Report,
}

/// A line's bytes live at the tracked peak (docs/design.md, "Live at the tracked peak").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeakLine {
    pub function: String,
    pub filename: String,
    pub lineno: u32,
    pub source: String,
    pub bytes: u64,
}

impl PeakLine {
    /// The lines of `funcs` with bytes live at the tracked peak, most first.
    fn of_ledger(ledger: &Ledger, funcs: &[FuncId]) -> Vec<PeakLine> {
        let mut lines: Vec<PeakLine> = funcs
            .iter()
            .flat_map(|&func| {
                let info = &ledger.funcs()[func.index()].info;
                ledger.live_at_peak(func).into_iter().map(move |(lineno, bytes)| PeakLine {
                    function: info.name.clone(),
                    filename: info.filename.clone(),
                    lineno,
                    source: info
                        .source
                        .get((lineno - info.first_lineno) as usize)
                        .map_or(String::new(), |s| s.trim().to_string()),
                    bytes,
                })
            })
            .collect();
        lines.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.filename.cmp(&b.filename)).then(a.lineno.cmp(&b.lineno)));
        lines
    }
}

/// The "Live at the tracked peak" section of a report (docs/design.md, "Live at the tracked
/// peak"): the bytes each profiled line's blocks held when the tracked live bytes were highest,
/// and the rest, born outside every profiled line. Empty before any tracked block.
pub fn render_live_at_peak(report: &Report) -> String {
    let peak = report.process.tracked_peak_bytes.unwrap_or(0);
    if peak == 0 {
        return String::new();
    }
    let mut out = format!(
        "Live at the tracked peak ({}, the most tracked bytes live at once), by line:\n",
        human_bytes(peak as i64)
    );
    for l in &report.process.peak_live_by_line {
        let file = std::path::Path::new(&l.filename)
            .file_name()
            .map_or(l.filename.clone(), |f| f.to_string_lossy().into_owned());
        out += &format!(
            "  {:>10}  {} ({file}) line {}  {}\n",
            human_bytes(l.bytes as i64),
            l.function,
            l.lineno,
            l.source
        );
    }
    let on_lines: u64 = report.process.peak_live_by_line.iter().map(|l| l.bytes).sum();
    out += &format!("  {:>10}  outside the profiled lines\n", human_bytes(peak.saturating_sub(on_lines) as i64));
    out
}

impl Report {
    /// Gathers every function that was called at least once.
    pub fn from_ledger(ledger: &Ledger, python_version: &str, argv: Option<Vec<String>>, rss_peak_bytes: u64) -> Self {
        Self::from_ledger_where(ledger, python_version, argv, rss_peak_bytes, |_| true)
    }

    /// Gathers the functions called at least once that `wanted` keeps; only those are built, so
    /// a report of a few functions costs the same however many the ledger holds.
    pub fn from_ledger_where(
        ledger: &Ledger,
        python_version: &str,
        argv: Option<Vec<String>>,
        rss_peak_bytes: u64,
        wanted: impl Fn(&FuncInfo) -> bool,
    ) -> Self {
        let kept: Vec<FuncId> =
            (0..ledger.funcs().len() as u32).map(FuncId).filter(|&i| wanted(&ledger.funcs()[i.index()].info)).collect();
        let functions = kept.iter().filter_map(|&i| function_report(ledger, i)).collect();
        Report {
            python_version: python_version.to_string(),
            argv,
            selection: None,
            sink: None,
            processes: None,
            functions,
            process: ProcessReport {
                peak_live_by_line: PeakLine::of_ledger(ledger, &kept),
                ..ProcessReport::new(&ledger.process, rss_peak_bytes)
            },
        }
    }

    /// Reads back a report written by `to_json`; the error explains why the text is not one.
    /// Source lines come from the profiled file when it is still there, else from the report.
    pub fn from_json(text: &str) -> Result<Report, String> {
        let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
        match doc.get("schema").map(|s| s.as_str()) {
            Some(Some(SCHEMA)) => {}
            Some(Some(other)) => return Err(format!("unsupported report schema '{other}'")),
            _ => return Err("not a memsleuth report (no \"schema\" field)".into()),
        }
        let mut report: Report = serde_json::from_value(doc).map_err(|e| format!("not a memsleuth report ({e})"))?;
        for f in &mut report.functions {
            f.lines.sort_by_key(|l| l.lineno);
            let last_ran = f.lines.last().map_or(f.first_lineno, |l| l.lineno);
            f.last_lineno = f.last_lineno.max(last_ran).max(f.first_lineno);
            let wanted = (f.last_lineno - f.first_lineno + 1) as usize;
            f.source = std::fs::read_to_string(&f.filename)
                .ok()
                .map(|file| {
                    file.lines()
                        .skip((f.first_lineno as usize).saturating_sub(1))
                        .take(wanted)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_else(|| {
                    (f.first_lineno..=f.last_lineno)
                        .map(|n| {
                            f.lines
                                .iter()
                                .find(|l| l.lineno == n)
                                .map_or(String::new(), |l| format!("    {}", l.source))
                        })
                        .collect()
                });
        }
        Ok(report)
    }

    pub fn to_json(&self) -> String {
        // Serialising plain structs of numbers and strings into a String cannot fail.
        serde_json::to_string(&Document { schema: SCHEMA, report: self }).unwrap_or_default()
    }

    /// One report whose functions add up the figures of the same function (by file, name and
    /// first line) in every process's report.
    pub fn summary(reports: &[Report]) -> Report {
        let mut functions: Vec<FunctionReport> = Vec::new();
        for f in reports.iter().flat_map(|r| &r.functions) {
            let same = |g: &&mut FunctionReport| {
                (g.filename.as_str(), g.name.as_str(), g.first_lineno)
                    == (f.filename.as_str(), f.name.as_str(), f.first_lineno)
            };
            let Some(merged) = functions.iter_mut().find(same) else {
                let mut first = f.clone();
                first.rss_at_entry = None;
                first.totals.forget_process();
                first.lines.iter_mut().for_each(|l| l.figures.forget_process());
                first.teardown.iter_mut().for_each(Figures::forget_process);
                functions.push(first);
                continue;
            };
            merged.last_lineno = merged.last_lineno.max(f.last_lineno);
            merged.calls += f.calls;
            merged.totals.add_process(&f.totals);
            for line in &f.lines {
                match merged.lines.iter_mut().find(|l| l.lineno == line.lineno) {
                    Some(l) => l.figures.add_process(&line.figures),
                    None => {
                        let mut first = line.clone();
                        first.figures.forget_process();
                        merged.lines.push(first);
                    }
                }
            }
            merged.lines.sort_by_key(|l| l.lineno);
            match (&mut merged.teardown, &f.teardown) {
                (Some(t), Some(u)) => t.add_process(u),
                (None, Some(u)) => {
                    let mut first = u.clone();
                    first.forget_process();
                    merged.teardown = Some(first);
                }
                _ => {}
            }
        }
        let mut process = ProcessReport::default();
        for p in reports.iter().map(|r| &r.process) {
            process.allocated_bytes += p.allocated_bytes;
            process.freed_bytes += p.freed_bytes;
            process.live_bytes += p.live_bytes;
            process.untracked_frees += p.untracked_frees;
        }
        Report {
            python_version: reports.first().map_or(String::new(), |r| r.python_version.clone()),
            argv: None,
            selection: None,
            sink: None,
            processes: Some(reports.len() as u64),
            functions,
            process,
        }
    }
}

fn function_report(ledger: &Ledger, func: FuncId) -> Option<FunctionReport> {
    let f = &ledger.funcs()[func.index()];
    if f.calls == 0 {
        return None;
    }
    let (lines, totals) = ledger.function_stats(func);
    let source_of = |lineno: u32| {
        f.info.source.get((lineno - f.info.first_lineno) as usize).map_or(String::new(), |s| s.trim_end().to_string())
    };
    // Hints are computed here, where every report is built, so the JSON, the text and the HTML
    // carry the same ones (docs/design.md, "HTML report and hints").
    let returned = hints::returned_names(&f.info.source);
    let hinted = |lineno: u32, s: &LineStats| {
        let source = source_of(lineno);
        let mut figures = Figures::from_stats(s, false);
        figures.hints = hints::line_hints(&source, &figures, f.calls, &returned);
        LineReport { lineno, source, figures }
    };
    Some(FunctionReport {
        code: f.info.code,
        name: f.info.name.clone(),
        module: f.info.module.clone(),
        filename: f.info.filename.clone(),
        first_lineno: f.info.first_lineno,
        last_lineno: (f.info.first_lineno + f.info.source.len() as u32).saturating_sub(1),
        calls: f.calls,
        rss_at_entry: f.rss_at_entry,
        totals: Figures::from_stats(totals, false),
        teardown: ledger.teardown_stats(func).map(|s| {
            let mut figures = Figures::from_stats(s, true);
            figures.hints = hints::teardown_hints(&figures);
            figures
        }),
        lines: lines.into_iter().filter(|(_, s)| s.hits > 0).map(|(lineno, s)| hinted(lineno, s)).collect(),
        source: f.info.source.iter().map(|s| s.trim_end().to_string()).collect(),
    })
}

const MIB: f64 = (1u64 << 20) as f64;

/// A byte count in the largest binary unit that keeps it at or above 1, one decimal.
pub fn human_bytes(bytes: i64) -> String {
    let magnitude = bytes.unsigned_abs();
    if magnitude < 1024 {
        return format!("{bytes} B");
    }
    let units = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// `4096`, `64KiB`, `1.5MiB`, `2GB`...: binary units for KiB/MiB/GiB (and K/M/G), decimal for
/// KB/MB/GB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("'{text}' is not a size (try 4096, 64KiB, 1MiB)"))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        other => return Err(format!("unknown unit '{other}' (use B, KiB, MiB, GiB, KB, MB or GB)")),
    };
    let bytes = (number * factor).round();
    if bytes >= 2f64.powi(64) {
        return Err(format!("'{text}' is more than 16 EiB"));
    }
    Ok(bytes as u64)
}

/// The most decimals the MiB columns show: one byte is 2^-20 MiB, whose decimal expansion has
/// exactly 20 digits, so more would only add zeros (and a large enough one makes `format!` panic).
pub const MAX_PRECISION: usize = 20;

/// What the Line Contents column shows for a line whose source cannot be read (code given to
/// `exec`, a file deleted since).
pub const SOURCE_UNAVAILABLE: &str = "<source unavailable>";

fn mib(bytes: f64, precision: usize) -> String {
    format!("{:.*} MiB", precision, bytes / MIB)
}

/// memory_profiler's table for one function, the exact columns beside it. Lines whose
/// allocated, freed and RSS change all stay below `min_bytes` are left out.
pub fn render_function(f: &FunctionReport, precision: usize, min_bytes: u64) -> String {
    let precision = precision.min(MAX_PRECISION);
    // memory_profiler's '{:>12}' columns, widened only when the precision needs it.
    let width = (precision + 8).max(12);
    let row = |lineno: &str, mem: &str, inc: &str, occ: &str, exact: [&str; 4], src: &str| {
        format!(
            "{lineno:>6} {mem:>w$} {inc:>w$}  {occ:>10} {:>11} {:>11} {:>11} {:>11}   {src}\n",
            exact[0],
            exact[1],
            exact[2],
            exact[3],
            w = width
        )
    };
    let figures_row = |lineno: &str, g: &Figures, src: &str| {
        row(
            lineno,
            &g.rss_after_bytes.map_or(String::new(), |r| mib(r as f64, precision)),
            &mib(g.rss_delta_bytes as f64, precision),
            &g.hits.to_string(),
            [
                &human_bytes(g.allocated_bytes as i64),
                &human_bytes(g.freed_bytes as i64),
                &human_bytes(g.net_bytes),
                &human_bytes(g.peak_bytes),
            ],
            src,
        )
    };
    let mut out = format!("Filename: {}   function: {}   calls: {}\n\n", f.filename, f.name, f.calls);
    let header =
        row("Line #", "Mem usage", "Increment", "Occurrences", ["Allocated", "Freed", "Net", "Peak"], "Line Contents");
    out.push_str(&header);
    out.push_str(&"=".repeat(header.trim_end().len()));
    out.push('\n');
    let below = |g: &Figures| {
        min_bytes > 0
            && g.allocated_bytes < min_bytes
            && g.freed_bytes < min_bytes
            && g.rss_delta_bytes.unsigned_abs() < min_bytes
    };
    // Without its source (a saved report's is blank too) a function still shows the lines that
    // ran, and its first line with the RSS at entry.
    let no_source = f.source.iter().all(|s| s.trim().is_empty());
    let last_ran = f.lines.iter().map(|l| l.lineno).max().unwrap_or(f.first_lineno);
    let last = last_ran.max(f.first_lineno + f.source.len().saturating_sub(1) as u32);
    for lineno in f.first_lineno..=last {
        let i = (lineno - f.first_lineno) as usize;
        let ran = f.lines.iter().find(|l| l.lineno == lineno);
        let src = match f.source.get(i) {
            Some(s) if !no_source => s.as_str(),
            _ if ran.is_some() || i == 0 => SOURCE_UNAVAILABLE,
            _ => continue,
        };
        // The first line stays when it did not run: it is the def line, showing RSS at entry.
        let hidden = match ran {
            Some(l) => below(&l.figures),
            None => i > 0,
        };
        if min_bytes > 0 && hidden {
            continue;
        }
        let text = match ran {
            Some(l) => figures_row(&lineno.to_string(), &l.figures, src),
            None if i == 0 => {
                let entry = f.rss_at_entry.map_or(String::new(), |r| mib(r as f64, precision));
                row(&lineno.to_string(), &entry, "", "", ["", "", "", ""], src)
            }
            None => row(&lineno.to_string(), "", "", "", ["", "", "", ""], src),
        };
        out.push_str(text.trim_end());
        out.push('\n');
    }
    // A teardown that moved nothing (most calls: their locals are small ints and borrowed
    // objects) would be a row of zeros under every table; the JSON keeps it. Nor does an RSS
    // change too small to show at this precision (a page) make one: whether a page moved there
    // is the machine's noise, and the row would read 0.0 MiB.
    let shown = |bytes: i64| mib(bytes.unsigned_abs() as f64, precision) != mib(0.0, precision);
    let moved =
        |g: &Figures| g.allocated_bytes != 0 || g.freed_bytes != 0 || shown(g.rss_delta_bytes) || g.note.is_some();
    let teardown = f.teardown.as_ref().filter(|g| moved(g) && !below(g));
    if let Some(g) = teardown {
        out.push_str(figures_row("", g, TEARDOWN_ROW).trim_end());
        out.push('\n');
    }
    // The rows' notes, then their hints ("line N hint (kind): ..."), so that a reader of the
    // notes alone stops at the first hint (docs/design.md, "HTML report and hints").
    let rows: Vec<(String, &Figures)> = f
        .lines
        .iter()
        .map(|l| (format!("line {}", l.lineno), &l.figures))
        .chain(teardown.map(|g| ("return".to_string(), g)))
        .collect();
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|(label, g)| g.note.as_ref().map(|n| format!("  {label}: {n}\n")))
        .chain(rows.iter().flat_map(|(label, g)| {
            g.hints.iter().map(move |h| format!("  {label} hint ({}): {}\n", h.kind, h.message))
        }))
        .collect();
    if !notes.is_empty() {
        out.push_str("\nNotes\n");
        out.extend(notes);
    }
    out.push('\n');
    out
}

/// The text report's row for a frame's teardown, below its last line.
pub const TEARDOWN_ROW: &str = "(return: the frame's locals released)";

/// Every function's table, in the order they were first profiled.
/// The first line of a report whose books were kept in the program.
pub const THREAD_SINK_HEADING: &str =
    "memsleuth: the figures were kept in a thread of the program, not a sink process: its RSS includes memsleuth's tables\n";

pub fn render_text(report: &Report, precision: usize, min_bytes: u64) -> String {
    let mut heading = String::new();
    if report.sink.as_deref() == Some("thread") {
        heading.push_str(THREAD_SINK_HEADING);
    }
    if let Some(selection) = &report.selection {
        heading += &format!("memsleuth: {selection}\n\n");
    }
    heading + &report.functions.iter().map(|f| render_function(f, precision, min_bytes)).collect::<String>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Hot;

    #[test]
    fn from_ledger_where_builds_only_the_functions_kept() {
        let mut l = Ledger::new();
        let ids: Vec<FuncId> = [("f", 0x100), ("g", 0x200), ("h", 0x300)]
            .iter()
            .map(|&(name, code)| {
                l.register_function(FuncInfo {
                    name: name.to_string(),
                    module: "mod".to_string(),
                    filename: "mod.py".to_string(),
                    first_lineno: 1,
                    source: vec!["def f():".to_string(), "    pass".to_string()],
                    code,
                })
            })
            .collect();
        let mut h = Hot::ZERO;
        for &id in &ids[..2] {
            l.enter(&mut h, id, 0);
            l.leave(&mut h, 0);
        }
        let names = |r: Report| r.functions.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(Report::from_ledger(&l, "3.x", None, 0)), ["f", "g"]);
        // h is kept but was never called: a report holds called functions only.
        assert_eq!(names(Report::from_ledger_where(&l, "3.x", None, 0, |f| f.code != 0x100)), ["g"]);
        assert_eq!(names(Report::from_ledger_where(&l, "3.x", None, 0, |_| false)), Vec::<String>::new());
    }

    #[test]
    fn live_at_the_peak_goes_by_line_into_the_json_and_back_and_into_its_section() {
        let mut l = Ledger::new();
        let source =
            |name: &str| vec![format!("def {name}():"), "    a = make()".to_string(), "    b = make()".to_string()];
        let info = |name: &str, code| FuncInfo {
            name: name.to_string(),
            module: "mod".to_string(),
            filename: "/src/mod.py".to_string(),
            first_lineno: 1,
            source: source(name),
            code,
        };
        let (f, g) = (l.register_function(info("f", 0x100)), l.register_function(info("g", 0x200)));
        let mut h = Hot::ZERO;
        l.enter(&mut h, f, 0);
        l.on_line(&mut h, 0x100, 2, None);
        l.on_alloc(&mut h, 0x1000, 300, false);
        l.on_line(&mut h, 0x100, 3, None);
        l.on_alloc(&mut h, 0x2000, 5000, false);
        l.enter(&mut h, g, 0);
        l.on_line(&mut h, 0x200, 2, None);
        l.on_alloc(&mut h, 0x3000, 700, false);
        l.leave(&mut h, 0);
        l.on_free(&mut h, 0x2000, false);
        l.leave(&mut h, 0);
        l.on_alloc(&mut h, 0x4000, 40, false); // outside every profiled line, after the peak
        let report = Report::from_ledger(&l, "3.x", None, 0);
        let at = |function: &str, lineno, source: &str, bytes| PeakLine {
            function: function.to_string(),
            filename: "/src/mod.py".to_string(),
            lineno,
            source: source.to_string(),
            bytes,
        };
        // g's block was born under f's line 3 too: each block counts on its innermost line.
        let expected =
            vec![at("f", 3, "b = make()", 5000), at("g", 2, "a = make()", 700), at("f", 2, "a = make()", 300)];
        assert_eq!(report.process.peak_live_by_line, expected);
        assert_eq!(Report::from_json(&report.to_json()).unwrap().process.peak_live_by_line, expected);
        let only_g = Report::from_ledger_where(&l, "3.x", None, 0, |f| f.code == 0x200);
        assert_eq!(only_g.process.peak_live_by_line, expected[1..2]);
        let text = render_live_at_peak(&report);
        assert!(text.starts_with("Live at the tracked peak (5.9 KiB, "), "{text}");
        let rows: Vec<&str> = text.lines().skip(1).map(str::trim).collect();
        assert_eq!(
            rows,
            [
                "4.9 KiB  f (mod.py) line 3  b = make()",
                "700 B  g (mod.py) line 2  a = make()",
                "300 B  f (mod.py) line 2  a = make()",
                "0 B  outside the profiled lines"
            ],
            "{text}"
        );
        assert_eq!(render_live_at_peak(&Report::from_ledger(&Ledger::new(), "3.x", None, 0)), "");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1.5MiB"), Ok(1_572_864));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert_eq!(parse_size("15GiB"), Ok(15 << 30));
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert!(parse_size("18446744073709551616").is_err());
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(-56), "-56 B");
        assert_eq!(human_bytes(8_000_056), "7.6 MiB");
        assert_eq!(human_bytes(-160_000_000), "-152.6 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    fn function(source: &[&str], ran: &[u32]) -> FunctionReport {
        let figures = Figures {
            hits: 1,
            allocated_bytes: 800_056,
            allocations: 1,
            net_bytes: 800_056,
            peak_bytes: 800_056,
            rss_after_bytes: Some(20 << 20),
            rss_delta_bytes: 1 << 20,
            ..Figures::default()
        };
        FunctionReport {
            code: 0,
            name: "f".into(),
            module: "m".into(),
            filename: "<string>".into(),
            first_lineno: 2,
            last_lineno: (2 + source.len() as u32).saturating_sub(1),
            calls: 1,
            rss_at_entry: Some(19 << 20),
            totals: figures.clone(),
            lines: ran
                .iter()
                .map(|&lineno| LineReport { lineno, source: String::new(), figures: figures.clone() })
                .collect(),
            source: source.iter().map(|s| s.to_string()).collect(),
            teardown: None,
        }
    }

    /// (line number, MiB column, source) of each row of a rendered table.
    fn rows(text: &str) -> Vec<(u32, String, String)> {
        // The header's "Occurrences" is one wider than its column, so rows start one before it.
        let column = text.lines().find_map(|l| l.find("Line Contents")).unwrap() - 1;
        text.lines()
            .skip_while(|l| !l.starts_with('='))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| {
                let mut words = l.split_whitespace();
                let lineno = words.next().unwrap().parse().unwrap();
                let mem = words.next().unwrap_or_default().to_string();
                (lineno, mem, l.get(column..).unwrap_or_default().trim().to_string())
            })
            .collect()
    }

    #[test]
    fn any_precision_renders() {
        let f = function(&["@profile", "def f():", "    a = [1] * 100000"], &[4]);
        for precision in [0, 20, 21, 1 << 16, usize::MAX] {
            let text = render_function(&f, precision, 0);
            let decimals = rows(&text)[2].1.split('.').nth(1).map_or(0, str::len);
            assert_eq!(decimals, precision.min(MAX_PRECISION), "{text}");
        }
    }

    #[test]
    fn lines_without_source_show_their_figures() {
        // Code given to exec: no source lines (live), or blank ones (read back from JSON).
        for source in [&[][..], &["", "", "    ", "    "][..]] {
            let text = render_function(&function(source, &[4, 5]), 1, 0);
            let unavailable = SOURCE_UNAVAILABLE.to_string();
            assert_eq!(
                rows(&text),
                [
                    (2, "19.0".into(), unavailable.clone()),
                    (4, "20.0".into(), unavailable.clone()),
                    (5, "20.0".into(), unavailable)
                ],
                "{text}"
            );
        }
        // With its source, every line of it shows, the blank ones too.
        let text = render_function(&function(&["@profile", "def f():", "", "    a = [1] * 100000"], &[5]), 1, 0);
        let sources: Vec<String> = rows(&text).into_iter().map(|r| r.2).collect();
        assert_eq!(sources, ["@profile", "def f():", "", "a = [1] * 100000"], "{text}");
    }

    fn report(functions: Vec<FunctionReport>) -> Report {
        Report {
            python_version: "3.x".into(),
            argv: Some(vec!["prog.py".into()]),
            selection: None,
            sink: Some("process".into()),
            processes: None,
            functions,
            process: ProcessReport { rss_peak_bytes: Some(1 << 30), ..ProcessReport::default() },
        }
    }

    #[test]
    fn json_round_trips_byte_counts_past_two_to_the_53() {
        let mut f = function(&["def f():", "    a = [1] * 100000"], &[3]);
        f.lines[0].figures.allocated_bytes = (1 << 53) + 1;
        f.lines[0].figures.net_bytes = -(1 << 60) - 1;
        f.lines[0].figures.causes.unexplained = i64::MIN + 7;
        f.lines[0].figures.note = Some("a \"quoted\" note\n<tab>\t".into());
        let mut r = report(vec![f]);
        r.process.allocated_bytes = u64::MAX;
        let json = r.to_json();
        assert!(json.starts_with(r#"{"schema":"memsleuth.report/1","python_version":"3.x""#), "{json}");
        let back = Report::from_json(&json).unwrap();
        assert_eq!(back.functions[0].lines[0].figures, r.functions[0].lines[0].figures);
        assert_eq!(back.process, r.process);
        assert_eq!(back.to_json(), json);
    }

    #[test]
    fn from_json_names_what_is_wrong() {
        let err = |text: &str| Report::from_json(text).unwrap_err();
        assert!(err("[1, 2]").contains("no \"schema\""));
        assert!(err(r#"{"schema": "memray.report/9"}"#).contains("'memray.report/9'"));
        assert!(err(r#"{"schema": "memsleuth.report/1", "functions": [{}]}"#).contains("missing field"));
        assert!(err("{").starts_with("not JSON"));
    }

    #[test]
    fn summary_adds_up_the_same_function_across_processes() {
        let mut parent = function(&["def f():", "    a = 1", "    b = 2"], &[3]);
        parent.lines[0].figures.note = Some("only the parent's".into());
        let mut child = function(&["def f():", "    a = 1", "    b = 2"], &[3, 4]);
        child.lines[0].figures.peak_bytes = 5;
        child.lines[0].figures.causes.python = 100;
        let mut other = function(&["def g():"], &[2]);
        other.name = "g".into();
        let s = Report::summary(&[report(vec![parent.clone()]), report(vec![child.clone(), other])]);
        assert_eq!(s.processes, Some(2));
        assert_eq!(s.functions.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["f", "g"]);
        let f = &s.functions[0];
        assert_eq!(f.calls, 2);
        assert_eq!(f.lines.iter().map(|l| l.lineno).collect::<Vec<_>>(), [3, 4]);
        let line = &f.lines[0].figures;
        assert_eq!(line.allocated_bytes, 2 * parent.lines[0].figures.allocated_bytes);
        assert_eq!(line.peak_bytes, parent.lines[0].figures.peak_bytes.max(5));
        assert_eq!(line.causes.python, 100);
        assert_eq!((line.rss_after_bytes, &line.note), (None, &None));
        assert_eq!(f.lines[1].figures.rss_after_bytes, None, "a line only one process ran");
        assert_eq!(s.process.rss_peak_bytes, None, "peaks belong to one process");
    }

    #[test]
    fn hints_go_to_the_json_and_the_notes_and_come_back() {
        let mut f = function(&["def f():", "    NN = sum([x * x for x in range(THE_LIMIT)])"], &[3]);
        let hint = Hint {
            kind: "generator_expression".into(),
            message: "pass a \"generator\"".into(),
            saving_bytes: 3_984_000,
        };
        f.lines[0].figures.hints = vec![hint.clone()];
        let report = report(vec![f]);
        let text = render_text(&report, 1, 0);
        assert!(text.contains("\nNotes\n  line 3 hint (generator_expression): pass a \"generator\"\n"), "{text}");
        let back = Report::from_json(&report.to_json()).unwrap();
        assert_eq!(back.functions[0].lines[0].figures.hints, [hint]);
        assert_eq!(back.functions[0].totals.hints, []);
        // A report written before hints existed reads back without any.
        let old = report.to_json().replace(r#","hints":[]"#, "");
        assert!(!old.contains(r#""hints":[]"#));
        assert_eq!(Report::from_json(&old).unwrap().functions[0].totals.hints, []);
    }

    #[test]
    fn a_teardown_that_moved_nothing_has_no_row() {
        let mut f = function(&["def f():", "    return 1"], &[2]);
        let mut quiet = f.totals.clone();
        (quiet.allocated_bytes, quiet.freed_bytes, quiet.net_bytes, quiet.rss_delta_bytes) = (0, 0, 0, 0);
        f.teardown = Some(quiet.clone());
        assert!(!render_function(&f, 1, 0).contains(TEARDOWN_ROW));
        // A page of RSS reads 0.0 MiB at one decimal, 0.0039 MiB at four.
        quiet.rss_delta_bytes = -4096;
        f.teardown = Some(quiet.clone());
        assert!(!render_function(&f, 1, 0).contains(TEARDOWN_ROW));
        assert!(render_function(&f, 4, 0).contains(TEARDOWN_ROW));
        quiet.rss_delta_bytes = 0;
        quiet.freed_bytes = 64;
        f.teardown = Some(quiet);
        assert!(render_function(&f, 1, 0).contains(TEARDOWN_ROW));
    }
}
