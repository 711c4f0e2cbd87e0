//! The gc.callbacks entry. For each collection's start and stop CPython builds an info dict and a
//! phase string only because a callback is registered: they, the dict's keys table, its keys and
//! its values are the profiler's. The entry is a C function, so calling it allocates nothing more
//! through the interpreter (a Python one would add its frame, and more on older versions).

use crate::cfunction::FastFunction;
use crate::state;
use pyo3_ffi::{
    PyDictObject, PyDict_CheckExact, PyDict_Next, PyObject, PyUnicode_Check, PyUnicode_CompareWithASCIIString,
    Py_ssize_t,
};

pub static GC_CALLBACK: FastFunction =
    FastFunction::new(c"gc_callback", c"The gc.callbacks entry: callback(phase, info).", gc_callback);

/// `callback(phase, info)`: a collection starts (phase "start") or stops on this thread.
///
/// # Safety
/// Called by the interpreter with the GIL held and `nargs` valid argument pointers.
unsafe extern "C" fn gc_callback(_module: *mut PyObject, args: *mut *mut PyObject, nargs: Py_ssize_t) -> *mut PyObject {
    if nargs == 2 {
        // SAFETY: the interpreter passes `nargs` live references in `args`.
        let (phase, info) = unsafe { (*args, *args.add(1)) };
        // SAFETY: `phase` is a live object; the comparison only runs on a str, and neither call
        // allocates or raises.
        let start =
            unsafe { PyUnicode_Check(phase) != 0 && PyUnicode_CompareWithASCIIString(phase, c"start".as_ptr()) == 0 };
        let mut made_for_us = vec![phase as usize];
        // SAFETY: `info` is a live object (GIL held).
        if unsafe { PyDict_CheckExact(info) } != 0 {
            // SAFETY: `info` is a live dict.
            made_for_us.extend(unsafe { dict_blocks(info) });
            let (mut pos, mut key, mut value) = (0, std::ptr::null_mut(), std::ptr::null_mut());
            // SAFETY: iterating a live dict with borrowed references, which allocates nothing.
            while unsafe { PyDict_Next(info, &mut pos, &mut key, &mut value) } != 0 {
                made_for_us.extend([key as usize, value as usize]);
            }
        }
        for block in made_for_us {
            state::disown(block);
        }
        state::collection(start);
    }
    // SAFETY: GIL held; the callback returns a new reference to None.
    unsafe { crate::cfunction::new_none() }
}

/// The blocks a dict occupies: its object (after the GC header) and its keys table.
///
/// # Safety
/// `dict` must be a live dict, or an instance of a subclass (which shares the layout), with the
/// GIL held.
unsafe fn dict_blocks(dict: *mut PyObject) -> [usize; 2] {
    // SAFETY: per the contract, `dict` begins with a PyDictObject, whose layout pyo3-ffi gives
    // for the interpreter this extension is built for.
    let keys = unsafe { (*(dict as *mut PyDictObject)).ma_keys };
    [crate::compat::gc_block(dict as usize), keys as usize]
}
