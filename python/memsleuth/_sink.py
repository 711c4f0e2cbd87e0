"""Starting the sink that keeps memsleuth's books outside the profiled process (docs/design.md,
"The books live in the sink"), and the reports it writes when the program could not."""

import os
import signal
import sys

from . import _native

#: What keeps the books in this process's run: "process", "thread", or None before the start.
kind = None

#: Ends of the spawned sink's descriptors in its process.
_SPAWNED_FDS = (250, 251, 252)

_SPAWNED_MAIN = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from memsleuth import _sink; _sink.spawned_main(sys.argv[2:])"
)


def pymalloc():
    return not os.environ.get("PYTHONMALLOC", "").startswith("malloc")


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
    # A child forked by the program is profiled on its own, into a ring and a sink of its own.
    os.register_at_fork(after_in_child=_restart_in_child)


def _restart_in_child():
    global kind
    if kind is None:
        return
    kind = None
    _start()
    _native.resume_recording()


def _start():
    global kind
    ring = _native.open_ring()
    if requested() == "process":
        try:
            _spawn(ring)
            kind = "process"
            return
        except OSError as exc:
            sys.stderr.write(f"memsleuth: cannot start the sink process ({exc.strerror or exc}); "
                             "keeping the figures in a thread of the program instead\n")
        finally:
            os.close(ring)
    _native.start_sink_thread(pymalloc())
    kind = "thread"


def _spawn(ring):
    doorbell_r, doorbell_w = os.pipe()
    reply_r, reply_w = os.pipe()
    ours = (ring, doorbell_r, reply_w)
    try:
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        targets = [fd for fd in range(250, 260) if fd not in ours][:3]
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
        actions += [(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in zip(ours, targets)]
        argv = [sys.executable, "-I", "-S", "-c", _SPAWNED_MAIN, package_parent,
                *map(str, targets), "1" if pymalloc() else "0"]
        pid = os.posix_spawn(sys.executable, argv, os.environ, file_actions=actions)
    except BaseException:
        for fd in (doorbell_w, reply_r):
            os.close(fd)
        raise
    finally:
        for fd in (doorbell_r, reply_w):
            os.close(fd)
    os.set_blocking(doorbell_w, False)
    _native.connect_sink(doorbell_w, reply_r, pid, False)


def spawned_main(args):
    """The spawned sink: keeps the books until the program ends; if it ended without finishing,
    writes on stderr what it had run."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    ring, doorbell, reply, use_pymalloc = (int(a) for a in args)
    keep = {ring, doorbell, reply}
    os.closerange(3, min(keep))
    os.closerange(max(keep) + 1, 1 << 20)
    _native.attach_ring(ring)
    ending = _native.serve_sink(doorbell, reply, 0, bool(use_pymalloc))
    if ending["exit_record"] is None:
        sys.stderr.write(death_heading("ended without finishing (killed by a signal, crashed, or os._exit)"))
        sys.stderr.write(_native.report_all_text(1, 0))


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
    reply_r, reply_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (ring, doorbell_r, reply_w):
            os.close(fd)
        os.set_blocking(doorbell_w, False)
        _native.connect_sink(doorbell_w, reply_r, os.getppid(), True)
        kind = "process"
        return None
    for fd in (ring, doorbell_w, reply_r):
        os.close(fd)
    return _native.serve_sink(doorbell_r, reply_w, pid, pymalloc())


def death_heading(how):
    frames = _native.open_frames()
    running = "".join(f"  running {name} at {filename}:{lineno}\n" for name, filename, lineno in frames)
    return f"memsleuth: INCOMPLETE REPORT: the program {how}; the figures cover what it ran until then\n{running}"


def ending_words(ending):
    """How the program ended, in words, and the status memsleuth exits with."""
    if ending["signal"] is not None:
        number = ending["signal"]
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name}", 128 + number
    status = ending["exit_status"] if ending["exit_status"] is not None else 1
    return f"exited with status {status} without finishing (os._exit, or a fatal error)", status
