"""Shared helpers for the decorator tests.

Every profiled program runs in a fresh interpreter (``sys.executable``), so tracking starts
clean in each test. A small runner executes the program as ``__main__`` (``runpy.run_path``)
and, whatever happens, writes ``{"report": memsleuth.last_report(), "extra": EXTRA}`` to a
temporary JSON file, where ``EXTRA`` is an optional global the program may set to pass back
what it measured. The program's own stdout (where the decorator prints its tables) and stderr
are kept separately.
"""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# test_pytest_plugin.py runs pytest sessions of its own with pytester.
pytest_plugins = ("pytester",)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

# The per-line figures (docs/design.md, Figures) that the JSON report carries for each line and for the totals.
LINE_FIELDS = (
    "hits",
    "allocated_bytes",
    "allocations",
    "freed_bytes",
    "frees",
    "net_bytes",
    "peak_bytes",
    "retained_bytes",
    "rss_after_bytes",
    "rss_delta_bytes",
)

_COUNTER = itertools.count()

TEXT_HEADER = "Line #    Mem usage    Increment  Occurrences"

_RUNNER = r"""
import json, runpy, sys
path, out = sys.argv[1], sys.argv[2]
sys.argv = [path] + sys.argv[3:]
result = {"report": None, "extra": None}
namespace = None
try:
    namespace = runpy.run_path(path, run_name="__main__")
finally:
    memsleuth = sys.modules.get("memsleuth")
    if memsleuth is not None:
        result["report"] = memsleuth.last_report()
    if namespace is not None:
        result["extra"] = namespace.get("EXTRA")
    with open(out, "w") as f:
        json.dump(result, f)
"""


class Run:
    """The outcome of one profiled program."""

    def __init__(self, proc, result):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.report = result["report"]
        self.extra = result["extra"]

    def function(self, name):
        """The report entry of the function whose __qualname__ is ``name`` (exactly one)."""
        found = [f for f in self.report["functions"] if f["name"] == name]
        assert len(found) == 1, f"expected one function {name!r}, got {[f['name'] for f in self.report['functions']]}"
        return found[0]

    def line(self, func_name, source):
        """The figures of the line of ``func_name`` whose stripped source text is ``source``."""
        return find_line(self.function(func_name), source)


def find_line(function, source):
    """A line of a function's report by its source text (exact match after stripping)."""
    wanted = source.strip()
    found = [line for line in function["lines"] if line["source"].strip() == wanted]
    assert len(found) == 1, (
        f"expected one line {wanted!r} in {function['name']}, lines are "
        f"{[line['source'] for line in function['lines']]}"
    )
    return found[0]


def check_invariants(report):
    """Invariants of the figures and the report that hold for every report, whatever the program."""
    assert report["schema"] == "memsleuth.report/1"
    assert report["argv"] is None  # decorator mode
    assert report["python_version"] == ".".join(str(p) for p in sys.version_info[:3])
    for function in report["functions"]:
        for key in ("name", "module", "filename", "first_lineno", "calls", "totals", "lines"):
            assert key in function, key
        linenos = [line["lineno"] for line in function["lines"]]
        assert linenos == sorted(linenos) and len(set(linenos)) == len(linenos), linenos
        for figures in [function["totals"]] + function["lines"]:
            for field in LINE_FIELDS:
                assert field in figures, (function["name"], field)
                if field != "rss_after_bytes" or figures[field] is not None:
                    assert isinstance(figures[field], int), (function["name"], field, figures[field])
            where = (function["name"], figures.get("lineno", "totals"), figures.get("source"))
            assert figures["net_bytes"] == figures["allocated_bytes"] - figures["freed_bytes"], where
            assert figures["peak_bytes"] >= 0, where
            assert 0 <= figures["retained_bytes"] <= figures["allocated_bytes"], where
            for field in ("allocated_bytes", "allocations", "freed_bytes", "frees"):
                assert figures[field] >= 0, where
            assert (figures["allocated_bytes"] == 0) == (figures["allocations"] == 0), where
            assert (figures["freed_bytes"] == 0) == (figures["frees"] == 0), where
            if figures["hits"] == 1:
                # One execution: its peak is at least its net.
                assert figures["peak_bytes"] >= figures["net_bytes"], where
        for line in function["lines"]:
            assert line["hits"] >= 1, line
    process = report["process"]
    for key in ("allocated_bytes", "freed_bytes", "live_bytes", "tracked_peak_bytes", "rss_peak_bytes", "untracked_frees"):
        assert isinstance(process[key], int) and process[key] >= 0, key
    # What was live at the tracked peak, by line: part of the peak, each line once, most first.
    at_peak = process["peak_live_by_line"]
    assert all(line["bytes"] > 0 for line in at_peak), at_peak
    assert sum(line["bytes"] for line in at_peak) <= process["tracked_peak_bytes"], at_peak
    assert len({(line["filename"], line["function"], line["lineno"]) for line in at_peak}) == len(at_peak), at_peak
    assert [line["bytes"] for line in at_peak] == sorted((line["bytes"] for line in at_peak), reverse=True), at_peak


def run_program(path, *args, tmp_path, check=True, invariants=True, timeout=300):
    """Runs the program at ``path`` in a fresh interpreter under the report-dumping runner."""
    out = Path(tmp_path) / f"report-{Path(path).stem}-{next(_COUNTER)}.json"
    env = dict(os.environ)
    env.pop("PYTHONTRACEMALLOC", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(path), str(out), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(tmp_path),
    )
    assert out.exists(), f"runner wrote no report (rc={proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    run = Run(proc, json.loads(out.read_text()))
    if check:
        assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    if invariants and run.report is not None:
        check_invariants(run.report)
    return run


@pytest.fixture
def run_fixture(tmp_path):
    """run_fixture("name.py", *args, check=True) -> Run, for a program in fixtures/."""

    def run(name, *args, **kwargs):
        return run_program(FIXTURES / name, *args, tmp_path=tmp_path, **kwargs)

    return run


@pytest.fixture
def run_source(tmp_path):
    """run_source(text, *args) -> Run, for a program given as source text (written to a file so
    that its functions have source lines)."""

    def run(text, *args, **kwargs):
        path = Path(tmp_path) / "program.py"
        path.write_text(text)
        return run_program(path, *args, tmp_path=tmp_path, **kwargs)

    return run
