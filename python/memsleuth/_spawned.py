"""Imported first by the Python processes multiprocessing starts (spawn's children, the
forkserver) for a program run under ``memsleuth run``. They run the program's main module again,
so the names ``run`` put in builtins must be there too: without them a bare ``@profile`` is a
NameError. They are not profiled: their ``profile`` (the builtin, a LineProfiler as in the
parent, and the ``memory_profiler`` stand-in's) returns the function as it is; the rest of
memory_profiler's API works as in the parent."""

import builtins
import sys
import types

from . import compat


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
    "__version__", "memory_usage", "LineProfiler", "show_results", "LogFile", "choose_backend")})
_stand_in.LineProfiler = UnprofiledLineProfiler
_stand_in.profile = profile
sys.modules["memory_profiler"] = _stand_in
