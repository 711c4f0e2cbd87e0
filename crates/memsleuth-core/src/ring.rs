//! The ring the profiled process's threads append records to and the sink drains
//! (docs/design.md, "The books live in the sink"). It lives in memory shared by both processes
//! (or, with the sink in a thread, in one): control words, then a power-of-two run of data
//! words.
//!
//! Many producers, one consumer. A producer reserves space by moving `head` with a
//! compare-and-swap, writes the record's payload, then its header last, with release ordering:
//! the consumer, which reads the header with acquire ordering, sees either nothing (a zero
//! header) or the whole record. The consumer zeroes what it has read before it moves `tail`
//! past it, so reserved space always reads as unwritten until its header lands. A record never
//! wraps: when it would, the rest of the data words is filled with one padding header first.
//!
//! A producer that dies between reserving and writing its header leaves a zero header: the
//! consumer stops there, and everything written before it is still read.

use crate::record::header_words;
use std::sync::atomic::{AtomicU64, Ordering};

/// Control words before the data: `head` and `tail` a cache line apart, so producers and the
/// consumer do not write the same line.
pub const CONTROL_WORDS: usize = 16;
const HEAD: usize = 0;
const TAIL: usize = 8;
/// The token of the latest request the consumer answered (written by the consumer only).
const ANSWERED: usize = 12;

/// The padding header's kind: the rest of the data words are unused; its length is in the
/// header's top 32 bits.
const PAD: u64 = 0xff;

pub struct Ring<'a> {
    control: &'a [AtomicU64; CONTROL_WORDS],
    data: &'a [AtomicU64],
    mask: usize,
}

/// Words the consumer reads before it hands them back to waiting producers (a page).
const RELEASE_EVERY: u64 = 512;

/// What `push` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    Written,
    /// Not written: the ring was full and `wait` gave up (or the record is too long).
    Dropped,
}

/// What `drain` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every record written so far was read (`count` of them).
    Caught(usize),
    /// The word budget ran out with more to read.
    More(usize),
    /// A header holds no record this ring can skip (a length of zero or past the end): the
    /// memory was overwritten, and nothing past it can be read.
    Corrupt(usize),
}

impl<'a> Ring<'a> {
    /// A ring over `words`: CONTROL_WORDS control words, then the data, whose length must be a
    /// power of two. Zeroed memory is an empty ring. None if the length is not of that form.
    pub fn new(words: &'a [AtomicU64]) -> Option<Self> {
        let (control, data) = words.split_first_chunk::<CONTROL_WORDS>()?;
        if !data.len().is_power_of_two() || data.len() < 2 {
            return None;
        }
        Some(Ring { control, data, mask: data.len() - 1 })
    }

    /// Data words.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    fn head(&self) -> &AtomicU64 {
        &self.control[HEAD]
    }

    fn tail(&self) -> &AtomicU64 {
        &self.control[TAIL]
    }

    /// Reads one word of every 4 KiB page of the ring, so that its pages are mapped.
    pub fn touch_pages(&self) {
        for word in self.control.iter().chain(self.data).step_by(512) {
            word.load(Ordering::Relaxed);
        }
    }

    /// The token of the latest request answered, for the program waiting on it.
    pub fn answered(&self) -> &AtomicU64 {
        &self.control[ANSWERED]
    }

    /// Words written or reserved and not yet read.
    pub fn pending_words(&self) -> u64 {
        self.head().load(Ordering::Acquire).wrapping_sub(self.tail().load(Ordering::Acquire))
    }

    /// Appends one record (header first in `words`, its length in the header). While the ring is
    /// too full, `wait` is called with the number of tries so far; when it returns false the
    /// record is dropped and push returns `Pushed::Dropped`. Records longer than half the ring
    /// are refused.
    #[inline]
    pub fn push(&self, words: &[u64], wait: impl FnMut(u32) -> bool) -> Pushed {
        match self.reserve(words.len(), wait) {
            Some(at) => {
                self.commit(at, words);
                Pushed::Written
            }
            None => Pushed::Dropped,
        }
    }

    /// Reserves `n` contiguous words; returns where the record goes. The common case, room
    /// without wrapping and no other producer in the way, is inlined into each hook; the rest is
    /// `reserve_slowly`.
    #[inline(always)]
    fn reserve(&self, n: usize, wait: impl FnMut(u32) -> bool) -> Option<usize> {
        let capacity = self.capacity() as u64;
        let head = self.head().load(Ordering::Relaxed);
        let at = head as usize & self.mask;
        if n != 0 && n <= self.capacity() / 2 && n <= self.capacity() - at {
            let pending = head.wrapping_sub(self.tail().load(Ordering::Acquire));
            let need = n as u64;
            if pending + need <= capacity
                && self
                    .head()
                    .compare_exchange_weak(head, head.wrapping_add(need), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(at);
            }
        }
        self.reserve_slowly(n, wait)
    }

    #[cold]
    #[inline(never)]
    fn reserve_slowly(&self, n: usize, mut wait: impl FnMut(u32) -> bool) -> Option<usize> {
        if n == 0 || n > self.capacity() / 2 {
            return None;
        }
        let capacity = self.capacity() as u64;
        let mut tries = 0u32;
        loop {
            let head = self.head().load(Ordering::Relaxed);
            let at = head as usize & self.mask;
            let to_end = self.capacity() - at;
            let need = if n > to_end { to_end + n } else { n } as u64;
            let tail = self.tail().load(Ordering::Acquire);
            let pending = head.wrapping_sub(tail);
            if pending.wrapping_add(need) > capacity {
                if !wait(tries) {
                    return None;
                }
                tries = tries.saturating_add(1);
                continue;
            }
            if self
                .head()
                .compare_exchange_weak(head, head.wrapping_add(need), Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            if n > to_end {
                self.data[at].store(PAD | (to_end as u64) << 32, Ordering::Release);
                return Some(0);
            }
            return Some(at);
        }
    }

    /// Writes a record where `reserve` put it: `at + words.len()` is within the data words, and
    /// a record is never empty (`reserve` refuses one), so the `else` is never taken.
    #[inline]
    fn commit(&self, at: usize, words: &[u64]) {
        let (Some((slot, rest)), Some((header, payload))) =
            (self.data[at..at + words.len()].split_first(), words.split_first())
        else {
            return;
        };
        for (slot, word) in rest.iter().zip(payload) {
            slot.store(*word, Ordering::Relaxed);
        }
        slot.store(*header, Ordering::Release);
    }

    /// Reads records in order, handing each to `apply`, until none is written yet or about
    /// `budget` words were read; the space read is handed back to the producers every
    /// RELEASE_EVERY words, so that a producer waiting on a full ring waits for that much
    /// reading, not for the whole drain.
    pub fn drain(&self, budget: usize, buf: &mut Vec<u64>, mut apply: impl FnMut(&[u64])) -> Drained {
        self.drain_records(budget, |words| {
            buf.clear();
            buf.extend(words.iter().map(|w| w.load(Ordering::Relaxed)));
            apply(buf);
        })
    }

    /// As `drain`, appending the records' words to `out`, whole records only, in order.
    pub fn drain_into(&self, budget: usize, out: &mut Vec<u64>) -> Drained {
        self.drain_records(budget, |words| out.extend(words.iter().map(|w| w.load(Ordering::Relaxed))))
    }

    /// The reading loop of `drain`: `take` reads each record's words, which are zeroed after.
    #[inline(always)]
    fn drain_records(&self, budget: usize, mut take: impl FnMut(&[AtomicU64])) -> Drained {
        let start = self.tail().load(Ordering::Relaxed);
        let mut tail = start;
        let mut released = start;
        let mut count = 0;
        let outcome = loop {
            if tail.wrapping_sub(released) >= RELEASE_EVERY {
                // The words read were zeroed before this store: a producer that sees the new
                // tail (acquire) sees them unwritten.
                self.tail().store(tail, Ordering::Release);
                released = tail;
            }
            if tail.wrapping_sub(start) as usize >= budget {
                break Drained::More(count);
            }
            let at = tail as usize & self.mask;
            let head = self.data[at].load(Ordering::Acquire);
            if head == 0 {
                break Drained::Caught(count);
            }
            if head & 0xff == PAD {
                let len = (head >> 32) as usize;
                if len == 0 || len > self.capacity() - at {
                    break Drained::Corrupt(count);
                }
                self.data[at].store(0, Ordering::Relaxed);
                tail = tail.wrapping_add(len as u64);
                continue;
            }
            let len = header_words(head);
            if len == 0 || len > self.capacity() - at {
                break Drained::Corrupt(count);
            }
            let words = &self.data[at..at + len];
            take(words);
            // Until `tail` moves past them these words are the consumer's alone: plain stores,
            // not a locked swap per word.
            for word in words {
                word.store(0, Ordering::Relaxed);
            }
            count += 1;
            tail = tail.wrapping_add(len as u64);
        };
        self.tail().store(tail, Ordering::Release);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{header, Record};

    fn memory(data_words: usize) -> Vec<AtomicU64> {
        (0..CONTROL_WORDS + data_words).map(|_| AtomicU64::new(0)).collect()
    }

    fn record(thread: u32, n: u64) -> Record {
        Record::Alloc { addr: n, size: u64::from(thread), raw: n % 2 == 0 }
    }

    fn read_all(ring: &Ring<'_>) -> Vec<(u32, Record)> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Drained::More(_) =
            ring.drain(ring.capacity(), &mut buf, |w| out.push(Record::decode(w).expect("a record")))
        {}
        out
    }

    #[test]
    fn only_power_of_two_data_is_a_ring() {
        assert!(Ring::new(&memory(64)).is_some());
        assert!(Ring::new(&memory(48)).is_none());
        assert!(Ring::new(&memory(0)).is_none());
        assert!(Ring::new(&memory(1)).is_none());
    }

    #[test]
    fn records_of_every_length_come_out_in_order_across_many_wraparounds() {
        let mem = memory(64);
        let ring = Ring::new(&mem).unwrap();
        let mut sent = Vec::new();
        let mut received = Vec::new();
        for round in 0..500u64 {
            // Lengths 1..=11 words: the padding lands at every offset of the data.
            let record = match round % 4 {
                0 => Record::GcStart,
                1 => Record::Free { addr: round, raw: false },
                2 => record(3, round),
                _ => Record::Line { code: round, lineno: 1, reading: Some(Default::default()) },
            };
            assert_ne!(
                ring.push(record.encode(round as u32).as_slice(), |_| false),
                Pushed::Dropped,
                "room after each drain"
            );
            sent.push((round as u32, record));
            if round % 3 == 2 {
                received.extend(read_all(&ring));
            }
        }
        received.extend(read_all(&ring));
        assert_eq!(received, sent);
        assert_eq!(ring.pending_words(), 0);
    }

    #[test]
    fn a_full_ring_makes_the_producer_wait_and_drops_nothing_once_drained() {
        let mem = memory(16);
        let ring = Ring::new(&mem).unwrap();
        let words = record(1, 1).encode(1);
        for _ in 0..5 {
            assert_ne!(ring.push(words.as_slice(), |_| false), Pushed::Dropped);
        }
        let mut waits = 0;
        let pushed = ring.push(words.as_slice(), |tries| {
            waits = tries + 1;
            tries < 3
        });
        assert_eq!(pushed, Pushed::Dropped);
        assert_eq!(waits, 4, "wait is asked until it gives up");
        assert_eq!(read_all(&ring).len(), 5);
        assert_ne!(ring.push(words.as_slice(), |_| false), Pushed::Dropped);
        assert_eq!(read_all(&ring), vec![(1, record(1, 1))]);
    }

    #[test]
    fn a_long_drain_hands_back_room_as_it_reads() {
        // A producer waiting on a full ring gets room once a page of it is read, before the
        // drain ends.
        let mem = memory(4096);
        let ring = Ring::new(&mem).unwrap();
        let words = record(1, 1).encode(1);
        while ring.push(words.as_slice(), |_| false) != Pushed::Dropped {}
        let mut buf = Vec::new();
        let (mut read, mut room_at) = (0, None);
        ring.drain(usize::MAX, &mut buf, |_| {
            read += 1;
            if room_at.is_none() && ring.pending_words() + 3 <= ring.capacity() as u64 {
                room_at = Some(read);
            }
        });
        let room_at = room_at.expect("room before the drain ended");
        assert!(room_at * 3 <= 2 * RELEASE_EVERY as usize, "room after {room_at} records of {read}");
    }

    #[test]
    fn a_record_longer_than_half_the_ring_is_refused() {
        let mem = memory(16);
        let ring = Ring::new(&mem).unwrap();
        let register = Record::Register {
            code: 1,
            first_lineno: 1,
            name: "a long name".into(),
            module: "m".into(),
            filename: "f".into(),
            source: vec!["x".repeat(40)],
        };
        assert_eq!(ring.push(register.encode(0).as_slice(), |_| true), Pushed::Dropped);
    }

    #[test]
    fn a_producer_that_died_mid_record_leaves_what_came_before_it_readable() {
        let mem = memory(64);
        let ring = Ring::new(&mem).unwrap();
        ring.push(record(1, 1).encode(1).as_slice(), |_| false);
        // Reserved, payload written, header never stored: the producer died here.
        let dying = record(2, 2).encode(2);
        let at = ring.reserve(dying.as_slice().len(), |_| false).unwrap();
        ring.data[at + 1].store(dying.as_slice()[1], Ordering::Relaxed);
        // Another thread's record after it is written in full, but sits behind the gap.
        ring.push(record(3, 3).encode(3).as_slice(), |_| false);
        assert_eq!(read_all(&ring), vec![(1, record(1, 1))]);
        assert!(ring.pending_words() > 0, "the gap is still pending");
    }

    #[test]
    fn overwritten_memory_stops_the_reader() {
        let mem = memory(16);
        let ring = Ring::new(&mem).unwrap();
        ring.push(record(1, 1).encode(1).as_slice(), |_| false);
        mem[CONTROL_WORDS].store(header(1, 0, 0, 0), Ordering::Relaxed);
        let mut buf = Vec::new();
        assert_eq!(ring.drain(100, &mut buf, |_| panic!("nothing to apply")), Drained::Corrupt(0));
    }

    #[test]
    fn many_threads_append_while_one_reads() {
        const THREADS: u32 = 4;
        const EACH: u64 = 20_000;
        let mem = memory(256);
        let ring = Ring::new(&mem).unwrap();
        let mut seen = vec![0u64; THREADS as usize];
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let ring = &ring;
                s.spawn(move || {
                    for n in 0..EACH {
                        let words = record(t, n).encode(t);
                        let pushed = ring.push(words.as_slice(), |_| {
                            std::thread::yield_now();
                            true
                        });
                        assert_ne!(pushed, Pushed::Dropped);
                    }
                });
            }
            let mut buf = Vec::new();
            let mut total = 0;
            while total < u64::from(THREADS) * EACH {
                ring.drain(64, &mut buf, |w| {
                    let Some((t, Record::Alloc { addr, size, .. })) = Record::decode(w) else {
                        panic!("not an allocation")
                    };
                    assert_eq!(size, u64::from(t));
                    assert_eq!(addr, seen[t as usize], "thread {t}'s records in its order");
                    seen[t as usize] += 1;
                    total += 1;
                });
                std::thread::yield_now();
            }
        });
        assert!(seen.iter().all(|&n| n == EACH));
    }

    #[test]
    fn drained_into_a_buffer_records_stay_whole_and_in_order() {
        let mem = memory(64);
        let ring = Ring::new(&mem).unwrap();
        let mut sent = Vec::new();
        let mut out = Vec::new();
        for round in 0..100u64 {
            let record = if round % 2 == 0 { record(1, round) } else { Record::Free { addr: round, raw: true } };
            ring.push(record.encode(2).as_slice(), |_| false);
            sent.push((2, record));
            if round % 7 == 6 {
                assert!(matches!(ring.drain_into(usize::MAX, &mut out), Drained::Caught(_)));
            }
        }
        ring.drain_into(usize::MAX, &mut out);
        let mut received = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let len = header_words(out[at]);
            received.push(Record::decode(&out[at..at + len]).expect("a whole record"));
            at += len;
        }
        assert_eq!(received, sent);
        assert_eq!(ring.pending_words(), 0);
    }
}
