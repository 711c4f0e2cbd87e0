"""OS readings stay the process's own and cheap: after fork, under thread churn, and on a heap
whose free lists are long."""

import json

from conftest import find_line

MiB = 1 << 20


def test_forked_child_reads_its_own_rss_and_pages(run_fixture, tmp_path):
    child_report = tmp_path / "child.json"
    run = run_fixture("fork_child_rss.py", child_report)
    assert run.extra["child_status"] == 0, run.stderr
    report = json.loads(child_report.read_text())
    (touch,) = [f for f in report["functions"] if f["name"] == "touch"]
    line = find_line(touch, 'block = b"x" * n')
    # The parent's call wrote 1 MiB, the child's 64 MiB: the child's RSS rose by both, which the
    # parent's (steady at 128 MiB and more) never shows.
    assert line["rss_delta_bytes"] >= 60 * MiB, line
    # The block is resident in the child, whatever the parent's pages at its address are.
    assert abs(line["causes"]["lazy"]) < MiB, line
    assert line["rss_after_bytes"] < touch["rss_at_entry_bytes"] + 100 * MiB, (line, touch["rss_at_entry_bytes"])


def test_thread_state_is_freed_when_threads_end(run_fixture):
    extra = run_fixture("thread_churn.py").extra
    # memsleuth's tables (the block table, nodes, thread ledgers) after 200 threads and after
    # 2,000 more: the same, not 2,000 threads' worth more.
    assert extra["after_2200"] == extra["after_200"], extra


def test_glibc_heap_figures_are_not_read_at_every_reading(run_fixture):
    # mallinfo2 walks every free chunk of glibc's heap (milliseconds on a fragmented one): a
    # call that moves nothing must not pay for it at entry and exit.
    extra = run_fixture("tiny_calls.py").extra
    assert extra["readings"] >= 2 * extra["calls"], extra
    assert extra["glibc_readings"] <= extra["calls"] // 20, extra


def test_a_nested_profiled_helper_reads_only_when_a_reading_is_due(run_source):
    """A profiled helper called in a loop inside a profiled function takes a reading at a call
    only where one fell due, as a line boundary does: not two at every call."""
    run = run_source("""
from memsleuth import profile, _native

@profile(stream=open("/dev/null", "w"))
def outer():
    @profile(stream=open("/dev/null", "w"))
    def helper(i):
        return i
    before = _native.reading_counts()[0]
    for i in range(10_000):
        helper(i)
    return _native.reading_counts()[0] - before

EXTRA = {"readings": outer()}
""")
    assert run.extra["readings"] < 10_000, run.extra
    helper = [f for f in run.report["functions"] if f["name"].endswith("helper")][0]
    assert helper["calls"] == 10_000
