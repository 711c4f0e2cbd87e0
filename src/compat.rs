//! Every piece of CPython's private layout memsleuth relies on, each checked at start-up against
//! objects the interpreter made before it is used, with a slower path (or a refusal) where a
//! check fails (docs/design.md, CPython internals used): the GC header, the allocator behind each
//! domain, what the arena hook serves, the frame's `f_trace_lines` byte, 3.11's code object, the
//! thread state's trace slots, and 3.12+'s int layout.

use pyo3::prelude::*;
use pyo3_ffi::PyObject;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Why this interpreter cannot be profiled, if it cannot: a free-threaded build (no GIL to
/// serialise the tracer, no GC header before objects, mimalloc instead of pymalloc), or a
/// version whose private layouts memsleuth has not been checked against.
pub fn unsupported(version: (u32, u32), gil_disabled: bool) -> Option<String> {
    if gil_disabled {
        return Some(format!(
            "memsleuth: this is a free-threaded build of Python {}.{} (Py_GIL_DISABLED), which memsleuth does not \
             support; use the default build",
            version.0, version.1
        ));
    }
    (!((3, 9)..=(3, 13)).contains(&version)).then(|| {
        format!("memsleuth: Python {}.{} is not supported; it supports CPython 3.9 to 3.13", version.0, version.1)
    })
}

/// Refuses an interpreter `unsupported` names, as an ImportError of the extension. A
/// free-threaded build says so in its ABI flags ("t"); sysconfig would tell too, at the cost of
/// importing it into every profiled program.
pub fn check_supported(py: Python<'_>) -> PyResult<()> {
    let version = py.version_info();
    let abiflags: String = py.import("sys")?.getattr("abiflags")?.extract()?;
    match unsupported((version.major as u32, version.minor as u32), abiflags.contains('t')) {
        Some(reason) => Err(pyo3::exceptions::PyImportError::new_err(reason)),
        None => Ok(()),
    }
}

/// Size of the header that precedes a GC-tracked object inside its allocated block (PyGC_Head,
/// 16 bytes on every supported build), as measured by `measure_gc_head`.
static GC_HEAD: AtomicUsize = AtomicUsize::new(16);

/// The block of GC-tracked object `object`: its address less the GC header.
#[inline(always)]
pub fn gc_block(object: usize) -> usize {
    object.saturating_sub(GC_HEAD.load(Ordering::Relaxed))
}

/// Measures the GC header on a list the interpreter makes: `sys.getsizeof` adds the header
/// (3.12+: the pre-header, which for a list is the GC header alone) to `__sizeof__`.
pub fn measure_gc_head(py: Python<'_>) -> PyResult<()> {
    let list = pyo3::types::PyList::empty(py);
    let with_header: usize = py.import("sys")?.call_method1("getsizeof", (&list,))?.extract()?;
    let without: usize = list.call_method0("__sizeof__")?.extract()?;
    GC_HEAD.store(with_header.saturating_sub(without), Ordering::Relaxed);
    Ok(())
}

/// The allocator behind the MEM and OBJ domains, found once before memsleuth's hooks wrap them.
static ALLOCATOR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// MEM and OBJ requests above how many bytes the allocator named `name` (as PYTHONMALLOC names
/// it) hands to glibc. pymalloc serves requests up to 512 bytes; its debug hooks add three words
/// of their own to each request first; mimalloc hands none to glibc, malloc all.
pub fn glibc_serves_above_for(name: &str) -> u64 {
    match name {
        "pymalloc" => 512,
        "pymalloc_debug" => 512 - 3 * std::mem::size_of::<usize>() as u64,
        "mimalloc" | "mimalloc_debug" => u64::MAX,
        _ => 0,
    }
}

/// MEM and OBJ requests above this many bytes are served by glibc: `u64::MAX` when none are
/// (mimalloc), 0 when all are (PYTHONMALLOC=malloc).
pub fn glibc_serves_above(py: Python<'_>) -> PyResult<u64> {
    Ok(glibc_serves_above_for(allocator(py)?))
}

/// The allocator behind the MEM and OBJ domains, as PYTHONMALLOC names it.
pub fn allocator(py: Python<'_>) -> PyResult<&'static str> {
    if let Some(name) = ALLOCATOR.get() {
        return Ok(name);
    }
    let name = detect_allocator(py)?;
    Ok(ALLOCATOR.get_or_init(|| name))
}

/// Finds which allocator serves the MEM and OBJ domains: the interpreter's own name for it
/// where it exports one (before memsleuth's hooks wrap it; with another tool's hooks on top it
/// names none), else pymalloc if it has blocks (`sys.getallocatedblocks` counts pymalloc's
/// only), else malloc.
fn detect_allocator(py: Python<'_>) -> PyResult<String> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_PyMem_GetCurrentAllocatorName".as_ptr()) };
    let named = (!symbol.is_null())
        .then(|| {
            // SAFETY: the symbol is CPython's `const char *_PyMem_GetCurrentAllocatorName(void)`
            // (3.8+), which returns a static string, or null when the allocators are not one of
            // its own (another tool's hooks on top).
            let name = unsafe {
                let get: extern "C" fn() -> *const std::ffi::c_char = std::mem::transmute(symbol);
                get()
            };
            // SAFETY: a non-null result is a static NUL-terminated string.
            (!name.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy().into_owned())
        })
        .flatten();
    Ok(match named {
        Some(name) => name,
        None => {
            let blocks: i64 = py.import("sys")?.call_method0("getallocatedblocks")?.extract()?;
            if blocks > 0 { "pymalloc" } else { "malloc" }.to_string()
        }
    })
}

/// The size of a pymalloc arena: 256 KiB before 3.10, 1 MiB since on 64-bit builds. Since 3.11
/// the interpreter also takes its frames' data-stack chunks (16 KiB, or a power of two above)
/// through the arena hook; those are not pymalloc's arenas.
pub fn pymalloc_arena_size(minor: u32) -> u64 {
    if minor < 10 {
        256 << 10
    } else {
        1 << 20
    }
}

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

/// The address of 3.11 code object `code`'s line array, 0 when its layout was not verified.
///
/// # Safety
/// `code` must be a live code object of 3.11.
pub unsafe fn line_array_311(code: usize) -> usize {
    if !CODE_LAYOUT_311.load(Ordering::Relaxed) {
        return 0;
    }
    // SAFETY: `code` is live and has the verified 3.11 layout.
    unsafe { code_field::<usize>(code, LINE_ARRAY_OFFSET_311) }
}

/// Whether 3.11 code object `code` may be a generator's or coroutine's: by its flags when its
/// layout was verified, else always.
///
/// # Safety
/// `code` must be a live code object of 3.11.
pub unsafe fn maybe_generator_311(code: usize) -> bool {
    // SAFETY: `code` is live; it has the verified layout if read.
    !CODE_LAYOUT_311.load(Ordering::Relaxed)
        || unsafe { code_field::<i32>(code, FLAGS_OFFSET_311) } & GENERATOR_FLAGS != 0
}

/// The verified offset of `f_trace_lines` in frame objects (3.9-3.11), 0 when unknown.
pub fn trace_lines_offset() -> usize {
    TRACE_LINES_OFFSET.load(Ordering::Relaxed)
}

/// Whether `one_digit_value` may be used.
pub fn ints_readable() -> bool {
    INTS_READABLE.load(Ordering::Relaxed)
}

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
    let (before, after) =
        unsafe { thread_state_change(|| pyo3_ffi::PyEval_SetTrace(Some(crate::tracing::trace), sentinel.as_ptr())) };
    let func_word = only_word_changed_to(&before, &after, crate::tracing::trace as *const () as usize);
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
pub fn current_trace() -> Option<(usize, *mut PyObject)> {
    let (func_word, obj_word) = (TRACE_FUNC_WORD.load(Ordering::Relaxed), TRACE_OBJ_WORD.load(Ordering::Relaxed));
    // SAFETY: GIL held (every caller is a traced call's entry or exit); the words were found by
    // `calibrate_trace_slots`.
    (func_word != 0).then(|| unsafe { (thread_state_word(func_word), thread_state_word(obj_word) as *mut PyObject) })
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
    let (before, after) = unsafe {
        thread_state_change(|| pyo3_ffi::PyEval_SetProfile(Some(crate::tracing::profile), sentinel.as_ptr()))
    };
    let word = only_word_changed_to(&before, &after, crate::tracing::profile as *const () as usize);
    let previous_obj = if current.is_none() { std::ptr::null_mut() } else { current.as_ptr() };
    if word.is_some() || previous_obj.is_null() {
        if let Some(word) = word {
            PROFILE_FUNC_WORD.store(word, Ordering::Relaxed);
        }
        let previous = word.map(|i| before[i]).filter(|&f| f != 0);
        // SAFETY: as in `calibrate_trace_slots`.
        unsafe { pyo3_ffi::PyEval_SetProfile(previous.map(|f| std::mem::transmute(f)), previous_obj) };
        return Ok(());
    }
    py.import("sys")?.call_method1("setprofile", (current,))?;
    Ok(())
}

/// The calling thread's profile function, if its slot was found.
pub fn current_profile() -> Option<usize> {
    let word = PROFILE_FUNC_WORD.load(Ordering::Relaxed);
    // SAFETY: GIL held; the word was found by `calibrate_profile_slot`.
    (word != 0).then(|| unsafe { thread_state_word(word) })
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
pub unsafe fn one_digit_value(int: *mut PyObject) -> Option<u32> {
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

/// `PyFunction_SetVectorcall` (3.12+), looked up at run time so that the extension still loads
/// on 3.9-3.11, which lack it. Setting a function's vectorcall also resets its version, so call
/// sites the interpreter specialised for the function stop inlining it.
pub fn function_vectorcall_setter() -> Option<unsafe extern "C" fn(*mut PyObject, pyo3_ffi::vectorcallfunc)> {
    static SETTER: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
    let symbol = *SETTER
        .get_or_init(|| unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"PyFunction_SetVectorcall".as_ptr()) } as usize);
    // SAFETY: the symbol is CPython's `void PyFunction_SetVectorcall(PyFunctionObject *,
    // vectorcallfunc)`.
    (symbol != 0).then(|| unsafe {
        std::mem::transmute::<usize, unsafe extern "C" fn(*mut PyObject, pyo3_ffi::vectorcallfunc)>(symbol)
    })
}
