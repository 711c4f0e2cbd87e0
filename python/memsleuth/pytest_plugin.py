"""memsleuth's pytest plugin: memory limits as test assertions, with exact per-line figures.

Registered through the ``pytest11`` entry point and inactive until asked for: ``--memsleuth``
(or ``--memsleuth-json DIR``) measures every test, and a test carrying ``limit_memory``,
``limit_leaks`` or ``limit_rss`` is measured whatever the options. Nothing is installed in the
interpreter (no allocator hook, no tracer) until the first test is measured.

A test is measured by calling a copy of its function made for that call alone (a code object of
its own), profiled silently: the ledger keys functions by code object, so the copy's figures are
exactly this call's, even when parametrisation or a rerun calls the same function again. Code
it calls that is profiled too (``@memsleuth.profile``) shows by function, as this test's share
of the figures (their differences across the call).
"""

import argparse
import dataclasses
import hashlib
import json
import re
import types
from pathlib import Path
from typing import Optional, Tuple

import pytest

#: The markers, with pytest-memray's names and meaning for the first two.
MARKERS = {
    "limit_memory": "limit_memory(limit): fail the test if its tracked peak (the high-water mark "
    "of the bytes its thread allocated and had not freed, from the test function's start) "
    "exceeds limit, e.g. '24 MB'.",
    "limit_leaks": "limit_leaks(location_limit, filter_fn=None): fail the test if a line of it "
    "allocated location_limit or more that was still live when the test function returned.",
    "limit_rss": "limit_rss(limit): fail the test if RSS rose by more than limit across the test "
    "function (memsleuth only); the failure names the causes.",
}
#: The markers pytest-memray acts on too.
MEMRAY_MARKERS = ("limit_memory", "limit_leaks")

#: The units sizes take, as pytest-memray reads them: a kilobyte is 1024 bytes.
UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "PB": 1024**5}
UNITS.update({unit[0] + "IB": factor for unit, factor in UNITS.items() if unit != "B"})
SIZE = re.compile(r"\s*\+?(?P<quantity>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[KMGTP]I?B|B)\s*", re.IGNORECASE)
#: How many lines of a test, and of the profiled functions it called, a failure report lists.
TOP_LINES = 5
#: How many lines of each test the --memsleuth summary lists.
SUMMARY_LINES = 3


def parse_size(text):
    """Bytes in ``text`` ('24 MB', '1.5GiB', '512 B'); ValueError when it is not a size."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"{text} is negative")
        return text
    match = SIZE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a size: a number and one of B, KB, MB, GB, KiB, MiB, GiB (e.g. '24 MB')")
    return int(float(match["quantity"]) * UNITS[match["unit"].upper()])


def human(size):
    """A byte count for reading: bytes below 1 KiB, else KiB, MiB or GiB to one decimal."""
    magnitude = abs(size)
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if magnitude >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"


def exact(size):
    """A byte count exactly, with its reading beside it."""
    return f"{size:,} B ({human(size)})" if abs(size) >= 1024 else f"{size} B"


@dataclasses.dataclass(frozen=True)
class StackFrame:
    """Where leaked bytes were allocated, as pytest-memray's filter functions receive it."""

    function: str
    filename: str
    lineno: int


@dataclasses.dataclass(frozen=True)
class Stack:
    """What a ``limit_leaks`` filter function is called with: ``frames``, most recent first. A
    location is a line of the test function, which counts what its callees allocated too, so
    its stack is that one frame."""

    frames: Tuple[StackFrame, ...]


@dataclasses.dataclass
class Limits:
    """A test's limits in bytes, from its markers (None: no such marker)."""

    memory: Optional[int] = None
    leaks: Optional[int] = None
    leaks_filter: object = None
    rss: Optional[int] = None


def _marker_size(item, marker, name):
    """The marker's one size argument (positional or keyword ``name``), checked."""
    if marker.args and name in marker.kwargs or len(marker.args) > 1:
        raise pytest.UsageError(f"memsleuth: {marker.name} on {item.nodeid} takes one size, got {marker.args!r}")
    if not marker.args and name not in marker.kwargs:
        raise pytest.UsageError(f"memsleuth: {marker.name} on {item.nodeid} needs a size, e.g. {marker.name}(\"24 MB\")")
    try:
        return parse_size(marker.args[0] if marker.args else marker.kwargs[name])
    except ValueError as error:
        raise pytest.UsageError(f"memsleuth: {marker.name} on {item.nodeid}: {error}") from None


def _check_keywords(item, marker, allowed):
    unknown = set(marker.kwargs) - set(allowed)
    if unknown:
        raise pytest.UsageError(
            f"memsleuth: {marker.name} on {item.nodeid} has no argument {', '.join(sorted(unknown))}")


def limits_of(item, markers):
    """The limits the item's closest markers among ``markers`` set; UsageError for bad ones."""
    limits = Limits()
    for name in markers:
        marker = item.get_closest_marker(name)
        if marker is None:
            continue
        # current_thread_only is pytest-memray's; memsleuth's figures are the test thread's anyway.
        if name == "limit_memory":
            _check_keywords(item, marker, ("limit", "current_thread_only"))
            limits.memory = _marker_size(item, marker, "limit")
        elif name == "limit_leaks":
            _check_keywords(item, marker, ("location_limit", "filter_fn", "current_thread_only"))
            limits.leaks = _marker_size(item, marker, "location_limit")
            limits.leaks_filter = marker.kwargs.get("filter_fn")
            if limits.leaks_filter is not None and not callable(limits.leaks_filter):
                raise pytest.UsageError(f"memsleuth: limit_leaks on {item.nodeid}: filter_fn must be callable")
        else:
            _check_keywords(item, marker, ("limit",))
            limits.rss = _marker_size(item, marker, "limit")
    return limits


def _positive_count(text):
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of tests")
    return count


def pytest_addoption(parser):
    group = parser.getgroup("memsleuth", "exact memory figures per test (memsleuth)")
    group.addoption("--memsleuth", action="store_true", default=False,
                    help="measure every test; after the session, list the tests with the largest tracked peak")
    group.addoption("--memsleuth-top", type=_positive_count, default=5, metavar="N",
                    help="how many tests --memsleuth lists (default 5)")
    group.addoption("--memsleuth-json", metavar="DIR", default=None,
                    help="measure every test and write each one's JSON report (memsleuth.report/1) into DIR")
    group.addoption("--memsleuth-function", metavar="MODULE:QUALNAME", action="append", default=[],
                    help="profile this function (as @profile does) wherever it is imported from, so that "
                         "the tests' reports show its lines; repeatable")


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", description)
    config.pluginmanager.register(MemsleuthPlugin(config), "memsleuth_plugin")


def _option_set(config, name):
    try:
        return bool(config.getvalue(name) or config.getini(name))
    except (KeyError, ValueError):
        return bool(config.getoption(name, default=False))


class MemsleuthPlugin:
    def __init__(self, config):
        self.config = config
        self.json_dir = None
        json_dir = config.getoption("memsleuth_json")
        if json_dir is not None:
            self.json_dir = Path(config.invocation_params.dir, json_dir).resolve()
            try:
                self.json_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise pytest.UsageError(f"memsleuth: --memsleuth-json {json_dir}: {error.strerror}") from None
            # xdist hands the workers the options as they are now: the workers write here too.
            config.option.memsleuth_json = str(self.json_dir)
        self.everywhere = bool(config.getoption("memsleuth") or self.json_dir)
        self.patcher = None
        functions = config.getoption("memsleuth_function")
        if functions:
            self.patcher = _patch_functions(functions)
        self.markers = tuple(MARKERS)
        memray = config.pluginmanager.get_plugin("memray_manager")
        if memray is not None:
            if self.everywhere and _option_set(config, "memray"):
                raise pytest.UsageError("memsleuth: --memsleuth and --memray both measure the same tests; give one")
            if self.everywhere:
                # Both would act on limit_memory and limit_leaks, each hooking the allocators.
                config.pluginmanager.unregister(memray)
            else:
                self.markers = tuple(m for m in MARKERS if m not in MEMRAY_MARKERS)
        self.limits = {}
        #: In an xdist worker, the usage error of each test whose markers are malformed.
        self.bad_markers = {}
        #: Per measured test, what the summary lists (nodeid, peak, top lines).
        self.summaries = []
        #: The latest measurement per test, until its report is made.
        self.measured = {}
        #: Tests that are not a Python function or method (what they are instead), until their
        #: report is made: their limits cannot be checked, which must not pass for a success.
        self.unmeasured = {}
        #: Every copy measured: the ledger keys functions by code object address, which a copy
        #: freed could hand to the next.
        self.copies = []

    # ----- which tests, and their limits -----

    def pytest_collection_modifyitems(self, items):
        for item in items:
            try:
                self.limits[item.nodeid] = limits_of(item, self.markers)
            except pytest.UsageError as error:
                # An xdist worker cannot stop the session (its controller takes the error for
                # a crash): the test errors with the message instead.
                if not hasattr(self.config, "workerinput"):
                    raise
                self.limits[item.nodeid] = Limits()
                self.bad_markers[item.nodeid] = str(error)

    def pytest_runtest_setup(self, item):
        if item.nodeid in self.bad_markers:
            pytest.fail(self.bad_markers[item.nodeid], pytrace=False)

    def _wanted(self, item):
        limits = self.limits.get(item.nodeid)
        if limits is None:
            # An item not seen at collection (a plugin that makes items late): check it now.
            limits = self.limits[item.nodeid] = limits_of(item, self.markers)
        return self.everywhere or limits != Limits()

    # ----- measuring the call -----

    @pytest.hookimpl(wrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem):
        if not self._wanted(pyfuncitem):
            return (yield)
        from . import _profile

        original = pyfuncitem.obj
        measured = _measured_copy(original)
        if measured is None:
            self.unmeasured[pyfuncitem.nodeid] = type(original).__name__
            return (yield)
        callable_copy, code = measured
        self.copies.append(code)
        callees = list(_profile.precisions)
        before = _profile.report_of(callees)["functions"] if callees else []
        pyfuncitem.obj = callable_copy
        try:
            return (yield)
        finally:
            pyfuncitem.obj = original
            self._record(pyfuncitem, code, callees, before)

    def _record(self, item, code, callees, before):
        from . import _profile

        report = _profile.report_of([code], selection=f"pytest test {item.nodeid}")
        if not report["functions"]:
            return  # the copy never ran (a wrapper around it failed first): nothing was measured
        function = report["functions"][0]
        after = _profile.report_of(callees)["functions"] if callees else []
        measurement = Measurement(item.nodeid, code, function, _callee_shares(before, after))
        self.measured[item.nodeid] = measurement
        self.summaries.append(measurement.summary())
        if self.json_dir is not None:
            path = self.json_dir / json_name(item.nodeid)
            path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")

    # ----- the verdict -----

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        if call.when != "call":
            return report
        measurement = self.measured.pop(item.nodeid, None)
        unmeasured = self.unmeasured.pop(item.nodeid, None)
        limits = self.limits.get(item.nodeid, Limits())
        if report.outcome != "passed":
            return report
        if unmeasured is not None and limits != Limits():
            report.outcome = "failed"
            report.longrepr = (f"memsleuth: {item.nodeid} is a {unmeasured}, not a Python function or method: "
                               "its memory limits cannot be checked")
            return report
        if measurement is None:
            return report
        failures = measurement.failures(limits)
        if failures:
            report.outcome = "failed"
            report.longrepr = "\n".join(failures)
            leaked = any("limit_leaks" in failure for failure in failures)
            report.sections.append(("memsleuth", measurement.section(leaked)))
        return report

    # ----- the summary -----

    def pytest_sessionfinish(self, session):
        if self.patcher is not None:
            self.patcher.report_missing()
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput["memsleuth_summaries"] = json.dumps(self.summaries)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        """pytest-xdist: a worker ended; its tests' summaries join the controller's."""
        summaries = getattr(node, "workeroutput", {}).get("memsleuth_summaries")
        if summaries:
            self.summaries.extend(json.loads(summaries))

    def pytest_terminal_summary(self, terminalreporter):
        if not self.config.getoption("memsleuth") or hasattr(self.config, "workeroutput"):
            return
        top = sorted(self.summaries, key=lambda s: s["peak_bytes"], reverse=True)
        top = top[: self.config.getoption("memsleuth_top")]
        terminalreporter.write_sep("=", f"memsleuth: {len(top)} of {len(self.summaries)} tests by tracked peak")
        for summary in top:
            terminalreporter.write_line(
                f"{summary['nodeid']}: peak {human(summary['peak_bytes'])}, "
                f"retained {human(summary['retained_bytes'])}, RSS {_signed(summary['rss_delta_bytes'])}")
            for line in summary["lines"]:
                terminalreporter.write_line(f"    {_line_text(line)}")
        if self.json_dir is not None:
            terminalreporter.write_line(f"memsleuth: one JSON report per test in {self.json_dir}")


def _patch_functions(functions):
    """Profiles each ``module:qualname`` as its module loads (at once if it is loaded already)."""
    from . import _select

    targets = {}
    for function in functions:
        module, sep, qualname = function.partition(":")
        if not (module and sep and qualname):
            raise pytest.UsageError(f"memsleuth: --memsleuth-function {function}: expected MODULE:QUALNAME")
        targets.setdefault(module, []).append(qualname)
    patcher = _select.PatchOnImport(targets)
    patcher.install()
    return patcher


def _signed(size):
    return ("+" if size >= 0 else "-") + human(abs(size))


def _line_text(line):
    return (f"line {line['lineno']:>4}  peak {human(line['peak_bytes']):>10}  "
            f"allocated {human(line['allocated_bytes']):>10}  retained {human(line['retained_bytes']):>10}  "
            f"{line['source'].strip()}")


def json_name(nodeid):
    """A file name for the test's JSON report: its node id made safe, and a digest of the id so
    that two ids made alike stay apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid.replace("::", "--"))[:150]
    return f"{safe}-{hashlib.sha1(nodeid.encode()).hexdigest()[:8]}.json"


def _fresh_copy(function):
    """``function`` with a code object of its own (equal to the original, not the same object)."""
    copy = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    copy.__module__ = function.__module__
    copy.__dict__.update(function.__dict__)
    return copy


def _measured_copy(obj):
    """(what to call instead of ``obj``, the code object whose figures are the test's), or None
    when ``obj`` is not a Python function or method (nothing to profile line by line)."""
    from . import _profile

    if isinstance(obj, types.MethodType):
        inner = _measured_copy(obj.__func__)
        return inner and (types.MethodType(inner[0], obj.__self__), inner[1])
    if obj in _profile._profiled:
        # A test the user profiles too: its copy is measured instead, and its table shows in the
        # failure section rather than after the call.
        obj = obj.__wrapped__
    if not isinstance(obj, types.FunctionType):
        return None
    wrapped = getattr(obj, "__wrapped__", None)
    if wrapped is not None and obj.__closure__:
        # A wrapper calling the test from its closure (pytest-asyncio runs a coroutine test
        # through one): the test is measured, the wrapper kept around it.
        cells = [cell for cell in obj.__closure__ if _cell_holds(cell, wrapped)]
        inner = _measured_copy(wrapped) if cells else None
        if inner is not None:
            closure = tuple(types.CellType(inner[0]) if _cell_holds(cell, wrapped) else cell
                            for cell in obj.__closure__)
            wrapper = types.FunctionType(obj.__code__, obj.__globals__, obj.__name__, obj.__defaults__, closure)
            wrapper.__kwdefaults__ = obj.__kwdefaults__
            wrapper.__dict__.update(obj.__dict__)
            return wrapper, inner[1]
    copy = _fresh_copy(obj)
    return _profile.profile_silently(copy), copy.__code__


def _cell_holds(cell, value):
    try:
        return cell.cell_contents is value
    except ValueError:  # an empty cell
        return False


ADDITIVE = ("hits", "allocated_bytes", "freed_bytes", "net_bytes", "retained_bytes")


def _callee_shares(before, after):
    """The lines of profiled callees that moved during the test: (function, filename, line) with
    the additive figures' differences across the call."""
    earlier = {}
    for function in before:
        for line in function["lines"]:
            earlier[(function["filename"], function["first_lineno"], function["name"], line["lineno"])] = line
    shares = []
    for function in after:
        for line in function["lines"]:
            key = (function["filename"], function["first_lineno"], function["name"], line["lineno"])
            old = earlier.get(key, {})
            share = {field: line[field] - old.get(field, 0) for field in ADDITIVE}
            if share["hits"]:
                share.update(lineno=line["lineno"], source=line["source"])
                shares.append((function["name"], function["filename"], share))
    return shares


class Measurement:
    """One call of a test: its function's exact report and its callees' shares."""

    def __init__(self, nodeid, code, function, callee_lines):
        self.nodeid = nodeid
        self.code = code
        self.function = function
        self.callee_lines = callee_lines
        self.totals = function["totals"]

    def summary(self):
        lines = sorted(self.function["lines"], key=lambda line: line["peak_bytes"], reverse=True)
        return {
            "nodeid": self.nodeid,
            "peak_bytes": self.totals["peak_bytes"],
            "retained_bytes": self.totals["retained_bytes"],
            "rss_delta_bytes": self.totals["rss_delta_bytes"],
            "lines": [{field: line[field] for field in ("lineno", "source", "peak_bytes", "allocated_bytes",
                                                         "retained_bytes")}
                      for line in [line for line in lines if line["allocated_bytes"]][:SUMMARY_LINES]],
        }

    def failures(self, limits):
        """One message per limit the test went over."""
        failures = []
        if limits.memory is not None and self.totals["peak_bytes"] > limits.memory:
            failures.append(f"memsleuth: the test's tracked memory peaked at {exact(self.totals['peak_bytes'])}, "
                            f"over its limit_memory of {exact(limits.memory)}")
        if limits.leaks is not None:
            try:
                leaking = list(self._leaking_lines(limits))
            except Exception as error:
                name = getattr(limits.leaks_filter, "__qualname__", repr(limits.leaks_filter))
                return failures + [f"memsleuth: limit_leaks's filter_fn {name} raised {type(error).__name__}: {error}"]
            for line in leaking:
                failures.append(
                    f"memsleuth: line {line['lineno']} of {self.function['name']} left {exact(line['retained_bytes'])} "
                    f"allocated after the test, at or over its limit_leaks of {exact(limits.leaks)} per line "
                    f"({exact(self.totals['retained_bytes'])} in all)")
        if limits.rss is not None and self.totals["rss_delta_bytes"] > limits.rss:
            failures.append(f"memsleuth: RSS rose by {exact(self.totals['rss_delta_bytes'])} during the test, "
                            f"over its limit_rss of {exact(limits.rss)}; causes: {self._causes()}")
        return failures

    def _leaking_lines(self, limits):
        for line in self.function["lines"]:
            if line["retained_bytes"] < limits.leaks:
                continue
            if limits.leaks_filter is not None:
                frame = StackFrame(self.function["name"], self.function["filename"], line["lineno"])
                if not limits.leaks_filter(Stack((frame,))):
                    continue
            yield line

    def _causes(self):
        causes = sorted(self.totals["causes"].items(), key=lambda cause: abs(cause[1]), reverse=True)
        return ", ".join(f"{name} {_signed(size)}" for name, size in causes if size)

    def section(self, leaked):
        """The failure section: the lines that allocated or, when the test ``leaked``, retained
        the most, then the table."""
        from . import _native

        out = [f"Lines of {self.function['name']} ({self.function['filename']}), exact tracked figures:"]
        first, second = ("retained_bytes", "peak_bytes") if leaked else ("peak_bytes", "retained_bytes")
        lines = sorted(self.function["lines"], key=lambda line: (line[first], line[second]), reverse=True)
        out += [f"  {_line_text(line)}" for line in [line for line in lines if line["allocated_bytes"]][:TOP_LINES]]
        if self.callee_lines:
            out.append("Lines of profiled functions it called (this test's share):")
            first, second = ("retained_bytes", "allocated_bytes") if leaked else ("allocated_bytes", "retained_bytes")
            callees = sorted(self.callee_lines, key=lambda c: (c[2][first], c[2][second]), reverse=True)
            for name, filename, line in [c for c in callees if c[2]["allocated_bytes"]][:TOP_LINES]:
                out.append(f"  {name} ({filename}) line {line['lineno']}: allocated {human(line['allocated_bytes'])}, "
                           f"retained {human(line['retained_bytes'])}  {line['source'].strip()}")
        out.append(f"RSS {_signed(self.totals['rss_delta_bytes'])}; causes: {self._causes() or 'none'}")
        out.append("")
        out.append(_native.report_text(1, self.code))
        return "\n".join(out)
