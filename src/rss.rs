//! Readings taken at line boundaries: resident set size from /proc/self/statm, read through a
//! descriptor kept open (a pread costs about 1.5 us; opening the file each time costs five times
//! that), glibc's heap figures, the residency of large blocks from /proc/self/pagemap, and
//! memsleuth's own heap. The descriptors name the process that opened them, so a forked child
//! opens its own.

use crate::state::RESIDENCY;
use memsleuth_core::causes::OsReading;
use memsleuth_core::readings::{intersect, BlockToMeasure};
use memsleuth_core::record::Reading;
use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// /proc/self/statm and /proc/self/pagemap as opened, and the count of forks they were opened
/// after: /proc/self resolves when a file is opened, so a child reading its parent's
/// descriptors would see the parent's RSS and pages.
struct ProcFiles {
    forks: u64,
    statm: Option<File>,
    pagemap: Option<File>,
}

static PROC_FILES: Mutex<Option<ProcFiles>> = Mutex::new(None);

/// Forks this process descends through, counted in the child.
static FORKS: AtomicU64 = AtomicU64::new(0);

/// Called in the child after fork(): the next reading opens this process's own files.
pub fn forked() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// Runs `f` with this process's statm and pagemap files (None where /proc is unavailable).
fn with_proc_files<R>(f: impl FnOnce(Option<&File>, Option<&File>) -> R) -> R {
    // A poisoned lock only means a reading panicked; the files themselves are still sound.
    let mut files = PROC_FILES.lock().unwrap_or_else(|e| e.into_inner());
    let forks = FORKS.load(Ordering::Relaxed);
    let p = match &mut *files {
        Some(p) if p.forks == forks => p,
        stale => stale.insert(ProcFiles {
            forks,
            statm: File::open("/proc/self/statm").ok(),
            pagemap: File::open("/proc/self/pagemap").ok(),
        }),
    };
    f(p.statm.as_ref(), p.pagemap.as_ref())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// (resident, shared) bytes from statm: RssAnon is their difference, RssFile + RssShmem the
/// second. Zeros where /proc is unavailable.
fn statm(file: Option<&File>) -> (u64, u64) {
    let Some(file) = file else { return (0, 0) };
    let mut buf = [0u8; 128];
    let Ok(n) = file.read_at(&mut buf, 0) else { return (0, 0) };
    let mut fields = buf[..n]
        .split(|b| *b == b' ')
        .map(|f| std::str::from_utf8(f).ok().and_then(|f| f.trim().parse::<u64>().ok()).unwrap_or(0));
    let page = page();
    let (_size, resident, shared) = (fields.next(), fields.next().unwrap_or(0), fields.next().unwrap_or(0));
    (resident * page, shared * page)
}

fn page() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(page_size)
}

/// Bytes of `block` that are not resident in this process: pages that are not present, or
/// present only as the shared zero page (mapped but not exclusively ours), which is what reading
/// untouched memory produces. Only pages not seen resident before are read from pagemap; those
/// found resident now are added to the block's.
fn unresident(pagemap: Option<&File>, block: &mut BlockToMeasure) -> u64 {
    let Some(pagemap) = pagemap else { return 0 };
    let page = page();
    let first = block.addr as u64 / page;
    let last = (block.addr as u64 + block.size.max(1) - 1) / page;
    let mut buf = [0u8; 8 * PAGEMAP_CHUNK];
    for (start, end) in block.seen.unseen_runs((last - first + 1) as usize, PAGEMAP_CHUNK) {
        let wanted = &mut buf[..(end - start) * 8];
        let Ok(n) = pagemap.read_at(wanted, (first + start as u64) * 8) else { return 0 };
        for (i, entry) in wanted[..n].chunks_exact(8).enumerate() {
            let bits = u64::from_le_bytes(entry.try_into().unwrap_or_default());
            let present = bits >> 63 & 1 == 1;
            let exclusive = bits >> 56 & 1 == 1;
            if present && exclusive {
                block.seen.insert(start + i);
            }
        }
    }
    block.size.saturating_sub(block.seen.len() * page)
}

/// Pages asked of pagemap in one read.
const PAGEMAP_CHUNK: usize = 512;

/// The bytes of `ranges`, memory mapped before memsleuth started, that are not resident, from
/// mincore: a page in memory counts, shared or not, since in a forked child the pages inherited
/// from the parent are shared until written and count in its RSS all the same. mincore also
/// says when part of a range is no longer mapped (a glibc chunk unmapped since); then the
/// ranges still mapped are returned too, found in /proc/self/maps, which is read only then.
fn unresident_preexisting(ranges: &[(usize, usize)]) -> (u64, Option<Vec<(usize, usize)>>) {
    let mut total = 0;
    for &(start, end) in ranges {
        match unresident_by_mincore(start, end) {
            Some(missing) => total += missing,
            None => {
                let mapped = anonymous_mappings();
                let still = intersect(ranges, &mapped);
                let total = still.iter().map(|&(start, end)| unresident_by_mincore(start, end).unwrap_or(0)).sum();
                return (total, Some(mapped));
            }
        }
    }
    (total, None)
}

/// The bytes of the pages spanning [start, end) that are not in memory, or None if part of them
/// is not mapped.
fn unresident_by_mincore(start: usize, end: usize) -> Option<u64> {
    let page = page() as usize;
    let (first, last) = (start / page * page, end.div_ceil(page) * page);
    let pages = (last - first) / page;
    let mut in_core = vec![0u8; pages];
    // SAFETY: `first` is page-aligned, and `in_core` holds one byte per page of [first, last),
    // which is all mincore writes; it reads no memory of the range.
    let status = unsafe { libc::mincore(first as *mut libc::c_void, last - first, in_core.as_mut_ptr()) };
    (status == 0).then(|| ((pages - in_core.iter().filter(|&&b| b & 1 == 1).count()) * page) as u64)
}

/// Readings taken, and how many of them asked glibc for its heap figures.
static READINGS: AtomicU64 = AtomicU64::new(0);
static GLIBC_READINGS: AtomicU64 = AtomicU64::new(0);

/// (readings taken, readings that called mallinfo2) so far.
pub fn reading_counts() -> (u64, u64) {
    (READINGS.load(Ordering::Relaxed), GLIBC_READINGS.load(Ordering::Relaxed))
}

/// Whether RSS (anon or file) moved since `since`, from statm alone: a fraction of a reading's
/// cost.
pub fn rss_moved(since: &OsReading) -> bool {
    let (resident, shared) = with_proc_files(|statm_file, _| statm(statm_file));
    resident.saturating_sub(shared) != since.rss_anon || shared != since.rss_file
}

/// Everything a reading records (docs/design.md, Causes): statm, glibc's heap figures where
/// they must be asked for, and the residency of the big blocks that need measuring, measured
/// with the lock on them released (the hooks take it).
pub fn read() -> Reading {
    calibrate_clock();
    with_proc_files(|statm_file, pagemap| {
        let (resident, shared) = statm(statm_file);
        READINGS.fetch_add(1, Ordering::Relaxed);
        let rss_anon = resident.saturating_sub(shared);
        let profiler_bytes = PROFILER_BYTES.load(Ordering::Relaxed);
        let ask = RESIDENCY.lock().must_ask_glibc(rss_anon, profiler_bytes);
        let (in_use, mmapped, arena) = if ask {
            GLIBC_READINGS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: mallinfo2 has no preconditions; it locks glibc's arenas, which no caller
            // holds.
            let info = unsafe { libc::mallinfo2() };
            let figures = (info.uordblks as u64, info.hblkhd as u64, info.arena as u64);
            RESIDENCY.lock().asked_glibc(rss_anon, profiler_bytes, figures.1, figures.2);
            figures
        } else {
            (0, 0, 0)
        };
        // Twice at most: blocks measured for the first time may show that RSS drifted from
        // what the figures known before explain, and the rest must be measured again.
        let mut unresident_bytes = 0;
        for _ in 0..2 {
            let mut measure = RESIDENCY.lock().to_measure(rss_anon);
            let again = measure.may_reveal_drift();
            let found: Vec<u64> = measure.blocks.iter_mut().map(|block| unresident(pagemap, block)).collect();
            let (preexisting, mapped) = match measure.preexisting.as_deref() {
                Some(ranges) => {
                    let (missing, mapped) = unresident_preexisting(ranges);
                    (Some(missing), mapped)
                }
                None => (None, None),
            };
            let mut found = found.into_iter();
            let mut residency = RESIDENCY.lock();
            if let Some(mapped) = mapped {
                residency.keep_preexisting_within(&mapped);
            }
            unresident_bytes = residency.measured(measure, |_| found.next().unwrap_or(0), preexisting);
            if !again {
                break;
            }
        }
        let os = OsReading {
            rss_anon,
            rss_file: shared,
            malloc_in_use: in_use,
            malloc_mmapped: mmapped,
            malloc_arena: arena,
            unresident: unresident_bytes,
            profiler_bytes,
        };
        Reading { os, malloc_asked: ask }
    })
}

/// This process's private anonymous read-write mappings, as sorted [start, end) ranges: where
/// pymalloc's arenas, glibc's mmapped chunks and libraries' buffers live (the named ones, the
/// heap and the stacks, are left out, as are shared mappings such as the ring).
fn anonymous_mappings() -> Vec<(usize, usize)> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return Vec::new() };
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            let inode = fields.nth(2)?;
            let named = fields.next().is_some();
            if named || inode != "0" || !perms.starts_with("rw") || !perms.ends_with('p') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?))
        })
        .collect()
}

/// Called as the hooks are installed: the anonymous memory mapped until now is measured like
/// a big block, so that pages of it first written later (pymalloc filling an arena it mapped
/// before memsleuth started) are explained (docs/design.md, Causes).
pub fn note_preexisting() {
    let ranges = anonymous_mappings();
    RESIDENCY.lock().set_preexisting(ranges);
}

/// Bytes memsleuth's own Rust code has allocated and not freed.
static PROFILER_BYTES: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting what memsleuth itself holds (the `profiler` cause).
pub struct CountingAllocator;

// SAFETY: forwards every call to System unchanged; the counter is only bookkeeping.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        PROFILER_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `layout` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        PROFILER_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        PROFILER_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as above; `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        PROFILER_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        PROFILER_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The process's RSS high-water mark (VmHWM), in bytes.
pub fn peak() -> u64 {
    status_number("VmHWM:").map_or(0, |kib| kib * 1024)
}

/// The process's resident bytes now (VmRSS).
pub fn resident() -> Option<u64> {
    status_number("VmRSS:").map(|kib| kib * 1024)
}

/// The process's threads now.
pub fn threads() -> Option<u64> {
    status_number("Threads:")
}

/// The number after `field` in /proc/self/status (kB for sizes).
fn status_number(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(field))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

/// CLOCK_MONOTONIC in microseconds.
fn monotonic_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The time-stamp counter and CLOCK_MONOTONIC read together at the first reading, and the
/// counter's microseconds per tick in 32.32 fixed point, measured against the clock once 10 ms
/// have passed between readings (0 until then).
#[cfg(target_arch = "x86_64")]
static TSC_BASE: OnceLock<(u64, u64)> = OnceLock::new();
#[cfg(target_arch = "x86_64")]
static TSC_SCALE: AtomicU64 = AtomicU64::new(0);

#[cfg(target_arch = "x86_64")]
fn tsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// Measures the counter's rate (called at readings, which are rare enough to afford the clock).
fn calibrate_clock() {
    #[cfg(target_arch = "x86_64")]
    if TSC_SCALE.load(Ordering::Relaxed) == 0 {
        let (tsc0, us0) = *TSC_BASE.get_or_init(|| (tsc(), monotonic_us()));
        let (ticks, us) = (tsc().wrapping_sub(tsc0), monotonic_us().saturating_sub(us0));
        if us >= 10_000 && ticks > 0 {
            TSC_SCALE.store(((u128::from(us) << 32) / u128::from(ticks)) as u64, Ordering::Relaxed);
        }
    }
}

/// A monotonic clock in microseconds, read at every line change: the time-stamp counter scaled
/// to CLOCK_MONOTONIC where it is measured (as cheap as CLOCK_MONOTONIC_COARSE, whose ticks of
/// a few ms let quick lines pass unread), the clock itself otherwise.
#[inline]
pub fn now_us() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let scale = TSC_SCALE.load(Ordering::Relaxed);
        if let (true, Some(&(tsc0, us0))) = (scale != 0, TSC_BASE.get()) {
            return us0 + ((u128::from(tsc().wrapping_sub(tsc0)) * u128::from(scale)) >> 32) as u64;
        }
    }
    monotonic_us()
}
