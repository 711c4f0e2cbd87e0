"""Imported first by the Python processes multiprocessing starts (spawn's children, the
forkserver) for a program run under ``memsleuth run``. They run the program's main module again,
so the names ``run`` put in builtins must be there too: without them a bare ``@profile`` is a
NameError. They are not profiled: their ``profile`` (the builtin, a LineProfiler as in the
parent, and the ``memory_profiler`` stand-in's) returns the function as it is; the rest of
memory_profiler's API works as in the parent. Under ``run --follow-fork`` a spawned child is
profiled instead (``follow``)."""

import atexit
import builtins
import os
import sys
import types

from . import _native, _profile, _sink, compat


def profile(func=None, stream=None, precision=1, backend="psutil"):
    """memory_profiler's signature; the function comes back unprofiled."""
    compat.choose_backend(backend)
    if func is None:
        return lambda f: f
    return func


class UnprofiledLineProfiler(compat.LineProfiler):
    """A LineProfiler whose functions come back unprofiled."""

    def __call__(self, func=None, precision=None, stream=None, backend=None):
        return profile(func, stream, precision, backend or "psutil")

    def _profiled(self, func, precision=None, stream=None, backend=None):
        return func


builtins.profile = UnprofiledLineProfiler()
_stand_in = types.ModuleType("memory_profiler")
_stand_in.__doc__ = "memsleuth's stand-in for memory_profiler in a child process: profile() changes nothing."
_stand_in.__dict__.update({name: getattr(compat, name) for name in (
    "__version__", "memory_usage", "LineProfiler", "CodeMap", "TimeStamper", "show_results", "LogFile",
    "choose_backend")})
_stand_in.LineProfiler = UnprofiledLineProfiler
_stand_in.profile = profile
sys.modules["memory_profiler"] = _stand_in


def follow(directory):
    """A child spawned under ``memsleuth run --follow-fork`` (docs/design.md, "The books live in
    the sink"): profiled like a forked child, into a ring and a sink process of its own, which
    leaves its JSON report in ``directory`` for the run's sink; ``profile`` profiles, as in the
    program. Called before the child runs the program's main module again."""
    from . import _select

    base = os.path.join(directory, str(os.getpid()))
    # Made before the sink starts, so that the run waits for the child's report.
    open(base + ".pending", "w").close()
    _sink.run_mode = True
    _sink.follow_forks(directory)
    _sink._start(report=base + ".json")
    if _sink.kind == "thread":
        # No sink process to leave the report: the child leaves it at its end.
        atexit.register(_leave_report_here, base)
    atexit.register(_native.record_exit, 0)
    _profile.deferred = True
    _profile._start()
    builtins.profile = compat._RunProfiler()
    setattr(builtins, _select.INJECTED, _profile.profile)
    sys.modules["memory_profiler"] = compat


def _leave_report_here(base):
    version = ".".join(str(part) for part in sys.version_info[:3])
    token = _native.begin_quiet()
    try:
        with open(base + ".json", "w") as f:
            f.write(_native.report_json(version, None, None))
    finally:
        _native.end_quiet(token)
        try:
            os.remove(base + ".pending")
        except OSError:
            pass
