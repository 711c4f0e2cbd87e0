"""A profiled function's source lines, read without inspect (python/memsleuth/_source.py): they
must be the lines inspect.getsourcelines gives on every CPython, and the profiled program must
import neither inspect nor the parsers behind it."""

import functools
import inspect
import linecache
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from memsleuth import _source

ROOT = Path(__file__).resolve().parent.parent


def code_objects(code):
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield const
            yield from code_objects(const)


def functions_in(path, name="memsleuth_source_case"):
    """A function for every code object compiled from the file at ``path``, which is not run."""
    module = compile(Path(path).read_bytes(), str(path), "exec")
    namespace = {"__name__": name}
    return [types.FunctionType(code, namespace, None, None, tuple(types.CellType() for _ in code.co_freevars))
            for code in code_objects(module)]


def inspected(func):
    try:
        return inspect.getsourcelines(func)
    except OSError:
        return None


def read(func):
    # The reader's own reading of the file, not the copy inspect left in linecache.
    linecache.cache.pop(func.__code__.co_filename, None)
    return _source.source_lines(func)


def mismatches(functions):
    return [(f.__code__.co_filename, f.__code__.co_firstlineno, f.__name__, read(f), inspected(f))
            for f in functions if read(f) != inspected(f)]


def compilable(paths):
    for path in paths:
        try:
            yield from functions_in(path)
        except SyntaxError:  # the command line's tests keep programs that do not compile
            pass


def test_the_lines_are_inspects_for_every_function_of_the_tricky_cases():
    cases = ROOT / "tests" / "source_cases.py"
    functions = functions_in(cases)
    if sys.version_info >= (3, 12):
        functions += functions_in(ROOT / "tests" / "source_cases_312.py")
    assert len(functions) > 40
    assert mismatches(functions) == []
    assert all(read(f) is not None for f in functions)


def test_the_lines_are_inspects_for_every_function_of_the_fixtures_tests_and_memsleuth():
    paths = sorted(ROOT.glob("fixtures/**/*.py")) + sorted(ROOT.glob("tests/*.py")) + \
        sorted(ROOT.glob("python/memsleuth/*.py")) + [ROOT / "benches" / "run.py"]
    functions = list(compilable(paths))
    assert len(functions) > 1000
    assert mismatches(functions) == []


SAMPLE = 'def sample(x):\n    text = "caf\u00e9"\n    return (x,\n            text)\n    # kept\n\n\ndef after():\n    pass\n'
ENCODED = {
    "utf-8": SAMPLE.encode(),
    "crlf": SAMPLE.replace("\n", "\r\n").encode(),
    "cr": SAMPLE.replace("\n", "\r").encode(),
    "bom": b"\xef\xbb\xbf" + SAMPLE.encode(),
    "no-final-newline": SAMPLE.rstrip("\n").encode(),
    "latin-1-declared": b"# -*- coding: latin-1 -*-\n" + SAMPLE.encode("latin-1"),
    "not-utf-8": SAMPLE.encode("latin-1"),
}
#: What read_file leaves to linecache.
LEFT_TO_LINECACHE = ("latin-1-declared", "not-utf-8")


@pytest.mark.parametrize("name", ENCODED)
def test_a_file_is_read_as_linecache_reads_it_or_left_to_linecache(tmp_path, name):
    path = tmp_path / "encoded.py"
    path.write_bytes(ENCODED[name])
    read = _source.read_file(str(path))
    if name in LEFT_TO_LINECACHE:
        assert read is None
    else:
        assert read == linecache.getlines(str(path)) and read[1] == '    text = "caf\u00e9"\n'


@pytest.mark.parametrize("name", [name for name in ENCODED if name != "not-utf-8"])
def test_the_lines_are_inspects_whatever_the_files_encoding_and_line_ends(tmp_path, name):
    path = tmp_path / "encoded.py"
    path.write_bytes(ENCODED[name])
    sample = next(f for f in functions_in(path) if f.__name__ == "sample")
    assert read(sample) is not None
    assert read(sample) == inspected(sample)


def test_source_registered_in_linecache_is_read_from_there_as_inspect_does():
    """IPython's cells and `memsleuth run -c` have no file: their source is in linecache."""
    source = "def cell():\n    return 1\n"
    filename = "<memsleuth-test-cell>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        namespace = {}
        exec(compile(source, filename, "exec"), namespace)
        assert _source.source_lines(namespace["cell"]) == (["def cell():\n", "    return 1\n"], 1)
        assert _source.source_lines(namespace["cell"]) == inspected(namespace["cell"])
    finally:
        del linecache.cache[filename]


@pytest.mark.parametrize("filename", ["<string>", "<stdin>", "/nonexistent/memsleuth/program.py"])
def test_source_that_cannot_be_read_is_none_as_inspect_raises(filename, monkeypatch):
    # From 3.13 `python -c` puts its code in linecache as <string> (pytest-xdist's workers start
    # that way): with it there, both readers would find that text.
    monkeypatch.delitem(linecache.cache, filename, raising=False)
    namespace = {}
    exec(compile("def f():\n    return 1\n", filename, "exec"), namespace)
    assert _source.source_lines(namespace["f"]) is None
    assert inspected(namespace["f"]) is None


def test_a_wrappers_lines_are_its_own_not_those_of_the_function_it_wraps():
    """inspect follows ``__wrapped__``; the lines a profiled wrapper shows belong to the code
    that runs."""

    def wrapping(func):
        @functools.wraps(func)
        def wrapper(*args):
            return func(*args)
        return wrapper

    @wrapping
    def wrapped():
        return 1

    lines, first = _source.source_lines(wrapped)
    assert first == wrapped.__code__.co_firstlineno
    assert [line.strip() for line in lines] == ["@functools.wraps(func)", "def wrapper(*args):",
                                               "return func(*args)"]


def test_a_profiled_wrapper_shows_its_own_lines(run_source):
    run = run_source(textwrap.dedent("""\
        import functools
        from memsleuth import profile

        def logged(func):
            @functools.wraps(func)
            def wrapper(*args):
                result = func(*args)
                return result
            return wrapper

        @profile
        @logged
        def work():
            return [0] * 100_000

        work()
        """))
    wrapper = run.function("work")
    assert wrapper["first_lineno"] == 5
    assert [(line["lineno"], line["source"]) for line in wrapper["lines"]] == [
        (7, "result = func(*args)"), (8, "return result")]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="inspect.markcoroutinefunction is 3.12's")
def test_a_function_marked_as_a_coroutine_function_is_profiled_as_the_plain_function_it_is(run_source):
    """``inspect.markcoroutinefunction`` makes a plain function that returns an awaitable count as
    a coroutine function; its frame is a plain one, and its lines are measured as such."""
    run = run_source(textwrap.dedent("""\
        import asyncio, inspect
        from memsleuth import profile

        async def later():
            return "value"

        @profile
        @inspect.markcoroutinefunction
        def start():
            kept = [0] * 100_000
            return later()

        assert inspect.iscoroutinefunction(start)
        assert asyncio.run(start()) == "value"
        """))
    lines = run.function("start")["lines"]
    assert [(line["source"], line["hits"]) for line in lines] == [
        ("kept = [0] * 100_000", 1), ("return later()", 1)]


#: What inspect brings, and what only it imported for memsleuth.
HEAVY = ("inspect", "dis", "opcode")
#: What, besides, a program profiled with @profile no longer imports (3.13 imports linecache at
#: start-up, without tokenize).
PARSERS = ("ast", "tokenize", "re", "enum", "linecache")
#: What functools and weakref brought for update_wrapper and a WeakSet, about 4 ms of each run.
HELPERS = ("functools", "weakref", "collections", "operator", "reprlib", "keyword")


def test_a_program_profiled_with_the_decorator_imports_neither_inspect_nor_a_parser_nor_functools(tmp_path):
    program = textwrap.dedent("""\
        import sys
        before = set(sys.modules)
        from memsleuth import profile

        @profile(stream=open("/dev/null", "w"))
        def work():
            b = bytearray(4_000_000)
            del b
            # the last line of its source

        work()
        print(" ".join(sorted(set(sys.modules) - before)))
        import memsleuth
        print(memsleuth.last_report()["functions"][0]["last_lineno"])
        """)
    path = tmp_path / "program.py"
    path.write_text(program)
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported, last_lineno = proc.stdout.splitlines()
    imported = set(imported.split())
    assert imported.isdisjoint(HEAVY + PARSERS + HELPERS), imported & set(HEAVY + PARSERS + HELPERS)
    assert "memsleuth._native" in imported
    assert last_lineno == "9"  # the source was read, to its last comment


def test_a_program_under_memsleuth_run_does_not_import_inspect(tmp_path):
    program = tmp_path / "program.py"
    program.write_text(textwrap.dedent("""\
        import sys

        def work():
            b = bytearray(4_000_000)
            del b

        work()
        print(" ".join(sorted(sys.modules)))
        """))
    proc = subprocess.run([sys.executable, "-m", "memsleuth", "run", "-q", str(program)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = set(proc.stdout.split())
    assert imported.isdisjoint(HEAVY), imported & set(HEAVY)


#: What memsleuth run imported before the program's fork, into the program, for paths the run
#: may never take (reports, --follow-fork, memsleuth report --open, memory_profiler's API...).
RUNNER_ONLY = ("webbrowser", "logging", "subprocess", "shlex", "tempfile", "shutil", "json", "html", "random",
               "bz2", "lzma", "traceback", "tokenize", "linecache", "ast", "contextlib", "re", "enum", "textwrap",
               "signal", "selectors", "memsleuth._html")


@pytest.mark.parametrize("options", [[], ["--function", "work"]], ids=["whole-program", "function"])
def test_a_program_under_memsleuth_run_imports_only_what_python_would(tmp_path, options):
    (tmp_path / "program.py").write_text(textwrap.dedent("""\
        import sys

        def work():
            b = bytearray(4_000_000)
            del b

        work()
        print(" ".join(sorted(sys.modules)))
        """))

    def modules(*command):
        proc = subprocess.run([sys.executable, *command], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return set(proc.stdout.split())

    # Both started with -m, as python -m imports runpy and what it brings (contextlib before 3.11).
    plain = modules("-m", "program")
    imported = modules("-m", "memsleuth", "run", "-q", *options, "program.py")
    assert "memsleuth._native" in imported  # (it ran under memsleuth)
    added = imported - plain
    assert added.isdisjoint(RUNNER_ONLY), sorted(added & set(RUNNER_ONLY))
    assert "memsleuth._native" in imported
