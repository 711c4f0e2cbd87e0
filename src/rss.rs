//! Resident set size from /proc/self/statm, read through a descriptor kept open (a pread costs
//! about 1.5 us; opening the file each time costs five times that).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

static STATM: OnceLock<Option<File>> = OnceLock::new();

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

/// Current RSS in bytes (anon + file + shmem), or 0 where /proc is unavailable.
pub fn current() -> u64 {
    let Some(file) = STATM.get_or_init(|| File::open("/proc/self/statm").ok()) else { return 0 };
    let mut buf = [0u8; 128];
    let Ok(n) = file.read_at(&mut buf, 0) else { return 0 };
    let resident = buf[..n]
        .split(|b| *b == b' ')
        .nth(1)
        .and_then(|f| std::str::from_utf8(f).ok())
        .and_then(|f| f.trim().parse::<u64>().ok())
        .unwrap_or(0);
    static PAGE: OnceLock<u64> = OnceLock::new();
    resident * *PAGE.get_or_init(page_size)
}

/// The process's RSS high-water mark (VmHWM), in bytes.
pub fn peak() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// A monotonic clock in microseconds, coarse (a few ms resolution) but cheap enough to read at
/// every line event.
pub fn coarse_now_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}
