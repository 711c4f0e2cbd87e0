//! PyMem_SetAllocator hooks for the RAW, MEM and OBJ domains. Each wraps the allocator found at
//! install time, forwards the call, and records the block in the ring (docs/design.md, The hot
//! path). They are never removed by memsleuth: raw-domain calls read the allocator table without
//! a lock, so another thread may be inside a hook at any moment. Another tool may remove them (tracemalloc.stop() restores the
//! allocator tracemalloc saved, which is not ours): `verify` finds that out at each reading and
//! installs them again over what is there now.

use crate::sink::BOOKS;
use crate::state::{self, guarded, ENABLED, RESIDENCY};
use pyo3_ffi::{
    PyMemAllocatorDomain, PyMemAllocatorEx, PyMem_Free, PyMem_GetAllocator, PyMem_Malloc, PyMem_RawFree,
    PyMem_RawMalloc, PyMem_SetAllocator, PyObjectArenaAllocator, PyObject_Free, PyObject_GetArenaAllocator,
    PyObject_Malloc, PyObject_SetArenaAllocator,
};
use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

/// The allocator a domain had before us, wrapped by the hooks of one slot.
struct Original(UnsafeCell<PyMemAllocatorEx>);

// SAFETY: each is written once, in `install_domain`, before the hooks that read it are published
// with PyMem_SetAllocator, and only read afterwards.
unsafe impl Sync for Original {}

const NULL_ALLOCATOR: PyMemAllocatorEx =
    PyMemAllocatorEx { ctx: std::ptr::null_mut(), malloc: None, calloc: None, realloc: None, free: None };

/// How many times the hooks of one domain can be installed: once at start, then once each time
/// another tool removes them. A slot is never reused, since a thread may still be inside a hook
/// reading it.
const INSTALLS: usize = 8;

/// One domain: its slots, how many are used, and the allocator last found wrapping our hooks
/// (its malloc and context), so `verify` probes a stranger on top only once.
struct Domain {
    domain: PyMemAllocatorDomain,
    slots: [Original; INSTALLS],
    used: AtomicUsize,
    wrapper: [AtomicUsize; 2],
}

const fn domain(domain: PyMemAllocatorDomain) -> Domain {
    Domain {
        domain,
        slots: [const { Original(UnsafeCell::new(NULL_ALLOCATOR)) }; INSTALLS],
        used: AtomicUsize::new(0),
        wrapper: [AtomicUsize::new(0), AtomicUsize::new(0)],
    }
}

/// Index of the raw domain in `DOMAINS` (its blocks always come from glibc).
const RAW: usize = 0;
static DOMAINS: [Domain; 3] = [
    domain(PyMemAllocatorDomain::PYMEM_DOMAIN_RAW),
    domain(PyMemAllocatorDomain::PYMEM_DOMAIN_MEM),
    domain(PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ),
];
static INSTALL: Once = Once::new();

/// The allocator wrapped by the hooks of slot `S` of domain `D`. Each slot has its own hook
/// functions, which find what they wrap here and never through their `ctx` argument: another
/// thread's raw-domain call may read a domain's table half-written while PyMem_SetAllocator
/// replaces it, and a torn `ctx` would be followed into nowhere.
#[inline(always)]
fn original<const D: usize, const S: usize>() -> &'static PyMemAllocatorEx {
    // SAFETY: the slot is written once in `install_domain` before these hooks are published,
    // and never written again.
    unsafe { &*DOMAINS[D].slots[S].0.get() }
}

extern "C" fn hook_malloc<const D: usize, const S: usize>(_ctx: *mut c_void, size: usize) -> *mut c_void {
    let orig = original::<D, S>();
    let Some(malloc) = orig.malloc else { return std::ptr::null_mut() };
    guarded(|me| {
        let ptr = malloc(orig.ctx, size);
        if !ptr.is_null() {
            me.allocated(ptr as usize, size as u64, D == RAW);
        }
        ptr
    })
    .unwrap_or_else(|| malloc(orig.ctx, size))
}

extern "C" fn hook_calloc<const D: usize, const S: usize>(
    _ctx: *mut c_void,
    nelem: usize,
    elsize: usize,
) -> *mut c_void {
    let orig = original::<D, S>();
    let Some(calloc) = orig.calloc else { return std::ptr::null_mut() };
    guarded(|me| {
        let ptr = calloc(orig.ctx, nelem, elsize);
        if !ptr.is_null() {
            let size = nelem.saturating_mul(elsize) as u64;
            me.allocated(ptr as usize, size, D == RAW);
        }
        ptr
    })
    .unwrap_or_else(|| calloc(orig.ctx, nelem, elsize))
}

extern "C" fn hook_realloc<const D: usize, const S: usize>(
    _ctx: *mut c_void,
    ptr: *mut c_void,
    new_size: usize,
) -> *mut c_void {
    let orig = original::<D, S>();
    let Some(realloc) = orig.realloc else { return std::ptr::null_mut() };
    guarded(|me| {
        // The old block is forgotten before realloc may release it, as for a free.
        me.realloc_begins(ptr as usize, D == RAW);
        let new = realloc(orig.ctx, ptr, new_size);
        me.realloc_ended(ptr as usize, new as usize, new_size as u64, D == RAW);
        new
    })
    .unwrap_or_else(|| realloc(orig.ctx, ptr, new_size))
}

extern "C" fn hook_free<const D: usize, const S: usize>(_ctx: *mut c_void, ptr: *mut c_void) {
    let orig = original::<D, S>();
    let Some(free) = orig.free else { return };
    guarded(|me| {
        if !ptr.is_null() {
            // Forget the block before releasing it, so a concurrent allocation of the same
            // address can never be removed by this free.
            me.freed(ptr as usize, D == RAW);
        }
        free(orig.ctx, ptr)
    })
    .unwrap_or_else(|| free(orig.ctx, ptr))
}

/// The hooks of slot `S` of domain `D`, with that slot's address as their context: they do not
/// read it, `verify` tells our hooks from another tool's by it.
const fn hooks<const D: usize, const S: usize>() -> PyMemAllocatorEx {
    PyMemAllocatorEx {
        ctx: &DOMAINS[D].slots[S] as *const Original as *mut c_void,
        malloc: Some(hook_malloc::<D, S>),
        calloc: Some(hook_calloc::<D, S>),
        realloc: Some(hook_realloc::<D, S>),
        free: Some(hook_free::<D, S>),
    }
}

macro_rules! slots_of {
    ($d:literal) => {
        [
            hooks::<$d, 0>(),
            hooks::<$d, 1>(),
            hooks::<$d, 2>(),
            hooks::<$d, 3>(),
            hooks::<$d, 4>(),
            hooks::<$d, 5>(),
            hooks::<$d, 6>(),
            hooks::<$d, 7>(),
        ]
    };
}

/// Every slot's hooks, by domain and slot.
struct HookTable([[PyMemAllocatorEx; INSTALLS]; 3]);

// SAFETY: the table is immutable; its `ctx` pointers point at statics and are never dereferenced
// through it.
unsafe impl Sync for HookTable {}

static HOOKS: HookTable = HookTable([slots_of!(0), slots_of!(1), slots_of!(2)]);

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
        state::arena(ptr as usize, size as u64, true);
    }
    ptr
}

extern "C" fn hook_arena_free(_ctx: *mut c_void, ptr: *mut c_void, size: usize) {
    let orig = original_arenas();
    state::arena(ptr as usize, size as u64, false);
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

/// Installs our hooks on `d` over the allocator it has now, in its next unused slot. Returns
/// false if every slot is used.
fn install_domain(index: usize) -> bool {
    let d = &DOMAINS[index];
    let n = d.used.load(Ordering::Relaxed);
    let (Some(slot), Some(hooks)) = (d.slots.get(n), HOOKS.0[index].get(n)) else { return false };
    d.used.store(n + 1, Ordering::Relaxed);
    let mut hooks = *hooks;
    // SAFETY: called with the GIL held; `slot` has never been referenced by an installed hook,
    // so writing it cannot race with a reader; its hooks are published only after.
    unsafe {
        PyMem_GetAllocator(d.domain, slot.0.get());
        PyMem_SetAllocator(d.domain, &mut hooks);
    }
    true
}

/// Whether a call through `d`'s allocator API reaches our hooks: a block allocated quietly is
/// counted only if they saw it.
fn reaches_our_hooks(d: &Domain) -> bool {
    let quiet = state::begin_quiet();
    let before = state::allocs_seen();
    // SAFETY: GIL held, as every domain's API requires; the block is freed by the same domain's
    // free at once.
    let block = unsafe {
        match d.domain {
            PyMemAllocatorDomain::PYMEM_DOMAIN_RAW => PyMem_RawMalloc(1),
            PyMemAllocatorDomain::PYMEM_DOMAIN_MEM => PyMem_Malloc(1),
            _ => PyObject_Malloc(1),
        }
    };
    let seen = state::allocs_seen() != before;
    // SAFETY: `block` came from this domain's malloc (freeing null is allowed).
    unsafe {
        match d.domain {
            PyMemAllocatorDomain::PYMEM_DOMAIN_RAW => PyMem_RawFree(block),
            PyMemAllocatorDomain::PYMEM_DOMAIN_MEM => PyMem_Free(block),
            _ => PyObject_Free(block),
        }
    }
    state::end_quiet(quiet);
    seen
}

static WARNED: AtomicBool = AtomicBool::new(false);

/// Checks that every domain's allocator still leads to our hooks, and installs them again where
/// another tool removed them, saying once on stderr that what ran in between was not seen. Called
/// with the GIL held, outside any lock a hook takes, at readings: cheap while our hooks are on top.
pub fn verify() {
    if !INSTALL.is_completed() || !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    for (index, d) in DOMAINS.iter().enumerate() {
        let mut current = NULL_ALLOCATOR;
        // SAFETY: GIL held; copies the domain's allocator into `current`.
        unsafe { PyMem_GetAllocator(d.domain, &mut current) };
        let ours = d.slots.as_ptr_range().contains(&(current.ctx as *const Original));
        let top = [current.malloc.map_or(0, |f| f as usize), current.ctx as usize];
        let known = d.wrapper.iter().zip(top).all(|(seen, now)| seen.load(Ordering::Relaxed) == now);
        if ours || known {
            continue;
        }
        if reaches_our_hooks(d) {
            for (seen, now) in d.wrapper.iter().zip(top) {
                seen.store(now, Ordering::Relaxed);
            }
            continue;
        }
        let reinstalled = install_domain(index);
        if !WARNED.swap(true, Ordering::Relaxed) {
            // Never eprintln!: a failed write to stderr (a closed pipe, a full disk) panics, and a
            // panic aborts the process.
            let _ = writeln!(
                std::io::stderr().lock(),
                "memsleuth: another tool replaced Python's allocator (tracemalloc.stop()?); {}",
                if reinstalled {
                    "memsleuth's hooks are back, but what was allocated or freed in between is missing from the figures"
                } else {
                    "memsleuth's hooks could not be put back: figures miss allocations from here on"
                }
            );
        }
    }
}

extern "C" fn before_fork() {
    // Hold the big blocks and the books (kept here by a sink thread) across fork() so the child
    // never inherits them locked by a thread that does not exist there.
    std::mem::forget(RESIDENCY.lock());
    std::mem::forget(BOOKS.lock());
}

extern "C" fn after_fork() {
    // SAFETY: `before_fork` locked both on this thread and leaked the guards; these are the
    // matching unlocks, in the parent and in the child alike.
    unsafe {
        BOOKS.force_unlock();
        RESIDENCY.force_unlock();
    }
}

/// A child the program forks is not profiled: it records nothing and lets go of the sink.
extern "C" fn after_fork_in_child() {
    crate::rss::forked();
    state::after_fork_in_child();
    crate::sink::forked_child();
    after_fork();
}

/// Whether the hooks were installed in this process (or the one it was forked from).
pub fn installed() -> bool {
    INSTALL.is_completed()
}

/// Installs the hooks on all three domains (once) and starts tracking.
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: the handlers are plain functions that stay valid for the life of the process.
        unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork_in_child)) };
        crate::rss::note_preexisting();
        for index in 0..DOMAINS.len() {
            install_domain(index);
        }
        install_arenas();
        ENABLED.store(true, Ordering::Release);
    });
}
