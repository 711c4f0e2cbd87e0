"""The run's timeline (mprof's model): samples of (time, RSS, tracked live bytes, the innermost
profiled function and line running on the main thread), in the JSON report as ``timeline``.

Samples are taken from Python: when the run starts and ends, as an outermost profiled call ends
(at most one a millisecond), and, with ``memsleuth run --interval SECONDS``, by a daemon thread
every SECONDS. The readings the extension takes at line boundaries are not sampled: the sink
keeps them only as each line needs them. The list is bounded: once it holds ``MAX_SAMPLES``,
every other sample is dropped and from then on only every other one is kept (then every
fourth...), so a long run keeps samples spread over all of it. Under ``--follow-fork`` each
sample also holds ``children_rss_bytes``, the RSS of every process descending from this one (mprof's
``--include-children``).
"""

import os
import sys
import threading
import time

from . import _native

#: The most samples a timeline holds.
MAX_SAMPLES = 10_000
#: Samples taken as profiled calls end are at least this far apart (seconds): a tiny function
#: called in a loop would otherwise pay a /proc read per call.
MIN_GAP = 0.001

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes():
    """RSS now, from /proc/self/statm, opened anew each time: a descriptor kept open could be
    closed by the program (a daemon closing every descriptor) or, once closed, name its file."""
    fd = os.open("/proc/self/statm", os.O_RDONLY)
    try:
        return int(os.read(fd, 128).split()[1]) * _PAGE
    finally:
        os.close(fd)


def descendants(pid):
    """Every living descendant of ``pid``, from each thread's /proc/PID/task/TID/children list."""
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except (OSError, ValueError):
                continue
            found += kids
            pending += kids
    return found


def _children_rss_bytes():
    """The RSS of every living descendant of this process; one that ends while it is read
    counts nothing."""
    total = 0
    for child in descendants(os.getpid()):
        try:
            with open(f"/proc/{child}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


class Downsampled:
    """A list of at most ``limit`` items, spread over everything offered: when full, every
    other item goes and the stride of the items kept doubles. The first item always stays."""

    def __init__(self, limit):
        if limit < 2:
            raise ValueError("a timeline holds at least 2 samples")
        self.limit = limit
        self.items = []
        self.stride = 1
        self.offered = 0

    def offer(self, item):
        if self.offered % self.stride == 0:
            if len(self.items) == self.limit:
                del self.items[1::2]
                self.stride *= 2
            if self.offered % self.stride == 0:
                self.items.append(item)
        self.offered += 1

    def close(self, item):
        """The last item, kept whatever the stride (in the last place when full)."""
        if len(self.items) == self.limit:
            self.items[-1] = item
        else:
            self.items.append(item)
        self.offered += 1


class Timeline:
    """``qualnames``: the profiled code objects, each with its function's qualified name;
    ``children``: whether samples also add up the RSS of this process's descendants."""

    def __init__(self, qualnames, limit=None, children=False):
        self.qualnames = qualnames
        self.children = children
        self.samples = Downsampled(MAX_SAMPLES if limit is None else limit)
        self.start = time.monotonic()
        self.last = None
        self.main_thread = threading.main_thread().ident
        self.lock = threading.Lock()
        self.stop_sampling = threading.Event()
        self.sampler = None

    def _active(self):
        frame = sys._current_frames().get(self.main_thread)
        while frame is not None:
            name = self.qualnames.get(frame.f_code)
            if name is not None:
                return name, frame.f_lineno
            frame = frame.f_back
        return None, None

    def sample(self, min_gap=0.0, last=False):
        """Records one sample (unless the last is under ``min_gap`` seconds old); what it
        allocates is memsleuth's own. The ``last`` one is kept whatever the downsampling."""
        now = time.monotonic()
        if self.last is not None and now - self.last < min_gap:
            return
        token = _native.begin_quiet()
        try:
            with self.lock:
                self.last = now
                rss = _rss_bytes()
                function, lineno = self._active()
                sample = {"time": round(now - self.start, 6), "rss_bytes": rss,
                          "tracked_bytes": _native.tracked_live_bytes(), "function": function, "lineno": lineno}
                if self.children:
                    sample["children_rss_bytes"] = _children_rss_bytes()
                (self.samples.close if last else self.samples.offer)(sample)
        finally:
            _native.end_quiet(token)

    def sample_every(self, interval):
        def run():
            while not self.stop_sampling.wait(interval):
                self.sample()

        self.sampler = threading.Thread(target=run, name="memsleuth timeline", daemon=True)
        self.sampler.start()

    def finish(self):
        """The last sample; the sampler stops. Returns the samples."""
        self.stop_sampling.set()
        if self.sampler is not None:
            self.sampler.join()
        self.sample(last=True)
        return {"max_samples": self.samples.limit, "samples_offered": self.samples.offered,
                "samples": self.samples.items}
