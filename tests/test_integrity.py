"""memsleuth must not lose or invent bytes whatever the profiled program does around it: the
collector running inside memsleuth's own sections, other tools swapping Python's allocator, the
tracer's own objects, native memory moved between readings (issue 12)."""

from conftest import find_line


def test_process_counters_stay_balanced_when_the_collector_runs_in_quiet_sections(run_fixture):
    process = run_fixture("generator_gc_quiet.py").extra
    assert process["freed_bytes"] + process["live_bytes"] <= process["allocated_bytes"], process
