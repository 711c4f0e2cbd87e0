//! PyMem_SetAllocator hooks for the RAW, MEM and OBJ domains. Each wraps the allocator found at
//! install time, forwards the call, and records the block in the ledger. They are installed once
//! and never removed: raw-domain calls read the allocator table without a lock, so another
//! thread may be inside a hook at any moment.

use crate::state::{guarded, with_ledger, ENABLED, LEDGER};
use pyo3_ffi::{
    PyMemAllocatorDomain, PyMemAllocatorEx, PyMem_GetAllocator, PyMem_SetAllocator, PyObjectArenaAllocator,
    PyObject_GetArenaAllocator, PyObject_SetArenaAllocator,
};
use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::sync::atomic::Ordering;
use std::sync::Once;

/// The allocator a domain had before us; our hooks receive its address as their context.
struct Original(UnsafeCell<PyMemAllocatorEx>);

// SAFETY: written once inside `install` before the hooks that read it are published with
// PyMem_SetAllocator, and only read afterwards.
unsafe impl Sync for Original {}

const NULL_ALLOCATOR: PyMemAllocatorEx =
    PyMemAllocatorEx { ctx: std::ptr::null_mut(), malloc: None, calloc: None, realloc: None, free: None };

static RAW: Original = Original(UnsafeCell::new(NULL_ALLOCATOR));
static MEM: Original = Original(UnsafeCell::new(NULL_ALLOCATOR));
static OBJ: Original = Original(UnsafeCell::new(NULL_ALLOCATOR));
static INSTALL: Once = Once::new();

/// Whether a hook's context is the raw domain's (its blocks always come from glibc).
#[inline(always)]
fn is_raw(ctx: *mut c_void) -> bool {
    ctx == RAW.0.get() as *mut c_void
}

#[inline(always)]
fn original(ctx: *mut c_void) -> &'static PyMemAllocatorEx {
    // SAFETY: every hook is installed with ctx pointing at one of the static `Original`s above,
    // fully written before installation and never written again.
    unsafe { &*(ctx as *const PyMemAllocatorEx) }
}

extern "C" fn hook_malloc(ctx: *mut c_void, size: usize) -> *mut c_void {
    let orig = original(ctx);
    let Some(malloc) = orig.malloc else { return std::ptr::null_mut() };
    guarded(|me| {
        let ptr = malloc(orig.ctx, size);
        if !ptr.is_null() {
            me.with_ledger(|l, hot| l.on_alloc(hot, ptr as usize, size as u64, is_raw(ctx)));
        }
        ptr
    })
    .unwrap_or_else(|| malloc(orig.ctx, size))
}

extern "C" fn hook_calloc(ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    let orig = original(ctx);
    let Some(calloc) = orig.calloc else { return std::ptr::null_mut() };
    guarded(|me| {
        let ptr = calloc(orig.ctx, nelem, elsize);
        if !ptr.is_null() {
            let size = nelem.saturating_mul(elsize) as u64;
            me.with_ledger(|l, hot| l.on_alloc(hot, ptr as usize, size, is_raw(ctx)));
        }
        ptr
    })
    .unwrap_or_else(|| calloc(orig.ctx, nelem, elsize))
}

extern "C" fn hook_realloc(ctx: *mut c_void, ptr: *mut c_void, new_size: usize) -> *mut c_void {
    let orig = original(ctx);
    let Some(realloc) = orig.realloc else { return std::ptr::null_mut() };
    let raw = is_raw(ctx);
    guarded(|me| {
        // The lock is not held across the call: pymalloc may map an arena inside it, and the
        // arena hook takes the lock.
        let taken = me.with_ledger(|l, hot| l.begin_realloc(hot, ptr as usize, raw));
        let new = realloc(orig.ctx, ptr, new_size);
        me.with_ledger(|l, hot| l.end_realloc(hot, ptr as usize, new as usize, new_size as u64, raw, taken));
        new
    })
    .unwrap_or_else(|| realloc(orig.ctx, ptr, new_size))
}

extern "C" fn hook_free(ctx: *mut c_void, ptr: *mut c_void) {
    let orig = original(ctx);
    let Some(free) = orig.free else { return };
    guarded(|me| {
        if !ptr.is_null() {
            // Forget the block before releasing it, so a concurrent allocation of the same
            // address can never be removed by this free.
            me.with_ledger(|l, hot| l.on_free(hot, ptr as usize, is_raw(ctx)));
        }
        free(orig.ctx, ptr)
    })
    .unwrap_or_else(|| free(orig.ctx, ptr))
}

/// pymalloc's arena allocator before us.
struct OriginalArenas(UnsafeCell<PyObjectArenaAllocator>);

// SAFETY: as for `Original`: written once in `install` before the hooks are published.
unsafe impl Sync for OriginalArenas {}

static ARENAS: OriginalArenas =
    OriginalArenas(UnsafeCell::new(PyObjectArenaAllocator { ctx: std::ptr::null_mut(), alloc: None, free: None }));

fn original_arenas() -> &'static PyObjectArenaAllocator {
    // SAFETY: written once in `install` before the arena hooks were installed, read-only after.
    unsafe { &*ARENAS.0.get() }
}

extern "C" fn hook_arena_alloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
    let orig = original_arenas();
    let Some(alloc) = orig.alloc else { return std::ptr::null_mut() };
    let ptr = alloc(orig.ctx, size);
    if !ptr.is_null() {
        with_ledger(|l, hot| l.on_arena(hot, ptr as usize, size as u64, true));
    }
    ptr
}

extern "C" fn hook_arena_free(_ctx: *mut c_void, ptr: *mut c_void, size: usize) {
    let orig = original_arenas();
    with_ledger(|l, hot| l.on_arena(hot, ptr as usize, size as u64, false));
    if let Some(free) = orig.free {
        free(orig.ctx, ptr, size);
    }
}

fn install_arenas() {
    // SAFETY: GIL held, once; ARENAS is not read by any installed hook before this write.
    unsafe {
        PyObject_GetArenaAllocator(ARENAS.0.get());
        let mut hooks = PyObjectArenaAllocator {
            ctx: std::ptr::null_mut(),
            alloc: Some(hook_arena_alloc),
            free: Some(hook_arena_free),
        };
        PyObject_SetArenaAllocator(&mut hooks);
    }
}

fn install_domain(domain: PyMemAllocatorDomain, slot: &'static Original) {
    // SAFETY: called with the GIL held, once per domain; `slot` is not yet referenced by any
    // installed hook, so writing it cannot race with a reader.
    unsafe {
        PyMem_GetAllocator(domain, slot.0.get());
        let mut hooks = PyMemAllocatorEx {
            ctx: slot.0.get() as *mut c_void,
            malloc: Some(hook_malloc),
            calloc: Some(hook_calloc),
            realloc: Some(hook_realloc),
            free: Some(hook_free),
        };
        PyMem_SetAllocator(domain, &mut hooks);
    }
}

extern "C" fn before_fork() {
    // Hold the ledger across fork() so the child never inherits it locked by a thread that
    // does not exist there.
    std::mem::forget(LEDGER.lock());
}

extern "C" fn after_fork() {
    // SAFETY: `before_fork` locked the ledger on this thread and leaked the guard; this is the
    // matching unlock, in the parent and in the child alike.
    unsafe { LEDGER.force_unlock() };
}

extern "C" fn after_fork_in_child() {
    crate::rss::forked();
    after_fork();
}

/// Installs the hooks on all three domains (once) and starts tracking.
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: the handlers are plain functions that stay valid for the life of the process.
        unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork_in_child)) };
        install_domain(PyMemAllocatorDomain::PYMEM_DOMAIN_RAW, &RAW);
        install_domain(PyMemAllocatorDomain::PYMEM_DOMAIN_MEM, &MEM);
        install_domain(PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ, &OBJ);
        install_arenas();
        ENABLED.store(true, Ordering::Release);
    });
}
