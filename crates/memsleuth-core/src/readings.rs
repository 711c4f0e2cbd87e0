//! What the profiled process decides for itself about its readings (docs/design.md, Causes:
//! readings): when one is due, which large blocks' residency to measure, and when glibc must be
//! asked for its heap figures. The readings are taken where the program runs (another process
//! may not be allowed to read its pagemap), so this is the only per-block state the producer
//! keeps: the live blocks large enough to be mmapped, and pymalloc's arenas.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::ledger::FxHasher;

/// A reading is due once a thread allocated this much since the last one ...
pub const RSS_ALLOC_TRIGGER: u64 = 64 * 1024;
/// ... or freed this many blocks (the producer does not know their sizes) ...
pub const RSS_FREES_TRIGGER: u64 = 1024;
/// ... or after a line that ran this long: memory a C library maps or unmaps is seen by no hook,
/// and a line can unmap tens of MB in a millisecond (huge pages), so what a long line did must
/// be read where it ends ...
pub const LONG_LINE_US: u64 = 100;
/// ... or when RSS was last looked at this long ago (what short lines of C code map bit by bit).
/// Due by time alone, RSS is looked at first (a read of statm, about 2 us) and the reading taken
/// only if it moved. Looking every 100 us whatever the lines' length was about 3% of a hot
/// loop's time.
pub const RSS_PERIOD_US: u64 = 1000;
/// Requests at least this large may be served by mmap (glibc's threshold starts at 128 KiB and
/// only grows), so their coming and going always makes the next reading due.
pub const BIG_BLOCK: u64 = 128 * 1024;
/// glibc is asked again once anon RSS or memsleuth's own heap moved this much since it was last
/// asked; in between, the sink carries its figures forward with the tracked bytes it knows.
pub const GLIBC_DRIFT: u64 = 256 * 1024;
/// RSS may drift from the allocators' footprint by this much before residency is read again.
pub const RESIDENCY_DRIFT: u64 = 1 << 20;
/// The least drift that has residency read again while some block is partly resident.
pub const MIN_RESIDENCY_DRIFT: u64 = 64 * 1024;

/// One thread's reading schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    allocated: u64,
    frees: u64,
    /// Big blocks that came or went, arenas, collections: a count rather than a flag, so that the
    /// schedule has no padding. The hooks copy it out of and back into a thread-local at every
    /// call, and a copy of padding bytes went through the stack in pieces that defeated
    /// store-to-load forwarding: a stall that was 40% of the free hook's time.
    big_events: u64,
    time_us: u64,
}

impl Schedule {
    pub const NEW: Schedule = Schedule { allocated: 0, frees: 0, big_events: 0, time_us: 0 };

    #[inline(always)]
    pub fn allocated(&mut self, size: u64) {
        self.allocated = self.allocated.wrapping_add(size);
        if size >= BIG_BLOCK {
            self.big_events += 1;
        }
    }

    #[inline(always)]
    pub fn freed(&mut self) {
        self.frees = self.frees.wrapping_add(1);
    }

    /// A big block went, an arena came or went, or a collection ended.
    pub fn big_event(&mut self) {
        self.big_events += 1;
    }

    /// Whether a tracked event (not time alone) makes the next reading due.
    pub fn event_due(&self) -> bool {
        self.big_events != 0 || self.allocated >= RSS_ALLOC_TRIGGER || self.frees >= RSS_FREES_TRIGGER
    }

    /// Whether the reading at a line boundary may not be skipped; `line_us` is how long it is
    /// since the thread's previous boundary.
    pub fn due(&self, now_us: u64, line_us: u64) -> bool {
        self.event_due() || line_us >= LONG_LINE_US || now_us.wrapping_sub(self.time_us) >= RSS_PERIOD_US
    }

    /// Due by time alone, RSS was looked at and found where the latest reading left it.
    pub fn checked(&mut self, now_us: u64) {
        self.time_us = now_us;
    }

    pub fn taken(&mut self, now_us: u64) {
        *self = Schedule { time_us: now_us, ..Schedule::NEW };
    }
}

/// A large block or arena whose residency a reading checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BigBlock {
    pub size: u64,
    /// Its bytes not resident when last measured; None until a reading measures it. Wholly
    /// resident blocks stay so (memory is not paged back out here) and are not measured again.
    pub unresident: Option<u64>,
    /// pymalloc's arena (it goes by the arena hook, never by a free).
    pub arena: bool,
    /// Its pages seen resident so far, which stay so for the same reason.
    seen: SeenPages,
    /// Tells this block from a later one at the same address and of the same size.
    serial: u64,
}

/// The pages of a block seen resident, a bit per page from its first. A reading asks the kernel
/// only about the others: a resident page costs pagemap about seven times what an unmapped one
/// does, and a block filled bit by bit (a growing dict's table, an arena) was read whole at
/// every reading before (docs/design.md, Causes: readings).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeenPages {
    bits: Vec<u64>,
}

impl SeenPages {
    pub fn contains(&self, page: usize) -> bool {
        self.bits.get(page / 64).is_some_and(|word| word >> (page % 64) & 1 == 1)
    }

    pub fn insert(&mut self, page: usize) {
        if self.bits.len() <= page / 64 {
            self.bits.resize(page / 64 + 1, 0);
        }
        self.bits[page / 64] |= 1 << (page % 64);
    }

    pub fn len(&self) -> u64 {
        self.bits.iter().map(|word| u64::from(word.count_ones())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&word| word == 0)
    }

    /// The runs [start, end) of the pages below `pages` not seen resident, in order, none
    /// longer than `max` pages.
    pub fn unseen_runs(&self, pages: usize, max: usize) -> Vec<(usize, usize)> {
        let max = max.max(1);
        let mut runs = Vec::new();
        let mut page = 0;
        while page < pages {
            // Whole words of seen pages are skipped at once.
            if page % 64 == 0 && self.bits.get(page / 64) == Some(&u64::MAX) {
                page += 64;
                continue;
            }
            if self.contains(page) {
                page += 1;
                continue;
            }
            let start = page;
            while page < pages && page - start < max && !self.contains(page) {
                page += 1;
            }
            runs.push((start, page));
        }
        runs
    }
}

/// A block a reading measures: the reader asks the kernel about the pages not in `seen`, adds
/// those it finds resident, and passes what it found to `Residency::measured`.
pub struct BlockToMeasure {
    pub addr: usize,
    pub size: u64,
    pub seen: SeenPages,
    serial: u64,
}

/// The live big blocks and arenas, and what the last readings found.
pub struct Residency {
    blocks: HashMap<usize, BigBlock, BuildHasherDefault<FxHasher>>,
    arena_bytes: u64,
    /// Big blocks that came or went: each may move glibc's figures without moving RSS.
    events: u64,
    /// (anon RSS, resident footprint) when every block's residency was last measured.
    basis: Option<(u64, i64)>,
    /// (anon RSS, memsleuth's heap, events, mmapped, arena) when glibc was last asked.
    glibc: Option<(u64, u64, u64, u64, u64)>,
    /// Anonymous memory mapped before memsleuth started ([start, end) ranges): pymalloc's first
    /// arenas, glibc's mmapped chunks, libraries' buffers. Its pages count in RSS as they are
    /// first written, as a big block's do, for as long as it stays mapped.
    preexisting: Vec<(usize, usize)>,
    /// Its bytes not resident when last measured; None until measured.
    preexisting_unresident: Option<u64>,
    /// Big blocks and arenas recorded so far (each block's serial).
    serials: u64,
}

/// What a reading must measure: the blocks whose residency is not known to be current.
pub struct Measure {
    pub blocks: Vec<BlockToMeasure>,
    /// The memory mapped before memsleuth started, less the blocks known since, when it must be
    /// measured too; the reader keeps the parts of it still mapped.
    pub preexisting: Option<Vec<(usize, usize)>>,
    drifted: bool,
    rss_anon: u64,
}

impl Measure {
    /// Whether measuring this may show a drift the figures known before hid, so that the reader
    /// must ask again: it measures blocks for the first time, and not every block (as a measure
    /// made because RSS drifted already does).
    pub fn may_reveal_drift(&self) -> bool {
        !self.drifted && !self.blocks.is_empty()
    }
}

impl Default for Residency {
    fn default() -> Self {
        Self::new()
    }
}

impl Residency {
    pub const fn new() -> Self {
        Residency {
            blocks: HashMap::with_hasher(BuildHasherDefault::new()),
            arena_bytes: 0,
            events: 0,
            basis: None,
            glibc: None,
            preexisting: Vec::new(),
            preexisting_unresident: None,
            serials: 0,
        }
    }

    /// The anonymous memory mapped when memsleuth started, as [start, end) ranges.
    pub fn set_preexisting(&mut self, ranges: Vec<(usize, usize)>) {
        self.preexisting = ranges;
        self.preexisting_unresident = None;
    }

    /// Part of that memory was unmapped since (a glibc chunk freed): only what is still among
    /// the anonymous mappings `mapped` stays.
    pub fn keep_preexisting_within(&mut self, mapped: &[(usize, usize)]) {
        self.preexisting = intersect(&self.preexisting, mapped);
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    fn new_block(&mut self, size: u64, arena: bool) -> BigBlock {
        self.serials += 1;
        BigBlock { size, unresident: None, arena, seen: SeenPages::default(), serial: self.serials }
    }

    pub fn allocated(&mut self, addr: usize, size: u64) {
        self.events += 1;
        let block = self.new_block(size, false);
        self.blocks.insert(addr, block);
    }

    /// A free at `addr`; returns whether it was a big block's.
    pub fn freed(&mut self, addr: usize) -> bool {
        let big = self.blocks.get(&addr).is_some_and(|b| !b.arena) && self.blocks.remove(&addr).is_some();
        self.events += u64::from(big);
        big
    }

    /// The addresses of the live big blocks (arenas apart).
    pub fn big_blocks(&self) -> impl Iterator<Item = usize> + '_ {
        self.blocks.iter().filter(|(_, b)| !b.arena).map(|(a, _)| *a)
    }

    pub fn arena(&mut self, addr: usize, size: u64, mapped: bool) {
        if mapped {
            self.arena_bytes += size;
            let block = self.new_block(size, true);
            self.blocks.insert(addr, block);
        } else {
            self.arena_bytes -= size.min(self.arena_bytes);
            self.blocks.remove(&addr);
        }
    }

    /// Whether glibc must be asked for its figures at a reading of `rss_anon` with memsleuth's
    /// heap at `profiler_bytes`: first, after a big block came or went, or once either moved
    /// GLIBC_DRIFT since glibc was last asked. mallinfo2 walks every free chunk of glibc's heap
    /// (milliseconds on a fragmented one), so it is asked only where its answer can change the
    /// explanation.
    pub fn must_ask_glibc(&self, rss_anon: u64, profiler_bytes: u64) -> bool {
        let moved = |then: u64, now: u64| then.abs_diff(now) >= GLIBC_DRIFT;
        self.glibc.is_none_or(|(rss, profiler, events, _, _)| {
            events != self.events || moved(rss, rss_anon) || moved(profiler, profiler_bytes)
        })
    }

    /// glibc answered (mmapped, arena) at this reading.
    pub fn asked_glibc(&mut self, rss_anon: u64, profiler_bytes: u64, mmapped: u64, arena: u64) {
        self.glibc = Some((rss_anon, profiler_bytes, self.events, mmapped, arena));
    }

    /// glibc's (mmapped, arena) as last asked.
    pub fn glibc_footprint(&self) -> (u64, u64) {
        self.glibc.map_or((0, 0), |(_, _, _, mmapped, arena)| (mmapped, arena))
    }

    /// The allocators' footprint (arenas, glibc's heap and mmapped chunks) less what is known
    /// of it not to be resident: what anon RSS moves with while residency figures are current.
    fn resident_footprint(&self) -> i64 {
        let (mmapped, arena) = self.glibc_footprint();
        (self.arena_bytes + arena + mmapped) as i64 - self.unresident_bytes() as i64
    }

    /// The unresident bytes of all live blocks and of the memory mapped before the start, as
    /// last measured.
    fn unresident_bytes(&self) -> u64 {
        self.blocks.values().map(|b| b.unresident.unwrap_or(0)).sum::<u64>() + self.preexisting_unresident.unwrap_or(0)
    }

    /// What a reading of `rss_anon` must measure. While anon RSS moves with the resident
    /// footprint, the residency measured before is current, and only blocks never measured need
    /// the pagemap walk, a reading's costly part. A reader measures, then asks again: blocks
    /// just measured may show RSS has drifted (a new arena mostly untouched while RSS rose).
    pub fn to_measure(&mut self, rss_anon: u64) -> Measure {
        let footprint = self.resident_footprint();
        // A block found partly resident fills as it is used (pymalloc touches an arena's pools
        // one by one) while the footprint stands still: RSS drifting by a quarter of what such
        // blocks lacked means their figures may be stale.
        // The memory mapped before the start is left out: it holds reserves never written
        // (thread stacks), whose size would widen the threshold for every block.
        let partly: u64 = self.blocks.values().filter_map(|b| b.unresident).filter(|&u| u > 0).sum();
        let threshold =
            if partly == 0 { RESIDENCY_DRIFT } else { (partly / 4).clamp(MIN_RESIDENCY_DRIFT, RESIDENCY_DRIFT) };
        let drifted = self.basis.is_none_or(|(rss0, footprint0)| {
            (rss_anon as i64 - rss0 as i64 - (footprint - footprint0)).unsigned_abs() >= threshold
        });
        // The pages seen move to the measure and come back with what it adds (a reader measuring
        // at the same time finds none, and asks the kernel about every page: slower, as exact).
        let blocks = self
            .blocks
            .iter_mut()
            .filter(|(_, b)| drifted && b.unresident != Some(0) || b.unresident.is_none())
            .map(|(&addr, b)| BlockToMeasure {
                addr,
                size: b.size,
                seen: std::mem::take(&mut b.seen),
                serial: b.serial,
            })
            .collect();
        let preexisting = (!self.preexisting.is_empty()
            && (self.preexisting_unresident.is_none() || drifted && self.preexisting_unresident != Some(0)))
        .then(|| {
            let known: Vec<(usize, usize)> = self.blocks.iter().map(|(&a, b)| (a, a + b.size as usize)).collect();
            subtract(&self.preexisting, &known)
        });
        Measure { blocks, preexisting, drifted, rss_anon }
    }

    /// Stores what `unresident` found for each block of `m` that is still live, and returns the
    /// unresident bytes of all live blocks.
    /// `preexisting_unresident` is what the reader found of `m.preexisting`.
    pub fn measured(
        &mut self,
        m: Measure,
        mut unresident: impl FnMut(&BlockToMeasure) -> u64,
        preexisting_unresident: Option<u64>,
    ) -> u64 {
        if preexisting_unresident.is_some() {
            self.preexisting_unresident = preexisting_unresident;
        }
        for block in m.blocks {
            let missing = unresident(&block);
            if let Some(live) = self.blocks.get_mut(&block.addr).filter(|b| b.serial == block.serial) {
                live.unresident = Some(missing);
                // A wholly resident block is not measured again.
                live.seen = if missing == 0 { SeenPages::default() } else { block.seen };
            }
        }
        if m.drifted {
            self.basis = Some((m.rss_anon, self.resident_footprint()));
        }
        self.unresident_bytes()
    }
}

/// Sorted, disjoint [start, end) ranges of `ranges` outside every range of `holes`.
pub fn subtract(ranges: &[(usize, usize)], holes: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut holes: Vec<(usize, usize)> = holes.iter().copied().filter(|(a, b)| a < b).collect();
    holes.sort_unstable();
    let mut out = Vec::new();
    for &(start, end) in ranges {
        let mut at = start;
        for &(hole_start, hole_end) in holes.iter().filter(|(a, b)| *b > start && *a < end) {
            if hole_start > at {
                out.push((at, hole_start));
            }
            at = at.max(hole_end);
        }
        if at < end {
            out.push((at, end));
        }
    }
    out
}

/// The parts of sorted, disjoint ranges `a` that lie inside sorted, disjoint ranges `b`.
pub fn intersect(a: &[(usize, usize)], b: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (start, end) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if start < end {
            out.push((start, end));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_falls_due_by_allocation_frees_big_events_a_long_line_or_time() {
        let mut s = Schedule::NEW;
        s.taken(10_000);
        assert!(!s.due(10_000 + RSS_PERIOD_US - 1, 0));
        assert!(s.due(10_000 + RSS_PERIOD_US, 0));
        assert!(!s.due(10_000 + 1, LONG_LINE_US - 1));
        assert!(s.due(10_000 + 1, LONG_LINE_US), "what a long line did is read where it ends");
        s.allocated(RSS_ALLOC_TRIGGER - 1);
        assert!(!s.due(10_000, 0));
        s.allocated(1);
        assert!(s.due(10_000, 0) && s.event_due());
        s.taken(10_000);
        for _ in 0..RSS_FREES_TRIGGER - 1 {
            s.freed();
        }
        assert!(!s.due(10_000, 0));
        s.freed();
        assert!(s.due(10_000, 0));
        s.taken(10_000);
        s.allocated(BIG_BLOCK);
        s.taken(10_000);
        s.big_event();
        assert!(s.due(10_000, 0), "freeing a big block may unmap it");
        s.taken(10_000);
        assert!(!s.event_due() && s.due(10_000 + RSS_PERIOD_US, 0));
        s.checked(10_000 + RSS_PERIOD_US);
        assert!(!s.due(10_000 + 2 * RSS_PERIOD_US - 1, 0));
        assert!(s.due(10_000 + 2 * RSS_PERIOD_US, 0));
    }

    #[test]
    fn glibc_is_asked_only_where_its_figures_can_change_the_explanation() {
        let mut r = Residency::default();
        assert!(r.must_ask_glibc(10 << 20, 1000), "first reading");
        r.asked_glibc(10 << 20, 1000, 0, 9000);
        assert!(!r.must_ask_glibc((10 << 20) + GLIBC_DRIFT - 1, 1000 + GLIBC_DRIFT - 1));
        assert!(r.must_ask_glibc((10 << 20) + GLIBC_DRIFT, 1000));
        assert!(r.must_ask_glibc(10 << 20, 1000 + GLIBC_DRIFT));
        r.allocated(0x1000, BIG_BLOCK);
        assert!(r.must_ask_glibc(10 << 20, 1000), "a block glibc may have mmapped came");
        r.asked_glibc(10 << 20, 1000, BIG_BLOCK, 9000);
        assert!(!r.freed(0x2000), "not a big block");
        assert!(!r.must_ask_glibc(10 << 20, 1000));
        assert!(r.freed(0x1000));
        assert!(r.must_ask_glibc(10 << 20, 1000), "and went");
        r.arena(0x8000, 1 << 20, true);
        assert!(!r.freed(0x8000), "an arena goes by the arena hook, not by a free");
        assert_eq!(r.big_blocks().count(), 0);
        assert_eq!(r.glibc_footprint(), (BIG_BLOCK, 9000));
    }

    #[test]
    fn residency_is_measured_again_only_for_new_blocks_until_rss_drifts_from_the_footprint() {
        let mut r = Residency::default();
        r.allocated(0x10_0000, 1 << 20);
        r.arena(0x40_0000, 1 << 18, true);
        let m = r.to_measure(50 << 20);
        assert_eq!(m.blocks.len(), 2, "never measured");
        assert_eq!(r.measured(m, |b| b.size / 2, None), (1 << 19) + (1 << 17));
        // RSS moved with the footprint (no drift): known figures stand, a new block is measured.
        r.allocated(0x80_0000, 1 << 20);
        let m = r.to_measure(50 << 20);
        assert_eq!(m.blocks.iter().map(|b| b.addr).collect::<Vec<_>>(), vec![0x80_0000]);
        assert_eq!(r.measured(m, |_| 0, None), (1 << 19) + (1 << 17));
        // Drifted: every block not known to be wholly resident is measured again.
        let m = r.to_measure((50 << 20) + RESIDENCY_DRIFT);
        assert_eq!(m.blocks.len(), 2);
        // A block freed while it was being measured is not brought back.
        r.freed(0x10_0000);
        assert_eq!(r.measured(m, |_| 0, None), 0);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn range_arithmetic() {
        let pre = [(0x1000, 0x5000), (0x8000, 0x9000)];
        assert_eq!(
            subtract(&pre, &[(0x2000, 0x3000), (0x4800, 0x8800)]),
            [(0x1000, 0x2000), (0x3000, 0x4800), (0x8800, 0x9000)]
        );
        assert_eq!(subtract(&pre, &[]), pre);
        assert_eq!(subtract(&pre, &[(0, 0x10000)]), []);
        assert_eq!(
            intersect(&pre, &[(0x0, 0x1800), (0x4000, 0x8400)]),
            [(0x1000, 0x1800), (0x4000, 0x5000), (0x8000, 0x8400)]
        );
        assert_eq!(intersect(&pre, &[]), []);
    }

    /// Memory mapped before memsleuth started is measured at the first reading, again only once
    /// RSS drifts, and less any block known since (an arena mapped where it was unmapped).
    #[test]
    fn memory_mapped_before_the_start_is_measured_like_a_block() {
        let mut r = Residency::default();
        r.set_preexisting(vec![(0x100_0000, 0x120_0000)]);
        let m = r.to_measure(50 << 20);
        assert_eq!(m.preexisting.as_deref(), Some(&[(0x100_0000, 0x120_0000)][..]));
        assert_eq!(r.measured(m, |_| 0, Some(1 << 20)), 1 << 20);
        assert_eq!(r.to_measure((50 << 20) + (64 << 10)).preexisting, None, "no drift");
        r.arena(0x110_0000, 1 << 20, true);
        let m = r.to_measure((50 << 20) + (3 << 20));
        assert_eq!(m.preexisting.as_deref(), Some(&[(0x100_0000, 0x110_0000)][..]));
        assert_eq!(r.measured(m, |_| 1 << 20, Some(0)), 1 << 20);
        assert_eq!(r.to_measure(60 << 20).preexisting, None, "wholly resident");
    }

    /// What was unmapped since (a glibc chunk freed) leaves the memory measured.
    #[test]
    fn memory_mapped_before_the_start_and_unmapped_since_is_forgotten() {
        let mut r = Residency::default();
        r.set_preexisting(vec![(0x100_0000, 0x120_0000), (0x300_0000, 0x310_0000)]);
        r.keep_preexisting_within(&[(0x0, 0x110_0000), (0x300_0000, 0x400_0000)]);
        let m = r.to_measure(50 << 20);
        assert_eq!(m.preexisting.as_deref(), Some(&[(0x100_0000, 0x110_0000), (0x300_0000, 0x310_0000)][..]));
    }

    /// The seed's comprehension under `memsleuth run`: pymalloc maps a new arena and touches a
    /// quarter of it, and fills an arena it mapped before memsleuth started. The new arena,
    /// measured first, shows RSS rose more than the footprint explains: the older memory is
    /// measured again at the same reading.
    #[test]
    fn a_new_block_found_mostly_untouched_shows_the_drift_it_hid() {
        const KIB: u64 = 1024;
        let mut r = Residency::default();
        r.set_preexisting(vec![(0x100_0000, 0x110_0000)]);
        let m = r.to_measure(50 << 20);
        assert_eq!(r.measured(m, |_| 0, Some(860 * KIB)), 860 * KIB);
        r.arena(0x200_0000, 1 << 20, true);
        let rss = (50 << 20) + 1120 * KIB;
        let first = r.to_measure(rss);
        assert_eq!(first.blocks.len(), 1, "the new arena");
        assert!(first.may_reveal_drift());
        assert!(first.preexisting.is_none(), "the footprint rose with RSS, as far as is known");
        r.measured(first, |_| 780 * KIB, None);
        let second = r.to_measure(rss);
        assert!(second.preexisting.is_some(), "RSS rose 876 KiB more than the resident footprint");
        assert!(!second.may_reveal_drift(), "it measures everything not wholly resident");
        assert_eq!(r.measured(second, |_| 780 * KIB, Some(68 * KIB)), 848 * KIB);
        let third = r.to_measure(rss);
        assert!(third.blocks.is_empty() && third.preexisting.is_none());
    }

    /// An arena measured while pymalloc had touched a quarter of it fills as it is used: RSS
    /// rising by far less than RESIDENCY_DRIFT, with no new block, has it measured again.
    #[test]
    fn a_partly_resident_arena_is_measured_again_as_it_fills() {
        let mut r = Residency::default();
        r.arena(0x40_0000, 1 << 20, true);
        let m = r.to_measure(50 << 20);
        assert_eq!(r.measured(m, |_| 768 << 10, None), 768 << 10);
        let m = r.to_measure((50 << 20) + (128 << 10));
        assert!(m.blocks.is_empty(), "a drift under a quarter of what it lacked");
        let m = r.to_measure((50 << 20) + (768 << 10));
        assert_eq!(m.blocks.iter().map(|b| b.addr).collect::<Vec<_>>(), vec![0x40_0000]);
        assert_eq!(r.measured(m, |_| 0, None), 0);
        // Wholly resident now: back to the wide threshold.
        assert!(r.to_measure((51 << 20) - 1).blocks.is_empty());
    }

    #[test]
    fn unseen_pages_come_in_runs_no_longer_than_asked() {
        let mut seen = SeenPages::default();
        assert_eq!(seen.unseen_runs(5, 512), vec![(0, 5)]);
        assert_eq!(seen.unseen_runs(5, 2), vec![(0, 2), (2, 4), (4, 5)]);
        for page in (0..64).chain([66, 130]) {
            seen.insert(page);
        }
        assert_eq!(seen.len(), 66);
        assert!(seen.contains(66) && !seen.contains(67) && !seen.contains(10_000));
        assert_eq!(seen.unseen_runs(140, 512), vec![(64, 66), (67, 130), (131, 140)]);
        assert_eq!(seen.unseen_runs(64, 512), vec![], "every page seen");
        assert_eq!(seen.unseen_runs(200, 40), vec![(64, 66), (67, 107), (107, 130), (131, 171), (171, 200)]);
    }

    #[test]
    fn pages_seen_resident_are_kept_for_the_next_measure_of_the_same_block_only() {
        let mut r = Residency::default();
        r.allocated(0x10_0000, 1 << 20);
        let mut m = r.to_measure(50 << 20);
        m.blocks[0].seen.insert(3);
        r.measured(m, |b| b.size - 4096, None);
        let mut m = r.to_measure((50 << 20) + RESIDENCY_DRIFT);
        assert_eq!(m.blocks[0].seen.len(), 1, "kept from the last measure");
        // Freed and allocated again at the same address, with the same size, while measured:
        // the new block's pages are not the old one's.
        m.blocks[0].seen.insert(4);
        r.freed(0x10_0000);
        r.allocated(0x10_0000, 1 << 20);
        r.measured(m, |b| b.size - 8192, None);
        let m = r.to_measure((50 << 20) + RESIDENCY_DRIFT);
        assert_eq!(m.blocks.len(), 1, "never measured");
        assert!(m.blocks[0].seen.is_empty());
        // Found wholly resident: not measured again, and its pages are let go.
        r.measured(m, |_| 0, None);
        assert!(r.blocks.values().all(|b| b.seen.is_empty() && b.unresident == Some(0)));
        assert!(r.to_measure((52 << 20) + RESIDENCY_DRIFT).blocks.is_empty());
    }
}
