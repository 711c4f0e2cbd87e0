"""A profiled program behaves exactly as it does without memsleuth: exit status, output, files
written, recursion depth, other tools' results.

Each program in fixtures/unchanged/ runs in a fresh interpreter. Those that read MEMSLEUTH_PLAIN
run twice, once as they are and once with it set, where their `profile` is the identity, and the
tests compare the two runs; the others check memsleuth's own behaviour against what python does.
"""

import os
import subprocess
import sys

import pytest

from conftest import FIXTURES

UNCHANGED = FIXTURES / "unchanged"


def run(name, *args, plain=False, tmp_path, launcher=()):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("MEMSLEUTH_PLAIN", None)
    if plain:
        env["MEMSLEUTH_PLAIN"] = "1"
    return subprocess.run(
        [sys.executable, *launcher, str(UNCHANGED / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(tmp_path),
    )


def run_text(source, *, tmp_path):
    """Runs a program given as source text, under memsleuth."""
    path = tmp_path / "prog.py"
    path.write_text(source)
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)


def both(name, *args, tmp_path, **kwargs):
    return run(name, *args, plain=True, tmp_path=tmp_path, **kwargs), run(name, *args, tmp_path=tmp_path, **kwargs)


def test_daemon_thread_inside_a_profiled_call_at_exit(tmp_path):
    # Item 1: SIGABRT "FATAL: exception not rethrown" on every run before (3.9: the generator).
    for _ in range(3):
        plain, profiled = both("daemon_heartbeat.py", tmp_path=tmp_path)
        assert plain.returncode == 0, plain.stderr
        assert profiled.returncode == 0, profiled.stderr
        assert "main done" in profiled.stdout
        assert "FATAL" not in profiled.stderr


@pytest.mark.skipif(sys.version_info < (3, 11), reason="before 3.11 plain Python recursion takes C stack too")
def test_daemon_thread_deep_in_a_profiled_recursion_at_exit(tmp_path):
    # Items 1 and 3: 20,000 profiled levels take more C stack than a thread has, so memsleuth
    # continues them on stack segments of its own (3.11); the forced unwind that ends the daemon
    # thread at exit must pass through them.
    plain, profiled = both("daemon_deep_recursion.py", tmp_path=tmp_path)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert profiled.returncode == 0, profiled.stderr[-2000:]
    assert profiled.stdout == "main done\n"


def test_module_globals_are_finalised(tmp_path):
    # Item 2: the unclosed global file stayed empty and __del__ never ran.
    for plain in (True, False):
        path = tmp_path / f"log-{plain}.txt"
        proc = run("globals_finalised.py", path, plain=plain, tmp_path=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert path.read_text() == "x" * 40
        assert "Noisy.__del__ ran" in proc.stdout


def test_recursive_profiled_closures_are_collected(tmp_path):
    # Item 2: a profiled closure that calls itself was never freed (234 MiB for 20,000).
    plain, profiled = both("closures_collected.py", tmp_path=tmp_path)
    assert plain.stdout == "alive: 0\n"
    assert profiled.returncode == 0, profiled.stderr
    assert profiled.stdout == "alive: 0\n"


def test_recursion_as_deep_as_plain(tmp_path):
    # Item 3: 9,000 deep with the limit at 20,000 segfaulted on 3.9 and 3.11; on 3.12 and 3.13 a
    # profiled call entered the interpreter from C, and RecursionError came at about 750 and
    # 5,000 deep.
    plain, profiled = both("recursion_depth.py", 20_000, 9_000, tmp_path=tmp_path)
    assert plain.stdout == "9000\n"
    assert profiled.returncode == 0, profiled.stderr[-2000:]
    assert profiled.stdout == "9000\n"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="before 3.11 plain Python recursion takes C stack too")
def test_recursion_to_the_limit_as_plain(tmp_path):
    # Item 3: 19,990 deep with the limit at 20,000, which plain Python reaches from 3.11 without
    # C stack: the profiled function overflowed the thread's stack on 3.11 (SIGSEGV) and hit
    # the C recursion limit on 3.12 and 3.13.
    plain, profiled = both("recursion_depth.py", 20_000, 19_990, tmp_path=tmp_path)
    assert plain.stdout == "19990\n"
    assert profiled.returncode == 0, profiled.stderr[-2000:]
    assert profiled.stdout == "19990\n"


@pytest.mark.skipif(sys.version_info[:2] == (3, 11),
                    reason="3.11 counts one level more while a C tracer is on, cProfile's too (README, known limits)")
def test_recursion_limit_counts_profiled_calls_once(tmp_path):
    # Item 3: the counted depth was halved (3.9, 3.10) and bounded by the C recursion limit
    # (3.12+). Python counts one level per Python frame, so the deepest call that fits is the
    # same with and without memsleuth.
    limit = 3000

    def fits(depth, plain):
        proc = run("recursion_depth.py", limit, depth, plain=plain, tmp_path=tmp_path)
        return proc.returncode == 0

    def deepest(plain):
        low, high = 1, limit
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(middle, plain) else (low, middle - 1)
        return low

    assert deepest(plain=False) == deepest(plain=True)


def test_profiled_function_behaves_like_the_function(tmp_path):
    # Item 7: pickle, deepcopy, Pool.map, @profile twice and over a property failed.
    plain, profiled = both("behaves_like_function.py", tmp_path=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert profiled.returncode == 0, profiled.stderr
    expected = "9\nTrue True\n8\n5 6 7\n[1, 4, 9]\n"
    assert plain.stdout == expected
    assert profiled.stdout == expected


def test_profiled_call_returns_its_value_without_stdout(tmp_path):
    # Item 5: AttributeError ('NoneType' object has no attribute 'write') replaced the value.
    plain, profiled = both("closed_stdout.py", tmp_path=tmp_path)
    assert plain.stderr == "value: 42\n"
    assert profiled.returncode == 0
    assert profiled.stderr == "value: 42\n"


def test_profiled_call_with_stdout_closed_by_the_shell(tmp_path):
    # Item 5, as `python prog.py >&-` does it: no file descriptor 1 at all.
    source = "from memsleuth import profile\n@profile\ndef f():\n    return 7\nimport sys\nsys.stderr.write(f'{f()}\\n')\n"
    path = tmp_path / "prog.py"
    path.write_text(source)
    proc = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" "{path}" >&-'], stderr=subprocess.PIPE, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "7\n"


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring is 3.12+")
def test_cprofile_after_memsleuth(tmp_path):
    # Item 9: memsleuth held sys.monitoring's PROFILER_ID, so cProfile failed to start.
    source = (
        "import cProfile, sys\n"
        "from memsleuth import profile\n"
        "@profile\n"
        "def f():\n    return sum(range(10))\n"
        "f()\n"
        "cProfile.run('f()', sort='ncalls')\n"
        "print('tool', [i for i in range(6) if sys.monitoring.get_tool(i) == 'memsleuth'])\n"
    )
    proc = run_text(source, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "function calls" in proc.stdout
    assert "tool [3]" in proc.stdout


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ traces with sys.monitoring, beside other tools")
def test_trace_function_set_inside_a_profiled_call_is_kept(tmp_path):
    # Item 8: memsleuth set the trace function to None on return, removing the program's own.
    plain, profiled = both("settrace_inside.py", tmp_path=tmp_path)
    assert plain.returncode == 0, plain.stderr
    kept = plain.stdout.splitlines()[-1]
    assert kept == "tracer kept: [29, 30, 31]"
    assert profiled.returncode == 0, profiled.stderr
    assert profiled.stdout.splitlines()[-1] == kept


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ traces with sys.monitoring, beside other tools")
def test_memsleuth_keeps_its_lines_after_a_trace_function_is_set(run_source):
    # Item 8: memsleuth's own later lines were lost when the program set a trace function.
    run = run_source(
        "import sys\n"
        "from memsleuth import profile\n"
        "def tracer(frame, event, arg):\n    return tracer\n"
        "@profile\n"
        "def f():\n"
        "    sys.settrace(tracer)\n"
        "    a = bytearray(100_000)\n"
        "    return len(a)\n"
        "f()\n"
        "sys.settrace(None)\n"
    )
    line = run.line("f", "a = bytearray(100_000)")
    assert line["hits"] == 1
    assert line["allocated_bytes"] >= 100_000


@pytest.mark.parametrize("core", ["ctrace", "sysmon"])
def test_coverage_records_every_line(tmp_path, core):
    # Item 8: coverage stopped recording after the first profiled call returned. From 3.12 the
    # profiled function runs memsleuth's code copy, each line opened by a NOP: coverage must see
    # the same lines in it, through a trace function or through sys.monitoring beside memsleuth.
    pytest.importorskip("coverage")
    if core == "sysmon" and sys.version_info < (3, 12):
        pytest.skip("coverage's sys.monitoring core needs 3.12")
    results = []
    for plain in (True, False):
        data = tmp_path / f".coverage-{plain}"
        env = dict(os.environ, COVERAGE_FILE=str(data), COVERAGE_CORE=core)
        env.pop("MEMSLEUTH_PLAIN", None)
        if plain:
            env["MEMSLEUTH_PLAIN"] = "1"
        script = tmp_path / "covered.py"
        script.write_text(
            "from memsleuth import profile\n"
            "@profile\n"
            "def f(n):\n    total = 0\n    for i in range(n):\n        total += i\n    return total\n"
            "def after():\n    x = 1\n    y = 2\n    return x + y\n"
            "f(3)\nprint(after())\n"
        )
        proc = subprocess.run([sys.executable, "-m", "coverage", "run", str(script)], capture_output=True, text=True,
                              env=env, cwd=str(tmp_path), timeout=300)
        assert proc.returncode == 0, proc.stderr
        report = subprocess.run([sys.executable, "-m", "coverage", "report", "-m"], capture_output=True, text=True,
                                env=env, cwd=str(tmp_path), timeout=300)
        results.append([line for line in report.stdout.splitlines() if "covered.py" in line])
    assert results[0] == results[1]
    assert results[1][0].split()[-1] == "100%"


@pytest.mark.parametrize("precision", [-1, 10**6, 2.5, True])
def test_bad_precision_is_refused_at_decoration(tmp_path, precision):
    # Item 21: precision=-1 failed only after the call ran; 10**6 raised a PanicException.
    source = (
        "from memsleuth import profile\n"
        "try:\n"
        f"    @profile(precision={precision!r})\n"
        "    def f():\n        return 1\n"
        "except (TypeError, ValueError) as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    proc = run_text(source, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "precision must be" in proc.stdout
    assert proc.stdout.count("\n") == 1


def test_table_printed_by_a_collection_inside_a_write_waits_its_turn(tmp_path):
    # Item 4: a __del__ run by a collection inside the writing of one table called another profiled
    # function, whose table went into the same stream mid-write: "RuntimeError: reentrant call".
    proc = run("reentrant_print.py", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == "tables: 2 work: 1 cleanup: 1\n"


def test_a_broken_stderr_never_ends_the_program(tmp_path):
    # Review: memsleuth's warning that another tool removed its hooks was written with eprintln!,
    # which panics on EPIPE, and a panic aborts (SIGABRT).
    proc = run("stderr_broken_pipe.py", tmp_path=tmp_path, launcher=("-X", "tracemalloc"))
    assert proc.returncode == 0
    assert proc.stdout.endswith("300000 program finished normally\n")


def test_class_hooks_and_stacked_decorators(tmp_path):
    # Review: a profiled __init_subclass__ was no classmethod (TypeError when subclassing, also
    # under `run`'s whole-program mode), and a decorator stacked on a profiled function inherited
    # its mark through functools.wraps, so profiling it did nothing.
    plain, profiled = both("class_hooks.py", tmp_path=tmp_path)
    assert plain.stdout == "child Base[int] ('logged', 2) True\n"
    assert profiled.returncode == 0, profiled.stderr
    assert profiled.stdout == plain.stdout


def test_interrupt_while_a_table_is_printed_reaches_the_program(tmp_path):
    # Review: a KeyboardInterrupt raised while the table was printed was reported as unraisable
    # and the program went on.
    proc = run("interrupt_while_printing.py", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "interrupt reached the program\n"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="from 3.12 a profiled function is a function")
def test_profiled_functions_are_made_only_by_profile(tmp_path):
    # Review: type(p)() made an instance that could not be called.
    source = "from memsleuth import profile\ntry:\n    type(profile(lambda: 1))()\nexcept TypeError as e:\n    print(e)\n"
    proc = run_text(source, tmp_path=tmp_path)
    assert proc.stdout == "memsleuth: profiled functions are made by memsleuth.profile\n", proc.stderr


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ traces with sys.monitoring, beside other tools")
def test_debugger_started_inside_a_profiled_call_sees_its_lines(tmp_path):
    # Review: frames started inside a profiled call had their line events turned off, so a
    # debugger started there could not step through them.
    plain, profiled = both("debugger_in_helper.py", tmp_path=tmp_path)
    assert plain.stdout == "helper lines seen: [3, 4, 5]\n"
    assert profiled.returncode == 0, profiled.stderr
    assert profiled.stdout.splitlines()[-1] == "helper lines seen: [3, 4, 5]"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ traces with sys.monitoring, beside other tools")
def test_profiled_lines_survive_a_tracer_that_turns_line_events_off(run_fixture):
    # Review: the chained tracer's `frame.f_trace_lines = False` silenced memsleuth's own lines.
    run = run_fixture("unchanged/tracer_skips_lines.py")
    assert run.line("f", "a = [0] * 1000000")["allocated_bytes"] >= 8_000_000


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ traces with sys.monitoring, beside other tools")
def test_c_profiler_without_object_stays_in_place(tmp_path):
    # Review: memsleuth's profile function replaced a C profiler that sys.getprofile() shows as
    # None (yappi's), then removed it for good when the profiled call ended.
    plain, profiled = both("c_profiler_without_object.py", tmp_path=tmp_path)
    assert plain.stdout == "events in 10 calls after the profiled call: 20\n"
    assert profiled.returncode == 0, profiled.stderr
    assert profiled.stdout.splitlines()[-1] == plain.stdout.strip()
