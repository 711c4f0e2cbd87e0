//! Line events. From CPython 3.12 sys.monitoring delivers LINE and PY_RETURN events for the
//! profiled code objects only (registered from Python, calling `line_event`), and PY_START and
//! PY_UNWIND for the calls a recursing profiled function makes inline (docs/design.md,
//! "Recursion without a wrapper"). Before 3.12 a C-level trace
//! function is installed on a thread only while it has a profiled call on its stack; it turns
//! line events off (`f_trace_lines`) in every other frame as the frame starts, and drops any
//! other stray event with one comparison, before taking any lock. Where another tool's trace
//! function was in place, memsleuth's chains to it: every frame then keeps its line events, and
//! each event passes through a quiet section for what that tool allocates.

use crate::cfunction::FastFunction;
use crate::compat::{self, current_profile, current_trace};
use crate::state::{self, latest_alloc, top_code};
use pyo3::prelude::*;
use pyo3_ffi::{
    PyBaseExceptionObject, PyCFunction_CheckExact, PyCMethod_CheckExact, PyErr_Clear, PyErr_GivenExceptionMatches,
    PyEval_SetProfile, PyExc_StopIteration, PyExceptionInstance_Check, PyFrameObject, PyFrame_GetCode,
    PyFrame_GetLineNumber, PyLong_AsLong, PyLong_CheckExact, PyObject, PyObject_CallNoArgs, PyTrace_CALL,
    PyTrace_C_CALL, PyTrace_C_RETURN, PyTrace_EXCEPTION, PyTrace_LINE, PyTrace_RETURN, PyTuple_Check, PyTuple_GetItem,
    PyTuple_Size, Py_DecRef, Py_INCREF, Py_None, Py_REFCNT, Py_ssize_t,
};
use std::cell::Cell;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

/// On 3.11 the trace function makes the interpreter materialise a frame object for every call;
/// those objects are the profiler's, not the program's.
pub static FRAME_OBJECTS_ARE_OURS: AtomicBool = AtomicBool::new(false);

/// Whether line events come from the C trace function (before 3.12).
pub static USES_TRACE: AtomicBool = AtomicBool::new(false);

/// The trace function memsleuth's took over on this thread (a coverage tool's, a debugger's),
/// with its object, to which every event is passed on, and which is put back when the thread's
/// last profiled call ends.
#[derive(Clone, Copy)]
struct Chained {
    func: Option<pyo3_ffi::Py_tracefunc>,
    /// A reference memsleuth owns while it holds the function (null if none).
    obj: *mut PyObject,
}

thread_local! {
    /// Const-initialised and without Drop, like the hooks' thread-local.
    static CHAINED: Cell<Chained> = const { Cell::new(Chained { func: None, obj: std::ptr::null_mut() }) };
}

/// Starts or stops the C trace function on the calling thread (GIL held). Starting takes over
/// the trace function in place, chaining to it; stopping puts it back, unless the program has
/// installed another one meanwhile, which is then left in place.
///
/// While tracing, the interpreter makes a bound method object for each call of a C method
/// (`l.append(x)`) to pass to a profile function; memsleuth's `profile` takes it out of the
/// figures, and is installed only where the thread has no profiler of its own, and removed only
/// if still there.
pub fn set_thread_tracing(on: bool) {
    set_thread_trace_function(on);
    let still_ours = || current_profile().map_or_else(no_profiler, |f| f == profile as *const () as usize);
    let change = if on { no_profiler() && !PROFILING.replace(true) } else { PROFILING.replace(false) && still_ours() };
    if change {
        let func: Option<pyo3_ffi::Py_tracefunc> = if on { Some(profile) } else { None };
        // SAFETY: GIL held, on the thread whose profiling changes; `profile` has the
        // Py_tracefunc signature and needs no argument object.
        unsafe { PyEval_SetProfile(func, std::ptr::null_mut()) };
    }
}

fn set_thread_trace_function(on: bool) {
    let ours = trace as *const () as usize;
    let current = current_trace();
    if on {
        if current.is_some_and(|(func, _)| func == ours) {
            return;
        }
        let chained = match current {
            // SAFETY: a non-zero word in the trace function slot is a Py_tracefunc.
            Some((func, obj)) if func != 0 => {
                Chained { func: Some(unsafe { std::mem::transmute::<usize, pyo3_ffi::Py_tracefunc>(func) }), obj }
            }
            _ => Chained { func: None, obj: std::ptr::null_mut() },
        };
        // SAFETY: GIL held; `obj` is the live object of the trace function in place, or null: a
        // reference is taken before PyEval_SetTrace releases the thread state's own. It is also
        // handed to our function as its argument, so sys.gettrace() still returns it.
        unsafe {
            if !chained.obj.is_null() {
                Py_INCREF(chained.obj);
            }
            CHAINED.with(|c| c.set(chained));
            pyo3_ffi::PyEval_SetTrace(Some(trace), chained.obj);
        }
    } else {
        let chained = CHAINED.with(|c| c.replace(Chained { func: None, obj: std::ptr::null_mut() }));
        // SAFETY: GIL held; `chained.obj` is the reference taken when tracing started (or null),
        // released once PyEval_SetTrace has taken its own.
        unsafe {
            if current.is_none_or(|(func, _)| func == ours) {
                pyo3_ffi::PyEval_SetTrace(chained.func, chained.obj);
            }
            if !chained.obj.is_null() {
                Py_DecRef(chained.obj);
            }
        }
    }
}

/// `sys.settrace` was called on a thread that memsleuth traces: the new function becomes the one
/// memsleuth chains to, and memsleuth's own goes back in place, so neither loses events.
pub fn retake_thread_tracing() {
    if top_code() == 0 || !USES_TRACE.load(Ordering::Relaxed) {
        return;
    }
    set_thread_trace_function(false);
    set_thread_trace_function(true);
    if CHAINED.with(Cell::get).func.is_some() {
        restore_line_events_on_stack();
    }
}

/// Gives every frame on this thread's stack its line events back (frames memsleuth started
/// while it chained to nothing have them off), so that a trace function installed now, a
/// debugger's, can step through them as it could without memsleuth.
fn restore_line_events_on_stack() {
    let offset = compat::trace_lines_offset();
    if offset == 0 {
        return;
    }
    // On 3.11 the walk makes frame objects for frames that had none: they are the profiler's.
    let quiet = state::begin_quiet();
    // SAFETY: GIL held. PyEval_GetFrame returns a borrowed frame (or null), taken as a new
    // reference here; PyFrame_GetBack returns a new reference (or null); each frame is released
    // after its successor is fetched. `offset` is the verified f_trace_lines byte.
    unsafe {
        let mut frame = pyo3_ffi::PyEval_GetFrame();
        if !frame.is_null() {
            Py_INCREF(frame as *mut PyObject);
        }
        while !frame.is_null() {
            *(frame as *mut u8).add(offset) = 1;
            let back = pyo3_ffi::PyFrame_GetBack(frame);
            Py_DecRef(frame as *mut PyObject);
            frame = back;
        }
    }
    state::end_quiet(quiet);
}

/// `sys.getprofile`, held for the life of the process (before 3.12).
static GETPROFILE: AtomicPtr<PyObject> = AtomicPtr::new(std::ptr::null_mut());

thread_local! {
    /// Whether this thread's profile function is memsleuth's `profile`.
    static PROFILING: Cell<bool> = const { Cell::new(false) };
    /// This thread's allocation count at its latest return event.
    static ALLOCS_AT_RETURN: Cell<u64> = const { Cell::new(0) };
}

/// Keeps `sys.getprofile` for `set_thread_tracing`, fetched now: fetched on first use, its
/// lookup's objects would be charged to a line.
pub fn keep_getprofile(py: Python<'_>) -> PyResult<()> {
    let getprofile = py.import("sys")?.getattr("getprofile")?;
    GETPROFILE.store(getprofile.into_ptr(), Ordering::Relaxed);
    Ok(())
}

/// Whether the calling thread has no profile function: read from the thread state where its
/// slot is known (a C profiler installed without an object, as yappi's, shows as None in
/// `sys.getprofile`), else from `sys.getprofile`.
fn no_profiler() -> bool {
    if let Some(func) = current_profile() {
        return func == 0;
    }
    let getprofile = GETPROFILE.load(Ordering::Relaxed);
    if getprofile.is_null() {
        return false;
    }
    // SAFETY: GIL held; `getprofile` is a live function taking no argument, whose call returns
    // a new reference to an existing object (nothing is allocated) or null with an exception,
    // cleared here.
    unsafe {
        let current = PyObject_CallNoArgs(getprofile);
        if current.is_null() {
            PyErr_Clear();
            return false;
        }
        Py_DecRef(current);
        current == Py_None()
    }
}

/// The profile function used while tracing before 3.12.
///
/// # Safety
/// Called by the interpreter with the GIL held; `arg` is a C call's callable for C_CALL.
pub unsafe extern "C" fn profile(
    _obj: *mut PyObject,
    _frame: *mut PyFrameObject,
    what: c_int,
    arg: *mut PyObject,
) -> c_int {
    if what == PyTrace_C_CALL {
        // SAFETY: `arg` is a live object; the checks only read its header.
        let bound =
            unsafe { (PyCFunction_CheckExact(arg) != 0 || PyCMethod_CheckExact(arg) != 0) && Py_REFCNT(arg) == 1 };
        if bound {
            // The interpreter's bound method is made just before this event and held by it
            // alone: the thread's latest allocation, made since the latest return (a bound
            // method a call returned is the program's).
            let block = compat::gc_block(arg as usize);
            let (allocs, latest) = latest_alloc();
            if latest == block && allocs != ALLOCS_AT_RETURN.get() {
                state::disown(block);
            }
        }
    } else if what == PyTrace_RETURN || what == PyTrace_C_RETURN {
        ALLOCS_AT_RETURN.set(latest_alloc().0);
    }
    0
}

/// A line event for `code` at `lineno`; `int_obj` is the int object the interpreter allocated to
/// pass the line number, if any, so it can be taken out of the figures.
#[inline]
pub fn line_event(code: usize, lineno: u32, int_obj: Option<usize>) {
    at_boundary(state::line_event(code, lineno, int_obj));
}

/// The frame running `code` returns; `int_obj` as for `line_event`, made for this event.
fn return_event(code: usize, int_obj: Option<usize>) {
    at_boundary(state::return_event(code, int_obj));
}

/// After a line or return event: `over` is the RSS of a reading that reached the limit (0: none).
#[inline]
fn at_boundary(over: u64) {
    if over != 0 {
        over_limit(over);
    }
}

/// What a reading that reached the RSS limit calls, with the RSS in bytes, from the profiled
/// frame's event (memsleuth.compat's `_stop_in_debugger`, which finds the frame as its caller).
static OVER_LIMIT_HOOK: Mutex<Option<Py<PyAny>>> = Mutex::new(None);

/// Calls `hook(rss_bytes)` at the first line or return event of a profiled frame after a
/// reading saw RSS at or over `bytes` (0: never).
pub fn set_rss_limit(bytes: u64, hook: Option<Py<PyAny>>) {
    *OVER_LIMIT_HOOK.lock().unwrap_or_else(|e| e.into_inner()) = hook;
    state::set_rss_limit(bytes);
}

#[cold]
fn over_limit(rss: u64) {
    Python::attach(|py| {
        let hook = OVER_LIMIT_HOOK.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|h| h.clone_ref(py));
        if let Some(hook) = hook {
            // A failing hook must not fail the program's line: Python reports it as unraisable.
            if let Err(err) = hook.call1(py, (rss,)) {
                err.write_unraisable(py, Some(hook.bind(py)));
            }
        }
    });
}

/// Identity of a frame's code object.
///
/// # Safety
/// `frame` must be a live frame (the GIL held).
unsafe fn frame_code(frame: *mut PyFrameObject) -> usize {
    // SAFETY: per the contract; PyFrame_GetCode returns a new reference that is released at
    // once (the frame keeps the code alive), without allocating.
    unsafe {
        let code = PyFrame_GetCode(frame) as *mut PyObject;
        Py_DecRef(code);
        code as usize
    }
}

/// Code objects of memsleuth's generator driver, whose frames receive the StopIteration that
/// ends each driven generator, coroutine or step.
static DRIVER_CODE: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

/// Records the driver's code objects (at most four; they live as long as the process).
pub fn set_driver_code(codes: &[Bound<'_, PyAny>]) {
    for (slot, code) in DRIVER_CODE.iter().zip(codes) {
        slot.store(code.as_ptr() as usize, Ordering::Relaxed);
    }
}

fn is_driver_code(code: usize) -> bool {
    DRIVER_CODE.iter().any(|slot| slot.load(Ordering::Relaxed) == code)
}

/// A StopIteration reaching the driver is reported to the trace function, and for that the
/// interpreter instantiates it (and packs the event's tuple): objects that exist only because
/// memsleuth traces, so they are the profiler's.
///
/// # Safety
/// `event` must be the argument of an exception event, a live (type, value, traceback) tuple, or
/// null (GIL held).
unsafe fn disown_stop_iteration(event: *mut PyObject) {
    // SAFETY: `event` is live if not null; the checks neither allocate nor raise.
    let is_triple = !event.is_null() && unsafe { PyTuple_Check(event) != 0 && PyTuple_Size(event) == 3 };
    if !is_triple {
        return;
    }
    // SAFETY: a tuple of three; the item is borrowed from it, which holds it.
    let value = unsafe { PyTuple_GetItem(event, 1) };
    // SAFETY: `value` is live when not null; neither check allocates.
    let is_stop = !value.is_null()
        && unsafe {
            PyExceptionInstance_Check(value) != 0 && PyErr_GivenExceptionMatches(value, PyExc_StopIteration) != 0
        };
    if !is_stop {
        return;
    }
    // SAFETY: `value` is a live exception instance.
    let [exception, args] = unsafe { exception_blocks(value) };
    for block in [compat::gc_block(event as usize), exception, args] {
        state::disown(block);
    }
}

/// The blocks of an exception instance: the object and its args tuple (0 if it has none), each
/// after its GC header.
///
/// # Safety
/// `exception` must be a live exception instance (GIL held).
pub unsafe fn exception_blocks(exception: *mut PyObject) -> [usize; 2] {
    // SAFETY: per the contract, `exception` begins with this layout; the field is only read.
    let args = unsafe { (*(exception as *const PyBaseExceptionObject)).args } as usize;
    [compat::gc_block(exception as usize), compat::gc_block(args)]
}

/// The C trace function used before 3.12.
///
/// # Safety
/// Called by the interpreter with the GIL held and a valid frame.
pub unsafe extern "C" fn trace(
    _obj: *mut PyObject,
    frame: *mut PyFrameObject,
    what: c_int,
    arg: *mut PyObject,
) -> c_int {
    let chained = CHAINED.with(Cell::get);
    if let Some(func) = chained.func {
        // What the other tool allocates is neither the program's nor a line's.
        let quiet = state::begin_quiet();
        // SAFETY: the interpreter's arguments, passed on to the trace function that was in place,
        // with its own object (alive: memsleuth holds a reference while chaining).
        let status = unsafe { func(chained.obj, frame, what, arg) };
        state::end_quiet(quiet);
        if status != 0 {
            return -1;
        }
    }
    if what == PyTrace_LINE {
        // SAFETY: the interpreter passes a live frame.
        let code = unsafe { frame_code(frame) };
        if top_code() != code {
            return 0;
        }
        // SAFETY: as above; during tracing the frame's line number is current.
        let lineno = unsafe { PyFrame_GetLineNumber(frame) };
        line_event(code, lineno.max(0) as u32, None);
    } else if what == PyTrace_CALL {
        // SAFETY: the interpreter passes a live frame.
        let code = unsafe { frame_code(frame) };
        if FRAME_OBJECTS_ARE_OURS.load(Ordering::Relaxed) {
            let frame_block = compat::gc_block(frame as usize);
            // SAFETY: `code` is a live code object of 3.11.
            let line_array = unsafe { compat::line_array_311(code) };
            state::disown(frame_block);
            state::disown(line_array);
        }
        // A frame memsleuth does not profile needs no line events, unless a chained trace
        // function wants them; a profiled frame needs them whatever the chained one decided.
        let offset = compat::trace_lines_offset();
        let profiled = top_code() == code;
        if offset != 0 && (profiled || chained.func.is_none()) {
            // SAFETY: `offset` was verified by `calibrate` to be the frame's f_trace_lines byte
            // on this interpreter; writing there only starts or stops line events.
            unsafe { *(frame as *mut u8).add(offset) = u8::from(profiled) };
        }
    } else if what == PyTrace_EXCEPTION {
        // SAFETY: the interpreter passes a live frame.
        if is_driver_code(unsafe { frame_code(frame) }) {
            // SAFETY: `arg` is an exception event's argument.
            unsafe { disown_stop_iteration(arg) };
        }
    } else if what == PyTrace_RETURN {
        // SAFETY: the interpreter passes a live frame.
        let code = unsafe { frame_code(frame) };
        if FRAME_OBJECTS_ARE_OURS.load(Ordering::Relaxed) {
            // A generator's frame, resumed without one, gets its frame object for this event.
            // Other frames got theirs at their CALL event: they are skipped before taking the
            // lock.
            // SAFETY: `code` is a live code object of 3.11.
            let generator_like = unsafe { compat::maybe_generator_311(code) };
            if generator_like {
                let frame_block = compat::gc_block(frame as usize);
                state::disown(frame_block);
            }
        }
        // `arg` is null when the frame exits by an exception, for which 3.12's PY_RETURN does
        // not fire either: on every version the unwinding's frees stay on the raising line.
        if !arg.is_null() && top_code() == code {
            return_event(code, None);
        }
    }
    0
}

/// The LINE callback of sys.monitoring (3.12+): `callback(code, line_number)`.
///
/// A bare fastcall function (see `cfunction`).
///
/// # Safety
/// Called by the interpreter with the GIL held and `nargs` valid argument pointers.
unsafe extern "C" fn line_callback(
    _module: *mut PyObject,
    args: *mut *mut PyObject,
    nargs: Py_ssize_t,
) -> *mut PyObject {
    if nargs == 2 {
        // SAFETY: the interpreter passes `nargs` live references in `args`.
        let (code, line) = unsafe { (*args, *args.add(1)) };
        // SAFETY: `line` is a live object, read directly only when it is an exact int and the
        // layout was verified; PyLong_AsLong accepts any object and reports a non-int with -1
        // and an exception, cleared below (the callback must not fail).
        let lineno = unsafe {
            let direct = compat::ints_readable() && PyLong_CheckExact(line) != 0;
            match direct.then(|| compat::one_digit_value(line)).flatten() {
                Some(value) => i64::from(value),
                None => PyLong_AsLong(line) as i64,
            }
        };
        if let Ok(lineno) = u32::try_from(lineno) {
            // Ints beyond the small-int cache are allocated for each callback: they are ours.
            let int_obj = (lineno > 256).then_some(line as usize);
            line_event(code as usize, lineno, int_obj);
        } else {
            // SAFETY: GIL held.
            unsafe { PyErr_Clear() };
        }
    }
    // SAFETY: GIL held; the callback returns a new reference to None.
    unsafe { crate::cfunction::new_none() }
}

/// The PY_RETURN callback of sys.monitoring (3.12+): `callback(code, instruction_offset, retval)`.
///
/// # Safety
/// Called by the interpreter with the GIL held and `nargs` valid argument pointers.
unsafe extern "C" fn return_callback(
    _module: *mut PyObject,
    args: *mut *mut PyObject,
    nargs: Py_ssize_t,
) -> *mut PyObject {
    if nargs == 3 {
        // SAFETY: the interpreter passes `nargs` live references in `args`.
        let (code, offset) = unsafe { (*args, *args.add(1)) };
        // An offset beyond the small-int cache is an int made for this callback: it is ours
        // (a cached one was never allocated, so no figure holds it).
        return_event(code as usize, Some(offset as usize));
        // SAFETY: GIL held, no exception pending in a callback.
        return unsafe { frame_exits(code as usize) };
    }
    // SAFETY: GIL held; the callback returns a new reference to None.
    unsafe { crate::cfunction::new_none() }
}

/// A profiled frame running `code` returned or is unwinding (3.12+): the exit of a call the
/// interpreter made inline is noted, and one that is its thread's outermost and that no wrapper
/// entered closes here, printing its table. Returns what the callback returns: None, or null
/// with an interrupt set that arrived while the table printed.
///
/// # Safety
/// GIL held, no exception pending (the interpreter holds an unwinding exception aside while
/// callbacks run).
unsafe fn frame_exits(code: usize) -> *mut PyObject {
    // SAFETY: per the contract.
    if state::inline_frame_exits(code) && !unsafe { crate::profiled::report_unwrapped(code) } {
        return std::ptr::null_mut();
    }
    // SAFETY: GIL held; a new reference to None.
    unsafe { crate::cfunction::new_none() }
}

/// The PY_START callback of sys.monitoring (3.12+): `callback(code, instruction_offset)`. A
/// profiled function's frame starts: unless the call came through memsleuth's vectorcall, which
/// opened it already, the call the interpreter made inline opens here.
///
/// # Safety
/// Called by the interpreter with the GIL held and `nargs` valid argument pointers.
unsafe extern "C" fn start_callback(
    _module: *mut PyObject,
    args: *mut *mut PyObject,
    nargs: Py_ssize_t,
) -> *mut PyObject {
    if nargs >= 1 {
        // SAFETY: the interpreter passes `nargs` live references in `args`.
        let code = unsafe { *args } as usize;
        state::leave_pending();
        if state::start_is_new(code) {
            if let Some(fid) = crate::profiled::profiled_code(code) {
                state::enter(fid, code, true);
                state::entered_unwrapped();
            }
        }
    }
    // SAFETY: GIL held; the callback returns a new reference to None.
    unsafe { crate::cfunction::new_none() }
}

/// The PY_UNWIND callback of sys.monitoring (3.12+): `callback(code, instruction_offset,
/// exception)`. An exception leaves a profiled frame; its unwinding's frees stay on the raising
/// line until the frame is left.
///
/// # Safety
/// Called by the interpreter with the GIL held and `nargs` valid argument pointers.
unsafe extern "C" fn unwind_callback(
    _module: *mut PyObject,
    args: *mut *mut PyObject,
    nargs: Py_ssize_t,
) -> *mut PyObject {
    if nargs >= 1 {
        // SAFETY: the interpreter passes `nargs` live references in `args`.
        let code = unsafe { *args } as usize;
        state::leave_pending();
        // SAFETY: GIL held; the interpreter holds the unwinding exception aside while callbacks
        // run, so none is pending.
        return unsafe { frame_exits(code) };
    }
    // SAFETY: GIL held; the callback returns a new reference to None.
    unsafe { crate::cfunction::new_none() }
}

/// The PY_START callback's function object is made from this.
pub static START_CALLBACK: FastFunction =
    FastFunction::new(c"start_event", c"The PY_START callback of sys.monitoring (3.12+).", start_callback);

/// The PY_UNWIND callback's function object is made from this.
pub static UNWIND_CALLBACK: FastFunction =
    FastFunction::new(c"unwind_event", c"The PY_UNWIND callback of sys.monitoring (3.12+).", unwind_callback);

/// The PY_RETURN callback's function object is made from this.
pub static RETURN_CALLBACK: FastFunction =
    FastFunction::new(c"return_event", c"The PY_RETURN callback of sys.monitoring (3.12+).", return_callback);

/// The LINE callback's function object is made from this.
pub static LINE_CALLBACK: FastFunction =
    FastFunction::new(c"line_event", c"The LINE callback of sys.monitoring (3.12+).", line_callback);
