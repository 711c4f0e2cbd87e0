"""memsleuth must not lose or invent bytes whatever the profiled program does around it: the
collector running inside memsleuth's own sections, other tools swapping Python's allocator, the
tracer's own objects, native memory moved between readings (issue 12)."""

from conftest import find_line


def test_process_counters_stay_balanced_when_the_collector_runs_in_quiet_sections(run_fixture):
    process = run_fixture("generator_gc_quiet.py").extra
    assert process["freed_bytes"] + process["live_bytes"] <= process["allocated_bytes"], process


def test_hooks_removed_by_tracemalloc_stop_are_put_back(run_fixture):
    run = run_fixture("tracemalloc_stop.py")
    line = run.line("buffer", "data = bytearray(1_600_000)")
    assert line["hits"] == 2, line
    assert line["allocated_bytes"] >= 2 * 1_600_000, line
    # What ran while the hooks were away is missing from the figures, and memsleuth says so.
    warnings = [text for text in run.stderr.splitlines() if text.startswith("memsleuth:")]
    assert len(warnings) == 1 and "tracemalloc" in warnings[0], run.stderr
