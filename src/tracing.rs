//! Line events. From CPython 3.12 sys.monitoring delivers LINE events for the profiled code
//! objects only (registered from Python, calling `line_event`). Before 3.12 a C-level trace
//! function is installed on a thread only while it has a profiled call on its stack; it turns
//! line events off (`f_trace_lines`) in every other frame as the frame starts, and drops any
//! other stray event with one comparison, before taking any lock. Where another tool's trace
//! function was in place, memsleuth's chains to it: every frame then keeps its line events, and
//! each event passes through a quiet section for what that tool allocates.

use crate::cfunction::FastFunction;
use crate::hooks;
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

/// On 3.11 the trace function makes the interpreter materialise a frame object for every call;
/// those objects are the profiler's, not the program's.
pub static FRAME_OBJECTS_ARE_OURS: AtomicBool = AtomicBool::new(false);

/// Size of PyGC_Head, which precedes a GC-tracked object inside its allocated block.
pub const GC_HEAD: usize = 16;

/// Whether line events come from the C trace function (before 3.12).
pub static USES_TRACE: AtomicBool = AtomicBool::new(false);

/// Offset of `f_trace_lines` in PyFrameObject, once verified on a live frame; 0 when unknown.
static TRACE_LINES_OFFSET: AtomicUsize = AtomicUsize::new(0);

/// Where `f_trace_lines` lies in the frame struct of 3.9, 3.10 and 3.11 (private layouts, so
/// `calibrate` checks the guess on a real frame before it is ever written).
fn trace_lines_offset_guess(python_minor: u32) -> Option<usize> {
    match python_minor {
        9 => Some(88),
        10 => Some(84),
        11 => Some(44),
        _ => None,
    }
}

/// Whether code objects have the private layout of 3.11 read below, verified by `calibrate`.
static CODE_LAYOUT_311: AtomicBool = AtomicBool::new(false);

/// Where 3.11's code object keeps `_co_linearray`: the line of each instruction, made the first
/// time the code is traced, so the tracer's (the CALL event hands it to the profiler).
const LINE_ARRAY_OFFSET_311: usize = 160;
/// Where it keeps `co_flags`.
const FLAGS_OFFSET_311: usize = 48;
/// The object fields `calibrate` checks the layout by.
const CHECKED_CODE_FIELDS_311: [(usize, &str); 4] =
    [(112, "co_filename"), (120, "co_name"), (128, "co_qualname"), (136, "co_linetable")];
/// CO_GENERATOR, CO_COROUTINE, CO_ITERABLE_COROUTINE and CO_ASYNC_GENERATOR.
const GENERATOR_FLAGS: i32 = 0x20 | 0x80 | 0x100 | 0x200;

/// A field of a 3.11 code object, read as `T`.
///
/// # Safety
/// `code` must be a live code object of 3.11, and `offset` one of the offsets above, with `T`
/// that field's type.
unsafe fn code_field<T: Copy>(code: usize, offset: usize) -> T {
    // SAFETY: per the contract, the field lies inside the object (before its variable-size
    // bytecode).
    unsafe { *((code + offset) as *const T) }
}

/// Calibrates the C trace function on `frame`: the `f_trace_lines` offset (verified by toggling
/// the attribute through Python and watching the byte, enabling per-frame line switching only
/// if both values read back), and on 3.11 the code object's layout (verified by finding its
/// fields where that layout puts them).
pub fn calibrate(frame: &Bound<'_, PyAny>, python_minor: u32) -> PyResult<()> {
    if python_minor == 11 {
        let code = frame.getattr("f_code")?;
        let address = code.as_ptr() as usize;
        // SAFETY: a live 3.11 code object (python_minor says so), held by `code`; the reads
        // only fetch values to compare.
        let mut layout_holds =
            unsafe { code_field::<i32>(address, FLAGS_OFFSET_311) } == code.getattr("co_flags")?.extract::<i32>()?;
        for (offset, name) in CHECKED_CODE_FIELDS_311 {
            // SAFETY: as above.
            layout_holds &= unsafe { code_field::<usize>(address, offset) } == code.getattr(name)?.as_ptr() as usize;
        }
        CODE_LAYOUT_311.store(layout_holds, Ordering::Relaxed);
    }
    calibrate_trace_lines(frame, python_minor)
}

fn calibrate_trace_lines(frame: &Bound<'_, PyAny>, python_minor: u32) -> PyResult<()> {
    let Some(offset) = trace_lines_offset_guess(python_minor) else { return Ok(()) };
    let byte = || {
        // SAFETY: `offset` lies inside the frame object on these versions (a char field after
        // the object header and a few pointers), and the object is alive while we hold `frame`.
        unsafe { *(frame.as_ptr() as *const u8).add(offset) }
    };
    let original = frame.getattr("f_trace_lines")?;
    frame.setattr("f_trace_lines", false)?;
    let off = byte();
    frame.setattr("f_trace_lines", true)?;
    let on = byte();
    frame.setattr("f_trace_lines", original)?;
    if off == 0 && on == 1 {
        TRACE_LINES_OFFSET.store(offset, Ordering::Relaxed);
    }
    Ok(())
}

/// Where PyThreadState keeps `c_tracefunc` and `c_traceobj`, in words from its start, once
/// `calibrate_trace_slots` has found them (private fields of 3.9-3.11); 0 while unknown.
static TRACE_FUNC_WORD: AtomicUsize = AtomicUsize::new(0);
static TRACE_OBJ_WORD: AtomicUsize = AtomicUsize::new(0);
/// How far into PyThreadState the search goes: every version's struct is larger, and the fields
/// lie within the first 14 words on 3.9-3.11.
const THREAD_STATE_WORDS: usize = 16;

/// Finds the thread state's trace function and object by installing `trace` with a sentinel
/// object and looking for both values, which must each appear exactly once among words that
/// changed. `current` is what `sys.gettrace()` returned, held by the caller, so that the trace
/// function in place (a coverage tool's, a debugger's) is put back as it was.
pub fn calibrate_trace_slots(py: Python<'_>, current: &Bound<'_, PyAny>) -> PyResult<()> {
    let sentinel = pyo3::types::PyTuple::empty(py);
    // SAFETY: GIL held; `trace` has the Py_tracefunc signature, and PyEval_SetTrace takes its own
    // reference to the object it installs.
    let (before, after) = unsafe { thread_state_change(|| pyo3_ffi::PyEval_SetTrace(Some(trace), sentinel.as_ptr())) };
    let func_word = only_word_changed_to(&before, &after, trace as *const () as usize);
    let obj_word = only_word_changed_to(&before, &after, sentinel.as_ptr() as usize);
    // Put back what was there: its function is still in `before`, its object is `current`.
    let previous_obj = if current.is_none() { std::ptr::null_mut() } else { current.as_ptr() };
    if let (Some(func_word), Some(obj_word)) = (func_word, obj_word) {
        TRACE_FUNC_WORD.store(func_word, Ordering::Relaxed);
        TRACE_OBJ_WORD.store(obj_word, Ordering::Relaxed);
    }
    if func_word.is_some() || previous_obj.is_null() {
        let previous = func_word.map(|i| before[i]).filter(|&f| f != 0);
        // SAFETY: GIL held; a non-zero word in the trace function's slot is a Py_tracefunc, and
        // `previous_obj` is alive (the caller holds `current`).
        unsafe { pyo3_ffi::PyEval_SetTrace(previous.map(|f| std::mem::transmute(f)), previous_obj) };
        return Ok(());
    }
    // The slots were not found, so the C function of the trace function in place is unknown:
    // it goes back through sys.settrace, which calls its object (a Python trace function, or a
    // C tracer's callable object such as coverage's).
    py.import("sys")?.call_method1("settrace", (current,))?;
    Ok(())
}

/// The thread state's first words before and after `install` runs.
///
/// # Safety
/// GIL held; `install` changes only this thread's state.
unsafe fn thread_state_change(install: impl FnOnce()) -> ([usize; THREAD_STATE_WORDS], [usize; THREAD_STATE_WORDS]) {
    // SAFETY: the thread state outlives this call, and its first THREAD_STATE_WORDS words lie
    // inside it on every supported version.
    unsafe {
        let tstate = pyo3_ffi::PyThreadState_Get() as *const usize;
        let words = || std::array::from_fn::<usize, THREAD_STATE_WORDS, _>(|i| *tstate.add(i));
        let before = words();
        install();
        (before, words())
    }
}

/// The one word that changed to `value`, if exactly one did.
fn only_word_changed_to(before: &[usize], after: &[usize], value: usize) -> Option<usize> {
    let mut found = (0..before.len()).filter(|&i| before[i] != after[i] && after[i] == value);
    found.next().filter(|_| found.next().is_none())
}

/// Word `word` of the calling thread's state.
///
/// # Safety
/// GIL held; `word` was found inside the thread state by a calibration above.
unsafe fn thread_state_word(word: usize) -> usize {
    // SAFETY: per the contract.
    unsafe { *(pyo3_ffi::PyThreadState_Get() as *const usize).add(word) }
}

/// The calling thread's trace function and object, if the slots were found.
fn current_trace() -> Option<(usize, *mut PyObject)> {
    let (func_word, obj_word) = (TRACE_FUNC_WORD.load(Ordering::Relaxed), TRACE_OBJ_WORD.load(Ordering::Relaxed));
    // SAFETY: GIL held (every caller is a traced call's entry or exit); the words were found by
    // `calibrate_trace_slots`.
    (func_word != 0).then(|| unsafe { (thread_state_word(func_word), thread_state_word(obj_word) as *mut PyObject) })
}

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
    let offset = TRACE_LINES_OFFSET.load(Ordering::Relaxed);
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

/// Where PyThreadState keeps `c_profilefunc`, in words from its start, once
/// `calibrate_profile_slot` has found it; 0 while unknown.
static PROFILE_FUNC_WORD: AtomicUsize = AtomicUsize::new(0);

/// Finds the thread state's profile function as `calibrate_trace_slots` finds the trace
/// function, and puts back what was there (`sys.getprofile()` holds its object meanwhile).
pub fn calibrate_profile_slot(py: Python<'_>) -> PyResult<()> {
    let current = py.import("sys")?.getattr("getprofile")?.call0()?;
    let sentinel = pyo3::types::PyTuple::empty(py);
    // SAFETY: as in `calibrate_trace_slots`, for PyEval_SetProfile and `profile`.
    let (before, after) = unsafe { thread_state_change(|| PyEval_SetProfile(Some(profile), sentinel.as_ptr())) };
    let word = only_word_changed_to(&before, &after, profile as *const () as usize);
    let previous_obj = if current.is_none() { std::ptr::null_mut() } else { current.as_ptr() };
    if word.is_some() || previous_obj.is_null() {
        if let Some(word) = word {
            PROFILE_FUNC_WORD.store(word, Ordering::Relaxed);
        }
        let previous = word.map(|i| before[i]).filter(|&f| f != 0);
        // SAFETY: as in `calibrate_trace_slots`.
        unsafe { PyEval_SetProfile(previous.map(|f| std::mem::transmute(f)), previous_obj) };
        return Ok(());
    }
    py.import("sys")?.call_method1("setprofile", (current,))?;
    Ok(())
}

/// The calling thread's profile function, if its slot was found.
fn current_profile() -> Option<usize> {
    let word = PROFILE_FUNC_WORD.load(Ordering::Relaxed);
    // SAFETY: GIL held; the word was found by `calibrate_profile_slot`.
    (word != 0).then(|| unsafe { thread_state_word(word) })
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
unsafe extern "C" fn profile(
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
            let block = arg as usize - GC_HEAD;
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
/// pass the line number, if any, so it can be taken out of the figures. Where a reading fell
/// due, the hooks are checked too (outside the hot path).
#[inline]
pub fn line_event(code: usize, lineno: u32, int_obj: Option<usize>) {
    if state::line_event(code, lineno, int_obj) {
        hooks::verify();
    }
}

/// The frame running `code` returns; `int_obj` as for `line_event`, made for this event.
fn return_event(code: usize, int_obj: Option<usize>) {
    if state::return_event(code, int_obj) {
        hooks::verify();
    }
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
    for block in [event as usize - GC_HEAD, exception, args] {
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
    [exception as usize - GC_HEAD, args.saturating_sub(GC_HEAD)]
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
            let frame_block = frame as usize - GC_HEAD;
            let line_array = if CODE_LAYOUT_311.load(Ordering::Relaxed) {
                // SAFETY: `code` is live and has the verified 3.11 layout.
                unsafe { code_field::<usize>(code, LINE_ARRAY_OFFSET_311) }
            } else {
                0
            };
            state::disown(frame_block);
            state::disown(line_array);
        }
        // A frame memsleuth does not profile needs no line events, unless a chained trace
        // function wants them; a profiled frame needs them whatever the chained one decided.
        let offset = TRACE_LINES_OFFSET.load(Ordering::Relaxed);
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
            // SAFETY: `code` is live; it has the verified layout if read.
            let generator_like = !CODE_LAYOUT_311.load(Ordering::Relaxed)
                || unsafe { code_field::<i32>(code, FLAGS_OFFSET_311) } & GENERATOR_FLAGS != 0;
            if generator_like {
                let frame_block = frame as usize - GC_HEAD;
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

/// Whether ints have the layout of 3.12 and 3.13 (after the object header, a tag word holding
/// the digit count and sign, then 30-bit digits), verified by `verify_int_layout`. The LINE
/// callback then reads the line number from its int directly: PyLong_AsLong took a tenth of
/// memsleuth's instructions per line event.
static INTS_READABLE: AtomicBool = AtomicBool::new(false);

/// The value of `int`, an exact int, if it is non-negative and one digit long (under 2**30).
///
/// # Safety
/// `int` must be a live int object, and `INTS_READABLE` set.
#[inline(always)]
unsafe fn one_digit_value(int: *mut PyObject) -> Option<u32> {
    // SAFETY: per the contract, the object has the verified layout: a tag word at 16 and at least
    // one 32-bit digit at 24 (even zero has room for one).
    let (tag, digit) =
        unsafe { (*(int as *const u8).add(16).cast::<usize>(), *(int as *const u8).add(24).cast::<u32>()) };
    match tag {
        1 => Some(0),
        8 => Some(digit),
        _ => None,
    }
}

/// Checks `one_digit_value` against ints made by the interpreter before the LINE callback uses it.
pub fn verify_int_layout(py: Python<'_>) -> PyResult<()> {
    let mut readable = true;
    for value in [0i64, 7, 300, 65_537, (1 << 30) - 1, 1 << 30, -5, 1 << 40] {
        let int = value.into_pyobject(py)?;
        let expected = u32::try_from(value).ok().filter(|&v| v < 1 << 30);
        // SAFETY: `int` is a live exact int; reading it is sound under the layout being checked,
        // whose offsets lie inside every int object (header, tag and one digit).
        readable &= unsafe { one_digit_value(int.as_ptr()) } == expected;
    }
    INTS_READABLE.store(readable, Ordering::Relaxed);
    Ok(())
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
            let direct = INTS_READABLE.load(Ordering::Relaxed) && PyLong_CheckExact(line) != 0;
            match direct.then(|| one_digit_value(line)).flatten() {
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
    }
    // SAFETY: GIL held; the callback returns a new reference to None.
    unsafe { crate::cfunction::new_none() }
}

/// The PY_RETURN callback's function object is made from this.
pub static RETURN_CALLBACK: FastFunction =
    FastFunction::new(c"return_event", c"The PY_RETURN callback of sys.monitoring (3.12+).", return_callback);

/// The LINE callback's function object is made from this.
pub static LINE_CALLBACK: FastFunction =
    FastFunction::new(c"line_event", c"The LINE callback of sys.monitoring (3.12+).", line_callback);
