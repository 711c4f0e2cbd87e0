"""Imported first by the Python processes multiprocessing starts (spawn's children, the
forkserver) for a program run under ``memsleuth run``. They run the program's main module again,
so the names ``run`` put in builtins must be there too: without them a bare ``@profile`` is a
NameError. They are not profiled; their ``profile`` returns the function as it is."""

import builtins
import sys
import types


def profile(func=None, stream=None, precision=1, backend="psutil"):
    """memory_profiler's signature; the function comes back unprofiled."""
    if func is None:
        return lambda f: f
    return func


builtins.profile = profile
_stand_in = types.ModuleType("memory_profiler")
_stand_in.__doc__ = "memsleuth's stand-in for memory_profiler in a child process: profile() changes nothing."
_stand_in.profile = profile
sys.modules["memory_profiler"] = _stand_in
