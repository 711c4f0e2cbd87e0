//! Threads and readings: each thread that runs a profiled frame gets a thread ledger (its
//! frames, the lines active on it, its measured executions and the last reading it took), handed
//! on to the next thread once it leaves its last profiled frame; and the readings beside the
//! exact counters (docs/design.md, Causes), with glibc's figures carried forward between the
//! readings that asked for them (docs/design.md, Readings).

use super::frames::Frame;
use super::{Hot, Ledger};
use crate::causes::{OsReading, Sample};

/// A thread ledger: its place in `Ledger::threads`.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct ThreadId(pub(crate) u32);

impl ThreadId {
    #[inline(always)]
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Default)]
pub(super) struct ThreadLedger {
    pub(super) frames: Vec<Frame>,
    /// Active executions per line id on this thread.
    pub(super) active: Vec<u32>,
    /// Measured executions, innermost last: (frame index, is the line execution).
    pub(super) measured: Vec<(u32, bool)>,
    pub(super) last: Sample,
    /// Readings noted so far: an execution that began at the current count began at `last`.
    pub(super) readings: u64,
}

/// glibc's heap figures (mallinfo2's uordblks, hblkhd and arena) as last asked for, and the
/// tracked glibc bytes and memsleuth's own heap beside them.
#[derive(Clone, Copy, Debug)]
pub(super) struct GlibcBasis {
    in_use: u64,
    mmapped: u64,
    arena: u64,
    glibc_live: u64,
    profiler_bytes: u64,
}

impl Ledger {
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
        let in_use = b.in_use as i64
            + (glibc_live as i64 - b.glibc_live as i64)
            + (profiler_bytes as i64 - b.profiler_bytes as i64);
        (in_use.max(0) as u64, b.mmapped, b.arena)
    }

    /// The index of the ledger of the thread with counters `hot`, given one if it has none.
    pub(super) fn thread_mut(&mut self, hot: &mut Hot) -> usize {
        let id = match hot.thread {
            Some(id) => id,
            None => {
                let id = self.free_threads.pop().unwrap_or_else(|| {
                    self.threads.push(ThreadLedger::default());
                    ThreadId((self.threads.len() - 1) as u32)
                });
                hot.thread = Some(id);
                id
            }
        };
        id.index()
    }

    /// Hands this thread's ledger back once no profiled frame is left on it: with no execution
    /// open it holds nothing a later call needs (that call takes a reading as it enters), and
    /// the thread may never come back.
    pub(super) fn release_thread_if_idle(&mut self, hot: &mut Hot) {
        if let Some(id) = hot.thread {
            if self.threads[id.index()].frames.is_empty() {
                self.free_threads.push(id);
                hot.thread = None;
            }
        }
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

    pub(super) fn note_reading(&mut self, hot: &Hot, t: usize, os: Option<OsReading>) {
        if let Some(os) = os {
            let sample = self.sample(os, hot);
            let th = &mut self.threads[t];
            th.last = sample;
            th.readings += 1;
        }
    }
}
