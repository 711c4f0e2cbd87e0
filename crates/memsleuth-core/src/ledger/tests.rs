//! Ledger behaviour without an interpreter: events are fed by hand as the hooks would.
//!
//! Each test plays one scenario: `enter`/`leave` as the `@profile` wrapper calls them, `on_line`
//! as the line tracer does, `on_alloc`/`on_free`/`on_realloc` as the allocator hooks do, one
//! `Hot` per simulated thread. Expected figures are worked out from the definitions in docs/design.md (Figures), not
//! read back from the ledger.

use crate::causes::OsReading;
use crate::ledger::*;
use crate::report::*;
use proptest::prelude::*;

// Fake code object identities.
const MAIN: usize = 0x1_0000;
const F: usize = 0x2_0000;
const G: usize = 0x3_0000;
const UNPROFILED: usize = 0x9_0000;

// Fake block addresses (distinct, 16-byte aligned like pymalloc's).
const A: usize = 0x7f00_0000_1000;
const B: usize = 0x7f00_0000_1010;
const C: usize = 0x7f00_0000_1020;
const D: usize = 0x7f00_0000_1030;
const E: usize = 0x7f00_0000_1040;
const P: usize = 0x7f00_0000_2000;
const NEVER_TRACKED: usize = 0x5500_0000_0000;

fn register(l: &mut Ledger, name: &str, code: usize, first_lineno: u32) -> FuncId {
    l.register_function(FuncInfo {
        name: name.to_string(),
        module: "mod".to_string(),
        filename: "mod.py".to_string(),
        first_lineno,
        source: (0..6).map(|i| format!("    line_{}()", first_lineno + i)).collect(),
        code,
    })
}

/// The stats of one line; panics if the line never ran.
fn line(l: &Ledger, func: FuncId, lineno: u32) -> LineStats {
    let (lines, _) = l.function_stats(func);
    lines
        .into_iter()
        .find(|(n, _)| *n == lineno)
        .map(|(_, s)| s.clone())
        .unwrap_or_else(|| panic!("line {lineno} never ran"))
}

fn totals(l: &Ledger, func: FuncId) -> LineStats {
    l.function_stats(func).1.clone()
}

fn linenos(l: &Ledger, func: FuncId) -> Vec<u32> {
    l.function_stats(func).0.into_iter().map(|(n, _)| n).collect()
}

/// The byte figures of docs/design.md (Figures) in one comparable value.
#[derive(Debug, PartialEq, Eq)]
struct Fig {
    hits: u64,
    alloc: u64,
    allocs: u64,
    freed: u64,
    frees: u64,
    net: i64,
    peak: i64,
    retained: u64,
}

fn fig(s: &LineStats) -> Fig {
    Fig {
        hits: s.hits,
        alloc: s.allocated_bytes,
        allocs: s.allocations,
        freed: s.freed_bytes,
        frees: s.frees,
        net: s.net_bytes(),
        peak: s.peak_bytes,
        retained: s.retained_bytes(),
    }
}

/// A line that ran but saw no memory event.
fn quiet(hits: u64) -> Fig {
    Fig { hits, alloc: 0, allocs: 0, freed: 0, frees: 0, net: 0, peak: 0, retained: 0 }
}

// ----- per-line basics -----

#[test]
fn per_line_allocated_freed_net_counts() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 1000);
    l.on_line(&mut h, F, 11, None);
    l.on_alloc(&mut h, A, 100, false);
    l.on_alloc(&mut h, B, 28, false);
    assert!(l.on_free(&mut h, B, false));
    l.on_line(&mut h, F, 12, None);
    assert!(l.on_free(&mut h, A, false));
    l.on_alloc(&mut h, C, 8, false);
    assert_eq!(l.leave(&mut h, 1000), Some((f, true)));

    // Only lines that ran are listed, in source order.
    assert_eq!(linenos(&l, f), vec![11, 12]);
    assert_eq!(
        fig(&line(&l, f, 11)),
        Fig { hits: 1, alloc: 128, allocs: 2, freed: 28, frees: 1, net: 100, peak: 128, retained: 0 }
    );
    // Line 12 starts at net 100 and never rises above it: peak 0 while net is -92.
    assert_eq!(
        fig(&line(&l, f, 12)),
        Fig { hits: 1, alloc: 8, allocs: 1, freed: 100, frees: 1, net: -92, peak: 0, retained: 8 }
    );
    assert_eq!(
        fig(&totals(&l, f)),
        Fig { hits: 1, alloc: 136, allocs: 3, freed: 128, frees: 2, net: 8, peak: 128, retained: 8 }
    );
    assert_eq!(l.funcs()[f.index()].calls, 1);
}

/// Whether a line event asks for a reading, which it does only when it starts a new execution.
fn asks_reading(l: &mut Ledger, h: &mut Hot, code: usize, lineno: u32) -> bool {
    let mut asked = false;
    l.line_event(h, code, lineno, |_, _| {
        asked = true;
        None
    });
    asked
}

#[test]
fn line_events_from_other_code_and_repeated_lines_are_ignored() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    // Line events before any profiled call are dropped.
    l.on_line(&mut h, F, 10, None);
    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    assert!(!asks_reading(&mut l, &mut h, F, 10));
    assert!(!asks_reading(&mut l, &mut h, UNPROFILED, 11));
    // An unprofiled callee's lines: the work stays on line 10.
    l.on_line(&mut h, UNPROFILED, 500, None);
    l.on_alloc(&mut h, A, 40, false);
    l.on_line(&mut h, UNPROFILED, 501, None);
    // Several line events for the same line are one execution (docs/design.md, Figures).
    l.on_line(&mut h, F, 10, None);
    l.on_line(&mut h, F, 10, None);
    assert!(asks_reading(&mut l, &mut h, F, 11));
    l.leave(&mut h, 0);

    assert_eq!(linenos(&l, f), vec![10, 11]);
    assert_eq!(
        fig(&line(&l, f, 10)),
        Fig { hits: 1, alloc: 40, allocs: 1, freed: 0, frees: 0, net: 40, peak: 40, retained: 40 }
    );
    assert_eq!(fig(&line(&l, f, 11)), quiet(1));
    assert!(!asks_reading(&mut l, &mut h, F, 12), "no profiled frame left");
}

#[test]
fn register_function_is_idempotent_per_code_object() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let g = register(&mut l, "g", G, 20);
    assert_ne!(f, g);
    assert_eq!(register(&mut l, "f again", F, 10), f);
    assert_eq!(l.funcs().len(), 2);
    assert_eq!(l.funcs()[f.index()].info.name, "f");
}

// ----- peak -----

#[test]
fn peak_is_the_transient_high_water_mark_max_over_executions() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 0);
    // Execution 1 of line 10: 100 + 50 live at once, then 100 freed, then 20 more.
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, A, 100, false);
    l.on_alloc(&mut h, B, 50, false);
    l.on_free(&mut h, A, false);
    l.on_alloc(&mut h, C, 20, false); // net 70, high 150
    l.on_line(&mut h, F, 11, None);
    // Execution 2: a 300-byte temporary, and B freed.
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, D, 300, false);
    l.on_free(&mut h, D, false);
    l.on_free(&mut h, B, false); // net back to 20, high 370 (70 + 300)
    l.on_line(&mut h, F, 11, None);
    // Execution 3: 10 bytes kept.
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, E, 10, false);
    l.leave(&mut h, 0);

    let s = line(&l, f, 10);
    // Per execution: 150, 300, 10. Peak is their max, not their sum, and never the running net.
    assert_eq!(fig(&s), Fig { hits: 3, alloc: 480, allocs: 5, freed: 450, frees: 3, net: 30, peak: 300, retained: 30 });
    assert_eq!(fig(&line(&l, f, 11)), quiet(2));
    // The call rose from 0 to 370 at most.
    assert_eq!(totals(&l, f).peak_bytes, 370);
}

#[test]
fn peak_is_measured_from_the_start_of_each_execution() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    // Some program memory before the call: the thread's net does not start at 0.
    l.on_alloc(&mut h, P, 5000, false);
    l.enter(&mut h, f, 0);
    for (i, addr) in [A, B, C].into_iter().enumerate() {
        l.on_line(&mut h, F, 10, None);
        l.on_alloc(&mut h, addr, 100, false); // kept: net grows 100 per iteration
        l.on_line(&mut h, F, 11, None);
        assert_eq!(line(&l, f, 10).peak_bytes, 100, "iteration {i}");
    }
    l.leave(&mut h, 0);

    assert_eq!(
        fig(&line(&l, f, 10)),
        Fig { hits: 3, alloc: 300, allocs: 3, freed: 0, frees: 0, net: 300, peak: 100, retained: 300 }
    );
    assert_eq!(totals(&l, f).peak_bytes, 300);
}

#[test]
fn peak_is_never_negative_when_a_line_only_frees() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    l.on_alloc(&mut h, A, 4096, false); // a long-lived cache, allocated outside any profiled line
    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.on_free(&mut h, A, false);
    l.leave(&mut h, 0);

    assert_eq!(
        fig(&line(&l, f, 10)),
        Fig { hits: 1, alloc: 0, allocs: 0, freed: 4096, frees: 1, net: -4096, peak: 0, retained: 0 }
    );
    assert_eq!(totals(&l, f).peak_bytes, 0);
}

// ----- nested profiled calls -----

#[test]
fn nested_profiled_call_is_inclusive_and_peaks_fold_outwards() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let g = register(&mut l, "g", G, 20);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, A, 30, false);
    l.enter(&mut h, g, 0); // line 10 calls g
    assert!(l.is_active(&h, f) && l.is_active(&h, g));
    l.on_line(&mut h, G, 20, None);
    l.on_alloc(&mut h, B, 100, false);
    l.on_free(&mut h, B, false);
    l.on_line(&mut h, G, 21, None);
    l.on_alloc(&mut h, C, 5, false);
    assert_eq!(l.leave(&mut h, 0), Some((g, true)));
    assert!(!l.is_active(&h, g));
    l.on_line(&mut h, F, 11, None);
    l.leave(&mut h, 0);

    assert_eq!(
        fig(&line(&l, g, 20)),
        Fig { hits: 1, alloc: 100, allocs: 1, freed: 100, frees: 1, net: 0, peak: 100, retained: 0 }
    );
    assert_eq!(
        fig(&line(&l, g, 21)),
        Fig { hits: 1, alloc: 5, allocs: 1, freed: 0, frees: 0, net: 5, peak: 5, retained: 5 }
    );
    assert_eq!(
        fig(&totals(&l, g)),
        Fig { hits: 1, alloc: 105, allocs: 2, freed: 100, frees: 1, net: 5, peak: 100, retained: 5 }
    );
    // Line 10 was active through g's whole call: every event of g, once, plus its own 30.
    // Its peak is 30 (own) + 100 (g's temporary).
    assert_eq!(
        fig(&line(&l, f, 10)),
        Fig { hits: 1, alloc: 135, allocs: 3, freed: 100, frees: 1, net: 35, peak: 130, retained: 35 }
    );
    assert_eq!(fig(&line(&l, f, 11)), quiet(1));
    assert_eq!(
        fig(&totals(&l, f)),
        Fig { hits: 1, alloc: 135, allocs: 3, freed: 100, frees: 1, net: 35, peak: 130, retained: 35 }
    );
}

// ----- recursion -----

/// f(n): line 2 `x = alloc(10); if n: f(n - 1)`, line 3 `tmp = alloc(1); del tmp` or a free.
#[test]
fn recursion_charges_each_event_once_per_line_and_counts_every_hit() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 1);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 1000); // f(2)
    l.on_line(&mut h, F, 2, None);
    l.on_alloc(&mut h, A, 10, false);
    l.enter(&mut h, f, 1100); // f(1)
    l.on_line(&mut h, F, 2, None);
    l.on_alloc(&mut h, B, 10, false);
    l.enter(&mut h, f, 1200); // f(0)
    l.on_line(&mut h, F, 2, None);
    l.on_alloc(&mut h, C, 10, false);
    l.on_line(&mut h, F, 3, Some(OsReading::from(1300_u64)));
    l.on_alloc(&mut h, D, 1, false);
    l.on_free(&mut h, D, false);
    assert_eq!(l.leave(&mut h, 1400), Some((f, false)), "f(0) returns inside f(1)");
    l.on_line(&mut h, F, 3, Some(OsReading::from(1500_u64))); // f(1), line 3: frees f(0)'s block
    l.on_free(&mut h, C, false);
    assert_eq!(l.leave(&mut h, 1600), Some((f, false)), "f(1) returns inside f(2)");
    l.on_line(&mut h, F, 3, Some(OsReading::from(1700_u64))); // f(2), line 3
    assert_eq!(l.leave(&mut h, 1700), Some((f, true)), "the outermost call returns");

    assert_eq!(l.funcs()[f.index()].calls, 3);
    // Line 2 was active in three frames at once; every byte counts once. Of its 31 bytes, C and
    // D were freed before the outermost call returned; A and B were not.
    let s2 = line(&l, f, 2);
    assert_eq!(fig(&s2), Fig { hits: 3, alloc: 31, allocs: 4, freed: 11, frees: 2, net: 20, peak: 31, retained: 20 });
    // Line 3 ran three times, never nested in itself, so each execution is measured.
    let s3 = line(&l, f, 3);
    assert_eq!(fig(&s3), Fig { hits: 3, alloc: 1, allocs: 1, freed: 11, frees: 2, net: -10, peak: 1, retained: 0 });
    // RSS of line 2 is measured over the outermost execution only: 1000 -> 1700.
    assert_eq!(s2.rss_delta, 700);
    // Line 3: f(0) 1300 -> 1400, f(1) 1500 -> 1600, f(2) 1700 -> 1700.
    assert_eq!(s3.rss_delta, 200);
    assert_eq!(s3.rss_after, Some(1700));
    // The totals measure the outermost call only.
    let t = totals(&l, f);
    assert_eq!(fig(&t), Fig { hits: 3, alloc: 31, allocs: 4, freed: 11, frees: 2, net: 20, peak: 31, retained: 20 });
    assert_eq!(t.rss_delta, 700);
}

// ----- retained -----

#[test]
fn retained_counts_blocks_still_live_after_the_call_returned() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, A, 100, false); // returned to the caller
    l.on_alloc(&mut h, B, 40, false); // a temporary
    l.on_line(&mut h, F, 11, None);
    l.on_free(&mut h, B, false);
    l.leave(&mut h, 0);

    assert_eq!(line(&l, f, 10).retained_bytes(), 100);
    assert_eq!(line(&l, f, 11).retained_bytes(), 0);
    assert_eq!(totals(&l, f).retained_bytes(), 100);
}

#[test]
fn frees_during_frame_teardown_are_not_retained_and_belong_to_the_last_line() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, A, 100, false); // a local
    l.on_line(&mut h, F, 11, None);
    l.on_alloc(&mut h, B, 50, false); // the return value
                                      // `return`: the frame's locals die after the last line event, before leave().
    l.on_free(&mut h, A, false);
    l.leave(&mut h, 0);

    assert_eq!(
        fig(&line(&l, f, 10)),
        Fig { hits: 1, alloc: 100, allocs: 1, freed: 0, frees: 0, net: 100, peak: 100, retained: 0 }
    );
    assert_eq!(
        fig(&line(&l, f, 11)),
        Fig { hits: 1, alloc: 50, allocs: 1, freed: 100, frees: 1, net: -50, peak: 50, retained: 50 }
    );
    assert_eq!(totals(&l, f).retained_bytes(), 50);
}

#[test]
fn frees_after_the_return_event_are_the_teardowns_not_the_last_lines() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    for _ in 0..2 {
        l.enter(&mut h, f, 1000);
        l.on_line(&mut h, F, 10, None);
        l.on_alloc(&mut h, A, 100, false); // a local
        l.on_alloc(&mut h, B, 50, false); // another
        l.on_line(&mut h, F, 11, None);
        l.on_free(&mut h, B, false); // `del b`, the last line
        l.on_return(&mut h, F, |_, _| Some(OsReading::from(1100_u64)));
        l.on_return(&mut h, F, |_, _| panic!("a second return event changes nothing"));
        l.on_free(&mut h, A, false); // the frame's teardown releases `a`
        l.leave(&mut h, 1000);
    }

    assert_eq!(
        fig(&line(&l, f, 11)),
        Fig { hits: 2, alloc: 0, allocs: 0, freed: 100, frees: 2, net: -100, peak: 0, retained: 0 }
    );
    let teardown = l.teardown_stats(f).expect("two returns");
    assert_eq!(
        fig(teardown),
        Fig { hits: 2, alloc: 0, allocs: 0, freed: 200, frees: 2, net: -200, peak: 0, retained: 0 }
    );
    // The line's RSS change ends at the return; the teardown's runs to the end of the call.
    assert_eq!((line(&l, f, 11).rss_delta, teardown.rss_delta), (200, -200));
    assert_eq!(totals(&l, f).freed_bytes, 300);
    assert_eq!(linenos(&l, f), vec![10, 11]);
    // A function whose return was never seen has no teardown row.
    let g = register(&mut l, "g", G, 20);
    l.enter(&mut h, g, 0);
    l.leave(&mut h, 0);
    assert!(l.teardown_stats(g).is_none());
}

/// main: line 1 `a = f()`, line 2 `b = f()` (f frees the previous result), line 3 `del b`.
/// f: line 10 `new = alloc(100)`, line 11 `del previous`.
#[test]
fn retained_nested_call_blocks_freed_after_return_and_summed_over_calls() {
    let mut l = Ledger::new();
    let main = register(&mut l, "main", MAIN, 1);
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    l.enter(&mut h, main, 0);
    l.on_line(&mut h, MAIN, 1, None);
    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, A, 100, false);
    l.leave(&mut h, 0);
    l.on_line(&mut h, MAIN, 2, None);
    l.enter(&mut h, f, 0); // a new call of f at the same depth
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, B, 100, false);
    l.on_line(&mut h, F, 11, None);
    l.on_free(&mut h, A, false); // the first call's block, long after that call returned
    l.leave(&mut h, 0);
    l.on_line(&mut h, MAIN, 3, None);
    l.on_free(&mut h, B, false);
    l.leave(&mut h, 0);

    // Both of line 10's blocks outlived the call that made them: 100 + 100.
    assert_eq!(
        fig(&line(&l, f, 10)),
        Fig { hits: 2, alloc: 200, allocs: 2, freed: 0, frees: 0, net: 200, peak: 100, retained: 200 }
    );
    assert_eq!(
        fig(&line(&l, f, 11)),
        Fig { hits: 1, alloc: 0, allocs: 0, freed: 100, frees: 1, net: -100, peak: 0, retained: 0 }
    );
    assert_eq!(
        fig(&totals(&l, f)),
        Fig { hits: 2, alloc: 200, allocs: 2, freed: 100, frees: 1, net: 100, peak: 100, retained: 200 }
    );
    // For main both blocks died before main returned.
    assert_eq!(
        fig(&line(&l, main, 1)),
        Fig { hits: 1, alloc: 100, allocs: 1, freed: 0, frees: 0, net: 100, peak: 100, retained: 0 }
    );
    assert_eq!(
        fig(&line(&l, main, 2)),
        Fig { hits: 1, alloc: 100, allocs: 1, freed: 100, frees: 1, net: 0, peak: 100, retained: 0 }
    );
    assert_eq!(
        fig(&line(&l, main, 3)),
        Fig { hits: 1, alloc: 0, allocs: 0, freed: 100, frees: 1, net: -100, peak: 0, retained: 0 }
    );
    assert_eq!(totals(&l, main).retained_bytes(), 0);
}

#[test]
fn block_freed_by_the_caller_after_return_stays_retained() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, A, 64, false);
    l.leave(&mut h, 0);
    l.on_free(&mut h, A, false); // unprofiled caller drops it
    l.enter(&mut h, f, 0); // and calls again: same depth, a newer frame
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, B, 64, false);
    l.on_free(&mut h, B, false);
    l.leave(&mut h, 0);

    assert_eq!(
        fig(&line(&l, f, 10)),
        Fig { hits: 2, alloc: 128, allocs: 2, freed: 64, frees: 1, net: 64, peak: 64, retained: 64 }
    );
    assert_eq!(l.process.freed_bytes, 128);
    assert_eq!(l.process.live_bytes, 0);
}

// ----- realloc, untracked frees, profiler blocks -----

#[test]
fn births_and_activations_are_recycled_once_their_blocks_are_freed() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let g = register(&mut l, "g", G, 20);
    let mut h = Hot::ZERO;
    let mut retained = Vec::new();
    for call in 0..1000usize {
        l.enter(&mut h, f, 0);
        l.on_line(&mut h, F, 11, None);
        l.on_alloc(&mut h, A, 32, false);
        l.enter(&mut h, g, 0);
        l.on_line(&mut h, G, 21, None);
        let kept = 0x5600_0000_0000 + call * 16;
        l.on_alloc(&mut h, kept, 48, false);
        retained.push(kept);
        l.leave(&mut h, 0);
        l.on_line(&mut h, F, 12, None);
        assert!(l.on_free(&mut h, A, false));
        l.leave(&mut h, 0);
    }
    // Every call's activations stay alive while a block born in them does.
    let (births, acts) = l.births_and_activations_in_use();
    assert!(births >= 1000 && acts >= 2000, "{births} births, {acts} activations");
    for addr in retained {
        assert!(l.on_free(&mut h, addr, false));
    }
    // What is left: the two permanent births, and the last birth each allocating node holds
    // with its activation (g's last holds f's as its parent).
    let (births, acts) = l.births_and_activations_in_use();
    assert!(births <= 4 && acts <= 2, "{births} births, {acts} activations");
    assert_eq!(fig(&totals(&l, g)).retained, 48 * 1000);
}

#[test]
fn realloc_is_a_free_of_the_old_size_plus_an_allocation() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, A, 100, false);
    l.on_line(&mut h, F, 11, None);
    l.on_realloc(&mut h, A, B, 300, false); // grows and moves
    l.on_line(&mut h, F, 12, None);
    l.on_realloc(&mut h, B, B, 50, false); // shrinks in place
    l.on_line(&mut h, F, 13, None);
    l.on_realloc(&mut h, 0, C, 8, false); // realloc(NULL, n) is malloc
    l.leave(&mut h, 0);

    // A died (by realloc) before the call returned.
    assert_eq!(
        fig(&line(&l, f, 10)),
        Fig { hits: 1, alloc: 100, allocs: 1, freed: 0, frees: 0, net: 100, peak: 100, retained: 0 }
    );
    // 100 -> 300: the new block belongs to line 11; net rises from 100 to 300 at most.
    assert_eq!(
        fig(&line(&l, f, 11)),
        Fig { hits: 1, alloc: 300, allocs: 1, freed: 100, frees: 1, net: 200, peak: 200, retained: 0 }
    );
    assert_eq!(
        fig(&line(&l, f, 12)),
        Fig { hits: 1, alloc: 50, allocs: 1, freed: 300, frees: 1, net: -250, peak: 0, retained: 50 }
    );
    assert_eq!(
        fig(&line(&l, f, 13)),
        Fig { hits: 1, alloc: 8, allocs: 1, freed: 0, frees: 0, net: 8, peak: 8, retained: 8 }
    );
    assert_eq!(
        l.process,
        ProcessStats {
            allocated_bytes: 458,
            freed_bytes: 400,
            live_bytes: 58,
            tracked_peak_bytes: 300,
            untracked_frees: 0,
            ..l.process
        }
    );
}

#[test]
fn realloc_of_an_untracked_block_and_untracked_frees() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    // A block allocated before tracking started grows.
    l.on_realloc(&mut h, NEVER_TRACKED, A, 64, false);
    l.on_line(&mut h, F, 11, None);
    assert!(!l.on_free(&mut h, NEVER_TRACKED + 0x100, false));
    l.leave(&mut h, 0);

    assert_eq!(
        fig(&line(&l, f, 10)),
        Fig { hits: 1, alloc: 64, allocs: 1, freed: 0, frees: 0, net: 64, peak: 64, retained: 64 }
    );
    assert_eq!(fig(&line(&l, f, 11)), quiet(1));
    assert_eq!(
        l.process,
        ProcessStats {
            allocated_bytes: 64,
            freed_bytes: 0,
            live_bytes: 64,
            tracked_peak_bytes: 64,
            untracked_frees: 2,
            ..l.process
        }
    );
    // The realloc'd block is tracked from now on.
    assert!(l.on_free(&mut h, A, false));
    assert_eq!(l.process.untracked_frees, 2);
    assert_eq!(l.process.live_bytes, 0);
}

#[test]
fn mark_profiler_takes_a_just_allocated_block_out_of_every_figure() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, P, 500, false); // e.g. the int passed to the line callback
    l.mark_profiler(&mut h, P);
    l.on_alloc(&mut h, A, 100, false);
    l.on_line(&mut h, F, 11, None);
    assert!(l.on_free(&mut h, P, false), "a profiler block is tracked, so its free is not untracked");
    l.on_free(&mut h, A, false);
    l.leave(&mut h, 0);
    l.mark_profiler(&mut h, P); // no longer live: nothing happens

    let s10 = line(&l, f, 10);
    assert_eq!((s10.allocated_bytes, s10.allocations, s10.retained_bytes()), (100, 1, 0));
    assert_eq!((s10.freed_bytes, s10.frees), (0, 0));
    let s11 = line(&l, f, 11);
    assert_eq!((s11.allocated_bytes, s11.freed_bytes, s11.frees, s11.net_bytes()), (0, 100, 1, -100));
    let t = totals(&l, f);
    assert_eq!((t.allocated_bytes, t.allocations, t.freed_bytes, t.frees), (100, 1, 100, 1));
    assert_eq!(l.process.allocated_bytes, 100);
    assert_eq!(l.process.freed_bytes, 100);
    assert_eq!(l.process.live_bytes, 0);
    assert_eq!(l.process.untracked_frees, 0);
}

#[test]
fn mark_profiler_leaves_blocks_from_an_earlier_context_to_the_program() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let g = register(&mut l, "g", G, 20);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, A, 100, false);
    l.on_line(&mut h, F, 11, None);
    l.mark_profiler(&mut h, A); // born on another line: stays the program's
    l.on_alloc(&mut h, B, 50, false);
    l.enter(&mut h, g, 0);
    l.leave(&mut h, 0);
    l.mark_profiler(&mut h, B); // same line, but a call happened since: stays the program's
    l.mark_profiler(&mut h, NEVER_TRACKED); // unknown: ignored
    l.leave(&mut h, 0);

    assert_eq!(line(&l, f, 10).allocated_bytes, 100);
    assert_eq!((line(&l, f, 11).allocated_bytes, line(&l, f, 11).allocations), (50, 1));
    assert_eq!(totals(&l, f).allocated_bytes, 150);
    assert_eq!(l.process.allocated_bytes, 150);
    assert_eq!(l.process.live_bytes, 150);
    l.on_free(&mut h, A, false);
    assert_eq!((l.process.freed_bytes, l.process.live_bytes), (100, 50));
}

#[test]
fn mark_profiler_reaches_back_over_the_recent_allocations_of_the_execution_only() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;
    let block = |k: usize| 0x7f00_1000_0000 + 16 * k;

    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, A, 7, false);
    l.on_line(&mut h, F, 11, None);
    l.on_alloc(&mut h, B, 5, false);
    l.on_line(&mut h, F, 10, None); // a loop: the same owner and activation as A's
    l.mark_profiler(&mut h, A); // an earlier execution's: stays the program's
                                // The collector's dict, keys and strings come before the callback that marks them.
    for k in 0..=RECENT_ALLOCS {
        l.on_alloc(&mut h, block(k), 100, false);
    }
    l.mark_profiler(&mut h, block(0)); // one allocation too far back
    for k in 1..=RECENT_ALLOCS {
        l.mark_profiler(&mut h, block(k));
    }
    l.mark_profiler(&mut h, block(RECENT_ALLOCS)); // already taken: nothing more happens
    l.leave(&mut h, 0);

    assert_eq!((line(&l, f, 10).allocated_bytes, line(&l, f, 10).allocations), (107, 2));
    assert_eq!(l.process.live_bytes, 112);
    for k in 0..=RECENT_ALLOCS {
        l.on_free(&mut h, block(k), false);
    }
    assert_eq!((l.process.freed_bytes, l.process.live_bytes), (100, 12));
}

#[test]
fn mark_profiler_block_does_not_raise_the_line_peak() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, P, 500, false);
    l.mark_profiler(&mut h, P);
    l.on_alloc(&mut h, A, 100, false);
    l.on_free(&mut h, P, false);
    l.leave(&mut h, 0);

    assert_eq!(line(&l, f, 10).peak_bytes, 100);
    assert_eq!(totals(&l, f).peak_bytes, 100);
}

#[test]
fn mark_profiler_block_does_not_raise_the_process_peak() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, P, 500, false);
    l.mark_profiler(&mut h, P);
    l.on_alloc(&mut h, A, 100, false);
    l.leave(&mut h, 0);

    assert_eq!(l.process.tracked_peak_bytes, 100);
}

/// The collector may run inside a quiet section (the generator driver's) on a thread with no
/// profiled frame; its callback then names blocks allocated quietly, at an address the ring still
/// holds from a block of the program freed since. Those blocks were never counted.
#[test]
fn mark_profiler_leaves_a_quiet_block_at_a_recently_freed_address_uncounted() {
    let mut l = Ledger::new();
    let mut h = Hot::ZERO;

    l.on_alloc(&mut h, A, 100, false);
    l.on_free(&mut h, A, false);
    let token = l.begin_profiler_work(&mut h);
    l.on_alloc(&mut h, A, 64, false);
    l.mark_profiler(&mut h, A);
    l.end_profiler_work(&mut h, token);
    l.on_alloc(&mut h, B, 30, false);
    l.on_free(&mut h, A, false);

    assert_eq!((h.alloc_bytes, h.freed_bytes), (130, 100));
    let p = l.process;
    assert_eq!((p.allocated_bytes, p.freed_bytes, p.live_bytes), (130, 100, 30));
}

/// A loop re-runs line 10 in the same frame: the block born in the first execution has the same
/// owner node and stamp as the current context, yet it was allocated long ago (a free-list
/// object the interpreter now hands to the profiler).
#[test]
fn mark_profiler_leaves_a_block_from_an_earlier_execution_of_the_same_line() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, A, 64, false);
    l.on_line(&mut h, F, 11, None);
    l.on_line(&mut h, F, 10, None); // next iteration
    l.mark_profiler(&mut h, A);
    l.on_line(&mut h, F, 11, None);
    l.leave(&mut h, 0);

    let s = line(&l, f, 10);
    assert_eq!((s.hits, s.allocated_bytes, s.allocations, s.retained_bytes()), (2, 64, 1, 64));
    assert_eq!(totals(&l, f).allocated_bytes, 64);
    assert_eq!(l.process.allocated_bytes, 64);
    assert_eq!(l.process.live_bytes, 64);
}

// ----- threads -----

#[test]
fn interleaved_threads_do_not_leak_into_each_others_lines() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let g = register(&mut l, "g", G, 20);
    let (mut t1, mut t2, mut t3) = (Hot::ZERO, Hot::ZERO, Hot::ZERO);

    l.enter(&mut t1, f, 1000);
    l.enter(&mut t2, g, 2000);
    l.on_line(&mut t1, F, 10, None);
    l.on_line(&mut t2, G, 20, None);
    // A line event for the other thread's code is not this thread's.
    l.on_line(&mut t2, F, 11, None);
    l.on_line(&mut t1, G, 21, None);
    l.on_alloc(&mut t1, A, 100, false);
    l.on_alloc(&mut t2, B, 7, false);
    l.on_alloc(&mut t3, E, 1000, false); // a thread with no profiled frame
    l.on_line(&mut t1, F, 11, Some(OsReading::from(1100_u64)));
    l.on_free(&mut t2, A, false); // thread 2 frees thread 1's block
    l.on_alloc(&mut t1, C, 5, false);
    l.on_line(&mut t2, G, 21, Some(OsReading::from(2500_u64)));
    l.on_alloc(&mut t2, D, 1, false);
    assert_eq!(l.leave(&mut t1, 1200), Some((f, true)));
    assert_eq!(l.leave(&mut t2, 2600), Some((g, true)));
    assert_eq!(l.leave(&mut t3, 0), None);

    assert_eq!(linenos(&l, f), vec![10, 11]);
    assert_eq!(linenos(&l, g), vec![20, 21]);
    // A was freed (on thread 2) while f was still running on thread 1: not retained.
    assert_eq!(
        fig(&line(&l, f, 10)),
        Fig { hits: 1, alloc: 100, allocs: 1, freed: 0, frees: 0, net: 100, peak: 100, retained: 0 }
    );
    assert_eq!(
        fig(&line(&l, f, 11)),
        Fig { hits: 1, alloc: 5, allocs: 1, freed: 0, frees: 0, net: 5, peak: 5, retained: 5 }
    );
    assert_eq!(
        fig(&line(&l, g, 20)),
        Fig { hits: 1, alloc: 7, allocs: 1, freed: 100, frees: 1, net: -93, peak: 7, retained: 7 }
    );
    assert_eq!(
        fig(&line(&l, g, 21)),
        Fig { hits: 1, alloc: 1, allocs: 1, freed: 0, frees: 0, net: 1, peak: 1, retained: 1 }
    );
    assert_eq!(totals(&l, f).allocated_bytes, 105);
    assert_eq!(totals(&l, g).allocated_bytes, 8);
    // RSS readings are per thread.
    assert_eq!((line(&l, f, 10).rss_delta, line(&l, f, 11).rss_delta), (100, 100));
    assert_eq!((line(&l, g, 20).rss_delta, line(&l, g, 21).rss_delta), (500, 100));
    assert_eq!(line(&l, g, 21).rss_after, Some(2600));
    // The unprofiled thread's 1000 bytes are in the process figures only.
    assert_eq!(
        l.process,
        ProcessStats {
            allocated_bytes: 1113,
            freed_bytes: 100,
            live_bytes: 1013,
            tracked_peak_bytes: 1107,
            untracked_frees: 0,
            ..l.process
        }
    );
}

#[test]
fn other_threads_is_what_other_threads_did_never_the_threads_own_unread_lines() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let (mut t1, mut t2) = (Hot::ZERO, Hot::ZERO);

    // One thread, readings skipped: line 10 allocates 100 with no reading after it, line 11
    // frees it and is read. The reading's window covers both lines, and all of it is t1's.
    l.enter(&mut t1, f, 1000);
    l.on_line(&mut t1, F, 10, None);
    l.on_alloc(&mut t1, A, 100, false);
    l.on_line(&mut t1, F, 11, None);
    l.on_free(&mut t1, A, false);
    l.on_line(&mut t1, F, 12, Some(OsReading::from(1000_u64)));
    let (s10, s11) = (line(&l, f, 10), line(&l, f, 11));
    assert_eq!((s10.causes.other_threads, s11.causes.other_threads), (0, 0));
    // Line 10 took its block from memory the allocators held; line 11 gave it back to them.
    assert_eq!((s10.causes.python, s10.causes.allocator), (100, -100));
    assert_eq!((s11.causes.python, s11.causes.allocator), (-100, 100));

    // Another thread allocates 7 while line 12 runs: that, and only that, is other threads'.
    l.on_alloc(&mut t1, C, 5, false);
    l.on_alloc(&mut t2, B, 7, false);
    l.on_line(&mut t1, F, 13, Some(OsReading::from(1012_u64)));
    let s12 = line(&l, f, 12);
    assert_eq!((s12.causes.python, s12.causes.other_threads), (5, 7));
    assert_eq!(s12.causes.sum(), 12);
    l.leave(&mut t1, 1012);
}

#[test]
fn a_thread_ledger_is_reused_once_its_thread_leaves_its_last_profiled_frame() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let footprint = |l: &Ledger| l.footprint();
    let mut sizes = Vec::new();
    for i in 0..100 {
        let mut t = Hot::ZERO; // a new thread each time
        l.enter(&mut t, f, 1000);
        l.on_line(&mut t, F, 10, None);
        l.on_alloc(&mut t, A + 16 * i, 10, false);
        assert_eq!(t.thread, Some(ThreadId(0)));
        assert_eq!(l.leave(&mut t, 1000), Some((f, true)));
        assert_eq!(t.thread, None);
        // The thread's caller drops the result before the thread ends.
        l.on_free(&mut t, A + 16 * i, false);
        sizes.push(footprint(&l));
    }
    assert!(sizes.iter().all(|&s| s == sizes[0]), "{sizes:?}");
    assert_eq!(fig(&line(&l, f, 10)).alloc, 1000);
    assert_eq!(line(&l, f, 10).retained_bytes(), 1000);

    // Two threads at once keep two; a suspended generator keeps none.
    let (mut t1, mut t2) = (Hot::ZERO, Hot::ZERO);
    l.enter(&mut t1, f, 0);
    l.enter(&mut t2, f, 0);
    assert_eq!((t1.thread, t2.thread), (Some(ThreadId(0)), Some(ThreadId(1))));
    l.suspend(&mut t2, 0);
    assert_eq!(t2.thread, None);
    l.leave(&mut t1, 0);
}

#[test]
fn the_same_line_on_two_threads_is_measured_on_each() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let (mut t1, mut t2) = (Hot::ZERO, Hot::ZERO);

    l.enter(&mut t1, f, 0);
    l.on_line(&mut t1, F, 10, None);
    l.enter(&mut t2, f, 0);
    l.on_line(&mut t2, F, 10, None);
    l.on_alloc(&mut t1, A, 10, false);
    l.on_alloc(&mut t2, B, 20, false);
    l.on_line(&mut t2, F, 11, None);
    // Each thread's call is its own outermost one.
    assert_eq!(l.leave(&mut t1, 0), Some((f, true)));
    assert_eq!(l.leave(&mut t2, 0), Some((f, true)));

    assert_eq!(l.funcs()[f.index()].calls, 2);
    assert_eq!(
        fig(&line(&l, f, 10)),
        Fig { hits: 2, alloc: 30, allocs: 2, freed: 0, frees: 0, net: 30, peak: 20, retained: 30 }
    );
    assert_eq!(fig(&line(&l, f, 11)), quiet(1));
    assert_eq!(
        fig(&totals(&l, f)),
        Fig { hits: 2, alloc: 30, allocs: 2, freed: 0, frees: 0, net: 30, peak: 20, retained: 30 }
    );
}

// ----- generators -----

/// main: line 1 `g = gen()`, line 2 `for x in g:`, line 3 body, line 4 after the loop.
/// gen: lines 20, 21 each yield once, line 22 falls off the end.
#[test]
fn generator_suspended_time_belongs_to_the_caller_and_resume_reopens_the_line() {
    let mut l = Ledger::new();
    let main = register(&mut l, "main", MAIN, 1);
    let gen = register(&mut l, "gen", G, 20);
    let mut h = Hot::ZERO;

    l.enter(&mut h, main, 0);
    l.on_line(&mut h, MAIN, 1, None);
    let mut saved = SavedFrame::unstarted(gen); // creating the generator runs none of it
    l.on_line(&mut h, MAIN, 2, None);
    l.resume(&mut h, saved, 0); // first resume: the call
    l.on_line(&mut h, G, 20, None);
    l.on_alloc(&mut h, A, 10, false); // yielded value
    saved = l.suspend(&mut h, 0).expect("generator frame");
    assert!(!l.is_active(&h, gen));
    l.on_alloc(&mut h, B, 3, false); // the for loop's own work while gen is suspended
    l.on_line(&mut h, MAIN, 3, None);
    l.on_alloc(&mut h, C, 100, false);
    l.on_free(&mut h, C, false);
    l.on_line(&mut h, MAIN, 2, None);
    l.resume(&mut h, saved, 0); // continues on line 20
    assert!(l.is_active(&h, gen));
    l.on_line(&mut h, G, 20, None); // the tracer may repeat the line: same execution
    l.on_alloc(&mut h, D, 1, false); // before the next line event: still line 20
    l.on_line(&mut h, G, 21, None);
    l.on_alloc(&mut h, E, 20, false);
    saved = l.suspend(&mut h, 0).expect("generator frame");
    l.on_line(&mut h, MAIN, 3, None);
    l.on_line(&mut h, MAIN, 2, None);
    l.resume(&mut h, saved, 0);
    l.on_line(&mut h, G, 22, None);
    assert_eq!(l.leave(&mut h, 0), Some((gen, true)), "exhausted");
    l.on_line(&mut h, MAIN, 4, None);
    l.leave(&mut h, 0);

    assert_eq!(l.funcs()[gen.index()].calls, 1, "resumes are not calls");
    // Line 20: executed, suspended, re-opened by the resume (one execution: a resume fires no
    // line event); B is not its.
    assert_eq!(
        fig(&line(&l, gen, 20)),
        Fig { hits: 1, alloc: 11, allocs: 2, freed: 0, frees: 0, net: 11, peak: 10, retained: 11 }
    );
    // Line 21 yielded and was re-opened by the last resume: still one execution.
    assert_eq!(
        fig(&line(&l, gen, 21)),
        Fig { hits: 1, alloc: 20, allocs: 1, freed: 0, frees: 0, net: 20, peak: 20, retained: 20 }
    );
    assert_eq!(fig(&line(&l, gen, 22)), quiet(1));
    let t = totals(&l, gen);
    assert_eq!((t.allocated_bytes, t.allocations, t.retained_bytes()), (31, 3, 31));
    // The loop header: 3 executions; includes the generator's work and its own B.
    assert_eq!(
        fig(&line(&l, main, 2)),
        Fig { hits: 3, alloc: 34, allocs: 4, freed: 0, frees: 0, net: 34, peak: 21, retained: 34 }
    );
    assert_eq!(
        fig(&line(&l, main, 3)),
        Fig { hits: 2, alloc: 100, allocs: 1, freed: 100, frees: 1, net: 0, peak: 100, retained: 0 }
    );
    assert_eq!(fig(&line(&l, main, 4)), quiet(1));
}

/// `for x in gen(): ...` rebinds x while the generator is suspended, freeing the previous
/// value. The generator's call lasts until it is exhausted (docs/design.md, Figures), so that value died
/// before the call returned.
#[test]
fn generator_block_freed_while_it_is_suspended_is_not_retained() {
    let mut l = Ledger::new();
    let main = register(&mut l, "main", MAIN, 1);
    let gen = register(&mut l, "gen", G, 20);
    let mut h = Hot::ZERO;

    l.enter(&mut h, main, 0);
    l.on_line(&mut h, MAIN, 1, None);
    let saved = SavedFrame::unstarted(gen);
    l.resume(&mut h, saved, 0);
    l.on_line(&mut h, G, 20, None);
    l.on_alloc(&mut h, A, 10, false);
    let saved = l.suspend(&mut h, 0).unwrap();
    l.on_free(&mut h, A, false); // x rebound / dropped by the consumer
    l.resume(&mut h, saved, 0);
    l.on_line(&mut h, G, 21, None);
    l.leave(&mut h, 0); // exhausted: the call returns only now
    l.leave(&mut h, 0);

    assert_eq!(line(&l, gen, 20).retained_bytes(), 0);
    assert_eq!(totals(&l, gen).retained_bytes(), 0);
}

/// The generator runs its first part at depth 1 and is resumed at depth 2 (from inside h),
/// where it frees what it allocated earlier: all within its one call.
#[test]
fn generator_resumed_at_another_depth_frees_its_own_block_before_returning() {
    let mut l = Ledger::new();
    let main = register(&mut l, "main", MAIN, 1);
    let f = register(&mut l, "h", F, 10);
    let gen = register(&mut l, "gen", G, 20);
    let mut h = Hot::ZERO;

    l.enter(&mut h, main, 0);
    l.on_line(&mut h, MAIN, 1, None);
    l.resume(&mut h, SavedFrame::unstarted(gen), 0);
    l.on_line(&mut h, G, 20, None);
    l.on_alloc(&mut h, A, 10, false);
    let saved = l.suspend(&mut h, 0).unwrap();
    l.on_line(&mut h, MAIN, 2, None);
    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.resume(&mut h, saved, 0);
    l.on_line(&mut h, G, 21, None);
    l.on_free(&mut h, A, false);
    l.leave(&mut h, 0); // gen exhausted
    l.leave(&mut h, 0);
    l.leave(&mut h, 0);

    assert_eq!(line(&l, gen, 20).retained_bytes(), 0);
    assert_eq!(totals(&l, gen).retained_bytes(), 0);
}

/// f returns a block and is gone; later a generator, resumed at the depth f had, frees it. The
/// generator's frame is older than the block, so the ledger takes it for f's frame.
#[test]
fn block_of_a_returned_call_stays_retained_when_a_resumed_generator_frees_it() {
    let mut l = Ledger::new();
    let main = register(&mut l, "main", MAIN, 1);
    let f = register(&mut l, "f", F, 10);
    let gen = register(&mut l, "gen", G, 20);
    let mut h = Hot::ZERO;

    l.enter(&mut h, main, 0);
    l.on_line(&mut h, MAIN, 1, None); // g = gen(); next(g)
    l.resume(&mut h, SavedFrame::unstarted(gen), 0);
    l.on_line(&mut h, G, 20, None); // item = yield
    let saved = l.suspend(&mut h, 0).unwrap();
    l.on_line(&mut h, MAIN, 2, None); // x = f()
    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 10, None);
    l.on_alloc(&mut h, A, 100, false);
    l.leave(&mut h, 0); // f has returned with A live: A is retained by f
    l.on_line(&mut h, MAIN, 3, None); // g.send(x); del x
    l.resume(&mut h, saved, 0);
    l.on_line(&mut h, G, 21, None); // del item
    l.on_free(&mut h, A, false);
    l.leave(&mut h, 0);
    l.leave(&mut h, 0);

    assert_eq!(line(&l, f, 10).retained_bytes(), 100);
    assert_eq!(totals(&l, f).retained_bytes(), 100);
    // main outlived A: not retained there.
    assert_eq!(line(&l, main, 2).retained_bytes(), 0);
}

// ----- RSS -----

#[test]
fn rss_deltas_telescope_over_a_call_and_rss_after_is_the_last_execution() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 1000);
    l.on_line(&mut h, F, 10, None);
    l.on_line(&mut h, F, 11, Some(OsReading::from(1500_u64))); // closes line 10: +500
    l.on_line(&mut h, F, 12, Some(OsReading::from(1450_u64))); // closes line 11: -50
    l.on_line(&mut h, F, 11, None); // no reading: line 12 +0
    l.on_line(&mut h, F, 12, Some(OsReading::from(2000_u64))); // line 11: +550
    l.leave(&mut h, 1800); // line 12: -200

    let (s10, s11, s12) = (line(&l, f, 10), line(&l, f, 11), line(&l, f, 12));
    assert_eq!((s10.rss_delta, s10.rss_after), (500, Some(1500)));
    assert_eq!((s11.rss_delta, s11.rss_after), (500, Some(2000)));
    assert_eq!((s12.rss_delta, s12.rss_after), (-200, Some(1800)));
    assert_eq!(s10.rss_delta + s11.rss_delta + s12.rss_delta, 1800 - 1000);
    let t = totals(&l, f);
    assert_eq!((t.rss_delta, t.rss_after), (800, Some(1800)));
    assert_eq!(l.funcs()[f.index()].rss_at_entry, Some(1000));
}

#[test]
fn rss_deltas_telescope_around_a_nested_call() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let g = register(&mut l, "g", G, 20);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 1000);
    l.on_line(&mut h, F, 10, None);
    l.enter(&mut h, g, 1200);
    l.on_line(&mut h, G, 20, None);
    l.on_line(&mut h, G, 21, Some(OsReading::from(1300_u64)));
    l.leave(&mut h, 1350);
    l.on_line(&mut h, F, 11, Some(OsReading::from(1400_u64)));
    l.leave(&mut h, 1400);

    assert_eq!((line(&l, g, 20).rss_delta, line(&l, g, 21).rss_delta), (100, 50));
    assert_eq!(totals(&l, g).rss_delta, 1350 - 1200);
    // Line 10 spans g's whole call.
    assert_eq!((line(&l, f, 10).rss_delta, line(&l, f, 11).rss_delta), (400, 0));
    assert_eq!(line(&l, f, 10).rss_after, Some(1400));
    assert_eq!(totals(&l, f).rss_delta, 1400 - 1000);
    assert_eq!(l.funcs()[g.index()].rss_at_entry, Some(1200));
}

#[test]
fn process_stats_track_live_peak_allocated_and_freed() {
    let mut l = Ledger::new();
    let mut h = Hot::ZERO; // a thread with no profiled frame: process figures only

    l.on_alloc(&mut h, A, 100, false);
    l.on_alloc(&mut h, B, 200, false);
    l.on_free(&mut h, A, false);
    l.on_alloc(&mut h, C, 50, false);
    l.on_free(&mut h, B, false);
    assert_eq!(
        l.process,
        ProcessStats {
            allocated_bytes: 350,
            freed_bytes: 300,
            live_bytes: 50,
            tracked_peak_bytes: 300,
            untracked_frees: 0,
            ..l.process
        }
    );
    // A block freed behind the hooks' back: a new allocation at its address replaces it.
    l.on_alloc(&mut h, D, 40, false);
    l.on_alloc(&mut h, D, 30, false);
    assert_eq!(l.process.live_bytes, 80);
    assert_eq!(l.table.len(), 2);
    l.on_free(&mut h, D, false);
    l.on_free(&mut h, C, false);
    assert!(!l.on_free(&mut h, C, false), "double free is untracked");
    assert_eq!(
        l.process,
        ProcessStats {
            allocated_bytes: 420,
            freed_bytes: 380,
            live_bytes: 0,
            tracked_peak_bytes: 300,
            untracked_frees: 1,
            ..l.process
        }
    );
    assert!(l.table.is_empty());
    // No thread ledger was ever needed.
    assert_eq!(l.leave(&mut h, 0), None);
    assert_eq!(h.thread, None);
}

// ----- report -----

#[test]
fn report_gathers_called_functions_and_their_lines() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let _never_called = register(&mut l, "g", G, 20);
    let mut h = Hot::ZERO;

    l.enter(&mut h, f, 1 << 20);
    l.on_line(&mut h, F, 11, None);
    l.on_alloc(&mut h, A, 100, false);
    l.on_alloc(&mut h, B, 28, false);
    l.on_free(&mut h, B, false);
    l.on_line(&mut h, F, 12, Some(OsReading::from(2 << 20_u64)));
    l.on_free(&mut h, A, false);
    l.on_alloc(&mut h, C, 8, false);
    l.leave(&mut h, 2 << 20);

    let r = Report::from_ledger(&l, "3.12.1", Some(vec!["prog.py".into()]), 3 << 20);
    assert_eq!(r.functions.len(), 1, "g was never called");
    let fr = &r.functions[0];
    assert_eq!((fr.name.as_str(), fr.calls, fr.first_lineno, fr.rss_at_entry), ("f", 1, 10, Some(1 << 20)));
    assert_eq!(fr.lines.iter().map(|l| l.lineno).collect::<Vec<_>>(), vec![11, 12]);
    assert_eq!(fr.lines[0].source, "    line_11()");
    assert_eq!(
        fr.lines[0].figures,
        Figures {
            hits: 1,
            allocated_bytes: 128,
            allocations: 2,
            freed_bytes: 28,
            frees: 1,
            net_bytes: 100,
            peak_bytes: 128,
            retained_bytes: 0,
            rss_after_bytes: Some(2 << 20),
            rss_delta_bytes: 1 << 20,
            ..fr.lines[0].figures.clone()
        }
    );
    // Causes always add up; RSS rose by 1 MiB with only 100 B of Python objects kept, and
    // nothing else known to this test (RSS alone), so it is unexplained and gets a note.
    assert_eq!(fr.lines[0].figures.causes.sum(), 1 << 20);
    assert_eq!(fr.lines[0].figures.causes.python, 100);
    assert!(fr.lines[0].figures.note.as_deref().is_some_and(|n| n.contains("no tracked cause")));
    assert_eq!(
        fr.lines[1].figures,
        Figures {
            hits: 1,
            allocated_bytes: 8,
            allocations: 1,
            freed_bytes: 100,
            frees: 1,
            net_bytes: -92,
            peak_bytes: 0,
            retained_bytes: 8,
            rss_after_bytes: Some(2 << 20),
            rss_delta_bytes: 0,
            ..fr.lines[1].figures.clone()
        }
    );
    assert_eq!(fr.lines[1].figures.causes.sum(), 0);
    assert_eq!(fr.lines[1].figures.note, None);
    assert_eq!((fr.totals.net_bytes, fr.totals.retained_bytes, fr.totals.rss_delta_bytes), (8, 8, 1 << 20));
    assert_eq!(
        ProcessReport { peak_live_by_line: Vec::new(), ..r.process.clone() },
        ProcessReport::new(&l.process, 3 << 20)
    );
    assert_eq!(r.process.peak_live_by_line.iter().map(|p| (p.lineno, p.bytes)).collect::<Vec<_>>(), [(11, 128)]);

    let json = r.to_json();
    assert!(json.contains(r#""net_bytes":-92"#), "{json}");
    assert!(json.contains(r#""retained_bytes":8"#), "{json}");
    assert!(json.contains(r#""rss_peak_bytes":3145728"#), "{json}");
    let text = render_text(&r, 1, 0);
    assert!(text.contains("function: f   calls: 1"), "{text}");
}

/// What moves between entry and the first line event (binding a large *args tuple) belongs to
/// the first line, so the lines' RSS deltas still add up to the call's.
#[test]
fn rss_moved_before_the_first_line_belongs_to_it() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;
    l.enter(&mut h, f, 100);
    l.on_line(&mut h, F, 11, Some(OsReading::from(140_u64)));
    l.on_line(&mut h, F, 12, Some(OsReading::from(150_u64)));
    l.leave(&mut h, 110);
    assert_eq!(line(&l, f, 11).rss_delta, 50);
    assert_eq!(line(&l, f, 12).rss_delta, -40);
    assert_eq!(line(&l, f, 11).rss_delta + line(&l, f, 12).rss_delta, 110 - 100);
}

// ----- the quiet-line shortcut -----

/// Replays one pseudo-random script of line events (with and without readings, often equal
/// ones), allocations, frees, collections, arenas and nested calls into a ledger.
/// Random choices for a scripted run, drawn by proptest: `next(n)` is the next one below `n`,
/// going round the list again at its end.
struct Choices<'a> {
    values: &'a [u64],
    at: usize,
}

impl Choices<'_> {
    fn next(&mut self, n: u64) -> u64 {
        let value = self.values[self.at % self.values.len()];
        self.at += 1;
        value % n
    }
}

fn replay_script(l: &mut Ledger, choices: &[u64]) {
    let mut choices = Choices { values: choices, at: 0 };
    let mut next = |n: u64| choices.next(n);
    let f = register(l, "f", F, 10);
    let g = register(l, "g", G, 20);
    let mut h = Hot::ZERO;
    let mut stack = vec![(F, 10u32)];
    let mut live: Vec<usize> = Vec::new();
    let mut fresh = A;
    l.enter(&mut h, f, 1000);
    for _ in 0..4000 {
        let reading = |r: u64| (r < 3).then(|| OsReading::from(1000 + 4096 * r));
        match next(20) {
            0..=9 => {
                let (code, first) = *stack.last().unwrap();
                let r = next(8);
                l.on_line(&mut h, code, first + 1 + next(4) as u32, reading(r));
            }
            10..=12 => {
                fresh += 16 * (1 + next(3) as usize);
                l.on_alloc(&mut h, fresh, 8 + next(200), false);
                live.push(fresh);
            }
            13 | 14 if !live.is_empty() => {
                let addr = live.swap_remove(next(live.len() as u64) as usize);
                l.on_free(&mut h, addr, false);
            }
            15 if !live.is_empty() => {
                l.gc_start(&mut h);
                let addr = live.swap_remove(next(live.len() as u64) as usize);
                l.on_free(&mut h, addr, false);
                l.gc_stop(&mut h);
            }
            16 => l.on_arena(&mut h, 1 << 20, next(2) == 0),
            17 if stack.len() < 4 => {
                let (func, code, first) = if next(2) == 0 { (f, F, 10) } else { (g, G, 20) };
                l.enter(&mut h, func, 1000 + 4096 * next(3));
                stack.push((code, first));
            }
            18 if stack.len() > 1 => {
                l.leave(&mut h, 1000 + 4096 * next(3));
                stack.pop();
            }
            _ => {}
        }
    }
    while !stack.is_empty() {
        l.leave(&mut h, 1000);
        stack.pop();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// `step_quietly` is an optimisation only: every figure of every line, note and cause
    /// included, comes out as the general close-and-open path computes it.
    #[test]
    fn quiet_line_steps_change_no_figure(choices in prop::collection::vec(any::<u64>(), 1..4000)) {
        let mut shortcut = Ledger::new();
        replay_script(&mut shortcut, &choices);
        let mut general = Ledger::new();
        general.quiet_steps = false;
        replay_script(&mut general, &choices);
        let [a, b] = [&shortcut, &general].map(|l| Report::from_ledger(l, "3.x", None, 0).to_json());
        prop_assert!(a.contains(r#""hits":"#), "{}", a);
        prop_assert_eq!(a, b);
    }

    /// Against a model that recounts every live block by line at each new maximum of the live
    /// bytes: random allocations, frees and reallocs on lines that change, in and out of calls.
    #[test]
    fn live_at_the_peak_agrees_with_a_recount_at_each_new_maximum(
        choices in prop::collection::vec(any::<u64>(), 1..6000),
    ) {
        let steps = choices.len();
        let mut choices = Choices { values: &choices, at: 0 };
        let mut next = |n: u64| choices.next(n);
        let mut l = Ledger::new();
        let f = register(&mut l, "f", F, 10);
        let mut h = Hot::ZERO;
        // Live blocks: address -> (line number it was born on, None outside the call; size).
        let mut model: std::collections::BTreeMap<usize, (Option<u32>, u64)> = Default::default();
        let mut running: Option<u32> = None;
        let (mut best, mut best_by_line) = (0u64, std::collections::BTreeMap::new());
        let mut fresh = A;
        for _ in 0..steps {
            match next(12) {
                0 if running.is_none() => {
                    l.enter(&mut h, f, 0);
                    running = Some(10);
                }
                1 if running.is_some() => {
                    l.leave(&mut h, 0);
                    running = None;
                }
                2 | 3 if running.is_some() => {
                    let lineno = 11 + next(4) as u32;
                    l.on_line(&mut h, F, lineno, None);
                    running = Some(lineno);
                }
                4..=7 => {
                    fresh += 16;
                    let size = 1 + next(3000);
                    l.on_alloc(&mut h, fresh, size, false);
                    model.insert(fresh, (running, size));
                }
                8 | 9 if !model.is_empty() => {
                    let addr = *model.keys().nth(next(model.len() as u64) as usize).unwrap();
                    l.on_free(&mut h, addr, false);
                    model.remove(&addr);
                }
                10 if !model.is_empty() => {
                    let old = *model.keys().nth(next(model.len() as u64) as usize).unwrap();
                    fresh += 16;
                    let size = 1 + next(6000);
                    l.on_realloc(&mut h, old, fresh, size, false);
                    model.remove(&old);
                    model.insert(fresh, (running, size));
                }
                _ => {}
            }
            let live: u64 = model.values().map(|(_, size)| size).sum();
            prop_assert_eq!(live, l.process.live_bytes);
            if live > best {
                best = live;
                best_by_line.clear();
                for (line, size) in model.values() {
                    if let Some(line) = line {
                        *best_by_line.entry(*line).or_insert(0u64) += size;
                    }
                }
            }
            let expected: Vec<(u32, u64)> = best_by_line.iter().map(|(&n, &b)| (n, b)).collect();
            prop_assert_eq!((l.peak_live_bytes(), l.live_at_peak(f)), (best, expected));
        }
    }
}

// ----- glibc's figures -----

#[test]
fn glibc_figures_not_asked_for_are_carried_forward_with_the_tracked_bytes() {
    let mut l = Ledger::new();
    let mut h = Hot::ZERO;
    assert_eq!(l.glibc_figures(1000, None), (0, 0, 0), "nothing to carry yet");
    assert_eq!(l.glibc_figures(1000, Some((5000, 0, 8000))), (5000, 0, 8000));
    assert_eq!(l.glibc_figures(1000, None), (5000, 0, 8000));
    // Small tracked glibc blocks and memsleuth's own bytes move the carried figure in place;
    // pymalloc's small blocks do not.
    l.on_alloc(&mut h, A, 600, true);
    l.on_alloc(&mut h, B, 64, false);
    assert_eq!(l.glibc_figures(1100, None), (5700, 0, 8000));
    l.on_free(&mut h, A, true);
    assert_eq!(l.glibc_figures(1000, None), (5000, 0, 8000));
    // A fresh answer becomes the basis.
    assert_eq!(l.glibc_figures(1000, Some((6000, 4096, 9000))), (6000, 4096, 9000));
    l.on_alloc(&mut h, C, 1000, false);
    assert_eq!(l.glibc_figures(900, None), (6900, 4096, 9000), "over 512 bytes, pymalloc hands it to glibc");
}

// ----- what was live at the tracked peak -----

#[test]
fn live_at_the_peak_is_by_line_as_it_stood_when_live_bytes_were_highest() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;
    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 11, None);
    l.on_alloc(&mut h, A, 100, false);
    l.on_line(&mut h, F, 12, None);
    l.on_alloc(&mut h, B, 1000, false);
    l.on_alloc(&mut h, C, 50, false);
    // At the peak, not left yet: the state now is the peak's.
    assert_eq!((l.peak_live_bytes(), l.live_at_peak(f)), (1150, vec![(11, 100), (12, 1050)]));
    l.on_free(&mut h, B, false);
    assert_eq!((l.peak_live_bytes(), l.live_at_peak(f)), (1150, vec![(11, 100), (12, 1050)]));
    // Below the peak, whatever moves leaves it as it was.
    l.on_line(&mut h, F, 13, None);
    l.on_alloc(&mut h, D, 500, false);
    l.on_free(&mut h, C, false);
    l.on_alloc(&mut h, E, 500, false);
    assert_eq!((l.peak_live_bytes(), l.live_at_peak(f)), (1150, vec![(11, 100), (12, 1050)]));
    // Back at exactly the peak with other blocks: the first state at that peak stays.
    l.on_alloc(&mut h, P, 50, false);
    assert_eq!(l.process.live_bytes, 1150);
    l.on_free(&mut h, P, false);
    assert_eq!((l.peak_live_bytes(), l.live_at_peak(f)), (1150, vec![(11, 100), (12, 1050)]));
    // A higher peak replaces it, left by a free made after the call returned.
    l.on_alloc(&mut h, P, 300, false);
    l.leave(&mut h, 0);
    assert_eq!((l.peak_live_bytes(), l.live_at_peak(f)), (1400, vec![(11, 100), (13, 1300)]));
    l.on_free(&mut h, D, false);
    assert_eq!((l.peak_live_bytes(), l.live_at_peak(f)), (1400, vec![(11, 100), (13, 1300)]));
    // Blocks born outside every profiled line count in the peak but on no line.
    l.on_alloc(&mut h, NEVER_TRACKED, 5000, false);
    l.on_free(&mut h, NEVER_TRACKED, false);
    assert_eq!((l.peak_live_bytes(), l.live_at_peak(f)), (5900, vec![(11, 100), (13, 800)]));
    assert_eq!(l.process.tracked_peak_bytes, 5900);
}

#[test]
fn live_at_the_peak_leaves_out_the_profilers_blocks_and_counts_the_call_before_its_first_line() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;
    l.enter(&mut h, f, 0);
    l.on_alloc(&mut h, A, 64, false); // argument binding, before the first line
    l.on_line(&mut h, F, 11, None);
    l.on_alloc(&mut h, B, 1000, false);
    l.on_alloc(&mut h, C, 32, false);
    l.mark_profiler(&mut h, C); // the profiler's: out of the peak with it
    let work = l.begin_profiler_work(&mut h);
    l.on_alloc(&mut h, D, 4000, false);
    l.end_profiler_work(&mut h, work);
    l.on_free(&mut h, B, false);
    assert_eq!((l.peak_live_bytes(), l.live_at_peak(f)), (1064, vec![(10, 64), (11, 1000)]));
    l.leave(&mut h, 0);
}

#[test]
fn a_profiler_block_that_set_the_peak_takes_it_back_no_lower_than_an_earlier_peak() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;
    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 11, None);
    l.on_alloc(&mut h, A, 100, false);
    l.on_free(&mut h, A, false);
    l.on_line(&mut h, F, 12, None);
    l.on_alloc(&mut h, B, 80, false);
    l.on_alloc(&mut h, P, 30, false);
    assert_eq!(l.process.tracked_peak_bytes, 110);
    l.mark_profiler(&mut h, P);
    // 100 bytes were live once, the program's own.
    assert_eq!(l.process.tracked_peak_bytes, 100);
    assert_eq!((l.peak_live_bytes(), l.live_at_peak(f)), (100, vec![(11, 100)]));
    l.leave(&mut h, 0);
}

/// Only blocks of a pymalloc arena's size through the arena hook are arenas; the frames'
/// data-stack chunks (3.11+) are held by the allocators all the same.
#[test]
fn data_stack_chunks_count_in_the_footprint_but_are_not_arenas() {
    let mut l = Ledger::new();
    l.arena_size = 1 << 20;
    let f = register(&mut l, "f", F, 10);
    let mut h = Hot::ZERO;
    l.enter(&mut h, f, 0);
    l.on_line(&mut h, F, 11, None);
    l.on_arena(&mut h, 16 << 10, true);
    l.on_arena(&mut h, 1 << 20, true);
    assert_eq!(l.process.arena_bytes, (1 << 20) + (16 << 10));
    l.on_line(&mut h, F, 12, None);
    l.on_arena(&mut h, 16 << 10, false);
    l.leave(&mut h, 0);
    assert_eq!(l.process.arena_bytes, 1 << 20);
    let stats = |lineno| line(&l, f, lineno);
    assert_eq!((stats(11).arenas_mapped, stats(11).arenas_unmapped), (1, 0));
    assert_eq!((stats(12).arenas_mapped, stats(12).arenas_unmapped), (0, 0));
}

/// A call inside another profiled call may come without readings (none fell due): its lines
/// start from the thread's latest reading, and the RSS it moved lands where the next reading
/// is taken, still inside the caller's line, which is inclusive of it.
#[test]
fn a_nested_call_without_readings_leaves_rss_to_the_next_reading() {
    let mut l = Ledger::new();
    let f = register(&mut l, "f", F, 10);
    let g = register(&mut l, "g", G, 20);
    let mut h = Hot::ZERO;
    l.enter(&mut h, f, 1000);
    l.on_line(&mut h, F, 11, None);
    l.enter_maybe_read(&mut h, g, None);
    l.on_line(&mut h, G, 21, None);
    l.on_alloc(&mut h, A, 100, false);
    l.leave_maybe_read(&mut h, None);
    l.on_line(&mut h, F, 12, Some(OsReading::from(1000 + 4096)));
    l.leave(&mut h, 1000 + 4096);
    assert_eq!(l.funcs()[g.index()].calls, 1);
    assert_eq!(l.funcs()[g.index()].rss_at_entry, None, "no reading at its entry");
    assert_eq!((line(&l, g, 21).allocated_bytes, line(&l, g, 21).rss_delta), (100, 0));
    assert_eq!((line(&l, f, 11).allocated_bytes, line(&l, f, 11).rss_delta), (100, 4096));
}
