"""memsleuth's benchmark suite: slowdown and peak RSS against plain Python, side by side.

    python benches/run.py [--python PY] [--peers-python PY] [--runs N] [--only WORKLOAD] [--tools T,...]
    python benches/run.py --instructions 0.1 [--python PY] [--only WORKLOAD] [--shapes S,...]

Every workload runs in two shapes: the hot loop inside the profiled function ("inline") and a
profiled function whose hot loop sits in an unprofiled callee ("callee"); "outside" runs the loop
with memsleuth tracking but no profiled function on the stack. Each cell is the median over
--runs alternating rounds of the tool's wall time divided by plain Python's median at the same
size, and the tool's peak RSS divided by plain's; memsleuth's cells add the program's own CPU
time against plain's and its sink process's CPU time and peak RSS (the books are kept there, outside the measured program). memory_profiler runs a scaled-down size (it is
hundreds of times slower) against a plain baseline at that size. Machines are noisy: read the
ratios, not the seconds.

--python runs plain, memsleuth and tracemalloc (it must have memsleuth installed); --peers-python
(same CPython version, memray and memory_profiler installed) runs the peers, and Scalene too if it
has Scalene installed (it samples memory, whole program). --tools picks a subset of the columns.
"""

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

WORKLOADS = {
    "alloc-heavy": (
        "d = {}\n"
        "for i in range(int(N * 2_000_000)):\n"
        "    d[i] = str(i)\n"
        "del d\n"
    ),
    # The seed's list comprehension at a million elements, repeated.
    "temporaries": (
        "for _ in range(max(1, int(N * 6))):\n"
        "    s = sum([x * x for x in range(1_000_000)])\n"
    ),
    # Small ints are cached and repeat() yields the same object: no allocation at all.
    "no-alloc": (
        "from itertools import repeat\n"
        "t = 0\n"
        "for _ in repeat(None, int(N * 12_000_000)):\n"
        "    t = (t + 3) & 255\n"
    ),
    "large-buffers": (
        "for i in range(int(N * 3_000)):\n"
        "    b = bytearray(4_000_000)\n"
        "    b[0] = 1\n"
        "    del b\n"
    ),
    "small-calls": (
        "def small(a, b):\n"
        "    return (a, b)\n"
        "t = None\n"
        "for i in range(int(N * 5_000_000)):\n"
        "    t = small(i, t is None)\n"
    ),
    # Inline, the recursive function is defined inside the profiled one, so it is profiled too:
    # from 3.12 the interpreter runs its calls of itself inline.
    "recursion": (
        "def walk(depth):\n"
        "    return 0 if depth == 0 else 1 + walk(depth - 1)\n"
        "t = 0\n"
        "for i in range(int(N * 40_000)):\n"
        "    t += walk(50)\n"
    ),
}

PRELUDES = {
    "plain": "def profile(f):\n    return f\n",
    "memsleuth": "from memsleuth import profile\n",
    "tracemalloc": "import tracemalloc\ntracemalloc.start(1)\ndef profile(f):\n    return f\n",
    "memray": "def profile(f):\n    return f\n",
    "memray-pyalloc": "def profile(f):\n    return f\n",
    "memory_profiler": "from memory_profiler import profile\n",
    "scalene": "def profile(f):\n    return f\n",
}

# memory_profiler prints its table to stdout; results go to /dev/null either way.
SCALE = {"memory_profiler": 0.01}


def indent(code, prefix="    "):
    return "".join(prefix + line + "\n" for line in code.splitlines())


def program(tool, workload, shape, scale):
    body = WORKLOADS[workload]
    src = PRELUDES[tool] + f"N = {scale!r}\n"
    if shape == "inline":
        src += "@profile\ndef work():\n" + indent(body) + "work()\n"
    elif shape == "callee":
        src += "def hot():\n" + indent(body) + "@profile\ndef work():\n    hot()\nwork()\n"
    else:  # outside: tracking on, nothing profiled on the stack
        src += "@profile\ndef unused():\n    pass\ndef hot():\n" + indent(body) + "hot()\n"
    if "memray" in tool or tool in ("plain", "scalene"):
        src = src.replace("@profile\n", "")
    return src


def command(tool, python, peers_python, script, tmp):
    if tool == "memray":
        return [peers_python, "-m", "memray", "run", "-q", "-f", "-o", os.path.join(tmp, "m.bin"), script]
    if tool == "memray-pyalloc":
        return [peers_python, "-m", "memray", "run", "-q", "-f", "--trace-python-allocators",
                "-o", os.path.join(tmp, "m.bin"), script]
    if tool == "memory_profiler":
        return [peers_python, script]
    if tool == "scalene":
        return [peers_python, "-m", "scalene", "run", "-o", os.path.join(tmp, "s.json"), script]
    return [python, script]


def compile_memsleuth(python):
    """Writes the bytecode of memsleuth's modules, as pip does when it installs a package: under
    an editable install with PYTHONDONTWRITEBYTECODE set, every measured run would compile them
    from source again (about 58 million instructions, some 20 ms, on 3.12)."""
    package = subprocess.check_output(
        [python, "-c", "import memsleuth, os; print(os.path.dirname(memsleuth.__file__))"], text=True).strip()
    subprocess.check_call([python, "-m", "compileall", "-q", package])


def become_subreaper():
    """Orphans of the measured programs (memsleuth's sink processes) come back to this process,
    which reaps them and counts their CPU time and peak RSS apart from the program's."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


PR_SET_CHILD_SUBREAPER = 36


def measure(cmd):
    """(wall time, the program's peak RSS, CPU seconds and peak RSS of what it left running: a
    sink process, the program's own CPU seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err.strip()[-500:]}")
    left_cpu, left_peak = 0.0, 0
    while True:
        try:
            _, _, left = os.wait4(-1, 0)
        except ChildProcessError:
            break
        left_cpu += left.ru_utime + left.ru_stime
        left_peak = max(left_peak, left.ru_maxrss * 1024)
    return elapsed, usage.ru_maxrss * 1024, left_cpu, left_peak, usage.ru_utime + usage.ru_stime


TABLE_COST = """
from memsleuth import profile, _native
@profile
def build():
    return {i: str(i) for i in range(2_000_000)}
kept = build()
blocks, table_bytes = _native.overhead()
print(blocks, table_bytes)
"""


def table_cost(python):
    """Bytes of block table per live tracked block, with two million small objects alive."""
    out = subprocess.check_output([python, "-c", TABLE_COST], text=True).split()
    blocks, table_bytes = int(out[-2]), int(out[-1])
    return f"block table: {table_bytes / 2**20:.0f} MiB for {blocks:,} live tracked blocks ({table_bytes / blocks:.1f} B per block)"


def instructions(python, workload, shape, scale, tmp):
    """Instructions callgrind counts for memsleuth's run against plain Python's, at `scale`, with
    the hash seed fixed so that the counts repeat exactly."""
    counts = {}
    for tool in ("plain", "memsleuth"):
        script = os.path.join(tmp, f"{tool}-{workload}-{shape}.py")
        with open(script, "w") as f:
            f.write(program(tool, workload, shape, scale))
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python, script],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONHASHSEED="0"),
        )
        err = proc.communicate()[1]
        # The program's own count: a sink forked from it is counted apart, under its own pid.
        found = [line.split()[-1] for line in err.splitlines() if line.startswith(f"=={proc.pid}==") and "Collected :" in line]
        if proc.returncode != 0 or not found:
            raise RuntimeError(f"callgrind on {tool} {workload} {shape} failed: {err.strip()[-500:]}")
        counts[tool] = int(found[-1])
    return counts["memsleuth"] / counts["plain"], counts["memsleuth"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--peers-python", default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", action="append", choices=sorted(WORKLOADS))
    parser.add_argument("--shapes", default="inline,callee,outside")
    parser.add_argument("--tools", help="comma-separated subset of the available tools")
    parser.add_argument("--instructions", type=float, metavar="SCALE",
                        help="instead of timing, count instructions with callgrind at SCALE (0.1: a tenth of the "
                             "sizes), memsleuth against plain Python")
    args = parser.parse_args()

    compile_memsleuth(args.python)
    if args.instructions is not None:
        tmp = tempfile.mkdtemp(prefix="memsleuth-bench-")
        try:
            print("| workload | shape | memsleuth / plain | memsleuth |\n|---|---|---|---|")
            for workload in args.only or list(WORKLOADS):
                for shape in args.shapes.split(","):
                    ratio, count = instructions(args.python, workload, shape, args.instructions, tmp)
                    print(f"| {workload} | {shape} | {ratio:.2f}x | {count / 1e6:.0f}M |", flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return

    tools = ["memsleuth", "tracemalloc"]
    if args.peers_python:
        tools += ["memray", "memray-pyalloc", "memory_profiler"]
        if subprocess.run([args.peers_python, "-c", "import scalene"], capture_output=True).returncode == 0:
            tools.append("scalene")
    if args.tools:
        wanted = args.tools.split(",")
        unknown = [t for t in wanted if t not in tools]
        if unknown:
            parser.error(f"not available here: {', '.join(unknown)} (available: {', '.join(tools)})")
        tools = [t for t in tools if t in wanted]
    workloads = args.only or list(WORKLOADS)
    shapes = args.shapes.split(",")
    version = subprocess.check_output([args.python, "-c", "import sys; print(sys.version.split()[0])"], text=True)
    tmp = tempfile.mkdtemp(prefix="memsleuth-bench-")
    become_subreaper()
    rows = []
    try:
        for workload in workloads:
            for shape in shapes:
                times, rss, sink, cpus = {}, {}, {}, {}
                scales = {t: SCALE.get(t, 1) for t in tools}
                baselines = sorted(set(scales.values()))
                for _ in range(args.runs):
                    for tool in [("plain", s) for s in baselines] + [(t, scales[t]) for t in tools]:
                        name, scale = tool
                        script = os.path.join(tmp, f"{name}-{workload}-{shape}.py")
                        with open(script, "w") as f:
                            f.write(program(name, workload, shape, scale))
                        cmd = command(name, args.python, args.peers_python, script, tmp)
                        elapsed, peak, sink_cpu, sink_peak, cpu = measure(cmd)
                        cpus.setdefault(tool, []).append(cpu)
                        times.setdefault(tool, []).append(elapsed)
                        rss.setdefault(tool, []).append(peak)
                        sink.setdefault(tool, []).append((sink_cpu, sink_peak))
                cells = []
                for tool in tools:
                    key, base = (tool, scales[tool]), ("plain", scales[tool])
                    slowdown = statistics.median(times[key]) / statistics.median(times[base])
                    mem = statistics.median(rss[key]) / statistics.median(rss[base])
                    cell = f"{slowdown:.2f}x / {mem:.2f}x"
                    if tool == "memsleuth":
                        # The program's own CPU time against plain's: wall time on a loaded
                        # machine also counts the sink's CPU, which competes for the same cores.
                        own = statistics.median(cpus[key]) / statistics.median(cpus[base])
                        cpu = statistics.median(c for c, _ in sink[key])
                        peak = statistics.median(p for _, p in sink[key])
                        cell += f" (CPU {own:.2f}x; sink {cpu:.2f} s, {peak / 2**20:.0f} MiB)"
                    cells.append(cell)
                plain_s = statistics.median(times[("plain", 1)])
                rows.append((workload, shape, f"{plain_s:.2f} s", cells))
                print(f"{workload:14} {shape:8} plain {plain_s:.2f} s  " + "  ".join(
                    f"{t}={c}" for t, c in zip(tools, cells)), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nCPython {version.strip()}, {args.runs} alternating runs, median slowdown / median peak RSS of the "
          "profiled process vs plain (memsleuth: with its sink process's CPU time and peak RSS); the sink's "
          + table_cost(args.python))
    print("| workload | shape | plain | " + " | ".join(tools) + " |")
    print("|---|---|---|" + "---|" * len(tools))
    for workload, shape, plain_s, cells in rows:
        print(f"| {workload} | {shape} | {plain_s} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
