//! The process-wide ledger and each thread's hot counters, shared by the allocation hooks and
//! the line tracer.

use memsleuth_core::ledger::{Hot, Ledger};
use parking_lot::Mutex;
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, Ordering};

/// One lock for the block table and the ledger. Under the GIL it is almost never contended;
/// only raw-domain calls from threads that released the GIL can meet here.
pub static LEDGER: Mutex<Ledger> = parking_lot::const_mutex(Ledger::new());

/// Set once the hooks are installed; cleared if accounting ever fails, so the program goes on.
pub static ENABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Const-initialised and without Drop, so reading it never allocates or registers a
    /// destructor, even from a raw-domain hook running during thread teardown.
    static HOT: UnsafeCell<Hot> = const { UnsafeCell::new(Hot::ZERO) };
    /// Set while this thread is inside one of our hooks: nested allocator calls (pymalloc
    /// handing a large request to the raw domain) pass straight through and count once.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread marked as inside a hook, unless it already is: then returns None
/// and the caller forwards the call untracked. `f` includes the call to the wrapped allocator,
/// so what that allocator requests from a lower domain is not counted a second time.
#[inline(always)]
pub fn guarded<R>(f: impl FnOnce() -> R) -> Option<R> {
    if BUSY.with(|b| b.replace(true)) {
        return None;
    }
    let r = f();
    BUSY.with(|b| b.set(false));
    Some(r)
}

/// Applies `f` to the ledger and this thread's counters. A panic (a bug) must not cross the
/// `extern "C"` boundary: it disables tracking instead of aborting the interpreter.
#[inline(always)]
pub fn with_ledger<R: Default>(f: impl FnOnce(&mut Ledger, &mut Hot) -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return R::default();
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut ledger = LEDGER.lock();
        HOT.with(|h| {
            // SAFETY: the only mutable access to this thread's counters, and it cannot nest:
            // `f` is plain Rust that never calls into the interpreter, so no hook can run on
            // this thread until it returns (Rust's own allocations go to libc, not PyMem).
            let hot = unsafe { &mut *h.get() };
            f(&mut ledger, hot)
        })
    }));
    outcome.unwrap_or_else(|_| {
        ENABLED.store(false, Ordering::Relaxed);
        R::default()
    })
}

/// The code object of this thread's innermost profiled frame (0 if none), read without the
/// lock (the counters are thread-local).
#[inline(always)]
pub fn top_code() -> usize {
    // SAFETY: a read between accesses; no `with_ledger` is running on this thread here.
    HOT.with(|h| unsafe { (*h.get()).top_code })
}
