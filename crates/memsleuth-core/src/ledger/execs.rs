//! Executions and peaks (docs/design.md, Figures): an execution of a line snapshots the
//! thread's cumulative counters as it opens and charges the difference to its line as it closes,
//! which makes figures inclusive of callees for free. Peaks fold outwards: when an execution
//! closes, its high-water mark becomes a candidate for the enclosing one.
//!
//! Recursion is charged once: an execution of a line that is already active further out on the
//! same thread is not measured (only `hits` counts it); the outer execution already covers it.
//!
//! The node an execution runs under is the interned chain of the lines active on its thread, one
//! node per execution level, each naming its frame depth: new blocks are owned by it, and their
//! births name it (`births`).

use super::frames::Frame;
use super::registry::LineId;
use super::threads::{ThreadId, ThreadLedger};
use super::{Hot, Ledger};
use crate::causes::{Causes, Sample};

/// A node: the chain of lines active on a thread when blocks were born.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct NodeId(pub(crate) u32);

impl NodeId {
    /// The owner of blocks allocated while no profiled line is active on the thread.
    pub const OUTSIDE: NodeId = NodeId(0);
    /// The owner of blocks that the profiler caused (frame objects materialised for its trace
    /// function, ints created for its callbacks): they never reach a figure.
    pub const PROFILER: NodeId = NodeId(1);
    /// The node a recycled birth names: it owns nothing, so no owner matches it.
    pub(super) const DEAD: NodeId = NodeId(u32::MAX);
    /// The first interned node; the ids below it are the two owners above.
    const FIRST: u32 = 2;

    /// Whether this is an interned node (neither owner outside the ledger's lines).
    #[inline(always)]
    pub(super) fn is_real(self) -> bool {
        self.0 >= Self::FIRST
    }

    /// The place of an interned node in `Ledger::nodes`.
    #[inline(always)]
    pub(super) fn index(self) -> usize {
        (self.0 - Self::FIRST) as usize
    }
}

#[derive(Clone, Copy)]
pub(super) struct Node {
    pub(super) parent: NodeId,
    pub(super) line: LineId,
    pub(super) depth: u32,
    /// No ancestor carries the same line: this is where a free is charged under recursion.
    pub(super) outermost: bool,
    /// The birth last made for this node, held until the node makes another.
    pub(super) birth: super::BirthId,
}

/// What interns a node: (parent, line, thread, frame depth).
pub(super) type NodeKey = (NodeId, LineId, ThreadId, u32);

#[derive(Clone, Copy, Debug)]
pub(super) struct Exec {
    pub(super) line: LineId,
    pub(super) measured: bool,
    pub(super) node: NodeId,
    pub(super) snap: [u64; 8],
    start_net: i64,
    high: i64,
    pub(super) start: Sample,
    /// The thread's `readings` when `start` was taken.
    pub(super) start_readings: u64,
}

impl Ledger {
    #[inline(always)]
    pub(super) fn node(&self, node: NodeId) -> &Node {
        &self.nodes[node.index()]
    }

    pub(super) fn intern(&mut self, parent: NodeId, line: LineId, thread: ThreadId, depth: u32) -> NodeId {
        let key = (parent, line, thread, depth);
        if let Some(&n) = self.node_index.get(&key) {
            return n;
        }
        let mut outermost = true;
        let mut p = parent;
        while p.is_real() {
            let node = self.node(p);
            if node.line == line {
                outermost = false;
                break;
            }
            p = node.parent;
        }
        self.nodes.push(Node { parent, line, depth, outermost, birth: super::BirthId::OUTSIDE });
        let id = NodeId(NodeId::FIRST + self.nodes.len() as u32 - 1);
        self.node_index.insert(key, id);
        id
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_exec(
        &mut self,
        hot: &mut Hot,
        t: usize,
        line: LineId,
        node: NodeId,
        frame_index: u32,
        is_line: bool,
        is_hit: bool,
    ) -> Exec {
        if is_hit {
            self.line_stats_mut(line).hits += 1;
        }
        let th = &mut self.threads[t];
        if th.active.len() <= line.index() {
            th.active.resize(line.index() + 1, 0);
        }
        let measured = th.active[line.index()] == 0;
        th.active[line.index()] += 1;
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

    pub(super) fn close_exec(&mut self, hot: &mut Hot, t: usize, exec: Exec) {
        let th = &mut self.threads[t];
        th.active[exec.line.index()] -= 1;
        let stats = &mut self.lines[exec.line.index()];
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

    /// The node new blocks are owned by on a thread: its innermost frame's line, or the frame's
    /// totals before its first line.
    pub(super) fn innermost_node(th: &ThreadLedger) -> NodeId {
        th.frames.last().map_or(NodeId::OUTSIDE, |f| f.line.map_or(f.total.node, |e| e.node))
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
