"""memory_profiler 0.61.0's own test programs (its sdist's test/ directory) under `memsleuth run`,
run as its Makefile runs them: `python -m memory_profiler test/X.py` and `python test/X.py` both
become `memsleuth run test/X.py` from the sdist's root. test_mprof.py and test_exit_code.py test
mprof's own command line and are left out. The sdist is downloaded from PyPI with pip once per
session; without it the tests skip, saying why."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

BIN = os.path.join(os.path.dirname(sys.executable), "memsleuth")
VERSION = "0.61.0"

# The Makefile's `test` target, in its order, without test_exit_code.py and test_mprof.py.
MAKEFILE_PROGRAMS = [
    "test_func", "test_loop", "test_mprofile", "test_as", "test_global", "test_precision_command_line",
    "test_gen", "test_unicode", "test_tracemalloc", "test_import", "test_memory_usage",
    "test_precision_import", "test_exception", "test_async",
]
# Programs that profile nothing (test_global: an empty script, profiled whole; the memory_usage
# ones call no @profile function): each still prints memsleuth's table of what it ran.
# test_tracemalloc parses memory_profiler's table itself: it wants one table per call, whose
# Increment column is tracemalloc's exact figure and which ends the output. memsleuth's tables
# cover every call so far, keep RSS in that column and end with their notes.
EXPECTED_FAILURES = {"test_tracemalloc": "memsleuth's tables are cumulative, RSS-based in Increment and end "
                                         "with notes; the program parses memory_profiler's layout"}


@pytest.fixture(scope="session")
def sdist(tmp_path_factory):
    where = tmp_path_factory.mktemp("memory_profiler")
    try:
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"memory_profiler=={VERSION}", "-d", str(where)],
            capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("pip download of memory_profiler's sdist timed out (no network to PyPI?)")
    archives = list(where.glob("memory_profiler-*.tar.gz"))
    if fetched.returncode != 0 or not archives:
        pytest.skip(f"memory_profiler {VERSION}'s sdist is unavailable from PyPI: "
                    f"{fetched.stderr.strip().splitlines()[-1:] or 'pip found nothing'}")
    with tarfile.open(archives[0]) as archive:
        archive.extractall(where, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    root = where / f"memory_profiler-{VERSION}"
    # Its own module must not be importable: `import memory_profiler` is memsleuth's stand-in.
    (root / "memory_profiler.py").unlink()
    return root


@pytest.mark.parametrize("program", [
    pytest.param(p, marks=pytest.mark.xfail(reason=EXPECTED_FAILURES[p], strict=True)) if p in EXPECTED_FAILURES
    else p for p in MAKEFILE_PROGRAMS])
def test_memory_profiler_program_runs_and_prints_its_tables(sdist, program):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONTRACEMALLOC")}
    proc = subprocess.run([BIN, "run", f"test/{program}.py"], capture_output=True, text=True, cwd=sdist,
                          env=env, timeout=300)
    assert proc.returncode == 0, f"{program}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Filename:" in proc.stdout and "Line Contents" in proc.stdout, proc.stdout
