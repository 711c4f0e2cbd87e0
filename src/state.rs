//! The process-wide ledger and each thread's hot counters, shared by the allocation hooks and
//! the line tracer.

use memsleuth_core::ledger::{Hot, Ledger, RECENT_ALLOCS};
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, Ordering};

/// One lock for the block table and the ledger. Under the GIL it is almost never contended;
/// only raw-domain calls from threads that released the GIL can meet here.
pub static LEDGER: SpinLock<Ledger> = SpinLock::new(Ledger::new());

/// A test-and-set lock, taken on every allocator call, where a parking mutex's compare-and-swap
/// on release showed as a tenth of the run time: this one releases with a plain store. Waiters spin
/// briefly, then yield (the holder may be descheduled).
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through a guard, and the flag admits one guard at a time.
unsafe impl<T: Send> Sync for SpinLock<T> {}

pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> SpinLock<T> {
    pub const fn new(value: T) -> Self {
        SpinLock { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    #[inline(always)]
    pub fn lock(&self) -> SpinGuard<'_, T> {
        while self.locked.swap(true, Ordering::Acquire) {
            self.wait();
        }
        SpinGuard { lock: self }
    }

    #[cold]
    fn wait(&self) {
        let mut spins = 0u32;
        while self.locked.load(Ordering::Relaxed) {
            if spins < 100 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Releases a lock whose guard was forgotten (around fork()).
    ///
    /// # Safety
    /// The caller must own the lock through a forgotten guard.
    pub unsafe fn force_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

impl<T> std::ops::Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard is the only one while it lives (see `lock`).
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> std::ops::DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this borrow unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// Set once the hooks are installed.
pub static ENABLED: AtomicBool = AtomicBool::new(false);

/// What a thread keeps for the hooks, in one thread-local so that a hook reaches all of it with
/// one lookup (each costs a call to __tls_get_addr from a shared library).
pub struct Local {
    /// Set while this thread is inside one of our hooks: nested allocator calls (pymalloc
    /// handing a large request to the raw domain) pass straight through and count once.
    busy: Cell<bool>,
    hot: UnsafeCell<Hot>,
}

thread_local! {
    /// Const-initialised and without Drop, so reading it never allocates or registers a
    /// destructor, even from a raw-domain hook running during thread teardown.
    static LOCAL: Local = const { Local { busy: Cell::new(false), hot: UnsafeCell::new(Hot::ZERO) } };
}

impl Local {
    /// Applies `f` to the ledger and this thread's counters.
    #[inline(always)]
    pub fn with_ledger<R: Default>(&self, f: impl FnOnce(&mut Ledger, &mut Hot) -> R) -> R {
        self.with_ledger_if(|_| true, f)
    }

    /// `with_ledger`, if `admit` accepts this thread's counters (checked before taking the lock).
    ///
    /// Nothing here catches a panic: the extension is built with `panic = "abort"`, because a
    /// frame that catches unwinds would also catch the forced unwind with which CPython ends a
    /// daemon thread at shutdown (`pthread_exit`), and glibc aborts the process when that happens.
    /// The accounting must therefore not panic (see docs/design.md, "Never change the program").
    #[inline(always)]
    pub fn with_ledger_if<R: Default>(
        &self,
        admit: impl FnOnce(&Hot) -> bool,
        f: impl FnOnce(&mut Ledger, &mut Hot) -> R,
    ) -> R {
        if !ENABLED.load(Ordering::Relaxed) {
            return R::default();
        }
        // SAFETY: the only mutable access to this thread's counters, and it cannot nest: `admit`
        // and `f` are plain Rust that never call into the interpreter, so no hook can run on this
        // thread until they return (Rust's own allocations go to libc).
        let hot = unsafe { &mut *self.hot.get() };
        if !admit(hot) {
            return R::default();
        }
        f(&mut LEDGER.lock(), hot)
    }
}

/// Runs `f` with this thread marked as inside a hook, unless it already is: then returns None
/// and the caller forwards the call untracked. `f` includes the call to the wrapped allocator,
/// so what that allocator requests from a lower domain is not counted a second time.
#[inline(always)]
pub fn guarded<R>(f: impl FnOnce(&Local) -> R) -> Option<R> {
    LOCAL.with(|me| {
        if me.busy.replace(true) {
            return None;
        }
        let r = f(me);
        me.busy.set(false);
        Some(r)
    })
}

/// `Local::with_ledger` for the calling thread.
#[inline(always)]
pub fn with_ledger<R: Default>(f: impl FnOnce(&mut Ledger, &mut Hot) -> R) -> R {
    LOCAL.with(|me| me.with_ledger(f))
}

/// `Local::with_ledger_if` for the calling thread.
#[inline(always)]
pub fn with_ledger_if<R: Default>(admit: impl FnOnce(&Hot) -> bool, f: impl FnOnce(&mut Ledger, &mut Hot) -> R) -> R {
    LOCAL.with(|me| me.with_ledger_if(admit, f))
}

/// The code object of this thread's innermost profiled frame (0 if none), read without the
/// lock (the counters are thread-local).
#[inline(always)]
pub fn top_code() -> usize {
    // SAFETY: a read between accesses; no `with_ledger` is running on this thread here.
    LOCAL.with(|me| unsafe { (*me.hot.get()).top_code })
}

/// This thread's allocation count, and the address of its latest allocation in the current
/// execution (0 if none), read without the lock.
#[inline(always)]
pub fn latest_alloc() -> (u64, usize) {
    LOCAL.with(|me| {
        // SAFETY: a read between accesses; no `with_ledger` is running on this thread here.
        let hot = unsafe { &*me.hot.get() };
        let n = hot.allocs_in_exec as usize;
        (hot.allocs, if n == 0 { 0 } else { hot.recent_allocs[(n - 1) % RECENT_ALLOCS] })
    })
}
