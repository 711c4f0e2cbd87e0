//! memsleuth._native: the allocator hooks, the line tracer and the report, over memsleuth-core.

mod cli;
mod hooks;
mod rss;
mod state;
mod tracing;

use clap::Parser;
use memsleuth_core::ledger::{FuncInfo, SavedFrame};
use memsleuth_core::report::{render_function, Report};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use state::with_ledger;
use std::cell::Cell;
use std::sync::atomic::Ordering;

/// Installs the allocator hooks (once) and starts tracking. `python_minor` is
/// sys.version_info[1]; before 3.12, `frame` (any live frame) calibrates the C trace function.
#[pyfunction]
#[pyo3(signature = (python_minor, frame=None))]
fn install(python_minor: u32, frame: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    tracing::FRAME_OBJECTS_ARE_OURS.store(python_minor == 11, Ordering::Relaxed);
    if let Some(frame) = frame {
        tracing::USES_TRACE.store(true, Ordering::Relaxed);
        tracing::calibrate(frame, python_minor)?;
    }
    hooks::install();
    Ok(())
}

/// Before 3.12, a thread is traced only while it has a profiled call on its stack.
fn trace_while_profiling(push: impl FnOnce(), was_idle: bool) {
    push();
    let idle = state::top_code() == 0;
    if was_idle != idle && tracing::USES_TRACE.load(Ordering::Relaxed) {
        tracing::set_thread_tracing(!idle);
    }
}

/// Registers a profiled function; returns its id (the same id for the same code object).
#[pyfunction]
fn register(
    code: &Bound<'_, PyAny>,
    name: String,
    module: String,
    filename: String,
    first_lineno: u32,
    source: Vec<String>,
) -> u32 {
    let info = FuncInfo { name, module, filename, first_lineno, source, code: code.as_ptr() as usize };
    let mut ledger = state::LEDGER.lock();
    ledger.register_function(info)
}

/// A call of profiled function `fid` starts on this thread.
#[pyfunction]
fn enter(fid: u32) {
    let reading = rss::current();
    let was_idle = state::top_code() == 0;
    trace_while_profiling(|| with_ledger(|l, hot| l.enter(hot, fid, reading)), was_idle);
}

/// The innermost profiled call returned or raised; true if no other call of the same function
/// remains on this thread.
#[pyfunction]
fn leave() -> bool {
    let reading = rss::current();
    let mut outermost = false;
    trace_while_profiling(
        || outermost = with_ledger(|l, hot| l.leave(hot, reading).is_some_and(|(_, outermost)| outermost)),
        false,
    );
    outermost
}

/// The frame of a profiled generator or coroutine, kept while it is suspended.
#[pyclass(module = "memsleuth._native")]
struct GenFrame {
    saved: Option<SavedFrame>,
}

#[pymethods]
impl GenFrame {
    #[new]
    fn new(fid: u32) -> Self {
        GenFrame { saved: Some(SavedFrame::unstarted(fid)) }
    }

    /// The generator is about to run (first resume is its call).
    fn resume(&mut self) {
        let Some(saved) = self.saved.take() else { return };
        let reading = rss::current();
        let was_idle = state::top_code() == 0;
        trace_while_profiling(|| with_ledger(|l, hot| l.resume(hot, saved, reading)), was_idle);
    }

    /// The generator yielded: its lines stop being active.
    fn suspend(&mut self) {
        let reading = rss::current();
        trace_while_profiling(|| self.saved = with_ledger(|l, hot| l.suspend(hot, reading)), false);
    }

    /// The generator finished or raised; true if no other call of the function remains on this
    /// thread.
    fn finish(&mut self) -> bool {
        leave()
    }
}

/// The LINE callback of sys.monitoring (3.12+).
#[pyfunction]
fn line_event(code: &Bound<'_, PyAny>, line: &Bound<'_, PyAny>) {
    let Ok(lineno) = line.extract::<u32>() else { return };
    // Ints beyond the small-int cache are allocated for each callback: they are ours.
    let int_obj = (lineno > 256).then(|| line.as_ptr() as usize);
    tracing::line_event(code.as_ptr() as usize, lineno, int_obj);
}

thread_local! {
    static SAVED_OWNER: Cell<u32> = const { Cell::new(0) };
}

/// Until `end_quiet`, what this thread allocates is the profiler's own (rendering a report).
#[pyfunction]
fn begin_quiet() {
    let owner = with_ledger(|l, hot| l.begin_profiler_work(hot));
    SAVED_OWNER.with(|s| s.set(owner));
}

#[pyfunction]
fn end_quiet() {
    let owner = SAVED_OWNER.with(|s| s.get());
    with_ledger(|l, hot| l.end_profiler_work(hot, owner));
}

fn build_report(python_version: &str, argv: Option<Vec<String>>) -> Report {
    let peak = rss::peak();
    let ledger = state::LEDGER.lock();
    Report::from_ledger(&ledger, python_version, argv, peak)
}

/// The JSON report (SPEC section 5) of everything profiled so far.
#[pyfunction]
#[pyo3(signature = (python_version, argv=None))]
fn report_json(python_version: &str, argv: Option<Vec<String>>) -> String {
    build_report(python_version, argv).to_json()
}

/// The text report (SPEC section 6) of the function with code object `code`.
#[pyfunction]
fn report_text(precision: usize, code: &Bound<'_, PyAny>) -> String {
    build_report("", None)
        .functions
        .iter()
        .filter(|f| f.code == code.as_ptr() as usize)
        .map(|f| render_function(f, precision))
        .collect()
}

/// The profiler's own bookkeeping: live tracked blocks and the bytes its tables occupy.
#[pyfunction]
fn overhead() -> (usize, usize) {
    let ledger = state::LEDGER.lock();
    (ledger.table.len(), ledger.footprint())
}

/// Parses memsleuth's command line. Returns ("run", options) or ("exit", status, message) for
/// help, version and usage errors, which the caller prints.
#[pyfunction]
fn parse_cli<'py>(py: Python<'py>, argv: Vec<String>) -> PyResult<Bound<'py, PyAny>> {
    match cli::Cli::try_parse_from(argv) {
        Ok(cli::Cli { command: cli::Command::Run { json, precision, script, args } }) => {
            let options = PyDict::new(py);
            options.set_item("json", json)?;
            options.set_item("precision", precision)?;
            options.set_item("script", script)?;
            options.set_item("args", args)?;
            ("run", options).into_pyobject(py).map(|t| t.into_any())
        }
        Err(e) => {
            ("exit", e.exit_code(), e.render().to_string(), e.use_stderr()).into_pyobject(py).map(|t| t.into_any())
        }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(install, m)?)?;
    m.add_function(wrap_pyfunction!(register, m)?)?;
    m.add_function(wrap_pyfunction!(enter, m)?)?;
    m.add_function(wrap_pyfunction!(leave, m)?)?;
    m.add_function(wrap_pyfunction!(line_event, m)?)?;
    m.add_function(wrap_pyfunction!(begin_quiet, m)?)?;
    m.add_function(wrap_pyfunction!(end_quiet, m)?)?;
    m.add_function(wrap_pyfunction!(report_json, m)?)?;
    m.add_function(wrap_pyfunction!(report_text, m)?)?;
    m.add_function(wrap_pyfunction!(parse_cli, m)?)?;
    m.add_function(wrap_pyfunction!(overhead, m)?)?;
    m.add_class::<GenFrame>()?;
    Ok(())
}
