//! The per-line ledger: which lines are active on each thread, what each allocation and free
//! means for them, and the figures of docs/design.md (Figures).
//!
//! An allocation or free must stay cheap, so it never touches a line's figures (only, through
//! the birth it looks up anyway, the live bytes its line keeps for the tracked peak: `peak`).
//! Each thread keeps cumulative counters (`Hot`: bytes and counts allocated and freed, and the
//! high-water mark of its net since the innermost measured execution began). An execution
//! snapshots them when it opens and charges the difference to its line when it closes, which
//! makes figures inclusive of callees for free. Peaks fold outwards: when an execution closes,
//! its high-water mark becomes a candidate for the enclosing one.
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
//!
//! This module is the `Ledger` and its allocator events; each concept has a module of its own,
//! with its id type (docs/design.md, "The ledger's parts"):
//! - `threads`: thread ledgers (`ThreadId`) and the readings beside the counters;
//! - `registry`: profiled functions (`FuncId`) and their lines (`LineId`);
//! - `births`: births (`BirthId`), frame activations (`ActId`) and calls (`CallId`);
//! - `execs`: executions, their peaks, and the nodes they run under (`NodeId`);
//! - `frames`: frames entering and leaving, line events, suspended generators;
//! - `peak`: what was live at the tracked peak, by line.
//!
//! Each id is a newtype of its own; "none" is an `Option`, or where the value sits on the
//! per-record path, a constant of that id's type alone (`ActId::NONE`, `NodeId::OUTSIDE`...).

mod births;
mod execs;
mod frames;
mod peak;
mod registry;
mod threads;

#[cfg(test)]
mod tests;

pub use births::{ActId, BirthId, CallId};
pub use execs::NodeId;
pub use frames::SavedFrame;
pub use registry::{Func, FuncId, FuncInfo, LineId, LineStats};
pub use threads::ThreadId;

use crate::blocks::{Block, BlockTable};
use births::{Activation, Birth, Call};
use execs::{Node, NodeKey};
use peak::LiveByLine;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use threads::{GlibcBasis, ThreadLedger};

/// How many of a thread's latest allocations `mark_profiler` may take: enough for everything
/// the collector builds to call gc.callbacks (an info dict, its keys table, three keys, two
/// values and the phase string).
pub const RECENT_ALLOCS: usize = 16;

/// A thread's cumulative counters and current attribution, read and written by the hooks.
#[derive(Clone, Copy, Debug)]
pub struct Hot {
    pub alloc_bytes: u64,
    pub allocs: u64,
    pub freed_bytes: u64,
    pub frees: u64,
    /// Highest `net()` since the innermost measured execution opened (or since its last fold).
    pub high: i64,
    /// The node new blocks are owned by.
    pub owner: NodeId,
    /// The activation of this thread's innermost profiled frame (`ActId::NONE` if none).
    pub act: ActId,
    /// The birth of this thread's latest allocation (it may have been recycled since).
    pub birth: BirthId,
    /// This thread's ledger; None before the thread's first profiled call.
    pub thread: Option<ThreadId>,
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

impl Default for Hot {
    fn default() -> Self {
        Hot::ZERO
    }
}

impl Hot {
    pub const ZERO: Hot = Hot {
        alloc_bytes: 0,
        allocs: 0,
        freed_bytes: 0,
        frees: 0,
        high: 0,
        owner: NodeId::OUTSIDE,
        act: ActId::NONE,
        birth: BirthId::OUTSIDE,
        thread: None,
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

pub struct Ledger {
    pub table: BlockTable,
    funcs: Vec<Func>,
    /// Figures by line id.
    lines: Vec<LineStats>,
    /// Interned nodes, from `NodeId::FIRST` on.
    nodes: Vec<Node>,
    node_index: HashMap<NodeKey, NodeId, BuildHasherDefault<FxHasher>>,
    threads: Vec<ThreadLedger>,
    /// Thread ledgers whose thread left its last profiled frame, for the next thread to enter
    /// one: a program that starts thread after thread keeps as many as run profiled at once.
    free_threads: Vec<ThreadId>,
    pub process: ProcessStats,
    acts: Vec<Activation>,
    free_acts: Vec<ActId>,
    calls: Vec<Call>,
    free_calls: Vec<CallId>,
    births: Vec<Birth>,
    free_births: Vec<BirthId>,
    /// Live bytes by line, now and at the tracked peak.
    live_by_line: LiveByLine,
    /// MEM and OBJ requests above this many bytes are glibc's: 512 under pymalloc, 0 under
    /// PYTHONMALLOC=malloc (all), `u64::MAX` under mimalloc (none).
    pub glibc_serves_above: u64,
    /// The size of a pymalloc arena; other blocks through the arena hook (3.11+'s frame
    /// data-stack chunks) count in the allocators' footprint but are not arenas.
    pub arena_size: u64,
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
            glibc_serves_above: 512,
            arena_size: 1 << 20,
            glibc_basis: None,
            acts: Vec::new(),
            free_acts: Vec::new(),
            calls: Vec::new(),
            free_calls: Vec::new(),
            births: Vec::new(),
            free_births: Vec::new(),
            live_by_line: LiveByLine::new(),
            #[cfg(test)]
            quiet_steps: true,
        }
    }

    /// Bytes of the ledger's own tables.
    pub fn footprint(&self) -> usize {
        self.table.footprint()
            + self.lines.capacity() * std::mem::size_of::<LineStats>()
            + self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.node_index.capacity() * (std::mem::size_of::<NodeKey>() + 4)
            + self.acts.capacity() * std::mem::size_of::<Activation>()
            + self.calls.capacity() * std::mem::size_of::<Call>()
            + self.live_by_line.footprint()
            + self
                .threads
                .iter()
                .map(|t| {
                    std::mem::size_of::<ThreadLedger>()
                        + t.frames.capacity() * std::mem::size_of::<frames::Frame>()
                        + t.active.capacity() * 4
                        + t.measured.capacity() * 8
                })
                .sum::<usize>()
    }

    // ----- allocator events -----

    /// Whether glibc serves a tracked block: raw-domain blocks, and the MEM and OBJ requests
    /// the allocator behind them hands on (pymalloc: anything over 512 bytes).
    #[inline(always)]
    fn served_by_glibc(&self, raw: bool, size: u64) -> bool {
        raw || size > self.glibc_serves_above
    }

    /// A tracked allocation; `raw` says it came through the raw domain.
    #[inline]
    pub fn on_alloc(&mut self, hot: &mut Hot, addr: usize, size: u64, raw: bool) {
        if hot.owner == NodeId::PROFILER {
            self.table.insert(addr, Block { size, birth: BirthId::PROFILER.0 });
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
        let birth = self.birth_of_new_block(hot, size);
        if let Some(lost) = self.table.insert(addr, Block { size, birth: birth.0 }) {
            // The block at this address was freed behind the hooks' back: drop it silently.
            let lost_birth = BirthId(lost.birth);
            if lost_birth != BirthId::PROFILER {
                let p = &mut self.process;
                self.live_by_line.before_fall(p.live_bytes, p.tracked_peak_bytes);
                p.live_bytes -= lost.size.min(p.live_bytes);
                self.forget_block(lost_birth, lost.size);
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
        let birth = BirthId(block.birth);
        if birth == BirthId::PROFILER {
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
        let p = &mut self.process;
        self.live_by_line.before_fall(p.live_bytes, p.tracked_peak_bytes);
        p.freed_bytes += block.size;
        p.live_bytes -= block.size.min(p.live_bytes);
        if birth.is_counted() {
            self.freed_with_birth(birth, block.size);
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
        let birth = BirthId(block.birth);
        if birth == BirthId::PROFILER || !self.is_birth_of(birth, hot.owner, hot.act) {
            return;
        }
        self.table.set_birth(addr, BirthId::PROFILER.0);
        self.forget_block(birth, block.size);
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
        // No fall from a peak to freeze (`peak`): either live bytes stand below the peak, or
        // the peak was this block's and falls with them (the state stays the peak's), though
        // never below the last maximum frozen, which the program's blocks did reach.
        p.allocated_bytes -= size;
        p.live_bytes -= size.min(p.live_bytes);
        if peak_was_this {
            p.tracked_peak_bytes = p.live_bytes.max(self.live_by_line.frozen_peak());
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

    /// The arena hook mapped (`mapped`) or unmapped `size` bytes: a pymalloc arena, or a chunk of
    /// the frames' data stack.
    pub fn on_arena(&mut self, hot: &mut Hot, size: u64, mapped: bool) {
        let arena = u64::from(size == self.arena_size);
        if mapped {
            hot.arenas_mapped += arena;
            self.process.arena_bytes += size;
        } else {
            hot.arenas_unmapped += arena;
            self.process.arena_bytes -= size.min(self.process.arena_bytes);
        }
    }

    /// While the profiler itself runs Python code on this thread (rendering a report), what it
    /// allocates is its own. Returns the owner to restore with `end_profiler_work`.
    pub fn begin_profiler_work(&mut self, hot: &mut Hot) -> NodeId {
        std::mem::replace(&mut hot.owner, NodeId::PROFILER)
    }

    pub fn end_profiler_work(&mut self, hot: &mut Hot, owner: NodeId) {
        hot.owner = owner;
    }
}
