//! Frames and generators: the profiled frames on each thread's stack as calls enter and leave,
//! the line events that move them from line to line, and the saved state of a generator's or
//! coroutine's frame while it is suspended (docs/design.md, Figures: a generator's call lasts
//! from its first resume to its exhaustion or close).

use super::births::{ActId, CallId};
use super::execs::{Exec, NodeId};
use super::registry::{FuncId, LineId};
use super::{Hot, Ledger};
use crate::causes::OsReading;

/// Lines whose ids and nodes a frame keeps at hand: a loop body cycles through a few lines, and
/// this spares a hash lookup at each line event.
const RECENT_LINES: usize = 8;

/// An empty entry of `Frame::recent` (line number 0 is no line).
const NO_RECENT: (u32, LineId, NodeId) = (0, LineId::EMPTY_SLOT, NodeId::OUTSIDE);

#[derive(Clone, Copy, Debug)]
pub(super) struct Frame {
    pub(super) func: FuncId,
    pub(super) code: usize,
    call: CallId,
    pub(super) act: ActId,
    pub(super) total: Exec,
    pub(super) line: Option<Exec>,
    pub(super) lineno: u32,
    /// A generator's or coroutine's frame: its teardown happens inside its last step, so
    /// return events leave its lines as they are.
    resumable: bool,
    /// (line number, line id, node) by line number modulo RECENT_LINES; line number 0 is empty.
    recent: [(u32, LineId, NodeId); RECENT_LINES],
}

impl Frame {
    /// The line id and node of `lineno` in this frame, if `recent` holds them.
    #[inline(always)]
    fn cached_line(&self, lineno: u32) -> Option<(LineId, NodeId)> {
        let (cached, line, node) = self.recent[lineno as usize % RECENT_LINES];
        (cached == lineno).then_some((line, node))
    }
}

/// A generator's or coroutine's frame while it is suspended.
#[derive(Clone, Copy, Debug)]
pub struct SavedFrame {
    pub func: FuncId,
    /// The call its resumes belong to; None before its first resume, which is its call.
    call: Option<CallId>,
    lineno: u32,
}

impl SavedFrame {
    /// A frame that has not run yet: its first resume is its call.
    pub fn unstarted(func: FuncId) -> Self {
        SavedFrame { func, call: None, lineno: 0 }
    }
}

impl Ledger {
    /// A call of `func` begins (its wrapper runs): `os` is read at entry.
    pub fn enter(&mut self, hot: &mut Hot, func: FuncId, os: impl Into<OsReading>) {
        self.start_call(hot, func, Some(os.into()), false);
    }

    /// `enter`, for a call inside another profiled call, which has a reading only where one
    /// fell due (docs/design.md, Readings): without one, its first line starts from the thread's
    /// latest, as a line boundary without a reading does.
    pub fn enter_maybe_read(&mut self, hot: &mut Hot, func: FuncId, os: Option<OsReading>) {
        self.start_call(hot, func, os, false);
    }

    fn start_call(&mut self, hot: &mut Hot, func: FuncId, os: Option<OsReading>, resumable: bool) {
        let call = self.new_call();
        let f = self.func_mut(func);
        f.calls += 1;
        if let Some(os) = os {
            f.rss_at_entry = Some(os.rss());
        }
        self.push_frame(hot, func, call, 0, os, resumable);
    }

    /// A suspended generator or coroutine frame resumes.
    pub fn resume(&mut self, hot: &mut Hot, saved: SavedFrame, os: impl Into<OsReading>) {
        match saved.call {
            None => self.start_call(hot, saved.func, Some(os.into()), true),
            Some(call) => self.push_frame(hot, saved.func, call, saved.lineno, Some(os.into()), true),
        }
    }

    fn push_frame(
        &mut self,
        hot: &mut Hot,
        func: FuncId,
        call: CallId,
        lineno: u32,
        os: Option<OsReading>,
        resumable: bool,
    ) {
        let t = self.thread_mut(hot);
        self.note_reading(hot, t, os);
        let f = self.func(func);
        let (code, total_line) = (f.info.code, f.total_line);
        let th = &self.threads[t];
        let parent = Self::innermost_node(th);
        let depth = th.frames.len() as u32;
        let parent_act = th.frames.last().map_or(ActId::NONE, |f| f.act);
        let act = self.new_activation(call, parent_act);
        hot.act = act;
        let thread = hot.thread.expect("thread_mut gave the thread a ledger");
        let node = self.intern(parent, total_line, thread, depth);
        let total = self.open_exec(hot, t, total_line, node, depth, false, true);
        self.threads[t].frames.push(Frame {
            func,
            code,
            call,
            act,
            total,
            line: None,
            lineno: 0,
            resumable,
            recent: [NO_RECENT; RECENT_LINES],
        });
        hot.top_code = code;
        if lineno != 0 {
            // The rest of the line a generator yielded from runs without a line event: it is
            // active again, but that is no new execution.
            self.start_line(hot, t, lineno, false);
        }
    }

    /// The line id and node of `lineno` in the innermost frame of thread `t`.
    #[inline(always)]
    fn line_and_node(&mut self, hot: &Hot, t: usize, lineno: u32) -> (LineId, NodeId) {
        match self.threads[t].frames.last().and_then(|f| f.cached_line(lineno)) {
            Some(found) => found,
            None => self.line_and_node_uncached(hot, t, lineno),
        }
    }

    #[cold]
    #[inline(never)]
    fn line_and_node_uncached(&mut self, hot: &Hot, t: usize, lineno: u32) -> (LineId, NodeId) {
        let depth = self.threads[t].frames.len() as u32 - 1;
        let top = &self.threads[t].frames[depth as usize];
        let (func, parent) = (top.func, top.total.node);
        let line = self.line_id(func, lineno);
        let thread = hot.thread.expect("a thread with frames has a ledger");
        let node = self.intern(parent, line, thread, depth);
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
        let Some(t) = hot.thread.map(|id| id.index()) else { return };
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
        let Some(thread) = hot.thread else { return };
        let t = thread.index();
        let Some(top) = self.threads.get(t).and_then(|th| th.frames.last()) else { return };
        let teardown = self.func(top.func).teardown_line;
        let (depth, parent) = (self.threads[t].frames.len() as u32 - 1, top.total.node);
        if top.code != code || top.resumable || top.line.is_none_or(|e| e.line == teardown) {
            return;
        }
        let os = read(self, hot);
        self.note_reading(hot, t, os);
        if let Some(last) = self.threads[t].frames[depth as usize].line.take() {
            self.close_exec(hot, t, last);
        }
        let node = self.intern(parent, teardown, thread, depth);
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
        let (ended, next) = (exec.line.index(), line.index());
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

    fn pop_frame(&mut self, hot: &mut Hot, os: Option<OsReading>) -> Option<Frame> {
        let t = hot.thread?.index();
        self.note_reading(hot, t, os);
        let mut frame = *self.threads[t].frames.last()?;
        if let Some(exec) = frame.line.take() {
            self.close_exec(hot, t, exec);
        }
        self.close_exec(hot, t, frame.total);
        let th = &mut self.threads[t];
        th.frames.pop();
        hot.owner = Self::innermost_node(th);
        hot.top_code = th.frames.last().map_or(0, |f| f.code);
        hot.act = th.frames.last().map_or(ActId::NONE, |f| f.act);
        self.release(frame.act);
        Some(frame)
    }

    /// The innermost call returns (or raises), after its frame is gone. Returns the function and
    /// whether no other call of it remains on this thread (so its report may be printed).
    pub fn leave(&mut self, hot: &mut Hot, os: impl Into<OsReading>) -> Option<(FuncId, bool)> {
        self.leave_maybe_read(hot, Some(os.into()))
    }

    /// `leave`, for a call inside another profiled call (see `enter_maybe_read`).
    pub fn leave_maybe_read(&mut self, hot: &mut Hot, os: Option<OsReading>) -> Option<(FuncId, bool)> {
        let frame = self.pop_frame(hot, os)?;
        self.end_call(frame.call);
        let total_line = self.func(frame.func).total_line.index();
        let th = &self.threads[hot.thread?.index()];
        let outermost = th.active.get(total_line).is_none_or(|n| *n == 0);
        self.release_thread_if_idle(hot);
        Some((frame.func, outermost))
    }

    /// The innermost frame (a generator or coroutine) yields.
    pub fn suspend(&mut self, hot: &mut Hot, os: impl Into<OsReading>) -> Option<SavedFrame> {
        let frame = self.pop_frame(hot, Some(os.into()))?;
        self.release_thread_if_idle(hot);
        Some(SavedFrame { func: frame.func, call: Some(frame.call), lineno: frame.lineno })
    }

    /// The innermost open frame of the thread with counters `hot`, if any: (function, line
    /// running, 0 before its first).
    pub fn open_frames(&self, hot: &Hot) -> Option<(FuncId, u32)> {
        let t = hot.thread?.index();
        self.threads.get(t)?.frames.last().map(|f| (f.func, f.lineno))
    }

    /// Whether `func` has a call on this thread's stack.
    #[cfg(test)]
    pub fn is_active(&self, hot: &Hot, func: FuncId) -> bool {
        hot.thread.is_some_and(|t| self.threads[t.index()].frames.iter().any(|f| f.func == func))
    }
}
