"""memory_profiler's API over memsleuth (memsleuth.compat, `import memory_profiler` under
`memsleuth run`, the builtin `profile` there) and nested functions' own tables. Each program runs
in a fresh interpreter: under the report-dumping runner (decorator mode) or `memsleuth run`."""

import os
import subprocess
import sys
import textwrap

BIN = os.path.join(os.path.dirname(sys.executable), "memsleuth")
MIB = 2 ** 20


def memsleuth_run(tmp_path, source, *options):
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONTRACEMALLOC")}
    return subprocess.run([BIN, "run", *options, str(path)], capture_output=True, text=True, cwd=str(tmp_path),
                          env=env, timeout=120)


def tables(text):
    """{function name: its table's text} from memsleuth's text output."""
    found = {}
    for chunk in text.split("Filename: ")[1:]:
        name = chunk.split("function: ")[1].split()[0]
        found[name] = chunk
    return found


# --------------------------------------------------------------------------------------------
# profile: memory_profiler's signature


def test_profile_takes_stream_and_precision_positionally_and_backend(run_source):
    run = run_source("""
import io, sys
from memsleuth.compat import profile

def work():
    data = bytearray(2 ** 20)
    return len(data)

out = io.StringIO()
positional = profile(work, out, 4, "tracemalloc")
positional()
decorated = profile(stream=out, precision=2, backend="psutil")(work)
EXTRA = {"text": out.getvalue()}
""")
    text = run.extra["text"]
    assert text.count("Filename:") == 1, text
    row = [line for line in text.splitlines() if "data = bytearray(2 ** 20)" in line][0]
    assert row.split()[1].count(".") == 1 and len(row.split()[1].split(".")[1]) == 4, row
    assert "Filename:" not in run.stdout  # the stream took it


def test_unknown_backend_is_refused(run_source):
    run = run_source("""
from memsleuth.compat import profile, choose_backend, memory_usage
errors = []
for call in (lambda: profile(backend="nope"), lambda: choose_backend("nope"),
             lambda: memory_usage(backend="nope")):
    try:
        call()
    except ValueError as exc:
        errors.append(str(exc))
EXTRA = {"errors": errors, "default": choose_backend(), "named": choose_backend("posix")}
""")
    assert len(run.extra["errors"]) == 3 and all("'nope'" in e for e in run.extra["errors"]), run.extra
    assert run.extra["default"] == "psutil" and run.extra["named"] == "posix"


def test_version_is_memory_profilers():
    import memsleuth.compat

    assert memsleuth.compat.__version__ == "0.61.0"


# --------------------------------------------------------------------------------------------
# memory_usage


def test_memory_usage_sees_a_100_mib_allocation(run_source):
    run = run_source("""
from memsleuth.compat import memory_usage

import time

def allocate():
    data = b"x" * (100 * 2 ** 20)
    return len(data)

def hold():
    # Held for several sampling intervals: the samples of a second call see it whatever the
    # machine's load (a new peak is no longer there to be added, as for the first call).
    data = b"x" * (100 * 2 ** 20)
    time.sleep(0.5)
    return len(data)

baseline = memory_usage()[0]
peak, returned = memory_usage((allocate, (), {}), max_usage=True, retval=True)
samples = memory_usage(hold)
EXTRA = {"baseline": baseline, "peak": peak, "returned": returned, "samples": samples,
         "type": type(peak).__name__}
""")
    e = run.extra
    assert e["type"] == "float" and e["returned"] == 100 * MIB
    assert e["peak"] - e["baseline"] >= 95, e
    assert isinstance(e["samples"], list) and len(e["samples"]) >= 2
    assert max(e["samples"]) - e["baseline"] >= 95, e


def test_memory_usage_forms(run_source, tmp_path):
    run = run_source("""
import io, os, subprocess, sys, threading
from memsleuth.compat import memory_usage

def boom():
    raise KeyError("inside")

threads_before = threading.active_count()
try:
    memory_usage((boom,), timeout=1)
    raised = None
except KeyError as exc:
    raised = str(exc)
stream = io.StringIO()
child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(30 * 2**20); time.sleep(0.5)"])
EXTRA = {
    "raised": raised,
    "threads_left": threading.active_count() - threads_before,
    "one": memory_usage(),
    "timed": len(memory_usage(-1, interval=0.05, timeout=0.2)),
    "stamped": memory_usage(os.getpid(), timestamps=True),
    "popen": memory_usage(child, interval=0.05),
    "command": memory_usage([sys.executable, "-c", "pass"], interval=0.05, max_usage=True),
    "streamed": memory_usage(-1, stream=stream),
    "stream_text": stream.getvalue(),
    "args": memory_usage((lambda *a, **k: (a, k), (1, 2), {"a": 1}), retval=True)[1],
    "two": memory_usage((lambda *a, **k: (a, k), (3,)), retval=True)[1],
}
for bad in ("nope", (1, 2), -5.5):
    try:
        memory_usage(bad)
    except ValueError as exc:
        EXTRA.setdefault("errors", []).append(str(exc))
""")
    e = run.extra
    assert e["raised"] == "'inside'" and e["threads_left"] == 0
    assert isinstance(e["one"], list) and len(e["one"]) == 1 and e["one"][0] > 1
    assert e["timed"] == 4
    (mem, at), = e["stamped"]
    assert mem > 1 and at > 1e9
    assert len(e["popen"]) >= 2 and max(e["popen"]) > 30, e["popen"]
    assert isinstance(e["command"], float)
    assert e["streamed"] is None and e["stream_text"].startswith("MEM "), e
    assert e["args"] == [[1, 2], {"a": 1}]
    assert e["two"] == [[3], {}]  # (f, args): no keywords
    assert len(e["errors"]) == 3 and all(err.startswith("memory_usage: ") for err in e["errors"]), e


# --------------------------------------------------------------------------------------------
# LineProfiler, show_results, LogFile


def test_line_profiler_surface(run_source):
    run = run_source("""
import io, sys
from memsleuth.compat import LineProfiler, show_results

def helper():
    block = bytearray(3 * 2 ** 20)
    return len(block)

def caller():
    return helper()

def wrapped_one():
    return [0] * 1000

prof = LineProfiler()
profiled = prof(wrapped_one)
profiled()
prof.add_function(helper)
inside = []
with prof:
    inside.append(helper is not globals()["helper"] or caller.__globals__["helper"] is not helper)
    caller()
    prof.enable_by_count()
    prof.disable_by_count()
    still = prof.enable_count
restored = globals()["helper"] is helper
prof.runctx("caller()", globals(), locals())
out = io.StringIO()
show_results(prof, out, precision=3)
EXTRA = {"text": out.getvalue(), "count": still, "restored": restored, "final_count": prof.enable_count,
         "stdout_tables": None, "same": prof.wrap_function(wrapped_one) is profiled,
         "returned": profiled.__name__}
""")
    e = run.extra
    assert "Filename:" not in run.stdout  # a LineProfiler's functions print only through show_results
    found = tables(e["text"])
    assert set(found) == {"wrapped_one", "helper"}, e["text"]
    helper_row = [line for line in found["helper"].splitlines() if "bytearray(3 * 2 ** 20)" in line][0]
    assert helper_row.split()[5] == "2", helper_row  # called twice by name: in `with` and in runctx
    assert e["count"] == 1 and e["final_count"] == 0 and e["restored"] and e["same"]
    assert e["returned"] == "wrapped_one"


def test_log_file_logs_the_table(run_source):
    run = run_source("""
import logging
from memsleuth.compat import LogFile, profile

records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("mem").addHandler(Keep())
logging.getLogger("mem").setLevel(logging.INFO)
logging.getLogger("inc").addHandler(Keep())
logging.getLogger("inc").setLevel(logging.INFO)

def grow():
    data = b"x" * (40 * 2 ** 20)
    nothing = 1
    return len(data)

profile(grow, LogFile("mem"))()
all_lines = list(records)
records.clear()
profile(grow, LogFile("inc", reportIncrementFlag=True))()
EXTRA = {"all": all_lines, "increments": records}
""")
    e = run.extra
    assert any(line.startswith("Filename:") for line in e["all"]) and any("nothing = 1" in l for l in e["all"])
    kept = e["increments"]
    assert any("Line Contents" in line for line in kept) and any("Filename:" in line for line in kept)
    assert not any("nothing = 1" in line for line in kept), kept
    assert any('b"x" * (40 * 2 ** 20)' in line for line in kept), kept


# --------------------------------------------------------------------------------------------
# Nested functions


def test_nested_functions_get_their_own_tables(run_source):
    run = run_source("""
import traceback
from memsleuth import profile

@profile
def outer(scale):
    base = [0] * 1000

    def inner(extra):
        grown = bytearray(scale * extra)
        return len(grown) + len(base)

    class Local:
        def method(self):
            return super().__repr__()[:1]

    def failing():
        return {}["missing"]

    try:
        failing()
    except KeyError as exc:
        tb = traceback.format_exc()
    return inner, Local().method(), tb

inner, first, tb = outer(2 ** 20)
size = inner(3)
EXTRA = {"size": size, "first": first, "qualname": inner.__qualname__, "tb": tb}
""")
    e = run.extra
    assert e["size"] == 3 * 2 ** 20 + 1000 and e["first"] == "<"
    assert e["qualname"] == "outer.<locals>.inner"
    assert '    return {}["missing"]' in e["tb"] and "line 18, in failing" in e["tb"], e["tb"]
    grown = run.line("outer.<locals>.inner", "grown = bytearray(scale * extra)")
    assert grown["allocated_bytes"] >= 3 * 2 ** 20 and grown["hits"] == 1
    assert run.function("outer.<locals>.Local.method")["calls"] == 1
    assert run.function("outer")["calls"] == 1
    assert set(tables(run.stdout)) >= {"outer", "outer.<locals>.inner"}


def test_a_nested_helper_called_in_a_loop_prints_its_table_once_after_the_enclosing_one(run_source):
    run = run_source("""
from memsleuth import profile

@profile
def outer():
    def helper(i):
        return [i] * 100
    return sum(len(helper(i)) for i in range(50))

total = outer()
EXTRA = {"total": total}
""")
    assert run.extra["total"] == 5000
    assert run.stdout.count("Filename: ") == 2, run.stdout
    assert list(tables(run.stdout)) == ["outer", "outer.<locals>.helper"]
    assert run.function("outer.<locals>.helper")["calls"] == 50


# --------------------------------------------------------------------------------------------
# Under memsleuth run: the stand-in and the builtin profile


def test_builtin_profile_is_a_line_profiler_under_run(tmp_path):
    result = memsleuth_run(tmp_path, """
        import io, memory_profiler
        from memory_profiler import memory_usage, LineProfiler, show_results, LogFile, choose_backend

        out = io.StringIO()

        @profile
        def plain():
            return [1] * 100000

        @profile(stream=out, precision=3)
        def streamed():
            return [2] * 100000

        def positional():
            return [3] * 100000

        positional = profile(positional, 4)  # LineProfiler.__call__(func, precision)
        positional()

        with profile:
            plain()
        profile.enable_by_count()
        streamed()
        streamed()
        profile.disable_by_count()
        print("version", memory_profiler.__version__)
        print("streamed tables", out.getvalue().count("Filename:"))
    """)
    assert result.returncode == 0, result.stderr
    assert "version 0.61.0" in result.stdout
    assert "streamed tables 2" in result.stdout  # one after each call, to its stream
    found = tables(result.stdout)
    assert "plain" in found and "streamed" not in found, result.stdout  # its table went to its stream
    row = [line for line in found["positional"].splitlines() if "return [3] * 100000" in line][0]
    assert len(row.split()[1].split(".")[1]) == 4, row


def test_nested_function_under_run_as_memory_profilers_test_nested(tmp_path):
    result = memsleuth_run(tmp_path, """
        @profile
        def test_1():
            a = [1] * (10 ** 5)

            def test_2():
                b = [2] * (2 * 10 ** 6)
                return len(b)

            return test_2

        profile.enable_by_count()
        test_2 = test_1()
        test_2()
        profile.disable_by_count()
    """, "--json", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    import json
    report = json.loads((tmp_path / "r.json").read_text())
    inner = [f for f in report["functions"] if f["name"] == "test_1.<locals>.test_2"]
    assert len(inner) == 1 and inner[0]["calls"] == 1
    row = [l for l in inner[0]["lines"] if l["source"] == "b = [2] * (2 * 10 ** 6)"][0]
    assert row["allocated_bytes"] >= 16 * 10 ** 6
    assert set(tables(result.stdout)) == {"test_1", "test_1.<locals>.test_2"}


def test_profiling_a_nested_function_is_not_charged_to_its_def_line(run_source):
    # The def line makes one function object, as the lambda line does; profiling it (the wrapper,
    # its registration) is memsleuth's own.
    run = run_source("""
from memsleuth import profile

@profile
def outer():
    x = 3
    def inner():
        return x
    holder = (lambda: x)
    return inner, holder

outer()
""")
    made = run.line("outer", "def inner():")
    assert made["allocated_bytes"] == run.line("outer", "holder = (lambda: x)")["allocated_bytes"] > 0, made


def test_memory_usage_streams_mprof_lines(run_source):
    run = run_source("""
import io, subprocess, sys
from memsleuth.compat import memory_usage

own = io.StringIO()
memory_usage(-1, interval=0.01, timeout=0.03, stream=own, multiprocess=True)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
watched = io.StringIO()
memory_usage(child, interval=0.01, stream=watched)
call = io.StringIO()
memory_usage((sum, ([1, 2],)), stream=call)
EXTRA = {"own": own.getvalue(), "watched": watched.getvalue(), "call": call.getvalue()}
""")
    for key, minimum in (("own", 3), ("watched", 2), ("call", 2)):
        lines = run.extra[key].splitlines()
        assert len(lines) >= minimum and all(line.startswith("MEM ") and len(line.split()) == 3 for line in lines), \
            (key, lines)


# --------------------------------------------------------------------------------------------
# LineProfiler.code_map and CodeMap, TimeStamper, --timestamp, --pdb-mmem


def test_code_map_holds_the_tables_figures(run_source):
    run = run_source("""
import pickle
import memsleuth
from memsleuth.compat import LineProfiler, CodeMap

def work(n):
    keep = bytearray(8 * 2 ** 20)
    def inner():
        return [0] * 100000
    inner()
    return len(keep)

prof = LineProfiler()
profiled = prof(work)
profiled(1)
profiled(2)
code_map = prof.code_map
entries = {}
for filename, lines in code_map.items():  # as memory_profiler's show_results reads it
    for lineno, entry in lines:
        if entry is not None:
            increment, mem_usage, occurrences = entry
            entries[lineno] = [filename, increment, mem_usage, occurrences, entry.figures["allocated_bytes"]]
            assert pickle.loads(pickle.dumps(entry)).figures == entry.figures
standalone = CodeMap()
standalone.add(work.__code__)
EXTRA = {"entries": entries, "keyed": sorted(code_map[work.__code__]), "mapped": len(code_map),
         "standalone": [[f, [n for n, e in lines if e]] for f, lines in standalone.items()],
         "report": memsleuth.last_report()["functions"], "file": __file__}
""")
    e = run.extra
    by_name = {f["name"]: f for f in e["report"]}
    work = {line["lineno"]: line for line in by_name["work"]["lines"]}
    inner = {line["lineno"]: line for line in by_name["work.<locals>.inner"]["lines"]}
    entries = {int(k): v for k, v in e["entries"].items()}
    # Keyed by the function's own code object, as in memory_profiler; each nested function has
    # entries of its own, as it has a table of its own.
    assert e["mapped"] == 2 and e["keyed"] == sorted(work), e
    for lineno, line in work.items():
        filename, increment, mem_usage, occurrences, allocated = entries[lineno]
        assert filename == e["file"]
        assert increment == line["rss_delta_bytes"] / MIB and mem_usage == line["rss_after_bytes"] / MIB
        assert occurrences == line["hits"] == 2 and allocated == line["allocated_bytes"]
    assert entries[min(inner)][4] == inner[min(inner)]["allocated_bytes"] >= 2 * 800000
    assert e["standalone"] == [[e["file"], sorted(work)], [e["file"], sorted(inner)]], e["standalone"]


def test_timestamper_records_each_calls_memory_and_depth(run_source):
    run = run_source("""
import io
from memsleuth.compat import TimeStamper

stamper = TimeStamper("psutil")
kept = []

@stamper
def outer():
    kept.append(b"x" * (64 * 2 ** 20))
    inner()

@stamper(precision=3)
def inner():
    pass

@stamper
def fails():
    raise KeyError("x")

outer()
try:
    fails()
except KeyError:
    pass
with stamper.timestamp("block"):
    pass
out = io.StringIO()
stamper.show_results(out)
EXTRA = {"lines": out.getvalue().splitlines(), "name": outer.__name__, "level": stamper.current_stack_level}
""")
    e = run.extra
    assert e["name"] == "outer" and e["level"] == -1  # the failed call left its level too
    found = {}
    for line in e["lines"]:
        fields = line.split(" ")
        assert fields[0] == "FUNC" and len(fields) == 7, line
        start_mem, start, end_mem, end = map(float, fields[2:6])
        assert start <= end, line
        found[fields[1]] = (end_mem - start_mem, int(fields[6]))
    assert set(found) == {"__main__.outer", "__main__.inner", "__main__.fails", ".block"}, e["lines"]
    assert found["__main__.outer"][0] >= 60 and found["__main__.outer"][1] == 0
    assert found["__main__.inner"][1] == 1 and found["__main__.fails"][1] == 0


def test_timestamp_option_times_profile_functions_as_memory_profiler_does(tmp_path):
    source = """
        @profile
        def work():
            data = b"x" * (32 * 2 ** 20)
            return len(data)

        print("result", work(), work())
    """
    samples = tmp_path / "mprofile.dat"
    samples.write_text("MEM 1.000000 2.0000\n")  # what mprof wrote there first
    result = memsleuth_run(tmp_path, source, "--timestamp", "-o", str(samples))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "result 33554432 33554432\n", result.stdout  # no tables, no heading
    lines = samples.read_text().splitlines()
    assert lines[0] == "MEM 1.000000 2.0000" and len(lines) == 3, lines
    assert all(line.startswith("FUNC __main__.work ") for line in lines[1:]), lines
    printed = memsleuth_run(tmp_path, source, "--timestamp")
    assert printed.returncode == 0 and printed.stdout.count("\nFUNC __main__.work ") == 2, printed.stdout
    assert "Filename:" not in printed.stdout


def test_timestamp_option_includes_children_when_asked(tmp_path):
    source = """
        import subprocess, sys

        @profile
        def start_child():
            child = subprocess.Popen([sys.executable, "-c", "import sys; held = b'x' * (100 * 2 ** 20); "
                                      "print('ready', flush=True); sys.stdin.read()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            child.stdout.readline()
            return child

        child = start_child()
        child.stdin.close()
        child.wait()
    """
    growth = {}
    for options in ((), ("--include-children",)):
        result = memsleuth_run(tmp_path, source, "--timestamp", *options)
        assert result.returncode == 0, result.stderr
        fields = result.stdout.split()
        assert fields[:2] == ["FUNC", "__main__.start_child"], result.stdout
        growth[options] = float(fields[4]) - float(fields[2])
    assert growth[()] < 50 and growth[("--include-children",)] >= 90, growth


def test_timestamp_option_refuses_what_it_cannot_combine_with(tmp_path):
    for options in (("--timestamp", "-f", "work"), ("--timestamp", "--pdb-mmem", "10"), ("--pdb-mmem", "-3"),
                    ("--include-children",)):
        result = memsleuth_run(tmp_path, "print('ran')\n", *options)
        assert result.returncode == 2 and result.stderr.startswith("error: "), (options, result.stderr)
        assert "Traceback" not in result.stderr and "ran" not in result.stdout


PDB_PROGRAM = """
    @profile
    def work():
        data = b"x" * (100 * 2 ** 20)
        marker = "after"
        total = len(data)
        return total

    print("result", work())
"""


def test_pdb_mmem_steps_into_the_debugger_in_the_profiled_function(tmp_path):
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(PDB_PROGRAM).lstrip("\n"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONTRACEMALLOC")}
    result = subprocess.run([BIN, "run", "--pdb-mmem", "60", str(path)], input="p len(data)\nn\np marker\nc\n",
                            capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "exceeded the maximum of 60.00 MiB\nStepping into the debugger" in out, out
    # At the line after the allocation (the reading is taken as it starts), before it runs; the
    # profiled frame's locals are there, and stepping works.
    assert f"> {path}(4)work()" in out and "(Pdb) 104857600" in out, out
    assert f"> {path}(5)work()" in out and "(Pdb) 'after'" in out, out
    assert out.count("Current memory") == 1 and "result 104857600" in out, out
    assert "Filename:" in out  # profiled as usual


def test_line_profiler_max_mem_stops_only_in_its_own_functions(tmp_path):
    result = subprocess.run(
        [BIN, "run", "-c", textwrap.dedent("""
            from memory_profiler import LineProfiler

            @profile
            def other():
                data = b"x" * (100 * 2 ** 20)
                return len(data)

            def mine():
                held = b"y" * (100 * 2 ** 20)
                return len(held)

            print("other", other())
            prof = LineProfiler(max_mem=60)
            print("mine", prof(mine)())
        """)], input="p len(held)\nc\n", capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("Stepping into the debugger") == 1 and "(Pdb) 104857600" in out, out
    assert out.index("other 104857600") < out.index("Current memory") < out.index("mine 104857600"), out
