"""The run's timeline (README, Timeline): its bounded, downsampled sample list, the samples a run
records in its JSON report, and `memsleuth run --interval`."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from memsleuth._timeline import Downsampled

BIN = os.path.join(os.path.dirname(sys.executable), "memsleuth")


def test_downsampled_keeps_samples_spread_over_everything_offered():
    kept = Downsampled(16)
    for i in range(1000):
        kept.offer(i)
    kept.close("last")
    items = kept.items
    assert len(items) <= 16 and items[0] == 0 and items[-1] == "last"
    gaps = {b - a for a, b in zip(items[:-2], items[1:-1])}
    assert len(gaps) == 1, items  # evenly spaced
    assert items[-2] >= 1000 - 2 * gaps.pop(), items  # up to the end, not truncated
    with pytest.raises(ValueError):
        Downsampled(1)


def run(tmp_path, source, *options, timeout=120):
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(source))
    out = tmp_path / "report.json"
    proc = subprocess.run([BIN, "run", "--json", str(out), *options, str(path)], capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=timeout)
    return proc, out


def test_samples_as_profiled_calls_end(tmp_path):
    proc, out = run(tmp_path, """
        import time
        kept = []

        @profile
        def grow():
            kept.append(b"x" * (5 * 2 ** 20))

        # Call-end samples are at least a millisecond apart: the sleeps keep these apart.
        for _ in range(4):
            time.sleep(0.01)
            grow()
    """)
    assert proc.returncode == 0, proc.stderr
    timeline = json.loads(out.read_text())["timeline"]
    samples = timeline["samples"]
    assert timeline["samples_offered"] == len(samples) == 6, samples  # start, 4 call ends, end
    tracked = [s["tracked_bytes"] for s in samples]
    for k in range(1, 5):
        assert tracked[k] - tracked[0] >= k * 5 * 2 ** 20, tracked
    assert all(s["rss_bytes"] > 0 for s in samples)
    assert [s["time"] for s in samples] == sorted(s["time"] for s in samples)
    # `memsleuth report` still renders a report with a timeline.
    rendered = subprocess.run([BIN, "report", str(out)], capture_output=True, text=True)
    assert rendered.returncode == 0 and "function: grow" in rendered.stdout, rendered.stderr


def test_interval_samples_name_the_running_profiled_line(tmp_path):
    # The profiled function waits until the sampler has taken three samples while it runs.
    proc, out = run(tmp_path, """
        import time
        from memsleuth import _profile

        @profile
        def waiting():
            start = _profile.timeline.samples.offered
            while _profile.timeline.samples.offered < start + 3:
                time.sleep(0.001)

        waiting()
    """, "--interval", "0.005")
    assert proc.returncode == 0, proc.stderr
    samples = json.loads(out.read_text())["timeline"]["samples"]
    inside = [s for s in samples if s["function"] == "waiting"]
    assert len(inside) >= 3 and {s["lineno"] for s in inside} <= {8, 9}, samples


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_bad_interval_is_a_usage_error(tmp_path, value):
    proc, out = run(tmp_path, "pass\n", "--interval", value)
    assert proc.returncode == 2, proc
    assert proc.stderr.startswith("error: ") and f"'{value}'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_a_program_closing_every_descriptor_keeps_its_timeline(tmp_path):
    proc, out = run(tmp_path, """
        import os, time
        kept = []

        @profile
        def grow():
            kept.append(b"x" * 2 ** 20)

        time.sleep(0.01)
        grow()
        time.sleep(0.01)
        os.closerange(3, 4096)
        grow()
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    samples = json.loads(out.read_text())["timeline"]["samples"]
    assert len(samples) == 4 and all(s["rss_bytes"] > 0 for s in samples), samples


def test_follow_fork_samples_add_up_the_childrens_rss(tmp_path):
    """mprof's --include-children: under --follow-fork each sample holds the RSS of the
    program's descendants, here a child holding 64 MiB while the parent waits for samples."""
    proc, out = run(tmp_path, """
        import os, time
        from memsleuth import _profile

        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            block = bytearray(64 << 20)
            os.write(write_end, b"x")
            time.sleep(2)
            os._exit(0)
        os.read(read_end, 1)
        start = _profile.timeline.samples.offered
        while _profile.timeline.samples.offered < start + 3:
            time.sleep(0.001)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    """, "--follow-fork", "--interval", "0.005")
    assert proc.returncode == 0, proc.stderr
    samples = json.loads(out.read_text())["timeline"]["samples"]
    assert max(s["children_rss_bytes"] for s in samples) >= 64 << 20, samples
    assert samples[-1]["children_rss_bytes"] == 0, "the child is gone by the end"


def test_without_follow_fork_samples_have_no_children_total(tmp_path):
    proc, out = run(tmp_path, "pass\n", "--interval", "0.005")
    assert proc.returncode == 0, proc.stderr
    assert all("children_rss_bytes" not in s for s in json.loads(out.read_text())["timeline"]["samples"])
