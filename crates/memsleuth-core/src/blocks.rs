//! The block table: live tracked block address -> (requested size, owner node, frame stamp).
//!
//! It is touched on every allocation and free, so its layout decides memsleuth's speed
//! (hook-costs.md: a scrambling hash misses the cache on nearly every operation). Slots are
//! chosen so that neighbouring addresses land in neighbouring slots: the 4 KiB page an address
//! lies in picks a scrambled group of 256 slots, and the address's offset inside the page (in
//! 16-byte units, pymalloc's alignment) picks the slot inside that group. pymalloc hands out
//! consecutive blocks of a pool one after another, so successive operations touch the same few
//! cache lines, while pages that would alias (1 MiB-aligned mmaps, distant heaps) are spread over
//! the table by the scramble. Linear probing with backward-shift deletion keeps probe chains
//! short and leaves no tombstones behind.

/// What the table stores for one live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub size: u64,
    /// The ledger node (active line stack) the block was allocated under; see `ledger`.
    pub node: u32,
    /// The allocating thread's frame stamp at allocation time; see `ledger`.
    pub stamp: u32,
}

#[derive(Clone, Copy)]
struct Slot {
    /// 0 marks an empty slot: no allocator returns a block at address 0.
    addr: usize,
    block: Block,
}

const EMPTY: Slot = Slot { addr: 0, block: Block { size: 0, node: 0, stamp: 0 } };
const GROUP_BITS: u32 = 8;
const MIN_SLOTS: usize = 1 << 14;

pub struct BlockTable {
    slots: Vec<Slot>,
    len: usize,
}

impl Default for BlockTable {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockTable {
    pub const fn new() -> Self {
        BlockTable { slots: Vec::new(), len: 0 }
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
    fn home(addr: usize, mask: usize) -> usize {
        let page = (addr >> 12) as u64;
        let group = (page.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize;
        ((group << GROUP_BITS) | ((addr >> 4) & ((1 << GROUP_BITS) - 1))) & mask
    }

    /// Inserts or replaces; returns the block previously recorded at `addr`, if any (a free the
    /// hooks never saw, such as one made while the interpreter had swapped allocators).
    #[inline]
    pub fn insert(&mut self, addr: usize, block: Block) -> Option<Block> {
        debug_assert!(addr != 0);
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = Self::home(addr, mask);
        loop {
            let slot = &mut self.slots[i];
            if slot.addr == 0 {
                *slot = Slot { addr, block };
                self.len += 1;
                return None;
            }
            if slot.addr == addr {
                return Some(std::mem::replace(&mut slot.block, block));
            }
            i = (i + 1) & mask;
        }
    }

    #[inline]
    pub fn get_mut(&mut self, addr: usize) -> Option<&mut Block> {
        let i = self.find(addr)?;
        Some(&mut self.slots[i].block)
    }

    #[inline]
    fn find(&self, addr: usize) -> Option<usize> {
        if self.slots.is_empty() || addr == 0 {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = Self::home(addr, mask);
        loop {
            let slot = &self.slots[i];
            if slot.addr == addr {
                return Some(i);
            }
            if slot.addr == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    #[inline]
    pub fn remove(&mut self, addr: usize) -> Option<Block> {
        let mut hole = self.find(addr)?;
        let removed = self.slots[hole].block;
        let mask = self.slots.len() - 1;
        // Backward-shift deletion: pull later members of the probe run into the hole whenever
        // their home does not lie cyclically in (hole, j].
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let addr_j = self.slots[j].addr;
            if addr_j == 0 {
                break;
            }
            let home = Self::home(addr_j, mask);
            let home_in_gap = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !home_in_gap {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
        Some(removed)
    }

    fn grow(&mut self) {
        let new_len = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; new_len]);
        let mask = new_len - 1;
        for slot in old.into_iter().filter(|s| s.addr != 0) {
            let mut i = Self::home(slot.addr, mask);
            while self.slots[i].addr != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
        }
    }

    /// Live blocks, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Block)> {
        self.slots.iter().filter(|s| s.addr != 0).map(|s| (s.addr, &s.block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn block(size: u64) -> Block {
        Block { size, node: size as u32, stamp: 1 }
    }

    /// A deterministic xorshift so the test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn agrees_with_a_hashmap_under_random_churn() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut table = BlockTable::new();
        let mut model: HashMap<usize, Block> = HashMap::new();
        let mut live: Vec<usize> = Vec::new();
        for step in 0..400_000u64 {
            let r = rng.next();
            if r % 3 != 0 || live.is_empty() {
                // Mix dense pymalloc-like runs, 1 MiB-aligned mmaps and scattered addresses.
                let addr = match r % 7 {
                    0 => ((r >> 8) as usize & 0xfff) << 20,
                    1 | 2 => 0x7f00_0000_0000 + (((r >> 8) as usize & 0xffff) << 4),
                    _ => 0x5500_0000_0000 + (((r >> 8) as usize & 0xff_ffff) << 4),
                };
                if addr == 0 {
                    continue;
                }
                let b = block(step);
                let old = table.insert(addr, b);
                assert_eq!(old, model.insert(addr, b));
                if old.is_none() {
                    live.push(addr);
                }
            } else {
                let k = (r >> 16) as usize % live.len();
                let addr = live.swap_remove(k);
                assert_eq!(table.remove(addr), model.remove(&addr));
                assert_eq!(table.remove(addr), None);
            }
            assert_eq!(table.len(), model.len());
        }
        for (addr, b) in &model {
            assert_eq!(table.get_mut(*addr).copied(), Some(*b));
        }
        assert_eq!(table.iter().count(), model.len());
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
}
