//! Line events. From CPython 3.12 sys.monitoring delivers LINE events for the profiled code
//! objects only (registered from Python, calling `line_event`); before 3.12 a C-level trace
//! function sees every line of every frame and drops the ones that are not the innermost
//! profiled frame's with one comparison, before taking any lock.

use crate::rss;
use crate::state::{hot, with_ledger};
use pyo3_ffi::{PyFrameObject, PyFrame_GetCode, PyFrame_GetLineNumber, PyObject, Py_DecRef, PyTrace_CALL, PyTrace_LINE};
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

/// On 3.11 the trace function makes the interpreter materialise a frame object for every call;
/// those objects are the profiler's, not the program's.
pub static FRAME_OBJECTS_ARE_OURS: AtomicBool = AtomicBool::new(false);

/// Size of PyGC_Head, which precedes a GC-tracked object inside its allocated block.
const GC_HEAD: usize = 16;

/// A line event for `code` at `lineno`; `int_obj` is the int object the interpreter allocated to
/// pass the line number, if any, so it can be taken out of the figures.
#[inline]
pub fn line_event(code: usize, lineno: u32, int_obj: Option<usize>) {
    let h = hot();
    if h.top_code != code {
        return;
    }
    let now = rss::coarse_now_us();
    let due = h.rss_due(now);
    with_ledger(|l, hot| {
        if let Some(addr) = int_obj {
            l.mark_profiler(hot, addr);
        }
        if !l.line_changes(hot, code, lineno) {
            return;
        }
        let reading = due.then(|| {
            hot.rss_taken(now);
            rss::current()
        });
        l.on_line(hot, code, lineno, reading);
    })
}

/// The C trace function used before 3.12.
///
/// # Safety
/// Called by the interpreter with the GIL held and a valid frame.
pub unsafe extern "C" fn trace(_obj: *mut PyObject, frame: *mut PyFrameObject, what: c_int, _arg: *mut PyObject) -> c_int {
    if what == PyTrace_LINE {
        // SAFETY: the interpreter passes a live frame; PyFrame_GetCode returns a new reference
        // that we release at once (the frame keeps the code alive), without allocating.
        let code = unsafe {
            let code = PyFrame_GetCode(frame) as *mut PyObject;
            Py_DecRef(code);
            code as usize
        };
        if hot().top_code != code {
            return 0;
        }
        // SAFETY: as above; during tracing the frame's line number is current.
        let lineno = unsafe { PyFrame_GetLineNumber(frame) };
        line_event(code, lineno.max(0) as u32, None);
    } else if what == PyTrace_CALL && FRAME_OBJECTS_ARE_OURS.load(Ordering::Relaxed) {
        let block = frame as usize - GC_HEAD;
        with_ledger(|l, hot| l.mark_profiler(hot, block));
    }
    0
}
