//! memsleuth._native: the allocator hooks, the line tracer and the report, over memsleuth-core.

// The readings of the program's own memory are glibc's (mallinfo2, 2.33+) and Linux's (statm,
// pagemap, memfd): other platforms are refused here rather than half-measured.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
compile_error!(
    "memsleuth supports Linux with glibc 2.33 or later only (it reads mallinfo2, /proc/self/statm and pagemap)"
);

mod cfunction;
mod cli;
mod compat;
mod gc;
mod hooks;
mod profiled;
mod rss;
mod sink;
mod state;
mod tracing;

use memsleuth_core::record::{Record, Request};
use memsleuth_core::report::{render_live_at_peak, render_text, Report};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyStopAsyncIteration, PyStopIteration};
use pyo3::prelude::*;
use pyo3::sync::Interned;
use pyo3::types::{PyDict, PyString};
use std::sync::atomic::Ordering;

#[global_allocator]
static ALLOCATOR: rss::CountingAllocator = rss::CountingAllocator;

/// Installs the allocator hooks (once) and starts recording, into a ring a sink drains (see
/// `open_ring`). `python_minor` is sys.version_info[1]; before 3.12, `frame` (any live frame) calibrates the C trace function,
/// `driver_code` names the code objects of the generator driver and `current_trace` is
/// `sys.gettrace()`, the trace function in place, which calibration leaves as it was.
#[pyfunction]
#[pyo3(signature = (python_minor, frame=None, driver_code=Vec::new(), current_trace=None))]
fn install(
    py: Python<'_>,
    python_minor: u32,
    frame: Option<&Bound<'_, PyAny>>,
    driver_code: Vec<Bound<'_, PyAny>>,
    current_trace: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    tracing::FRAME_OBJECTS_ARE_OURS.store(python_minor == 11, Ordering::Relaxed);
    compat::glibc_serves_above(py)?;
    compat::measure_gc_head(py)?;
    if python_minor >= 12 {
        compat::verify_int_layout(py)?;
    }
    if let Some(frame) = frame {
        tracing::USES_TRACE.store(true, Ordering::Relaxed);
        compat::calibrate(frame, python_minor)?;
        compat::calibrate_trace_slots(py, current_trace.unwrap_or(&py.None().into_bound(py)))?;
        tracing::keep_getprofile(py)?;
        compat::calibrate_profile_slot(py)?;
        tracing::set_driver_code(&driver_code);
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
    let code = code.as_ptr() as usize;
    state::register(code, || Record::Register { code: code as u64, first_lineno, name, module, filename, source })
}

/// A call of profiled function `fid` starts on this thread.
pub(crate) fn enter_call(fid: u32) {
    let was_idle = state::top_code() == 0;
    trace_while_profiling(|| state::enter_func(fid), was_idle);
}

/// The innermost profiled call returned or raised; true if no other call of the same function
/// remains on this thread.
pub(crate) fn leave_call() -> bool {
    let mut outermost = false;
    trace_while_profiling(|| outermost = state::leave(), false);
    outermost
}

/// `sys.settrace` ran on this thread (before 3.12): memsleuth's trace function goes back in
/// place if the thread is inside a profiled call, chaining to the new one.
#[pyfunction]
fn retake_trace() {
    tracing::retake_thread_tracing();
}

/// `enter_call`, for the generator and coroutine drivers and module code.
#[pyfunction]
fn enter(fid: u32) {
    enter_call(fid);
}

/// `leave_call`, for the generator and coroutine drivers and module code.
#[pyfunction]
fn leave() -> bool {
    leave_call()
}

/// The frame of a profiled generator or coroutine, kept while it is suspended. The driver runs
/// it one step at a time with the module's `gen_*` functions, so that its lines are active only
/// while it runs. They are functions rather than methods: on 3.11, under the C trace function, a
/// method call made a bound method object, allocated on one side of a resume or suspend and
/// freed on the other.
#[pyclass(module = "memsleuth._native")]
struct GenFrame {
    frame: state::GeneratorFrame,
    /// Whether the driven objects are the steps (asend, athrow) of an async generator.
    async_steps: bool,
    /// Whether the latest step ended with the driven object returning (not yielding).
    #[pyo3(get)]
    returned: bool,
    /// Whether an async generator's step ended with StopAsyncIteration: the generator is done.
    #[pyo3(get)]
    exhausted: bool,
}

#[pymethods]
impl GenFrame {
    #[new]
    #[pyo3(signature = (fid, async_steps=false))]
    fn new(fid: u32, async_steps: bool) -> Self {
        GenFrame { frame: state::GeneratorFrame::new(fid), async_steps, returned: false, exhausted: false }
    }
}

/// The generator is about to run (first resume is its call).
#[pyfunction]
fn gen_resume(frame: &Bound<'_, GenFrame>) {
    frame.borrow_mut().resume();
}

/// The generator yielded: its lines stop being active.
#[pyfunction]
fn gen_suspend(frame: &Bound<'_, GenFrame>) {
    frame.borrow_mut().suspend();
}

/// One step: resumes, then `inner.send(value)`, or `inner.throw(thrown)` if given. What `inner`
/// yields is returned with the frame suspended again; if `inner` returns, `returned` is set and
/// its value returned with the frame still active, as when an async generator's step ends it
/// (`exhausted` set, None returned); an exception propagates with the frame active.
#[pyfunction]
#[pyo3(signature = (frame, inner, value, thrown=None))]
fn gen_step(
    frame: &Bound<'_, GenFrame>,
    inner: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
    thrown: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let py = inner.py();
    let (method, arg) = match thrown {
        Some(exception) => (THROW.get(py), exception),
        None => (SEND.get(py), value),
    };
    frame.borrow_mut().step(inner, method, arg)
}

impl GenFrame {
    fn resume(&mut self) {
        let was_idle = state::top_code() == 0;
        trace_while_profiling(|| self.frame.resume(), was_idle);
    }

    fn suspend(&mut self) {
        trace_while_profiling(|| self.frame.suspend(), false);
    }

    /// Calls `inner.method(arg)` in C, so that the StopIteration that carries a return value (and,
    /// for an async generator's step, every value it yields) is caught before it reaches a Python
    /// frame, which would add a traceback, and so that the exception object is the profiler's.
    fn step(
        &mut self,
        inner: &Bound<'_, PyAny>,
        method: &Bound<'_, PyString>,
        arg: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let py = inner.py();
        self.returned = false;
        self.resume();
        // SAFETY: GIL held, all three are live objects; the call returns a new reference, or null
        // with an exception set.
        let raw = unsafe { pyo3_ffi::PyObject_CallMethodOneArg(inner.as_ptr(), method.as_ptr(), arg.as_ptr()) };
        if !raw.is_null() {
            self.suspend();
            // SAFETY: `raw` is a new reference, owned from here on.
            return Ok(unsafe { Bound::from_owned_ptr(py, raw) }.unbind());
        }
        let err = PyErr::fetch(py);
        let exhausted = self.async_steps && err.is_instance_of::<PyStopAsyncIteration>(py);
        if !exhausted && !err.is_instance_of::<PyStopIteration>(py) {
            return Err(err);
        }
        let stop = err.value(py);
        // SAFETY: `stop` is a live exception instance, held while this runs.
        let blocks = unsafe { tracing::exception_blocks(stop.as_ptr()) };
        for block in blocks {
            state::disown(block);
        }
        self.returned = true;
        self.exhausted = exhausted;
        if exhausted {
            return Ok(py.None());
        }
        // SAFETY: `stop` is a live StopIteration (or subclass) instance, which begins with this
        // layout; `value` is a new reference to the field, or None where it is null.
        let value = unsafe {
            Bound::from_borrowed_ptr_or_opt(py, (*(stop.as_ptr() as *const pyo3_ffi::PyStopIterationObject)).value)
        };
        Ok(value.map_or_else(|| py.None(), Bound::unbind))
    }
}

/// Method names the generator driver calls, made when the module loads (made on first use, they
/// would be charged to whichever line was running then).
static SEND: Interned = Interned::new("send");
static THROW: Interned = Interned::new("throw");

/// Until `end_quiet`, what this thread allocates is the profiler's own (registering a function,
/// rendering a report). Returns a token for `end_quiet`, so quiet sections can nest.
#[pyfunction]
fn begin_quiet() -> u32 {
    state::begin_quiet()
}

#[pyfunction]
fn end_quiet(token: u32) {
    state::end_quiet(token);
}

fn ask(request: Request) -> PyResult<String> {
    sink::request(request).ok_or_else(|| PyRuntimeError::new_err("memsleuth: the sink keeping the figures is gone"))
}

/// The JSON report (docs/design.md, Reports) of everything profiled so far.
#[pyfunction]
#[pyo3(signature = (python_version, argv=None, selection=None))]
fn report_json(python_version: String, argv: Option<Vec<String>>, selection: Option<String>) -> PyResult<String> {
    hooks::verify();
    ask(Request::Json { python_version, argv, selection, rss_peak: rss::peak(), codes: None })
}

/// The JSON report of the functions whose code objects are in `codes` only, with `process` as in
/// the full report: the pytest plugin reads one test's figures after each test, and building
/// every function profiled so far there would cost the session time quadratic in its tests.
#[pyfunction]
#[pyo3(signature = (python_version, codes, selection=None))]
fn report_json_of(python_version: String, codes: Vec<Bound<'_, PyAny>>, selection: Option<String>) -> PyResult<String> {
    let codes = Some(codes.iter().map(|code| code.as_ptr() as u64).collect());
    hooks::verify();
    ask(Request::Json { python_version, argv: None, selection, rss_peak: rss::peak(), codes })
}

/// The text report (docs/design.md, Reports) of the function with code object `code`.
#[pyfunction]
#[pyo3(signature = (precision, code, min_bytes=0))]
fn report_text(precision: u32, code: &Bound<'_, PyAny>, min_bytes: u64) -> PyResult<String> {
    hooks::verify();
    ask(Request::Text { precision, code: code.as_ptr() as u64, min_bytes })
}

/// Renders a saved JSON report as text; a ValueError says why the text is not a report.
#[pyfunction]
fn render_saved(text: &str, precision: usize, min_bytes: u64) -> PyResult<String> {
    let report = Report::from_json(text).map_err(pyo3::exceptions::PyValueError::new_err)?;
    Ok(render_text(&report, precision, min_bytes))
}

/// The summary (JSON) over the saved JSON reports of several processes: the figures of the same
/// function added up; a ValueError says which text is not a report.
#[pyfunction]
fn summarize_saved(texts: Vec<String>) -> PyResult<String> {
    let reports = texts.iter().map(|t| Report::from_json(t)).collect::<Result<Vec<_>, _>>();
    Ok(Report::summary(&reports.map_err(pyo3::exceptions::PyValueError::new_err)?).to_json())
}

/// What was live at the tracked peak, by line, in a saved JSON report (empty before any tracked
/// block); a ValueError says why the text is not a report.
#[pyfunction]
fn live_at_peak_saved(text: &str) -> PyResult<String> {
    let report = Report::from_json(text).map_err(pyo3::exceptions::PyValueError::new_err)?;
    Ok(render_live_at_peak(&report))
}

/// The books' size: live tracked blocks and the bytes the sink's tables occupy.
#[pyfunction]
fn overhead() -> PyResult<(u64, u64)> {
    let [blocks, bytes, _] = counters()?;
    Ok((blocks, bytes))
}

/// The sink's counters: live tracked blocks, the books' bytes, live tracked bytes.
fn counters() -> PyResult<[u64; 3]> {
    let answer = ask(Request::Counters)?;
    let mut numbers = answer.split(' ').map(|n| n.parse().unwrap_or(0));
    Ok(std::array::from_fn(|_| numbers.next().unwrap_or(0)))
}

/// What the build and version of this interpreter keep memsleuth from profiling it, or None:
/// `version` is (major, minor), `gil_disabled` whether it is a free-threaded build.
#[pyfunction]
fn unsupported(version: (u32, u32), gil_disabled: bool) -> Option<String> {
    compat::unsupported(version, gil_disabled)
}

/// The allocator behind the MEM and OBJ domains, as PYTHONMALLOC names it.
#[pyfunction]
fn allocator(py: Python<'_>) -> PyResult<&'static str> {
    compat::allocator(py)
}

/// The size of this interpreter's pymalloc arenas.
#[pyfunction]
fn pymalloc_arena_size(py: Python<'_>) -> u64 {
    compat::pymalloc_arena_size(py.version_info().minor as u32)
}

/// MEM and OBJ requests above this many bytes are served by glibc.
#[pyfunction]
fn glibc_serves_above(py: Python<'_>) -> PyResult<u64> {
    compat::glibc_serves_above(py)
}

/// Makes the ring this process records into; returns its memfd, for a sink process to map.
#[pyfunction]
fn open_ring() -> PyResult<i32> {
    sink::open_ring().map_err(|e| PyOSError::new_err(format!("memsleuth: cannot make the ring: {e}")))
}

/// The program's allocators, for the books: the sink runs the program's interpreter, so the
/// arena size is its own.
fn allocators(py: Python<'_>, glibc_serves_above: u64) -> sink::Allocators {
    sink::Allocators { glibc_serves_above, arena_size: compat::pymalloc_arena_size(py.version_info().minor as u32) }
}

/// Keeps the books in a thread of this process.
#[pyfunction]
fn start_sink_thread(py: Python<'_>) -> PyResult<()> {
    sink::start_thread(allocators(py, compat::glibc_serves_above(py)?))
        .map_err(|e| PyOSError::new_err(format!("memsleuth: cannot start the sink: {e}")))
}

/// In a sink process: maps the program's ring from its memfd.
#[pyfunction]
fn attach_ring(fd: i32) -> PyResult<()> {
    sink::attach_ring(fd).map_err(|e| PyOSError::new_err(format!("memsleuth: cannot map the ring: {e}")))
}

/// In the program: forks the sink process if this process runs one thread and is small, and
/// returns its pid (None: it must be spawned). Its answers go in `replies`; `doorbell` is the
/// read end of the doorbell; `report`, under `--follow-fork`, where its JSON report goes.
#[pyfunction]
#[pyo3(signature = (doorbell, replies, glibc_serves_above, report=None))]
fn fork_sink(
    py: Python<'_>,
    doorbell: i32,
    replies: std::path::PathBuf,
    glibc_serves_above: u64,
    report: Option<std::path::PathBuf>,
) -> PyResult<Option<i32>> {
    let sink = sink::ForkedSink {
        doorbell,
        replies,
        allocators: allocators(py, glibc_serves_above),
        report,
        python_version: python_version(py),
    };
    sink::fork(sink).map_err(|e| PyOSError::new_err(format!("memsleuth: cannot fork the sink: {e}")))
}

/// In a spawned sink, once its program has ended (`finished`: normally): a followed child's JSON
/// report at `report`, or the death report on stderr (as a forked sink leaves them).
#[pyfunction]
#[pyo3(signature = (finished, report=None))]
fn leave_sink_reports(py: Python<'_>, finished: bool, report: Option<std::path::PathBuf>) {
    sink::leave_reports(finished, report.as_deref(), python_version(py));
}

/// This interpreter's version as the reports name it ("3.12.1").
fn python_version(py: Python<'_>) -> String {
    let version = py.version_info();
    format!("{}.{}.{}", version.major, version.minor, version.patch)
}

/// In the program: the sink process `sink_pid` keeps the books; `doorbell` wakes it, answers
/// come in the directory `replies`.
#[pyfunction]
fn connect_sink(doorbell: i32, replies: std::path::PathBuf, sink_pid: i32, sink_is_parent: bool) {
    sink::connect(doorbell, replies, sink_pid, sink_is_parent);
}

/// In the sink process: keeps the books until the program `program` ends (this process's child,
/// or its parent if `program_is_parent`), answering in `replies` (GIL released). Returns a dict:
/// `exit_record` (the status the program ended with normally, or None), `exit_status` and
/// `signal` (from waitpid, for a child), `rss_peak` and `cut_short`.
#[pyfunction]
fn serve_sink(
    py: Python<'_>,
    doorbell: i32,
    replies: std::path::PathBuf,
    program: i32,
    program_is_parent: bool,
    glibc_serves_above: u64,
) -> PyResult<Bound<'_, PyDict>> {
    let allocators = allocators(py, glibc_serves_above);
    let ending = py.detach(|| sink::serve(doorbell, &replies, program, program_is_parent, allocators));
    let out = PyDict::new(py);
    out.set_item("exit_record", ending.exit_record)?;
    out.set_item("exit_status", ending.waited.and_then(|w| w.0))?;
    out.set_item("signal", ending.waited.and_then(|w| w.1))?;
    out.set_item("rss_peak", ending.rss_peak)?;
    out.set_item("cut_short", ending.cut_short)?;
    Ok(out)
}

/// Whether this thread is inside a profiled call.
#[pyfunction]
fn inside_profiled_call() -> bool {
    state::top_code() != 0
}

/// A forked child with a sink of its own records again (its hooks stayed installed).
#[pyfunction]
fn resume_recording() {
    if hooks::installed() {
        state::resume();
    }
}

/// The program ended normally with `status`: the sink knows the report is whole.
#[pyfunction]
fn record_exit(status: i32) {
    state::emit(Record::Exit { status });
}

/// In the sink: every function's text table (for a program that could not ask for them).
#[pyfunction]
fn report_all_text(precision: usize, min_bytes: u64) -> String {
    let books = sink::BOOKS.lock();
    render_text(&Report::from_ledger(&books.ledger, "", None, 0), precision, min_bytes)
}

/// In the sink: the first lines of the report of a program that ended as `how` says, without
/// finishing (docs/design.md, "The books live in the sink", Death).
#[pyfunction]
fn death_heading(how: &str) -> String {
    let books = sink::BOOKS.lock();
    sink::death_heading(&books, &Report::from_ledger(&books.ledger, "", None, 0), how)
}

/// The heading of a saved report whose program died: how it ended, the frames running then as
/// (function, file, line), and its live-at-peak section (text, or empty).
#[pyfunction]
fn incomplete_heading(how: &str, frames: Vec<(String, String, u32)>, at_peak: &str) -> String {
    sink::incomplete_heading(how, frames, at_peak)
}

/// In the sink: the profiled frames open when the program ended, innermost per thread, as
/// (function name, file, line).
#[pyfunction]
fn open_frames() -> Vec<(String, String, u32)> {
    sink::running_frames(&sink::BOOKS.lock())
}

/// The bytes of tracked blocks live now, process-wide (the timeline's samples).
#[pyfunction]
fn tracked_live_bytes() -> PyResult<u64> {
    Ok(counters()?[2])
}

/// (readings taken, readings that asked glibc for its heap figures) so far: mallinfo2 walks
/// every free chunk of glibc's heap, so the second must stay far below the first.
#[pyfunction]
fn reading_counts() -> (u64, u64) {
    rss::reading_counts()
}

/// From now on, `hook(rss_bytes)` is called once at the first line or return event of a profiled
/// frame after a reading saw the process's RSS at or over `bytes` (`--pdb-mmem`); 0: never.
#[pyfunction]
#[pyo3(signature = (bytes, hook=None))]
fn set_rss_limit(bytes: u64, hook: Option<Py<PyAny>>) {
    tracing::set_rss_limit(bytes, hook);
}

/// Parses memsleuth's command line. Returns (command, options) for `run` and `report`, or
/// ("exit", status, message, to_stderr) for help, version and usage errors, which the caller
/// prints.
#[pyfunction]
fn parse_cli<'py>(py: Python<'py>, argv: Vec<String>) -> PyResult<Bound<'py, PyAny>> {
    let options = PyDict::new(py);
    let command = match cli::parse(argv) {
        Ok(cli::Cli {
            command:
                cli::Command::Run {
                    module,
                    code,
                    functions,
                    json,
                    html,
                    output,
                    quiet,
                    follow_fork,
                    interval,
                    timestamp,
                    include_children,
                    pdb_mmem,
                    text,
                    program,
                },
        }) => {
            options.set_item("module", module)?;
            options.set_item("code", code)?;
            options.set_item("functions", functions)?;
            options.set_item("json", json)?;
            options.set_item("html", html)?;
            options.set_item("output", output)?;
            options.set_item("quiet", quiet)?;
            options.set_item("follow_fork", follow_fork)?;
            options.set_item("interval", interval)?;
            options.set_item("timestamp", timestamp)?;
            options.set_item("include_children", include_children)?;
            options.set_item("pdb_mmem", pdb_mmem)?;
            options.set_item("program", program)?;
            options.set_item("precision", text.precision)?;
            options.set_item("min_bytes", text.min_bytes.unwrap_or(0))?;
            "run"
        }
        Ok(cli::Cli { command: cli::Command::Report { file, html, open, text } }) => {
            options.set_item("file", file)?;
            options.set_item("html", html)?;
            options.set_item("open", open)?;
            options.set_item("precision", text.precision)?;
            options.set_item("min_bytes", text.min_bytes.unwrap_or(0))?;
            "report"
        }
        Err(e) => {
            return ("exit", e.exit_code(), e.render().to_string(), e.use_stderr())
                .into_pyobject(py)
                .map(|t| t.into_any());
        }
    };
    (command, options).into_pyobject(py).map(|t| t.into_any())
}

#[pymodule(gil_used = true)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    compat::check_supported(m.py())?;
    SEND.get(m.py());
    THROW.get(m.py());
    m.add_function(wrap_pyfunction!(install, m)?)?;
    m.add_function(wrap_pyfunction!(register, m)?)?;
    m.add_function(wrap_pyfunction!(enter, m)?)?;
    m.add_function(wrap_pyfunction!(leave, m)?)?;
    m.add_function(wrap_pyfunction!(retake_trace, m)?)?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    m.add("line_event", tracing::LINE_CALLBACK.object(m.py())?)?;
    m.add("return_event", tracing::RETURN_CALLBACK.object(m.py())?)?;
    m.add("start_event", tracing::START_CALLBACK.object(m.py())?)?;
    m.add("unwind_event", tracing::UNWIND_CALLBACK.object(m.py())?)?;
    m.add("gc_callback", gc::GC_CALLBACK.object(m.py())?)?;
    m.add_function(wrap_pyfunction!(begin_quiet, m)?)?;
    m.add_function(wrap_pyfunction!(end_quiet, m)?)?;
    m.add_function(wrap_pyfunction!(report_json, m)?)?;
    m.add_function(wrap_pyfunction!(report_json_of, m)?)?;
    m.add_function(wrap_pyfunction!(report_text, m)?)?;
    m.add_function(wrap_pyfunction!(render_saved, m)?)?;
    m.add_function(wrap_pyfunction!(summarize_saved, m)?)?;
    m.add_function(wrap_pyfunction!(live_at_peak_saved, m)?)?;
    m.add_function(wrap_pyfunction!(unsupported, m)?)?;
    m.add_function(wrap_pyfunction!(allocator, m)?)?;
    m.add_function(wrap_pyfunction!(pymalloc_arena_size, m)?)?;
    m.add_function(wrap_pyfunction!(glibc_serves_above, m)?)?;
    m.add_function(wrap_pyfunction!(parse_cli, m)?)?;
    m.add_function(wrap_pyfunction!(set_rss_limit, m)?)?;
    m.add_function(wrap_pyfunction!(overhead, m)?)?;
    m.add_function(wrap_pyfunction!(reading_counts, m)?)?;
    m.add_function(wrap_pyfunction!(open_ring, m)?)?;
    m.add_function(wrap_pyfunction!(start_sink_thread, m)?)?;
    m.add_function(wrap_pyfunction!(attach_ring, m)?)?;
    m.add_function(wrap_pyfunction!(connect_sink, m)?)?;
    m.add_function(wrap_pyfunction!(serve_sink, m)?)?;
    m.add_function(wrap_pyfunction!(record_exit, m)?)?;
    m.add_function(wrap_pyfunction!(resume_recording, m)?)?;
    m.add_function(wrap_pyfunction!(inside_profiled_call, m)?)?;
    m.add("THREAD_SINK_HEADING", memsleuth_core::report::THREAD_SINK_HEADING)?;
    m.add_function(wrap_pyfunction!(report_all_text, m)?)?;
    m.add_function(wrap_pyfunction!(open_frames, m)?)?;
    m.add_function(wrap_pyfunction!(death_heading, m)?)?;
    m.add_function(wrap_pyfunction!(incomplete_heading, m)?)?;
    m.add_function(wrap_pyfunction!(fork_sink, m)?)?;
    m.add_function(wrap_pyfunction!(leave_sink_reports, m)?)?;
    m.add_function(wrap_pyfunction!(tracked_live_bytes, m)?)?;
    m.add_class::<GenFrame>()?;
    m.add_function(wrap_pyfunction!(gen_resume, m)?)?;
    m.add_function(wrap_pyfunction!(gen_suspend, m)?)?;
    m.add_function(wrap_pyfunction!(gen_step, m)?)?;
    m.add("Profiled", profiled::make_type(m.py())?)?;
    m.add_function(wrap_pyfunction!(profiled::profiled, m)?)?;
    m.add_function(wrap_pyfunction!(profiled::profiled_function, m)?)?;
    m.add_function(wrap_pyfunction!(profiled::set_watch_starts, m)?)?;
    Ok(())
}
