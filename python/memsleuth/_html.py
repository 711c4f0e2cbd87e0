"""The HTML report: one self-contained page made from the JSON report (a dict), with inline CSS,
inline JavaScript and hand-drawn SVG, readable offline (docs/design.md, "HTML report and hints").

Everything the page shows is drawn here, in Python, so that it reads without JavaScript too; the
script only sorts the tables, shows what a timeline point was running on hover, and applies a
sort named in the address (``page.html#sort=peak``). Every piece of text from the report (source
lines, file names, the command line, notes, hints) goes through ``html.escape``; the data the
script needs is embedded as JSON with ``<``, ``>`` and ``&`` escaped, so no source line can close
the script element.
"""

import html
import json

from . import _native

#: The causes of a line's RSS change, in the JSON's order (docs/design.md, "Causes"), with the
#: colour each has on the page.
CAUSES = [
    ("python", "#3b7dd8"),
    ("gc", "#2e9e5b"),
    ("other_threads", "#9b59b6"),
    ("native", "#e67e22"),
    ("allocator", "#c0392b"),
    ("lazy", "#16a5a5"),
    ("files", "#7f8c8d"),
    ("profiler", "#f1c40f"),
    ("unexplained", "#333333"),
]

#: The sortable columns of a function's table: (key for ``#sort=``, heading).
COLUMNS = [
    ("line", "Line"),
    ("source", "Source"),
    ("hits", "Hits"),
    ("allocated", "Allocated"),
    ("freed", "Freed"),
    ("net", "Net"),
    ("peak", "Peak"),
    ("retained", "Retained"),
    ("rss", "RSS change"),
    ("causes", "Causes of the RSS change"),
    ("hints", "Hints"),
]

#: How many lines of each function are highlighted as the hottest (by peak).
HOTTEST = 3

_TEARDOWN = "(return: the frame's locals released)"


def human_bytes(n):
    """A byte count as the text report writes it (report.rs, ``human_bytes``)."""
    n = int(n)
    if abs(n) < 1024:
        return f"{n} B"
    value = n / 1024.0
    for unit in ("KiB", "MiB", "GiB"):
        if abs(value) < 1024.0:
            return f"{value:.1f} {unit}"
        value /= 1024.0
    return f"{value:.1f} TiB"


def signed_bytes(n):
    return ("+" if n > 0 else "") + human_bytes(n)


def _e(text):
    return html.escape(str(text), quote=True)


def _script_json(value):
    """JSON that can sit inside a <script> element whatever strings it holds."""
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _bar(value, scale, css):
    """An in-cell bar, its width the value's share of the column's largest."""
    width = 0.0 if scale <= 0 else min(100.0, 100.0 * abs(value) / scale)
    if width == 0:
        return ""
    return f'<span class="bar {css}" style="width:{width:.1f}%"></span>'


def _signed_bar(value, scale):
    """A bar from the cell's middle: right for a rise, left for a fall."""
    width = 0.0 if scale <= 0 else min(50.0, 50.0 * abs(value) / scale)
    if width == 0:
        return ""
    left = 50.0 if value >= 0 else 50.0 - width
    css = "up" if value >= 0 else "down"
    return f'<span class="sbar {css}" style="left:{left:.1f}%;width:{width:.1f}%"></span>'


def _causes_bar(causes, scale):
    """The line's RSS change as its causes stacked: falls leftwards from the middle, rises
    rightwards, each segment titled with its cause and size."""
    halves = {"neg": [], "pos": []}
    for name, _ in CAUSES:
        value = int(causes.get(name, 0))
        if value == 0:
            continue
        width = 0.0 if scale <= 0 else 100.0 * abs(value) / scale
        half = "pos" if value > 0 else "neg"
        halves[half].append(
            f'<span data-cause="{name}" data-bytes="{value}" title="{_e(name)} {_e(signed_bytes(value))}" '
            f'style="width:{width:.2f}%" class="seg c-{name}"></span>')
    # The falls are drawn from the middle outwards, so the first cause sits next to it.
    return (f'<div class="cbar"><div class="neg">{"".join(reversed(halves["neg"]))}</div>'
            f'<div class="pos">{"".join(halves["pos"])}</div></div>')


def _causes_scale(rows):
    scale = 0
    for figures in rows:
        causes = figures.get("causes") or {}
        up = sum(v for v in causes.values() if v > 0)
        down = -sum(v for v in causes.values() if v < 0)
        scale = max(scale, up, down)
    return scale


def _hints_cell(hints):
    if not hints:
        return '<td class="hints" data-v="0"></td>'
    parts = []
    for h in hints:
        # The message is in the function's hint list above the table, once.
        parts.append(f'<div class="hint" data-kind="{_e(h.get("kind", ""))}">'
                     f'<b>{_e(h.get("kind", ""))}</b> <span class="saving">saves up to '
                     f'{_e(human_bytes(h.get("saving_bytes", 0)))}</span></div>')
    total = sum(int(h.get("saving_bytes", 0)) for h in hints)
    return f'<td class="hints" data-v="{total}">{"".join(parts)}</td>'


def _figures_cells(g, scales, causes_scale):
    cells = [f'<td class="num" data-v="{int(g["hits"])}">{int(g["hits"])}</td>']
    for key, css in (("allocated_bytes", "alloc"), ("freed_bytes", "freed")):
        v = int(g[key])
        cells.append(f'<td class="num" data-v="{v}">{_bar(v, scales[key], css)}<span class="val">{_e(human_bytes(v))}</span></td>')
    v = int(g["net_bytes"])
    cells.append(f'<td class="num" data-v="{v}">{_signed_bar(v, scales["net_bytes"])}<span class="val">{_e(human_bytes(v))}</span></td>')
    for key, css in (("peak_bytes", "peak"), ("retained_bytes", "retained")):
        v = int(g.get(key, 0))
        cells.append(f'<td class="num" data-v="{v}">{_bar(v, scales[key], css)}<span class="val">{_e(human_bytes(v))}</span></td>')
    v = int(g["rss_delta_bytes"])
    cells.append(f'<td class="num" data-v="{v}">{_e(signed_bytes(v))}</td>')
    note = g.get("note")
    note_html = f'<div class="note">{_e(note)}</div>' if note else ""
    cells.append(f'<td class="causes" data-v="{v}">{_causes_bar(g.get("causes") or {}, causes_scale)}{note_html}</td>')
    cells.append(_hints_cell(g.get("hints") or []))
    return "".join(cells)


def _source_lines(function):
    """{lineno: source} of the function: the lines that ran (the JSON keeps theirs)."""
    return {int(line["lineno"]): line.get("source", "") for line in function.get("lines", [])}


def _function_section(index, function):
    lines = function.get("lines", [])
    teardown = function.get("teardown")
    moved = teardown is not None and any(teardown.get(k) for k in ("allocated_bytes", "freed_bytes", "rss_delta_bytes"))
    rows = [line for line in lines] + ([teardown] if moved else [])
    scales = {key: max([abs(int(r.get(key, 0))) for r in rows] or [0])
              for key in ("allocated_bytes", "freed_bytes", "net_bytes", "peak_bytes", "retained_bytes")}
    causes_scale = _causes_scale(rows)
    hottest = sorted((line for line in lines if int(line["peak_bytes"]) > 0), key=lambda l: -int(l["peak_bytes"]))[:HOTTEST]
    hot = {int(line["lineno"]) for line in hottest}
    body = []
    for line in lines:
        lineno = int(line["lineno"])
        css = ' class="hot"' if lineno in hot else ""
        body.append(f'<tr data-lineno="{lineno}"{css}><td class="num" data-v="{lineno}">{lineno}</td>'
                    f'<td class="src"><code>{_e(line.get("source", ""))}</code></td>'
                    f'{_figures_cells(line, scales, causes_scale)}</tr>')
    if moved:
        body.append(f'<tr class="teardown" data-lineno="return"><td class="num" data-v="1e18"></td>'
                    f'<td class="src"><code>{_e(_TEARDOWN)}</code></td>'
                    f'{_figures_cells(teardown, scales, causes_scale)}</tr>')
    head = "".join(f'<th data-key="{key}" data-col="{i}">{_e(title)}</th>' for i, (key, title) in enumerate(COLUMNS))
    totals = function.get("totals", {})
    hints = [(int(line["lineno"]), h) for line in lines for h in line.get("hints") or []]
    hints += [("return", h) for h in (teardown or {}).get("hints") or []]
    hint_list = "".join(
        f'<li data-kind="{_e(h.get("kind", ""))}">line {_e(lineno)}: <b>{_e(h.get("kind", ""))}</b>, saves up to '
        f'{_e(human_bytes(h.get("saving_bytes", 0)))}: {_e(h.get("message", ""))}</li>' for lineno, h in hints)
    hint_block = f'<div class="hintlist"><h3>Hints</h3><ul>{hint_list}</ul></div>' if hints else ""
    return (
        f'<section class="function" id="f{index}" data-name="{_e(function.get("name", ""))}">'
        f'<h2>{_e(function.get("name", ""))} <small>{_e(function.get("module", ""))}</small></h2>'
        f'<p class="meta">{_e(function.get("filename", ""))}, line {int(function.get("first_lineno", 0))}; '
        f'{int(function.get("calls", 0))} call{"s" if int(function.get("calls", 0)) != 1 else ""}; '
        f'allocated {_e(human_bytes(totals.get("allocated_bytes", 0)))}, freed {_e(human_bytes(totals.get("freed_bytes", 0)))}, '
        f'peak {_e(human_bytes(totals.get("peak_bytes", 0)))}, retained {_e(human_bytes(totals.get("retained_bytes", 0)))}, '
        f'RSS {_e(signed_bytes(totals.get("rss_delta_bytes", 0)))}</p>'
        f'{hint_block}'
        f'<div class="scroll"><table class="lines"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        '</div></section>'
    )


def _summary(report):
    process = report.get("process", {})
    argv = report.get("argv")
    rows = [
        ("Command line", " ".join(argv) if argv else "(not recorded)"),
        ("Python", report.get("python_version", "")),
        ("memsleuth version (of this page)", _native.VERSION),
        ("What was profiled", report.get("selection") or ""),
        ("Books kept in", {"thread": "a thread of the program (its RSS includes memsleuth's tables)",
                           "process": "a sink process"}.get(report.get("sink"), report.get("sink") or "")),
        ("Allocated (tracked, process)", human_bytes(process.get("allocated_bytes", 0))),
        ("Freed (tracked, process)", human_bytes(process.get("freed_bytes", 0))),
        ("Live at the end (tracked)", human_bytes(process.get("live_bytes", 0))),
        ("Tracked peak", human_bytes(process.get("tracked_peak_bytes", 0))),
        ("Peak RSS", human_bytes(process.get("rss_peak_bytes", 0))),
        ("Frees of blocks allocated before tracking", str(process.get("untracked_frees", 0))),
    ]
    if "sink_rss_peak_bytes" in process:
        rows.append(("Profiler: the sink process's peak RSS (its books, apart from the program)", human_bytes(process["sink_rss_peak_bytes"])))
    profiler = sum(int((line.get("causes") or {}).get("profiler", 0))
                   for f in report.get("functions", []) for line in f.get("lines", []))
    rows.append(("Profiler: its heap's change in the program (profiler cause, all lines)", signed_bytes(profiler)))
    incomplete = report.get("incomplete")
    if incomplete:
        rows.append(("Incomplete", f"the program {incomplete.get('ended', 'ended early')}"))
    body = "".join(f'<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in rows if v != "")
    return f'<section id="summary"><h2>Summary</h2><table class="summary">{body}</table></section>'


def _timeline(report):
    timeline = report.get("timeline") or {}
    samples = timeline.get("samples") or []
    if not samples:
        return ('<section id="timeline"><h2>Timeline</h2><p class="meta">This report has no timeline '
                '(it is written by <code>memsleuth run --json</code> or <code>--html</code>).</p></section>'), {"places": [], "samples": []}
    width, height, left, right, top, bottom = 960, 300, 70, 20, 20, 40
    t_max = max(float(s["time"]) for s in samples) or 1.0
    tracked_peak = int(report.get("process", {}).get("tracked_peak_bytes", 0))
    y_max = max([int(s["rss_bytes"]) for s in samples] + [int(s["tracked_bytes"]) for s in samples] + [tracked_peak, 1])
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(t):
        return left + plot_w * float(t) / t_max

    def y(b):
        return top + plot_h - plot_h * int(b) / y_max

    parts = [f'<svg id="timeline-svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'data-tmax="{t_max}" data-ymax="{y_max}" data-left="{left}" data-plotw="{plot_w}">']
    # Axes, with a few ticks.
    parts.append(f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"/>')
    parts.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>')
    for i in range(5):
        b = y_max * i / 4
        parts.append(f'<text class="tick" x="{left - 6}" y="{y(b) + 4:.1f}" text-anchor="end">{_e(human_bytes(b))}</text>')
        t = t_max * i / 4
        parts.append(f'<text class="tick" x="{x(t):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{t:.3g} s</text>')
    # Spans of profiled calls: runs of consecutive samples naming the same function.
    spans = []
    s_prev = None
    for s in samples:
        name = s.get("function")
        if name is not None and spans and spans[-1][0] == name and spans[-1][2] is s_prev:
            spans[-1][2] = s
        elif name is not None:
            spans.append([name, s, s])
        s_prev = s
    # One span per pixel column at most: a function called thousands of times would otherwise
    # draw thousands of rectangles on top of each other.
    drawn_at = set()
    for name, first, last in spans:
        x0, x1 = x(first["time"]), x(last["time"])
        if x1 - x0 < 1 and int(x0) in drawn_at:
            continue
        drawn_at.add(int(x0))
        parts.append(f'<rect class="span" x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 2):.1f}" height="{plot_h}">'
                     f'<title>{_e(name)}: samples from {float(first["time"]):.4f} s to {float(last["time"]):.4f} s</title></rect>')
    # Samples taken while a line that ran collections was running.
    gc_lines = {(f.get("name"), int(line["lineno"])): int(line.get("gc_collections", 0))
                for f in report.get("functions", []) for line in f.get("lines", []) if int(line.get("gc_collections", 0))}
    for s in samples:
        count = gc_lines.get((s.get("function"), s.get("lineno")))
        if count:
            px = x(s["time"])
            parts.append(f'<path class="gc" d="M{px:.1f},{top + plot_h} l-5,9 l10,0 z"><title>{_e(s["function"])} line '
                         f'{s["lineno"]} was running; it ran {count} collection{"s" if count != 1 else ""} in all</title></path>')
    if tracked_peak:
        parts.append(f'<line class="tpeak" x1="{left}" y1="{y(tracked_peak):.1f}" x2="{left + plot_w}" y2="{y(tracked_peak):.1f}"/>'
                     f'<text class="tick" x="{left + plot_w}" y="{y(tracked_peak) - 4:.1f}" text-anchor="end">'
                     f'tracked peak {_e(human_bytes(tracked_peak))}</text>')
    for key, css in (("rss_bytes", "rss"), ("tracked_bytes", "tracked")):
        points = " ".join(f"{x(s['time']):.1f},{y(s[key]):.1f}" for s in samples)
        parts.append(f'<polyline class="{css}" data-points="{len(samples)}" points="{points}"/>')
    peak = max(samples, key=lambda s: int(s["rss_bytes"]))
    px, py = x(peak["time"]), y(peak["rss_bytes"])
    where = (f'{peak["function"]} line {peak["lineno"]}' if peak.get("function") else "no profiled line on the main thread")
    label = f'peak RSS {human_bytes(peak["rss_bytes"])} at {float(peak["time"]):.3f} s: {where}'
    anchor = "end" if px > left + plot_w / 2 else "start"
    parts.append(f'<circle class="peak" cx="{px:.1f}" cy="{py:.1f}" r="5"/>'
                 f'<text id="peak-label" class="peaklabel" x="{px + (-8 if anchor == "end" else 8):.1f}" y="{max(py - 8, top + 10):.1f}" '
                 f'text-anchor="{anchor}">{_e(label)}</text>')
    parts.append(f'<line id="cursor" class="cursor" x1="-10" y1="{top}" x2="-10" y2="{top + plot_h}"/>')
    parts.append("</svg>")

    # What the report says about the peak: the line running then, and the tracked bytes.
    sources = {(f.get("name"), lineno): src for f in report.get("functions", []) for lineno, src in _source_lines(f).items()}
    running = sources.get((peak.get("function"), peak.get("lineno")))
    at_peak = report.get("process", {}).get("peak_live_by_line")
    if at_peak is not None:
        # What the books kept of the tracked peak: each line's blocks live at that moment.
        on_lines = sum(int(item["bytes"]) for item in at_peak)
        live_items = "".join(
            f'<li>{_e(item["function"])} line {int(item["lineno"])}: {_e(human_bytes(item["bytes"]))} live '
            f'<code>{_e(item.get("source", ""))}</code></li>' for item in at_peak[:8])
        live_items += (f'<li>outside the profiled lines: {_e(human_bytes(max(tracked_peak - on_lines, 0)))}</li>'
                       if tracked_peak else "")
        live_text = (f'<h3>Live at the tracked peak ({_e(human_bytes(tracked_peak))}), by line</h3>'
                     f'<ul id="peak-live">{live_items}</ul>')
    else:
        live = [(f.get("name"), line) for f in report.get("functions", []) for line in f.get("lines", [])
                if int(line.get("retained_bytes", 0)) > 0]
        live.sort(key=lambda item: -int(item[1]["retained_bytes"]))
        live_items = "".join(
            f'<li>{_e(name)} line {int(line["lineno"])}: {_e(human_bytes(line["retained_bytes"]))} retained '
            f'<code>{_e(line.get("source", ""))}</code></li>' for name, line in live[:8])
        live_text = ('<p class="meta">This report was written before memsleuth recorded what was live at the tracked '
                     'peak; what it has is each line\'s retained bytes (allocated there and still live when its call '
                     f'returned), largest first:</p><ul>{live_items or "<li>no line retained memory</li>"}</ul>')
    peak_text = (
        f'<div id="peak"><h3>At the RSS peak</h3><p>{_e(label)}; {_e(human_bytes(peak["tracked_bytes"]))} of tracked memory '
        f'was live.{" Running: <code>" + _e(running) + "</code>" if running else ""}</p>{live_text}</div>')
    gc_items = "".join(f'<li>{_e(name)} line {lineno}: {count} collection{"s" if count != 1 else ""}</li>'
                       for (name, lineno), count in gc_lines.items())
    gc_text = (f'<p class="meta">Garbage collections are counted per line, not timed: a triangle marks a sample taken '
               f'while a line that ran collections was running.</p><ul class="gclist">{gc_items}</ul>' if gc_lines else
               '<p class="meta">No line ran a garbage collection.</p>')
    legend = ('<p class="legend"><span class="key rss"></span>RSS <span class="key tracked"></span>tracked live bytes '
              '<span class="key span"></span>a profiled function running on the main thread (consecutive samples '
              'naming it; the report keeps no call start and end times) <span class="key tpeak"></span>tracked peak '
              '(exact, from the process figures)</p>')
    readout = '<div id="readout" class="readout">Hover over the timeline to see what was running.</div>'
    # Each (function, line, source) once, the samples pointing at it by index (-1: none), so a
    # long run's 10,000 samples do not repeat their source lines.
    places, place_of = [], {}
    rows = []
    for s in samples:
        key = (s.get("function"), s.get("lineno"))
        if key[0] is None:
            at = -1
        else:
            at = place_of.get(key)
            if at is None:
                at = place_of[key] = len(places)
                places.append([key[0], key[1], sources.get(key)])
        rows.append([round(float(s["time"]), 6), int(s["rss_bytes"]), int(s["tracked_bytes"]), at])
    data = {"places": places, "samples": rows}
    offered = timeline.get("samples_offered", len(samples))
    kept = (f'<p class="meta">{len(samples)} samples kept of {offered} taken.</p>')
    return (f'<section id="timeline"><h2>Timeline</h2>{legend}{"".join(parts)}{readout}{kept}{peak_text}{gc_text}'
            '</section>'), data


def _legend():
    items = "".join(f'<span class="key" style="background:{c}"></span>{_e(n)} ' for n, c in CAUSES)
    return (f'<section id="causes-legend"><h2>Reading the causes and hints</h2><p class="legend">{items}</p>'
            '<p class="meta">Each line\'s RSS change is split into causes that add up to it exactly: falls are drawn '
            'left of the middle, rises right of it, on one scale per function. Hover a segment for its size; the '
            'line\'s note, when it has one, is written below its bar. Hints suggest a rewrite only where the line\'s '
            'source and its measured figures show the cost, and what they would save is one of those figures. '
            'Click a column heading to sort; the hottest lines by peak are highlighted.</p></section>')


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 8px}h2{font-size:17px;margin:18px 0 6px}h3{font-size:14px;margin:8px 0 4px}
.meta{color:#555;margin:2px 0}
table.summary{width:auto;border-collapse:collapse}.scroll{overflow-x:auto}table.summary td{padding:1px 0}table.summary th{text-align:left;padding:1px 12px 1px 0;font-weight:600}
table.lines{border-collapse:collapse;font-size:12.5px}
table.lines th{background:#eef1f5;cursor:pointer;padding:3px 5px;border-bottom:2px solid #ccd;white-space:nowrap;text-align:left}
table.lines th.asc::after{content:" \\25B2"}table.lines th.desc::after{content:" \\25BC"}
table.lines td{padding:2px 5px;border-bottom:1px solid #eee;vertical-align:top}
td.num{position:relative;text-align:right;white-space:nowrap;min-width:58px}
td.num .val{position:relative}
.bar{position:absolute;left:0;top:3px;height:15px;opacity:.35}
.bar.alloc{background:#3b7dd8}.bar.freed{background:#2e9e5b}.bar.peak{background:#c0392b}.bar.retained{background:#8e44ad}
.sbar{position:absolute;top:3px;height:15px;opacity:.35}.sbar.up{background:#c0392b}.sbar.down{background:#2e9e5b}
td.src code{white-space:pre;font-size:12px}
tr.hot{background:#fff1e0}tr.hot td.src code{font-weight:700}
tr.teardown td{color:#555;font-style:italic}
.cbar{display:flex;width:160px;height:12px;background:#f4f4f4;border-left:1px solid #ddd;border-right:1px solid #ddd}
.cbar .neg,.cbar .pos{width:50%;display:flex}.cbar .neg{justify-content:flex-end;border-right:1px solid #888}
.seg{display:block;height:100%}
.note{font-size:11px;color:#555;max-width:240px}
.hint{font-size:11.5px;background:#eefaf0;border-left:3px solid #2e9e5b;padding:2px 4px;margin:1px 0}.hint b{display:block}
.hint .saving{color:#1d6b3a}.hintlist{background:#eefaf0;padding:4px 10px;margin:6px 0}
#timeline-svg{border:1px solid #ddd;background:#fcfcfc;max-width:100%;height:auto}
.axis{stroke:#999}.tick{font-size:10px;fill:#555}
polyline.rss{fill:none;stroke:#c0392b;stroke-width:1.5}polyline.tracked{fill:none;stroke:#3b7dd8;stroke-width:1.5}
rect.span{fill:#f1c40f;opacity:.18}.gc{fill:#2e9e5b}.tpeak{stroke:#3b7dd8;stroke-dasharray:4 3}
.peak{fill:#c0392b}.peaklabel{font-size:11px;font-weight:600;fill:#7a1f16}.cursor{stroke:#555;stroke-dasharray:2 2}
.legend .key{display:inline-block;width:12px;height:12px;margin:0 4px 0 10px;vertical-align:middle}
.key.rss{background:#c0392b}.key.tracked{background:#3b7dd8}.key.span{background:#f1c40f;opacity:.5}.key.tpeak{border-top:2px dashed #3b7dd8;height:0}
.readout{font:12px monospace;min-height:1.4em;margin:4px 0}
"""

# Each cause's colour, by class.
_CSS += "".join(f".c-{name}{{background:{colour}}}" for name, colour in CAUSES) + "\n"

_JS = r"""
(function(){
  function sortTable(table, col, dir){
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var text = col === 1;
    rows.sort(function(a, b){
      // The source sorts by its text (the teardown's row last), figures by their data-v.
      if (text) {
        var p = a.className === 'teardown', q = b.className === 'teardown';
        return p !== q ? (p ? 1 : -1) : dir * a.cells[col].textContent.localeCompare(b.cells[col].textContent);
      }
      var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
      return dir * (parseFloat(x) - parseFloat(y));
    });
    rows.forEach(function(r){ body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, i){
      th.classList.remove('asc', 'desc');
      if (i === col) th.classList.add(dir > 0 ? 'asc' : 'desc');
    });
    table.setAttribute('data-sorted', table.tHead.rows[0].cells[col].getAttribute('data-key') + (dir > 0 ? ':asc' : ':desc'));
  }
  var tables = document.querySelectorAll('table.lines');
  Array.prototype.forEach.call(tables, function(table){
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, i){
      th.addEventListener('click', function(){
        // Figures sort largest first on the first click; the line number and source ascending.
        var desc = i > 1;
        if (th.classList.contains(desc ? 'desc' : 'asc')) desc = !desc;
        sortTable(table, i, desc ? -1 : 1);
      });
    });
  });
  var m = /sort=([a-z]+)/.exec(location.hash);
  if (m) {
    Array.prototype.forEach.call(tables, function(table){
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, i){
        if (th.getAttribute('data-key') === m[1]) sortTable(table, i, i > 1 ? -1 : 1);
      });
    });
  }
  var svg = document.getElementById('timeline-svg');
  var dataNode = document.getElementById('timeline-data');
  var readout = document.getElementById('readout');
  if (svg && dataNode && readout && dataNode.textContent.indexOf('"samples":[]') < 0) {
    var data = JSON.parse(dataNode.textContent), samples = data.samples, places = data.places;
    var tmax = parseFloat(svg.getAttribute('data-tmax')), left = parseFloat(svg.getAttribute('data-left'));
    var plotw = parseFloat(svg.getAttribute('data-plotw')), cursor = document.getElementById('cursor');
    function human(n){
      var a = Math.abs(n); if (a < 1024) return n + ' B';
      var units = ['KiB','MiB','GiB','TiB'], v = n / 1024, u = 0;
      while (Math.abs(v) >= 1024 && u < 3) { v /= 1024; u++; }
      return v.toFixed(1) + ' ' + units[u];
    }
    function show(i){
      var s = samples[i], p = s[3] >= 0 ? places[s[3]] : null;
      var where = p ? p[0] + ' line ' + p[1] + (p[2] ? ': ' + p[2] : '') : 'no profiled line on the main thread';
      readout.textContent = s[0].toFixed(4) + ' s  RSS ' + human(s[1]) + '  tracked ' + human(s[2]) + '  ' + where;
      readout.setAttribute('data-index', i);
      var px = left + plotw * s[0] / tmax;
      cursor.setAttribute('x1', px); cursor.setAttribute('x2', px);
    }
    svg.addEventListener('mousemove', function(ev){
      var box = svg.getBoundingClientRect();
      var vx = (ev.clientX - box.left) * svg.viewBox.baseVal.width / box.width;
      var t = (vx - left) / plotw * tmax, lo = 0, hi = samples.length - 1;
      while (lo < hi) { var mid = (lo + hi) >> 1; if (samples[mid][0] < t) lo = mid + 1; else hi = mid; }
      if (lo > 0 && Math.abs(samples[lo - 1][0] - t) < Math.abs(samples[lo][0] - t)) lo--;
      show(lo);
    });
    // Until the pointer moves, the readout shows the RSS peak.
    var peak = 0;
    samples.forEach(function(s, i){ if (s[1] > samples[peak][1]) peak = i; });
    show(peak);
  }
  document.body.setAttribute('data-ready', '1');
})();
"""


def render(report):
    """The page for a JSON report (a dict), as a string."""
    functions = report.get("functions", [])
    timeline_html, data = _timeline(report)
    toc = "".join(f'<li><a href="#f{i}">{_e(f.get("name", ""))}</a></li>' for i, f in enumerate(functions))
    sections = "".join(_function_section(i, f) for i, f in enumerate(functions))
    argv = report.get("argv")
    title = "memsleuth: " + (" ".join(argv) if argv else "report")
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
        f'<h1>{_e(title)}</h1>'
        f'{_summary(report)}'
        f'<nav><h2>Functions</h2><ul>{toc or "<li>no profiled function ran</li>"}</ul></nav>'
        f'{_legend()}{sections}{timeline_html}'
        f'<script type="application/json" id="timeline-data">{_script_json(data)}</script>'
        f'<script>{_JS}</script></body></html>\n'
    )
