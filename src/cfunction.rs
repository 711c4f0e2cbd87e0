//! Functions the interpreter calls with the fastcall convention, defined without pyo3's argument
//! parsing and trampoline (they took a sixth of the time of a profiled loop that does not
//! allocate), and without allocating anything of their own while called.

use pyo3::prelude::*;
use pyo3_ffi::{
    PyCFunctionFast, PyCFunction_NewEx, PyMethodDef, PyMethodDefPointer, PyObject, Py_INCREF, Py_None, METH_FASTCALL,
};
use std::cell::UnsafeCell;
use std::ffi::CStr;

/// A method definition; CPython keeps a pointer to it for as long as the function object lives
/// (the life of the process).
pub struct FastFunction(UnsafeCell<PyMethodDef>);

// SAFETY: never written after construction; CPython only reads it, with the GIL held.
unsafe impl Sync for FastFunction {}

impl FastFunction {
    pub const fn new(name: &'static CStr, doc: &'static CStr, meth: PyCFunctionFast) -> Self {
        FastFunction(UnsafeCell::new(PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: PyMethodDefPointer { PyCFunctionFast: meth },
            ml_flags: METH_FASTCALL,
            ml_doc: doc.as_ptr(),
        }))
    }

    /// The function object, for the module to export.
    pub fn object<'py>(&'static self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: GIL held; the definition is static, so it outlives the function object.
        unsafe {
            let function = PyCFunction_NewEx(self.0.get(), std::ptr::null_mut(), std::ptr::null_mut());
            Bound::from_owned_ptr_or_err(py, function)
        }
    }
}

/// What a callback returns when it has nothing to say: a new reference to None.
///
/// # Safety
/// GIL held.
pub unsafe fn new_none() -> *mut PyObject {
    // SAFETY: GIL held (the contract); None is immortal or at least alive for the process.
    unsafe {
        Py_INCREF(Py_None());
        Py_None()
    }
}
