"""memory_profiler's public API over memsleuth, so its users switch without editing anything.

``memsleuth run`` installs this module as ``memory_profiler`` (``import memory_profiler`` gets
it) and puts a :class:`LineProfiler` in builtins as ``profile``. Outside ``memsleuth run``,
``from memsleuth.compat import profile, memory_usage, ...`` gives the same names.

The tables are memsleuth's (memory_profiler's RSS columns, then the exact ones, then the notes);
each function's table covers all its calls so far. ``backend`` arguments are accepted and
checked, and memsleuth's own figures are kept.
"""

import functools
import os
import sys
import threading
import time

from . import _native, _profile, _timeline
from ._nested import nested_codes

# Every program under ``memsleuth run`` imports this module (as ``memory_profiler``) and would
# keep what it imports: logging, re and subprocess are imported where they are used.

#: The memory_profiler release whose API this module provides.
__version__ = "0.61.0"

_MIB = float(2 ** 20)
_PAGE = os.sysconf("SC_PAGE_SIZE")


def choose_backend(new_backend=None):
    """The backend memory_profiler would use: ``new_backend`` if given, else ``'psutil'``.
    memsleuth reads RSS from /proc whatever it says."""
    _profile.check_backend(new_backend, "choose_backend")
    return new_backend or "psutil"


def profile(func=None, stream=None, precision=None, backend="psutil"):
    """memory_profiler's decorator: ``@profile``, ``@profile(stream=f, precision=4)``, or
    ``profile(func, f, 4)``. The table is written to ``stream`` (sys.stdout when None) after
    each outermost call; under ``memsleuth run``, a function given no stream is printed at exit
    with the others instead. ``precision`` None: 1, or ``memsleuth run --precision``."""
    return _profile.profile(func, stream, precision, backend)


# ---------------------------------------------------------------------------------------------
# memory_usage


def _rss_mib(pid):
    """The resident set of ``pid`` in MiB, None once the process is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE / _MIB
    except (OSError, IndexError, ValueError):
        return None


def _rss_peak_mib():
    """This process's peak RSS so far (VmHWM) in MiB, None where /proc does not say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / _MIB
    except (OSError, ValueError, IndexError):
        pass
    return None


class _Sampler:
    """Reads one process's memory as memory_profiler's options ask."""

    def __init__(self, pid, timestamps, include_children, multiprocess):
        self.pid = pid
        self.timestamps = timestamps
        self.include_children = include_children
        self.multiprocess = multiprocess

    def total(self):
        mem = _rss_mib(self.pid)
        if mem is None:
            return None
        if self.include_children:
            mem += sum(_rss_mib(child) or 0.0 for child in _timeline.descendants(self.pid))
        return mem

    def sample(self):
        """One sample: MiB, ``(MiB, time)`` with timestamps, a list with each child's MiB after
        it with multiprocess; None once the process is gone."""
        mem = self.total()
        if mem is None:
            return None
        value = (mem, time.time()) if self.timestamps else mem
        if self.multiprocess:
            return [value, *(_rss_mib(child) or 0.0 for child in _timeline.descendants(self.pid))]
        return value

    def write(self, stream):
        """One sample in mprof's file format: ``MEM <MiB> <time>``, and with multiprocess a
        ``CHLD <pid> <MiB> <time>`` line per child; False once the process is gone."""
        mem = self.total()
        if mem is None:
            return False
        stream.write(f"MEM {mem:.6f} {time.time():.4f}\n")
        if self.multiprocess:
            for child in _timeline.descendants(self.pid):
                stream.write(f"CHLD {child} {_rss_mib(child) or 0.0:.6f} {time.time():.4f}\n")
        return True


def _peak(value):
    if isinstance(value, list):
        value = value[0]
    return value[0] if isinstance(value, tuple) else value


def _check_number(name, value, positive):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
        raise ValueError(f"memory_usage: {name} must be a {'positive' if positive else 'non-negative'} number, "
                         f"got {value!r}")


def memory_usage(proc=-1, interval=.1, timeout=None, timestamps=False, include_children=False,
                 multiprocess=False, max_usage=False, retval=False, stream=None, backend=None,
                 max_iterations=None):
    """The memory (RSS, MiB) of a process or a call, sampled every ``interval`` seconds.

    ``proc``: -1 (this process), a pid, a ``subprocess.Popen``, a command (a list of strings,
    started here), a callable or an ``(f, args, kw)`` tuple (``f`` runs once in this thread while
    another thread samples; its exceptions propagate). For a process, one sample, or samples for
    ``timeout`` seconds; for a Popen or a command, until it ends or ``timeout``. Returns the
    list of samples (``(MiB, time)`` pairs with ``timestamps``; for a process with
    ``multiprocess``, lists of its own sample then each child's MiB), their maximum with
    ``max_usage``, ``(samples, f's value)`` with ``retval``, or None when ``stream`` takes the
    samples as mprof's ``MEM`` (and ``CHLD``) lines. ``include_children`` adds the children's RSS
    to each sample. ``backend`` and ``max_iterations`` are accepted (memsleuth calls ``f`` once
    and reads RSS).
    """
    _profile.check_backend(backend, "memory_usage")
    _check_number("interval", interval, positive=True)
    if timeout is not None:
        _check_number("timeout", timeout, positive=False)
    if stream is not None:
        timestamps = True
    if callable(proc):
        proc = (proc, (), {})
    if isinstance(proc, (list, tuple)) and proc and all(isinstance(p, str) for p in proc):
        import subprocess

        process = subprocess.Popen(list(proc))
        try:
            return memory_usage(process, interval, timeout, timestamps, include_children, multiprocess,
                                max_usage, retval, stream, backend, max_iterations)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    if isinstance(proc, (list, tuple)):
        if not 1 <= len(proc) <= 3 or not callable(proc[0]):
            raise ValueError("memory_usage: proc must be -1, a pid, a Popen, a command list, a callable "
                             "or an (f, args, kw) tuple")
        f, args, kw = tuple(proc) + ((), {})[len(proc) - 1:]
        # As memory_profiler's, a call's samples are the process's total: no per-child lists.
        samples, returned = _sample_call(f, args, kw, interval, timestamps, include_children)
        if stream is not None:
            for mem, at in samples:
                stream.write(f"MEM {mem:.6f} {at:.4f}\n")
    else:
        samples = _sample_process(proc, interval, timeout, timestamps, include_children, multiprocess, stream)
        returned = None
    if stream is not None:
        stream.flush()
        return None
    result = max(_peak(s) for s in samples) if max_usage else samples
    return (result, returned) if retval else result


def _sample_process(proc, interval, timeout, timestamps, include_children, multiprocess, stream):
    """The samples of a process, or none when each is written to ``stream`` as it is taken."""
    # A program that passes a Popen has imported subprocess.
    subprocess = sys.modules.get("subprocess")
    popen = proc if subprocess is not None and isinstance(proc, subprocess.Popen) else None
    if popen is not None:
        pid = popen.pid
    elif isinstance(proc, (int, str)) and not isinstance(proc, bool) and str(proc).lstrip("-").isdigit():
        pid = os.getpid() if int(proc) == -1 else int(proc)
    else:
        raise ValueError(f"memory_usage: proc must be -1, a pid, a Popen, a command list, a callable "
                         f"or an (f, args, kw) tuple, got {proc!r}")
    if _rss_mib(pid) is None and popen is None:
        raise ValueError(f"memory_usage: no process {pid}")
    sampler = _Sampler(pid, timestamps, include_children, multiprocess)
    count = max(1, round(timeout / interval)) if timeout is not None else (None if popen else 1)
    samples = []
    taken = 0
    while count is None or taken < count:
        if stream is not None:
            if not sampler.write(stream):
                break
        else:
            sample = sampler.sample()
            if sample is None:
                break
            samples.append(sample)
        taken += 1
        if popen is not None and popen.poll() is not None:
            break
        if count is None or taken < count:
            time.sleep(interval)
    return samples


def _sample_call(f, args, kw, interval, timestamps, include_children):
    """Runs ``f(*args, **kw)`` while a thread samples this process: one sample before the call,
    one every ``interval`` during it and one after. A peak between two samples (an allocation
    made and freed within the call) would be missed, so when the call raised the process's peak
    RSS, that peak is a sample too, just before the last. What the sampler allocates is
    memsleuth's own, so no profiled line is charged with it."""
    sampler = _Sampler(os.getpid(), timestamps, include_children, multiprocess=False)
    peak_before = _rss_peak_mib()
    samples = [sampler.sample()]
    done = threading.Event()

    def sample_until_done():
        token = _native.begin_quiet() if _profile._started else None
        try:
            while not done.wait(interval):
                samples.append(sampler.sample())
        finally:
            if token is not None:
                _native.end_quiet(token)

    thread = threading.Thread(target=sample_until_done, name="memsleuth memory_usage", daemon=True)
    thread.start()
    try:
        returned = f(*args, **kw)
    finally:
        done.set()
        thread.join()
    peak_after = _rss_peak_mib()
    if peak_before is not None and peak_after is not None and peak_after > peak_before:
        peak = peak_after + (sampler.total() - _rss_mib(os.getpid()) if include_children else 0.0)
        samples.append((peak, time.time()) if timestamps else peak)
    samples.append(sampler.sample())
    return samples, returned


# ---------------------------------------------------------------------------------------------
# LineProfiler and show_results


class LineProfiler:
    """memory_profiler's LineProfiler: ``prof(func)`` (or ``add_function`` then
    ``wrap_function``) returns the function profiled by memsleuth, and ``show_results(prof)``
    prints the tables of what it profiled. Profiled functions are measured whenever they run, so
    ``enable``/``disable`` (and their counted forms, and ``with prof:``) only decide whether the
    functions given to ``add_function`` are reachable profiled under their names: while enabled,
    each is replaced by its profiled form in its module (and in ``runctx``'s namespaces)."""

    def __init__(self, **kw):
        self.backend = choose_backend(kw.get("backend"))
        self.include_children = kw.get("include_children", False)
        self.max_mem = kw.get("max_mem")
        if self.max_mem is not None:
            stop_in_debugger_over(self.max_mem, self)
        self.enable_count = 0
        #: The code objects of the functions profiled through this profiler, in order.
        self._code_map = CodeMap(self.include_children, self.backend)
        self.functions = []
        self._swapped = []

    @property
    def code_map(self):
        """memory_profiler's ``code_map``: what this profiler's functions measured, as a
        :class:`CodeMap` read from memsleuth's books now."""
        self._code_map.fill()
        return self._code_map

    def _settings(self, precision=None, stream=None):
        return _profile.Settings(precision, stream, print_each_call=stream is not None, at_exit=False)

    def _profiled(self, func, precision=None, stream=None, backend=None):
        if hasattr(func, "__code__"):
            self._code_map.add(func.__code__)
        return _profile.profile_with(func, self._settings(precision, stream), backend)

    def __call__(self, func=None, precision=1):
        if func is None:
            return lambda f: self(f, precision)
        self.add_function(func)
        return self.wrap_function(func)

    def add_function(self, func):
        """Profiles ``func`` from now on when it is called through ``wrap_function``'s result,
        or by its name while the profiler is enabled."""
        if not hasattr(func, "__code__"):
            raise TypeError(f"LineProfiler.add_function expects a function, got {type(func).__name__}")
        if all(func is not f for f, _ in self.functions):
            self.functions.append((func, self._profiled(func)))

    def wrap_function(self, func):
        for original, profiled in self.functions:
            if original is func:
                return profiled
        return self._profiled(func)

    def runctx(self, cmd, globals, locals):
        """Runs ``cmd`` with the profiler enabled; the added functions are profiled when called
        by their names in ``globals`` and ``locals`` too."""
        swapped = self._swap_in(namespaces=(globals, locals))
        self.enable_by_count()
        try:
            exec(cmd, globals, locals)
        finally:
            self.disable_by_count()
            self._swap_back(swapped)
        return self

    def _swap_in(self, namespaces=()):
        """Puts each added function's profiled form where its name leads to it: its module's
        globals, and the given namespaces. Returns what to put back."""
        swapped = []
        for original, profiled in self.functions:
            places = [getattr(original, "__globals__", None), *namespaces]
            for namespace in places:
                if namespace is None:
                    continue
                for name, value in list(namespace.items()):
                    if value is original:
                        namespace[name] = profiled
                        swapped.append((namespace, name, original))
        return swapped

    @staticmethod
    def _swap_back(swapped):
        for namespace, name, original in reversed(swapped):
            namespace[name] = original

    def enable_by_count(self):
        if self.enable_count == 0:
            self.enable()
        self.enable_count += 1

    def disable_by_count(self):
        if self.enable_count > 0:
            self.enable_count -= 1
            if self.enable_count == 0:
                self.disable()

    def enable(self):
        self._swapped += self._swap_in()

    def disable(self):
        self._swap_back(self._swapped)
        self._swapped = []

    def __enter__(self):
        self.enable_by_count()
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.disable_by_count()


class _RunProfiler(LineProfiler):
    """The builtin ``profile`` under ``memsleuth run``: memory_profiler's LineProfiler there
    (``profile(func, precision)``, as its ``__call__``), and memsleuth's decorator (tables at exit
    unless a stream is given)."""

    def __call__(self, func=None, precision=None, stream=None, backend=None):
        if func is None:
            return lambda f: self(f, precision, stream, backend)
        profiled = self._profiled(func, precision, stream, backend)
        if all(func is not f for f, _ in self.functions):
            self.functions.append((func, profiled))
        return profiled

    def _settings(self, precision=None, stream=None):
        return _profile.decorator_settings(precision, stream)


def show_results(prof, stream=None, precision=1):
    """Writes memsleuth's table of each function in ``prof.code_map`` (a :class:`LineProfiler`'s,
    or any object's with a :class:`CodeMap` there) that has run, nested functions after the
    function they are defined in, to ``stream`` (sys.stdout when None)."""
    _profile._check_precision(precision)
    out = sys.stdout if stream is None else stream
    if out is None:
        return
    code_map = getattr(prof, "code_map", None)
    codes = code_map.profiled_codes() if isinstance(code_map, CodeMap) else []
    token = _native.begin_quiet() if _profile._started else None
    try:
        text = "".join(_native.report_text(precision, code) for code in codes)
    finally:
        if token is not None:
            _native.end_quiet(token)
    out.write(text)
    out.flush()


class LineUsage(tuple):
    """One line's entry in a :class:`CodeMap`: memory_profiler's ``(increment, mem_usage,
    occurrences)`` (MiB, MiB, count: the table's Increment, Mem usage and Occurrences columns;
    ``mem_usage`` None where the table's cell is empty), with memsleuth's exact figures of the
    line (``allocated_bytes``, ``freed_bytes``, ``peak_bytes``, ``retained_bytes``... as in the
    JSON report's lines) in ``figures``."""

    def __new__(cls, figures):
        rss_after = figures.get("rss_after_bytes")
        usage = super().__new__(cls, (figures["rss_delta_bytes"] / _MIB,
                                      None if rss_after is None else rss_after / _MIB, figures["hits"]))
        usage.figures = figures
        return usage

    def __getnewargs__(self):
        # copy and pickle make the entry again from its figures.
        return (self.figures,)

    increment = property(lambda self: self[0])
    mem_usage = property(lambda self: self[1])
    occurrences = property(lambda self: self[2])


def _place(code):
    return code.co_filename, code.co_firstlineno, code.co_name


class CodeMap(dict):
    """memory_profiler's CodeMap: code object -> {line number: :class:`LineUsage`}, for each code
    object given to ``add`` and every code object defined inside it. The entries are memsleuth's
    figures, read from its books by ``fill`` (``LineProfiler.code_map`` and ``items`` fill it):
    a function profiled by memsleuth has its own lines; one it has not profiled (a lambda, a
    comprehension, a function never run) has none, its work being inside the line that ran it.
    Nested functions have entries of their own, as they have tables of their own (memory_profiler
    folds them into the enclosing function's)."""

    def __init__(self, include_children=False, backend="psutil"):
        super().__init__()
        self.include_children = include_children
        self.backend = choose_backend(backend)
        #: Each measured function's source lines (memory_profiler lists them all).
        self._spans = {}

    def add(self, code):
        """Maps ``code`` and the code objects defined inside it."""
        for c in (code, *nested_codes(code)):
            self.setdefault(c, {})

    def _profiled(self):
        """(mapped code object, the code object memsleuth profiled for it or None), in order."""
        by_place = {}
        for code, _ in _profile.registered.values():
            by_place.setdefault(_place(code), code)
        # The very object, or the one at its place: memsleuth compiles a function that has
        # nested functions again, keeping each code object's file, first line and name.
        return [(code, code if id(code) in _profile.registered else by_place.get(_place(code))) for code in self]

    def profiled_codes(self):
        """The code objects memsleuth profiled for the mapped ones, in the map's order."""
        found = []
        for _, profiled in self._profiled():
            if profiled is not None and all(profiled is not c for c in found):
                found.append(profiled)
        return found

    def fill(self):
        """Reads each mapped code object's lines from memsleuth's books, replacing what they held."""
        self._spans = {}
        if not _profile._started:
            return
        for code, profiled in self._profiled():
            lines = dict.__getitem__(self, code)
            lines.clear()
            report = _profile.report_of([profiled])["functions"] if profiled is not None else []
            if report:
                lines.update((line["lineno"], LineUsage(line)) for line in report[0]["lines"])
                self._spans[code] = range(report[0]["first_lineno"], report[0]["last_lineno"] + 1)

    def items(self):
        """memory_profiler's iteration: ``(filename, lines)`` for each mapped function with
        measured lines, ``lines`` yielding ``(line number, LineUsage or None)`` for each line of
        its source."""
        self.fill()
        for code, lines in dict.items(self):
            if lines:
                yield code.co_filename, ((lineno, lines.get(lineno)) for lineno in self._spans[code])


# ---------------------------------------------------------------------------------------------
# Stepping into pdb over a memory limit


#: (LineProfiler whose functions stop, or None for every profiled function; its limit in MiB),
#: for each limit not reached yet.
_limits = []


def stop_in_debugger_over(max_mem, profiler=None):
    """memory_profiler's ``max_mem`` (``--pdb-mmem``): the first line or return of a function
    ``profiler`` profiled (every profiled function when None) that finds the process's RSS at or
    over ``max_mem`` MiB, at the readings memsleuth takes, steps into pdb there, once."""
    if isinstance(max_mem, bool) or not isinstance(max_mem, (int, float)) or not max_mem > 0:
        raise ValueError(f"max_mem must be a positive number of MiB, got {max_mem!r}")
    _limits.append((profiler, max_mem))
    _arm_limit()


def _arm_limit():
    lowest = min((max_mem for _, max_mem in _limits), default=None)
    if lowest is None:
        _native.set_rss_limit(0)
    else:
        _native.set_rss_limit(int(lowest * _MIB), _stop_in_debugger)


def _stop_in_debugger(rss_bytes):
    """Called by memsleuth at a profiled frame's line or return event (that frame is the
    caller) once a reading found RSS at ``rss_bytes``, over the lowest limit."""
    frame = sys._getframe(1)
    mem = rss_bytes / _MIB
    token = _native.begin_quiet()
    try:
        for limit in _limits:
            profiler, max_mem = limit
            if mem >= max_mem and (profiler is None or any(frame.f_code is c for c in profiler._code_map.profiled_codes())):
                _limits.remove(limit)
                _arm_limit()
                sys.stdout.write(f"Current memory {mem:.2f} MiB exceeded the maximum of {max_mem:.2f} MiB\n"
                                 "Stepping into the debugger \n")
                sys.stdout.flush()
                import pdb

                # Tracing from here (as pdb.set_trace), then the prompt at once: the line about
                # to run is the first after the reading, and no trace event comes before it runs.
                debugger = pdb.Pdb()
                debugger.set_trace(frame)
                debugger.interaction(frame, None)
                return
        # Another profiler's function: the next reading over the limit asks again.
        _arm_limit()
    finally:
        _native.end_quiet(token)


# ---------------------------------------------------------------------------------------------
# TimeStamper


class TimeStamper:
    """memory_profiler's TimeStamper (the builtin ``profile`` under ``memsleuth run
    --timestamp``): each call of a function it wraps, and each ``with stamper.timestamp(name):``
    block, records this process's RSS (MiB, its children's added with ``include_children``) and
    the time at its start and end, and its depth among the timed calls running; ``show_results``
    writes them as mprof's ``FUNC`` lines."""

    def __init__(self, backend="psutil", include_children=False):
        self.backend = choose_backend(backend)
        self.include_children = include_children
        #: function -> a [(MiB, time) at start, (MiB, time) at end] pair per call.
        self.functions = {}
        #: function -> the depth of each call, in the same order.
        self.stack = {}
        self.current_stack_level = -1

    def __call__(self, func=None, precision=None):
        """Times ``func`` (``@profile``, ``@profile(precision=N)``: the precision is not used)."""
        if func is None:
            return lambda f: self(f, precision)
        if not callable(func):
            raise ValueError(f"TimeStamper: {func!r} is not callable")
        self.add_function(func)
        return functools.wraps(func)(self.wrap_function(func))

    def add_function(self, func):
        self.functions.setdefault(func, [])
        self.stack.setdefault(func, [])

    def _reading(self):
        mem = _Sampler(os.getpid(), False, self.include_children, False).total()
        return mem, time.time()

    def _timed(self, func):
        return _Timed(self, func)

    def wrap_function(self, func):
        """``func`` timed at each call (a coroutine function: until its coroutine returns)."""
        # Imported here: every program under ``memsleuth run`` imports this module, and inspect
        # would stay in its RSS.
        import inspect

        if inspect.iscoroutinefunction(func):
            async def timed_coroutine(*args, **kwargs):
                with self._timed(func):
                    return await func(*args, **kwargs)

            return timed_coroutine

        def timed(*args, **kwargs):
            with self._timed(func):
                return func(*args, **kwargs)

        return timed

    def timestamp(self, name="<block>"):
        """A context manager timing its block, reported as a function named ``name``."""
        block = _Block(name)
        return self._timed(block)

    def show_results(self, stream=None):
        """Writes ``FUNC <module>.<name> <start MiB> <start time> <end MiB> <end time> <depth>``
        for each timed call that has ended, in mprof's format, to ``stream`` (sys.stdout)."""
        out = sys.stdout if stream is None else stream
        for func, calls in self.functions.items():
            name = f"{getattr(func, '__module__', None) or ''}.{func.__name__}"
            for stamps, level in zip(calls, self.stack[func]):
                if len(stamps) == 2:
                    (start_mem, start), (end_mem, end) = stamps
                    out.write(f"FUNC {name} {start_mem:.4f} {start:.4f} {end_mem:.4f} {end:.4f} {level}\n")
        out.flush()


class _Timed:
    """A call of ``func`` timed by ``stamper``, as a context manager (not contextlib's, which
    programs under ``memsleuth run`` would then import)."""

    def __init__(self, stamper, func):
        self.stamper = stamper
        self.func = func

    def __enter__(self):
        stamper, func = self.stamper, self.func
        stamper.add_function(func)
        self.stamps = [stamper._reading()]
        stamper.functions[func].append(self.stamps)
        stamper.current_stack_level += 1
        stamper.stack[func].append(stamper.current_stack_level)

    def __exit__(self, *exc_info):
        self.stamper.current_stack_level -= 1
        self.stamps.append(self.stamper._reading())

    def __call__(self, function):
        """As a decorator (``@stamper.timestamp("name")``, as contextlib's allow): each call timed."""
        @functools.wraps(function)
        def timed(*args, **kwargs):
            with _Timed(self.stamper, self.func):
                return function(*args, **kwargs)

        return timed


class _Block:
    """What ``TimeStamper.timestamp`` reports a block as: a function named ``name`` in no module."""

    __module__ = ""

    def __init__(self, name):
        self.__name__ = name


# ---------------------------------------------------------------------------------------------
# LogFile


#: A table row's Increment: compiled on first use, as re is imported then.
_ROW = None


class LogFile:
    """A stream for ``profile(stream=...)`` that logs each line it is given to the ``logging``
    logger ``name``; with ``reportIncrementFlag``, only the table headers and the rows whose
    Increment is positive."""

    def __init__(self, name=None, reportIncrementFlag=False):
        import logging

        self.logger = logging.getLogger(name)
        self.reportIncrementFlag = reportIncrementFlag

    def write(self, msg, level=20):  # logging.INFO
        for line in msg.splitlines():
            if self.reportIncrementFlag and not self._reported(line):
                continue
            self.logger.log(level, line)

    @staticmethod
    def _reported(line):
        global _ROW
        if _ROW is None:
            import re

            _ROW = re.compile(r"^\s*\d+\s+-?[\d.]+ MiB\s+(-?[\d.]+) MiB")
        row = _ROW.match(line)
        if row is not None:
            return float(row.group(1)) > 0
        return "Filename:" in line or "Line Contents" in line

    def flush(self):
        for handler in self.logger.handlers:
            handler.flush()


# ---------------------------------------------------------------------------------------------
# IPython


def load_ipython_extension(ipython):
    """``%load_ext memory_profiler`` under the stand-in (and ``%load_ext memsleuth``)."""
    from ._magics import register

    register(ipython)
