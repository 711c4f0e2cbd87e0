//! A fixed, allocation-heavy stream of records fed to the books, for counting the instructions
//! the sink spends per record (`valgrind --tool=callgrind target/release/examples/feed`): the
//! shape of benches/run.py's alloc-heavy workload (`d[i] = str(i)` in a profiled loop, a
//! temporary int made and freed per step, the dict's table reallocated as it grows, everything
//! freed at the end), the same on a thread with no profiled frame, and as many calls of a tiny
//! profiled function, each resuming a profiled generator.
//!
//! Usage: feed [STEPS] (default 300,000). Prints the process figures, so that nothing is
//! optimised away and two builds can be checked to agree.

use memsleuth_core::books::Books;
use memsleuth_core::causes::OsReading;
use memsleuth_core::record::{Reading, Record};

const CODE: u64 = 0xc0de;
const SMALL: u64 = 0x5a11;
const GEN: u64 = 0x6e;

fn reading() -> Reading {
    Reading { os: OsReading::from(64 << 20), malloc_asked: false }
}

/// `steps` iterations of the loop on `thread`, inside a profiled call when `profiled`.
fn run(books: &mut Books, thread: u32, steps: u64, profiled: bool, base: u64) {
    if profiled {
        books.apply(thread, Record::Enter { func: 0, reading: Some(reading()) });
        books.apply(thread, Record::Line { code: CODE, lineno: 2, reading: None });
    }
    let (mut next, mut table, mut table_size) = (base, base - 0x100_0000, 64u64);
    books.apply(thread, Record::Alloc { addr: table, size: table_size, raw: false });
    let mut strings = Vec::with_capacity(steps as usize);
    for i in 0..steps {
        if profiled {
            books.apply(thread, Record::Line { code: CODE, lineno: 3, reading: None });
        }
        let temporary = next;
        next += 32;
        books.apply(thread, Record::Alloc { addr: temporary, size: 32, raw: false });
        let string = next;
        next += 64;
        books.apply(thread, Record::Alloc { addr: string, size: 49 + (i % 7), raw: false });
        strings.push(string);
        books.apply(thread, Record::Free { addr: temporary, raw: false });
        if i * 24 >= table_size {
            books.apply(thread, Record::ReallocBegin { old: table, raw: false });
            let new = table + 0x10;
            table_size *= 2;
            books.apply(thread, Record::ReallocEnd { old: table, new, size: table_size, raw: false });
            table = new;
        }
        if profiled {
            books.apply(thread, Record::Line { code: CODE, lineno: 2, reading: None });
        }
    }
    if profiled {
        books.apply(thread, Record::Line { code: CODE, lineno: 4, reading: None });
    }
    for s in strings {
        books.apply(thread, Record::Free { addr: s, raw: false });
    }
    books.apply(thread, Record::Free { addr: table, raw: false });
    if profiled {
        books.apply(thread, Record::Leave { reading: Some(reading()) });
    }
}

/// `steps` calls of a tiny profiled function (`small` in benches/run.py's small-calls: a tuple
/// made and dropped per call), each resuming a generator once, on `thread`.
fn calls(books: &mut Books, thread: u32, steps: u64, base: u64) {
    books.apply(thread, Record::GenNew { gen: 1, func: 2 });
    for i in 0..steps {
        let addr = base + 64 * (i % 1024);
        books.apply(thread, Record::Enter { func: 1, reading: Some(reading()) });
        books.apply(thread, Record::Line { code: SMALL, lineno: 11, reading: None });
        books.apply(thread, Record::Alloc { addr, size: 56, raw: false });
        books.apply(thread, Record::Return { code: SMALL, reading: None });
        books.apply(thread, Record::Leave { reading: Some(reading()) });
        books.apply(thread, Record::Resume { gen: 1, reading: reading() });
        books.apply(thread, Record::Line { code: GEN, lineno: 21 + (i % 2) as u32, reading: None });
        books.apply(thread, Record::Free { addr, raw: false });
        books.apply(thread, Record::Suspend { gen: 1, reading: reading() });
    }
    books.apply(thread, Record::GenDrop { gen: 1 });
}

fn main() {
    let steps: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(300_000);
    let mut books = Books::new();
    books.apply(
        0,
        Record::Register {
            code: CODE,
            first_lineno: 1,
            name: "work".into(),
            module: "bench".into(),
            filename: "bench.py".into(),
            source: vec![],
        },
    );
    for (code, first_lineno, name) in [(SMALL, 10, "small"), (GEN, 20, "gen")] {
        let source = vec![];
        let (module, filename) = ("bench".into(), "bench.py".into());
        books.apply(0, Record::Register { code, first_lineno, name: name.into(), module, filename, source });
    }
    run(&mut books, 1, steps, true, 0x7f00_0000_0000);
    run(&mut books, 2, steps, false, 0x7e00_0000_0000);
    calls(&mut books, 3, steps, 0x7d00_0000_0000);
    let p = books.ledger.process;
    println!(
        "allocated {} freed {} live {} peak {} untracked frees {}",
        p.allocated_bytes, p.freed_bytes, p.live_bytes, p.tracked_peak_bytes, p.untracked_frees
    );
    let calls: Vec<u64> = books.ledger.funcs().iter().map(|f| f.calls).collect();
    println!("calls by function {calls:?}");
}
