"""CPython internals memsleuth relies on, as checked at start-up (docs/design.md, CPython internals
used): which allocator serves each domain, the arena size, and the builds it refuses."""

import os
import re
import subprocess
import sys

import pytest

from memsleuth import _native

PROBE = "from memsleuth import _native; print(_native.allocator(), _native.glibc_serves_above())"


def probe(pythonmalloc, code=PROBE):
    env = dict(os.environ, PYTHONMALLOC=pythonmalloc)
    env.pop("PYTHONTRACEMALLOC", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


WORD = 8
CASES = [("pymalloc", "pymalloc", 512), ("malloc", "malloc", 0), ("pymalloc_debug", "pymalloc_debug", 512 - 3 * WORD),
         ("malloc_debug", "malloc_debug", 0)]
if sys.version_info >= (3, 13):
    CASES.append(("mimalloc", "mimalloc", 2**64 - 1))


@pytest.mark.parametrize("pythonmalloc, name, above", CASES)
def test_the_allocator_behind_each_domain_is_the_interpreters(pythonmalloc, name, above):
    """What PYTHONMALLOC chose is found from the interpreter, not from the variable: under
    pymalloc's debug hooks, pymalloc hands a request to glibc three words earlier."""
    assert probe(pythonmalloc) == [name, str(above)]


def test_the_allocator_is_found_before_the_hooks_wrap_it():
    """Once memsleuth's hooks wrap the domains the interpreter no longer names its allocator;
    the name found first stays."""
    code = ("import memsleuth\n"
            "@memsleuth.profile(stream=open('/dev/null', 'w'))\n"
            "def f():\n    return [0] * 10\n"
            "f()\n" + PROBE)
    assert probe("pymalloc_debug", code)[-2:] == ["pymalloc_debug", str(512 - 3 * WORD)]


def test_arena_size_is_the_interpreters():
    """pymalloc's own statistics state the arena size memsleuth tells arenas apart by."""
    stats = subprocess.run([sys.executable, "-c", "import sys; sys._debugmallocstats()"], capture_output=True,
                           text=True, timeout=60).stderr
    sizes = set(map(int, re.findall(r"arenas \* (\d+) bytes/arena", stats)))
    assert sizes == {_native.pymalloc_arena_size()}, stats


def test_free_threaded_builds_and_untested_versions_are_refused():
    refusal = _native.unsupported((3, 13), True)
    assert "free-threaded" in refusal and "\n" not in refusal
    assert "3.14" in _native.unsupported((3, 14), False)
    assert "3.8" in _native.unsupported((3, 8), False)
    assert _native.unsupported(tuple(sys.version_info[:2]), False) is None


def test_the_extension_loads_only_when_asked_to_profile():
    """pytest loads the plugin wherever memsleuth is installed, and the command line imports the
    package: neither may load the extension (an interpreter it refuses would fail every pytest
    run) until something is profiled."""
    code = ("import sys, memsleuth, memsleuth.pytest_plugin, memsleuth.__main__\n"
            "print('memsleuth._native' in sys.modules)\n"
            "from memsleuth import profile\n"
            "print('memsleuth._native' in sys.modules)\n")
    assert probe("", code) == ["False", "True"]


def test_the_checks_at_start_import_nothing_the_program_did_not():
    """Telling a free-threaded build apart must not import sysconfig (25 ms, and a module the
    program never asked for)."""
    code = ("import sys\n"
            "from memsleuth import profile\n"
            "@profile(stream=open('/dev/null', 'w'))\n"
            "def f():\n    return 1\n"
            "f()\n"
            "print('sysconfig' in sys.modules)\n")
    assert probe("", code) == ["False"]
