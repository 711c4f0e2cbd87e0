"""The HTML report and the hints (README, HTML report and hints; docs/design.md, "HTML report and
hints").

The hints are checked on real runs: `fixtures/hints_triggered.py` has one function per hint kind
whose line must get it, `fixtures/hints_quiet.py` the same work written so that none applies. Each
hint's saving is checked against the figure it is made of, in the same report. The page is
checked as text (escaping, no remote resources, the CLI's errors) and, where Chromium is
installed, drawn by headless Chromium: its DOM after the scripts ran must show the report's
figures, and a screenshot must not be blank.
"""

import html.parser
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from memsleuth import _html

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
BIN = os.path.join(os.path.dirname(sys.executable), "memsleuth")


def _env(extra=None):
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONTRACEMALLOC", "PYTHONSTARTUP"):
        env.pop(name, None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def memsleuth(*args, cwd, env=None, timeout=300):
    return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, cwd=str(cwd), env=env or _env(),
                          timeout=timeout)


def run_to_files(tmp_path, fixture, *options, args=()):
    """`memsleuth run --json --html` on a fixture: (JSON report, page path, text report)."""
    out_json, out_html = tmp_path / f"{fixture}.json", tmp_path / f"{fixture}.html"
    proc = memsleuth("run", "--json", out_json, "--html", out_html, *options, FIXTURES / f"{fixture}.py", *args,
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out_json.read_text()), out_html, proc.stdout


@pytest.fixture(scope="module")
def triggered(tmp_path_factory):
    return run_to_files(tmp_path_factory.mktemp("triggered"), "hints_triggered")


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    return run_to_files(tmp_path_factory.mktemp("quiet"), "hints_quiet")


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    return run_to_files(tmp_path_factory.mktemp("seed"), "seed_generators", "--interval", "0.002")


@pytest.fixture(scope="module")
def threads(tmp_path_factory):
    return run_to_files(tmp_path_factory.mktemp("threads"), "html_threads", "--interval", "0.002")


def function(report, name):
    found = [f for f in report["functions"] if f["name"] == name]
    assert len(found) == 1, [f["name"] for f in report["functions"]]
    return found[0]


def line(report, name, source):
    found = [l for l in function(report, name)["lines"] if l["source"].strip() == source]
    assert len(found) == 1, (name, source)
    return found[0]


def every_row(report):
    """(function, label, figures) of every line and teardown."""
    for f in report["functions"]:
        for l in f["lines"]:
            yield f["name"], f"line {l['lineno']}: {l['source']}", l
        if f.get("teardown"):
            yield f["name"], "teardown", f["teardown"]


# --------------------------------------------------------------------------------------------
# Hints


def saving_of(kind, g):
    """What each kind's saving is made of (crates/memsleuth-core/src/hints.rs)."""
    hits = max(g["hits"], 1)
    if kind == "generator_expression":
        return g["peak_bytes"] - max(int(g["net_bytes"] / hits), 0)
    if kind == "concatenation":
        return g["allocated_bytes"] - max(g["net_bytes"], 0)
    if kind == "leak_suspect":
        return g["retained_bytes"]
    if kind == "fragmentation":
        return int(g["causes"]["allocator"] / hits)
    raise AssertionError(kind)


TRIGGERS = [
    ("generator_expression", "reduce_list", "total = sum([x * x for x in range(n)])"),
    ("concatenation", "concatenate", 's += "x" * 40 + str(i)'),
    ("concatenation", "concatenate", "lst = lst + [i]"),
    ("leak_suspect", "remember", "_cache.append(bytearray(n))"),
    ("fragmentation", "fragment", "del data"),
]


@pytest.mark.parametrize("kind, name, source", TRIGGERS, ids=[f"{kind}-{name}-{i}" for i, (kind, name, _) in enumerate(TRIGGERS)])
def test_each_hint_kind_triggers_on_its_line(triggered, kind, name, source):
    report, _, text = triggered
    g = line(report, name, source)
    hints = [h for h in g["hints"] if h["kind"] == kind]
    assert len(hints) == 1, g["hints"]
    hint = hints[0]
    assert hint["saving_bytes"] == saving_of(kind, g), (hint, g)
    assert hint["saving_bytes"] >= 256 * 1024, hint
    assert _html.human_bytes(hint["saving_bytes"]) in hint["message"], hint
    # The text report lists it under Notes, with the line it belongs to.
    assert f"  line {g['lineno']} hint ({kind}): {hint['message']}\n" in text


def test_hints_only_where_a_kind_applies(triggered):
    """Every hint of the triggering fixture is one of the expected ones: no line gets a kind it
    was not written for."""
    report, _, _ = triggered
    expected = {(name, source.strip(), kind) for kind, name, source in TRIGGERS}
    got = {(name, label.split(": ", 1)[1].strip() if label != "teardown" else label, h["kind"])
           for name, label, g in every_row(report) for h in g["hints"]}
    assert got == expected


def test_no_hint_on_the_quiet_fixture(quiet):
    report, _, text = quiet
    # The quiet fixture does the same work; the figures that the hints read are there too.
    assert line(report, "reduce_generator", "squares = [x * x for x in range(n)]")["peak_bytes"] > 1 << 20
    assert line(report, "remember_twice", "_cache.append(bytearray(n))")["retained_bytes"] >= 256 * 1024
    assert line(report, "release", "del data")["freed_bytes"] > 1 << 20
    assert line(report, "join_parts", "total += i * i")["allocated_bytes"] > 64 * 1024
    for name, label, g in every_row(report):
        assert g["hints"] == [], (name, label, g["hints"])
    assert "hint (" not in text


def test_the_seed_gets_its_generator_hint(seed):
    report, _, _ = seed
    g = line(report, "my_test_function", "NN = sum([x * x for x in range(THE_LIMIT)])")
    assert [h["kind"] for h in g["hints"]] == ["generator_expression"]
    assert g["hints"][0]["saving_bytes"] == g["peak_bytes"] - max(g["net_bytes"], 0)
    assert "sum(x * x for x in range(THE_LIMIT))" in g["hints"][0]["message"]
    # The line that already uses a generator gets none.
    assert line(report, "my_test_function", "PP = sum(x * x for x in range(THE_LIMIT))")["hints"] == []


def test_report_reads_the_hints_back(triggered, tmp_path):
    report, _, text = triggered
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(report))
    proc = memsleuth("report", saved, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for kind, name, source in TRIGGERS:
        g = line(report, name, source)
        message = [h for h in g["hints"] if h["kind"] == kind][0]["message"]
        assert f"  line {g['lineno']} hint ({kind}): {message}\n" in proc.stdout


# --------------------------------------------------------------------------------------------
# The page as text


class Page(html.parser.HTMLParser):
    """Elements with their attributes and text, as a list of (tag, attrs, text-inside)."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.elements = []
        self.open = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        element = [tag, dict(attrs), ""]
        self.elements.append(element)
        if tag not in ("meta", "br", "img", "input", "link", "line", "circle", "path", "polyline"):
            self.open.append(element)

    def handle_startendtag(self, tag, attrs):
        self.elements.append([tag, dict(attrs), ""])

    def handle_endtag(self, tag):
        while self.open:
            element = self.open.pop()
            if element[0] == tag:
                break

    def handle_data(self, data):
        for element in self.open:
            element[2] += data

    def find(self, tag=None, **attrs):
        return [e for e in self.elements if (tag is None or e[0] == tag)
                and all(e[1].get(k.replace("_", "-")) == v for k, v in attrs.items())]


def remote_references(text):
    """Attributes and CSS that would load something from elsewhere."""
    page = Page(text)
    found = []
    for tag, attrs, _ in page.elements:
        for name in ("src", "href", "xlink:href", "action", "data", "srcset", "poster"):
            value = attrs.get(name)
            if value is not None and not value.startswith("#"):
                found.append((tag, name, value))
        if tag == "link":
            found.append((tag, attrs))
    for tag, _, inside in page.find("style"):
        if "url(" in inside or "@import" in inside:
            found.append(("style", inside))
    return found


@pytest.mark.parametrize("which", ["seed", "threads", "triggered"])
def test_the_page_references_nothing_remote(which, request):
    _, page, _ = request.getfixturevalue(which)
    text = page.read_text()
    assert "http://" not in text and "https://" not in text
    assert remote_references(text) == []
    # Everything is inline: one file, its scripts and styles in it.
    assert "<script>" in text and "<style>" in text and "<svg" in text


def synthetic_report(source):
    g = {"hits": 1, "allocated_bytes": 2048, "allocations": 2, "freed_bytes": 1024, "frees": 1, "net_bytes": 1024,
         "peak_bytes": 2048, "retained_bytes": 1024, "rss_after_bytes": 1 << 24, "rss_delta_bytes": 4096,
         "gc_collections": 0, "gc_freed_bytes": 0, "arenas_mapped": 0, "arenas_unmapped": 0,
         "causes": {"python": 1024, "gc": 0, "other_threads": 0, "native": 0, "allocator": 3072, "lazy": 0, "files": 0,
                    "profiler": 0, "unexplained": 0},
         "note": f"a note about {source}",
         "hints": [{"kind": "concatenation", "message": f"change {source}", "saving_bytes": 4096}]}
    return {"schema": "memsleuth.report/1", "python_version": "3.12.1", "argv": ["prog.py", source],
            "functions": [{"name": "f<T>", "module": "m&n", "filename": "/tmp/a\"b.py", "first_lineno": 1,
                           "last_lineno": 2, "calls": 1, "rss_at_entry_bytes": 1 << 24, "totals": dict(g, hints=[]),
                           "lines": [dict(g, lineno=2, source=source)], "teardown": None}],
            "process": {"allocated_bytes": 2048, "freed_bytes": 1024, "live_bytes": 1024, "tracked_peak_bytes": 2048,
                        "rss_peak_bytes": 1 << 24, "untracked_frees": 0},
            "timeline": {"max_samples": 10000, "samples_offered": 2, "samples": [
                {"time": 0.0, "rss_bytes": 1 << 23, "tracked_bytes": 0, "function": None, "lineno": None},
                {"time": 0.5, "rss_bytes": 1 << 24, "tracked_bytes": 2048, "function": "f<T>", "lineno": 2}]}}


@pytest.mark.parametrize("source", [
    'if a < b and c & d: s = "<script>alert(\'x\')</script>"',
    "x = '</script><script>document.title=1</script>'  # &amp; &lt;",
    'url = "https://example.invalid/x.js"; y = 1 > 0',
])
def test_source_text_is_escaped(source):
    text = _html.render(synthetic_report(source))
    page = Page(text)
    # The source shows as written, in its cell and in the hover data, and makes no element.
    cells = [inside for tag, attrs, inside in page.find("td") if attrs.get("class") == "src"]
    assert cells == [source]
    assert len(page.find("script")) == 2  # the data and the page's own script, nothing from the source
    data = [inside for tag, attrs, inside in page.find("script") if attrs.get("id") == "timeline-data"]
    data = json.loads(data[0])
    assert data["places"] == [["f<T>", 2, source]] and [s[3] for s in data["samples"]] == [-1, 0]
    assert [inside for _, attrs, inside in page.find("div") if attrs.get("class") == "note"] == [f"a note about {source}"]
    assert [inside for _, attrs, inside in page.find("li") if attrs.get("data-kind")] == [
        f"line 2: concatenation, saves up to 4.0 KiB: change {source}"]
    # The other report text too: names, module, file name, command line.
    assert page.find("section", data_name="f<T>")
    assert "prog.py " + source in [inside for tag, _, inside in page.find("title")][0]
    # No remote reference, even with a URL in the source (it is text).
    assert remote_references(text) == []


def test_a_large_report_stays_a_few_mib():
    """10,000 samples (the timeline's most) and 100 functions of 20 lines each, every line with
    figures, causes, a note and a hint."""
    report = synthetic_report("total = sum([x * x for x in range(n)])  # " + "padding " * 8)
    f = report["functions"][0]
    f["lines"] = [dict(f["lines"][0], lineno=n, source=f"line_{n} = compute(line_{n - 1}) + 1") for n in range(2, 22)]
    report["functions"] = [dict(f, name=f"function_{i}") for i in range(100)]
    report["timeline"]["samples"] = [
        {"time": i / 1000, "rss_bytes": (1 << 24) + i * 4096, "tracked_bytes": i * 1024,
         "function": f"function_{i % 100}", "lineno": 2 + i % 20} for i in range(10_000)]
    text = _html.render(report)
    assert len(Page(text).find("polyline")) == 2
    assert len(text.encode()) < 4 << 20, len(text.encode())


def test_run_html_path_is_checked_before_the_program_runs(tmp_path):
    program = tmp_path / "prog.py"
    marker = tmp_path / "ran"
    program.write_text(f"open({str(marker)!r}, 'w').close()\n")
    for bad, reason in [(tmp_path / "missing" / "out.html", "No such file or directory"),
                        (tmp_path, "it is a directory")]:
        proc = memsleuth("run", "--html", bad, program, cwd=tmp_path)
        assert proc.returncode == 2, proc
        assert proc.stderr == f"memsleuth: error: cannot write to {bad}: {reason}\n"
        assert not marker.exists()


def test_report_html_errors_are_one_line(tmp_path, seed):
    report, _, _ = seed
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(report))
    bad = tmp_path / "missing" / "out.html"
    proc = memsleuth("report", saved, "--html", bad, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"memsleuth: error: cannot write to {bad}: No such file or directory\n"
    good = tmp_path / "out.html"
    proc = memsleuth("report", saved, "--html", good, cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert good.read_text() == _html.render(report)


def test_report_open_uses_the_browser(tmp_path, seed):
    report, _, _ = seed
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(report))
    opened = tmp_path / "opened"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    page = tmp_path / "page.html"
    proc = memsleuth("report", saved, "--open", "--html", page, cwd=tmp_path, env=_env({"BROWSER": f"{browser} %s"}))
    assert proc.returncode == 0, proc
    assert proc.stdout == f"memsleuth: opened {page}\n"
    assert opened.read_text().strip() == f"file://{page}"
    assert page.read_text() == _html.render(report)


def test_report_open_without_a_browser_says_so(tmp_path, seed):
    report, _, _ = seed
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(report))
    env = _env({"PATH": str(tmp_path / "nothing-here")})
    for name in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "memsleuth", "report", str(saved), "--open"], capture_output=True,
                          text=True, cwd=str(tmp_path), env=env, timeout=120)
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("memsleuth: no web browser to open it with; the page is /")
    assert proc.stderr.count("\n") == 1
    written = Path(proc.stderr.rsplit(" ", 1)[1].strip())
    try:
        assert written.read_text() == _html.render(report)
    finally:
        written.unlink()


# --------------------------------------------------------------------------------------------
# The page in a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium to draw the page with (.ci/run installs Debian's chromium where it can)")


def chromium(tmp_path, *args):
    profile = tmp_path / "chromium-profile"
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def png_pixels(path):
    """(width, height, channels, rows of bytes) of an 8-bit PNG, decoded in pure Python."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, header = 8, b"", None
    while at < len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + size]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        at += 12 + size
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0 and colour in (2, 6), header
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, previous))
        elif kind == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 255
        elif kind == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b, c = previous[i], previous[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, channels, rows


def colours(path):
    width, height, channels, rows = png_pixels(path)
    seen = set()
    for row in rows:
        for x in range(0, width * channels, channels):
            seen.add(row[x:x + 3])
    return seen


def check_page_in_browser(report, page_path, tmp_path):
    """The DOM after the scripts ran shows the report's figures; returns the parsed DOM."""
    dom = Page(chromium(tmp_path, "--dump-dom", f"file://{page_path}#sort=peak"))
    assert dom.find("body", data_ready="1"), "the page's script did not run to its end"
    for index, f in enumerate(report["functions"]):
        section = dom.find("section", id=f"f{index}")
        assert section and section[0][1]["data-name"] == f["name"]
    # Each function's table, its rows as the script left them (sorted by peak, largest first).
    tables = [e for e in dom.elements if e[0] == "table" and e[1].get("class") == "lines"]
    assert len(tables) == len(report["functions"])
    assert all(t[1].get("data-sorted") == "peak:desc" for t in tables)
    rows = [e for e in dom.elements if e[0] == "tr" and "data-lineno" in e[1]]
    cells_of = {}
    current = None
    for tag, attrs, _ in dom.elements:
        if tag == "table" and attrs.get("class") == "lines":
            current = len(cells_of)
            cells_of[current] = []
        elif tag == "tr" and "data-lineno" in attrs and current is not None:
            cells_of[current].append([attrs["data-lineno"], [], []])
        elif tag == "td" and current is not None and cells_of[current]:
            cells_of[current][-1][1].append(attrs.get("data-v"))
        elif tag == "span" and "seg" in attrs.get("class", "").split() and current is not None and cells_of[current]:
            cells_of[current][-1][2].append((attrs["data-cause"], int(attrs["data-bytes"])))
    assert len(rows) == sum(len(v) for v in cells_of.values())
    for index, f in enumerate(report["functions"]):
        by_line = {str(l["lineno"]): l for l in f["lines"]}
        if f.get("teardown") and any(f["teardown"][k] for k in ("allocated_bytes", "freed_bytes", "rss_delta_bytes")):
            by_line["return"] = f["teardown"]
        drawn = cells_of[index]
        assert sorted(r[0] for r in drawn) == sorted(by_line)
        peaks = [int(r[1][6]) for r in drawn]
        assert peaks == sorted(peaks, reverse=True)
        for lineno, values, segments in drawn:
            g = by_line[lineno]
            expected = [g["hits"], g["allocated_bytes"], g["freed_bytes"], g["net_bytes"], g["peak_bytes"],
                        g["retained_bytes"], g["rss_delta_bytes"]]
            assert [int(v) for v in values[2:9]] == expected, (f["name"], lineno)
            # The cause bar: one segment per cause that moved, with its bytes.
            assert sorted(segments) == sorted((k, v) for k, v in g["causes"].items() if v), (f["name"], lineno)
            assert sum(v for _, v in segments) == g["rss_delta_bytes"]
            assert int(values[10]) == sum(h["saving_bytes"] for h in g["hints"])
    hints_drawn = sorted(e[1]["data-kind"] for e in dom.elements if e[0] == "div" and e[1].get("class") == "hint")
    assert hints_drawn == sorted(h["kind"] for _, _, g in every_row(report) for h in g["hints"])
    # The timeline: both curves through every sample, the peak named, the readout filled by the
    # script with the peak's figures.
    samples = report["timeline"]["samples"]
    for css in ("rss", "tracked"):
        line_ = dom.find("polyline", **{"class": css})
        assert len(line_) == 1 and len(line_[0][1]["points"].split()) == len(samples)
    peak = max(samples, key=lambda s: s["rss_bytes"])
    label = dom.find("text", id="peak-label")[0][2]
    assert label.startswith(f"peak RSS {_html.human_bytes(peak['rss_bytes'])} at ")
    # What was live at the tracked peak, by line, as the books kept it.
    listed = dom.find("ul", id="peak-live")[0][2]
    for item in report["process"]["peak_live_by_line"][:8]:
        assert f'{item["function"]} line {item["lineno"]}: {_html.human_bytes(item["bytes"])} live' in listed, listed
    readout = dom.find("div", id="readout")[0][2]
    assert f"RSS {_html.human_bytes(peak['rss_bytes'])}  tracked {_html.human_bytes(peak['tracked_bytes'])}" in readout
    gc_lines = {(f["name"], l["lineno"]) for f in report["functions"] for l in f["lines"] if l["gc_collections"]}
    marked = sum(1 for s in samples if (s["function"], s["lineno"]) in gc_lines)
    assert len([e for e in dom.elements if e[0] == "path" and e[1].get("class") == "gc"]) == marked
    return dom


def check_screenshot(page_path, tmp_path, wanted_colour):
    shot = tmp_path / "page.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", f"file://{page_path}")
    seen = colours(shot)
    assert len(seen) > 50, f"the screenshot is blank or nearly so ({len(seen)} colours)"
    assert wanted_colour in seen
    return shot


@needs_chromium
def test_seed_page_in_chromium(seed, tmp_path):
    report, page, _ = seed
    dom = check_page_in_browser(report, page, tmp_path)
    row = [e for e in dom.elements if e[0] == "tr" and e[1].get("data-lineno") == "9"]
    assert row and "hot" in row[0][1].get("class", "")
    # The widest cause segment of the table is on screen in its colour.
    g = line(report, "my_test_function", "NN = sum([x * x for x in range(THE_LIMIT)])")
    name, value = max(g["causes"].items(), key=lambda item: abs(item[1]))
    assert abs(value) * 10 >= abs(g["rss_delta_bytes"]) > 0
    colour = dict(_html.CAUSES)[name]
    check_screenshot(page, tmp_path, bytes.fromhex(colour[1:]))


@needs_chromium
def test_threads_page_in_chromium(threads, tmp_path):
    report, page, _ = threads
    assert {f["name"] for f in report["functions"]} == {"worker", "churn", "summarise"}
    assert function(report, "worker")["calls"] == 3
    assert any(l["gc_collections"] for l in function(report, "churn")["lines"])
    check_page_in_browser(report, page, tmp_path)
    check_screenshot(page, tmp_path, bytes.fromhex(dict(_html.CAUSES)["python"][1:]))

