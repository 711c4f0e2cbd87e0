//! What the profiled process keeps (docs/design.md, "The books live in the sink"): the ring its
//! threads append records to, each thread's producer state (a mirror of its profiled frames, its
//! reading schedule), the big blocks whose residency readings measure, and the registry of
//! profiled functions. The books themselves are kept by the sink (`sink.rs`).

use crate::rss;
use memsleuth_core::causes::OsReading;
use memsleuth_core::readings::{Residency, Schedule, BIG_BLOCK};
use memsleuth_core::record::{alloc_words, free_words, line_words, Reading, Record, Words};
use memsleuth_core::ring::Ring;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// A test-and-set lock for state the hooks touch, where a parking mutex's compare-and-swap on
/// release is measurable: this one releases with a plain store. Waiters spin briefly, then yield
/// (the holder may be descheduled).
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

/// Set while this process records: once the ring and the sink exist and the hooks are in;
/// cleared in a forked child (it is not profiled) and if the sink is lost.
pub static ENABLED: AtomicBool = AtomicBool::new(false);

/// The ring this process's threads append to (null until made). A forked child profiled on
/// its own gets a new one; the old one is left in place, never freed, since nothing frees it.
static RING: AtomicPtr<Ring<'static>> = AtomicPtr::new(std::ptr::null_mut());

/// This process's ring, if it has one.
#[inline(always)]
pub fn ring() -> Option<&'static Ring<'static>> {
    // SAFETY: a non-null pointer comes from `set_ring`'s leaked box, never freed.
    unsafe { RING.load(Ordering::Acquire).as_ref() }
}

/// Makes `ring` the one this process's threads append to.
pub fn set_ring(ring: Ring<'static>) {
    RING.store(Box::into_raw(Box::new(ring)), Ordering::Release);
}

/// The live big blocks and arenas; readings copy what they need out of it and measure outside
/// the lock, which the hooks take only for big blocks.
pub static RESIDENCY: SpinLock<Residency> = SpinLock::new(Residency::new());

/// A filter over the addresses of live big blocks, read by every free without a lock: a bit
/// per hash of the address, set while a big block there may be live. A free looks among the big
/// blocks only where its bit is set (wrongly, for one free in hundreds while a hundred big blocks
/// are live). Bits of freed blocks stay set until enough have gone, then the filter is rebuilt
/// from the blocks still live, word by word, so a live block's bit is never seen cleared.
static BIG_FILTER: [AtomicU64; FILTER_WORDS] = [const { AtomicU64::new(0) }; FILTER_WORDS];
const FILTER_WORDS: usize = 1024;
/// Big blocks freed since the filter was last rebuilt.
static STALE_BITS: AtomicUsize = AtomicUsize::new(0);

#[inline(always)]
fn filter_bit(addr: usize) -> (usize, u64) {
    let hash = (addr as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48;
    ((hash as usize / 64) % FILTER_WORDS, 1 << (hash % 64))
}

#[cold]
#[inline(never)]
fn big_block_allocated(addr: usize, size: u64) {
    let mut residency = RESIDENCY.lock();
    residency.allocated(addr, size);
    let (word, bit) = filter_bit(addr);
    BIG_FILTER[word].fetch_or(bit, Ordering::Release);
}

/// Whether a big block may live at `addr` (the filter's bit is set): a free there must ask
/// `big_block_freed`.
#[inline(always)]
fn may_be_big_block(addr: usize) -> bool {
    let (word, bit) = filter_bit(addr);
    BIG_FILTER[word].load(Ordering::Acquire) & bit != 0
}

/// Whether the free of `addr`, where `may_be_big_block` said one may live, was a big block's.
fn big_block_freed(addr: usize) -> bool {
    let mut residency = RESIDENCY.lock();
    let freed = residency.freed(addr);
    if freed && STALE_BITS.fetch_add(1, Ordering::Relaxed) >= FILTER_WORDS {
        STALE_BITS.store(0, Ordering::Relaxed);
        rebuild_filter(&residency);
    }
    freed
}

/// Sets the filter from the big blocks still live. Never inlined: its 8 KiB of words on the stack
/// gave the free hook, where it was inlined, a 16 KiB frame probed page by page at every call.
#[cold]
#[inline(never)]
fn rebuild_filter(residency: &Residency) {
    let mut rebuilt = [0u64; FILTER_WORDS];
    for addr in residency.big_blocks() {
        let (word, bit) = filter_bit(addr);
        rebuilt[word] |= bit;
    }
    for (word, bits) in BIG_FILTER.iter().zip(rebuilt) {
        word.store(bits, Ordering::Release);
    }
}

static NEXT_THREAD: AtomicU32 = AtomicU32::new(1);
static NEXT_GENERATOR: AtomicU64 = AtomicU64::new(1);

/// What a thread keeps, in one thread-local so that a hook reaches all of it with one lookup
/// (each costs a call to __tls_get_addr from a shared library). Const-initialised and without
/// Drop, so reading it never allocates or registers a destructor, even from a raw-domain hook
/// running during thread teardown.
pub struct Local {
    /// Set while this thread is inside one of our hooks: nested allocator calls (pymalloc
    /// handing a large request to the raw domain) pass straight through and count once.
    busy: Cell<bool>,
    /// The thread's number in the records (0 until its first).
    thread: Cell<u32>,
    schedule: Cell<Schedule>,
    allocs: Cell<u64>,
    latest: Cell<usize>,
    /// The innermost profiled frame: its code object (0 if none), the line it runs (0 before
    /// its first), whether it is a generator's or coroutine's and whether it has returned, as
    /// the books will see them: events they would ignore are not sent.
    top_code: Cell<usize>,
    top_lineno: Cell<u32>,
    top_resumable: Cell<bool>,
    top_returned: Cell<bool>,
    /// 3.12+: the innermost profiled frame is a plain function's (docs/design.md, "Recursion
    /// without a wrapper"): it is left at the thread's next event after its return or unwind,
    /// once its teardown is over; for a call that came through memsleuth's vectorcall that event
    /// is usually the end of that call.
    top_inline: Cell<bool>,
    /// Set from such a frame's return or unwind until it is left.
    exit_pending: Cell<bool>,
    /// The code object whose next start event is the call a wrapper entered already (0: none).
    expected_start: Cell<usize>,
    /// The thread's outermost profiled frame is an inline call opened at its start event: of a
    /// function another thread is recursing in.
    unwrapped: Cell<bool>,
    /// The latest reading while the thread has a profiled frame.
    last: Cell<Option<OsReading>>,
    /// When the thread last passed a line boundary or took a reading (`rss::now_us`): a line
    /// that ran long since then makes a reading due.
    boundary_us: Cell<u64>,
    /// Open quiet sections.
    quiet: Cell<u32>,
    /// The RSS of a reading that reached `RSS_LIMIT`, until the next line or return event
    /// asks for the debugger (0: none).
    over_limit: Cell<u64>,
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            busy: Cell::new(false),
            thread: Cell::new(0),
            schedule: Cell::new(Schedule::NEW),
            allocs: Cell::new(0),
            latest: Cell::new(0),
            top_code: Cell::new(0),
            top_lineno: Cell::new(0),
            top_resumable: Cell::new(false),
            top_returned: Cell::new(false),
            top_inline: Cell::new(false),
            exit_pending: Cell::new(false),
            expected_start: Cell::new(0),
            unwrapped: Cell::new(false),
            last: Cell::new(None),
            boundary_us: Cell::new(0),
            quiet: Cell::new(0),
            over_limit: Cell::new(0),
        }
    };
    /// The profiled frames under the innermost, which `Local` mirrors (only touched with the
    /// GIL held, never by a hook).
    static FRAMES: RefCell<Vec<MirroredFrame>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone, Copy)]
struct MirroredFrame {
    func: u32,
    code: usize,
    lineno: u32,
    resumable: bool,
    returned: bool,
    inline: bool,
}

/// The ring is full: wait for the sink, unless it is gone, in which case recording stops
/// (docs/design.md, "The books live in the sink": spin, ring, yield, then sleep).
#[cold]
fn wait_for_room(tries: u32) -> bool {
    if !ENABLED.load(Ordering::Relaxed) {
        return false;
    }
    if tries < SPINS {
        std::hint::spin_loop();
    } else if !crate::sink::make_room(tries - SPINS) {
        ENABLED.store(false, Ordering::Relaxed);
        return false;
    }
    true
}

/// Tries on a full ring spent spinning before `make_room` is asked.
const SPINS: u32 = 64;

impl Local {
    fn id(&self) -> u32 {
        match self.thread.get() {
            0 => {
                let id = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
                self.thread.set(id);
                id
            }
            id => id,
        }
    }

    /// Sends `record`, if this process records (a child forked without a sink of its own does
    /// not: the ring it inherited is its parent's).
    #[inline(always)]
    pub fn emit(&self, record: Record) {
        if !ENABLED.load(Ordering::Relaxed) {
            return;
        }
        if let Some(ring) = ring() {
            let mut words = Words::new();
            record.encode_into(self.id(), &mut words);
            ring.push(words.as_slice(), wait_for_room);
        }
    }

    /// A tracked allocation.
    #[inline(always)]
    pub fn allocated(&self, addr: usize, size: u64, raw: bool) {
        if !ENABLED.load(Ordering::Relaxed) {
            return;
        }
        let mut schedule = self.schedule.get();
        schedule.allocated(size);
        self.schedule.set(schedule);
        self.allocs.set(self.allocs.get() + 1);
        self.latest.set(addr);
        if size >= BIG_BLOCK {
            big_block_allocated(addr, size);
        }
        if let Some(ring) = ring() {
            ring.push(&alloc_words(self.id(), addr as u64, size, raw), wait_for_room);
        }
    }

    /// A free, announced before the block is released, so that a concurrent allocation of the
    /// same address is always recorded after it.
    #[inline(always)]
    pub fn freed(&self, addr: usize, raw: bool) {
        if !ENABLED.load(Ordering::Relaxed) {
            return;
        }
        self.note_free(addr);
        if let Some(ring) = ring() {
            ring.push(&free_words(self.id(), addr as u64, raw), wait_for_room);
        }
    }

    #[inline(always)]
    fn note_free(&self, addr: usize) {
        let mut schedule = self.schedule.get();
        schedule.freed();
        self.schedule.set(schedule);
        if may_be_big_block(addr) {
            self.note_big_free(addr);
        }
    }

    #[cold]
    #[inline(never)]
    fn note_big_free(&self, addr: usize) {
        if big_block_freed(addr) {
            let mut schedule = self.schedule.get();
            schedule.big_event();
            self.schedule.set(schedule);
        }
    }

    pub fn realloc_begins(&self, old: usize, raw: bool) {
        if ENABLED.load(Ordering::Relaxed) && old != 0 {
            self.note_free(old);
            self.emit(Record::ReallocBegin { old: old as u64, raw });
        }
    }

    pub fn realloc_ended(&self, old: usize, new: usize, size: u64, raw: bool) {
        if !ENABLED.load(Ordering::Relaxed) {
            return;
        }
        let mut schedule = self.schedule.get();
        schedule.allocated(size);
        self.schedule.set(schedule);
        if new != 0 {
            self.allocs.set(self.allocs.get() + 1);
            self.latest.set(new);
        }
        if size >= BIG_BLOCK && new != 0 {
            big_block_allocated(new, size);
        }
        self.emit(Record::ReallocEnd { old: old as u64, new: new as u64, size, raw });
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

/// Sends `record` from the calling thread, if this process records.
#[inline]
pub fn emit(record: Record) {
    LOCAL.with(|me| me.emit(record));
}

/// pymalloc mapped or unmapped an arena: residency and the schedule learn of it at once.
pub fn arena(addr: usize, size: u64, mapped: bool) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    RESIDENCY.lock().arena(addr, size, mapped);
    LOCAL.with(|me| {
        let mut schedule = me.schedule.get();
        schedule.big_event();
        me.schedule.set(schedule);
        me.emit(Record::Arena { addr: addr as u64, size, mapped });
    });
}

/// A block the calling thread allocated lately is the profiler's.
#[inline]
pub fn disown(addr: usize) {
    if addr != 0 {
        emit(Record::Disown { addr: addr as u64 });
    }
}

/// A collection starts or stops on this thread; its end makes the next reading due.
pub fn collection(start: bool) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    LOCAL.with(|me| {
        if !start {
            let mut schedule = me.schedule.get();
            schedule.big_event();
            me.schedule.set(schedule);
        }
        me.emit(if start { Record::GcStart } else { Record::GcStop });
    });
}

/// Until `end_quiet`, what this thread allocates is the profiler's own. Returns the depth of
/// quiet sections now open, which `end_quiet` is given back.
pub fn begin_quiet() -> u32 {
    LOCAL.with(|me| {
        let depth = me.quiet.get() + 1;
        me.quiet.set(depth);
        me.emit(Record::QuietBegin);
        depth
    })
}

pub fn end_quiet(depth: u32) {
    LOCAL.with(|me| {
        if me.quiet.get() == depth && depth > 0 {
            me.quiet.set(depth - 1);
            me.emit(Record::QuietEnd);
        }
    });
}

/// The code object of this thread's innermost profiled frame (0 if none).
#[inline(always)]
pub fn top_code() -> usize {
    LOCAL.with(|me| me.top_code.get())
}

/// This thread's allocation count, and the address of its latest allocation.
#[inline(always)]
pub fn latest_alloc() -> (u64, usize) {
    LOCAL.with(|me| (me.allocs.get(), me.latest.get()))
}

/// A reading, if one is due at this line boundary by time or by what the thread allocated and
/// freed, and RSS moved since the last (statm alone tells, a fraction of a reading's cost).
fn due_reading(me: &Local) -> Option<Reading> {
    let now = rss::now_us();
    let line_us = now.wrapping_sub(me.boundary_us.replace(now));
    let mut schedule = me.schedule.get();
    if !schedule.due(now, line_us) {
        return None;
    }
    crate::hooks::verify();
    if !schedule.event_due() && me.last.get().is_some_and(|last| !rss::rss_moved(&last)) {
        schedule.checked(now);
        me.schedule.set(schedule);
        return None;
    }
    schedule.taken(now);
    me.schedule.set(schedule);
    Some(take_reading(me))
}

/// The RSS in bytes at which a reading asks for the debugger (`--pdb-mmem`, memory_profiler's
/// `max_mem`); 0: never. The reading that reaches it sets it back to 0, so that one thread asks
/// once; the debugger's hook arms it again if it wants more.
static RSS_LIMIT: AtomicU64 = AtomicU64::new(0);

pub fn set_rss_limit(bytes: u64) {
    RSS_LIMIT.store(bytes, Ordering::Relaxed);
}

/// Notes a reading that reached `RSS_LIMIT`, for the next line or return event.
fn check_limit(me: &Local, os: &OsReading) {
    let limit = RSS_LIMIT.load(Ordering::Relaxed);
    let rss = os.rss_anon + os.rss_file;
    if limit != 0 && rss >= limit && RSS_LIMIT.compare_exchange(limit, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        me.over_limit.set(rss);
    }
}

/// A line event of the innermost profiled frame, running `code` (others are dropped here), after
/// leaving an inline frame whose exit is pending; `int_obj` is the int the interpreter allocated
/// to pass the line number, if any. Returns the RSS of a reading that reached `RSS_LIMIT` since
/// the last event (0: none).
#[inline]
pub fn line_event(code: usize, lineno: u32, int_obj: Option<usize>) -> u64 {
    LOCAL.with(|me| {
        if me.exit_pending.replace(false) {
            // An inline call returned before this line of its caller: its teardown is over.
            leave_top_of(me);
        }
        if me.top_code.get() != code || !ENABLED.load(Ordering::Relaxed) {
            return 0;
        }
        if let Some(addr) = int_obj {
            me.emit(Record::Disown { addr: addr as u64 });
        }
        if me.top_lineno.get() == lineno {
            return 0;
        }
        // A frame's first line opens at its event; a reading belongs after it (see the ledger's
        // `change_line`): both take what `due_reading` gives.
        let reading = due_reading(me);
        me.top_lineno.set(lineno);
        match (reading, ring()) {
            (None, Some(ring)) => {
                ring.push(&line_words(me.id(), code as u64, lineno), wait_for_room);
            }
            (reading, _) => me.emit(Record::Line { code: code as u64, lineno, reading }),
        }
        me.over_limit.take()
    })
}

/// The innermost profiled frame, running `code`, returns (after leaving an inline frame whose
/// exit is pending); `int_obj` as for `line_event`.
pub fn return_event(code: usize, int_obj: Option<usize>) -> u64 {
    LOCAL.with(|me| {
        if me.exit_pending.replace(false) {
            leave_top_of(me);
        }
        if me.top_code.get() != code || !ENABLED.load(Ordering::Relaxed) {
            return 0;
        }
        if let Some(addr) = int_obj {
            me.emit(Record::Disown { addr: addr as u64 });
        }
        if me.top_resumable.get() || me.top_lineno.get() == 0 || me.top_returned.get() {
            return 0;
        }
        me.top_returned.set(true);
        let reading = due_reading(me);
        me.emit(Record::Return { code: code as u64, reading });
        me.over_limit.take()
    })
}

/// A reading taken now, where a call starts or ends, our hooks checked first (another tool may
/// have replaced them). The hooks are checked where a reading is taken or falls due, not at every
/// call: the check asks CPython for each domain's allocator under its lock, which on 3.12 reads
/// the clock each time, and was a sixth of a tiny nested profiled call's cost.
fn reading_now(me: &Local) -> Reading {
    me.boundary_us.set(rss::now_us());
    crate::hooks::verify();
    take_reading(me)
}

fn take_reading(me: &Local) -> Reading {
    let reading = rss::read();
    me.last.set(Some(reading.os));
    check_limit(me, &reading.os);
    reading
}

fn set_top(me: &Local, frame: Option<MirroredFrame>) {
    let f = frame.unwrap_or(MirroredFrame {
        func: 0,
        code: 0,
        lineno: 0,
        resumable: false,
        returned: false,
        inline: false,
    });
    me.top_code.set(f.code);
    me.top_lineno.set(f.lineno);
    me.top_resumable.set(f.resumable);
    me.top_returned.set(f.returned);
    me.top_inline.set(f.inline);
}

/// Saves the innermost frame's mirror before another goes on top.
fn save_top(me: &Local, frames: &mut [MirroredFrame]) {
    if let Some(top) = frames.last_mut() {
        top.lineno = me.top_lineno.get();
        top.returned = me.top_returned.get();
    }
}

/// A call of profiled function `func` (code object `code`) starts on this thread. The outermost
/// call takes a reading; one inside another profiled call only where one fell due, as a line
/// boundary does (a nested helper called in a hot loop would pay two readings a call).
pub fn enter(func: u32, code: usize, inline: bool) {
    LOCAL.with(|me| {
        if me.exit_pending.replace(false) {
            leave_top_of(me);
        }
        let nested = FRAMES.with_borrow(|frames| !frames.is_empty());
        let reading = if nested { due_reading(me) } else { Some(reading_now(me)) };
        FRAMES.with_borrow_mut(|frames| {
            save_top(me, frames);
            let frame = MirroredFrame { func, code, lineno: 0, resumable: false, returned: false, inline };
            frames.push(frame);
            set_top(me, Some(frame));
        });
        me.emit(Record::Enter { func, reading });
    });
}

/// The innermost profiled call returned or raised; true if no other call of the same function
/// remains on this thread.
pub fn leave() -> bool {
    LOCAL.with(|me| {
        if me.exit_pending.replace(false) {
            leave_top_of(me);
        }
        leave_top_of(me)
    })
}

fn leave_top_of(me: &Local) -> bool {
    let nested = FRAMES.with_borrow(|frames| frames.len() > 1);
    let reading = if nested { due_reading(me) } else { Some(reading_now(me)) };
    me.emit(Record::Leave { reading });
    pop(me).is_some_and(|(func, _)| FRAMES.with_borrow(|frames| frames.iter().all(|f| f.func != func)))
}

/// Takes the innermost frame off the mirror: (its function, the line it was on).
fn pop(me: &Local) -> Option<(u32, u32)> {
    let lineno = me.top_lineno.get();
    FRAMES.with_borrow_mut(|frames| {
        let popped = frames.pop()?;
        set_top(me, frames.last().copied());
        if frames.is_empty() {
            me.last.set(None);
            me.unwrapped.set(false);
        }
        Some((popped.func, lineno))
    })
}

/// A generator's or coroutine's frame, as its driver holds it between steps.
pub struct GeneratorFrame {
    id: u64,
    func: u32,
    code: usize,
    /// The line it yielded from (0 before it started).
    lineno: u32,
    running: bool,
}

impl GeneratorFrame {
    pub fn new(func: u32) -> Self {
        let id = NEXT_GENERATOR.fetch_add(1, Ordering::Relaxed);
        emit(Record::GenNew { gen: id, func });
        GeneratorFrame { id, func, code: code_of(func), lineno: 0, running: false }
    }

    pub fn resume(&mut self) {
        if self.running {
            return;
        }
        leave_pending();
        self.running = true;
        LOCAL.with(|me| {
            let reading = reading_now(me);
            FRAMES.with_borrow_mut(|frames| {
                save_top(me, frames);
                let frame = MirroredFrame {
                    func: self.func,
                    code: self.code,
                    lineno: self.lineno,
                    resumable: true,
                    returned: false,
                    inline: false,
                };
                frames.push(frame);
                set_top(me, Some(frame));
            });
            me.emit(Record::Resume { gen: self.id, reading });
        });
    }

    pub fn suspend(&mut self) {
        if !self.running {
            return;
        }
        leave_pending();
        self.running = false;
        LOCAL.with(|me| {
            let reading = reading_now(me);
            me.emit(Record::Suspend { gen: self.id, reading });
            if let Some((_, lineno)) = pop(me) {
                self.lineno = lineno;
            }
        });
    }
}

impl Drop for GeneratorFrame {
    fn drop(&mut self) {
        emit(Record::GenDrop { gen: self.id });
    }
}

/// Profiled functions' code objects and registrations, by function number.
static REGISTRY: Mutex<Vec<(usize, Record)>> = Mutex::new(Vec::new());

/// The number of the function with code object `code`, registering it (the books number
/// functions in the same order) if it is new.
pub fn register(code: usize, make: impl FnOnce() -> Record) -> u32 {
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = registry.iter().position(|(c, _)| *c == code) {
        return i as u32;
    }
    let record = make();
    emit(record.clone());
    registry.push((code, record));
    (registry.len() - 1) as u32
}

fn code_of(func: u32) -> usize {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).get(func as usize).map_or(0, |(code, _)| *code)
}

/// `enter`, by function number.
pub fn enter_func(func: u32) {
    enter(func, code_of(func), false);
}

/// The thread's profiled frames, counted.
pub fn depth() -> usize {
    FRAMES.with_borrow(Vec::len)
}

/// 3.12+: a call of `func` (running `code`) through its vectorcall starts. Returns whether the
/// thread was already in a call of `func` (recursion), and the thread's profiled depth with this
/// call open, for `leave_wrapped`.
pub fn enter_wrapped(func: u32, code: usize) -> (bool, usize) {
    let recursive = FRAMES.with_borrow(|frames| frames.iter().any(|f| f.func == func));
    enter(func, code, true);
    (recursive, depth())
}

/// 3.12+: that call ended. Its frame is left here unless a profiled call inside its teardown (a
/// `__del__`'s) left it already, at that call's start. True if no other call of `func` remains
/// on the thread.
pub fn leave_wrapped(func: u32, depth_open: usize) -> bool {
    if depth() != depth_open {
        return FRAMES.with_borrow(|frames| frames.iter().all(|f| f.func != func));
    }
    // The exit its return or unwind left pending is this one.
    LOCAL.with(|me| {
        me.exit_pending.set(false);
        leave_top_of(me)
    })
}

/// 3.12+: the next start event of `code` on this thread is the call a wrapper has just entered
/// (0: none is).
pub fn expect_start(code: usize) {
    LOCAL.with(|me| me.expected_start.set(code));
}

/// 3.12+: a frame of `code` starts. True if it is a call to enter: not the one a wrapper
/// entered already.
pub fn start_is_new(code: usize) -> bool {
    LOCAL.with(|me| me.expected_start.replace(0) != code)
}

/// 3.12+: an inline call opened at its start event has just been entered; if it is the thread's
/// outermost, no wrapper will close it.
pub fn entered_unwrapped() {
    if depth() == 1 {
        LOCAL.with(|me| me.unwrapped.set(true));
    }
}

/// 3.12+: the innermost profiled frame, running `code`, returned or is unwinding; if the
/// interpreter called it inline, it is left at the thread's next event. An outermost one no
/// wrapper entered is left now: nothing of memsleuth's runs on its thread after its teardown.
/// Returns true if that call was left and no other call of its function remains on the thread.
pub fn inline_frame_exits(code: usize) -> bool {
    LOCAL.with(|me| {
        if me.top_code.get() != code || !me.top_inline.get() {
            return false;
        }
        if me.unwrapped.get() && depth() == 1 {
            return leave_top_of(me);
        }
        me.exit_pending.set(true);
        false
    })
}

/// Leaves the inline frame whose exit is pending, if any (its teardown is over: the thread has
/// moved on to another event).
#[inline(always)]
pub fn leave_pending() {
    LOCAL.with(|me| {
        if me.exit_pending.replace(false) {
            leave_top_of(me);
        }
    });
}

/// Allocations this thread's hooks saw: a probe allocating one block sees it counted only if
/// they saw it.
pub fn allocs_seen() -> u64 {
    LOCAL.with(|me| me.allocs.get())
}

/// In a forked child: it records nothing unless it is given a sink of its own (`resume`).
pub fn after_fork_in_child() {
    ENABLED.store(false, Ordering::Relaxed);
}

/// Recording starts again, into a new ring (a forked child with a sink of its own), whose
/// sink first learns the functions registered so far, under the same numbers.
pub fn resume() {
    ENABLED.store(true, Ordering::Relaxed);
    for (_, record) in REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        emit(record.clone());
    }
}
