"""Starting the sink that keeps memsleuth's books outside the profiled process (docs/design.md,
"The books live in the sink"), and the reports it writes when the program could not."""

import os
import sys
import time

from . import _native

# json, shutil, signal and tempfile are imported where they are used, by the sink or at the end:
# a program profiled with @profile keeps whatever memsleuth imports in its RSS (docs/design.md,
# "The books live in the sink").

#: What keeps the books in this process's run: "process", "thread", or None before the start.
kind = None

#: Under ``memsleuth run --follow-fork``: the directory where every profiled process leaves its
#: JSON report (None otherwise).
children_dir = None
#: Set under ``memsleuth run``, where a forked child is profiled only with --follow-fork.
run_mode = False

_SPAWNED_MAIN = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from memsleuth import _sink; _sink.spawned_main(sys.argv[2:])"
)


def requested():
    """The sink MEMSLEUTH_SINK asks for ("process" by default); ValueError if it names neither."""
    asked = os.environ.get("MEMSLEUTH_SINK", "process")
    if asked not in ("process", "thread"):
        raise ValueError(f"MEMSLEUTH_SINK must be 'process' or 'thread', not {asked!r}")
    return asked


def start():
    """Starts the sink for a program profiled with @profile under plain python: a process
    spawned now, or a thread of this one where MEMSLEUTH_SINK=thread or no process can start."""
    global kind
    if kind is not None:
        return
    _start()
    if not run_mode:
        # A child forked by the program is profiled on its own, into a ring and a sink of its own.
        os.register_at_fork(after_in_child=_restart_in_child)


def _restart_in_child():
    global kind
    if kind is None:
        return
    kind = None
    _start()
    _native.resume_recording()


def _start(report=None):
    global kind
    ring = _native.open_ring()
    if requested() == "process":
        try:
            _spawn(ring, report)
            kind = "process"
            return
        except OSError as exc:
            sys.stderr.write(f"memsleuth: cannot start the sink process ({exc.strerror or exc}); "
                             "keeping the figures in a thread of the program instead\n")
        finally:
            os.close(ring)
    _native.start_sink_thread()
    kind = "thread"


def _reply_directory():
    """A new private directory for the sink's answers (tempfile.mkdtemp's, without importing
    tempfile and the modules it imports into the program)."""
    base = os.environ.get("TMPDIR") or "/tmp"
    while True:
        path = os.path.join(base, "memsleuth-replies-" + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue


def _spawn(ring, report):
    """Starts the sink process: forked from this one where _native finds that safe and cheap
    (docs/design.md, "Starting the sink"), spawned otherwise."""
    doorbell_r, doorbell_w = os.pipe()
    replies = _reply_directory()
    try:
        glibc_serves_above = _native.glibc_serves_above()
        pid = _native.fork_sink(doorbell_r, replies, glibc_serves_above, report)
        if pid is None:
            pid = _spawn_interpreter(ring, doorbell_r, replies, glibc_serves_above, report)
    except BaseException:
        os.close(doorbell_w)
        os.rmdir(replies)
        raise
    finally:
        os.close(doorbell_r)
    os.set_blocking(doorbell_w, False)
    _native.connect_sink(doorbell_w, replies, pid, False)


def _spawn_interpreter(ring, doorbell_r, replies, glibc_serves_above, report):
    """Spawns a fresh interpreter as the sink, given the ring and the doorbell; returns its pid."""
    ours = (ring, doorbell_r)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    targets = [fd for fd in range(250, 260) if fd not in ours][:2]
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    actions += [(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in zip(ours, targets)]
    argv = [sys.executable, "-I", "-S", "-c", _SPAWNED_MAIN, package_parent, *map(str, targets), replies,
            str(os.getpid()), str(glibc_serves_above), *([report] if report else [])]
    return os.posix_spawn(sys.executable, argv, os.environ, file_actions=actions)


def spawned_main(args):
    """The spawned sink: keeps the books until the program ends; if it ended without finishing,
    writes on stderr what it had run."""
    import shutil
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    ring, doorbell = int(args[0]), int(args[1])
    replies, program, glibc_serves_above = args[2], int(args[3]), int(args[4])
    os.closerange(3, min(ring, doorbell))
    os.closerange(max(ring, doorbell) + 1, 1 << 20)
    _native.attach_ring(ring)
    try:
        ending = _native.serve_sink(doorbell, replies, program, True, glibc_serves_above)
    finally:
        shutil.rmtree(replies, ignore_errors=True)
    _native.leave_sink_reports(ending["exit_record"] is not None, args[5] if len(args) > 5 else None)


def follow_forks(directory):
    """In the program under ``run --follow-fork``: each child it forks is profiled into a ring
    and a sink of its own, which leaves the child's JSON report in ``directory``."""
    global children_dir
    children_dir = directory
    os.register_at_fork(after_in_child=_profile_forked_child)


def _profile_forked_child():
    global kind
    base = os.path.join(children_dir, str(os.getpid()))
    # Made before the sink starts, so that the run waits for the child's report.
    open(base + ".pending", "w").close()
    kind = None
    _start(report=base + ".json")
    _native.resume_recording()


def collect_children(directory, main_pid, timeout=30.0):
    """The followed children's reports, {pid: report}, once none is pending (or ``timeout``
    seconds have passed)."""
    import json

    deadline = time.monotonic() + timeout
    while any(name.endswith(".pending") for name in os.listdir(directory)) and time.monotonic() < deadline:
        time.sleep(0.02)
    reports = {}
    for name in sorted(os.listdir(directory)):
        pid, _, ext = name.partition(".")
        if ext == "json" and pid.isdigit() and int(pid) != main_pid:
            with open(os.path.join(directory, name)) as f:
                reports[int(pid)] = json.load(f)
    return reports


def summary(reports):
    """One report whose functions add up the figures of the same function in every process."""
    import json

    return json.loads(_native.summarize_saved([json.dumps(r) for r in reports]))


def fork_program():
    """Under ``memsleuth run``: forks. The child returns None and runs the program, recording
    into the ring; this process becomes the sink, and returns how the program ended once it has."""
    global kind
    if requested() == "thread" or sys.stdout is not sys.__stdout__ or sys.stderr is not sys.__stderr__:
        # Asked to keep the books in a thread, or called from Python with its output redirected
        # in the process: the program must run here (a spawned sink, or a thread, keeps them).
        return None
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    ring = _native.open_ring()
    doorbell_r, doorbell_w = os.pipe()
    replies = _reply_directory()
    pid = os.fork()
    if pid == 0:
        for fd in (ring, doorbell_r):
            os.close(fd)
        os.set_blocking(doorbell_w, False)
        _native.connect_sink(doorbell_w, replies, os.getppid(), True)
        kind = "process"
        return None
    for fd in (ring, doorbell_w):
        os.close(fd)
    try:
        ending = _native.serve_sink(doorbell_r, replies, pid, False, _native.glibc_serves_above())
    finally:
        import shutil  # here, in the sink: imported before the fork, the program would keep it

        shutil.rmtree(replies, ignore_errors=True)
    ending["pid"] = pid
    return ending


def ending_words(ending):
    """How the program ended, in words, and the status memsleuth exits with."""
    import signal

    if ending["signal"] is not None:
        number = ending["signal"]
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name}", 128 + number
    status = ending["exit_status"] if ending["exit_status"] is not None else 1
    return f"exited with status {status} without finishing (os._exit, or a fatal error)", status
