"""memsleuth: exact line-by-line memory profiling for Python.

    from memsleuth import profile

    @profile
    def my_func():
        ...

prints memory_profiler's table for ``my_func`` after each call, with exact allocation figures
from CPython's allocator hooks beside the RSS readings.
"""

from ._profile import last_report, profile

__all__ = ["profile", "last_report", "load_ipython_extension"]


def load_ipython_extension(ipython):
    """``%load_ext memsleuth``: registers ``%memit``, ``%%memit`` and ``%mprun``."""
    from ._magics import register

    register(ipython)
