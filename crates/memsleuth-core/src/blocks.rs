//! The block table: live tracked block address -> (requested size, birth).
//!
//! It is touched on every allocation and free, so its layout decides memsleuth's speed
//! (a scrambling hash would miss the cache on nearly every operation). An address's
//! home slot is the address itself in 16-byte units (pymalloc's alignment) modulo the table
//! size, so a contiguous heap maps onto contiguous slots without any collision: pymalloc hands
//! out neighbouring blocks of a pool one after another and successive operations touch the same
//! cache lines. Only addresses a whole table-span apart alias. Robin Hood linear probing keeps
//! every entry as close to its home as the others allow, so a lookup stops at the first entry
//! closer to its own home than the probe is, and a deletion (backward shift, no tombstones)
//! stops at the first entry sitting at its home: dense runs of blocks cost nothing extra.

/// What the table stores for one live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub size: u64,
    /// Where the block was allocated (owner node and frame activation); see `ledger::Birth`.
    pub birth: u32,
}

/// 16 bytes: the table's footprint is memsleuth's main memory cost (one slot per live block at
/// up to 80% load), so sizes are stored in 32 bits and the rare larger ones beside the table.
#[derive(Clone, Copy)]
struct Slot {
    /// 0 marks an empty slot: no allocator returns a block at address 0.
    addr: usize,
    /// The size, or HUGE when it is kept in `huge_sizes`.
    size: u32,
    birth: u32,
}

const HUGE: u32 = u32::MAX;
const EMPTY: Slot = Slot { addr: 0, size: 0, birth: 0 };
const MIN_SLOTS: usize = 1 << 16;
/// Grow when more than 4/5 of the slots are taken: Robin Hood probing stays short up to there
/// for addresses spread over the table.
const MAX_LOAD_NUM: usize = 4;
const MAX_LOAD_DEN: usize = 5;
/// Dense heap ranges a table-span apart overlay each other and make long runs whatever the
/// load. A placement probing this far doubles the span soon after (CROWDED_GRACE), as long as the
/// table stays at least a quarter full (so memory stays bounded at 4 slots per live block). Well above
/// the longest probe of scattered addresses at 80% load (a few dozen slots), but low enough to
/// catch overlaid ranges early: at 256, a heap of 32-byte blocks spread over 54 MiB, folded over
/// a 16 MiB span, ran at a mean displacement of 10 for hundreds of thousands of operations first.
const CROWDED_PROBE: usize = 64;
/// Inserts a crowded table takes before it doubles by itself: the sink, which looks at most every
/// 2,048 inserts, doubles it first, with `grow_with`, keeping its ring drained meanwhile.
const CROWDED_GRACE: usize = 4096;

pub struct BlockTable {
    slots: Vec<Slot>,
    mask: usize,
    len: usize,
    /// Inserts since a placement probed CROWDED_PROBE slots (None: none since the table grew).
    crowded_for: Option<usize>,
    huge_sizes: std::collections::BTreeMap<usize, u64>,
}

impl Default for BlockTable {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockTable {
    pub const fn new() -> Self {
        BlockTable {
            slots: Vec::new(),
            mask: 0,
            len: 0,
            crowded_for: None,
            huge_sizes: std::collections::BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the table itself occupies.
    pub fn footprint(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
    }

    #[inline(always)]
    fn home(&self, addr: usize) -> usize {
        (addr >> 4) & self.mask
    }

    /// Slot `i`. Every index here is masked by `mask`, so the bounds check a plain index makes
    /// (a sixth of the table's instructions) is left out.
    #[inline(always)]
    fn slot(&self, i: usize) -> &Slot {
        debug_assert!(i < self.slots.len());
        // SAFETY: `i` is masked by `mask`, which is `slots.len() - 1` whenever the table has slots,
        // and no path reaches a slot of an empty table (`insert` grows first, `find` returns early).
        unsafe { self.slots.get_unchecked(i) }
    }

    #[inline(always)]
    fn slot_mut(&mut self, i: usize) -> &mut Slot {
        debug_assert!(i < self.slots.len());
        // SAFETY: as for `slot`.
        unsafe { self.slots.get_unchecked_mut(i) }
    }

    /// How far the entry in slot `i` sits from its home.
    #[inline(always)]
    fn displacement(&self, i: usize) -> usize {
        i.wrapping_sub(self.home(self.slot(i).addr)) & self.mask
    }

    /// Inserts or replaces; returns the block previously recorded at `addr`, if any (a free the
    /// hooks never saw, such as one made while the interpreter had swapped allocators).
    #[inline]
    pub fn insert(&mut self, addr: usize, block: Block) -> Option<Block> {
        debug_assert!(addr != 0);
        let crowded_long = self.crowded_for.is_some_and(|inserts| inserts >= CROWDED_GRACE);
        if self.fills_within(1) || (crowded_long && self.quarter_full()) {
            self.grow_with(|| {});
        }
        if let Some(inserts) = &mut self.crowded_for {
            *inserts += 1;
        }
        let huge = block.size >= HUGE as u64;
        let entry = Slot { addr, size: if huge { HUGE } else { block.size as u32 }, birth: block.birth };
        let old = match self.place(entry) {
            None => {
                self.len += 1;
                None
            }
            Some(i) => {
                let old = self.block_at(i);
                if old.size >= HUGE as u64 && !huge {
                    self.huge_sizes.remove(&addr);
                }
                *self.slot_mut(i) = entry;
                Some(old)
            }
        };
        if huge {
            self.huge_sizes.insert(addr, block.size);
        }
        old
    }

    #[inline(always)]
    fn block_at(&self, i: usize) -> Block {
        let slot = *self.slot(i);
        let size =
            if slot.size == HUGE { self.huge_sizes.get(&slot.addr).copied().unwrap_or(0) } else { slot.size as u64 };
        Block { size, birth: slot.birth }
    }

    /// Robin Hood placement of `entry`, in one pass from its home: its address is either met on
    /// the way (that slot is returned, left as it is), or absent once the probe passes an entry
    /// closer to its home than the probe is (Robin Hood order), where `entry` then goes.
    #[inline]
    fn place(&mut self, entry: Slot) -> Option<usize> {
        let mut i = self.home(entry.addr);
        let mut dist = 0;
        loop {
            let here = self.slot(i).addr;
            if here == 0 {
                *self.slot_mut(i) = entry;
                return None;
            }
            if here == entry.addr {
                return Some(i);
            }
            if self.displacement(i) < dist {
                self.shift_in(i, entry);
                return None;
            }
            i = (i + 1) & self.mask;
            dist += 1;
            if dist == CROWDED_PROBE {
                self.crowded_for.get_or_insert(0);
            }
        }
    }

    /// Puts `entry` into occupied slot `i`, moving the rest of the run up one slot. Robin Hood
    /// order keeps a run sorted by home, so this is the swap-by-swap displacement done as one
    /// memmove: inserting among aliased dense heap ranges moves hundreds of entries at a time.
    fn shift_in(&mut self, i: usize, entry: Slot) {
        let mut end = i;
        while self.slot(end).addr != 0 {
            end = (end + 1) & self.mask;
        }
        if i < end {
            self.slots.copy_within(i..end, i + 1);
        } else {
            // The run wraps past the last slot.
            self.slots.copy_within(0..end, 1);
            *self.slot_mut(0) = *self.slot(self.mask);
            self.slots.copy_within(i..self.mask, i + 1);
        }
        *self.slot_mut(i) = entry;
        if self.displacement(end) >= CROWDED_PROBE {
            self.crowded_for.get_or_insert(0);
        }
    }

    #[inline]
    pub fn get(&self, addr: usize) -> Option<Block> {
        self.find(addr).map(|i| self.block_at(i))
    }

    /// Changes the birth of a live block; false if the block is unknown.
    #[inline]
    pub fn set_birth(&mut self, addr: usize, birth: u32) -> bool {
        let Some(i) = self.find(addr) else { return false };
        self.slot_mut(i).birth = birth;
        true
    }

    #[inline]
    fn find(&self, addr: usize) -> Option<usize> {
        if self.slots.is_empty() || addr == 0 {
            return None;
        }
        let mut i = self.home(addr);
        let mut dist = 0;
        loop {
            let slot_addr = self.slot(i).addr;
            if slot_addr == addr {
                return Some(i);
            }
            if slot_addr == 0 || self.displacement(i) < dist {
                return None;
            }
            i = (i + 1) & self.mask;
            dist += 1;
        }
    }

    #[inline]
    pub fn remove(&mut self, addr: usize) -> Option<Block> {
        let mut hole = self.find(addr)?;
        let removed = self.block_at(hole);
        if self.slot(hole).size == HUGE {
            self.huge_sizes.remove(&addr);
        }
        // Backward shift, slot by slot: it rarely moves more than a slot or two.
        loop {
            let next = (hole + 1) & self.mask;
            if self.slot(next).addr == 0 || self.displacement(next) == 0 {
                break;
            }
            *self.slot_mut(hole) = *self.slot(next);
            hole = next;
        }
        *self.slot_mut(hole) = EMPTY;
        self.len -= 1;
        Some(removed)
    }

    /// Whether `inserts` more blocks would make the table grow: past 4/5 full, or crowded while
    /// at least a quarter full. The sink grows it ahead of the records it applies, with
    /// `grow_with`, so that it can keep reading the ring while the entries move.
    pub fn due_to_grow(&self, inserts: usize) -> bool {
        self.fills_within(inserts) || (self.crowded_for.is_some() && self.quarter_full())
    }

    fn fills_within(&self, inserts: usize) -> bool {
        (self.len + inserts) * MAX_LOAD_DEN > self.slots.len() * MAX_LOAD_NUM
    }

    fn quarter_full(&self) -> bool {
        self.len * 4 >= self.slots.len()
    }

    /// Doubles the table, calling `between` after every GROW_STEP slots of the work (the new
    /// table's pages made resident, then the old table's slots moved): doubling four million
    /// entries takes tens of milliseconds, far longer than the program's ring lasts.
    pub fn grow_with(&mut self, mut between: impl FnMut()) {
        let new_len = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, empty_slots(new_len));
        // The zeroed slots may be fresh untouched pages; touch them all now, so the table is
        // resident from the start and the `profiler` cause is what it allocated.
        let base = self.slots.as_mut_ptr() as *mut u8;
        let bytes = new_len * std::mem::size_of::<Slot>();
        for (page, offset) in (0..bytes).step_by(PAGE).enumerate() {
            // SAFETY: `offset` lies inside the slots' allocation; a volatile write of the zero
            // already there changes nothing but makes the kernel back the page.
            unsafe { std::ptr::write_volatile(base.add(offset), 0) };
            if (page + 1) % (GROW_STEP * std::mem::size_of::<Slot>() / PAGE) == 0 {
                between();
            }
        }
        self.mask = new_len - 1;
        self.crowded_for = None;
        for (moved, slot) in old.into_iter().enumerate() {
            if slot.addr != 0 {
                let placed = self.place(slot);
                debug_assert!(placed.is_none(), "addresses in the old table are distinct");
            }
            if (moved + 1) % GROW_STEP == 0 {
                between();
            }
        }
    }
}

const PAGE: usize = 4096;
/// Slots of a doubling's work between two calls of its `between`: about 0.1 ms here (0.5 ms at
/// most, measured at four million entries).
const GROW_STEP: usize = 1 << 14;

/// `n` empty slots from zeroed memory: an empty slot is all zero bytes, and a large zeroed
/// allocation comes from fresh pages, where filling the slots one by one would write them all.
fn empty_slots(n: usize) -> Vec<Slot> {
    let layout = std::alloc::Layout::array::<Slot>(n).expect("the table's size fits in memory");
    // SAFETY: `layout` has a non-zero size (n >= MIN_SLOTS), as alloc_zeroed requires.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut Slot;
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `ptr` comes from the global allocator with the layout of `n` slots, and all-zero
    // bytes are a valid `Slot` (EMPTY), so all `n` are initialised.
    unsafe { Vec::from_raw_parts(ptr, n, n) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn block(size: u64) -> Block {
        Block { size, birth: size as u32 }
    }

    /// One step of churn: insert at an address of a kind (dense pymalloc-like runs, 1 MiB-aligned
    /// mmaps, scattered heap addresses), or remove the live block at an index (modulo).
    #[derive(Clone, Debug)]
    enum Step {
        Insert { kind: u8, bits: usize },
        Remove(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => (0u8..7, any::<usize>()).prop_map(|(kind, bits)| Step::Insert { kind, bits }),
            1 => any::<usize>().prop_map(Step::Remove),
        ]
    }

    fn address(kind: u8, bits: usize) -> usize {
        match kind {
            0 => (bits & 0xfff) << 20,
            1 | 2 => 0x7f00_0000_0000 + ((bits & 0xffff) << 4),
            _ => 0x5500_0000_0000 + ((bits & 0xff_ffff) << 4),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn agrees_with_a_hashmap_under_random_churn(steps in prop::collection::vec(step(), 1..20_000)) {
            let mut table = BlockTable::new();
            let mut model: HashMap<usize, Block> = HashMap::new();
            let mut live: Vec<usize> = Vec::new();
            for (i, s) in steps.into_iter().enumerate() {
                match s {
                    Step::Insert { kind, bits } => {
                        let addr = address(kind, bits);
                        if addr == 0 {
                            continue;
                        }
                        let b = block(i as u64);
                        let old = table.insert(addr, b);
                        prop_assert_eq!(old, model.insert(addr, b));
                        if old.is_none() {
                            live.push(addr);
                        }
                    }
                    Step::Remove(k) if !live.is_empty() => {
                        let addr = live.swap_remove(k % live.len());
                        prop_assert_eq!(table.remove(addr), model.remove(&addr));
                        prop_assert_eq!(table.remove(addr), None);
                    }
                    Step::Remove(_) => {}
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for (addr, b) in &model {
                prop_assert_eq!(table.get(*addr), Some(*b));
            }
        }
    }

    /// Entries whose run wraps past the end of the table, and aliases of one home a table-span
    /// apart, are all found again after the table doubles.
    #[test]
    fn wrapped_runs_survive_growth() {
        let span = MIN_SLOTS << 4;
        let mut t = BlockTable::new();
        let mut addrs = Vec::new();
        // Five aliases of the last home (slots 65535, 0, 1, 2, 3) and entries homed at 0 and 1.
        for k in 1..=5 {
            addrs.push(k * span + span - 16);
        }
        addrs.extend([7 * span, 7 * span + 16, 9 * span]);
        // Enough dense blocks elsewhere to make the table double.
        addrs.extend((0..MIN_SLOTS).map(|i| 0x7f00_0000_0000 + (i << 5)));
        for (n, &addr) in addrs.iter().enumerate() {
            assert_eq!(t.insert(addr, block(n as u64)), None);
        }
        assert!(t.footprint() > MIN_SLOTS * std::mem::size_of::<Slot>(), "the table grew");
        for (n, &addr) in addrs.iter().enumerate() {
            assert_eq!(t.get(addr), Some(block(n as u64)), "{addr:#x}");
        }
        for &addr in &addrs {
            assert!(t.remove(addr).is_some());
        }
        assert!(t.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Insertions and removals inside a run that wraps past the last slot move the right
        /// entries, whichever side of the wrap they sit on.
        #[test]
        fn runs_wrapping_past_the_end_shift_both_ways(
            homes in prop::collection::vec(0usize..8, 24),
            removal_order in prop::collection::vec(any::<usize>(), 24),
        ) {
            let span = MIN_SLOTS << 4;
            let last = span - 16;
            let mut t = BlockTable::new();
            let mut model: HashMap<usize, Block> = HashMap::new();
            // Homes in the last four slots and the first four, several aliases each.
            let mut addrs: Vec<usize> = homes
                .iter()
                .enumerate()
                .map(|(k, &home)| {
                    let offset = if home < 4 { last - home * 16 } else { (home - 4) * 16 };
                    (k + 1) * span + offset
                })
                .collect();
            for (n, &addr) in addrs.iter().enumerate() {
                let b = block(n as u64);
                prop_assert_eq!(t.insert(addr, b), model.insert(addr, b));
            }
            for pick in removal_order {
                let addr = addrs.swap_remove(pick % addrs.len());
                prop_assert_eq!(t.remove(addr), model.remove(&addr));
                for (a, b) in &model {
                    prop_assert_eq!(t.get(*a), Some(*b), "{:#x}", a);
                }
            }
            prop_assert!(t.is_empty());
        }
    }

    #[test]
    fn sizes_beyond_32_bits() {
        let mut t = BlockTable::new();
        let big = Block { size: 5 << 30, birth: 3 };
        assert_eq!(t.insert(0x2000, big), None);
        assert_eq!(t.get(0x2000), Some(big));
        assert!(t.set_birth(0x2000, 9));
        assert_eq!(t.remove(0x2000), Some(Block { birth: 9, ..big }));
        assert_eq!(t.get(0x2000), None);
    }

    #[test]
    fn missing_addresses_and_replacement() {
        let mut t = BlockTable::new();
        assert_eq!(t.remove(0x1000), None);
        assert_eq!(t.insert(0x1000, block(8)), None);
        assert_eq!(t.insert(0x1000, block(16)), Some(block(8)));
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(0x1000), Some(block(16)));
        assert!(t.is_empty());
    }

    /// `due_to_grow` says true exactly before the insert that would double the table, and
    /// `grow_with` doubles it ahead, calling `between` at every step of the work (the sink
    /// reads its ring there), with every entry found again afterwards.
    #[test]
    fn growing_ahead_pauses_between_steps_and_keeps_every_entry() {
        let mut t = BlockTable::new();
        let addrs: Vec<usize> = (0..MIN_SLOTS * 4 / 5).map(|i| 0x5500_0000_0000 + (i << 4)).collect();
        for (n, &addr) in addrs.iter().enumerate() {
            assert_eq!(t.due_to_grow(1), n == 0, "an empty table grows; then there is room for entry {n}");
            t.insert(addr, block(n as u64));
        }
        assert_eq!(t.footprint(), MIN_SLOTS * std::mem::size_of::<Slot>(), "not grown yet");
        assert!(t.due_to_grow(1));
        assert!(!t.due_to_grow(0));
        let mut pauses = 0;
        t.grow_with(|| pauses += 1);
        assert_eq!(t.footprint(), 2 * MIN_SLOTS * std::mem::size_of::<Slot>());
        // The new table's pages, then the old table's slots, GROW_STEP slots a pause.
        assert_eq!(pauses, 2 * MIN_SLOTS / GROW_STEP + MIN_SLOTS / GROW_STEP);
        assert!(!t.due_to_grow(1));
        for (n, &addr) in addrs.iter().enumerate() {
            assert_eq!(t.get(addr), Some(block(n as u64)), "{addr:#x}");
        }
        assert_eq!(t.len(), addrs.len());
    }

    /// A crowded table is due to grow at once, for the sink to double between its looks at the
    /// ring, but doubles by itself only CROWDED_GRACE inserts later.
    #[test]
    fn a_crowded_table_doubles_by_itself_only_after_a_grace() {
        let span = MIN_SLOTS << 4;
        let mut t = BlockTable::new();
        let dense = |i: usize| 0x7f00_0000_0000 + (i << 4);
        for i in 0..MIN_SLOTS / 4 {
            t.insert(dense(i), block(1));
        }
        assert!(!t.due_to_grow(1));
        // Aliases of one home a table-span apart, past the dense run: the 65th probes 64 slots.
        for k in 1..=CROWDED_PROBE + 1 {
            t.insert(0x5500_0000_0000 + k * span, block(2));
        }
        assert!(t.due_to_grow(0), "crowded");
        let small = MIN_SLOTS * std::mem::size_of::<Slot>();
        for i in 0..CROWDED_GRACE - 1 {
            t.insert(dense(MIN_SLOTS / 4 + i), block(3));
        }
        assert_eq!(t.footprint(), small, "not within the grace");
        t.insert(dense(MIN_SLOTS / 4 + CROWDED_GRACE), block(3));
        assert_eq!(t.footprint(), 2 * small, "doubled once the grace ran out");
        assert!(!t.due_to_grow(1));
    }
}
