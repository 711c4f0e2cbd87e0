"""The pytest plugin (python/memsleuth/pytest_plugin.py), through pytester.

Every session runs in a fresh interpreter (``runpytest_subprocess``): memsleuth's hooks, once
installed, stay for the life of the process, and this suite's own process must not carry them.
pytest-memray, when installed, acts on ``limit_memory`` and ``limit_leaks`` too, so sessions
that rely on the markers alone block it (``-p no:memray``), as a suite that switched would.
"""

import glob
import importlib.util
import json
import re
import xml.etree.ElementTree as ElementTree

import pytest

from memsleuth.pytest_plugin import UNITS, parse_size

NO_MEMRAY = ("-p", "no:memray")
MiB = 1024 * 1024


def run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def outcomes_by_test(junit_path):
    """{test id as junitxml names it: 'passed' | 'failed' | 'error' | 'skipped'} from a junitxml file."""
    outcomes = {}
    for case in ElementTree.parse(junit_path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = ("failed" if "failure" in kinds else "error" if "error" in kinds
                          else "skipped" if "skipped" in kinds else "passed")
    return outcomes


# ----- sizes -----

@pytest.mark.parametrize("text, size", [
    ("24 MB", 24 * MiB),
    ("24MB", 24 * MiB),
    ("24 mb", 24 * MiB),
    ("1 KB", 1024),
    ("1 KiB", 1024),
    ("1.5 GiB", 3 * 512 * MiB),
    ("512 B", 512),
    ("+3 MiB", 3 * MiB),
    (".5 KB", 512),
    ("0 B", 0),
    (4096, 4096),
])
def test_sizes_read_as_pytest_memray_reads_them(text, size):
    assert parse_size(text) == size


def test_every_unit_is_binary():
    assert {unit: UNITS[unit] for unit in ("KB", "KIB", "MB", "MIB", "GB", "GIB")} == {
        "KB": 1024, "KIB": 1024, "MB": 1024**2, "MIB": 1024**2, "GB": 1024**3, "GIB": 1024**3}


@pytest.mark.parametrize("text", ["12 XB", "-1 MB", "MB", "", "12", "1 MB extra", -5, True, None, 1.5])
def test_malformed_sizes_are_refused(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("marker", [
    'limit_memory("12 XB")',
    'limit_memory("-4 MB")',
    'limit_leaks("MB")',
    'limit_rss("lots")',
    'limit_memory()',
    'limit_memory("1 MB", "2 MB")',
    'limit_memory("1 MB", per_thread=True)',
    'limit_leaks("1 MB", filter_fn=3)',
])
def test_a_bad_marker_is_a_one_line_usage_error(pytester, marker):
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.{marker}
        def test_marked():
            pass
    """)
    result = run(pytester, *NO_MEMRAY)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    # Other plugins may warn on stderr (pytest-asyncio about its settings); the error is one line.
    errors = [line for line in result.errlines if line.startswith("ERROR")]
    assert len(errors) == 1, result.errlines
    assert errors[0].startswith("ERROR: memsleuth: ") and "test_marked" in errors[0]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_a_bad_top_count_is_a_usage_error(pytester):
    pytester.makepyfile("def test_nothing(): pass")
    result = run(pytester, "--memsleuth", "--memsleuth-top", "-2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "is not a positive number of tests" in result.stderr.str()
    assert "Traceback" not in result.stderr.str()


# ----- activation -----

STARTED_PROBE = """
    from memsleuth import _profile

    def test_probe():
        assert not _profile._started, "memsleuth's hooks are installed"
"""


def test_inactive_without_the_option_or_a_marker(pytester):
    pytester.makepyfile(STARTED_PROBE)
    run(pytester).assert_outcomes(passed=1)


def test_the_option_turns_it_on(pytester):
    # The same probe, after a first test was measured: the hooks are in.
    pytester.makepyfile(test_a_first="def test_first(): pass", test_b_probe=STARTED_PROBE)
    run(pytester).assert_outcomes(passed=2)
    run(pytester, "--memsleuth").assert_outcomes(passed=1, failed=1)


def test_a_marker_turns_it_on_for_its_test(pytester):
    pytester.makepyfile(
        test_a_first="""
            import pytest

            @pytest.mark.limit_memory("1 GB")
            def test_first():
                pass
        """,
        test_b_probe=STARTED_PROBE)
    run(pytester, *NO_MEMRAY).assert_outcomes(passed=1, failed=1)


# ----- limit_memory -----

def test_limit_memory_fails_over_and_passes_under(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.limit_memory("4 MB")
        def test_over():
            data = bytearray(8 * 1024 * 1024)
            del data

        @pytest.mark.limit_memory("16 MB")
        def test_under():
            data = bytearray(8 * 1024 * 1024)
            del data
    """)
    result = run(pytester, *NO_MEMRAY, "-rA")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*memsleuth: the test's tracked memory peaked at 8,*B (8.0 MiB), over its limit_memory of 4,194,304 B (4.0 MiB)",
        "*PASSED*test_under*",
    ])


def test_limit_memory_is_exact_to_the_byte(pytester, tmp_path):
    """The peak a first run measures passes as the limit, one byte less fails."""
    source = """
        import pytest

        @pytest.mark.limit_memory("{limit}")
        def test_exact():
            first = bytearray(3_000_000)
            second = [None] * 200_000
            del first, second
    """
    pytester.makepyfile(source.format(limit="1 GB"))
    out = tmp_path / "json"
    run(pytester, *NO_MEMRAY, "--memsleuth-json", str(out)).assert_outcomes(passed=1)
    [report] = [json.loads(open(path).read()) for path in glob.glob(str(out / "*.json"))]
    peak = report["functions"][0]["totals"]["peak_bytes"]
    assert 4_600_000 < peak < 4_700_000
    pytester.makepyfile(source.format(limit=f"{peak} B"))
    run(pytester, *NO_MEMRAY).assert_outcomes(passed=1)
    pytester.makepyfile(source.format(limit=f"{peak - 1} B"))
    run(pytester, *NO_MEMRAY).assert_outcomes(failed=1)


def test_fixtures_are_not_the_tests_memory(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.fixture
        def buffer():
            return bytearray(40 * 1024 * 1024)

        @pytest.mark.limit_memory("8 MB")
        def test_uses_a_big_fixture(buffer):
            assert len(buffer) == 40 * 1024 * 1024
    """)
    run(pytester, *NO_MEMRAY).assert_outcomes(passed=1)


def test_each_parametrised_case_is_measured_alone(pytester):
    # The big case runs first: a smaller case after it must not inherit its peak.
    pytester.makepyfile("""
        import pytest

        @pytest.mark.parametrize("megabytes", [48, 1, 32])
        @pytest.mark.limit_memory("16 MB")
        def test_case(megabytes):
            data = bytearray(megabytes * 1024 * 1024)
            del data
    """)
    result = run(pytester, *NO_MEMRAY, "-rA")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["PASSED *test_case[[]1[]]*"])


def test_methods_class_markers_and_module_markers(pytester):
    pytester.makepyfile("""
        import pytest

        pytestmark = pytest.mark.limit_memory("64 MB")

        @pytest.mark.limit_memory("1 MB")
        class TestClass:
            def test_over_class_limit(self):
                data = b"x" * (4 * 1024 * 1024)

            @pytest.mark.limit_memory("8 MB")
            def test_own_marker_wins(self):
                data = b"x" * (4 * 1024 * 1024)

        def test_module_limit():
            data = b"x" * (4 * 1024 * 1024)
    """)
    result = run(pytester, *NO_MEMRAY, "-rA")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["FAILED *TestClass::test_over_class_limit*"])


def test_a_test_that_fails_on_its_own_keeps_its_failure(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.limit_memory("1 KB")
        def test_assertion():
            data = [0] * 100_000
            assert len(data) == 3
    """)
    result = run(pytester, *NO_MEMRAY)
    result.assert_outcomes(failed=1)
    # pytest's assertion rewriting still explains the assertion in the measured copy.
    result.stdout.fnmatch_lines(["*assert 100000 == 3*"])
    assert "limit_memory of" not in result.stdout.str()


def test_a_test_that_cannot_be_measured_does_not_pass_its_limits(pytester):
    pytester.makepyfile("""
        import functools
        import pytest

        class Decorated:
            # A decorator that is no function: pytest collects what it wraps, and calls it.
            def __init__(self, function):
                functools.update_wrapper(self, function)

            def __call__(self, *args, **kwargs):
                return self.__wrapped__(*args, **kwargs)

        @pytest.mark.limit_memory("1 GB")
        @Decorated
        def test_limited():
            pass

        @Decorated
        def test_free():
            pass
    """)
    result = run(pytester, *NO_MEMRAY, "--memsleuth", "-rA")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "memsleuth: *::test_limited is a Decorated, not a Python function or method: its memory limits cannot be checked",
    ])


def test_a_test_profiled_by_its_author_is_measured_per_call(pytester):
    pytester.makepyfile("""
        import pytest
        from memsleuth import profile

        @pytest.mark.parametrize("megabytes", [8, 1])
        @pytest.mark.limit_memory("4 MB")
        @profile
        def test_profiled(megabytes):
            data = bytearray(megabytes * 1024 * 1024)
    """)
    result = run(pytester, *NO_MEMRAY, "-rA")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*peaked at 8,*B (8.0 MiB), over its limit_memory of*", "PASSED *test_profiled[[]1[]]"])


# ----- the failure report -----

def test_the_failure_names_the_lines_and_the_profiled_callees(pytester):
    pytester.makepyfile("""
        import pytest
        from memsleuth import profile

        @profile
        def build(count):
            small = [0] * count
            large = bytearray(count * 64)
            return large

        @pytest.mark.limit_memory("2 MB")
        def test_report():
            nothing = 1
            kept = build(100_000)
            scratch = [1] * 500_000
    """)
    result = run(pytester, *NO_MEMRAY)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*- memsleuth -*",
        "Lines of test_report (*test_the_failure_names_the_lines_and_the_profiled_callees.py), exact tracked figures:",
        # kept is a local: the frame's teardown frees it before the call is over. (Before 3.11
        # build's frame, kept on its code object for the next call, stays: a few KiB retained.)
        "  line   13  peak    6.9 MiB  allocated    6.9 MiB  retained * kept = build(100_000)",
        "  line   14  peak    3.8 MiB  allocated    3.8 MiB  retained        0 B  scratch = [[]1[]] * 500_000",
        "Lines of profiled functions it called (this test's share):",
        "  build (*) line 7: allocated 6.1 MiB, retained 6.1 MiB  large = bytearray(count * 64)",
        "  build (*) line 6: allocated 781.3 KiB, retained 0 B  small = [[]0[]] * count",
        "RSS *; causes: *",
        "Line #    Mem usage    Increment  Occurrences   Allocated       Freed         Net        Peak   Line Contents",
    ])
    # Lines that allocated nothing are not listed among the top lines.
    assert "  line   12" not in result.stdout.str()
    assert "return large" not in result.stdout.str().split("Line #")[0]


def test_functions_named_on_the_command_line_show_by_function(pytester):
    pytester.makepyfile(
        lib_under_test="""
            CACHE = []

            def load(count):
                rows = list(range(count))
                CACHE.append(rows)
                return len(rows)
        """,
        test_lib="""
            import pytest
            from lib_under_test import load

            @pytest.mark.limit_leaks("100 KB")
            def test_load():
                assert load(100_000) == 100_000
        """)
    # -s: the warning is written as the module is imported, during collection, which pytest
    # captures otherwise.
    result = run(pytester, *NO_MEMRAY, "-s", "--memsleuth-function", "lib_under_test:load",
                 "--memsleuth-function", "lib_under_test:missing")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "Lines of profiled functions it called (this test's share):",
        # The list's size differs between versions (3.4 MiB on 3.10, 3.8 MiB on 3.12).
        "  load (*lib_under_test.py) line 4: allocated 3.? MiB, retained 3.? MiB  rows = list(range(count))",
    ])
    assert "memsleuth: warning: no function missing in module lib_under_test" in result.stderr.str()
    result = run(pytester, *NO_MEMRAY, "--memsleuth-function", "lib_under_test.load")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: memsleuth: --memsleuth-function lib_under_test.load: expected MODULE:QUALNAME" in result.stderr.str()


def test_limit_leaks_is_per_line_as_in_pytest_memray(pytester):
    pytester.makepyfile("""
        import os
        import pytest

        kept = []

        @pytest.mark.limit_leaks("1 MB")
        def test_one_line_over():
            kept.append(bytearray(2 * 1024 * 1024))

        @pytest.mark.limit_leaks("1 MB")
        def test_two_lines_each_under():
            kept.append(bytearray(600 * 1024))
            kept.append(bytearray(600 * 1024))

        @pytest.mark.limit_leaks("1 MB")
        def test_temporary_is_not_a_leak():
            scratch = bytearray(8 * 1024 * 1024)
            del scratch

        def _not_test_filtered(stack):
            [frame] = stack.frames
            assert os.path.samefile(frame.filename, __file__)
            assert frame.lineno == test_filtered.__code__.co_firstlineno + 2  # below its decorator
            return frame.function != "test_filtered"

        @pytest.mark.limit_leaks("1 MB", filter_fn=_not_test_filtered)
        def test_filtered():
            kept.append(bytearray(2 * 1024 * 1024))
    """)
    result = run(pytester, *NO_MEMRAY, "-rA")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "memsleuth: line 8 of test_one_line_over left 2,097,*B (2.0 MiB) allocated after the test, "
        "at or over its limit_leaks of 1,048,576 B (1.0 MiB) per line (2,097,* B (2.0 MiB) in all)",
    ])
    result.stdout.fnmatch_lines(["FAILED *test_one_line_over*"])


def test_a_leak_report_lists_the_lines_that_retained_the_most_first(pytester):
    pytester.makepyfile("""
        import pytest

        kept = []

        @pytest.mark.limit_leaks("1 MB")
        def test_leaks():
            kept.append(bytearray(2 * 1024 * 1024))
            scratch = bytearray(8 * 1024 * 1024)
            del scratch
    """)
    result = run(pytester, *NO_MEMRAY)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "Lines of test_leaks (*), exact tracked figures:",
        "  line    7  peak    2.0 MiB  allocated    2.0 MiB  retained    2.0 MiB  kept.append(*)",
        "  line    8  peak    8.0 MiB  allocated    8.0 MiB  retained        0 B  scratch = *",
    ])


def test_a_filter_function_that_raises_fails_the_test(pytester):
    pytester.makepyfile("""
        import pytest

        def broken(stack):
            raise KeyError("no such frame")

        @pytest.mark.limit_leaks("1 KB", filter_fn=broken)
        def test_leaks():
            test_leaks.kept = bytearray(4096)
    """)
    result = run(pytester, *NO_MEMRAY)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["memsleuth: limit_leaks's filter_fn broken raised KeyError: 'no such frame'"])
    assert "INTERNALERROR" not in result.stdout.str()


def test_limit_rss_names_the_causes(pytester):
    pytester.makepyfile("""
        import pytest

        kept = []

        @pytest.mark.limit_rss("16 MB")
        def test_rss_over():
            kept.append(b"x" * (64 * 1024 * 1024))

        @pytest.mark.limit_rss("1 GB")
        def test_rss_under():
            kept.append(b"x" * (64 * 1024 * 1024))

        @pytest.mark.limit_rss("16 MB")
        def test_rss_given_back():
            scratch = b"x" * (64 * 1024 * 1024)
            del scratch
    """)
    result = run(pytester, *NO_MEMRAY, "-rA")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "memsleuth: RSS rose by *(6?.? MiB) during the test, over its limit_rss of 16,777,216 B (16.0 MiB); "
        "causes: python +64.0 MiB*",
        "FAILED *test_rss_over*",
    ])


# ----- the summary and the JSON reports -----

SIZED_TESTS = """
    def test_small():
        data = bytearray(1 * 1024 * 1024)

    def test_large():
        data = bytearray(9 * 1024 * 1024)

    def test_medium():
        data = bytearray(5 * 1024 * 1024)
"""


def test_the_summary_lists_the_largest_peaks(pytester):
    pytester.makepyfile(SIZED_TESTS)
    result = run(pytester, "--memsleuth", "--memsleuth-top", "2")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([
        "*= memsleuth: 2 of 3 tests by tracked peak =*",
        "test_the_summary_lists_the_largest_peaks.py::test_large: peak 9.0 MiB, retained *, RSS *",
        "    line    5  peak    9.0 MiB  allocated    9.0 MiB  retained        0 B  data = bytearray(9 * 1024 * 1024)",
        "test_the_summary_lists_the_largest_peaks.py::test_medium: peak 5.0 MiB, *",
    ])
    assert "::test_small:" not in result.stdout.str()


def test_the_failure_lists_five_lines_and_the_summary_three(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.limit_memory("1 MB")
        def test_seven_lines():
            kilobytes_100 = bytearray(100 * 1024)
            kilobytes_700 = bytearray(700 * 1024)
            kilobytes_200 = bytearray(200 * 1024)
            kilobytes_600 = bytearray(600 * 1024)
            kilobytes_300 = bytearray(300 * 1024)
            kilobytes_500 = bytearray(500 * 1024)
            kilobytes_400 = bytearray(400 * 1024)
    """)
    result = run(pytester, *NO_MEMRAY, "--memsleuth")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    failure, summary = output.split("tests by tracked peak")
    listed = lambda text: [int(name) for name in re.findall(r"kilobytes_(\d+) = ", text.split("Line #")[0])]
    # A line's peak is measured from the line's start: each peaks at what it allocates.
    assert listed(failure) == [700, 600, 500, 400, 300]
    assert listed(summary) == [700, 600, 500]


def test_the_summary_lists_five_by_default_and_only_with_the_option(pytester):
    pytester.makepyfile(SIZED_TESTS)
    result = run(pytester, "--memsleuth")
    result.stdout.fnmatch_lines(["*= memsleuth: 3 of 3 tests by tracked peak =*"])
    result = run(pytester, "--memsleuth-json", "out")
    assert "tests by tracked peak" not in result.stdout.str()


def test_one_json_report_per_test(pytester):
    pytester.makepyfile(SIZED_TESTS + """
    import pytest

    @pytest.mark.parametrize("case", ["a/b", "a_b"])
    def test_case(case):
        pass
    """)
    run(pytester, "--memsleuth-json", "reports/here").assert_outcomes(passed=5)
    reports = [json.loads(path.read_text()) for path in (pytester.path / "reports" / "here").iterdir()]
    assert sorted(report["selection"] for report in reports) == sorted(
        f"pytest test test_one_json_report_per_test.py::{name}"
        for name in ("test_small", "test_large", "test_medium", "test_case[a/b]", "test_case[a_b]"))
    large = next(r for r in reports if r["selection"].endswith("test_large"))
    assert large["schema"] == "memsleuth.report/1"
    [function] = large["functions"]
    assert function["name"] == "test_large" and function["calls"] == 1
    assert 9 * MiB <= function["totals"]["peak_bytes"] < 9 * MiB + 4096


def test_an_unwritable_json_directory_is_a_usage_error(pytester):
    pytester.makepyfile("def test_nothing(): pass")
    (pytester.path / "file").write_text("")
    result = run(pytester, "--memsleuth-json", "file/reports")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: memsleuth: --memsleuth-json file/reports: Not a directory" in result.stderr.str()
    assert "Traceback" not in result.stderr.str()


# ----- async tests and xdist workers -----

needs_asyncio = pytest.mark.skipif(importlib.util.find_spec("pytest_asyncio") is None,
                                   reason="pytest-asyncio is not installed")
needs_xdist = pytest.mark.skipif(importlib.util.find_spec("xdist") is None, reason="pytest-xdist is not installed")


@needs_asyncio
def test_async_tests_are_measured_in_their_own_lines(pytester):
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile("""
        import asyncio
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.limit_memory("4 MB")
        async def test_over():
            data = bytearray(8 * 1024 * 1024)
            await asyncio.sleep(0)
            del data

        class TestAsync:
            @pytest.mark.asyncio
            @pytest.mark.limit_memory("16 MB")
            async def test_under(self):
                data = bytearray(8 * 1024 * 1024)
                await asyncio.sleep(0)
    """)
    result = run(pytester, *NO_MEMRAY, "-rA")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "Lines of test_over (*), exact tracked figures:",
        "  line    7  peak    8.0 MiB  allocated    8.0 MiB  retained        0 B  data = bytearray(8 * 1024 * 1024)",
        "FAILED *test_over*",
    ])


@needs_xdist
def test_xdist_workers_measure_their_own_tests(pytester):
    pytester.makepyfile(SIZED_TESTS + """
    import pytest

    @pytest.mark.limit_memory("2 MB")
    def test_limited():
        data = bytearray(3 * 1024 * 1024)
    """)
    result = run(pytester, "-n", "2", "--memsleuth", "--memsleuth-json", "out", "-rA")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "*= memsleuth: 4 of 4 tests by tracked peak =*",
        "*::test_large: peak 9.0 MiB, *",
        "*::test_medium: peak 5.0 MiB, *",
        "*::test_limited: peak 3.0 MiB, *",
        "*::test_small: peak 1.0 MiB, *",
        "FAILED *test_limited*",
    ])
    assert len(list((pytester.path / "out").iterdir())) == 4


@needs_xdist
def test_a_bad_marker_under_xdist_errors_its_test(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.limit_memory("12 XB")
        def test_bad():
            pass

        def test_good():
            pass
    """)
    result = run(pytester, *NO_MEMRAY, "-n", "2")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*memsleuth: limit_memory on *::test_bad: '12 XB' is not a size*"])
    assert "INTERNALERROR" not in result.stdout.str() and "Traceback" not in result.stdout.str()


# ----- beside pytest-memray -----

needs_memray = pytest.mark.skipif(importlib.util.find_spec("pytest_memray") is None,
                                  reason="pytest-memray is not installed (it has no wheel for this Python)")

#: pytest-memray's two markers on tests whose figures are far from their limits.
MEMRAY_SUITE = """
    import pytest

    retained = []

    @pytest.mark.limit_memory("1 MB")
    def test_memory_over():
        data = bytearray(32 * 1024 * 1024)
        del data

    @pytest.mark.limit_memory("64 MB")
    def test_memory_under():
        data = bytearray(1024 * 1024)
        del data

    @pytest.mark.parametrize("megabytes", [48, 1])
    @pytest.mark.limit_memory("16 MB")
    def test_memory_parametrized(megabytes):
        data = [0] * (megabytes * 1024 * 1024 // 8)
        del data

    class TestInClass:
        @pytest.mark.limit_memory("1 MB")
        def test_memory_over_in_class(self):
            data = b"x" * (20 * 1024 * 1024)
            del data

        @pytest.mark.limit_memory("32 MB")
        def test_memory_under_in_class(self):
            data = b"x" * (2 * 1024 * 1024)

    @pytest.fixture
    def big_fixture():
        return bytearray(40 * 1024 * 1024)

    @pytest.mark.limit_memory("8 MB")
    def test_fixture_memory_not_counted(big_fixture):
        assert len(big_fixture) == 40 * 1024 * 1024

    @pytest.mark.limit_memory("1 KB")
    def test_failing_on_its_own():
        assert 1 + 1 == 3

    @pytest.mark.limit_leaks("1 MB")
    def test_leaks_over():
        retained.append(bytearray(16 * 1024 * 1024))

    @pytest.mark.limit_leaks("16 MB")
    def test_leaks_under():
        temporary = bytearray(64 * 1024 * 1024)
        del temporary

    @pytest.mark.limit_leaks("8 MB")
    def test_leaks_spread_over_lines():
        retained.append(bytearray(5 * 1024 * 1024))
        retained.append(bytearray(5 * 1024 * 1024))

    def _not_this_test(stack):
        return not any(frame.function.endswith("test_leaks_filtered") for frame in stack.frames)

    @pytest.mark.limit_leaks("1 MB", filter_fn=_not_this_test)
    def test_leaks_filtered():
        retained.append(bytearray(16 * 1024 * 1024))

    def test_unmarked():
        data = bytearray(64 * 1024 * 1024)
"""


@needs_memray
def test_the_same_tests_pass_and_fail_as_under_pytest_memray(pytester):
    pytester.makepyfile(test_suite=MEMRAY_SUITE)
    run(pytester, "-p", "no:memsleuth", "--memray", "--junitxml=memray.xml")
    run(pytester, "--memsleuth", "--junitxml=memsleuth.xml")
    under_memray = outcomes_by_test(pytester.path / "memray.xml")
    under_memsleuth = outcomes_by_test(pytester.path / "memsleuth.xml")
    assert under_memsleuth == under_memray
    # The suite is not trivially agreed on: both outcomes occur, for both markers.
    assert {outcome for name, outcome in under_memray.items() if "memory" in name} == {"passed", "failed"}
    assert {outcome for name, outcome in under_memray.items() if "leaks" in name} == {"passed", "failed"}


@needs_memray
def test_the_memsleuth_option_takes_the_markers_from_pytest_memray(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.limit_memory("1 MB")
        def test_over():
            data = bytearray(8 * 1024 * 1024)
    """)
    result = run(pytester, "--memsleuth")
    result.assert_outcomes(failed=1)
    assert "memsleuth: the test's tracked memory peaked" in result.stdout.str()
    assert "Test was limited to" not in result.stdout.str() and "MEMRAY REPORT" not in result.stdout.str()
    # Without it pytest-memray keeps them.
    result = run(pytester)
    result.assert_outcomes(failed=1)
    assert "Test was limited to 1.0MiB" in result.stdout.str()
    result = run(pytester, "--memsleuth", "--memray")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: memsleuth: --memsleuth and --memray both measure the same tests; give one" in result.stderr.str()
