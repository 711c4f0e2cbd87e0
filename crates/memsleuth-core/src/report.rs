//! Reports: the figures of docs/design.md (Figures) gathered from the ledger, rendered as memory_profiler's
//! table with the exact columns beside it (section 6) or as JSON (section 5).

use crate::causes::{note, Causes, NoteFacts};
use crate::json::{self, JsonWriter, Value};
use crate::ledger::{FuncId, FuncInfo, Ledger, LineStats, ProcessStats};

#[derive(Clone, Debug, PartialEq, Eq)]
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
    pub arenas_mapped: u64,
    pub arenas_unmapped: u64,
    pub causes: Causes,
    pub note: Option<String>,
}

impl Figures {
    fn from_json(v: &Value) -> Result<Self, String> {
        let int = |key: &str| -> Result<f64, String> {
            v.get(key).and_then(Value::as_f64).ok_or_else(|| format!("a line lacks the number '{key}'"))
        };
        Ok(Figures {
            hits: int("hits")? as u64,
            allocated_bytes: int("allocated_bytes")? as u64,
            allocations: int("allocations")? as u64,
            freed_bytes: int("freed_bytes")? as u64,
            frees: int("frees")? as u64,
            net_bytes: int("net_bytes")? as i64,
            peak_bytes: int("peak_bytes")? as i64,
            retained_bytes: int("retained_bytes")? as u64,
            rss_after_bytes: v.get("rss_after_bytes").and_then(Value::as_f64).map(|r| r as u64),
            rss_delta_bytes: int("rss_delta_bytes")? as i64,
            gc_collections: int("gc_collections")? as u64,
            gc_freed_bytes: int("gc_freed_bytes")? as u64,
            arenas_mapped: v.get("arenas_mapped").and_then(Value::as_f64).unwrap_or(0.0) as u64,
            arenas_unmapped: v.get("arenas_unmapped").and_then(Value::as_f64).unwrap_or(0.0) as u64,
            causes: {
                let c = v.get("causes").ok_or("a line lacks causes")?;
                let mut values = [0i64; 9];
                for (value, name) in values.iter_mut().zip(Causes::NAMES) {
                    *value = c.get(name).and_then(Value::as_f64).ok_or_else(|| format!("causes lack '{name}'"))? as i64;
                }
                Causes::from_values(values)
            },
            note: v.get("note").and_then(Value::as_str).map(str::to_string),
        })
    }

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
        }
    }

    fn write_json(&self, w: &mut JsonWriter) {
        w.field_u64("hits", self.hits);
        w.field_u64("allocated_bytes", self.allocated_bytes);
        w.field_u64("allocations", self.allocations);
        w.field_u64("freed_bytes", self.freed_bytes);
        w.field_u64("frees", self.frees);
        w.field_i64("net_bytes", self.net_bytes);
        w.field_i64("peak_bytes", self.peak_bytes);
        w.field_u64("retained_bytes", self.retained_bytes);
        match self.rss_after_bytes {
            Some(v) => w.field_u64("rss_after_bytes", v),
            None => w.field_null("rss_after_bytes"),
        }
        w.field_i64("rss_delta_bytes", self.rss_delta_bytes);
        w.field_u64("gc_collections", self.gc_collections);
        w.field_u64("gc_freed_bytes", self.gc_freed_bytes);
        w.field_u64("arenas_mapped", self.arenas_mapped);
        w.field_u64("arenas_unmapped", self.arenas_unmapped);
        w.key("causes");
        w.begin_object();
        for (name, value) in Causes::NAMES.iter().zip(self.causes.values()) {
            w.field_i64(name, value);
        }
        w.end_object();
        match &self.note {
            Some(note) => w.field_str("note", note),
            None => w.field_null("note"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct LineReport {
    pub lineno: u32,
    pub source: String,
    pub figures: Figures,
}

#[derive(Clone, Debug)]
pub struct FunctionReport {
    /// Identity of the function's code object.
    pub code: usize,
    pub name: String,
    pub module: String,
    pub filename: String,
    pub first_lineno: u32,
    pub calls: u64,
    pub rss_at_entry: Option<u64>,
    pub totals: Figures,
    /// Lines that ran, in source order.
    pub lines: Vec<LineReport>,
    /// The frame's teardown after each return (its locals released), when a return was seen;
    /// reports written before it existed have none.
    pub teardown: Option<Figures>,
    /// The whole source of the function, from `first_lineno`.
    pub source: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub python_version: String,
    pub argv: Option<Vec<String>>,
    /// What was profiled and why, when the command line chose it.
    pub selection: Option<String>,
    pub functions: Vec<FunctionReport>,
    pub process: ProcessStats,
    pub rss_peak_bytes: u64,
    /// Where the books were kept: "process" (a sink process) or "thread" (in the program).
    pub sink: Option<String>,
    /// The sink process's own peak RSS, apart from the program's.
    pub sink_rss_peak_bytes: Option<u64>,
    /// What was live at the tracked peak, by line of the report's functions, most first.
    pub peak_live_by_line: Vec<PeakLine>,
}

/// A line's bytes live at the tracked peak (docs/design.md, "Live at the tracked peak").
#[derive(Clone, Debug, PartialEq, Eq)]
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

    fn write_json(lines: &[PeakLine], w: &mut JsonWriter) {
        w.key("peak_live_by_line");
        w.begin_array();
        for l in lines {
            w.begin_object();
            w.field_str("function", &l.function);
            w.field_str("filename", &l.filename);
            w.field_u64("lineno", l.lineno as u64);
            w.field_str("source", &l.source);
            w.field_u64("bytes", l.bytes);
            w.end_object();
        }
        w.end_array();
    }

    fn from_json(process: Option<&Value>) -> Vec<PeakLine> {
        let lines = process.and_then(|p| p.get("peak_live_by_line")).and_then(Value::as_array).unwrap_or_default();
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
        let num = |v: &Value, key: &str| v.get(key).and_then(Value::as_f64);
        lines
            .iter()
            .filter_map(|l| {
                Some(PeakLine {
                    function: text(l, "function"),
                    filename: text(l, "filename"),
                    lineno: num(l, "lineno")? as u32,
                    source: text(l, "source"),
                    bytes: num(l, "bytes")? as u64,
                })
            })
            .collect()
    }
}

/// The "Live at the tracked peak" section of a report (docs/design.md, "Live at the tracked
/// peak"): the bytes each profiled line's blocks held when the tracked live bytes were highest,
/// and the rest, born outside every profiled line. Empty before any tracked block.
pub fn render_live_at_peak(report: &Report) -> String {
    let peak = report.process.tracked_peak_bytes;
    if peak == 0 {
        return String::new();
    }
    let mut out = format!(
        "Live at the tracked peak ({}, the most tracked bytes live at once), by line:\n",
        human_bytes(peak as i64)
    );
    for l in &report.peak_live_by_line {
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
    let on_lines: u64 = report.peak_live_by_line.iter().map(|l| l.bytes).sum();
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
            functions,
            process: ledger.process,
            rss_peak_bytes,
            sink: None,
            sink_rss_peak_bytes: None,
            peak_live_by_line: PeakLine::of_ledger(ledger, &kept),
        }
    }

    /// Reads back a report written by `to_json`; the error explains why the text is not one.
    /// Source lines come from the profiled file when it is still there, else from the report.
    pub fn from_json(text: &str) -> Result<Report, String> {
        let doc = json::parse(text).map_err(|e| format!("not JSON ({e})"))?;
        match doc.get("schema").and_then(Value::as_str) {
            Some("memsleuth.report/1") => {}
            Some(other) => return Err(format!("unsupported report schema '{other}'")),
            None => return Err("not a memsleuth report (no \"schema\" field)".into()),
        }
        let text_field = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
        let mut functions = Vec::new();
        for f in doc.get("functions").and_then(Value::as_array).ok_or("the report has no function list")? {
            let first_lineno =
                f.get("first_lineno").and_then(Value::as_f64).ok_or("a function lacks first_lineno")? as u32;
            let mut lines = Vec::new();
            for l in f.get("lines").and_then(Value::as_array).unwrap_or_default() {
                let lineno = l.get("lineno").and_then(Value::as_f64).ok_or("a line lacks lineno")? as u32;
                lines.push(LineReport { lineno, source: text_field(l, "source"), figures: Figures::from_json(l)? });
            }
            let filename = text_field(f, "filename");
            let last_ran = lines.iter().map(|l| l.lineno).max().unwrap_or(first_lineno);
            let last = f.get("last_lineno").and_then(Value::as_f64).map_or(last_ran, |n| (n as u32).max(last_ran));
            let source = std::fs::read_to_string(&filename)
                .ok()
                .map(|file| {
                    file.lines()
                        .skip(first_lineno as usize - 1)
                        .take((last - first_lineno + 1) as usize)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_else(|| {
                    (first_lineno..=last)
                        .map(|n| {
                            lines.iter().find(|l| l.lineno == n).map_or(String::new(), |l| format!("    {}", l.source))
                        })
                        .collect()
                });
            functions.push(FunctionReport {
                code: 0,
                name: text_field(f, "name"),
                module: text_field(f, "module"),
                filename,
                first_lineno,
                calls: f.get("calls").and_then(Value::as_f64).unwrap_or(0.0) as u64,
                rss_at_entry: f.get("rss_at_entry_bytes").and_then(Value::as_f64).map(|r| r as u64),
                totals: Figures::from_json(f.get("totals").ok_or("a function lacks totals")?)?,
                teardown: match f.get("teardown") {
                    Some(t) if !matches!(t, Value::Null) => Some(Figures::from_json(t)?),
                    _ => None,
                },
                lines,
                source,
            });
        }
        let p = doc.get("process");
        let num = |key: &str| p.and_then(|p| p.get(key)).and_then(Value::as_f64).unwrap_or(0.0) as u64;
        Ok(Report {
            python_version: text_field(&doc, "python_version"),
            argv: doc
                .get("argv")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()),
            selection: doc.get("selection").and_then(Value::as_str).map(str::to_string),
            functions,
            process: ProcessStats {
                allocated_bytes: num("allocated_bytes"),
                freed_bytes: num("freed_bytes"),
                live_bytes: num("live_bytes"),
                tracked_peak_bytes: num("tracked_peak_bytes"),
                untracked_frees: num("untracked_frees"),
                ..ProcessStats::default()
            },
            rss_peak_bytes: num("rss_peak_bytes"),
            sink: doc.get("sink").and_then(Value::as_str).map(str::to_string),
            sink_rss_peak_bytes: p.and_then(|p| p.get("sink_rss_peak_bytes")).and_then(Value::as_f64).map(|n| n as u64),
            peak_live_by_line: PeakLine::from_json(p),
        })
    }

    pub fn to_json(&self) -> String {
        let mut w = JsonWriter::new();
        w.begin_object();
        w.field_str("schema", "memsleuth.report/1");
        w.field_str("python_version", &self.python_version);
        w.key("argv");
        match &self.argv {
            Some(argv) => {
                w.begin_array();
                for a in argv {
                    w.item_str(a);
                }
                w.end_array();
            }
            None => w.null(),
        }
        if let Some(selection) = &self.selection {
            w.field_str("selection", selection);
        }
        if let Some(sink) = &self.sink {
            w.field_str("sink", sink);
        }
        w.key("functions");
        w.begin_array();
        for f in &self.functions {
            w.begin_object();
            w.field_str("name", &f.name);
            w.field_str("module", &f.module);
            w.field_str("filename", &f.filename);
            w.field_u64("first_lineno", f.first_lineno as u64);
            w.field_u64("last_lineno", (f.first_lineno as u64 + f.source.len() as u64).saturating_sub(1));
            w.field_u64("calls", f.calls);
            match f.rss_at_entry {
                Some(rss) => w.field_u64("rss_at_entry_bytes", rss),
                None => w.field_null("rss_at_entry_bytes"),
            }
            w.key("totals");
            w.begin_object();
            f.totals.write_json(&mut w);
            w.end_object();
            w.key("lines");
            w.begin_array();
            for l in &f.lines {
                w.begin_object();
                w.field_u64("lineno", l.lineno as u64);
                w.field_str("source", l.source.trim());
                l.figures.write_json(&mut w);
                w.end_object();
            }
            w.end_array();
            w.key("teardown");
            match &f.teardown {
                Some(t) => {
                    w.begin_object();
                    t.write_json(&mut w);
                    w.end_object();
                }
                None => w.null(),
            }
            w.end_object();
        }
        w.end_array();
        w.key("process");
        w.begin_object();
        let p = &self.process;
        w.field_u64("allocated_bytes", p.allocated_bytes);
        w.field_u64("freed_bytes", p.freed_bytes);
        w.field_u64("live_bytes", p.live_bytes);
        w.field_u64("tracked_peak_bytes", p.tracked_peak_bytes);
        w.field_u64("rss_peak_bytes", self.rss_peak_bytes);
        w.field_u64("untracked_frees", p.untracked_frees);
        if let Some(peak) = self.sink_rss_peak_bytes {
            w.field_u64("sink_rss_peak_bytes", peak);
        }
        PeakLine::write_json(&self.peak_live_by_line, &mut w);
        w.end_object();
        w.end_object();
        w.finish()
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
    Some(FunctionReport {
        code: f.info.code,
        name: f.info.name.clone(),
        module: f.info.module.clone(),
        filename: f.info.filename.clone(),
        first_lineno: f.info.first_lineno,
        calls: f.calls,
        rss_at_entry: f.rss_at_entry,
        totals: Figures::from_stats(totals, false),
        teardown: ledger.teardown_stats(func).map(|s| Figures::from_stats(s, true)),
        lines: lines
            .into_iter()
            .filter(|(_, s)| s.hits > 0)
            .map(|(lineno, s)| LineReport { lineno, source: source_of(lineno), figures: Figures::from_stats(s, false) })
            .collect(),
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
    // objects) would be a row of zeros under every table; the JSON keeps it.
    let moved = |g: &Figures| g.allocated_bytes != 0 || g.freed_bytes != 0 || g.rss_delta_bytes != 0;
    let teardown = f.teardown.as_ref().filter(|g| moved(g) && !below(g));
    if let Some(g) = teardown {
        out.push_str(figures_row("", g, TEARDOWN_ROW).trim_end());
        out.push('\n');
    }
    let notes: Vec<String> = f
        .lines
        .iter()
        .filter_map(|l| l.figures.note.as_ref().map(|n| format!("  line {}: {n}\n", l.lineno)))
        .chain(teardown.and_then(|g| g.note.as_ref()).map(|n| format!("  return: {n}\n")))
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
        assert_eq!(report.peak_live_by_line, expected);
        assert_eq!(Report::from_json(&report.to_json()).unwrap().peak_live_by_line, expected);
        let only_g = Report::from_ledger_where(&l, "3.x", None, 0, |f| f.code == 0x200);
        assert_eq!(only_g.peak_live_by_line, expected[1..2]);
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
            freed_bytes: 0,
            frees: 0,
            net_bytes: 800_056,
            peak_bytes: 800_056,
            retained_bytes: 0,
            rss_after_bytes: Some(20 << 20),
            rss_delta_bytes: 1 << 20,
            gc_collections: 0,
            gc_freed_bytes: 0,
            arenas_mapped: 0,
            arenas_unmapped: 0,
            causes: Causes::default(),
            note: None,
        };
        FunctionReport {
            code: 0,
            name: "f".into(),
            module: "m".into(),
            filename: "<string>".into(),
            first_lineno: 2,
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

    #[test]
    fn a_teardown_that_moved_nothing_has_no_row() {
        let mut f = function(&["def f():", "    return 1"], &[2]);
        let mut quiet = f.totals.clone();
        (quiet.allocated_bytes, quiet.freed_bytes, quiet.net_bytes, quiet.rss_delta_bytes) = (0, 0, 0, 0);
        f.teardown = Some(quiet.clone());
        assert!(!render_function(&f, 1, 0).contains(TEARDOWN_ROW));
        quiet.freed_bytes = 64;
        f.teardown = Some(quiet);
        assert!(render_function(&f, 1, 0).contains(TEARDOWN_ROW));
    }
}
