//! The books: the ledger fed by the records the profiled process streams (docs/design.md, "The
//! books live in the sink"). Each producing thread gets the counters the ledger keeps per thread
//! (`Hot`), and the state that spans records: its open quiet sections, a realloc in flight, and
//! the saved frames of suspended generators by the number the producer gave them.

use crate::causes::OsReading;
use crate::ledger::{FuncId, FuncInfo, FxHasher, Hot, Ledger, NodeId, SavedFrame};
use crate::record::{HotRecord, Reading, Record, Request};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

#[derive(Default)]
struct ThreadBooks {
    hot: Hot,
    /// The owners to restore as quiet sections end, innermost last.
    quiet: Vec<NodeId>,
    /// The size of the block a realloc in flight took out of the table, if it was tracked.
    realloc_taken: Option<u64>,
}

pub struct Books {
    pub ledger: Ledger,
    threads: Vec<ThreadBooks>,
    generators: HashMap<u64, SavedFrame, BuildHasherDefault<FxHasher>>,
    /// The status the program reported as it ended normally.
    pub exit_status: Option<i32>,
}

impl Default for Books {
    fn default() -> Self {
        Self::new()
    }
}

impl Books {
    pub const fn new() -> Self {
        Books {
            ledger: Ledger::new(),
            threads: Vec::new(),
            generators: HashMap::with_hasher(BuildHasherDefault::new()),
            exit_status: None,
        }
    }

    fn thread(threads: &mut Vec<ThreadBooks>, thread: u32) -> &mut ThreadBooks {
        let t = thread as usize;
        if threads.len() <= t {
            threads.resize_with(t + 1, ThreadBooks::default);
        }
        &mut threads[t]
    }

    /// A reading as the ledger takes it, with glibc's figures carried forward where the process
    /// did not ask for them.
    fn os(ledger: &mut Ledger, r: Reading) -> OsReading {
        let asked = r.malloc_asked.then_some((r.os.malloc_in_use, r.os.malloc_mmapped, r.os.malloc_arena));
        let (malloc_in_use, malloc_mmapped, malloc_arena) = ledger.glibc_figures(r.os.profiler_bytes, asked);
        OsReading { malloc_in_use, malloc_mmapped, malloc_arena, ..r.os }
    }

    /// Applies the record in `words`, one whole record as the ring holds it (the sink's loop):
    /// allocations, frees and plain line events go straight to the ledger, the rest through
    /// `Record::decode`. A request is handed back as by `apply`; words that are no record are
    /// skipped.
    #[inline]
    pub fn apply_words(&mut self, words: &[u64]) -> Option<(u64, Request)> {
        if let Some((thread, record)) = HotRecord::decode(words) {
            Self::hot_record(&mut self.ledger, &mut Self::thread(&mut self.threads, thread).hot, record);
            return None;
        }
        let (thread, record) = Record::decode(words)?;
        self.apply(thread, record)
    }

    #[inline(always)]
    fn hot_record(ledger: &mut Ledger, hot: &mut Hot, record: HotRecord) {
        match record {
            HotRecord::Alloc { addr, size, raw } => ledger.on_alloc(hot, addr as usize, size, raw),
            HotRecord::Free { addr, raw } => {
                ledger.on_free(hot, addr as usize, raw);
            }
            HotRecord::Line { code, lineno } => ledger.line_event(hot, code as usize, lineno, |_, _| None),
        }
    }

    /// Applies one record from `thread`. A request is handed back for the caller to answer: the
    /// books are then up to date with everything sent before it.
    pub fn apply(&mut self, thread: u32, record: Record) -> Option<(u64, Request)> {
        let l = &mut self.ledger;
        let tb = Self::thread(&mut self.threads, thread);
        let hot = &mut tb.hot;
        match record {
            Record::Alloc { addr, size, raw } => Self::hot_record(l, hot, HotRecord::Alloc { addr, size, raw }),
            Record::Free { addr, raw } => Self::hot_record(l, hot, HotRecord::Free { addr, raw }),
            Record::ReallocBegin { old, raw } => tb.realloc_taken = l.begin_realloc(hot, old as usize, raw),
            Record::ReallocEnd { old, new, size, raw } => {
                let taken = tb.realloc_taken.take();
                l.end_realloc(hot, old as usize, new as usize, size, raw, taken);
            }
            Record::Arena { size, mapped, .. } => l.on_arena(hot, size, mapped),
            Record::Disown { addr } => l.mark_profiler(hot, addr as usize),
            Record::QuietBegin => tb.quiet.push(l.begin_profiler_work(hot)),
            Record::QuietEnd => {
                if let Some(owner) = tb.quiet.pop() {
                    l.end_profiler_work(hot, owner);
                }
            }
            Record::GcStart => l.gc_start(hot),
            Record::GcStop => l.gc_stop(hot),
            Record::Register { code, first_lineno, name, module, filename, source } => {
                l.register_function(FuncInfo { name, module, filename, first_lineno, source, code: code as usize });
            }
            // A function the books never heard of (a record lost to a dead producer) is skipped:
            // the books never index past what they hold.
            Record::Enter { func, .. } | Record::GenNew { func, .. } if func as usize >= l.funcs().len() => {}
            Record::Enter { func, reading } => {
                let os = reading.map(|r| Self::os(l, r));
                l.enter_maybe_read(hot, FuncId(func), os);
            }
            Record::Leave { reading } => {
                let os = reading.map(|r| Self::os(l, r));
                l.leave_maybe_read(hot, os);
            }
            Record::GenNew { gen, func } => {
                self.generators.insert(gen, SavedFrame::unstarted(FuncId(func)));
            }
            Record::Resume { gen, reading } => {
                let os = Self::os(l, reading);
                if let Some(saved) = self.generators.remove(&gen) {
                    l.resume(hot, saved, os);
                }
            }
            Record::Suspend { gen, reading } => {
                let os = Self::os(l, reading);
                if let Some(saved) = l.suspend(hot, os) {
                    self.generators.insert(gen, saved);
                }
            }
            Record::GenDrop { gen } => {
                self.generators.remove(&gen);
            }
            Record::Line { code, lineno, reading: None } => Self::hot_record(l, hot, HotRecord::Line { code, lineno }),
            Record::Line { code, lineno, reading: Some(reading) } => {
                let os = Self::os(l, reading);
                l.line_event(hot, code as usize, lineno, |_, _| Some(os));
            }
            Record::Return { code, reading } => {
                let os = reading.map(|r| Self::os(l, r));
                l.on_return(hot, code as usize, |_, _| os);
            }
            Record::Request { token, request } => return Some((token, request)),
            Record::Exit { status } => self.exit_status = Some(status),
        }
        None
    }

    /// Each thread's innermost open profiled frame: (function, numbered as the records number
    /// them, line running, 0 before the first).
    pub fn open_frames(&self) -> Vec<(u32, u32)> {
        self.threads.iter().flat_map(|t| self.ledger.open_frames(&t.hot)).map(|(f, lineno)| (f.0, lineno)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(rss: u64) -> Reading {
        Reading { os: OsReading::from(rss), malloc_asked: false }
    }

    fn register(books: &mut Books, code: u64) {
        let record = Record::Register {
            code,
            first_lineno: 10,
            name: "f".into(),
            module: "m".into(),
            filename: "f.py".into(),
            source: vec![],
        };
        assert_eq!(books.apply(0, record), None);
    }

    #[test]
    fn records_drive_the_ledger_per_thread() {
        let mut books = Books::new();
        register(&mut books, 0xc0de);
        for (thread, size) in [(1, 100), (2, 1000)] {
            books.apply(thread, Record::Enter { func: 0, reading: Some(reading(1 << 20)) });
            books.apply(thread, Record::Line { code: 0xc0de, lineno: 11, reading: None });
            books.apply(thread, Record::Alloc { addr: 0x1000 * u64::from(thread), size, raw: false });
        }
        // Thread 2 frees thread 1's block: the free is charged where it happens.
        books.apply(2, Record::Free { addr: 0x1000, raw: false });
        for thread in [1, 2] {
            books.apply(thread, Record::Leave { reading: Some(reading(1 << 20)) });
        }
        let (lines, total) = books.ledger.function_stats(FuncId(0));
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].1.allocated_bytes, lines[0].1.freed_bytes), (1100, 100));
        assert_eq!(total.hits, 2);
        assert_eq!(books.ledger.process.live_bytes, 1000);
    }

    #[test]
    fn a_generator_frame_is_saved_between_steps_under_its_number() {
        let mut books = Books::new();
        register(&mut books, 0xc0de);
        books.apply(1, Record::GenNew { gen: 7, func: 0 });
        books.apply(1, Record::Resume { gen: 7, reading: reading(100) });
        books.apply(1, Record::Line { code: 0xc0de, lineno: 12, reading: None });
        books.apply(1, Record::Suspend { gen: 7, reading: reading(100) });
        assert_eq!(books.open_frames(), vec![]);
        books.apply(1, Record::Resume { gen: 7, reading: reading(100) });
        assert_eq!(books.open_frames(), vec![(0, 12)], "resumed on the line it yielded from");
        books.apply(1, Record::Alloc { addr: 0x10, size: 64, raw: false });
        books.apply(1, Record::Leave { reading: Some(reading(100)) });
        books.apply(1, Record::GenDrop { gen: 7 });
        let (lines, total) = books.ledger.function_stats(FuncId(0));
        assert_eq!(lines[0].1.allocated_bytes, 64);
        assert_eq!(total.hits, 2, "two steps of one call");
        assert_eq!(books.ledger.funcs()[0].calls, 1);
        books.apply(1, Record::Resume { gen: 7, reading: reading(100) });
        assert_eq!(books.open_frames(), vec![], "a dropped frame does not come back");
    }

    #[test]
    fn quiet_sections_nest_and_a_failed_realloc_keeps_the_block() {
        let mut books = Books::new();
        books.apply(1, Record::Alloc { addr: 0x10, size: 64, raw: true });
        books.apply(1, Record::QuietBegin);
        books.apply(1, Record::QuietBegin);
        books.apply(1, Record::Alloc { addr: 0x20, size: 64, raw: true });
        books.apply(1, Record::QuietEnd);
        books.apply(1, Record::Alloc { addr: 0x30, size: 64, raw: true });
        books.apply(1, Record::QuietEnd);
        books.apply(1, Record::QuietEnd);
        assert_eq!(books.ledger.process.allocated_bytes, 64, "quiet blocks are not counted");
        books.apply(1, Record::ReallocBegin { old: 0x10, raw: true });
        books.apply(1, Record::ReallocEnd { old: 0x10, new: 0, size: 4096, raw: true });
        assert_eq!(books.ledger.process.live_bytes, 64);
        books.apply(1, Record::ReallocBegin { old: 0x10, raw: true });
        books.apply(1, Record::ReallocEnd { old: 0x10, new: 0x40, size: 4096, raw: true });
        assert_eq!(books.ledger.process.live_bytes, 4096);
    }

    #[test]
    fn glibc_figures_the_process_did_not_ask_for_are_carried_forward() {
        let mut books = Books::new();
        let asked = Reading {
            os: OsReading { malloc_in_use: 5000, malloc_mmapped: 7, malloc_arena: 8000, ..OsReading::from(1 << 20) },
            malloc_asked: true,
        };
        assert_eq!(Books::os(&mut books.ledger, asked).malloc_in_use, 5000);
        books.apply(1, Record::Alloc { addr: 0x10, size: 600, raw: true });
        let carried = Books::os(&mut books.ledger, reading(1 << 20));
        assert_eq!((carried.malloc_in_use, carried.malloc_mmapped, carried.malloc_arena), (5600, 7, 8000));
    }

    #[test]
    fn a_call_of_a_function_never_registered_is_skipped() {
        let mut books = Books::new();
        books.apply(1, Record::Enter { func: 0, reading: Some(reading(1)) });
        books.apply(1, Record::GenNew { gen: 1, func: 3 });
        books.apply(1, Record::Resume { gen: 1, reading: reading(1) });
        books.apply(1, Record::Leave { reading: Some(reading(1)) });
        assert_eq!(books.ledger.funcs().len(), 0);
        assert_eq!(books.open_frames(), vec![]);
    }

    /// A thread's counters start with no activation: a thread that allocates before any profiled
    /// call must not hold or release activation 0, which another thread's frame may come to use
    /// (its block freed before its call returned would then be counted as retained).
    #[test]
    fn a_thread_that_never_ran_a_profiled_call_holds_no_activation() {
        let mut books = Books::new();
        register(&mut books, 0xc0de);
        books.apply(2, Record::Alloc { addr: 0x9000, size: 10, raw: false });
        books.apply(1, Record::Enter { func: 0, reading: Some(reading(1)) });
        books.apply(1, Record::Line { code: 0xc0de, lineno: 11, reading: None });
        books.apply(2, Record::Free { addr: 0x9000, raw: false });
        books.apply(1, Record::Alloc { addr: 0x1000, size: 100, raw: false });
        books.apply(3, Record::Enter { func: 0, reading: Some(reading(1)) });
        books.apply(3, Record::Leave { reading: Some(reading(1)) });
        books.apply(1, Record::Free { addr: 0x1000, raw: false });
        books.apply(1, Record::Leave { reading: Some(reading(1)) });
        let (lines, _) = books.ledger.function_stats(FuncId(0));
        assert_eq!((lines[0].0, lines[0].1.allocated_bytes, lines[0].1.retained_bytes()), (11, 100, 0));
    }

    #[test]
    fn requests_are_handed_back_in_order() {
        let mut books = Books::new();
        assert_eq!(
            books.apply(3, Record::Request { token: 9, request: Request::Counters }),
            Some((9, Request::Counters))
        );
        books.apply(3, Record::Exit { status: 4 });
        assert_eq!(books.exit_status, Some(4));
    }

    fn record_strategy() -> impl proptest::strategy::Strategy<Value = (u32, Record)> {
        use proptest::prelude::*;
        let addr = (1u64..24).prop_map(|slot| slot * 16);
        let record = prop_oneof![
            Just(Record::Enter { func: 0, reading: Some(reading(1 << 20)) }),
            (11u32..14).prop_map(|lineno| Record::Line { code: 0xc0de, lineno, reading: None }),
            (11u32..14).prop_map(|lineno| Record::Line { code: 0xc0de, lineno, reading: Some(reading(3 << 20)) }),
            Just(Record::Line { code: 0xbad, lineno: 11, reading: None }),
            (addr.clone(), prop_oneof![1u64..512, 512u64..300_000], any::<bool>())
                .prop_map(|(addr, size, raw)| Record::Alloc { addr, size, raw }),
            (addr, any::<bool>()).prop_map(|(addr, raw)| Record::Free { addr, raw }),
            Just(Record::Leave { reading: Some(reading(2 << 20)) }),
            Just(Record::GcStart),
            Just(Record::GcStop),
        ];
        (1u32..4, record)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// The sink reads records from the ring's words, allocations, frees and plain line
        /// events in place: the books come out as from the same records never encoded, whatever
        /// the mix and the threads.
        #[test]
        fn records_read_from_their_words_keep_the_books_as_the_records_themselves(
            records in proptest::collection::vec(record_strategy(), 0..200)
        ) {
            let (mut from_words, mut direct) = (Books::new(), Books::new());
            for books in [&mut from_words, &mut direct] {
                register(books, 0xc0de);
                // Small requests through MEM and OBJ are pymalloc's: the raw flag then counts.
                books.ledger.glibc_serves_above = 512;
            }
            for (thread, record) in records {
                proptest::prop_assert_eq!(from_words.apply_words(record.encode(thread).as_slice()), None);
                direct.apply(thread, record);
            }
            let json = |books: &Books| crate::report::Report::from_ledger_where(&books.ledger, "", None, 0, |_| true).to_json();
            proptest::prop_assert_eq!(json(&from_words), json(&direct));
            proptest::prop_assert_eq!(from_words.ledger.process, direct.ledger.process);
        }
    }

    #[test]
    fn a_record_of_the_wrong_length_is_not_read_in_place() {
        let words = Record::Alloc { addr: 0x10, size: 64, raw: true }.encode(5);
        assert_eq!(
            HotRecord::decode(words.as_slice()),
            Some((5, HotRecord::Alloc { addr: 0x10, size: 64, raw: true }))
        );
        assert_eq!(HotRecord::decode(&words.as_slice()[..2]), None);
        let free = Record::Free { addr: 0x10, raw: false }.encode(5);
        let mut longer = free.as_slice().to_vec();
        longer.push(0);
        assert_eq!(HotRecord::decode(&longer), None);
        let plain_line = Record::Line { code: 0xc0de, lineno: 12, reading: None }.encode(5);
        assert_eq!(HotRecord::decode(plain_line.as_slice()), Some((5, HotRecord::Line { code: 0xc0de, lineno: 12 })));
        let line_with_reading = Record::Line { code: 0xc0de, lineno: 12, reading: Some(reading(1 << 20)) }.encode(5);
        assert_eq!(HotRecord::decode(line_with_reading.as_slice()), None, "decoded whole, with its reading");
        assert_eq!(Record::decode(&longer), None);
    }
}
