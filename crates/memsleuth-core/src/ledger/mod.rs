//! The per-line ledger: which lines are active on each thread, what each allocation and free
//! means for them, and the figures of docs/design.md (Figures).
//!
//! The allocation hook must stay tiny, so it never touches per-line state. Each thread keeps
//! cumulative counters (`Hot`: bytes and counts allocated and freed, and the high-water mark of
//! its net since the innermost measured execution began). An execution snapshots them when it
//! opens and charges the difference to its line when it closes, which makes figures inclusive
//! of callees for free. Peaks fold outwards: when an execution closes, its high-water mark
//! becomes a candidate for the enclosing one.
//!
//! Recursion is charged once: an execution of a line that is already active further out on the
//! same thread is not measured (only `hits` counts it); the outer execution already covers it.
//!
//! Retained bytes are allocated bytes minus the bytes of those blocks freed before their
//! frame's call returned. Each block remembers the node (interned chain of active lines, one
//! node per execution level, each naming its frame depth) it was born under and the activation
//! (one push of a frame on a thread's stack, linked to the activation below it) it was born in.
//! Walking both chains together gives, for each line the block was born under, the call that
//! line belonged to; a call stays live until it returns, including while a generator or
//! coroutine is suspended. The block table stores the pair as one interned `Birth`, shared by
//! the blocks born alike. Births, activations and calls are recycled once nothing refers to them.

use crate::blocks::{Block, BlockTable};
use crate::causes::{Causes, OsReading, Sample};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Owner of blocks allocated while no profiled line is active on the thread.
pub const NO_NODE: u32 = 0;
/// Owner of blocks that the profiler caused (frame objects materialised for its trace function,
/// ints created for its callbacks): they never reach a figure.
pub const PROFILER_NODE: u32 = 1;
const FIRST_NODE: u32 = 2;
const NO_LINE: u32 = u32::MAX;
/// No activation: the block was allocated with no profiled frame on the thread.
pub const NO_ACT: u32 = u32::MAX;
/// A generator frame that has not started: its first resume is its call.
const NO_CALL: u32 = u32::MAX;

/// How many of a thread's latest allocations `mark_profiler` may take: enough for everything
/// the collector builds to call gc.callbacks (an info dict, its keys table, three keys, two
/// values and the phase string).
pub const RECENT_ALLOCS: usize = 16;

/// A thread's cumulative counters and current attribution, read and written by the hooks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hot {
    pub alloc_bytes: u64,
    pub allocs: u64,
    pub freed_bytes: u64,
    pub frees: u64,
    /// Highest `net()` since the innermost measured execution opened (or since its last fold).
    pub high: i64,
    /// The node new blocks are owned by.
    pub owner: u32,
    /// The activation of this thread's innermost profiled frame (NO_ACT if none).
    pub act: u32,
    /// The birth of this thread's latest allocation (it may have been recycled since).
    pub birth: u32,
    /// Index of this thread in the ledger plus one; 0 before the thread's first profiled call.
    pub thread: u32,
    /// Code object of the thread's innermost profiled frame: line events for any other code
    /// object are ignored without taking a lock.
    pub top_code: usize,
    /// This thread's most recent allocations in the current execution, a ring written at
    /// `allocs_in_exec` (their count, restarted by each execution): the only blocks
    /// `mark_profiler` takes.
    pub recent_allocs: [usize; RECENT_ALLOCS],
    pub allocs_in_exec: u32,
    /// Collections that started on this thread, and tracked bytes freed inside them.
    pub gc_collections: u64,
    pub gc_freed_bytes: u64,
    pub in_gc: bool,
    /// pymalloc arenas this thread made pymalloc map and unmap.
    pub arenas_mapped: u64,
    pub arenas_unmapped: u64,
}

impl Hot {
    pub const ZERO: Hot = Hot {
        alloc_bytes: 0,
        allocs: 0,
        freed_bytes: 0,
        frees: 0,
        high: 0,
        owner: NO_NODE,
        act: NO_ACT,
        birth: OUTSIDE_BIRTH,
        thread: 0,
        top_code: 0,
        recent_allocs: [0; RECENT_ALLOCS],
        allocs_in_exec: 0,
        gc_collections: 0,
        gc_freed_bytes: 0,
        in_gc: false,
        arenas_mapped: 0,
        arenas_unmapped: 0,
    };

    #[inline(always)]
    pub fn net(&self) -> i64 {
        self.alloc_bytes.wrapping_sub(self.freed_bytes) as i64
    }

    /// The counters an execution's figures are differences of (the order `close_exec` reads).
    #[inline(always)]
    fn snapshot(&self) -> [u64; 8] {
        [
            self.alloc_bytes,
            self.allocs,
            self.freed_bytes,
            self.frees,
            self.gc_collections,
            self.gc_freed_bytes,
            self.arenas_mapped,
            self.arenas_unmapped,
        ]
    }
}

/// glibc's heap figures (mallinfo2's uordblks, hblkhd and arena) as last asked for, and the
/// tracked glibc bytes and memsleuth's own heap beside them.
#[derive(Clone, Copy, Debug)]
struct GlibcBasis {
    in_use: u64,
    mmapped: u64,
    arena: u64,
    glibc_live: u64,
    profiler_bytes: u64,
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
    /// Line id per line number offset from `first_lineno`; NO_LINE until the line first runs.
    line_ids: Vec<u32>,
    /// A pseudo-line spanning each call: the function's totals.
    total_line: u32,
    /// A pseudo-line from the function's return to the end of its call: the frame's teardown
    /// (its locals released), which no line of the function executes.
    teardown_line: u32,
    pub calls: u64,
    pub rss_at_entry: Option<u64>,
}

#[derive(Clone, Copy)]
struct Node {
    parent: u32,
    line: u32,
    depth: u32,
    /// No ancestor carries the same line: this is where a free is charged under recursion.
    outermost: bool,
    /// The birth last made for this node, held until the node makes another.
    birth: u32,
}

#[derive(Clone, Copy, Debug)]
struct Exec {
    line: u32,
    measured: bool,
    node: u32,
    snap: [u64; 8],
    start_net: i64,
    high: i64,
    start: Sample,
    /// The thread's `readings` when `start` was taken.
    start_readings: u64,
}

/// Lines whose ids and nodes a frame keeps at hand: a loop body cycles through a few lines, and
/// this spares a hash lookup at each line event.
const RECENT_LINES: usize = 8;

/// One push of a frame on a thread's stack.
#[derive(Clone, Copy, Debug)]
struct Activation {
    call: u32,
    /// The activation of the frame below on the stack, or NO_ACT.
    parent: u32,
    /// Births in it, child activations, and 1 while it is on the stack.
    refs: u32,
}

/// Where live blocks were allocated: the owner node and the frame activation. Blocks born alike
/// share one, and the block table stores its 32-bit id, which keeps a slot at 16 bytes.
#[derive(Clone, Copy, Debug)]
struct Birth {
    node: u32,
    act: u32,
    /// Live blocks with this birth, plus 1 while its node holds it (`Node::birth`).
    refs: u32,
}

/// Permanent births, never counted or recycled: ids equal to the node, with no activation.
const OUTSIDE_BIRTH: u32 = NO_NODE;
const PROFILER_BIRTH: u32 = PROFILER_NODE;
const FIRST_BIRTH: u32 = 2;
/// The node of a recycled birth: matches no owner.
const DEAD_NODE: u32 = u32::MAX;

/// One call of a profiled function: a generator's spans all its resumes.
#[derive(Clone, Copy, Debug)]
struct Call {
    live: bool,
    /// Activations of this call.
    refs: u32,
}

#[derive(Clone, Copy, Debug)]
struct Frame {
    func: u32,
    code: usize,
    call: u32,
    act: u32,
    total: Exec,
    line: Option<Exec>,
    lineno: u32,
    /// A generator's or coroutine's frame: its teardown happens inside its last step, so
    /// return events leave its lines as they are.
    resumable: bool,
    /// (line number, line id, node) by line number modulo RECENT_LINES; line number 0 is empty.
    recent: [(u32, u32, u32); RECENT_LINES],
}

impl Frame {
    /// The line id and node of `lineno` in this frame, if `recent` holds them.
    #[inline(always)]
    fn cached_line(&self, lineno: u32) -> Option<(u32, u32)> {
        let (cached, line, node) = self.recent[lineno as usize % RECENT_LINES];
        (cached == lineno).then_some((line, node))
    }
}

/// A generator's or coroutine's frame while it is suspended.
#[derive(Clone, Copy, Debug)]
pub struct SavedFrame {
    pub func: u32,
    call: u32,
    lineno: u32,
}

impl SavedFrame {
    /// A frame that has not run yet: its first resume is its call.
    pub fn unstarted(func: u32) -> Self {
        SavedFrame { func, call: NO_CALL, lineno: 0 }
    }
}

#[derive(Default)]
struct ThreadLedger {
    frames: Vec<Frame>,
    /// Active executions per line id on this thread.
    active: Vec<u32>,
    /// Measured executions, innermost last: (frame index, is the line execution).
    measured: Vec<(u32, bool)>,
    last: Sample,
    /// Readings noted so far: an execution that began at the current count began at `last`.
    readings: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessStats {
    pub allocated_bytes: u64,
    pub freed_bytes: u64,
    pub live_bytes: u64,
    pub tracked_peak_bytes: u64,
    pub untracked_frees: u64,
    /// Live tracked bytes served by glibc (raw domain, pymalloc's large requests).
    pub glibc_live: u64,
    /// Bytes of pymalloc arenas mapped.
    pub arena_bytes: u64,
}

/// FxHash: the node index is keyed by small integers, so a multiply-rotate hash is plenty.
#[derive(Default)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type NodeKey = (u32, u32, u32, u32);

pub struct Ledger {
    pub table: BlockTable,
    funcs: Vec<Func>,
    lines: Vec<LineStats>,
    nodes: Vec<Node>,
    node_index: HashMap<NodeKey, u32, BuildHasherDefault<FxHasher>>,
    threads: Vec<ThreadLedger>,
    /// Thread ledgers whose thread left its last profiled frame, for the next thread to enter
    /// one: a program that starts thread after thread keeps as many as run profiled at once.
    free_threads: Vec<u32>,
    pub process: ProcessStats,
    acts: Vec<Activation>,
    free_acts: Vec<u32>,
    calls: Vec<Call>,
    free_calls: Vec<u32>,
    births: Vec<Birth>,
    free_births: Vec<u32>,
    /// Whether pymalloc serves small MEM/OBJ requests (not under PYTHONMALLOC=malloc).
    pub pymalloc: bool,
    /// glibc's heap figures when they were last asked for.
    glibc_basis: Option<GlibcBasis>,
    /// Tests switch `step_quietly` off to check it against the general path.
    #[cfg(test)]
    pub(crate) quiet_steps: bool,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    pub const fn new() -> Self {
        Ledger {
            table: BlockTable::new(),
            funcs: Vec::new(),
            lines: Vec::new(),
            nodes: Vec::new(),
            node_index: HashMap::with_hasher(BuildHasherDefault::new()),
            threads: Vec::new(),
            free_threads: Vec::new(),
            process: ProcessStats {
                allocated_bytes: 0,
                freed_bytes: 0,
                live_bytes: 0,
                tracked_peak_bytes: 0,
                untracked_frees: 0,
                glibc_live: 0,
                arena_bytes: 0,
            },
            pymalloc: true,
            glibc_basis: None,
            acts: Vec::new(),
            free_acts: Vec::new(),
            calls: Vec::new(),
            free_calls: Vec::new(),
            births: Vec::new(),
            free_births: Vec::new(),
            #[cfg(test)]
            quiet_steps: true,
        }
    }

    /// glibc's (in use, mmapped, arena) bytes at a reading with memsleuth's own heap at
    /// `profiler_bytes`: `asked`, if glibc was asked for this reading (the process asks only
    /// where the answer can change the explanation: see `readings::Residency`); otherwise the
    /// last answer carried forward, with the tracked glibc bytes and memsleuth's moved in place,
    /// which says nothing else moved (no `native`, no allocator growth). Whatever the next answer
    /// finds moved belongs to the line during which it is asked.
    pub fn glibc_figures(&mut self, profiler_bytes: u64, asked: Option<(u64, u64, u64)>) -> (u64, u64, u64) {
        let glibc_live = self.process.glibc_live;
        if let Some((in_use, mmapped, arena)) = asked {
            self.glibc_basis = Some(GlibcBasis { in_use, mmapped, arena, glibc_live, profiler_bytes });
            return (in_use, mmapped, arena);
        }
        let Some(b) = self.glibc_basis else { return (0, 0, 0) };
        let in_use =
            b.in_use as i64 + (glibc_live as i64 - b.glibc_live as i64) + (profiler_bytes as i64 - b.profiler_bytes as i64);
        (in_use.max(0) as u64, b.mmapped, b.arena)
    }

    /// Bytes of the ledger's own tables.
    pub fn footprint(&self) -> usize {
        self.table.footprint()
            + self.lines.capacity() * std::mem::size_of::<LineStats>()
            + self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.node_index.capacity() * (std::mem::size_of::<NodeKey>() + 4)
            + self.acts.capacity() * std::mem::size_of::<Activation>()
            + self.calls.capacity() * std::mem::size_of::<Call>()
            + self
                .threads
                .iter()
                .map(|t| {
                    std::mem::size_of::<ThreadLedger>()
                        + t.frames.capacity() * std::mem::size_of::<Frame>()
                        + t.active.capacity() * 4
                        + t.measured.capacity() * 8
                })
                .sum::<usize>()
    }

    pub fn register_function(&mut self, info: FuncInfo) -> u32 {
        if let Some(i) = self.funcs.iter().position(|f| f.info.code == info.code) {
            return i as u32;
        }
        let total_line = self.new_line();
        let teardown_line = self.new_line();
        self.funcs.push(Func { info, line_ids: Vec::new(), total_line, teardown_line, calls: 0, rss_at_entry: None });
        (self.funcs.len() - 1) as u32
    }

    pub fn funcs(&self) -> &[Func] {
        &self.funcs
    }

    fn new_line(&mut self) -> u32 {
        self.lines.push(LineStats::default());
        (self.lines.len() - 1) as u32
    }

    fn line_id(&mut self, func: u32, lineno: u32) -> u32 {
        let first = self.funcs[func as usize].info.first_lineno;
        let offset = lineno.saturating_sub(first) as usize;
        if offset >= self.funcs[func as usize].line_ids.len() {
            self.funcs[func as usize].line_ids.resize(offset + 1, NO_LINE);
        }
        let id = self.funcs[func as usize].line_ids[offset];
        if id != NO_LINE {
            return id;
        }
        let id = self.new_line();
        self.funcs[func as usize].line_ids[offset] = id;
        id
    }

    /// Stats of each line that ran, by line number, and the function's totals.
    pub fn function_stats(&self, func: u32) -> (Vec<(u32, &LineStats)>, &LineStats) {
        let f = &self.funcs[func as usize];
        let lines = f
            .line_ids
            .iter()
            .enumerate()
            .filter(|(_, id)| **id != NO_LINE)
            .map(|(off, id)| (f.info.first_lineno + off as u32, &self.lines[*id as usize]))
            .collect();
        (lines, &self.lines[f.total_line as usize])
    }

    /// Stats of the function's frame teardowns (from each return to the end of its call), if
    /// a return was ever seen.
    pub fn teardown_stats(&self, func: u32) -> Option<&LineStats> {
        let stats = &self.lines[self.funcs[func as usize].teardown_line as usize];
        (stats.hits > 0).then_some(stats)
    }

    fn thread_mut(&mut self, hot: &mut Hot) -> usize {
        if hot.thread == 0 {
            hot.thread = match self.free_threads.pop() {
                Some(t) => t,
                None => {
                    self.threads.push(ThreadLedger::default());
                    self.threads.len() as u32
                }
            };
        }
        (hot.thread - 1) as usize
    }

    /// Hands this thread's ledger back once no profiled frame is left on it: with no execution
    /// open it holds nothing a later call needs (that call takes a reading as it enters), and
    /// the thread may never come back.
    fn release_thread_if_idle(&mut self, hot: &mut Hot) {
        if hot.thread != 0 && self.threads[(hot.thread - 1) as usize].frames.is_empty() {
            self.free_threads.push(hot.thread);
            hot.thread = 0;
        }
    }

    fn intern(&mut self, parent: u32, line: u32, thread: u32, depth: u32) -> u32 {
        let key = (parent, line, thread, depth);
        if let Some(&n) = self.node_index.get(&key) {
            return n;
        }
        let mut outermost = true;
        let mut p = parent;
        while p >= FIRST_NODE {
            let node = &self.nodes[(p - FIRST_NODE) as usize];
            if node.line == line {
                outermost = false;
                break;
            }
            p = node.parent;
        }
        self.nodes.push(Node { parent, line, depth, outermost, birth: OUTSIDE_BIRTH });
        let id = FIRST_NODE + self.nodes.len() as u32 - 1;
        self.node_index.insert(key, id);
        id
    }

    // ----- allocator events -----

    /// Whether glibc serves a tracked block: raw-domain blocks, and pymalloc's large requests
    /// (pymalloc hands anything over 512 bytes to the raw allocator).
    #[inline(always)]
    fn served_by_glibc(&self, raw: bool, size: u64) -> bool {
        raw || !self.pymalloc || size > 512
    }

    /// A tracked allocation; `raw` says it came through the raw domain.
    #[inline]
    pub fn on_alloc(&mut self, hot: &mut Hot, addr: usize, size: u64, raw: bool) {
        if hot.owner == PROFILER_NODE {
            self.table.insert(addr, Block { size, birth: PROFILER_BIRTH });
            return;
        }
        hot.alloc_bytes += size;
        hot.allocs += 1;
        hot.recent_allocs[hot.allocs_in_exec as usize % RECENT_ALLOCS] = addr;
        hot.allocs_in_exec = hot.allocs_in_exec.wrapping_add(1);
        let net = hot.net();
        if net > hot.high {
            hot.high = net;
        }
        if self.served_by_glibc(raw, size) {
            self.process.glibc_live += size;
        }
        let p = &mut self.process;
        p.allocated_bytes += size;
        p.live_bytes += size;
        if p.live_bytes > p.tracked_peak_bytes {
            p.tracked_peak_bytes = p.live_bytes;
        }
        let birth = self.birth_of_new_block(hot);
        if let Some(lost) = self.table.insert(addr, Block { size, birth }) {
            // The block at this address was freed behind the hooks' back: drop it silently.
            if lost.birth != PROFILER_BIRTH {
                self.process.live_bytes -= lost.size.min(self.process.live_bytes);
                self.release_birth(lost.birth);
            }
        }
    }

    /// A free; returns whether the block was tracked.
    #[inline]
    pub fn on_free(&mut self, hot: &mut Hot, addr: usize, raw: bool) -> bool {
        let Some(block) = self.table.remove(addr) else {
            self.process.untracked_frees += 1;
            return false;
        };
        if block.birth == PROFILER_BIRTH {
            return true;
        }
        hot.freed_bytes += block.size;
        hot.frees += 1;
        if hot.in_gc {
            hot.gc_freed_bytes += block.size;
        }
        if self.served_by_glibc(raw, block.size) {
            self.process.glibc_live -= block.size.min(self.process.glibc_live);
        }
        self.process.freed_bytes += block.size;
        self.process.live_bytes -= block.size.min(self.process.live_bytes);
        if block.birth >= FIRST_BIRTH {
            let Birth { node, act, .. } = self.births[block.birth as usize];
            self.charge_freed_before_return(node, act, block.size);
            self.release_birth(block.birth);
        }
        true
    }

    /// `realloc(old, size)` returned `new` (`old` may be 0): a free of old plus an allocation.
    /// The hooks split it around the call (`begin_realloc`, `end_realloc`); tests use it whole.
    #[cfg(test)]
    pub fn on_realloc(&mut self, hot: &mut Hot, old: usize, new: usize, size: u64, raw: bool) {
        let taken = self.begin_realloc(hot, old, raw);
        self.end_realloc(hot, old, new, size, raw, taken);
    }

    /// Before `realloc(old, ...)` runs: forget `old` and count its free, so that no other
    /// thread's allocation of the same address can be lost once realloc releases it. Returns
    /// the size of the block taken, if it was tracked.
    #[inline]
    pub fn begin_realloc(&mut self, hot: &mut Hot, old: usize, raw: bool) -> Option<u64> {
        if old == 0 {
            return None;
        }
        let size = self.table.get(old).map(|b| b.size);
        self.on_free(hot, old, raw).then_some(size).flatten()
    }

    /// After realloc returned `new` (null if it failed, leaving `old` in place).
    #[inline]
    pub fn end_realloc(&mut self, hot: &mut Hot, old: usize, new: usize, size: u64, raw: bool, taken: Option<u64>) {
        if new != 0 {
            self.on_alloc(hot, new, size, raw);
        } else if let Some(old_size) = taken {
            self.on_alloc(hot, old, old_size, raw);
        }
    }

    /// Takes a block the interpreter just allocated on the profiler's behalf out of every figure.
    /// Only this thread's last RECENT_ALLOCS allocations qualify, and only if they were made in
    /// the current execution: an object handed out by a free list was allocated long ago and
    /// stays the program's.
    pub fn mark_profiler(&mut self, hot: &mut Hot, addr: usize) {
        // The ring restarts at slot 0 with each execution, so the execution's entries are a prefix.
        let in_exec = &hot.recent_allocs[..(hot.allocs_in_exec as usize).min(RECENT_ALLOCS)];
        if addr == 0 || !in_exec.contains(&addr) {
            return;
        }
        let Some(block) = self.table.get(addr) else { return };
        // A quiet section's blocks are the profiler's from birth and were never counted; the
        // ring may still name their address, left there by a block freed since.
        if block.birth == PROFILER_BIRTH || !self.is_birth_of(block.birth, hot.owner, hot.act) {
            return;
        }
        self.table.set_birth(addr, PROFILER_BIRTH);
        self.release_birth(block.birth);
        let size = block.size;
        // If this block set the high-water marks, they fall back to the value after removing it
        // (exact unless the previous mark lay within `size` of it).
        let net = hot.net();
        hot.alloc_bytes -= size;
        hot.allocs -= 1;
        if hot.high == net {
            hot.high = hot.net();
        }
        if self.served_by_glibc(false, size) {
            self.process.glibc_live -= size.min(self.process.glibc_live);
        }
        let p = &mut self.process;
        let peak_was_this = p.tracked_peak_bytes == p.live_bytes;
        p.allocated_bytes -= size;
        p.live_bytes -= size.min(p.live_bytes);
        if peak_was_this {
            p.tracked_peak_bytes = p.live_bytes;
        }
    }

    fn charge_freed_before_return(&mut self, mut n: u32, mut act: u32, size: u64) {
        if n < FIRST_NODE {
            return;
        }
        let mut act_depth = self.nodes[(n - FIRST_NODE) as usize].depth;
        while n >= FIRST_NODE && act != NO_ACT {
            let node = self.nodes[(n - FIRST_NODE) as usize];
            while act_depth > node.depth && act != NO_ACT {
                act = self.acts[act as usize].parent;
                act_depth -= 1;
            }
            if node.outermost && act != NO_ACT && self.calls[self.acts[act as usize].call as usize].live {
                self.lines[node.line as usize].freed_before_return += size;
            }
            n = node.parent;
        }
    }

    /// Whether `birth` is in use for blocks owned by `node` in activation `act` (a recycled one
    /// matches nothing).
    #[inline(always)]
    fn is_birth_of(&self, birth: u32, node: u32, act: u32) -> bool {
        self.births.get(birth as usize).is_some_and(|b| b.node == node && b.act == act)
    }

    /// The birth for a block allocated now, with a reference added for the block.
    #[inline(always)]
    fn birth_of_new_block(&mut self, hot: &mut Hot) -> u32 {
        if !self.is_birth_of(hot.birth, hot.owner, hot.act) {
            hot.birth = self.birth_for(hot.owner, hot.act);
        }
        if hot.birth >= FIRST_BIRTH {
            self.births[hot.birth as usize].refs += 1;
        }
        hot.birth
    }

    /// The birth for blocks owned by `owner` in activation `act`: a permanent one, the one the
    /// node made last if it still matches, or a new one. A node holds a reference to the birth it
    /// made last, so a line that allocates and frees in turn does not make and recycle a birth
    /// each time; the next activation's birth for the node replaces it.
    fn birth_for(&mut self, owner: u32, act: u32) -> u32 {
        if self.births.is_empty() {
            for node in [NO_NODE, PROFILER_NODE] {
                self.births.push(Birth { node, act: NO_ACT, refs: 0 });
            }
        }
        if owner < FIRST_NODE && act == NO_ACT {
            return owner;
        }
        let node = owner.checked_sub(FIRST_NODE).map(|n| n as usize).filter(|&n| n < self.nodes.len());
        if let Some(n) = node {
            let last = self.nodes[n].birth;
            if self.is_birth_of(last, owner, act) {
                return last;
            }
        }
        let made = Birth { node: owner, act, refs: 0 };
        let id = match self.free_births.pop() {
            Some(id) => {
                self.births[id as usize] = made;
                id
            }
            None => {
                self.births.push(made);
                (self.births.len() - 1) as u32
            }
        };
        self.hold(act);
        if let Some(n) = node {
            self.births[id as usize].refs += 1;
            let replaced = std::mem::replace(&mut self.nodes[n].birth, id);
            self.release_birth(replaced);
        }
        id
    }

    /// Drops a reference to a birth; one nothing refers to is recycled, releasing its activation.
    fn release_birth(&mut self, birth: u32) {
        if birth < FIRST_BIRTH {
            return;
        }
        let b = &mut self.births[birth as usize];
        b.refs -= 1;
        if b.refs == 0 {
            let act = b.act;
            b.node = DEAD_NODE;
            self.free_births.push(birth);
            self.release(act);
        }
    }

    /// Births and activations in use (made and not recycled).
    #[cfg(test)]
    pub(crate) fn births_and_activations_in_use(&self) -> (usize, usize) {
        (self.births.len() - self.free_births.len(), self.acts.len() - self.free_acts.len())
    }

    /// A new reference to activation `act` (a birth in it, a child, the stack).
    #[inline(always)]
    fn hold(&mut self, act: u32) {
        if let Some(a) = self.acts.get_mut(act as usize) {
            a.refs += 1;
        }
    }

    /// Drops a reference; an activation nothing refers to is recycled, releasing its parent and
    /// its call (recycled too once it has returned and no activation is left).
    fn release(&mut self, mut act: u32) {
        while let Some(a) = self.acts.get_mut(act as usize) {
            a.refs -= 1;
            if a.refs > 0 {
                return;
            }
            let (call, parent) = (a.call, a.parent);
            self.free_acts.push(act);
            let c = &mut self.calls[call as usize];
            c.refs -= 1;
            if c.refs == 0 && !c.live {
                self.free_calls.push(call);
            }
            act = parent;
        }
    }

    fn new_call(&mut self) -> u32 {
        let call = Call { live: true, refs: 0 };
        match self.free_calls.pop() {
            Some(id) => {
                self.calls[id as usize] = call;
                id
            }
            None => {
                self.calls.push(call);
                (self.calls.len() - 1) as u32
            }
        }
    }

    fn new_activation(&mut self, call: u32, parent: u32) -> u32 {
        self.calls[call as usize].refs += 1;
        self.hold(parent);
        let act = Activation { call, parent, refs: 1 };
        match self.free_acts.pop() {
            Some(id) => {
                self.acts[id as usize] = act;
                id
            }
            None => {
                self.acts.push(act);
                (self.acts.len() - 1) as u32
            }
        }
    }

    /// A call returned: its blocks freed from now on were freed after the return.
    fn end_call(&mut self, call: u32) {
        let c = &mut self.calls[call as usize];
        c.live = false;
        if c.refs == 0 {
            self.free_calls.push(call);
        }
    }

    /// A cyclic-GC collection starts on this thread (its frees until `gc_stop` are the
    /// collector's).
    pub fn gc_start(&mut self, hot: &mut Hot) {
        hot.gc_collections += 1;
        hot.in_gc = true;
    }

    pub fn gc_stop(&mut self, hot: &mut Hot) {
        hot.in_gc = false;
    }

    /// pymalloc mapped (`mapped`) or unmapped an arena of `size` bytes at `addr`.
    pub fn on_arena(&mut self, hot: &mut Hot, size: u64, mapped: bool) {
        if mapped {
            hot.arenas_mapped += 1;
            self.process.arena_bytes += size;
        } else {
            hot.arenas_unmapped += 1;
            self.process.arena_bytes -= size.min(self.process.arena_bytes);
        }
    }

    /// While the profiler itself runs Python code on this thread (rendering a report), what it
    /// allocates is its own. Returns the owner to restore with `end_profiler_work`.
    pub fn begin_profiler_work(&mut self, hot: &mut Hot) -> u32 {
        std::mem::replace(&mut hot.owner, PROFILER_NODE)
    }

    pub fn end_profiler_work(&mut self, hot: &mut Hot, owner: u32) {
        hot.owner = owner;
    }

    // ----- execution events -----

    #[allow(clippy::too_many_arguments)]
    fn open_exec(
        &mut self,
        hot: &mut Hot,
        t: usize,
        line: u32,
        node: u32,
        frame_index: u32,
        is_line: bool,
        is_hit: bool,
    ) -> Exec {
        if is_hit {
            self.lines[line as usize].hits += 1;
        }
        let th = &mut self.threads[t];
        if th.active.len() <= line as usize {
            th.active.resize(line as usize + 1, 0);
        }
        let measured = th.active[line as usize] == 0;
        th.active[line as usize] += 1;
        let net = hot.net();
        if measured {
            if let Some(&outer) = th.measured.last() {
                let exec = exec_mut(&mut th.frames, outer);
                exec.high = exec.high.max(hot.high);
            }
            hot.high = net;
            th.measured.push((frame_index, is_line));
        }
        let (start, start_readings) = (th.last, th.readings);
        hot.owner = node;
        hot.allocs_in_exec = 0;
        Exec { line, measured, node, snap: hot.snapshot(), start_net: net, high: net, start, start_readings }
    }

    fn close_exec(&mut self, hot: &mut Hot, t: usize, exec: Exec) {
        let th = &mut self.threads[t];
        th.active[exec.line as usize] -= 1;
        let stats = &mut self.lines[exec.line as usize];
        stats.rss_after = Some(th.last.os.rss());
        if !exec.measured {
            return;
        }
        let allocated = hot.alloc_bytes.saturating_sub(exec.snap[0]);
        let freed = hot.freed_bytes.saturating_sub(exec.snap[2]);
        let gc_freed = hot.gc_freed_bytes.saturating_sub(exec.snap[5]);
        stats.allocated_bytes += allocated;
        stats.allocations += hot.allocs.saturating_sub(exec.snap[1]);
        stats.freed_bytes += freed;
        stats.frees += hot.frees.saturating_sub(exec.snap[3]);
        stats.gc_collections += hot.gc_collections.saturating_sub(exec.snap[4]);
        stats.gc_freed_bytes += gc_freed;
        stats.arenas_mapped += hot.arenas_mapped.saturating_sub(exec.snap[6]);
        stats.arenas_unmapped += hot.arenas_unmapped.saturating_sub(exec.snap[7]);
        stats.peak_bytes = stats.peak_bytes.max(hot.high - exec.start_net);
        let net = allocated as i64 - freed as i64;
        if exec.start_readings == th.readings {
            stats.causes.add_unread(net, gc_freed);
        } else {
            stats.rss_delta += th.last.os.rss() as i64 - exec.start.os.rss() as i64;
            stats.causes.add(&Causes::of_execution(&exec.start, &th.last, net, gc_freed));
        }
        th.measured.pop();
        if let Some(&outer) = th.measured.last() {
            hot.high = hot.high.max(exec_mut(&mut th.frames, outer).high);
        }
    }

    fn innermost_node(th: &ThreadLedger) -> u32 {
        th.frames.last().map_or(NO_NODE, |f| f.line.map_or(f.total.node, |e| e.node))
    }

    /// The exact process-wide counters beside a reading.
    pub fn sample(&self, os: OsReading, hot: &Hot) -> Sample {
        Sample {
            os,
            own_net: hot.net(),
            tracked_live: self.process.live_bytes,
            glibc_live: self.process.glibc_live,
            arena_bytes: self.process.arena_bytes,
        }
    }

    fn note_reading(&mut self, hot: &Hot, t: usize, os: Option<OsReading>) {
        if let Some(os) = os {
            let sample = self.sample(os, hot);
            let th = &mut self.threads[t];
            th.last = sample;
            th.readings += 1;
        }
    }

    /// A call of `func` begins (its wrapper runs): `os` is read at entry.
    pub fn enter(&mut self, hot: &mut Hot, func: u32, os: impl Into<OsReading>) {
        self.start_call(hot, func, os.into(), false);
    }

    fn start_call(&mut self, hot: &mut Hot, func: u32, os: OsReading, resumable: bool) {
        let call = self.new_call();
        let f = &mut self.funcs[func as usize];
        f.calls += 1;
        f.rss_at_entry = Some(os.rss());
        self.push_frame(hot, SavedFrame { func, call, lineno: 0 }, os, resumable);
    }

    /// A suspended generator or coroutine frame resumes.
    pub fn resume(&mut self, hot: &mut Hot, saved: SavedFrame, os: impl Into<OsReading>) {
        if saved.call == NO_CALL {
            return self.start_call(hot, saved.func, os.into(), true);
        }
        self.push_frame(hot, saved, os.into(), true);
    }

    fn push_frame(&mut self, hot: &mut Hot, saved: SavedFrame, os: OsReading, resumable: bool) {
        let t = self.thread_mut(hot);
        self.note_reading(hot, t, Some(os));
        let f = &self.funcs[saved.func as usize];
        let (code, total_line) = (f.info.code, f.total_line);
        let th = &self.threads[t];
        let parent = Self::innermost_node(th);
        let depth = th.frames.len() as u32;
        let parent_act = th.frames.last().map_or(NO_ACT, |f| f.act);
        let act = self.new_activation(saved.call, parent_act);
        hot.act = act;
        let node = self.intern(parent, total_line, hot.thread, depth);
        let total = self.open_exec(hot, t, total_line, node, depth, false, true);
        self.threads[t].frames.push(Frame {
            func: saved.func,
            code,
            call: saved.call,
            act,
            total,
            line: None,
            lineno: 0,
            resumable,
            recent: [(0, 0, 0); RECENT_LINES],
        });
        hot.top_code = code;
        if saved.lineno != 0 {
            // The rest of the line a generator yielded from runs without a line event: it is
            // active again, but that is no new execution.
            self.start_line(hot, t, saved.lineno, false);
        }
    }

    /// The line id and node of `lineno` in the innermost frame of thread `t`.
    #[inline(always)]
    fn line_and_node(&mut self, hot: &Hot, t: usize, lineno: u32) -> (u32, u32) {
        match self.threads[t].frames.last().and_then(|f| f.cached_line(lineno)) {
            Some(found) => found,
            None => self.line_and_node_uncached(hot, t, lineno),
        }
    }

    #[cold]
    #[inline(never)]
    fn line_and_node_uncached(&mut self, hot: &Hot, t: usize, lineno: u32) -> (u32, u32) {
        let depth = self.threads[t].frames.len() as u32 - 1;
        let top = &self.threads[t].frames[depth as usize];
        let (func, parent) = (top.func, top.total.node);
        let line = self.line_id(func, lineno);
        let node = self.intern(parent, line, hot.thread, depth);
        self.threads[t].frames[depth as usize].recent[lineno as usize % RECENT_LINES] = (lineno, line, node);
        (line, node)
    }

    fn start_line(&mut self, hot: &mut Hot, t: usize, lineno: u32, is_hit: bool) {
        let depth = self.threads[t].frames.len() as u32 - 1;
        let (line, node) = self.line_and_node(hot, t, lineno);
        let exec = self.open_exec(hot, t, line, node, depth, true, is_hit);
        let top = &mut self.threads[t].frames[depth as usize];
        top.line = Some(exec);
        top.lineno = lineno;
    }

    /// A line event from `code` at `lineno`. `os` is a fresh reading, if one was taken.
    pub fn on_line(&mut self, hot: &mut Hot, code: usize, lineno: u32, os: Option<OsReading>) {
        self.line_event(hot, code, lineno, |_, _| os);
    }

    /// A line event from `code` at `lineno`, as the tracer delivers it: `read` is asked for a
    /// reading (or None) only if the event starts a new execution. Events from another code
    /// object than the innermost frame's, or repeating its line, change nothing.
    #[inline]
    pub fn line_event(
        &mut self,
        hot: &mut Hot,
        code: usize,
        lineno: u32,
        read: impl FnOnce(&mut Self, &mut Hot) -> Option<OsReading>,
    ) {
        let t = (hot.thread as usize).wrapping_sub(1);
        let Some(top) = self.threads.get(t).and_then(|th| th.frames.last()) else { return };
        if top.code != code || top.lineno == lineno {
            return;
        }
        let in_line = top.line.is_some();
        let os = read(self, hot);
        if in_line {
            self.note_reading(hot, t, os);
            if self.step_quietly(hot, t, lineno) {
                return;
            }
        }
        self.change_line(hot, t, lineno, os);
    }

    /// The innermost frame, running `code`, returns: its last line ends here, and what happens
    /// from now to `leave` (the frame torn down, its locals released) is its teardown's, a row
    /// of its own, so that no line is charged with frees it did not make. `read` is asked for a
    /// reading (or None) as by `line_event`.
    pub fn on_return(
        &mut self,
        hot: &mut Hot,
        code: usize,
        read: impl FnOnce(&mut Self, &mut Hot) -> Option<OsReading>,
    ) {
        let t = (hot.thread as usize).wrapping_sub(1);
        let Some(top) = self.threads.get(t).and_then(|th| th.frames.last()) else { return };
        let teardown = self.funcs[top.func as usize].teardown_line;
        let (depth, parent) = (self.threads[t].frames.len() as u32 - 1, top.total.node);
        if top.code != code || top.resumable || top.line.is_none_or(|e| e.line == teardown) {
            return;
        }
        let os = read(self, hot);
        self.note_reading(hot, t, os);
        if let Some(last) = self.threads[t].frames[depth as usize].line.take() {
            self.close_exec(hot, t, last);
        }
        let node = self.intern(parent, teardown, hot.thread, depth);
        let exec = self.open_exec(hot, t, teardown, node, depth, true, true);
        self.threads[t].frames[depth as usize].line = Some(exec);
    }

    /// The general path of `line_event`: the line that ends is closed, the next one opened.
    #[inline(never)]
    fn change_line(&mut self, hot: &mut Hot, t: usize, lineno: u32, os: Option<OsReading>) {
        let Some(top) = self.threads[t].frames.last_mut() else { return };
        match top.line.take() {
            Some(previous) => {
                self.close_exec(hot, t, previous);
                self.start_line(hot, t, lineno, true);
            }
            None => {
                // The frame's first line: what moved since entry (argument binding) belongs to
                // it, so the reading lands after it opens and its deltas add up to the call's.
                self.start_line(hot, t, lineno, true);
                self.note_reading(hot, t, os);
            }
        }
    }

    /// The common case of a line event, made cheap: the line that ends did nothing (no allocator
    /// or collector event, the same reading as when it began) and the next one has no execution
    /// open on this thread. Closing and opening would then leave every figure of the ended line as
    /// it is, so its execution becomes the next line's in place. Returns false, changing nothing,
    /// when the case does not apply.
    #[inline]
    fn step_quietly(&mut self, hot: &mut Hot, t: usize, lineno: u32) -> bool {
        #[cfg(test)]
        if !self.quiet_steps {
            return false;
        }
        let Some(th) = self.threads.get_mut(t) else { return false };
        let Some(top) = th.frames.last_mut() else { return false };
        let Some((line, node)) = top.cached_line(lineno) else { return false };
        let Some(exec) = top.line.as_mut() else { return false };
        // Folded by hand: `!=` on the arrays compiles to a call to memcmp.
        let moved = exec.snap.iter().zip(hot.snapshot()).fold(0, |acc, (a, b)| acc | (a ^ b));
        if !exec.measured || moved != 0 {
            return false;
        }
        if exec.start_readings != th.readings {
            if exec.start != th.last {
                return false;
            }
            // The latest reading equals the start's, and an execution reconciles only those
            // two: it may count as read at the latest, so later steps need only compare counts.
            exec.start_readings = th.readings;
        }
        let (ended, next) = (exec.line as usize, line as usize);
        if th.active.get(next).is_some_and(|&n| n != 0) {
            return false;
        }
        if th.active.len() <= next {
            th.active.resize(next + 1, 0);
        }
        th.active[ended] -= 1;
        th.active[next] += 1;
        self.lines[ended].rss_after = Some(th.last.os.rss());
        self.lines[next].hits += 1;
        exec.line = line;
        exec.node = node;
        top.lineno = lineno;
        hot.owner = node;
        hot.allocs_in_exec = 0;
        true
    }

    fn pop_frame(&mut self, hot: &mut Hot, os: OsReading) -> Option<Frame> {
        if hot.thread == 0 {
            return None;
        }
        let t = (hot.thread - 1) as usize;
        self.note_reading(hot, t, Some(os));
        let mut frame = *self.threads[t].frames.last()?;
        if let Some(exec) = frame.line.take() {
            self.close_exec(hot, t, exec);
        }
        self.close_exec(hot, t, frame.total);
        let th = &mut self.threads[t];
        th.frames.pop();
        hot.owner = Self::innermost_node(th);
        hot.top_code = th.frames.last().map_or(0, |f| f.code);
        hot.act = th.frames.last().map_or(NO_ACT, |f| f.act);
        self.release(frame.act);
        Some(frame)
    }

    /// The innermost call returns (or raises), after its frame is gone. Returns the function and
    /// whether no other call of it remains on this thread (so its report may be printed).
    pub fn leave(&mut self, hot: &mut Hot, os: impl Into<OsReading>) -> Option<(u32, bool)> {
        let frame = self.pop_frame(hot, os.into())?;
        self.end_call(frame.call);
        let total_line = self.funcs[frame.func as usize].total_line as usize;
        let th = &self.threads[(hot.thread - 1) as usize];
        let outermost = th.active.get(total_line).is_none_or(|n| *n == 0);
        self.release_thread_if_idle(hot);
        Some((frame.func, outermost))
    }

    /// The innermost frame (a generator or coroutine) yields.
    pub fn suspend(&mut self, hot: &mut Hot, os: impl Into<OsReading>) -> Option<SavedFrame> {
        let frame = self.pop_frame(hot, os.into())?;
        self.release_thread_if_idle(hot);
        Some(SavedFrame { func: frame.func, call: frame.call, lineno: frame.lineno })
    }

    /// The innermost open frame of the thread with counters `hot`, if any: (function, line
    /// running, 0 before its first).
    pub fn open_frames(&self, hot: &Hot) -> Option<(u32, u32)> {
        let t = (hot.thread as usize).checked_sub(1)?;
        self.threads.get(t)?.frames.last().map(|f| (f.func, f.lineno))
    }

    /// Whether `func` has a call on this thread's stack.
    #[cfg(test)]
    pub fn is_active(&self, hot: &Hot, func: u32) -> bool {
        hot.thread != 0 && self.threads[(hot.thread - 1) as usize].frames.iter().any(|f| f.func == func)
    }
}

fn exec_mut(frames: &mut [Frame], (frame, is_line): (u32, bool)) -> &mut Exec {
    let f = &mut frames[frame as usize];
    if is_line {
        f.line.as_mut().expect("a measured line execution is open")
    } else {
        &mut f.total
    }
}
