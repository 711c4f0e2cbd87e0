//! The function/line registry: the profiled functions, numbered in the order they are
//! registered, and the lines of docs/design.md (Figures) that carry figures. Each source line
//! that ran gets a line id the first time it runs; each function also has two pseudo-lines of
//! its own, its totals (a line spanning each call) and its teardown.

use super::Ledger;
use crate::causes::Causes;

/// A profiled function: its place in registration order, which the producer numbers alike
/// (docs/design.md, "The books live in the sink").
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct FuncId(pub(crate) u32);

impl FuncId {
    /// The function's place in `Ledger::funcs`.
    #[inline(always)]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A line with figures: a source line of a function, or one of its pseudo-lines (totals,
/// teardown).
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct LineId(u32);

impl LineId {
    /// What fills the empty slots of a frame's recent lines, never read (line number 0 marks
    /// them empty): the first line id made, at the first function's registration, before which
    /// no frame exists.
    pub(super) const EMPTY_SLOT: LineId = LineId(0);

    #[inline(always)]
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// What the user-facing report needs to know about a profiled function.
#[derive(Clone, Debug, Default)]
pub struct FuncInfo {
    pub name: String,
    pub module: String,
    pub filename: String,
    pub first_lineno: u32,
    /// Source lines from `first_lineno` on.
    pub source: Vec<String>,
    /// Identity of the function's code object.
    pub code: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineStats {
    pub hits: u64,
    pub allocated_bytes: u64,
    pub allocations: u64,
    pub freed_bytes: u64,
    pub frees: u64,
    pub peak_bytes: i64,
    /// Bytes of blocks born under this line and freed before their call returned.
    pub freed_before_return: u64,
    pub rss_after: Option<u64>,
    pub rss_delta: i64,
    pub gc_collections: u64,
    pub gc_freed_bytes: u64,
    pub arenas_mapped: u64,
    pub arenas_unmapped: u64,
    pub causes: Causes,
}

impl LineStats {
    pub fn net_bytes(&self) -> i64 {
        self.allocated_bytes as i64 - self.freed_bytes as i64
    }
    pub fn retained_bytes(&self) -> u64 {
        self.allocated_bytes.saturating_sub(self.freed_before_return)
    }
}

pub struct Func {
    pub info: FuncInfo,
    /// Line id per line number offset from `first_lineno`; None until the line first runs.
    line_ids: Vec<Option<LineId>>,
    /// A pseudo-line spanning each call: the function's totals.
    pub(super) total_line: LineId,
    /// A pseudo-line from the function's return to the end of its call: the frame's teardown
    /// (its locals released), which no line of the function executes.
    pub(super) teardown_line: LineId,
    pub calls: u64,
    pub rss_at_entry: Option<u64>,
}

impl Func {
    /// The function's lines that ran, (line number, line id), in line order.
    pub(super) fn lines(&self) -> impl Iterator<Item = (u32, LineId)> + '_ {
        let first = self.info.first_lineno;
        self.line_ids.iter().enumerate().filter_map(move |(off, id)| id.map(|id| (first + off as u32, id)))
    }
}

impl Ledger {
    pub fn register_function(&mut self, info: FuncInfo) -> FuncId {
        if let Some(i) = self.funcs.iter().position(|f| f.info.code == info.code) {
            return FuncId(i as u32);
        }
        let total_line = self.new_line();
        let teardown_line = self.new_line();
        self.funcs.push(Func { info, line_ids: Vec::new(), total_line, teardown_line, calls: 0, rss_at_entry: None });
        FuncId((self.funcs.len() - 1) as u32)
    }

    pub fn funcs(&self) -> &[Func] {
        &self.funcs
    }

    pub(super) fn func(&self, func: FuncId) -> &Func {
        &self.funcs[func.index()]
    }

    pub(super) fn func_mut(&mut self, func: FuncId) -> &mut Func {
        &mut self.funcs[func.index()]
    }

    #[inline(always)]
    pub(super) fn line_stats_mut(&mut self, line: LineId) -> &mut LineStats {
        &mut self.lines[line.index()]
    }

    fn new_line(&mut self) -> LineId {
        self.lines.push(LineStats::default());
        self.live_by_line.add_line();
        LineId((self.lines.len() - 1) as u32)
    }

    pub(super) fn line_id(&mut self, func: FuncId, lineno: u32) -> LineId {
        let first = self.func(func).info.first_lineno;
        let offset = lineno.saturating_sub(first) as usize;
        let line_ids = &mut self.func_mut(func).line_ids;
        if offset >= line_ids.len() {
            line_ids.resize(offset + 1, None);
        }
        if let Some(id) = line_ids[offset] {
            return id;
        }
        let id = self.new_line();
        self.func_mut(func).line_ids[offset] = Some(id);
        id
    }

    /// Stats of each line that ran, by line number, and the function's totals.
    pub fn function_stats(&self, func: FuncId) -> (Vec<(u32, &LineStats)>, &LineStats) {
        let f = self.func(func);
        let lines = f.lines().map(|(lineno, id)| (lineno, &self.lines[id.index()])).collect();
        (lines, &self.lines[f.total_line.index()])
    }

    /// Stats of the function's frame teardowns (from each return to the end of its call), if
    /// a return was ever seen.
    pub fn teardown_stats(&self, func: FuncId) -> Option<&LineStats> {
        let stats = &self.lines[self.func(func).teardown_line.index()];
        (stats.hits > 0).then_some(stats)
    }
}
