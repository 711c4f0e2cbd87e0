"""The sink (docs/design.md, "The books live in the sink"): a sink process and the fallback
thread keep the same books, and the books no longer weigh on the program they measure."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
BIN = os.path.join(os.path.dirname(sys.executable), "memsleuth")

#: Figures that count allocator calls: the same calls give the same figures, wherever the books
#: are kept. (RSS readings and their causes measure the process, which the books' place changes;
#: whether pymalloc maps an arena depends on what ran before profiling started, which differs.)
EXACT = ("hits", "allocated_bytes", "allocations", "freed_bytes", "frees", "net_bytes", "peak_bytes",
         "retained_bytes")

#: The fixtures whose allocations depend neither on what ran before profiling started nor on
#: timing (threads.py's depend on how its threads interleave). (In methods.py the first append allocates 48 bytes more after a sink thread started: an
#: interpreter cache warmed, or not, before the first profiled call; in coroutines.py and
#: async_generators.py, asyncio's event loop frees a small object on a profiled line in some runs,
#: in either mode, on a loaded machine.)
CORPUS = ["seed_generators.py", "seed_my_func.py", "generator_consumer.py", "generator_retained.py", "nested.py", "teardown.py", "raises.py", "recursion.py", "varargs_rss.py"]


def _env(sink):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEMSLEUTH_SINK")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if sink is not None:
        env["MEMSLEUTH_SINK"] = sink
    return env


def _exact(doc):
    def figures(entry):
        return {key: entry[key] for key in EXACT}

    return [(f["name"], f["calls"], figures(f["totals"]), [(l["lineno"], figures(l)) for l in f["lines"]],
             f["teardown"] and figures(f["teardown"]))
            for f in doc["functions"]]


def _run(fixture, sink, tmp_path, ring_kib=None):
    report = tmp_path / f"{sink}-{ring_kib}.json"
    env = _env(sink)
    if ring_kib is not None:
        env["MEMSLEUTH_RING_KIB"] = str(ring_kib)
    proc = subprocess.run([BIN, "run", "-q", "--json", report, fixture], cwd=FIXTURES, capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(report.read_text())


@pytest.mark.parametrize("fixture", CORPUS)
def test_a_sink_process_and_a_sink_thread_keep_the_same_books(fixture, tmp_path):
    process, thread = (_run(fixture, sink, tmp_path) for sink in ("process", "thread"))
    assert _exact(process) == _exact(thread)
    assert process["functions"], "something was profiled"


def test_the_rings_size_changes_no_figure(tmp_path):
    """The 256 KiB ring fills and wraps around many times where a 16 MiB one never does
    (docs/design.md, "The books live in the sink"): the books are the same."""
    small, large = (_run("seed_generators.py", "process", tmp_path, kib) for kib in (256, 16384))
    assert _exact(small) == _exact(large)
    assert small["functions"]


def test_an_unknown_sink_is_refused_before_the_program_runs(tmp_path):
    proc = subprocess.run([BIN, "run", "-c", "print('ran')"], capture_output=True, text=True,
                          env=_env("elsewhere"), timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == ("memsleuth: error: MEMSLEUTH_SINK must be 'process' or 'thread', not 'elsewhere'\n")


def test_a_program_reusing_the_doorbells_descriptor_keeps_its_file_intact(tmp_path):
    """A daemon closes every descriptor and opens its own files, which get the numbers back: the
    doorbell to the sink (a pipe) must never be rung into one of them."""
    program = tmp_path / "daemon.py"
    program.write_text(
        "import os, sys\n"
        "from memsleuth import profile\n"
        "@profile\n"
        "def work():\n"
        "    return [0] * 1000\n"
        "work()\n"
        "os.closerange(3, 4096)\n"
        "files = [open(os.path.join(sys.argv[1], f'{i}.txt'), 'w') for i in range(16)]\n"
        "work()\n"
        "for f in files:\n"
        "    f.write('mine')\n"
        "    f.close()\n"
    )
    proc = subprocess.run([sys.executable, str(program), str(tmp_path)], capture_output=True, text=True,
                          env=_env(None), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Filename: ") == 2, "both calls' tables were printed"
    assert [(tmp_path / f"{i}.txt").read_bytes() for i in range(16)] == [b"mine"] * 16


def test_a_function_whose_source_is_longer_than_a_record_is_still_profiled(tmp_path):
    """A record is at most 128 KiB, half the ring (docs/design.md, "The books live in the sink"):
    a longer source is cut at a line, and the function is profiled all the same."""
    body = "".join(f"    x{i} = 'a line of some length, to make a long source: {i:06d}'\n" for i in range(3000))
    program = tmp_path / "long.py"
    program.write_text(
        "import json\n"
        "from memsleuth import profile, last_report\n"
        "@profile\n"
        "def long():\n" + body + "    return [0] * 1000\n"
        "long()\n"
        "f = next(f for f in last_report()['functions'] if f['name'] == 'long')\n"
        "print(json.dumps([f['calls'], f['totals']['allocations'] > 0, len(f['lines'])]))\n"
    )
    assert len(body) > 128 * 1024
    proc = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, env=_env(None), timeout=120)
    assert proc.returncode == 0, proc.stderr
    calls, allocated, lines = json.loads(proc.stdout.splitlines()[-1])
    assert calls == 1 and allocated and lines > 0


#: Defines children(): this process's children, as [name, first word of the command line].
CHILDREN = """\
import os
def children():
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().split(b"\\0")[0].decode()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == os.getpid():
                found.append([stat[stat.index("(") + 1:stat.rindex(")")], cmdline])
    return found
"""

SINK_START = CHILDREN + """\
import json, sys, threading
from memsleuth import profile, last_report
if sys.argv[1] == "spawned":
    # A second thread when the sink starts: it cannot be forked (docs/design.md, "Starting the sink").
    done = threading.Event()
    threading.Thread(target=done.wait).start()
@profile
def work():
    kept = [str(i) for i in range(20_000)]
    del kept[::2]
    return len(kept)
work()
if sys.argv[1] == "spawned":
    done.set()
print(json.dumps([children(), last_report()]))
"""


@pytest.mark.parametrize("start", ["forked", "spawned"])
def test_a_forked_and_a_spawned_sink_keep_a_sink_threads_books(start, tmp_path):
    program = tmp_path / "start.py"
    program.write_text(SINK_START)
    results = {}
    for sink in ("process", "thread"):
        proc = subprocess.run([sys.executable, str(program), start], capture_output=True, text=True,
                              env=_env(sink), timeout=60)
        assert proc.returncode == 0, proc.stderr
        results[sink] = json.loads(proc.stdout.splitlines()[-1])
    (children, process), (_, thread) = results["process"], results["thread"]
    # A forked sink shows neither the program's name nor its command line (`pgrep -f start.py`
    # finds the program alone); a spawned one runs the program's interpreter with -c.
    assert children == ([["memsleuth-sink", "memsleuth-sink"]] if start == "forked"
                        else [[os.path.basename(sys.executable), sys.executable]])
    assert process["sink"] == "process"
    assert _exact(process) == _exact(thread)
    assert process["functions"][0]["totals"]["allocations"] >= 20_000


def test_a_forked_sink_holds_none_of_the_programs_descriptors(tmp_path):
    """A pipe the program writes must read end-of-file once the program closes it: a sink forked
    while it was open must not keep a copy of its write end."""
    program = tmp_path / "pipe.py"
    program.write_text(
        "import subprocess, sys\n"
        "from memsleuth import profile\n"
        "cat = subprocess.Popen(['cat'], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
        "@profile\n"
        "def work():\n"
        "    return [0] * 1000\n"
        "work()\n"
        "cat.stdin.write(b'through')\n"
        "cat.stdin.close()\n"
        "print(cat.stdout.read().decode(), cat.wait())\n"
    )
    proc = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, env=_env(None), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "through 0"


def test_a_forked_sinks_peak_rss_is_its_own(tmp_path):
    """A forked sink shares the program's pages from the fork; the report's sink peak is what it
    held above them (docs/design.md, "Starting the sink")."""
    program = tmp_path / "shared.py"
    program.write_text(CHILDREN + (
        "import json\n"
        "from memsleuth import profile, last_report\n"
        "kept = bytearray(16 << 20)\n"
        "kept[::4096] = b'x' * len(range(0, len(kept), 4096))  # resident before the sink is forked\n"
        "@profile\n"
        "def work():\n"
        "    return [0] * 1000\n"
        "work()\n"
        "print(json.dumps([children(), last_report()['process']]))\n"
    ))
    proc = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, env=_env(None), timeout=60)
    assert proc.returncode == 0, proc.stderr
    children, process = json.loads(proc.stdout.splitlines()[-1])
    assert children == [["memsleuth-sink", "memsleuth-sink"]], "the sink was forked, sharing the 16 MiB"
    assert 0 < process["sink_rss_peak_bytes"] < 12 << 20, process


@pytest.mark.parametrize("start", ["forked", "spawned"])
def test_a_forked_and_a_spawned_sink_leave_a_killed_programs_report_on_stderr(start, tmp_path):
    program = tmp_path / "killed.py"
    program.write_text(
        "import os, signal, sys, threading\n"
        "from memsleuth import profile\n"
        "if sys.argv[1] == 'spawned':\n"
        "    threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
        "@profile\n"
        "def work():\n"
        "    kept = [bytes(1000) for _ in range(1000)]\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "work()\n"
    )
    proc = subprocess.run([sys.executable, str(program), start], capture_output=True, text=True, env=_env(None),
                          timeout=60)
    assert proc.returncode == -9
    assert proc.stderr.startswith("memsleuth: INCOMPLETE REPORT: the program ended without finishing"), proc.stderr
    assert "running work at " in proc.stderr and "kept = [bytes(1000)" in proc.stderr, proc.stderr


def _wakeups(pid):
    """Voluntary context switches of every thread of process `pid` so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as status:
            total += sum(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt"))
    return total


def test_the_sink_backs_off_while_the_program_is_idle(tmp_path):
    """What a program leaves in the ring as it goes idle is read, and the sink then backs off to
    its 2 ms pauses: it does not wake every 50 us for as long as the program sleeps with a few
    records waiting (docs/design.md, "What that moved")."""
    script = tmp_path / "idle.py"
    script.write_text("import time\n"
                      "@profile\n"
                      "def idle():\n"
                      "    kept = [bytearray(10) for _ in range(3)]\n"
                      "    print('idle', flush=True)\n"
                      "    time.sleep(1.0)\n"
                      "    return kept\n"
                      "idle()\n")
    # Under `memsleuth run` the sink is the command's own process.
    with subprocess.Popen([BIN, "run", "-q", script], stdout=subprocess.PIPE, text=True,
                          env=_env(None)) as sink:
        assert sink.stdout.readline() == "idle\n"
        time.sleep(0.1)
        before = _wakeups(sink.pid)
        time.sleep(0.5)
        woken = _wakeups(sink.pid) - before
        assert sink.wait(timeout=60) == 0
    # The books thread's 2 ms pause and the reader's 2 ms poll: about 500 in half a second.
    # Looking again every 50 us while a few records stayed unread made over 4,000.
    assert woken < 2000
