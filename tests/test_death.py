"""Reports survive the program's death (docs/design.md, "The books live in the sink"): a program
killed by a signal, crashing, or ended by os._exit still gets its reports, written by the sink,
marked incomplete, with the line each profiled frame was running; memsleuth exits as the program
did (128 + the signal's number for a signal)."""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEATH = ROOT / "fixtures" / "death"
BIN = os.path.join(os.path.dirname(sys.executable), "memsleuth")

DEATHS = {
    "kill": (128 + signal.SIGKILL, "was killed by SIGKILL"),
    "segv": (128 + signal.SIGSEGV, "was killed by SIGSEGV"),
    "abort": (128 + signal.SIGABRT, "was killed by SIGABRT"),
    "exit": (3, "exited with status 3 without finishing"),
}


def _env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONFAULTHANDLER")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def _line(function, text):
    return next(line for line in function["lines"] if line["source"].startswith(text))


@pytest.mark.parametrize("how", sorted(DEATHS))
def test_a_run_that_dies_still_gets_its_report(tmp_path, how):
    status, ended = DEATHS[how]
    report = tmp_path / "report.json"
    proc = subprocess.run([BIN, "run", "--json", report, "dies.py", how], cwd=DEATH, capture_output=True,
                          text=True, env=_env(), timeout=60)
    assert proc.returncode == status, proc.stderr
    assert proc.stdout.startswith("ready\n")
    heading = proc.stdout.splitlines()[1]
    assert heading.startswith(f"memsleuth: INCOMPLETE REPORT: the program {ended}"), proc.stdout
    assert "running work at " in proc.stdout and "dies.py:" in proc.stdout
    doc = json.loads(report.read_text())
    assert doc["incomplete"]["ended"].startswith(ended)
    assert doc["incomplete"]["records_lost"] is False, "the program died between records"
    [running] = doc["incomplete"]["running"]
    work = next(f for f in doc["functions"] if f["name"] == "work")
    assert running["function"] == "work"
    # The line that was running when it died is the one that killed it.
    assert running["lineno"] > _line(work, 'print("ready"')["lineno"]
    kept = _line(work, "kept = ")
    assert kept["hits"] == 1 and kept["net_bytes"] >= 1000 * 1000
    assert "Filename:" in proc.stdout and "kept = [bytes(1000)" in proc.stdout


PEAK = 48 << 20  # fixtures/death/dies.py's buffer made and freed in "peak"


def test_a_killed_run_reports_what_was_live_at_the_tracked_peak_by_line(tmp_path):
    """The buffer is freed before the kill: only the peak's state still holds it, on its line."""
    report = tmp_path / "report.json"
    proc = subprocess.run([BIN, "run", "--json", report, "dies.py", "peak"], cwd=DEATH, capture_output=True,
                          text=True, env=_env(), timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL, proc.stderr
    doc = json.loads(report.read_text())
    assert doc["incomplete"]["ended"].startswith("was killed by SIGKILL")
    work = next(f for f in doc["functions"] if f["name"] == "work")
    made, freed, kept = _line(work, "peak = bytearray("), _line(work, "del peak"), _line(work, "kept = ")
    assert made["allocated_bytes"] >= PEAK and freed["freed_bytes"] >= PEAK
    assert doc["process"]["live_bytes"] < PEAK <= doc["process"]["tracked_peak_bytes"]
    at_peak = doc["process"]["peak_live_by_line"]
    by_line = {(line["function"], line["lineno"]): line["bytes"] for line in at_peak}
    # The buffer (PEAK + 1 bytes, and the bytearray object) leads; the list kept beside it holds
    # a thousand 1,033-byte bytes objects and its array of pointers.
    assert at_peak[0]["function"] == "work" and at_peak[0]["lineno"] == made["lineno"], at_peak
    assert PEAK < by_line[("work", made["lineno"])] < PEAK + 4096, at_peak
    assert 1000 * 1033 < by_line[("work", kept["lineno"])] < 1000 * 1033 + (64 << 10), at_peak
    assert at_peak[0]["source"] == "peak = bytearray(PEAK)"
    assert sum(by_line.values()) <= doc["process"]["tracked_peak_bytes"]
    # The text report has the section, after the heading and before the tables.
    text = proc.stdout
    section = text.index("Live at the tracked peak (")
    assert text.index("INCOMPLETE REPORT") < section < text.index("Filename:"), text
    first_row = text[section:].splitlines()[1].split()
    assert first_row[2:6] == ["work", "(dies.py)", "line", str(made["lineno"])], text
    assert "outside the profiled lines" in text[section:text.index("Filename:")]
    # `memsleuth report` of the saved JSON says the same before the tables.
    saved = subprocess.run([BIN, "report", report], capture_output=True, text=True, env=_env(), timeout=60)
    assert saved.returncode == 0, saved.stderr
    again = saved.stdout
    assert again.index("INCOMPLETE REPORT: the program was killed by SIGKILL") < again.index("Live at the tracked peak (")
    assert again[again.index("Live at the tracked peak ("):].splitlines()[1].split()[2:6] == first_row[2:6], again
    assert again.index("outside the profiled lines") < again.index("Filename:"), again


def test_a_decorated_program_killed_under_plain_python_shows_what_was_live_at_the_peak():
    proc = subprocess.run([sys.executable, "dies.py", "peak"], cwd=DEATH, capture_output=True, text=True,
                          env=_env(), timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stderr.startswith("memsleuth: INCOMPLETE REPORT: the program ended without finishing")
    section = proc.stderr[proc.stderr.index("Live at the tracked peak ("):].splitlines()
    assert section[1].split()[2:5] == ["work", "(dies.py)", "line"], proc.stderr
    assert section[1].endswith("peak = bytearray(PEAK)"), proc.stderr


def test_a_run_past_its_memory_limit_reports_the_line_that_hoarded(tmp_path):
    report = tmp_path / "report.json"
    limit = 600 << 20

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run([BIN, "run", "--json", report, "dies.py", "memory"], cwd=DEATH, capture_output=True,
                          text=True, env=_env(), timeout=120, preexec_fn=limit_memory)
    # Past the limit, CPython raises MemoryError: the program ends with its traceback, as without
    # memsleuth, and the report is whole.
    assert proc.returncode == 1, proc.stderr
    assert "MemoryError" in proc.stderr
    doc = json.loads(report.read_text())
    assert "incomplete" not in doc
    work = next(f for f in doc["functions"] if f["name"] == "work")
    hoarding = _line(work, "hoard.append")
    assert hoarding["allocated_bytes"] >= 16 << 20
    assert hoarding["allocated_bytes"] == max(line["allocated_bytes"] for line in work["lines"])


def test_with_the_books_in_a_thread_a_killed_run_leaves_no_report(tmp_path):
    """The fallback keeps the books in the program: they die with it (README, known limits)."""
    report = tmp_path / "report.json"
    proc = subprocess.run([BIN, "run", "--json", report, "dies.py", "kill"], cwd=DEATH, capture_output=True,
                          text=True, env=_env({"MEMSLEUTH_SINK": "thread"}), timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not report.exists() or report.read_text() == ""


def test_a_program_that_ends_normally_is_not_marked_incomplete(tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.run([BIN, "run", "--json", report, "dies.py", "return"], cwd=DEATH, capture_output=True,
                          text=True, env=_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "INCOMPLETE" not in proc.stdout
    assert "incomplete" not in json.loads(report.read_text())


def test_a_decorated_program_killed_under_plain_python_leaves_its_table_on_stderr():
    proc = subprocess.run([sys.executable, "dies.py", "kill"], cwd=DEATH, capture_output=True, text=True,
                          env=_env(), timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout == "ready\n"
    assert proc.stderr.startswith("memsleuth: INCOMPLETE REPORT: the program ended without finishing")
    assert "running work at " in proc.stderr
    assert "kept = [bytes(1000)" in proc.stderr
