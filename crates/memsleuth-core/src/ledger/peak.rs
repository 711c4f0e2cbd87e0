//! What was live at the tracked peak, by line (docs/design.md, "Live at the tracked peak"): the
//! bytes of the blocks born under each line (the innermost profiled line active as they were
//! allocated) that were live at the moment the process-wide tracked live bytes reached their
//! maximum.
//!
//! Each line keeps its live bytes now, updated as its blocks come and go (the birth a block is
//! looked up by on either side names the line, so this costs no lookup of its own). A copy at
//! the peak is made lazily: when live bytes fall for the first time from a maximum above the
//! last one kept, the state just before that fall is the peak's, and it is frozen by starting a
//! new generation, which costs nothing per line. A line changed in a newer generation than its
//! own first saves its bytes as they were (its value at the freeze) before changing them; a
//! line not changed since keeps them as its value now. Every allocation and free thus does a
//! constant amount of extra work, however often the peak moves, and no snapshot ever walks the
//! blocks or the lines.

use super::registry::LineId;

#[derive(Clone, Copy, Debug, Default)]
struct LineLive {
    /// Live bytes of the line's blocks now.
    now: u64,
    /// Its live bytes at the freeze of generation `generation`, once it changed after it.
    at_peak: u64,
    /// The generation in which it last changed.
    generation: u64,
}

/// Live bytes by line, now and at the last peak frozen.
#[derive(Default)]
pub(super) struct LiveByLine {
    lines: Vec<LineLive>,
    /// Freezes so far (0: none; a u64 never wraps).
    generation: u64,
    /// The tracked live bytes at the last freeze (0: none).
    frozen_peak: u64,
}

impl LiveByLine {
    pub(super) const fn new() -> Self {
        LiveByLine { lines: Vec::new(), generation: 0, frozen_peak: 0 }
    }

    /// A new line id was made: it starts with nothing live.
    pub(super) fn add_line(&mut self) {
        self.lines.push(LineLive { generation: self.generation, ..LineLive::default() });
    }

    /// `line`'s entry, its bytes at the last freeze saved aside if this is its first change
    /// since. Every allocation and free of a profiled line's block comes here, so the bounds
    /// check a plain index makes is left out.
    #[inline(always)]
    fn touch(&mut self, line: LineId) -> &mut LineLive {
        let generation = self.generation;
        debug_assert!(line.index() < self.lines.len());
        // SAFETY: a line id is made only by `Ledger::new_line` (its field is private to
        // registry.rs), which calls `add_line` for each, or is `LineId::EMPTY_SLOT`, the first
        // one made; this table never shrinks, so every id indexes an entry.
        let l = unsafe { self.lines.get_unchecked_mut(line.index()) };
        if l.generation != generation {
            l.at_peak = l.now;
            l.generation = generation;
        }
        l
    }

    /// A block of `size` bytes born under `line` became live.
    #[inline(always)]
    pub(super) fn alloc(&mut self, line: LineId, size: u64) {
        self.touch(line).now += size;
    }

    /// A block of `size` bytes born under `line` is gone.
    #[inline(always)]
    pub(super) fn free(&mut self, line: LineId, size: u64) {
        let l = self.touch(line);
        l.now -= size.min(l.now);
    }

    /// Process-wide live bytes (`live`, at most `peak`, the maximum so far) are about to fall:
    /// if they stand at a maximum above the last one frozen, the state now is that peak's.
    #[inline(always)]
    pub(super) fn before_fall(&mut self, live: u64, peak: u64) {
        if live == peak && peak > self.frozen_peak {
            self.freeze(peak);
        }
    }

    #[cold]
    fn freeze(&mut self, peak: u64) {
        self.generation += 1;
        self.frozen_peak = peak;
    }

    /// The tracked live bytes at the last freeze (0: none).
    pub(super) fn frozen_peak(&self) -> u64 {
        self.frozen_peak
    }

    /// The tracked live bytes at the peak these figures are of, given the live bytes and the
    /// peak now: a maximum not left yet is the state now.
    pub(super) fn peak(&self, live: u64, peak: u64) -> u64 {
        if self.is_at_peak(live, peak) {
            peak
        } else {
            self.frozen_peak
        }
    }

    fn is_at_peak(&self, live: u64, peak: u64) -> bool {
        live == peak && peak > self.frozen_peak
    }

    /// `line`'s live bytes at the peak (`live` and `peak` as for `peak`).
    pub(super) fn at_peak(&self, line: LineId, live: u64, peak: u64) -> u64 {
        let l = &self.lines[line.index()];
        if self.is_at_peak(live, peak) || l.generation != self.generation {
            l.now
        } else {
            l.at_peak
        }
    }

    /// Bytes this occupies.
    pub(super) fn footprint(&self) -> usize {
        self.lines.capacity() * std::mem::size_of::<LineLive>()
    }
}

impl super::Ledger {
    /// The tracked live bytes at the peak that `live_at_peak` describes (0 before any block).
    pub fn peak_live_bytes(&self) -> u64 {
        self.live_by_line.peak(self.process.live_bytes, self.process.tracked_peak_bytes)
    }

    /// The bytes of `func`'s lines live at the tracked peak, as (line number, bytes) in line
    /// order, lines with none left out. Blocks born before the function's first line or in its
    /// teardown count at its first line (`first_lineno`).
    pub fn live_at_peak(&self, func: super::FuncId) -> Vec<(u32, u64)> {
        let (live, peak) = (self.process.live_bytes, self.process.tracked_peak_bytes);
        let f = self.func(func);
        let first = f.info.first_lineno;
        let at_peak = |line: LineId| self.live_by_line.at_peak(line, live, peak);
        let mut lines: Vec<(u32, u64)> = Vec::new();
        let outside_lines = at_peak(f.total_line) + at_peak(f.teardown_line);
        if outside_lines > 0 {
            lines.push((first, outside_lines));
        }
        for (lineno, line) in f.lines() {
            let bytes = at_peak(line);
            match lines.last_mut() {
                _ if bytes == 0 => {}
                Some((last, sum)) if *last == lineno => *sum += bytes,
                _ => lines.push((lineno, bytes)),
            }
        }
        lines
    }
}
