"""IPython/Jupyter magics: ``%memit``, ``%%memit`` and ``%mprun``, with memory_profiler's options.

``%load_ext memsleuth`` registers them (``%load_ext memory_profiler`` too under ``memsleuth
run``, where ``memory_profiler`` is memsleuth's stand-in).
"""

import gc
import io
import itertools
import json

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from . import _native, _profile, compat

_MIB = float(2 ** 20)
_runs = itertools.count(1)


class MemitResult:
    """What ``%memit -o`` returns: each repetition's peak RSS (MiB), the baseline before them,
    and memsleuth's exact figure, the largest rise of tracked (Python-allocated) bytes."""

    def __init__(self, mem_usage, baseline, tracked_peak, repeat, timeout, interval, include_children):
        self.mem_usage = mem_usage
        self.baseline = baseline
        self.tracked_peak = tracked_peak
        self.repeat = repeat
        self.timeout = timeout
        self.interval = interval
        self.include_children = include_children

    def __str__(self):
        peak = max(self.mem_usage)
        return (f"peak memory: {peak:.2f} MiB, increment: {peak - self.baseline:.2f} MiB, "
                f"tracked peak: {self.tracked_peak / _MIB:.2f} MiB")

    def _repr_pretty_(self, p, cycle):
        p.text(f"<MemitResult : {self}>")


def _run_measured(source, namespace):
    """Runs ``source`` in ``namespace`` as a profiled unit of its own; returns the largest rise
    of tracked bytes while it ran."""
    filename = f"<memit-{next(_runs)}>"
    code = compile(source, filename, "exec")
    _profile.profile_module_code(code, filename, source, namespace, at_exit=False)
    token = _native.begin_quiet()
    try:
        report = json.loads(_native.report_json(""))
    finally:
        _native.end_quiet(token)
    return max((f["totals"]["peak_bytes"] for f in report["functions"] if f["filename"] == filename), default=0)


@magics_class
class MemsleuthMagics(Magics):
    @line_cell_magic
    def memit(self, line="", cell=None):
        """Measure the memory of a statement (line) or of a cell's body after its first line.

        %memit [-r<R>] [-t<T>] [-i<I>] [-c] [-o] [-q] statement
        %%memit [options] setup statement
        body...

        Prints the peak RSS and its increment over the baseline before the run, as
        memory_profiler does, then memsleuth's exact tracked peak: the largest rise of the bytes
        Python allocated while the statement ran.

        -r<R>: run R times, report the highest peak (default 1)
        -t<T>: stop sampling after T seconds (default: none)
        -i<I>: sample every I seconds (default 0.1)
        -c: add the memory of child processes
        -o: return a MemitResult
        -q: print nothing
        """
        opts, stmt = self.parse_options(line, "r:t:i:coq", posix=False, strict=False)
        setup, body = ("pass", stmt) if cell is None else (stmt or "pass", cell)
        if not body.strip():
            raise UsageError("%memit needs a statement to measure")
        try:
            repeat = int(getattr(opts, "r", 1))
            timeout = float(getattr(opts, "t", 0)) or None
            interval = float(getattr(opts, "i", 0.1))
        except ValueError as exc:
            raise UsageError(f"%memit: {exc}") from None
        if repeat < 1 or interval <= 0:
            raise UsageError("%memit: -r must be at least 1 and -i above 0")
        include_children = "c" in opts
        namespace = self.shell.user_ns
        exec(compile(setup, "<memit setup>", "exec"), namespace)
        gc.collect()
        baseline = compat.memory_usage(include_children=include_children)[0]
        peaks, tracked = [], 0
        for _ in range(repeat):
            usage, rise = compat.memory_usage((_run_measured, (body, namespace)), interval=interval,
                                              timeout=timeout, max_usage=True, retval=True,
                                              include_children=include_children)
            peaks.append(usage)
            tracked = max(tracked, rise)
        result = MemitResult(peaks, baseline, tracked, repeat, timeout, interval, include_children)
        if "q" not in opts:
            print(result)
        if "o" in opts:
            return result
        return None

    @line_cell_magic
    def mprun(self, parameter_s="", cell=None):
        """Run a statement with the named functions profiled line by line; print their tables.

        %mprun -f func1 [-f func2] [-T file] [-r] [-c] statement
        %%mprun -f func1 [statement]
        code...

        -f <function>: profile this function (any expression naming a function; repeatable).
          Functions defined in the notebook or the shell are profiled too.
        -T <file>: also write the tables to this file
        -r: return the LineProfiler
        -c: accepted for memory_profiler compatibility (child processes are not profiled)
        """
        opts, statement = self.parse_options(parameter_s, "rf:T:c", list_all=True)
        if cell is not None:
            statement += "\n" + cell
        names = getattr(opts, "f", [])
        if not names:
            raise UsageError("%mprun needs at least one -f FUNCTION")
        namespace = self.shell.user_ns
        profiler = compat.LineProfiler(include_children="c" in opts)
        for name in names:
            try:
                func = eval(name, namespace)
            except Exception as exc:
                raise UsageError(f"%mprun: could not find function {name!r}: {type(exc).__name__}: {exc}") from None
            try:
                profiler.add_function(getattr(func, "__func__", func))
            except TypeError as exc:
                raise UsageError(f"%mprun: {name}: {exc}") from None
        message = ""
        try:
            profiler.runctx(statement, namespace, namespace)
        except SystemExit:
            message = "*** SystemExit exception caught in code being profiled."
        except KeyboardInterrupt:
            message = "*** KeyboardInterrupt exception caught in code being profiled."
        out = io.StringIO()
        compat.show_results(profiler, out)
        text = out.getvalue().rstrip()
        print(text)
        if message:
            print(message)
        target = getattr(opts, "T", [""])[0]
        if target:
            with open(target, "w") as f:
                f.write(text + "\n")
            print(f"\n*** Profile printout saved to text file {target}. {message}")
        return profiler if "r" in opts else None


def register(ipython):
    ipython.register_magics(MemsleuthMagics)
