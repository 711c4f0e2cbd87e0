"""memsleuth: exact line-by-line memory profiling for Python.

    from memsleuth import profile

    @profile
    def my_func():
        ...

prints memory_profiler's table for ``my_func`` after each call, with exact allocation figures
from CPython's allocator hooks beside the RSS readings.
"""

__all__ = ["profile", "last_report", "load_ipython_extension"]


def __getattr__(name):
    # The extension loads on first use, not on import: the pytest plugin (loaded by every pytest
    # run where memsleuth is installed) and the command line import this package first, and an
    # interpreter memsleuth refuses must only fail where memsleuth is asked to profile.
    if name in ("profile", "last_report"):
        from . import _profile

        return getattr(_profile, name)
    raise AttributeError(f"module 'memsleuth' has no attribute {name!r}")


def load_ipython_extension(ipython):
    """``%load_ext memsleuth``: registers ``%memit``, ``%%memit`` and ``%mprun``."""
    from ._magics import register

    register(ipython)
