"""Frees made as a frame is torn down after its return (its locals released) are the teardown's,
on a row of their own, in the JSON, the text report and `memsleuth report`: no line claims
frees it did not make."""

import json
import subprocess
import sys

from conftest import FIXTURES, find_line

TEARDOWN_ROW = "(return: the frame's locals released)"


def test_teardown_frees_are_not_the_last_lines(run_fixture):
    run = run_fixture("teardown.py")
    func = run.function("teardown")
    b = find_line(func, "b = [2] * (2 * 10 ** 6)")
    a = find_line(func, "a = [1] * (10 ** 6)")
    del_b = find_line(func, "del b")
    # `del b` frees b, and only b (the line that made it allocated its block and a few bytes).
    assert b["allocated_bytes"] - 64 <= del_b["freed_bytes"] <= b["allocated_bytes"], (b, del_b)
    teardown = func["teardown"]
    assert teardown is not None and teardown["hits"] == 1, func
    # a is released at the return, by the teardown.
    assert a["allocated_bytes"] - 64 <= teardown["freed_bytes"] <= a["allocated_bytes"] + 1024, (a, teardown)
    assert teardown["allocated_bytes"] <= 1024, teardown
    assert teardown["note"] is None or "this line" not in teardown["note"], teardown
    # The totals still hold everything, the teardown included.
    lines_freed = sum(line["freed_bytes"] for line in func["lines"])
    assert func["totals"]["freed_bytes"] == lines_freed + teardown["freed_bytes"], func

    # The text report shows the teardown below the last line.
    text = run.stdout
    table = text[text.index("function: teardown"):text.index("function: returns_a_local")]
    rows = table.splitlines()
    last = next(i for i, row in enumerate(rows) if row.rstrip().endswith("del b"))
    assert rows[last + 1].rstrip().endswith(TEARDOWN_ROW), table
    assert "  return: " in table, table


def _memsleuth(*args, cwd):
    return subprocess.run([sys.executable, "-m", "memsleuth", *map(str, args)], capture_output=True, text=True,
                          cwd=str(cwd), timeout=120)


def test_saved_report_renders_the_teardown_and_old_reports_still_render(tmp_path):
    saved = tmp_path / "report.json"
    run = _memsleuth("run", "--json", saved, "-q", FIXTURES / "teardown.py", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    report = json.loads(saved.read_text())
    func = [f for f in report["functions"] if f["name"] == "teardown"][0]
    assert func["teardown"]["freed_bytes"] > 7_000_000, func

    rendered = _memsleuth("report", saved, cwd=tmp_path)
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
    assert rendered.stdout.count(TEARDOWN_ROW) == 2, rendered.stdout

    # A report written before the teardown row existed has no "teardown": it renders without.
    for f in report["functions"]:
        del f["teardown"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(report))
    rendered = _memsleuth("report", old, cwd=tmp_path)
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
    assert "function: teardown" in rendered.stdout and TEARDOWN_ROW not in rendered.stdout, rendered.stdout
