"""The @profile decorator and the tracking it starts."""

import _thread
import _weakref
import atexit
import gc
import os
import sys
import types

from . import _bytecode, _native, _nested, _sink, _source

# Modules the decorator does not need (json, threading, the timeline's) are imported where they
# are used: a program profiled with @profile keeps whatever memsleuth imports in its RSS
# (docs/design.md, "The books live in the sink"). functools and weakref are not imported at all:
# with collections, operator, itertools, keyword and reprlib they took about 4 ms of each run's
# start, for update_wrapper and a WeakSet (below).

#: What functools.update_wrapper copies, by version.
WRAPPER_ASSIGNMENTS = ("__module__", "__name__", "__qualname__", "__doc__", "__annotations__") + (
    ("__type_params__",) if sys.version_info >= (3, 12) else ())


def update_wrapper(wrapper, wrapped):
    """functools.update_wrapper(wrapper, wrapped) (tests/test_decorator.py compares them)."""
    for name in WRAPPER_ASSIGNMENTS:
        try:
            value = getattr(wrapped, name)
        except AttributeError:
            pass
        else:
            setattr(wrapper, name, value)
    wrapper.__dict__.update(getattr(wrapped, "__dict__", {}))
    wrapper.__wrapped__ = wrapped
    return wrapper


def wraps(wrapped):
    """functools.wraps(wrapped)."""
    return lambda wrapper: update_wrapper(wrapper, wrapped)


class WeakSet:
    """The part of weakref.WeakSet used here: add, and `in`."""

    def __init__(self):
        self._refs = set()

    def add(self, item):
        # A dead reference keeps the hash it had: the callback finds it in the set.
        self._refs.add(_weakref.ref(item, self._refs.discard))

    def __contains__(self, item):
        try:
            return _weakref.ref(item) in self._refs
        except TypeError:  # not weakly referenceable, or unhashable
            return False


_started = False
_start_lock = _thread.allocate_lock()
_monitoring_tool = None
#: The sys.monitoring tool ids memsleuth may take (3.12+), in order of preference.
FREE_TOOL_IDS = (3, 4)
#: The code flags that make a function a generator, coroutine or async generator function (what
#: inspect's isgeneratorfunction and its kin test, without importing inspect).
CO_GENERATOR, CO_COROUTINE, CO_ASYNC_GENERATOR = 0x20, 0x80, 0x200

#: Under ``memsleuth run`` tables are printed once at exit, not after each call.
deferred = False
#: Precision of the MiB columns when a decorator does not set its own.
default_precision = 1
#: The profiled program's argv under ``memsleuth run`` (None in decorator mode).
program_argv = None
#: Each profiled code object whose table ``memsleuth run`` prints at exit, in the order first
#: profiled, with its decorator's precision (None: the default). Functions given a stream of their
#: own, or profiled by a LineProfiler the program made, print their tables themselves.
precisions = {}


def _start():
    """Installs the allocator hooks and the line tracer, once per process."""
    global _started, _monitoring_tool
    with _start_lock:
        if _started:
            return
        if _sink.kind is None:
            _sink.start()
            # The program ending normally tells the sink its figures are whole.
            atexit.register(_native.record_exit, 0)
        if sys.version_info >= (3, 12):
            _native.install(sys.version_info[1])
            mon = sys.monitoring
            # Ids 0-2 and 5 are named for debuggers, coverage, profilers (cProfile takes 2) and
            # optimizers; memsleuth takes one of the two unnamed ones, so they all still work.
            for tool in FREE_TOOL_IDS:
                if mon.get_tool(tool) is None:
                    mon.use_tool_id(tool, "memsleuth")
                    _monitoring_tool = tool
                    break
            else:
                raise RuntimeError("memsleuth: sys.monitoring tool ids 3 and 4 are both taken by other tools")
            mon.register_callback(_monitoring_tool, mon.events.LINE, _native.line_event)
            # The return ends the last line: the frame's teardown after it gets a row of its own.
            mon.register_callback(_monitoring_tool, mon.events.PY_RETURN, _native.return_event)
            # Calls the interpreter makes inline (a profiled function calling itself) open at
            # their start and close after their return or unwind (docs/design.md, "Recursion
            # without a wrapper").
            mon.register_callback(_monitoring_tool, mon.events.PY_START, _native.start_event)
            _native.set_watch_starts(_watch_starts)
            mon.register_callback(_monitoring_tool, mon.events.PY_UNWIND, _native.unwind_event)
            # Unwinds are not a local event: they are asked of every frame, and dropped in C by
            # one comparison unless a profiled frame unwinds.
            mon.set_events(_monitoring_tool, mon.events.PY_UNWIND)
        else:
            # The C trace function is switched on per thread by the first profiled call.
            # The wrappers' frames receive the StopIteration of each generator they drive.
            driver_code = [c for c in _wrap.__code__.co_consts
                           if isinstance(c, types.CodeType) and c.co_name.endswith("_wrapper")]
            _native.install(sys.version_info[1], sys._getframe(), driver_code, sys.gettrace())
            sys.settrace = _chaining_settrace(sys.settrace)
        gc.callbacks.append(_native.gc_callback)
        _started = True


def _chaining_settrace(settrace):
    """``sys.settrace`` for 3.9-3.11: a trace function installed inside a profiled call is chained
    to from memsleuth's, which stays in place; it becomes the thread's own when the call ends."""

    @wraps(settrace)
    def chaining_settrace(function):
        settrace(function)
        _native.retake_trace()

    return chaining_settrace


#: From 3.12 a profiled plain function stays a function, which the interpreter can call inline.
INLINE_CALLS = sys.version_info >= (3, 12)


def _watch(code):
    if _monitoring_tool is not None:
        mon = sys.monitoring
        mon.set_local_events(_monitoring_tool, code, mon.events.LINE | mon.events.PY_RETURN)


def _watch_starts(code, on):
    """Asks sys.monitoring (3.12+) for the start events of ``code``, or stops them: they are on
    only while a recursive call of a profiled function runs inline."""
    mon = sys.monitoring
    events = mon.get_local_events(_monitoring_tool, code)
    events = events | mon.events.PY_START if on else events & ~mon.events.PY_START
    mon.set_local_events(_monitoring_tool, code, events)


#: A function's code object -> the copy a profiled function made from it runs (3.12+).
_code_copies = {}


def _with_own_code(func):
    """A function like ``func`` running a copy of its code object, the same copy for every
    function made from one code (a def run again makes another function of the same code).
    sys.monitoring's events are per code object: the copy's are memsleuth's, and ``func``
    itself stays unprofiled, as it is with a wrapper."""
    code = func.__code__
    copy = _code_copies.get(code)
    if copy is None:
        copy = _code_copies[code] = _bytecode.with_line_nops(code) or code.replace()
    own = types.FunctionType(copy, func.__globals__, func.__name__, func.__defaults__, func.__closure__)
    own.__kwdefaults__ = func.__kwdefaults__
    # What it is registered under: a functools.wraps wrapper carries the wrapped one's names.
    own.__qualname__, own.__module__ = func.__qualname__, func.__module__
    return own


def _source_lines(func):
    """The function's source from its first line (decorators included); none if unavailable."""
    found = _source.source_lines(func)
    return [] if found is None else [line.rstrip("\n") for line in found[0]]


def _absolute(filename):
    """The report names files absolutely; pseudo-files such as <string> keep their name."""
    return filename if filename.startswith("<") else os.path.abspath(filename)


#: id(code object) -> (the code object, its function id): a nested function is registered each
#: time its def runs.
registered = {}
#: code object -> the qualified name it was registered under.
qualnames = {}
#: The run's timeline (``memsleuth run``), sampled as outermost profiled calls end.
timeline = None


def _register(func):
    code = func.__code__
    # By identity: code objects compare equal by value, and the pytest plugin profiles equal
    # copies of a test function to tell its calls apart. The entry keeps the code alive, so its
    # id is never reused.
    _, fid = registered.get(id(code), (None, None))
    if fid is None:
        fid = _native.register(
            code,
            func.__qualname__,
            getattr(func, "__module__", None) or "",
            _absolute(code.co_filename),
            code.co_firstlineno,
            _source_lines(func),
        )
        registered[id(code)] = (code, fid)
        qualnames[code] = func.__qualname__
    return fid


#: The objects profile() returned: profiling one again returns it as it is. (Not an attribute:
#: functools.wraps would copy it onto any decorator stacked above.)
_profiled = WeakSet()
#: Methods that a class statement turns into classmethods when they are plain functions.
_IMPLICIT_CLASSMETHODS = ("__init_subclass__", "__class_getitem__")

#: Per thread, the tables waiting while one is written (None when none is being written).
_printing = _thread._local()
#: Whether a table said that the books are kept in a thread of the program (said once).
_told_where_books_are = False


def _print_report(code, precision, stream):
    """Writes the table of ``code`` to ``stream`` (sys.stdout when None)."""
    token = _native.begin_quiet()
    try:
        pending = getattr(_printing, "pending", None)
        if pending is not None:
            # A table is being written on this thread, and a collection that started inside the
            # write ran a __del__ that called a profiled function: its table waits its turn (a
            # write inside a write raises in BufferedWriter).
            pending.append((code, precision, stream))
            return
        _printing.pending = pending = [(code, precision, stream)]
        try:
            while pending:
                code, precision, stream = pending.pop(0)
                out = stream if stream is not None else sys.stdout
                if out is None:
                    # No stdout (pythonw, `>&-`): print() writes nothing there either.
                    continue
                text = _native.report_text(precision, code)
                global _told_where_books_are
                if _sink.kind == "thread" and not _told_where_books_are:
                    text = _native.THREAD_SINK_HEADING + text
                    _told_where_books_are = True
                out.write(text)
                out.flush()
        finally:
            _printing.pending = None
    finally:
        _native.end_quiet(token)


#: The largest precision accepted, as on the command line: one byte is 2**-20 MiB, whose decimal
#: expansion has 20 digits, so more would only add zeros.
MAX_PRECISION = 20


def _check_precision(precision):
    """Rejects a bad precision when the decorator is applied, before anything runs."""
    if precision is None:
        return
    if isinstance(precision, bool) or not isinstance(precision, int):
        raise TypeError(f"memsleuth.profile: precision must be an int, got {type(precision).__name__}")
    if not 0 <= precision <= MAX_PRECISION:
        raise ValueError(f"memsleuth.profile: precision must be between 0 and {MAX_PRECISION}, got {precision}")


#: memory_profiler's backends: accepted everywhere it accepts them, and ignored, because memsleuth's
#: figures are its own (RSS from /proc and the exact tracked columns).
BACKENDS = ("psutil", "psutil_pss", "psutil_uss", "posix", "tracemalloc")


def check_backend(backend, who):
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"{who}: unknown backend {backend!r} (memory_profiler's are {', '.join(BACKENDS)})")


def profile(func=None, stream=None, precision=None, backend=None):
    """Profiles ``func`` line by line; usable bare or as ``@profile(precision=4, stream=f)``.

    The arguments are memory_profiler's, in its order. ``backend`` is accepted and ignored.
    Applied to a function that is already profiled, it returns it as it is; applied to a
    property, staticmethod or classmethod, it profiles the functions inside. Functions defined
    inside ``func`` are profiled too, each with a table of its own.
    """
    return profile_with(func, decorator_settings(precision, stream), backend)


def decorator_settings(precision, stream):
    """``@profile``'s: a table after each outermost call, or under ``memsleuth run`` at exit,
    unless the function has a stream of its own."""
    return Settings(precision, stream, print_each_call=not deferred or stream is not None, at_exit=stream is None)


class Settings:
    """How a profiled function reports: ``precision`` (None: the run's default), the ``stream``
    its table goes to after each outermost call when ``print_each_call`` (None: sys.stdout),
    whether ``memsleuth run`` prints it at exit (``at_exit``), and whether a call inside another
    profiled call leaves its table to that call's end (``defer``: nested functions, whose tables
    follow the enclosing function's)."""

    def __init__(self, precision=None, stream=None, print_each_call=True, at_exit=True, defer=False):
        _check_precision(precision)
        self.precision = precision
        self.stream = stream
        self.print_each_call = print_each_call
        self.at_exit = at_exit
        self.defer = defer


def profile_with(func, settings, backend=None, nested=True):
    """``profile`` with explicit settings. ``nested`` False: the functions inside ``func`` are
    profiled already (it is one of them)."""
    check_backend(backend, "memsleuth.profile")
    def again(f):
        return profile_with(f, settings=settings, nested=nested)

    if func is None:
        return again
    if func in _profiled:
        return func
    if isinstance(func, (staticmethod, classmethod)):
        return type(func)(again(func.__func__))
    if isinstance(func, property):
        accessors = (func.fget, func.fset, func.fdel)
        return type(func)(*(None if f is None else again(f) for f in accessors), func.__doc__)
    if not hasattr(func, "__code__"):
        raise TypeError(f"memsleuth.profile expects a function, got {type(func).__name__}")
    _start()
    token = _native.begin_quiet()
    try:
        inner = func
        # A nested function called inside a profiled call prints no table of its own (a helper
        # called in a loop would print one per call): its table follows the enclosing one's.
        nested_codes = []
        if nested:
            deferring = Settings(settings.precision, settings.stream, print_each_call=settings.print_each_call,
                                 at_exit=settings.at_exit, defer=True)
            inner = _nested.with_nested_profiled(
                func, lambda f: _profile_nested(f, settings=deferring, profiled_codes=nested_codes))
            if INLINE_CALLS and inner is func and _is_plain(func):
                inner = _with_own_code(func)
        return _wrap(inner, settings, like=func, nested_codes=nested_codes)
    finally:
        _native.end_quiet(token)


def _profile_nested(func, settings, profiled_codes):
    """Profiles a function defined inside a profiled one as its def runs, noting its code."""
    profiled = profile_with(func, settings, nested=False)
    profiled_codes.append(func.__code__)
    return profiled


def _wrap(func, settings, like, nested_codes=()):
    """The profiled stand-in for ``func``, carrying the attributes of ``like`` (the function as
    the program wrote it; ``func`` differs from it when its nested functions are profiled).
    ``nested_codes`` (filled as nested functions are defined) have their tables printed after
    ``func``'s."""
    fid = _register(func)
    code = func.__code__
    if settings.at_exit:
        precisions.setdefault(code, settings.precision)
    _watch(code)

    def report(outermost):
        if outermost and timeline is not None:
            from . import _timeline

            timeline.sample(_timeline.MIN_GAP)
        if outermost and settings.print_each_call and not (settings.defer and _native.inside_profiled_call()):
            precision = default_precision if settings.precision is None else settings.precision
            _print_report(code, precision, settings.stream)
            if nested_codes:
                # Quiet: what listing them allocates is memsleuth's, not the calling line's.
                token = _native.begin_quiet()
                try:
                    for printed in dict.fromkeys(nested_codes):
                        _print_report(printed, precision, settings.stream)
                finally:
                    _native.end_quiet(token)

    # The driver's own objects (its frame record, the coroutine that drives each run, an async
    # generator's step objects) are made quietly: they are the profiler's, not the caller's line's.
    flags = func.__code__.co_flags
    if flags & CO_COROUTINE:
        @wraps(like)
        async def coroutine_wrapper(*args, **kwargs):
            inner = func(*args, **kwargs)
            quiet = _native.begin_quiet()
            try:
                frame = _native.GenFrame(fid)
                running = _resumed(inner, frame)
            finally:
                _native.end_quiet(quiet)
            try:
                return await running
            finally:
                report(_native.leave())

        wrapper = coroutine_wrapper
    elif flags & CO_GENERATOR:
        @wraps(like)
        def generator_wrapper(*args, **kwargs):
            inner = func(*args, **kwargs)
            quiet = _native.begin_quiet()
            try:
                frame = _native.GenFrame(fid)
                running = _resumed(inner, frame)
            finally:
                _native.end_quiet(quiet)
            try:
                return (yield from running)
            finally:
                report(_native.leave())

        wrapper = generator_wrapper
    elif flags & CO_ASYNC_GENERATOR:
        @wraps(like)
        async def async_generator_wrapper(*args, **kwargs):
            inner = func(*args, **kwargs)
            quiet = _native.begin_quiet()
            try:
                frame = _native.GenFrame(fid, async_steps=True)
            finally:
                _native.end_quiet(quiet)
            try:
                value = thrown = None
                while True:
                    quiet = _native.begin_quiet()
                    try:
                        step = inner.asend(value) if thrown is None else inner.athrow(thrown)
                        running = _resumed(step, frame)
                    finally:
                        _native.end_quiet(quiet)
                    out = await running
                    if frame.exhausted:
                        return
                    _native.gen_suspend(frame)
                    # Not a tuple assignment: 3.11 under a trace function builds the tuple here.
                    value = thrown = None
                    try:
                        value = yield out
                    except GeneratorExit:
                        await _resumed(inner.aclose(), frame)
                        raise
                    except BaseException as exc:
                        thrown = exc
            finally:
                report(_native.leave())

        wrapper = async_generator_wrapper
    elif INLINE_CALLS and isinstance(func, types.FunctionType):
        # (A bound method or another callable with a code object gets the wrapper.)
        if func is not like:
            update_wrapper(func, like)
        wrapper = _native.profiled_function(fid, func, lambda: report(True))
    else:
        wrapper = update_wrapper(_native.profiled(fid, func, lambda: report(True)), like)

    _profiled.add(wrapper)
    return wrapper


def _is_plain(func):
    """Whether ``func`` is a plain function: no generator, coroutine or async generator."""
    flags = func.__code__.co_flags
    return isinstance(func, types.FunctionType) and not flags & (CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR)


def profile_silently(func):
    """Profiles ``func`` as ``profile`` does, but prints no table after its calls and leaves it
    out of ``memsleuth run``'s tables at exit: the pytest plugin reads its figures itself."""
    _start()
    token = _native.begin_quiet()
    try:
        return _wrap(func, Settings(print_each_call=False, at_exit=False), like=func)
    finally:
        _native.end_quiet(token)


def report_of(codes, selection=None):
    """The JSON report (a dict) of the profiled functions whose code objects are in ``codes``."""
    import json

    version = ".".join(str(part) for part in sys.version_info[:3])
    token = _native.begin_quiet()
    try:
        return json.loads(_native.report_json_of(version, list(codes), selection))
    finally:
        _native.end_quiet(token)


def _set_name(profiled, owner, name):
    """A class statement makes ``__init_subclass__`` and ``__class_getitem__`` classmethods only
    when they are plain functions; for a profiled one, this does it when the class is made."""
    if name in _IMPLICIT_CLASSMETHODS and owner.__dict__.get(name) is profiled:
        setattr(owner, name, classmethod(profiled))


_native.Profiled.__set_name__ = _set_name


def profile_module_code(code, filename, source, namespace, at_exit=True):
    """Runs a module's top-level code in ``namespace``, profiled as a function named <module>
    (printed by ``memsleuth run`` at exit when ``at_exit``)."""
    _start()
    token = _native.begin_quiet()
    try:
        lines = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
        fid = _native.register(code, "<module>", namespace.get("__name__", ""), _absolute(filename), 1,
                               lines.splitlines())
        qualnames[code] = "<module>"
        _watch(code)
        if at_exit:
            precisions.setdefault(code, None)
    finally:
        _native.end_quiet(token)
    _native.enter(fid)
    try:
        exec(code, namespace)
    finally:
        _native.leave()


@types.coroutine
def _resumed(inner, frame):
    """Runs ``inner`` (a generator, a coroutine, or one step of an async generator) to its end,
    with the profiled frame active only while ``inner`` runs: time it spends suspended belongs to
    whoever resumes it. Returns what ``inner`` returns; the frame is active when this returns or
    raises."""
    out = _native.gen_step(frame, inner, None)
    while not frame.returned:
        try:
            sent = yield out
        except GeneratorExit:
            _native.gen_resume(frame)
            inner.close()
            raise
        except BaseException as exc:
            out = _native.gen_step(frame, inner, None, exc)
        else:
            out = _native.gen_step(frame, inner, sent)
    return out


def last_report():
    """The JSON report (a dict, schema memsleuth.report/1) of everything profiled so far."""
    import json

    version = ".".join(str(part) for part in sys.version_info[:3])
    token = _native.begin_quiet()
    try:
        return json.loads(_native.report_json(version, program_argv))
    finally:
        _native.end_quiet(token)
