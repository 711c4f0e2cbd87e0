//! The object `@profile` returns for a plain function, as a type of its own written against the C
//! API (not a pyo3 class), because what it adds to every profiled call is visible to the program:
//!
//! - Calls arrive by vectorcall and go on to the function by vectorcall, so the interpreter builds
//!   no argument tuple, counts no extra recursion level before 3.11, and no C frame of pyo3's
//!   trampoline (with its `catch_unwind`) sits on the stack while the function runs.
//! - It takes part in cyclic garbage collection: module dict -> profiled function -> function ->
//!   module globals is a cycle, and without `tp_traverse` a module with a profiled function was
//!   never finalised (its files never flushed, its `__del__` methods never run).
//! - It binds like a function (`tp_descr_get`, and as a method descriptor the interpreter calls it
//!   with the instance without making a bound method), has a `__dict__` for `functools.wraps`, and
//!   pickles by qualified name, as the function does. (`_profile.py` gives the type a
//!   `__set_name__` that makes a profiled `__init_subclass__` the classmethod a plain one becomes.)
//! - What memsleuth does after the call (the accounting, the table) never replaces the call's
//!   value or exception; only an interrupt that arrives while the table prints reaches the
//!   program, as it would have there without memsleuth.

use crate::{enter_call, leave_call, state};
use pyo3::prelude::*;
use pyo3_ffi::{
    getter, setter, vectorcallfunc, visitproc, PyErr_SetString, PyErr_WriteUnraisable, PyExc_TypeError, PyGetSetDef,
    PyMemberDef, PyMethodDef, PyMethodDefPointer, PyObject, PyObject_CallNoArgs, PyObject_ClearWeakRefs,
    PyObject_GC_UnTrack, PyObject_GenericGetDict, PyObject_GenericSetDict, PyObject_GetAttrString, PyTypeObject,
    PyType_GenericAlloc, PyType_GetSlot, PyType_Slot, PyType_Spec, Py_DecRef, Py_IncRef, Py_None, Py_READONLY,
    Py_TPFLAGS_DEFAULT, Py_TPFLAGS_HAVE_GC, Py_TPFLAGS_HAVE_VECTORCALL, Py_TPFLAGS_METHOD_DESCRIPTOR, Py_T_PYSSIZET,
    Py_ssize_t, Py_tp_call, Py_tp_clear, Py_tp_dealloc, Py_tp_descr_get, Py_tp_free, Py_tp_getset, Py_tp_members,
    Py_tp_methods, Py_tp_traverse, METH_NOARGS,
};
use rustc_hash::FxHashMap;
use std::ffi::{c_int, c_void};
use std::mem::offset_of;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

/// The instance layout. `vectorcall` is the per-instance entry point the type's
/// `__vectorcalloffset__` points at.
#[repr(C)]
struct ProfiledObject {
    ob_base: PyObject,
    vectorcall: Option<vectorcallfunc>,
    /// The profiled function (null once the collector has cleared the object).
    func: *mut PyObject,
    /// Called with no arguments after an outermost call returns (prints the table).
    on_return: *mut PyObject,
    dict: *mut PyObject,
    weakrefs: *mut PyObject,
    fid: u32,
}

extern "C" {
    /// CPython's bound-method constructor (types.MethodType), absent from pyo3-ffi.
    fn PyMethod_New(func: *mut PyObject, instance: *mut PyObject) -> *mut PyObject;
}

/// The type object, made once when the module loads.
static TYPE: AtomicPtr<PyTypeObject> = AtomicPtr::new(null_mut());

/// A profiled call: the books' call opens around the function's own, and the table is printed
/// after an outermost call whatever it returned or raised. Nothing here can unwind: a thread that
/// CPython ends with `pthread_exit` at shutdown passes through this frame untouched.
///
/// # Safety
/// Called by the interpreter with the GIL held, `callable` an instance of this type and `args`
/// holding the arguments `nargsf` and `kwnames` describe.
unsafe extern "C" fn call(
    callable: *mut PyObject,
    args: *const *mut PyObject,
    nargsf: usize,
    kwnames: *mut PyObject,
) -> *mut PyObject {
    let this = callable as *mut ProfiledObject;
    // SAFETY: `callable` is an instance of this type (the slot is only reached through it).
    let (fid, func, on_return) = unsafe { ((*this).fid, (*this).func, (*this).on_return) };
    if func.is_null() {
        // SAFETY: GIL held; the message is a static C string.
        unsafe { PyErr_SetString(PyExc_TypeError, c"memsleuth: this profiled function has no function".as_ptr()) };
        return null_mut();
    }
    // SAFETY: GIL held. The references are held across the call so that clearing this object
    // meanwhile (the collector, or a reassignment of its attributes) cannot free them; the
    // arguments are passed through exactly as received, which vectorcall permits.
    unsafe {
        Py_IncRef(func);
        Py_IncRef(on_return);
        enter_call(fid);
        if !pyo3_ffi::PyErr_Occurred().is_null() {
            // Switching tracing on can leave an exception (an audit hook's) that belongs to no call.
            PyErr_WriteUnraisable(callable);
        }
        // Each profiled call enters the interpreter from C and so takes C stack, which plain
        // calls do not from 3.11: a deep profiled recursion continues on a fresh stack segment
        // instead of overflowing the thread's stack (docs/design.md, "Recursion without a wrapper").
        let result = stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || {
            pyo3_ffi::PyObject_Vectorcall(func, args, nargsf, kwnames)
        });
        let result = finish(result, on_return, leave_call);
        Py_DecRef(on_return);
        Py_DecRef(func);
        result
    }
}

/// A profiled call that finds less C stack left than this moves on to a new segment...
const STACK_RED_ZONE: usize = 1 << 20;
/// ...of this size, a thread's default stack on Linux.
const STACK_SEGMENT: usize = 8 << 20;

/// After the function's own call returned `result` (null if it raised): `leave` closes the
/// books' call, saying whether it was the outermost, and the table is printed after an
/// outermost call.
///
/// The call's exception, if it raised, is set aside while memsleuth's own code runs (it may
/// call into the interpreter, which must not find an exception pending) and put back after, so
/// neither the accounting nor the table can replace it; only an interrupt that arrived while the
/// table was printed (Ctrl-C) takes the call's place, as it would have been raised there
/// without memsleuth.
///
/// # Safety
/// GIL held; `result` is an owned reference or null with the call's exception set;
/// `on_return` is live or null.
// PyErr_Fetch and PyErr_Restore are deprecated from 3.12 in favour of calls 3.9-3.11 lack.
#[allow(deprecated)]
unsafe fn finish(mut result: *mut PyObject, on_return: *mut PyObject, leave: impl FnOnce() -> bool) -> *mut PyObject {
    // SAFETY: per the contract; the fetched references are either restored or released.
    unsafe {
        let (mut kind, mut value, mut traceback) = (null_mut(), null_mut(), null_mut());
        pyo3_ffi::PyErr_Fetch(&mut kind, &mut value, &mut traceback);
        let interrupted = leave() && !report(on_return);
        if interrupted {
            for owned in [result, kind, value, traceback] {
                if !owned.is_null() {
                    Py_DecRef(owned);
                }
            }
            result = null_mut();
        } else {
            pyo3_ffi::PyErr_Restore(kind, value, traceback);
        }
        result
    }
}

/// Calls `on_return`. An error of its own is reported as unraisable, as CPython does for errors
/// in finalizers, so the table never replaces what the call returned or raised; returns false,
/// with the exception left set, for a BaseException that is no Exception (KeyboardInterrupt,
/// SystemExit), which must reach the program.
///
/// # Safety
/// GIL held, no exception pending; `on_return` is a live callable or null.
unsafe fn report(on_return: *mut PyObject) -> bool {
    if on_return.is_null() {
        return true;
    }
    // SAFETY: GIL held; the call returns a new reference, or null with an exception set, which
    // is either left set (an interrupt) or printed and cleared by WriteUnraisable.
    unsafe {
        let printed = PyObject_CallNoArgs(on_return);
        if !printed.is_null() {
            Py_DecRef(printed);
            return true;
        }
        if pyo3_ffi::PyErr_ExceptionMatches(pyo3_ffi::PyExc_Exception) == 0 {
            return false;
        }
        PyErr_WriteUnraisable(on_return);
        true
    }
}

/// `tp_new`: instances are made only by `profiled`, which fills them.
///
/// # Safety
/// Called by the interpreter with the GIL held.
unsafe extern "C" fn refuse_new(_tp: *mut PyTypeObject, _args: *mut PyObject, _kwargs: *mut PyObject) -> *mut PyObject {
    // SAFETY: GIL held; the message is a static C string.
    unsafe {
        PyErr_SetString(PyExc_TypeError, c"memsleuth: profiled functions are made by memsleuth.profile".as_ptr())
    };
    null_mut()
}

/// `tp_descr_get`: bound to an instance, a method; otherwise the object itself.
///
/// # Safety
/// Called by the interpreter with the GIL held and live (or null) arguments.
unsafe extern "C" fn descr_get(this: *mut PyObject, instance: *mut PyObject, _owner: *mut PyObject) -> *mut PyObject {
    // SAFETY: GIL held; both are live objects when not null; PyMethod_New returns a new reference
    // or null with an exception set, as the slot must.
    unsafe {
        if instance.is_null() || instance == Py_None() {
            Py_IncRef(this);
            return this;
        }
        PyMethod_New(this, instance)
    }
}

/// `__reduce__`: the qualified name, so pickle and copy treat the object as the global it is.
///
/// # Safety
/// Called by the interpreter with the GIL held and `this` an instance of this type.
unsafe extern "C" fn reduce(this: *mut PyObject, _unused: *mut PyObject) -> *mut PyObject {
    // SAFETY: GIL held; returns a new reference or null with AttributeError set.
    unsafe { PyObject_GetAttrString(this, c"__qualname__".as_ptr()) }
}

/// # Safety
/// Called by the collector with the GIL held and `this` an instance of this type.
unsafe extern "C" fn traverse(this: *mut PyObject, visit: visitproc, arg: *mut c_void) -> c_int {
    let object = this as *mut ProfiledObject;
    // SAFETY: per the contract; each field is a live object or null, and an instance of a heap
    // type holds a reference to its type, which it must visit.
    unsafe {
        let fields = [(*object).func, (*object).on_return, (*object).dict, pyo3_ffi::Py_TYPE(this) as *mut PyObject];
        for field in fields {
            if !field.is_null() {
                let status = visit(field, arg);
                if status != 0 {
                    return status;
                }
            }
        }
    }
    0
}

/// Drops the object's references (nulling each before its release, as Py_CLEAR does).
///
/// # Safety
/// GIL held; `this` an instance of this type.
unsafe extern "C" fn clear(this: *mut PyObject) -> c_int {
    let object = this as *mut ProfiledObject;
    // SAFETY: per the contract; each field is owned by the object or null.
    unsafe {
        for field in [&raw mut (*object).func, &raw mut (*object).on_return, &raw mut (*object).dict] {
            let old = std::mem::replace(&mut *field, null_mut());
            if !old.is_null() {
                Py_DecRef(old);
            }
        }
    }
    0
}

/// # Safety
/// Called by the interpreter when the last reference goes, GIL held.
unsafe extern "C" fn dealloc(this: *mut PyObject) {
    // SAFETY: the object is being destroyed: untracked first so the collector never sees it
    // half-cleared; then weak references, its own references, the memory, and the reference to
    // its (heap) type that every instance holds.
    unsafe {
        PyObject_GC_UnTrack(this as *mut c_void);
        if !(*(this as *mut ProfiledObject)).weakrefs.is_null() {
            PyObject_ClearWeakRefs(this);
        }
        clear(this);
        let tp = pyo3_ffi::Py_TYPE(this);
        let free: pyo3_ffi::freefunc = std::mem::transmute(PyType_GetSlot(tp, Py_tp_free));
        free(this as *mut c_void);
        Py_DecRef(tp as *mut PyObject);
    }
}

/// Makes the type (once, when the module loads) and returns it for the module to export.
pub fn make_type(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // CPython keeps pointers into the member, getset and method tables for the type's life (the
    // process's): they are leaked on purpose, once.
    let members = Box::leak(Box::new([
        member(c"__vectorcalloffset__", offset_of!(ProfiledObject, vectorcall)),
        member(c"__dictoffset__", offset_of!(ProfiledObject, dict)),
        member(c"__weaklistoffset__", offset_of!(ProfiledObject, weakrefs)),
        PyMemberDef::default(),
    ]));
    let getset = Box::leak(Box::new([
        PyGetSetDef {
            name: c"__dict__".as_ptr(),
            get: Some(PyObject_GenericGetDict as getter),
            set: Some(PyObject_GenericSetDict as setter),
            doc: null_mut(),
            closure: null_mut(),
        },
        PyGetSetDef::default(),
    ]));
    let methods = Box::leak(Box::new([
        PyMethodDef {
            ml_name: c"__reduce__".as_ptr(),
            ml_meth: PyMethodDefPointer { PyCFunction: reduce },
            ml_flags: METH_NOARGS,
            ml_doc: null_mut(),
        },
        PyMethodDef::zeroed(),
    ]));
    let slots = Box::leak(Box::new([
        slot(pyo3_ffi::Py_tp_new, refuse_new as *mut c_void),
        slot(Py_tp_call, pyo3_ffi::PyVectorcall_Call as *mut c_void),
        slot(Py_tp_descr_get, descr_get as *mut c_void),
        slot(Py_tp_traverse, traverse as *mut c_void),
        slot(Py_tp_clear, clear as *mut c_void),
        slot(Py_tp_dealloc, dealloc as *mut c_void),
        slot(Py_tp_members, members.as_mut_ptr() as *mut c_void),
        slot(Py_tp_getset, getset.as_mut_ptr() as *mut c_void),
        slot(Py_tp_methods, methods.as_mut_ptr() as *mut c_void),
        slot(0, null_mut()),
    ]));
    let mut spec = PyType_Spec {
        name: c"memsleuth._native.Profiled".as_ptr(),
        basicsize: std::mem::size_of::<ProfiledObject>() as c_int,
        itemsize: 0,
        flags: (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR)
            as _,
        slots: slots.as_mut_ptr(),
    };
    // SAFETY: GIL held; the spec and the tables it points to are complete and outlive the type.
    let tp = unsafe { Bound::from_owned_ptr_or_err(py, pyo3_ffi::PyType_FromSpec(&mut spec))? };
    TYPE.store(tp.as_ptr() as *mut PyTypeObject, Ordering::Release);
    // The module holds the type for the life of the process; this reference is TYPE's own.
    std::mem::forget(tp.clone());
    Ok(tp)
}

fn member(name: &'static std::ffi::CStr, offset: usize) -> PyMemberDef {
    PyMemberDef {
        name: name.as_ptr(),
        type_code: Py_T_PYSSIZET,
        offset: offset as Py_ssize_t,
        flags: Py_READONLY,
        doc: null_mut(),
    }
}

fn slot(slot: c_int, pfunc: *mut c_void) -> PyType_Slot {
    PyType_Slot { slot, pfunc }
}

/// A new profiled function for `func`, registered as `fid`, calling `on_return` after each
/// outermost call.
#[pyfunction]
pub fn profiled(py: Python<'_>, fid: u32, func: Py<PyAny>, on_return: Py<PyAny>) -> PyResult<Py<PyAny>> {
    let tp = TYPE.load(Ordering::Acquire);
    // SAFETY: GIL held; `tp` is the type made in `make_type` (the module is loaded, so it was);
    // GenericAlloc returns a zeroed, GC-tracked instance or null with an exception set. The fields
    // are filled with owned references before the object is handed out.
    unsafe {
        let object = Bound::from_owned_ptr_or_err(py, PyType_GenericAlloc(tp, 0))?;
        let this = object.as_ptr() as *mut ProfiledObject;
        (*this).vectorcall = Some(call);
        (*this).fid = fid;
        (*this).func = func.into_ptr();
        (*this).on_return = on_return.into_ptr();
        Ok(object.unbind())
    }
}

// 3.12+: a profiled plain function stays a function (docs/design.md, "Recursion without a
// wrapper"). Its vectorcall is `function_call`, except while a recursive call of it that came
// through there is running: then it has the default vectorcall, so the interpreter runs the
// calls it makes of itself inline, as without memsleuth (a call through C would count against
// the C recursion limit and use C stack at every level), and sys.monitoring's start, return and
// unwind events of its code open and close those calls in the books.

/// A profiled function's number and what to call after an outermost call of it (an owned
/// reference).
#[derive(Clone, Copy)]
struct Profiling {
    fid: u32,
    /// The code object it was profiled with: a function given another one is no longer profiled.
    code: usize,
    on_return: usize,
}

/// By code object (which `_profile.registered` keeps alive for the life of the process, so an
/// address is never reused), for the start events: the function's number, and the `on_return`
/// of the latest function profiled with that code, for a call no wrapper entered. Touched only
/// with the GIL held; the mutexes make the statics shareable.
static CODES: LazyLock<Mutex<FxHashMap<usize, Profiling>>> = LazyLock::new(Default::default);
/// By function object, for `function_call`: each `profile()` of one function gives a function
/// of its own, with its own settings (its stream). An entry outlives its function, and is
/// replaced if another profiled function takes its address.
static FUNCTIONS: LazyLock<Mutex<FxHashMap<usize, Profiling>>> = LazyLock::new(Default::default);
/// Function objects with a recursive call through `function_call` running (on any thread),
/// counted.
static RUNNING: LazyLock<Mutex<FxHashMap<usize, u32>>> = LazyLock::new(Default::default);
/// The interpreter's own vectorcall for Python functions.
static DEFAULT_VECTORCALL: AtomicUsize = AtomicUsize::new(0);

fn default_vectorcall() -> Option<vectorcallfunc> {
    // SAFETY: a non-zero value is a vectorcallfunc read from a function object.
    (DEFAULT_VECTORCALL.load(Ordering::Relaxed) != 0)
        .then(|| unsafe { std::mem::transmute::<usize, vectorcallfunc>(DEFAULT_VECTORCALL.load(Ordering::Relaxed)) })
}

/// The function id of a profiled plain function's code object, if it is one.
pub fn profiled_code(code: usize) -> Option<u32> {
    CODES.lock().unwrap_or_else(|e| e.into_inner()).get(&code).map(|p| p.fid)
}

/// An outermost call of the function of `code` that no wrapper entered has ended: its table is
/// printed now. Returns false, with the exception set, for an interrupt that arrived meanwhile,
/// which the callback raises into the program where the call returned.
///
/// # Safety
/// GIL held, no exception pending.
pub unsafe fn report_unwrapped(code: usize) -> bool {
    let Some(on_return) = CODES.lock().unwrap_or_else(|e| e.into_inner()).get(&code).map(|p| p.on_return) else {
        return true;
    };
    let on_return = on_return as *mut PyObject;
    // SAFETY: per the contract; the entry's reference is live, and one of our own is held while
    // the table prints, in case printing profiles the function again and replaces the entry.
    unsafe {
        Py_IncRef(on_return);
        let reported = report(on_return);
        Py_DecRef(on_return);
        reported
    }
}

/// Sets `func`'s vectorcall: `function_call`, or the default while calls run inside.
///
/// # Safety
/// GIL held; `func` a live function object.
unsafe fn set_vectorcall(func: *mut PyObject, inline: bool) {
    let (Some(setter), Some(default)) = (crate::compat::function_vectorcall_setter(), default_vectorcall()) else {
        return;
    };
    // SAFETY: per the contract; both are vectorcall functions for Python functions.
    unsafe { setter(func, if inline { default } else { function_call }) };
}

/// A call of a profiled function from outside its own calls on this thread.
///
/// # Safety
/// Called by the interpreter with the GIL held, `callable` a function object and `args` holding
/// the arguments `nargsf` and `kwnames` describe.
unsafe extern "C" fn function_call(
    callable: *mut PyObject,
    args: *const *mut PyObject,
    nargsf: usize,
    kwnames: *mut PyObject,
) -> *mut PyObject {
    let Some(default) = default_vectorcall() else {
        // SAFETY: GIL held; the message is a static C string.
        unsafe { PyErr_SetString(PyExc_TypeError, c"memsleuth: profiled function called before setup".as_ptr()) };
        return null_mut();
    };
    // SAFETY: `callable` is a function object; its code is borrowed and outlives the call.
    let code = unsafe { pyo3_ffi::PyFunction_GetCode(callable) } as usize;
    let profiling = FUNCTIONS.lock().unwrap_or_else(|e| e.into_inner()).get(&(callable as usize)).copied();
    let Some(Profiling { fid, on_return, .. }) = profiling.filter(|p| p.code == code) else {
        // The program gave the function another code object: it is no longer profiled.
        // SAFETY: the interpreter's own call, with the interpreter's arguments.
        return unsafe { default(callable, args, nargsf, kwnames) };
    };
    let on_return = on_return as *mut PyObject;
    // SAFETY: GIL held; the function is held across the call, so that it cannot be freed while
    // its vectorcall is switched, nor its entry (and `on_return`) be replaced.
    unsafe {
        Py_IncRef(callable);
        // A call of a function already running on this thread (recursion) lets the interpreter
        // run the calls it makes inline. A first call does not: other threads' calls meanwhile
        // still come through here, where the teardown gets its row.
        let (recursive, depth) = state::enter_wrapped(fid, code);
        if recursive {
            running(callable, code, 1);
        }
        // Where the code's start events are on, this call's own start is not a new call.
        let starts_watched = WATCHED_CODES.load(Ordering::Relaxed) != 0
            && INLINE_CODES.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&code);
        if starts_watched {
            state::expect_start(code);
        }
        let result = default(callable, args, nargsf, kwnames);
        if starts_watched {
            state::expect_start(0);
        }
        if recursive {
            running(callable, code, -1);
        }
        let result = finish(result, on_return, || state::leave_wrapped(fid, depth));
        Py_DecRef(callable);
        result
    }
}

/// Counts a recursive call of `func` (running `code`) through `function_call` starting (+1) or
/// ending (-1). The first to start gives the function the default vectorcall, and the code its
/// start events (which cost a callback at every call, so they are off otherwise); the last to end
/// takes both back.
///
/// # Safety
/// GIL held; `func` a live function object running `code`.
unsafe fn running(func: *mut PyObject, code: usize, change: i32) {
    let count = |map: &Mutex<FxHashMap<usize, u32>>, key: usize| {
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(key).or_insert(0);
        let was = *count;
        *count = count.saturating_add_signed(change);
        let now = *count;
        if now == 0 {
            map.remove(&key);
        }
        (was == 0) != (now == 0)
    };
    if count(&RUNNING, func as usize) {
        // SAFETY: per the contract.
        unsafe { set_vectorcall(func, change > 0) };
    }
    if count(&INLINE_CODES, code) {
        if change > 0 {
            WATCHED_CODES.fetch_add(1, Ordering::Relaxed);
        } else {
            WATCHED_CODES.fetch_sub(1, Ordering::Relaxed);
        }
        // SAFETY: per the contract.
        unsafe { watch_starts(code, change > 0) };
    }
}

/// Code objects with a recursive call running inline (their start events on), counted per code.
static INLINE_CODES: LazyLock<Mutex<FxHashMap<usize, u32>>> = LazyLock::new(Default::default);
/// How many codes `INLINE_CODES` holds: a call looks there only if some do.
static WATCHED_CODES: AtomicUsize = AtomicUsize::new(0);
/// `_profile._watch_starts(code, on)`, which asks sys.monitoring for a code's start events or
/// stops them (an owned reference, for the life of the process).
static WATCH_STARTS: AtomicPtr<PyObject> = AtomicPtr::new(null_mut());

/// Keeps the function that switches a code's start events.
#[pyfunction]
pub fn set_watch_starts(switch: Py<PyAny>) {
    WATCH_STARTS.store(switch.into_ptr(), Ordering::Release);
}

/// Turns the start events of `code` on or off. What that allocates is the profiler's; an error
/// is reported as unraisable, never raised into the program's call.
///
/// # Safety
/// GIL held, no exception pending; `code` a live code object.
unsafe fn watch_starts(code: usize, on: bool) {
    let switch = WATCH_STARTS.load(Ordering::Acquire);
    if switch.is_null() {
        return;
    }
    let quiet = state::begin_quiet();
    // SAFETY: per the contract; `switch` lives for the process; the call's arguments are live
    // for its duration, and its result (a new reference or null with an exception) is released
    // or reported.
    unsafe {
        let args = [code as *mut PyObject, if on { pyo3_ffi::Py_True() } else { pyo3_ffi::Py_False() }];
        let result = pyo3_ffi::PyObject_Vectorcall(switch, args.as_ptr(), 2, null_mut());
        if result.is_null() {
            PyErr_WriteUnraisable(switch);
        } else {
            Py_DecRef(result);
        }
    }
    state::end_quiet(quiet);
}

/// Makes `func` (a Python function, registered as `fid`) a profiled function in place, calling
/// `on_return` after each outermost call; returns it.
#[pyfunction]
pub fn profiled_function(fid: u32, func: Bound<'_, PyAny>, on_return: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    if crate::compat::function_vectorcall_setter().is_none() {
        return Err(pyo3::exceptions::PyRuntimeError::new_err("memsleuth: PyFunction_SetVectorcall is missing"));
    }
    // SAFETY: GIL held; `func` is a live function object (checked), whose code is borrowed.
    unsafe {
        if pyo3_ffi::PyFunction_Check(func.as_ptr()) == 0 {
            return Err(pyo3::exceptions::PyTypeError::new_err("memsleuth: expected a function"));
        }
        if DEFAULT_VECTORCALL.load(Ordering::Relaxed) == 0 {
            if let Some(default) = pyo3_ffi::PyVectorcall_Function(func.as_ptr()) {
                if default as usize != function_call as *const () as usize {
                    DEFAULT_VECTORCALL.store(default as usize, Ordering::Relaxed);
                }
            }
        }
        let code = pyo3_ffi::PyFunction_GetCode(func.as_ptr()) as usize;
        let profiling = Profiling { fid, code, on_return: on_return.into_ptr() as usize };
        // The code's entry keeps its own reference; a replaced entry's is released once the lock
        // is (releasing it may run a finalizer that calls a profiled function).
        Py_IncRef(profiling.on_return as *mut PyObject);
        let replaced = [
            CODES.lock().unwrap_or_else(|e| e.into_inner()).insert(code, profiling),
            FUNCTIONS.lock().unwrap_or_else(|e| e.into_inner()).insert(func.as_ptr() as usize, profiling),
        ];
        for old in replaced.into_iter().flatten() {
            Py_DecRef(old.on_return as *mut PyObject);
        }
        set_vectorcall(func.as_ptr(), false);
    }
    Ok(func)
}
