"""The command line (README, Use): `memsleuth run` and `memsleuth report`.

Every test runs the real command in a fresh process: the venv's `memsleuth` console script (next to
sys.executable) and, where the two must agree, `python -m memsleuth`. Programs come from
fixtures/cli/; the JSON reports are written to the test's tmp_path. Figures are only checked where
they are exact or far from any threshold: these tests are about the command, not the measurements.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "fixtures" / "cli"
BIN = os.path.join(os.path.dirname(sys.executable), "memsleuth")
LAUNCHERS = {"script": [BIN], "module": [sys.executable, "-m", "memsleuth"]}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# A frame or a path of memsleuth's own code, in an editable or an installed build.
OWN_CODE = re.compile(r"memsleuth[/\\](?:_\w+|__main__|__init__)\.py|site-packages[/\\]memsleuth")
SELECTION_PREFIX = "memsleuth: profiling "


# --------------------------------------------------------------------------------------------
# Running the command


def _env(extra=None):
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONTRACEMALLOC", "PYTHONSTARTUP", "PYTHONINSPECT", "FORCE_COLOR"):
        env.pop(name, None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep fixtures/cli free of __pycache__
    env["PYTHON_COLORS"] = "0"
    env["NO_COLOR"] = "1"
    env.update(extra or {})
    return env


class Result:
    def __init__(self, proc, json_path=None):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.json_path = json_path

    @property
    def report(self):
        assert self.json_path is not None and Path(self.json_path).exists(), (
            f"no JSON report at {self.json_path}\n{self}")
        return json.loads(Path(self.json_path).read_text())

    def __str__(self):
        return f"rc={self.returncode}\n--- stdout:\n{self.stdout}\n--- stderr:\n{self.stderr}"


def memsleuth(*args, cwd, launcher="script", env=None, json_path=None, timeout=60):
    """Runs `memsleuth ARGS` (or `python -m memsleuth ARGS`) and returns a Result."""
    proc = subprocess.run([*LAUNCHERS[launcher], *map(str, args)], capture_output=True, text=True,
                          cwd=str(cwd), env=_env(env), timeout=timeout)
    return Result(proc, json_path)


def run(*args, tmp_path, cwd=None, launcher="script", env=None, json=True):
    """`memsleuth run --json TMP/report.json ARGS`, from CLI (the fixtures) unless told."""
    json_path = Path(tmp_path) / f"report-{launcher}.json"
    prefix = ["run", "--json", json_path] if json else ["run"]
    return memsleuth(*prefix, *args, cwd=CLI if cwd is None else cwd, launcher=launcher, env=env,
                     json_path=json_path if json else None)


def python(*args, cwd, env=None):
    """The same program under plain python, to compare with."""
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=str(cwd),
                          env=_env(env), timeout=60)


def assert_clean_stderr(stderr, traceback_expected=False):
    """No traceback from memsleuth's own code, no line naming its files."""
    if not traceback_expected:
        assert "Traceback" not in stderr, stderr
    assert "PanicException" not in stderr and "panicked" not in stderr, stderr
    for line in stderr.splitlines():
        assert not OWN_CODE.search(line), f"memsleuth's own code in stderr: {line!r}\n{stderr}"


def assert_one_line_error(result, *mentions):
    """Bad input: a non-zero status, one clear line on stderr naming the culprit, nothing else."""
    assert result.returncode != 0, result
    assert_clean_stderr(result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr\n{result}"
    for mention in mentions:
        assert str(mention) in lines[0], f"{mention!r} not in {lines[0]!r}"
    assert "Filename:" not in result.stdout, result


def assert_usage_error(result):
    """clap's usage error: status 2, `error: ...` and a pointer to --help on stderr, nothing on stdout."""
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: "), result
    assert "--help" in result.stderr or "Usage:" in result.stderr, result
    assert result.stdout == "", result
    assert_clean_stderr(result.stderr)


def first_json_line(stdout):
    return json.loads(stdout.splitlines()[0])


# --------------------------------------------------------------------------------------------
# Reading the text report (docs/design.md, Reports)

HEADER = re.compile(r"^Filename: (?P<filename>.*?)   function: (?P<name>.*?)   calls: (?P<calls>\d+)$")
MIB = r"-?\d+(?:\.\d+)? MiB"
HUMAN = r"-?\d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB)"
ROW = re.compile(
    rf"^ *(?P<lineno>\d*)(?: +(?P<mem>{MIB}))?"
    rf"(?: +(?P<inc>{MIB}) +(?P<occ>\d+) +(?P<allocated>{HUMAN}) +(?P<freed>{HUMAN})"
    rf" +(?P<net>{HUMAN}) +(?P<peak>{HUMAN}))?(?:   (?P<source>.*))?$"
)
NOTE = re.compile(r"^  (?:line (?P<lineno>\d+)|return): (?P<text>.+)$")
# The row and the note of a frame's teardown (after its return) have no line number; the key
# sorts after every line, where the row is printed.
TEARDOWN = math.inf


class Table:
    def __init__(self, filename, name, calls):
        self.filename = filename
        self.name = name
        self.calls = calls
        self.rows = {}  # lineno -> dict(mem, inc, occ, allocated, freed, net, peak, source (stripped))
        self.notes = {}  # lineno -> text

    def figured(self):
        """Line numbers of the rows that show a line's figures (an Occurrences value)."""
        return {lineno for lineno, row in self.rows.items() if row["occ"] is not None}

    def decimals(self):
        """The numbers of decimals of every Mem usage / Increment value in the table."""
        found = set()
        for row in self.rows.values():
            for key in ("mem", "inc"):
                if row[key] is not None:
                    number = row[key].split()[0]
                    found.add(len(number.partition(".")[2]))
        return found


def parse_text(text):
    """(tables, other lines): the tables in order (rows and notes), and every line outside them."""
    tables, other = [], []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = HEADER.match(lines[i])
        if not match:
            other.append(lines[i])
            i += 1
            continue
        table = Table(match["filename"], match["name"], int(match["calls"]))
        tables.append(table)
        i += 1
        while i < len(lines) and not lines[i].strip():
            i += 1
        assert lines[i].startswith("Line #") and lines[i].rstrip().endswith("Line Contents"), lines[i]
        i += 1
        assert set(lines[i]) == {"="}, lines[i]
        i += 1
        while i < len(lines) and lines[i].strip() and ROW.match(lines[i]):
            row = ROW.match(lines[i]).groupdict()
            lineno = row.pop("lineno")
            lineno = int(lineno) if lineno else TEARDOWN
            row["occ"] = None if row["occ"] is None else int(row["occ"])
            row["source"] = (row["source"] or "").strip()
            table.rows[lineno] = row
            i += 1
        j = i
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j < len(lines) and lines[j] == "Notes":
            i = j + 1
            while i < len(lines) and NOTE.match(lines[i]):
                note = NOTE.match(lines[i])
                table.notes[int(note["lineno"]) if note["lineno"] else TEARDOWN] = note["text"]
                i += 1
    return tables, other


def table_named(tables, name):
    found = [t for t in tables if t.name == name]
    assert len(found) == 1, f"expected one table for {name!r}, got {[t.name for t in tables]}"
    return found[0]


def selection_lines(other):
    return [line for line in other if line.startswith(SELECTION_PREFIX)]


def function_named(report, name):
    found = [f for f in report["functions"] if f["name"] == name]
    assert len(found) == 1, f"expected one function {name!r}, got {[f['name'] for f in report['functions']]}"
    return found[0]


def line_with(function, source):
    found = [line for line in function["lines"] if line["source"].strip() == source]
    assert len(found) == 1, f"no line {source!r} in {[line['source'] for line in function['lines']]}"
    return found[0]


def check_report(report, argv):
    """The JSON report's shape (docs/design.md, Reports) under `memsleuth run`."""
    assert report["schema"] == "memsleuth.report/1"
    assert report["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert report["argv"] == argv
    for function in report["functions"]:
        for key in ("name", "module", "filename", "first_lineno", "calls", "totals", "lines"):
            assert key in function, (function.get("name"), key)
        assert os.path.isabs(function["filename"]) or function["filename"].startswith("<"), function["filename"]
        assert function["calls"] >= 1
        linenos = [line["lineno"] for line in function["lines"]]
        assert linenos == sorted(set(linenos)), (function["name"], linenos)
        for figures in [function["totals"], *function["lines"]]:
            assert figures["net_bytes"] == figures["allocated_bytes"] - figures["freed_bytes"], (function["name"], figures)
        for line in function["lines"]:
            assert line["hits"] >= 1
    for key in ("allocated_bytes", "freed_bytes", "live_bytes", "tracked_peak_bytes", "rss_peak_bytes"):
        assert isinstance(report["process"][key], int), key


def check_text_matches_json(text, report):
    """Every function of the JSON has one table, with its calls and a row per line that ran."""
    tables, _ = parse_text(text)
    assert sorted(t.name for t in tables) == sorted(f["name"] for f in report["functions"])
    for function in report["functions"]:
        table = table_named(tables, function["name"])
        assert table.calls == function["calls"], function["name"]
        assert table.filename == function["filename"]
        for line in function["lines"]:
            row = table.rows.get(line["lineno"])
            assert row is not None and row["occ"] == line["hits"], (function["name"], line["lineno"], row)
            if line.get("note"):
                assert table.notes.get(line["lineno"]) == line["note"], (function["name"], line["lineno"])
    return tables


# --------------------------------------------------------------------------------------------
# memory_profiler scripts run unchanged


def test_injected_profile_without_import(tmp_path):
    result = run("mp_injected.py", "3", tmp_path=tmp_path)
    assert result.returncode == 0, result
    assert_clean_stderr(result.stderr)
    assert result.stderr == "", result
    report = result.report
    check_report(report, ["mp_injected.py", "3"])
    assert [f["name"] for f in report["functions"]] == ["make_lists"]  # unprofiled() is not
    func = report["functions"][0]
    assert func["module"] == "__main__"
    assert func["filename"] == str(CLI / "mp_injected.py")
    # One table over all three calls.
    assert func["calls"] == 3
    a = line_with(func, "a = [1] * (10 ** 6)")
    assert a["hits"] == 3 and a["allocated_bytes"] >= 3 * 8_000_000, a
    assert line_with(func, "del b")["freed_bytes"] >= 3 * 16_000_000

    # The program's own output first, then the report, once, at exit.
    assert result.stdout.startswith("program output: 3 rounds of 1000000 items\n"), result
    assert result.stdout.count("Filename:") == 1, result
    tables = check_text_matches_json(result.stdout, report)
    assert tables[0].decimals() == {1}  # the default precision


def test_memory_profiler_import_with_precision_and_backend(tmp_path):
    result = run("--precision", "2", "mp_import.py", tmp_path=tmp_path)
    assert result.returncode == 0, result
    assert result.stderr == "", result
    assert result.stdout.startswith(f"program output: {3 * 2 ** 20} {2 ** 20}\n"), result
    report = result.report
    check_report(report, ["mp_import.py"])
    assert [f["name"] for f in report["functions"]] == ["precise", "plain"]
    assert line_with(function_named(report, "precise"), "data = bytearray(3 * 2 ** 20)")["allocated_bytes"] >= 3 * 2 ** 20
    tables = check_text_matches_json(result.stdout, report)
    # The decorator's own precision wins over --precision; --precision applies to the others.
    assert table_named(tables, "precise").decimals() == {4}
    assert table_named(tables, "plain").decimals() == {2}


# --------------------------------------------------------------------------------------------
# The program runs as python would run it


@pytest.mark.parametrize("launcher", ["script", "module"])
def test_script_sees_what_python_gives_it(tmp_path, launcher):
    script = CLI / "show_argv.py"
    args = [script, "one", "--two", "-q", "--json", "x.json", "--precision", "3"]
    result = run(*args, tmp_path=tmp_path, cwd=tmp_path, launcher=launcher)
    assert result.returncode == 0, result
    expected = first_json_line(python(*args, cwd=tmp_path).stdout)
    seen = first_json_line(result.stdout)
    for key in ("argv", "path0", "file", "name"):
        assert seen[key] == expected[key], key
    assert seen["path0"] == str(CLI) and seen["name"] == "__main__"
    # Options after SCRIPT belong to the program, not to memsleuth.
    assert not (tmp_path / "x.json").exists()
    assert result.report["argv"] == [str(script), "one", "--two", "-q", "--json", "x.json", "--precision", "3"]
    assert "Filename:" in result.stdout  # the report still printed: -q went to the program


def test_script_file_is_absolute_like_python(tmp_path):
    result = run("show_argv.py", "a", tmp_path=tmp_path)
    expected = first_json_line(python("show_argv.py", "a", cwd=CLI).stdout)
    seen = first_json_line(result.stdout)
    assert seen["argv"] == expected["argv"] == ["show_argv.py", "a"]
    assert seen["file"] == expected["file"] == str(CLI / "show_argv.py")


def test_script_globals_are_pythons(tmp_path):
    result = run("show_argv.py", tmp_path=tmp_path)
    expected = first_json_line(python(CLI / "show_argv.py", cwd=CLI).stdout)
    assert first_json_line(result.stdout)["globals"] == expected["globals"]


@pytest.mark.parametrize("module", ["clipkg", "clipkg.__main__"])
@pytest.mark.parametrize("launcher", ["script", "module"])
def test_module_with_relative_import(tmp_path, launcher, module):
    # The package is found through PYTHONPATH; cwd is elsewhere.
    env = {"PYTHONPATH": str(CLI)}
    result = run("-m", module, "a", "-b", tmp_path=tmp_path, cwd=tmp_path, launcher=launcher, env=env)
    assert result.returncode == 0, result
    assert result.stderr == "", result
    expected = python("-m", module, "a", "-b", cwd=tmp_path, env=env)
    assert expected.returncode == 0, expected.stderr
    seen = first_json_line(result.stdout)
    assert seen == first_json_line(expected.stdout)
    main_py = str(CLI / "clipkg" / "__main__.py")
    assert seen["argv"] == [main_py, "a", "-b"] and seen["path0"] == str(tmp_path)
    assert seen["name"] == "__main__" and seen["package"] == "clipkg" and seen["spec"] == "clipkg.__main__"
    assert seen["greeting"] == "hello from clipkg.helper"
    report = result.report
    check_report(report, [main_py, "a", "-b"])
    # __main__.py never uses profile: its top-level code is profiled, not the helper it imports.
    assert [(f["name"], f["filename"]) for f in report["functions"]] == [("<module>", main_py)]
    assert report["selection"] == selection_lines(parse_text(result.stdout)[1])[0][len("memsleuth: "):]
    check_text_matches_json(result.stdout, report)


@pytest.mark.parametrize("launcher", [
    "script",
    "module",
])
def test_module_in_current_directory(tmp_path, launcher):
    # As `python -m clipkg` does, run from the directory that holds the package.
    result = run("-m", "clipkg", tmp_path=tmp_path, launcher=launcher)
    assert result.returncode == 0, result
    assert first_json_line(result.stdout) == first_json_line(python("-m", "clipkg", cwd=CLI).stdout)


@pytest.mark.parametrize("launcher", ["script", "module"])
def test_code_string(tmp_path, launcher):
    code = "import sys\nprint(repr(__name__), sys.argv, repr(sys.path[0]))\nsquares = [i * i for i in range(1000)]"
    result = run("-c", code, "x", "--y", tmp_path=tmp_path, cwd=tmp_path, launcher=launcher)
    assert result.returncode == 0, result
    assert result.stderr == "", result
    expected = python("-c", code, "x", "--y", cwd=tmp_path)
    assert result.stdout.splitlines()[0] == expected.stdout.strip() == "'__main__' ['-c', 'x', '--y'] ''"
    report = result.report
    check_report(report, ["-c", "x", "--y"])
    assert [f["name"] for f in report["functions"]] == ["<module>"]
    assert [line["source"] for line in report["functions"][0]["lines"]] == code.splitlines()
    check_text_matches_json(result.stdout, report)
    assert len(selection_lines(parse_text(result.stdout)[1])) == 1


def test_code_string_has_no_file(tmp_path):
    code = "print('__file__' in globals())"
    result = run("-q", "-c", code, tmp_path=tmp_path, cwd=tmp_path)
    assert result.stdout == python("-c", code, cwd=tmp_path).stdout == "False\n"


# --------------------------------------------------------------------------------------------
# What is profiled, and the report saying so


def test_auto_selection_of_a_script_that_never_uses_profile(tmp_path):
    result = run("auto_select.py", tmp_path=tmp_path)
    assert result.returncode == 0, result
    assert result.stderr == "", result
    report = result.report
    check_report(report, ["auto_select.py"])
    path = str(CLI / "auto_select.py")
    calls = {f["name"]: f["calls"] for f in report["functions"]}
    # Top-level code and every function of the script's own file; not cli_helper.load.
    assert calls == {"<module>": 1, "Shape.__init__": 2, "Shape.area": 2, "Shape.unit": 1, "outer": 1,
                     "outer.<locals>.inner": 3}
    assert {f["filename"] for f in report["functions"]} == {path}
    assert {f["module"] for f in report["functions"]} == {"__main__"}
    module = function_named(report, "<module>")
    assert module["first_lineno"] == 1
    total_line = line_with(module, "total = Shape(300).area() + Shape.unit().area() + outer(100_000) + cli_helper.load(1000)")
    assert total_line["allocated_bytes"] >= 300_000
    assert line_with(function_named(report, "outer.<locals>.inner"), "return bytearray(k)")["allocated_bytes"] >= 300_000

    tables, other = parse_text(result.stdout)
    assert other[0] == "program output: total 391001 1"
    [selection] = selection_lines(other)
    assert "auto_select.py" in selection and "profile" in selection  # what, and why
    assert report["selection"] == selection[len("memsleuth: "):]
    check_text_matches_json(result.stdout, report)


@pytest.mark.parametrize("store_add", ["Store.add", "__main__:Store.add", "by_name:Store.add"])
def test_function_option(tmp_path, store_add):
    result = run("--function", store_add, "-f", "cli_helper:load", "--function", "cli_helper:Worker.run",
                 "by_name.py", tmp_path=tmp_path)
    assert result.returncode == 0, result
    assert result.stderr == "", result
    assert result.stdout.startswith("program output: 5000 3000 10 100\n"), result
    report = result.report
    check_report(report, ["by_name.py"])
    found = {f["name"]: (f["module"], os.path.basename(f["filename"]), f["calls"]) for f in report["functions"]}
    # The named ones plus the decorated one; not untouched(), not the top-level code.
    assert found == {
        "Store.add": ("__main__", "by_name.py", 2),
        "load": ("cli_helper", "cli_helper.py", 1),
        "Worker.run": ("cli_helper", "cli_helper.py", 1),
        "decorated": ("__main__", "by_name.py", 1),
    }
    assert line_with(function_named(report, "load"), "data = [1] * n")["allocated_bytes"] >= 5000 * 8
    tables, other = parse_text(result.stdout)
    [selection] = selection_lines(other)
    for target in (store_add, "cli_helper:load", "cli_helper:Worker.run"):
        assert target in selection, selection
    assert report["selection"] == selection[len("memsleuth: "):]
    check_text_matches_json(result.stdout, report)


def test_function_option_naming_nothing_warns(tmp_path):
    result = run("-f", "Nope.method", "-f", "cli_helper:missing", "-f", "never_imported:thing", "by_name.py",
                 tmp_path=tmp_path)
    assert result.returncode == 0, result
    assert_clean_stderr(result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result
    for name in ("Nope.method", "missing", "never_imported"):
        assert sum(name in line for line in lines) == 1, (name, lines)
    assert [f["name"] for f in result.report["functions"]] == ["decorated"]


def test_selection_is_reported_for_decorated_functions(tmp_path):
    result = run("mp_injected.py", tmp_path=tmp_path)
    [selection] = selection_lines(parse_text(result.stdout)[1])
    assert "@profile" in selection
    assert result.report["selection"] == selection[len("memsleuth: "):]


# --------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize("flag", ["-o", "--output"])
def test_output_file(tmp_path, flag):
    out = tmp_path / "report.txt"
    result = run(flag, out, "mp_injected.py", tmp_path=tmp_path)
    assert result.returncode == 0, result
    # The terminal gets the program's output only.
    assert result.stdout == "program output: 2 rounds of 1000000 items\n", result
    assert result.stderr == ""
    text = out.read_text()
    check_text_matches_json(text, result.report)
    assert "program output" not in text


@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_quiet(tmp_path, flag):
    result = run(flag, "auto_select.py", tmp_path=tmp_path)
    assert result.returncode == 0, result
    assert result.stdout == "program output: total 391001 1\n", result
    assert result.stderr == ""
    # Still writes the JSON, selection included.
    report = result.report
    assert "Shape.area" in [f["name"] for f in report["functions"]]
    assert "auto_select.py" in report["selection"]


@pytest.mark.parametrize("digits", [0, 3, 6])
def test_precision(tmp_path, digits):
    result = run("--precision", digits, "mp_injected.py", tmp_path=tmp_path)
    assert result.returncode == 0, result
    [table] = check_text_matches_json(result.stdout, result.report)
    assert table.decimals() == {digits}


def test_precision_default_and_decorator(tmp_path):
    result = run("mp_import.py", tmp_path=tmp_path)
    assert result.returncode == 0, result
    tables, _ = parse_text(result.stdout)
    assert table_named(tables, "precise").decimals() == {4}
    assert table_named(tables, "plain").decimals() == {1}


SIZES = {"4096": 4096, "64KiB": 64 * 1024, "1MiB": 1024 ** 2, "2GB": 2 * 10 ** 9}


def check_min_bytes(text, report, threshold):
    """Rows with figures are exactly the lines whose allocated, freed or |RSS change| reaches the
    threshold; lines below it are hidden."""
    tables, _ = parse_text(text)
    assert sorted(t.name for t in tables) == sorted(f["name"] for f in report["functions"])
    hidden = 0
    for function in report["functions"]:
        table = table_named(tables, function["name"])
        wanted = {line["lineno"] for line in function["lines"]
                  if max(line["allocated_bytes"], line["freed_bytes"], abs(line["rss_delta_bytes"])) >= threshold}
        assert table.figured() == wanted, (function["name"], threshold)
        hidden += len(function["lines"]) - len(wanted)
        for lineno, row in table.rows.items():
            assert row["occ"] is not None or lineno == function["first_lineno"], (function["name"], lineno, row)
    return hidden


@pytest.mark.parametrize("size", list(SIZES))
def test_min_bytes(tmp_path, size):
    result = run("--min-bytes", size, "mp_injected.py", tmp_path=tmp_path)
    assert result.returncode == 0, result
    report = result.report
    check_min_bytes(result.stdout, report, SIZES[size])
    [table] = parse_text(result.stdout)[0]
    shown = {table.rows[n]["source"] for n in table.figured()}
    if size == "2GB":
        assert shown == set()
    elif size == "1MiB":
        # 8 MB and 16 MB allocated, 16 MB freed; `return a` moves nothing near 1 MiB.
        assert shown == {"a = [1] * (10 ** 6)", "b = [2] * (2 * 10 ** 6)", "del b"}


def test_min_bytes_on_module_code(tmp_path):
    result = run("--min-bytes", "1MiB", "auto_select.py", tmp_path=tmp_path)
    assert result.returncode == 0, result
    check_min_bytes(result.stdout, result.report, 1024 ** 2)


@pytest.mark.parametrize("args", [["run", "--help"], ["report", "--help"], ["help", "run"]])
def test_help_shows_examples(tmp_path, args):
    result = memsleuth(*args, cwd=tmp_path)
    assert result.returncode == 0, result
    assert result.stderr == ""
    assert "Usage: memsleuth " in result.stdout
    assert "Examples:" in result.stdout
    assert re.search(r"^\s+memsleuth (run|report) \S", result.stdout, re.M), result.stdout
    if "run" in args:
        for option in ("--json", "--output", "--precision", "--quiet", "--min-bytes", "--function", "-m", "-c"):
            assert option in result.stdout, option


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help(tmp_path, flag):
    result = memsleuth(flag, cwd=tmp_path)
    assert result.returncode == 0, result
    assert "run" in result.stdout and "report" in result.stdout
    assert "memsleuth run --help" in result.stdout  # where the examples are


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(tmp_path, flag):
    from importlib.metadata import version

    result = memsleuth(flag, cwd=tmp_path)
    assert result.returncode == 0, result
    assert result.stdout == f"memsleuth {version('memsleuth')}\n"
    assert result.stderr == ""


# --------------------------------------------------------------------------------------------
# memsleuth report


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One run of auto_select.py with its text report and JSON, for the report command."""
    tmp = tmp_path_factory.mktemp("saved")
    result = run("-o", tmp / "run.txt", "auto_select.py", tmp_path=tmp)
    assert result.returncode == 0, result
    return result.json_path, (tmp / "run.txt").read_text(), result.report


def test_report_renders_saved_json(tmp_path, saved):
    path, run_text, report = saved
    result = memsleuth("report", path, cwd=tmp_path)
    assert result.returncode == 0, result
    assert result.stderr == ""
    tables = check_text_matches_json(result.stdout, report)
    run_tables, run_other = parse_text(run_text)
    _, other = parse_text(result.stdout)
    assert selection_lines(other) == selection_lines(run_other) == [f"memsleuth: {report['selection']}"]
    # The same tables as the run printed, row for row (the def line aside: see the test below).
    assert [t.name for t in tables] == [t.name for t in run_tables]
    for table, run_table in zip(tables, run_tables):
        assert (table.filename, table.calls) == (run_table.filename, run_table.calls)
        assert table.rows.keys() == run_table.rows.keys()
        for lineno in table.figured() | run_table.figured():
            assert table.rows[lineno] == run_table.rows[lineno], (table.name, lineno)


def test_report_reproduces_the_run_text(tmp_path, saved):
    path, run_text, _ = saved
    result = memsleuth("report", path, cwd=tmp_path)
    assert result.stdout == run_text


def test_report_prints_every_source_line(tmp_path):
    result = run("-o", tmp_path / "run.txt", "exits.py", "3", tmp_path=tmp_path)
    assert result.returncode == 3, result
    [run_table] = parse_text((tmp_path / "run.txt").read_text())[0]
    assert run_table.rows[max(run_table.rows)]["source"] == "return data"  # never ran
    rendered = memsleuth("report", result.json_path, cwd=tmp_path)
    assert rendered.returncode == 0, rendered
    [table] = parse_text(rendered.stdout)[0]
    assert table.rows.keys() == run_table.rows.keys()


def test_report_precision(tmp_path, saved):
    path, _, report = saved
    result = memsleuth("report", "--precision", "3", path, cwd=tmp_path)
    assert result.returncode == 0, result
    for table in check_text_matches_json(result.stdout, report):
        assert table.decimals() == {3}, table.name


def test_report_min_bytes(tmp_path, saved):
    path, _, report = saved
    for size, threshold in SIZES.items():
        result = memsleuth("report", "--min-bytes", size, path, cwd=tmp_path)
        assert result.returncode == 0, result
        tables, _ = parse_text(result.stdout)
        for function in report["functions"]:
            if function["name"] == "<module>":
                continue  # see test_min_bytes_on_module_code
            rows = function["lines"] + ([dict(function["teardown"], lineno=TEARDOWN)] if function["teardown"] else [])
            wanted = {line["lineno"] for line in rows
                      if max(line["allocated_bytes"], line["freed_bytes"], abs(line["rss_delta_bytes"])) >= threshold}
            assert table_named(tables, function["name"]).figured() == wanted, (size, function["name"])


def test_report_min_bytes_units(tmp_path):
    """Binary and decimal units, on a saved report whose figures straddle each threshold."""
    result = run("-q", "mp_injected.py", tmp_path=tmp_path)
    report = result.report
    func = report["functions"][0]
    figures = {  # source -> (allocated, freed, rss change)
        "a = [1] * (10 ** 6)": (64_500, 0, 0),  # 64KB <= a < 64KiB
        "b = [2] * (2 * 10 ** 6)": (0, 1_000_500, 0),  # 1MB <= b < 1MiB
        "del b": (0, 0, -4096),  # |RSS change| 4096
        "return a": (2_100_000_000, 0, 0),  # 2GB <= r < 2GiB
    }
    linenos = {}
    for line in func["lines"]:
        allocated, freed, rss = figures[line["source"].strip()]
        line.update(allocated_bytes=allocated, freed_bytes=freed, net_bytes=allocated - freed, rss_delta_bytes=rss)
        linenos[line["source"].strip()] = line["lineno"]
    path = tmp_path / "crafted.json"
    path.write_text(json.dumps(report))
    cases = {
        "4096": ["a", "b", "del", "return"],
        "4097": ["a", "b", "return"],
        "64KB": ["a", "b", "return"],
        "64KiB": ["b", "return"],
        "1MB": ["b", "return"],
        "1MiB": ["return"],
        "2GB": ["return"],
        "2GiB": [],
    }
    short = {"a": "a = [1] * (10 ** 6)", "b": "b = [2] * (2 * 10 ** 6)", "del": "del b", "return": "return a"}
    for size, shown in cases.items():
        result = memsleuth("report", path, "--min-bytes", size, cwd=tmp_path)
        assert result.returncode == 0, result
        [table] = parse_text(result.stdout)[0]
        assert table.figured() == {linenos[short[s]] for s in shown}, size
        assert func["first_lineno"] in table.rows  # the def line stays


# --------------------------------------------------------------------------------------------
# Exit status: passed through, report printed and JSON written in every case


@pytest.mark.parametrize("arg, status", [("3", 3), ("0", 0), ("none", 0), ("bad input", 1)])
def test_exit_status_passed_through(tmp_path, arg, status):
    result = run("exits.py", arg, tmp_path=tmp_path)
    assert result.returncode == status, result
    assert_clean_stderr(result.stderr)
    assert result.stderr == ("bad input\n" if arg == "bad input" else ""), result
    assert result.stdout.startswith("program output: exiting with")
    report = result.report
    check_report(report, ["exits.py", arg])
    work = function_named(report, "work")
    assert work["calls"] == 1
    assert line_with(work, "sys.exit(status)")["hits"] == 1
    check_text_matches_json(result.stdout, report)


def test_uncaught_exception(tmp_path):
    script = CLI / "raises.py"
    result = run(script, tmp_path=tmp_path)
    assert result.returncode == 1, result
    # The program's own traceback, exactly as python prints it.
    expected = python(script, cwd=CLI)
    assert expected.returncode == 1
    assert result.stderr == expected.stderr
    assert result.stderr.startswith("Traceback (most recent call last):\n")
    assert result.stderr.rstrip().endswith("ValueError: invalid literal for int() with base 10: 'x'")
    assert_clean_stderr(result.stderr, traceback_expected=True)
    report = result.report
    check_report(report, [str(script)])
    assert [f["name"] for f in report["functions"]] == ["parse"]
    assert result.stdout.startswith("program output: before\n")
    check_text_matches_json(result.stdout, report)


def test_modules_named_as_the_standard_ones_beside_the_program_are_left_alone(tmp_path):
    """The program's directory comes first on sys.path, and may hold a json.py or a
    traceback.py of its own: the reports and the program's traceback must not import them."""
    for name in ("json", "html", "traceback", "linecache"):
        (tmp_path / f"{name}.py").write_text(f"import sys\nsys.stderr.write('imported the program\\'s {name}.py\\n')\n")
    script = tmp_path / "prog.py"
    script.write_text("def f():\n    return [1] * 10\nf()\nraise ValueError('boom')\n")
    html_path = tmp_path / "report.html"
    result = memsleuth(
        "run", "--json", tmp_path / "report.json", "--html", html_path, script, cwd=tmp_path,
        json_path=tmp_path / "report.json")
    assert result.returncode == 1, result
    # As python prints it (3.13's own traceback printing imports the program's traceback.py).
    assert result.stderr == python(script, cwd=tmp_path).stderr, result
    for name in ("json", "html", "linecache"):
        assert f"imported the program's {name}.py" not in result.stderr, result
    assert {f["name"] for f in result.report["functions"]} >= {"f"}
    assert html_path.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("raised", [
    "Failed('x')",  # an exception with an attribute named as an exception group's members
    pytest.param("ExceptionGroup('g', [ValueError(1), KeyError(2)])",
                 marks=pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are 3.11+")),
])
def test_uncaught_exception_with_members_prints_as_python(tmp_path, raised):
    script = tmp_path / "prog.py"
    script.write_text(
        "class Failed(Exception):\n    exceptions = ['not an exception']\n"
        f"def f():\n    raise {raised}\nf()\n"
    )
    result = memsleuth("run", script, cwd=tmp_path)
    assert result.returncode == 1, result
    assert result.stderr == python(script, cwd=tmp_path).stderr, result
    assert_clean_stderr(result.stderr, traceback_expected=True)


def test_uncaught_exception_from_profiled_generator(tmp_path):
    script = CLI / "raises.py"
    result = run(script, "generator", tmp_path=tmp_path)
    assert result.returncode == 1, result
    assert_clean_stderr(result.stderr, traceback_expected=True)
    assert result.stderr == python(script, "generator", cwd=CLI).stderr
    assert [f["name"] for f in result.report["functions"]] == ["numbers"]


def test_uncaught_exception_in_selected_module_code(tmp_path):
    code = "def f():\n    return 1 / 0\nf()\n"
    result = run("-c", code, tmp_path=tmp_path, cwd=tmp_path)
    assert result.returncode == 1, result
    assert_clean_stderr(result.stderr, traceback_expected=True)
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1] == '  File "<string>", line 3, in <module>'  # the program's outermost frame first
    assert lines[-1] == "ZeroDivisionError: division by zero"
    assert {f["name"] for f in result.report["functions"]} == {"<module>", "f"}
    check_text_matches_json(result.stdout, result.report)


def test_keyboard_interrupt_raised(tmp_path):
    result = run("interrupt.py", "raise", tmp_path=tmp_path)
    assert result.returncode == 130, result
    assert "KeyboardInterrupt" in result.stderr
    assert_clean_stderr(result.stderr, traceback_expected=True)
    report = result.report
    check_report(report, ["interrupt.py", "raise"])
    assert line_with(function_named(report, "work"), "raise KeyboardInterrupt")["hits"] == 1
    check_text_matches_json(result.stdout, report)


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_sigint(tmp_path):
    json_path = tmp_path / "report.json"
    # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT
    # ignored: give the program the default disposition a terminal's Ctrl-C would meet.
    proc = subprocess.Popen([BIN, "run", "--json", str(json_path), "interrupt.py", "wait"], cwd=str(CLI),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        rest, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (rest, stderr)
    assert "KeyboardInterrupt" in stderr
    assert_clean_stderr(stderr, traceback_expected=True)
    report = json.loads(json_path.read_text())
    check_report(report, ["interrupt.py", "wait"])
    work = function_named(report, "work")
    assert work["calls"] == 1
    # The signal may land before the loop starts: only the lines up to "ready" surely ran.
    assert line_with(work, 'print("ready", flush=True)')["hits"] == 1
    check_text_matches_json(rest, report)


# --------------------------------------------------------------------------------------------
# Bad input


def test_missing_script(tmp_path):
    result = run("no_such_script.py", "arg", tmp_path=tmp_path, cwd=tmp_path)
    assert_one_line_error(result, "no_such_script.py")
    assert not Path(result.json_path).exists()


def test_directory_as_script(tmp_path):
    (tmp_path / "somedir").mkdir()
    result = run("somedir", tmp_path=tmp_path, cwd=tmp_path)
    assert_one_line_error(result, "somedir")


@pytest.mark.parametrize("module", ["no_such_module_xyz", "no_such_package_xyz.sub", "json"])
def test_missing_module(tmp_path, module):
    # json is a package without __main__: python -m json cannot run it either.
    result = run("-m", module, tmp_path=tmp_path, cwd=tmp_path)
    assert_one_line_error(result, module)
    assert python("-m", module, cwd=tmp_path).returncode != 0


@pytest.mark.parametrize("relative", [
    False,
    True,
])
def test_syntax_error(tmp_path, relative):
    script = tmp_path / "broken.py"
    script.write_text("import sys\n\ndef f(:\n    return 1\n")
    target = "broken.py" if relative else script
    result = run(target, tmp_path=tmp_path, cwd=tmp_path)
    assert result.returncode == 1, result
    expected = python(target, cwd=tmp_path)
    assert result.stderr == expected.stderr  # Python's own display
    assert "SyntaxError" in result.stderr and "Traceback" not in result.stderr
    assert_clean_stderr(result.stderr)
    assert "Filename:" not in result.stdout


@pytest.mark.parametrize("args", [
    ["--bogus"],
    ["frobnicate"],
    ["report", "--bogus", "x.json"],
    ["report"],
    ["run", "--json"],
    ["run", "-m"],
    ["run", "-qc"],
    ["run", "--bogus", "show_argv.py"],
    ["run", "-Z", "show_argv.py"],
], ids=" ".join)
def test_unknown_option_or_command(args):
    result = memsleuth(*args, cwd=CLI)
    assert_usage_error(result)


@pytest.mark.parametrize("args", [
    ["run", "--precision", "abc", "show_argv.py"],
    ["run", "--precision", "-1", "show_argv.py"],
    ["run", "--min-bytes", "12XB", "show_argv.py"],
    ["run", "--min-bytes", "lots", "show_argv.py"],
    ["run", "--min-bytes", "", "show_argv.py"],
    ["report", "--precision", "x", "whatever.json"],
    ["report", "--min-bytes", "1QB", "whatever.json"],
], ids=" ".join)
def test_bad_value(args):
    result = memsleuth(*args, cwd=CLI)
    assert_usage_error(result)
    assert "{" not in result.stdout  # show_argv.py did not run


MARKER_CODE = "open('program-ran', 'w').close()"


@pytest.mark.parametrize("case", [
    "json-no-directory", "json-is-directory", "output-no-directory", "output-under-a-file",
    pytest.param("output-permission-denied", marks=pytest.mark.skipif(IS_ROOT, reason="root may write anywhere")),
    pytest.param("output-in-proc", marks=[
        pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="Linux /proc"),
    ]),
])
def test_unwritable_output_checked_before_the_program_runs(tmp_path, case):
    (tmp_path / "a-file").write_text("")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    flag, path = {
        "json-no-directory": ("--json", tmp_path / "missing" / "out.json"),
        "json-is-directory": ("--json", tmp_path),
        "output-no-directory": ("-o", tmp_path / "missing" / "out.txt"),
        "output-under-a-file": ("--output", tmp_path / "a-file" / "out.txt"),
        "output-permission-denied": ("-o", locked / "out.txt"),
        "output-in-proc": ("-o", "/proc/memsleuth-cli-test.txt"),
    }[case]
    try:
        result = memsleuth("run", flag, path, "-c", MARKER_CODE, cwd=tmp_path)
    finally:
        locked.chmod(0o700)
    assert_one_line_error(result, str(path))
    assert result.returncode == 2, result
    assert not (tmp_path / "program-ran").exists(), "the program ran"


def test_program_runs_when_outputs_are_writable(tmp_path):
    # The counterpart of the test above: the same command with good paths runs the program.
    result = memsleuth("run", "--json", tmp_path / "r.json", "-o", tmp_path / "r.txt", "-c", MARKER_CODE,
                       cwd=tmp_path)
    assert result.returncode == 0, result
    assert (tmp_path / "program-ran").exists()
    assert json.loads((tmp_path / "r.json").read_text())["argv"] == ["-c"]
    assert "Filename:" in (tmp_path / "r.txt").read_text()


def test_no_command(tmp_path):
    result = memsleuth(cwd=tmp_path)
    assert result.returncode == 2, result
    assert "Usage: memsleuth" in result.stderr and result.stdout == ""
    assert_clean_stderr(result.stderr)


def test_nothing_to_run(tmp_path):
    result = memsleuth("run", "--json", tmp_path / "r.json", cwd=tmp_path)
    assert result.returncode == 2, result
    assert_clean_stderr(result.stderr)
    assert result.stderr.strip() != ""


@pytest.mark.parametrize("case", [
    "missing", "directory", "not-json", "empty", "binary", "json-array", "no-schema", "other-schema",
    "function-without-fields", "functions-not-a-list",
])
def test_report_of_a_file_that_is_not_a_report(tmp_path, case):
    path = tmp_path / "input.json"
    content = {
        "not-json": "this is not JSON\n",
        "empty": "",
        "json-array": "[1, 2, 3]",
        "no-schema": json.dumps({"functions": [], "process": {}}),
        "other-schema": json.dumps({"schema": "memray.report/9", "functions": []}),
        "function-without-fields": json.dumps({"schema": "memsleuth.report/1", "functions": [{}]}),
        "functions-not-a-list": json.dumps({"schema": "memsleuth.report/1", "functions": {}}),
    }
    if case == "directory":
        path.mkdir()
    elif case == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif case != "missing":
        path.write_text(content[case])
    result = memsleuth("report", path, cwd=tmp_path)
    assert_one_line_error(result, path)
    assert result.stdout == ""


# --------------------------------------------------------------------------------------------
# Text goes through Python's sys.stdout; `python -m memsleuth` is `memsleuth`


def test_report_goes_through_sys_stdout(tmp_path):
    """With sys.stdout redirected inside the process, the report lands in the redirection."""
    captured = tmp_path / "captured.txt"
    driver = (
        "import contextlib, io, sys\n"
        "from memsleuth.__main__ import main\n"
        "buffer = io.StringIO()\n"
        "with contextlib.redirect_stdout(buffer):\n"
        "    status = main(['memsleuth', 'run', 'mp_injected.py'])\n"
        f"open({str(captured)!r}, 'w').write(buffer.getvalue())\n"
        "sys.exit(status)\n"
    )
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, cwd=str(CLI), env=_env(),
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "", proc.stdout  # nothing behind sys.stdout's back
    text = captured.read_text()
    assert text.startswith("program output: 2 rounds")
    [table] = parse_text(text)[0]
    assert table.name == "make_lists" and table.calls == 2


def _shape(text):
    """A text report without its figures: the lines outside tables, and each table's rows."""
    tables, other = parse_text(text)
    return other, [(t.filename, t.name, t.calls, sorted(t.figured()),
                    [(n, r["occ"], r["source"]) for n, r in sorted(t.rows.items())]) for t in tables]


@pytest.mark.parametrize("args", [
    ["--version"], ["--help"], ["run", "--help"], ["report", "--help"], ["run", "--bogus-value=1"],
    ["run", "--precision", "x", "show_argv.py"], ["run", "missing.py"], ["report", "missing.json"],
    ["run", "-m", "no_such_module_xyz"],
], ids=" ".join)
def test_python_m_memsleuth_is_memsleuth_for_messages(args):
    script = memsleuth(*args, cwd=CLI)
    module = memsleuth(*args, cwd=CLI, launcher="module")
    assert (module.returncode, module.stdout, module.stderr) == (script.returncode, script.stdout, script.stderr)


@pytest.mark.parametrize("program", [["mp_injected.py", "2"], ["auto_select.py"], ["exits.py", "3"],
                                     ["-f", "Store.add", "-f", "cli_helper:load", "by_name.py"]], ids=" ".join)
def test_python_m_memsleuth_is_memsleuth_for_runs(tmp_path, program):
    script = run(*program, tmp_path=tmp_path)
    module = run(*program, tmp_path=tmp_path, launcher="module")
    assert script.returncode == module.returncode, (script, module)
    assert script.stderr == module.stderr
    assert _shape(script.stdout) == _shape(module.stdout)
    a, b = script.report, module.report
    for key in ("schema", "python_version", "argv", "selection"):
        assert a.get(key) == b.get(key), key
    assert [(f["name"], f["module"], f["filename"], f["first_lineno"], f["calls"],
             [(line["lineno"], line["source"], line["hits"]) for line in f["lines"]]) for f in a["functions"]] == \
           [(f["name"], f["module"], f["filename"], f["first_lineno"], f["calls"],
             [(line["lineno"], line["source"], line["hits"]) for line in f["lines"]]) for f in b["functions"]]


# --------------------------------------------------------------------------------------------
# Issue 12: memsleuth must never change what the profiled program does


def _close_stdout():
    os.close(1)


@pytest.mark.parametrize("how", ["closed-descriptor", "program-sets-none"])
def test_no_stdout_still_writes_the_json(tmp_path, how):
    # With stdout closed (`>&-`) python sets sys.stdout to None and print() prints nothing; the
    # text report has nowhere to go either, but the JSON report must be written.
    json_path = tmp_path / "r.json"
    code = "import sys\nsys.stdout = None\ndata = [1] * 100000\n"
    program = ["mp_injected.py"] if how == "closed-descriptor" else ["-c", code]
    proc = subprocess.run([BIN, "run", "--json", json_path, *program], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, cwd=str(CLI), env=_env(), timeout=60,
                          preexec_fn=_close_stdout if how == "closed-descriptor" else None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    report = json.loads(json_path.read_text())
    assert [f["name"] for f in report["functions"]] == ["make_lists" if how == "closed-descriptor" else "<module>"]


@pytest.mark.parametrize("launcher", ["script", "module"])
@pytest.mark.parametrize("start", [["-m", "show_argv"], ["-mshow_argv"], ["-c", "import show_argv"],
                                   ["--precision", "2", "-cimport show_argv"]], ids=" ".join)
def test_options_after_module_or_code_belong_to_the_program(tmp_path, start, launcher):
    args = ["--version", "-q", "--json", "x.json", "--precision", "3", "-m", "x", "-c", "y", "--", "z"]
    result = run(*start, *args, tmp_path=tmp_path, launcher=launcher)
    assert result.returncode == 0, result
    assert_clean_stderr(result.stderr)
    argv0 = str(CLI / "show_argv.py") if "-m" in start[0] else "-c"
    assert first_json_line(result.stdout)["argv"] == [argv0, *args]
    assert not (CLI / "x.json").exists()
    assert result.report["argv"] == [argv0, *args]
    # -q went to the program: the report was printed, at memsleuth's precision, not the program's.
    [table] = check_text_matches_json(result.stdout, result.report)
    assert table.decimals() == ({2} if "--precision" in start else {1})


def test_help_example_module_with_flag(tmp_path):
    # `memsleuth run -m mypackage.tool --flag`, from run --help.
    result = run("-m", "clipkg", "--flag", tmp_path=tmp_path)
    assert result.returncode == 0, result
    assert first_json_line(result.stdout)["argv"] == [str(CLI / "clipkg" / "__main__.py"), "--flag"]


def test_options_before_module_are_memsleuths(tmp_path):
    result = run("-q", "-m", "show_argv", "-q", tmp_path=tmp_path)
    assert result.returncode == 0, result
    assert first_json_line(result.stdout)["argv"] == [str(CLI / "show_argv.py"), "-q"]
    assert "Filename:" not in result.stdout


def test_pytest_options_after_module(tmp_path):
    (tmp_path / "test_quiet.py").write_text("def test_one():\n    assert True\n")
    result = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "test_quiet.py", tmp_path=tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result
    assert "1 passed" in result.stdout and "test session starts" not in result.stdout, result
    assert "Filename:" in result.stdout


def test_forked_child_does_not_report(tmp_path):
    result = run("fork_child.py", tmp_path=tmp_path)
    assert result.returncode == 0, result
    assert result.stderr == ""
    # The child ran to its end, after the parent had reported and exited.
    assert "parent done" in result.stdout and "child done" in result.stdout, result
    tables, other = parse_text(result.stdout)
    assert [(t.name, t.calls) for t in tables] == [("work", 1)], result
    assert len(selection_lines(other)) == 1
    assert [(f["name"], f["calls"]) for f in result.report["functions"]] == [("work", 1)]


def test_report_waits_for_threads_and_atexit(tmp_path):
    result = run("late_work.py", tmp_path=tmp_path)
    assert result.returncode == 0, result
    assert result.stderr == ""
    report = result.report
    for name, n in (("in_thread", 10 ** 5), ("at_exit", 2 * 10 ** 5)):
        function = function_named(report, name)
        assert function["calls"] == 1, name
        assert line_with(function, "data = [%d] * n" % (1 if name == "in_thread" else 2))["allocated_bytes"] >= 8 * n
    check_text_matches_json(result.stdout[result.stdout.index("script done") + len("script done"):], report)


def test_function_in_a_module_loaded_by_pytest_assertion_rewriting(tmp_path):
    (tmp_path / "test_target.py").write_text(
        "def test_alloc():\n"
        "    data = [1] * 100000\n"
        "    assert '@py_builtins' in globals()  # pytest rewrote this module\n"
        "    assert len(data) == 100000\n"
    )
    # Loaded after the target by the same loader (pytest's), and left alone.
    (tmp_path / "test_zother.py").write_text("def test_alloc():\n    assert '@py_builtins' in globals()\n")
    # pytest-asyncio (installed for the pytest plugin's tests) warns on stderr about its settings.
    result = run("-f", "test_target:test_alloc", "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:asyncio",
                 "test_target.py", "test_zother.py", tmp_path=tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result
    assert "2 passed" in result.stdout, result
    assert "warning" not in result.stderr, result
    function = function_named(result.report, "test_alloc")
    assert function["filename"] == str(tmp_path / "test_target.py")
    assert function["calls"] == 1
    assert line_with(function, "data = [1] * 100000")["allocated_bytes"] >= 800000


@pytest.mark.parametrize("args", [
    ["run", "--precision", "1000000", "show_argv.py"],
    ["run", "--precision", "21", "show_argv.py"],
    ["run", "--min-bytes", "99999999999999999999GiB", "show_argv.py"],
    ["report", "--precision", "1000000", "whatever.json"],
], ids=" ".join)
def test_out_of_range_value(args):
    result = memsleuth(*args, cwd=CLI)
    assert_usage_error(result)
    assert "{" not in result.stdout  # show_argv.py did not run


def test_largest_precision(tmp_path):
    result = run("--precision", "20", "mp_injected.py", tmp_path=tmp_path)
    assert result.returncode == 0, result
    [table] = check_text_matches_json(result.stdout, result.report)
    assert table.decimals() == {20}


def test_output_paths_resolved_before_the_program_changes_directory(tmp_path):
    code = "import os\nos.mkdir('elsewhere')\nos.chdir('elsewhere')\ndata = [1] * 1000\n"
    result = memsleuth("run", "--json", "r.json", "-o", "r.txt", "-c", code, cwd=tmp_path)
    assert result.returncode == 0, result
    assert sorted(os.listdir(tmp_path / "elsewhere")) == []
    report = json.loads((tmp_path / "r.json").read_text())
    check_text_matches_json((tmp_path / "r.txt").read_text(), report)


def test_function_without_source_shows_its_figures(tmp_path):
    result = run("exec_source.py", tmp_path=tmp_path)
    assert result.returncode == 0, result
    report = result.report
    function = function_named(report, "from_exec")
    assert function["filename"] == "<string>"
    tables = check_text_matches_json(result.stdout, report)
    table = table_named(tables, "from_exec")
    lines = table.figured() - {TEARDOWN}
    assert lines == {line["lineno"] for line in function["lines"]} and lines
    assert {table.rows[n]["source"] for n in lines} == {"<source unavailable>"}
    # The saved report prints the same rows.
    saved = memsleuth("report", result.json_path, cwd=tmp_path)
    assert saved.returncode == 0, saved
    assert _shape(saved.stdout) == _shape(result.stdout)


@pytest.mark.parametrize("fixture", ["mp_spawn.py", "mp_forkserver.py", "mp_spawn_line_profiler.py"])
def test_children_started_by_multiprocessing_run_the_bare_decorator(tmp_path, fixture):
    # Issue 12, item 7: each spawned child runs the main module again, and its bare @profile was a
    # NameError there. Children are not profiled: only the parent's call is in the report.
    # The forkserver (review) imports the main module before it forks the workers. In the children
    # the builtin profile is a LineProfiler too, and memory_profiler's API is there.
    result = run(fixture, tmp_path=tmp_path)
    assert result.returncode == 0, result
    assert "NameError" not in result.stderr, result
    if fixture in ("mp_spawn.py", "mp_spawn_line_profiler.py"):
        assert result.stdout.startswith("[1, 4, 9]\n16\n"), result
        assert [(f["name"], f["calls"]) for f in result.report["functions"]] == [("square", 1)]
    else:
        assert result.stdout.startswith("[2, 4, 6]\n"), result
