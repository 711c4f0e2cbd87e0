//! The sink: the process (or, where none can be started, the thread) that drains the ring and
//! keeps the books (docs/design.md, "The books live in the sink").
//!
//! Three arrangements, one drain loop:
//! - `memsleuth run`: memsleuth's own process forks before the program starts; the child runs the
//!   program, the parent is the sink. It learns how the program ended from waitpid, so a program
//!   killed by any signal, or ended by `os._exit`, still gets its report.
//! - `@profile` under plain python: a sink process is started at the first profiled call,
//!   forked from the program where that is safe and cheap (`fork`), spawned otherwise; it
//!   learns of the program's end when its parent, the program, is gone.
//! - `MEMSLEUTH_SINK=thread`, or where no process can be started: a thread of the program.
//!
//! The program asks for reports with a request record; the sink answers once it has applied
//! everything sent before it, in a file of the reply directory named by the request's token, and
//! says so in the ring's `answered` word (a thread sink drains the ring itself instead). Nothing
//! but the doorbell, which only hastens the sink, rests on a descriptor the program could close:
//! programs that daemonize close every descriptor they did not open.

use crate::state::{ring, set_ring, SpinLock};
use memsleuth_core::backlog::{Backlog, Chunk, Next};
use memsleuth_core::books::Books;
use memsleuth_core::record::{header_words, Record, Request};
use memsleuth_core::report::{render_function, render_live_at_peak, render_text, Report};
use memsleuth_core::ring::{Drained, Ring, CONTROL_WORDS};
use std::io::Write;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64 as Word;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Mutex;

/// The books, in the process (or thread) that keeps them.
pub static BOOKS: SpinLock<Books> = SpinLock::new(Books::new());

/// Data words of the ring by default (docs/design.md, "The books live in the sink", where the
/// size was measured): small, since all of it is resident in the program, and enough that the
/// books thread, looking at it every few thousand words it applies, drains it before the
/// producers catch up.
pub const RING_WORDS: usize = 1 << 15;
/// Bounds of `MEMSLEUTH_RING_KIB`, which sets the data's size in KiB (a power of two) for
/// measuring other sizes.
const RING_KIB_RANGE: std::ops::RangeInclusive<usize> = 256..=65536;
// A ring takes records up to half its size: every ring must take the longest.
const _: () = assert!(
    RING_WORDS > 2 * memsleuth_core::record::MAX_WORDS && 256 * 1024 / 8 > 2 * memsleuth_core::record::MAX_WORDS
);

/// Whether this process keeps the books (it is the sink process, or runs a sink thread).
static KEEPS_BOOKS: AtomicBool = AtomicBool::new(false);
static SINK_THREAD: AtomicBool = AtomicBool::new(false);
/// The program's end of the doorbell pipe to a sink process, and the sink's pid (0 if none).
static DOORBELL: AtomicI32 = AtomicI32::new(-1);
/// The doorbell pipe's inode: a program may close the descriptor and get its number back for a
/// file of its own, which must never be written to.
static DOORBELL_INODE: AtomicU64 = AtomicU64::new(0);
static SINK_PID: AtomicI32 = AtomicI32::new(0);
/// Where a sink process leaves its answers (None without one).
static REPLIES: Mutex<Option<PathBuf>> = Mutex::new(None);
/// Whether the sink process is this process's parent (under `memsleuth run`).
static SINK_IS_PARENT: AtomicBool = AtomicBool::new(false);
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
/// Requests are asked and answered one at a time.
static ASKING: Mutex<()> = Mutex::new(());

/// Bytes of the shared mapping a new ring takes: RING_WORDS, or what MEMSLEUTH_RING_KIB asks.
fn ring_bytes() -> usize {
    let asked = std::env::var("MEMSLEUTH_RING_KIB").ok().and_then(|kib| kib.parse::<usize>().ok());
    let words = match asked {
        Some(kib) if kib.is_power_of_two() && RING_KIB_RANGE.contains(&kib) => kib * 1024 / 8,
        _ => RING_WORDS,
    };
    (CONTROL_WORDS + words) * 8
}

/// Maps `fd` (the ring's memfd, whose size it takes) and makes it this process's ring, its
/// pages made resident now so that the ring adds nothing to RSS while the program runs.
fn map_ring(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: an all-zero stat is valid to fill in; fstat only writes it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let len = st.st_size as usize;
    // SAFETY: maps a shared file of `len` bytes; the mapping is never unmapped, so the 'static
    // slice over it stays valid; AtomicU64 has the layout of u64, and zeroed memory is an empty
    // ring.
    let words = unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            0,
        );
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        std::slice::from_raw_parts(at as *const Word, len / 8)
    };
    set_ring(Ring::new(words).ok_or_else(|| std::io::Error::other("the ring's size is not a power of two"))?);
    Ok(())
}

/// Faults every page of the ring into this process now: a forked child shares the pages but not
/// their mappings, and faulting them in while the program runs would move its RSS.
fn prefault() {
    if let Some(ring) = ring() {
        ring.touch_pages();
    }
}

/// Makes the ring in a new memfd; returns the descriptor (close-on-exec: it is passed on
/// explicitly).
pub fn open_ring() -> std::io::Result<RawFd> {
    // SAFETY: the name is a NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(c"memsleuth-ring".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is the memfd just made.
    if unsafe { libc::ftruncate(fd, ring_bytes() as libc::off_t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    map_ring(fd)?;
    Ok(fd)
}

/// The sink process maps the ring the program made.
pub fn attach_ring(fd: RawFd) -> std::io::Result<()> {
    map_ring(fd)
}

/// What the books must know of the program's allocators (docs/design.md, CPython internals
/// used): MEM and OBJ requests above `glibc_serves_above` bytes are glibc's, and blocks of
/// `arena_size` through the arena hook are pymalloc's arenas.
#[derive(Clone, Copy)]
pub struct Allocators {
    pub glibc_serves_above: u64,
    pub arena_size: u64,
}

impl Allocators {
    fn apply(self, ledger: &mut memsleuth_core::ledger::Ledger) {
        ledger.glibc_serves_above = self.glibc_serves_above;
        ledger.arena_size = self.arena_size;
    }
}

/// Starts a sink thread in this process (in a forked child, again: threads do not survive fork).
pub fn start_thread(allocators: Allocators) -> std::io::Result<()> {
    allocators.apply(&mut BOOKS.lock().ledger);
    KEEPS_BOOKS.store(true, Ordering::Relaxed);
    SINK_THREAD.store(true, Ordering::Relaxed);
    std::thread::Builder::new().name("memsleuth-sink".into()).spawn(|| loop {
        if drain_here() {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    })?;
    Ok(())
}

/// The program's side of a sink process: where to ring and where answers come.
pub fn connect(doorbell: RawFd, replies: PathBuf, sink_pid: i32, sink_is_parent: bool) {
    prefault();
    DOORBELL_INODE.store(pipe_inode(doorbell).unwrap_or(0), Ordering::Relaxed);
    DOORBELL.store(doorbell, Ordering::Relaxed);
    *REPLIES.lock().unwrap_or_else(|e| e.into_inner()) = Some(replies);
    SINK_PID.store(sink_pid, Ordering::Relaxed);
    SINK_IS_PARENT.store(sink_is_parent, Ordering::Relaxed);
}

/// In a child forked from the program: it is not profiled, and lets go of the doorbell.
pub fn forked_child() {
    let fd = DOORBELL.swap(-1, Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: closes a descriptor this module owns (async-signal-safe, as required after
        // fork).
        unsafe { libc::close(fd) };
    }
    SINK_PID.store(0, Ordering::Relaxed);
}

/// Applies everything in the ring to the books here (a sink thread, or a request in its
/// process); returns whether the ring was caught up.
fn drain_here() -> bool {
    let Some(ring) = ring() else { return true };
    let mut books = BOOKS.lock();
    let mut buf = Vec::new();
    loop {
        match ring.drain(1 << 16, &mut buf, |words| apply(&mut books, words, |_, _| {})) {
            Drained::More(_) => continue,
            Drained::Caught(_) | Drained::Corrupt(_) => return true,
        }
    }
}

fn apply(books: &mut Books, words: &[u64], mut answer: impl FnMut(u64, String)) {
    if let Some((token, request)) = books.apply_words(words) {
        answer(token, respond(books, &request));
    }
}

/// The answer to a request, from the books as they are.
pub fn respond(books: &Books, request: &Request) -> String {
    match request {
        Request::Json { python_version, argv, selection, rss_peak, codes } => {
            let wanted =
                |f: &memsleuth_core::ledger::FuncInfo| codes.as_ref().is_none_or(|c| c.contains(&(f.code as u64)));
            let mut report = Report::from_ledger_where(&books.ledger, python_version, argv.clone(), *rss_peak, wanted);
            report.selection = selection.clone();
            let in_thread = SINK_THREAD.load(Ordering::Relaxed);
            report.sink = Some(if in_thread { "thread" } else { "process" }.into());
            report.process.sink_rss_peak_bytes = (!in_thread).then(own_peak);
            report.to_json()
        }
        // Only the function asked for is gathered: every outermost call of every profiled
        // function asks for its table.
        Request::Text { precision, code, min_bytes } => {
            Report::from_ledger_where(&books.ledger, "", None, 0, |f| f.code as u64 == *code)
                .functions
                .iter()
                .map(|f| render_function(f, *precision as usize, *min_bytes))
                .collect()
        }
        Request::Counters => {
            let ledger = &books.ledger;
            format!("{} {} {}", ledger.table.len(), ledger.footprint(), ledger.process.live_bytes)
        }
    }
}

/// A sink process is forked from the program, rather than spawned, when the program runs one
/// thread and holds at most this much in RSS (docs/design.md, "Starting the sink"). A spawned
/// sink starts a fresh interpreter (about 15 ms here), during which the program fills the ring
/// and waits; a forked one is ready at once, but shares the program's pages copy-on-write: each
/// page the program writes afterwards is copied once (about a microsecond), and the sink keeps
/// the old copy. Under this bound that costs less than the interpreter's start, and the memory
/// it holds stays small.
const FORK_MAX_RSS: u64 = 32 << 20;

/// In a forked sink, the resident bytes it had from the program when forked: its own peak is
/// what it held above them.
static SHARED_AT_FORK: AtomicU64 = AtomicU64::new(0);

/// This sink process's own peak RSS.
fn own_peak() -> u64 {
    crate::rss::peak().saturating_sub(SHARED_AT_FORK.load(Ordering::Relaxed))
}

/// What a forked sink needs: the read end of the doorbell, the reply directory, the program's
/// allocators, and, for a child under `--follow-fork`, where its JSON report goes (with the
/// Python version it names).
pub struct ForkedSink {
    pub doorbell: RawFd,
    pub replies: PathBuf,
    pub allocators: Allocators,
    pub report: Option<PathBuf>,
    pub python_version: String,
}

/// Forks the sink process from this one, the program, if it runs one thread and is small
/// (FORK_MAX_RSS); returns its pid, or None where it must be spawned instead. The child never
/// returns, and never runs Python: it keeps the books until the program ends, leaves its
/// reports, and exits.
pub fn fork(sink: ForkedSink) -> std::io::Result<Option<i32>> {
    // One thread: the child gets only this one, and no lock another thread held (the GIL, the
    // allocator's, ours) is left held in it.
    if crate::rss::threads() != Some(1) || crate::rss::resident().is_none_or(|bytes| bytes > FORK_MAX_RSS) {
        return Ok(None);
    }
    // SAFETY: getpid has no preconditions.
    let program = unsafe { libc::getpid() };
    // SAFETY: this process runs one thread (checked above), so the child's state is whole; the
    // child runs only Rust code of this module and ends with _exit.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => forked_sink(sink, program),
        pid => Ok(Some(pid)),
    }
}

/// The forked sink, as `_sink.spawned_main` runs a spawned one.
fn forked_sink(sink: ForkedSink, program: i32) -> ! {
    reset_signals();
    let doorbell = keep_only_standard_streams_and(sink.doorbell);
    // SAFETY: the name is a NUL-terminated string, as PR_SET_NAME reads it.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"memsleuth-sink".as_ptr()) };
    retitle(b"memsleuth-sink");
    SHARED_AT_FORK.store(crate::rss::resident().unwrap_or(0), Ordering::Relaxed);
    let ending = serve(doorbell, &sink.replies, program, true, sink.allocators);
    let _ = std::fs::remove_dir_all(&sink.replies);
    leave_reports(ending.exit_record.is_some(), sink.report.as_deref(), sink.python_version);
    // SAFETY: _exit has no preconditions; it skips the program's exit handlers and buffers,
    // which are the program's to run and flush.
    unsafe { libc::_exit(0) }
}

/// As exec would: the program's signal handlers are not this process's (Python's would write to
/// a wakeup descriptor that is gone), and the terminal's signals are the program's to act on.
fn reset_signals() {
    for signal in 1..libc::SIGRTMAX() {
        // SAFETY: an all-zero sigaction is valid to fill in; sigaction only reads the disposition
        // into it, and signal() sets a default one (both fail harmlessly on signals glibc keeps).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut action) == 0
                && action.sa_sigaction != libc::SIG_IGN
                && action.sa_sigaction != libc::SIG_DFL
            {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: ignoring a signal has no preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
}

/// Closes every descriptor but the standard streams (stdin reopened on /dev/null) and
/// `doorbell`, whose number it returns (moved above 2 if it was one of them): a descriptor of
/// the program held open here would keep a pipe it writes from reading end-of-file. The open
/// ones are listed from /proc/self/fd (which `fork` required), not closed with close_range,
/// which kernels before 5.9 lack.
fn keep_only_standard_streams_and(doorbell: RawFd) -> RawFd {
    // SAFETY: duplicating a descriptor this process holds, and opening /dev/null, have no
    // preconditions.
    let (doorbell, null) = unsafe {
        let doorbell = if doorbell < 3 { libc::fcntl(doorbell, libc::F_DUPFD, 3) } else { doorbell };
        (doorbell, libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY))
    };
    if null >= 0 {
        // SAFETY: both are this process's descriptors.
        unsafe { libc::dup2(null, 0) };
    }
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    for fd in open.into_iter().filter(|&fd| fd > 2 && fd != doorbell) {
        // SAFETY: closes a descriptor of this process (the listing's own is closed already: the
        // close fails harmlessly); nothing here uses the program's.
        unsafe { libc::close(fd) };
    }
    doorbell
}

/// Makes `title` this process's command line (/proc/self/cmdline), in place of the program's it
/// was forked with: `pgrep -f program.py`, or a supervisor counting a program's processes by its
/// command line, must not find the sink (a spawned one has a command line of its own). The
/// command line is read from the memory of the process's arguments, which is this process's own
/// copy since the fork; the title is cut to fit it.
fn retitle(title: &[u8]) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    let Some((_, fields)) = stat.rsplit_once(')') else { return };
    // arg_start and arg_end are the 48th and 49th fields; `fields` starts at the third.
    let mut numbers = fields.split_whitespace().skip(45).map(|f| f.parse::<usize>().ok());
    let (Some(Some(start)), Some(Some(end))) = (numbers.next(), numbers.next()) else { return };
    if start == 0 || end <= start {
        return;
    }
    let len = title.len().min(end - start - 1);
    // SAFETY: [start, end) is this process's argument memory, mapped and writable (it lies on
    // its initial stack), and read by no code running here; the bytes past the title are zeroed
    // so that the kernel reads one argument.
    unsafe {
        std::ptr::copy_nonoverlapping(title.as_ptr(), start as *mut u8, len);
        std::ptr::write_bytes((start + len) as *mut u8, 0, end - start - len);
    }
}

/// What a sink started by `@profile` (forked or spawned) leaves once its program has ended: a
/// followed child's JSON report at `report`, where the run's sink collects it once the
/// `.pending` file beside it is gone; otherwise, for a program that did not finish, its heading
/// and tables on stderr.
pub fn leave_reports(finished: bool, report: Option<&Path>, python_version: String) {
    let books = BOOKS.lock();
    if let Some(path) = report {
        let request =
            Request::Json { python_version, argv: None, selection: None, rss_peak: crate::rss::peak(), codes: None };
        let written = path.with_extension("json.tmp");
        if std::fs::write(&written, respond(&books, &request)).is_ok() {
            let _ = std::fs::rename(&written, path);
        }
        let _ = std::fs::remove_file(path.with_extension("pending"));
    } else if !finished {
        let how = "ended without finishing (killed by a signal, crashed, or os._exit)";
        let report = Report::from_ledger(&books.ledger, "", None, 0);
        let text = death_heading(&books, &report, how) + &render_text(&report, 1, 0);
        // Nowhere to say that stderr is gone.
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}

/// The first lines of a report the sink writes for a program that died: how it ended, the line
/// each thread's innermost profiled frame was running, and what was live at the tracked peak
/// (from `report`, the books' whole report, which the caller builds once for its tables too).
pub fn death_heading(books: &Books, report: &Report, how: &str) -> String {
    incomplete_heading(how, running_frames(books), &render_live_at_peak(report))
}

/// The profiled frames open now, innermost per thread, as (function name, file, line).
pub fn running_frames(books: &Books) -> Vec<(String, String, u32)> {
    books
        .open_frames()
        .into_iter()
        .filter_map(|(func, lineno)| {
            let f = books.ledger.funcs().get(func as usize)?;
            Some((f.info.name.clone(), f.info.filename.clone(), lineno))
        })
        .collect()
}

/// The heading of a report whose program died: how it ended, `frames` as (function, file, line)
/// running then, and the live-at-peak section `at_peak` (text, or empty).
pub fn incomplete_heading(how: &str, frames: impl IntoIterator<Item = (String, String, u32)>, at_peak: &str) -> String {
    let mut heading =
        format!("memsleuth: INCOMPLETE REPORT: the program {how}; the figures cover what it ran until then\n");
    for (name, filename, lineno) in frames {
        heading += &format!("  running {name} at {filename}:{lineno}\n");
    }
    if !at_peak.is_empty() {
        heading += "\n";
        heading += at_peak;
    }
    heading
}

/// Waits on a full ring that yield to the sink before sleeping: the sink hands room back every
/// page it reads (a few microseconds), and a sleep costs tens of microseconds.
const YIELDS: u32 = 256;

/// A producer found the ring full, `waits` times in a row so far. Returns false if the sink is
/// gone (recording stops). docs/design.md, "The books live in the sink": the doorbell wakes the
/// sink's reader, and a pipe's wake-up runs it on the waker's CPU, which the program, waiting
/// now, can spare (it rings only then and with a request, for that reason); the producer yields
/// its CPU a bounded number of times, then sleeps between tries, checking that the sink lives.
pub fn make_room(waits: u32) -> bool {
    if SINK_THREAD.load(Ordering::Relaxed) {
        drain_here();
        return true;
    }
    if waits == 0 {
        ring_doorbell();
    }
    if waits < YIELDS {
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
        return true;
    }
    if (waits - YIELDS).is_multiple_of(16) && !sink_alive() {
        return false;
    }
    ring_doorbell();
    std::thread::sleep(std::time::Duration::from_micros(20));
    true
}

/// Whether the sink process is still there.
fn sink_alive() -> bool {
    let pid = SINK_PID.load(Ordering::Relaxed);
    if SINK_IS_PARENT.load(Ordering::Relaxed) {
        // SAFETY: getppid has no preconditions.
        unsafe { libc::getppid() == pid }
    } else {
        let mut status = 0;
        // SAFETY: polls our own child without blocking.
        pid > 0 && unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0
    }
}

fn ring_doorbell() {
    let fd = DOORBELL.load(Ordering::Relaxed);
    let ours = DOORBELL_INODE.load(Ordering::Relaxed);
    if fd >= 0 && ours != 0 && pipe_inode(fd) == Some(ours) {
        // SAFETY: writes one byte from a valid buffer to our own pipe (checked just above); a
        // full pipe only means the sink has wake-ups pending (the descriptor is non-blocking).
        unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    }
}

/// The inode of the pipe open as `fd`, if `fd` is an open pipe.
fn pipe_inode(fd: RawFd) -> Option<u64> {
    // SAFETY: an all-zero stat is valid to fill in; fstat only writes it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat.
    let found = unsafe { libc::fstat(fd, &mut st) } == 0;
    (found && st.st_mode & libc::S_IFMT == libc::S_IFIFO).then_some(st.st_ino)
}

/// Asks the sink; None if it is gone.
pub fn request(request: Request) -> Option<String> {
    if KEEPS_BOOKS.load(Ordering::Relaxed) {
        drain_here();
        return Some(respond(&BOOKS.lock(), &request));
    }
    let replies = REPLIES.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (Some(replies), Some(ring)) = (replies, ring()) else { return Some(respond(&Books::new(), &request)) };
    if !crate::state::ENABLED.load(Ordering::Relaxed) {
        // A process that records nothing (a child forked under `memsleuth run` without
        // --follow-fork) has empty books.
        return Some(respond(&Books::new(), &request));
    }
    let _asking = ASKING.lock().unwrap_or_else(|e| e.into_inner());
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    crate::state::emit(Record::Request { token, request });
    ring_doorbell();
    let mut waits = 0u32;
    while ring.answered().load(Ordering::Acquire) < token {
        waits += 1;
        if waits < 200 {
            std::hint::spin_loop();
            continue;
        }
        if waits.is_multiple_of(200) && !sink_alive() {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
    let path = replies.join(token.to_string());
    let answer = std::fs::read_to_string(&path).ok();
    let _ = std::fs::remove_file(&path);
    answer
}

/// How the program ended, as the sink saw it.
#[derive(Default)]
pub struct Ending {
    /// The status it gave as it ended normally (an Exit record).
    pub exit_record: Option<i32>,
    /// From waitpid, when the sink is the program's parent: (exited with, killed by signal).
    pub waited: Option<(Option<i32>, Option<i32>)>,
    /// The program's peak RSS from the kernel's accounting, when waited for (bytes).
    pub rss_peak: u64,
    /// Whether the ring held a record that could not be read (a producer died mid-record, or
    /// the memory was overwritten).
    pub cut_short: bool,
}

/// Runs the sink until the program ends: a reader thread drains the ring into a backlog and
/// watches `doorbell` for wake-ups, while this thread applies the backlog to the books and
/// answers requests in `replies`. `program` is the program's pid: this process's child (under
/// `memsleuth run`), or, if `program_is_parent`, its parent.
pub fn serve(doorbell: RawFd, replies: &Path, program: i32, program_is_parent: bool, allocators: Allocators) -> Ending {
    if !program_is_parent {
        forward_signals(program);
    }
    allocators.apply(&mut BOOKS.lock().ledger);
    KEEPS_BOOKS.store(true, Ordering::Relaxed);
    let Some(ring) = ring() else {
        return Ending::default();
    };
    let backlog = Backlog::new(BACKLOG_WORDS);
    let mut ending = std::thread::scope(|s| {
        let reader = std::thread::Builder::new()
            .name("memsleuth-reader".into())
            .spawn_scoped(s, || read_ring(ring, &backlog, doorbell, program, program_is_parent));
        match reader {
            Ok(reader) => {
                keep_books(ring, &backlog, replies);
                // The reader never panics (the process aborts on panic): join only waits.
                reader.join().unwrap_or(Ending { cut_short: true, ..Ending::default() })
            }
            // No thread to be had: this one reads and applies in turn, as the books keep up.
            Err(_) => {
                // Applied after each read: never more than one chunk's worth held.
                let backlog = Backlog::new(usize::MAX);
                read_ring_applying(ring, &backlog, doorbell, program, program_is_parent, replies)
            }
        }
    });
    ending.exit_record = BOOKS.lock().exit_status;
    ending
}

/// Words the reader may hold for the books thread (64 MiB of the sink's memory, not the
/// program's): a few times the longest pause measured, a block table of 4 million entries
/// doubling, at the rate alloc-heavy records.
const BACKLOG_WORDS: usize = 8 << 20;

/// Words a chunk of the backlog holds at most (the reader's budget for one drain).
const CHUNK_WORDS: usize = 1 << 16;

/// The reader thread: drains the ring into `backlog` until the program has ended and the ring
/// is caught up (or holds a record that cannot be read), then closes the backlog.
fn read_ring(ring: &Ring<'_>, backlog: &Backlog, doorbell: RawFd, program: i32, program_is_parent: bool) -> Ending {
    let ending = read_until_end(ring, backlog, doorbell, program, program_is_parent, true, |_| {});
    backlog.close();
    ending
}

/// With no reader thread: reads and applies in turn on this thread.
fn read_ring_applying(
    ring: &Ring<'_>,
    backlog: &Backlog,
    doorbell: RawFd,
    program: i32,
    program_is_parent: bool,
    replies: &Path,
) -> Ending {
    read_until_end(ring, backlog, doorbell, program, program_is_parent, false, |backlog| {
        while !backlog.is_empty() {
            if let Some(chunk) = backlog.pop() {
                apply_chunk(ring, backlog, chunk, replies);
            }
        }
    })
}

/// Drains the ring into `backlog` whenever the doorbell rings, the program ends, or (at each
/// 2 ms poll) there is something to read: with `books_read_too`, only a ring half full, the
/// books thread reading the rest itself.
fn read_until_end(
    ring: &Ring<'_>,
    backlog: &Backlog,
    doorbell: RawFd,
    program: i32,
    program_is_parent: bool,
    books_read_too: bool,
    mut after_read: impl FnMut(&Backlog),
) -> Ending {
    let mut ending = Ending::default();
    let mut ended = false;
    loop {
        let drained = backlog.read_into(|chunk| ring.drain_into(CHUNK_WORDS, chunk));
        after_read(backlog);
        match drained {
            Drained::More(_) => continue,
            Drained::Corrupt(_) => {
                ending.cut_short = true;
                return ending;
            }
            Drained::Caught(_) if ended => {
                ending.cut_short = ring.pending_words() != 0;
                return ending;
            }
            Drained::Caught(_) => {}
        }
        loop {
            let (now_ended, rung) = wait_for_records(doorbell, program, program_is_parent, &mut ending);
            ended = now_ended;
            if ended || rung || !books_read_too || ring.pending_words() >= (ring.capacity() / 2) as u64 {
                break;
            }
        }
    }
}

/// The books thread: applies the backlog's chunks in order until it is closed and empty,
/// reading the ring itself whenever the backlog is empty, and every TOP_UP_WORDS it applies.
/// While it keeps up, the ring never gets half full and the reader sleeps: the program's records
/// are copied once, on this thread, instead of handed between two threads that share a core
/// with the program.
fn keep_books(ring: &Ring<'_>, backlog: &Backlog, replies: &Path) {
    let mut pause = IDLE_PAUSES.start;
    let mut last_pending = 0;
    loop {
        let pending = ring.pending_words();
        // Producers that wrote nothing since the last look have stopped: what they left is read,
        // however little (the reader no longer reads it at its poll).
        let settled = pending == last_pending;
        last_pending = pending;
        match backlog.next(|chunk| {
            if pending >= MIN_READ_WORDS || (settled && pending > 0) {
                ring.drain_into(CHUNK_WORDS, chunk);
            }
        }) {
            Next::Chunk(chunk) => {
                apply_chunk(ring, backlog, chunk, replies);
                pause = IDLE_PAUSES.start;
            }
            Next::Idle => {
                backlog.wait(pause);
                // Fewer records than it reads at once, still coming: look again soon. None (the
                // program is idle), or none readable (a producer died mid-record): back off.
                let coming = pending > 0 && !settled;
                pause = if coming { IDLE_PAUSES.start } else { (pause * 2).min(IDLE_PAUSES.end) };
            }
            Next::Closed => return,
        }
    }
}

/// Words the books thread leaves in the ring rather than read (8 KiB, a 32nd of the default
/// ring): read right behind the producers, the cache lines they are still writing went back and
/// forth between the two cores for every record. The reader, woken by a request or a full ring,
/// reads whatever there is.
const MIN_READ_WORDS: u64 = 1024;

/// How long the books thread waits on an empty ring, doubling from the first to the last while
/// nothing comes: short enough that a busy program's ring is read well before it is half full,
/// and at most the reader's own 2 ms poll when the program is idle. A request, or a full ring,
/// wakes it at once through the reader.
const IDLE_PAUSES: std::ops::Range<std::time::Duration> =
    std::time::Duration::from_micros(50)..std::time::Duration::from_millis(2);

/// Words of records the books thread applies between looks at the ring (about 100 us of
/// alloc-heavy's records; the ring holds about 1 ms of them).
const TOP_UP_WORDS: usize = 4096;

/// Applies the records of `chunk` to the books, answering requests as they come. Every
/// TOP_UP_WORDS it looks at the ring (docs/design.md, "Who wakes the reader"), which then needs
/// no reader: woken through the pipe, the reader took the program's CPU hundreds of times a
/// second. A block table that the next TOP_UP_WORDS could make double is doubled first, with
/// the same looks at the ring between its steps.
fn apply_chunk(ring: &Ring<'_>, backlog: &Backlog, chunk: Chunk, replies: &Path) {
    let mut books = BOOKS.lock();
    let mut at = 0;
    let mut next_look = 0;
    while let Some(&head) = chunk.get(at) {
        if at >= next_look {
            next_look = at + TOP_UP_WORDS;
            // A record adds at most one block, and is at least two words long.
            if books.ledger.table.due_to_grow(TOP_UP_WORDS / 2) {
                books.ledger.table.grow_with(|| top_up(ring, backlog));
            }
            top_up(ring, backlog);
        }
        let Some(words) = chunk.get(at..at + header_words(head).max(1)) else { break };
        apply(&mut books, words, |token, text| {
            let (partial, path) = (replies.join(format!("{token}.partial")), replies.join(token.to_string()));
            // A program that is gone reads no answer: nothing to do about it.
            if std::fs::write(&partial, text).is_ok() {
                let _ = std::fs::rename(&partial, &path);
            }
            ring.answered().store(token, Ordering::Release);
        });
        at += words.len();
    }
    drop(books);
    backlog.recycle(chunk);
}

/// Moves the ring's records into the backlog once it is a quarter full: well before the
/// producers fill it, and not right behind them (MIN_READ_WORDS).
fn top_up(ring: &Ring<'_>, backlog: &Backlog) {
    if ring.pending_words() >= (ring.capacity() / 4) as u64 {
        backlog.top_up(|chunk| {
            ring.drain_into(CHUNK_WORDS, chunk);
        });
    }
}

/// The program this process is the parent of (0 if none).
static PROGRAM: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    let program = PROGRAM.load(Ordering::Relaxed);
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let from_the_kernel = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
    if program > 0 && !from_the_kernel {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(program, signal) };
    }
}

/// Under `memsleuth run` the program is this process's child: a signal sent to the command goes
/// on to it. One the terminal sends (Ctrl-C, a hangup) reaches the program by itself, being
/// sent to the whole foreground group, and is not sent twice.
fn forward_signals(program: i32) {
    PROGRAM.store(program, Ordering::Relaxed);
    for signal in [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: an all-zero sigaction is valid to fill in; `forward` only loads an atomic,
        // reads its siginfo and calls kill, all async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Waits up to a few milliseconds for a wake-up; returns whether the program has ended, and
/// whether the doorbell rang. The doorbell reads end-of-file once the program closed it (at its
/// end, or earlier: a daemon closes every descriptor), so the program's end is told by its pid.
fn wait_for_records(doorbell: RawFd, program: i32, program_is_parent: bool, ending: &mut Ending) -> (bool, bool) {
    let mut poll = libc::pollfd { fd: doorbell, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, 2) };
    if ready > 0 {
        let mut wakeups = [0u8; 256];
        // SAFETY: reads into a valid buffer from the doorbell's read end.
        let n = unsafe { libc::read(doorbell, wakeups.as_mut_ptr().cast(), wakeups.len()) };
        if n == 0 {
            // Closed for good: poll on without it, at the same pace.
            // SAFETY: sleeping has no preconditions.
            unsafe { libc::usleep(2000) };
        }
    }
    if program_is_parent {
        // SAFETY: getppid has no preconditions.
        return (unsafe { libc::getppid() } != program, ready > 0);
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: polls our own child without blocking.
    if unsafe { libc::wait4(program, &mut status, libc::WNOHANG, &mut usage) } != program {
        return (false, ready > 0);
    }
    let exited = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let signal = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
    ending.waited = Some((exited, signal));
    ending.rss_peak = usage.ru_maxrss as u64 * 1024;
    (true, ready > 0)
}
