"""Children under `memsleuth run` (docs/design.md, "The books live in the sink"): with
--follow-fork each forked child is profiled by a sink of its own and reported by pid, and a
summary adds every process's figures up; without it a child is not profiled and is unharmed."""

import json
import os
import sys
from pathlib import Path
import subprocess

ROOT = Path(__file__).resolve().parent.parent
CHILDREN = ROOT / "fixtures" / "children"
BIN = os.path.join(os.path.dirname(sys.executable), "memsleuth")


def _run(tmp_path, *options, fixture="forks.py"):
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEMSLEUTH_SINK")}
    proc = subprocess.run([BIN, "run", *options, "--json", report, fixture], cwd=CHILDREN, capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    if fixture == "forks.py":
        assert proc.stdout.startswith("built [3000000, 4000000]\n")
    return proc, json.loads(report.read_text())


def _function(report, name):
    return next(f for f in report["functions"] if f["name"] == name)


def test_followed_children_are_reported_by_pid_and_added_up(tmp_path):
    proc, doc = _run(tmp_path, "--follow-fork")
    profiled = [child for child in doc["children"] if child["functions"]]
    # os.fork's child built 2 MB; the pool's workers built 3 and 4 MB (one or both of them).
    builds = sorted(f["totals"]["allocated_bytes"] // 1_000_000 for child in profiled
                    for f in child["functions"] if f["name"] == "build" for _ in range(1))
    assert sum(_function(child, "build")["calls"] for child in profiled) == 3
    assert sum(builds) == 2 + 3 + 4
    assert all(child["pid"] != os.getpid() for child in doc["children"])
    summary = doc["summary"]
    assert summary["processes"] == 1 + len(doc["children"])
    build = _function(summary, "build")
    assert build["calls"] == 4
    kept = next(line for line in build["lines"] if line["source"].startswith("kept = "))
    assert kept["hits"] == 4 and kept["allocated_bytes"] >= 10_000_000
    assert _function(summary, "main")["calls"] == 1
    for child in profiled:
        assert f"memsleuth: child process {child['pid']}\n" in proc.stdout
    assert f"memsleuth: summary over {summary['processes']} processes\n" in proc.stdout


def test_without_follow_fork_children_are_not_profiled(tmp_path):
    proc, doc = _run(tmp_path)
    assert "children" not in doc and "summary" not in doc
    build = _function(doc, "build")
    assert build["calls"] == 1, "only the parent's own call"
    assert "child process" not in proc.stdout


def _spawned(proc):
    """The pids of spawns.py's children (a Process, a Pool's worker), checked to have built."""
    line = proc.stdout.splitlines()[0].split()
    assert line[0] == "spawned" and line[2] == "0" and line[4] == "3000000", proc.stdout
    return int(line[1]), int(line[3])


def test_followed_spawned_children_are_reported_by_pid_and_added_up(tmp_path):
    # A spawned child is a fresh interpreter running the main module again: it learns that it is
    # followed from the code multiprocessing starts it with.
    proc, doc = _run(tmp_path, "--follow-fork", fixture="spawns.py")
    process, worker = _spawned(proc)
    children = {child["pid"]: child for child in doc["children"]}
    assert {process, worker} <= set(children), (process, worker, sorted(children))
    for pid, size in ((process, 5_000_000), (worker, 3_000_000)):
        build = _function(children[pid], "build")
        assert build["calls"] == 1
        assert build["totals"]["allocated_bytes"] >= size
        assert f"memsleuth: child process {pid}\n" in proc.stdout
    summary = doc["summary"]
    assert summary["processes"] == 1 + len(doc["children"])
    build = _function(summary, "build")
    assert build["calls"] == 3
    kept = next(line for line in build["lines"] if line["source"].startswith("kept = "))
    assert kept["hits"] == 3 and kept["allocated_bytes"] >= 9_000_000
    assert _function(summary, "main")["calls"] == 1
    assert f"memsleuth: summary over {summary['processes']} processes\n" in proc.stdout


def test_without_follow_fork_spawned_children_are_not_profiled(tmp_path):
    proc, doc = _run(tmp_path, fixture="spawns.py")
    _spawned(proc)
    assert "children" not in doc and "summary" not in doc
    assert _function(doc, "build")["calls"] == 1, "only the parent's own call"
    assert "child process" not in proc.stdout


def test_followed_forkserver_workers_are_reported_by_pid(tmp_path):
    # The forkserver imports the main module, then forks each worker from itself.
    proc, doc = _run(tmp_path, "--follow-fork", fixture="forkserver.py")
    line = proc.stdout.splitlines()[0].split()
    assert line[0] == "forked" and line[2] == "3000000", proc.stdout
    worker = int(line[1])
    children = {child["pid"]: child for child in doc["children"]}
    assert worker in children, (worker, sorted(children))
    build = _function(children[worker], "build")
    assert build["calls"] == 1 and build["totals"]["allocated_bytes"] >= 3_000_000
    assert _function(doc["summary"], "build")["calls"] == 1
    assert f"memsleuth: child process {worker}\n" in proc.stdout
