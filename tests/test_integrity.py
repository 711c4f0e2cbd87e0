"""memsleuth must not lose or invent bytes whatever the profiled program does around it: the
collector running inside memsleuth's own sections, other tools swapping Python's allocator, the
tracer's own objects, native memory moved between readings (issue 12)."""

from conftest import find_line


def test_process_counters_stay_balanced_when_the_collector_runs_in_quiet_sections(run_fixture):
    process = run_fixture("generator_gc_quiet.py").extra
    assert process["freed_bytes"] + process["live_bytes"] <= process["allocated_bytes"], process


def test_hooks_removed_by_tracemalloc_stop_are_put_back(run_fixture):
    run = run_fixture("tracemalloc_stop.py")
    line = run.line("buffer", "data = bytearray(1_600_000)")
    assert line["hits"] == 2, line
    assert line["allocated_bytes"] >= 2 * 1_600_000, line
    # What ran while the hooks were away is missing from the figures, and memsleuth says so.
    warnings = [text for text in run.stderr.splitlines() if text.startswith("memsleuth:")]
    assert len(warnings) == 1 and "tracemalloc" in warnings[0], run.stderr


def test_c_method_calls_allocate_only_what_the_methods_do(run_fixture):
    run = run_fixture("c_method_calls.py")
    # dict.get of a missing key allocates nothing.
    get = run.line("calls", "table.get(i)")
    assert (get["hits"], get["allocated_bytes"], get["allocations"]) == (100_000, 0, 0), get
    # list.append only grows the list's array now and then.
    append = run.line("calls", "seen.append(None)")
    assert append["hits"] == 100_000 and append["allocations"] < 1_000, append
    # A bound method getattr returns is the program's: one allocation per call.
    made = run.line("calls", 'getattr(table, "get")(i)')
    assert made["hits"] == made["allocations"] == 1_000, made



def test_native_free_is_charged_to_the_line_that_freed(run_fixture):
    run = run_fixture("native_free_quick.py")
    grown = run.line("native", "block = memset(huge_block(), 1, N + HUGE_PAGE)")["rss_delta_bytes"]
    assert grown > 60 * 1024 * 1024, grown
    freed = run.line("native", "free(block)")
    assert abs(freed["rss_delta_bytes"] + grown) < grown // 20, (grown, freed)
    after = run.line("native", "after = 1")
    assert abs(after["rss_delta_bytes"]) < grown // 20, after


def test_what_a_line_that_ran_long_mapped_is_read_where_it_ends(run_source):
    # A line of C code that maps memory no hook sees (fresh pages from mmap: a malloc may reuse
    # resident heap), quick enough (under a millisecond) that a reading at its end falls due only
    # because it ran 100 us or more (the sleep makes sure of that), not because RSS was last
    # looked at long ago: it was looked at as the function began.
    run = run_source(
        "import ctypes, mmap, time\n"
        "from memsleuth import profile\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.mmap.restype = ctypes.c_void_p\n"
        "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n"
        "def fresh_pages(n):\n"
        "    return libc.mmap(None, n, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)\n"
        "memset, sleep = ctypes.memset, time.sleep\n"
        "N = 256 * 1024\n"
        "@profile\n"
        "def native():\n"
        "    before = 1\n"
        "    block = memset(fresh_pages(N), 1, N); sleep(0.0002)\n"
        "    after = 1\n"
        "    return block\n"
        "native()\n"
    )
    mapped = run.line("native", "block = memset(fresh_pages(N), 1, N); sleep(0.0002)")
    assert abs(mapped["rss_delta_bytes"] - 256 * 1024) < 64 * 1024, mapped
    assert abs(run.line("native", "after = 1")["rss_delta_bytes"]) < 64 * 1024


def test_a_profiler_of_the_program_is_left_in_place(run_source):
    # Before 3.12 memsleuth installs a profile function while a profiled call runs, only where
    # the thread has none, and removes only its own.
    run = run_source(
        "import sys\n"
        "from memsleuth import profile\n"
        "calls = []\n"
        "def watch(frame, event, arg):\n"
        "    calls.append(event)\n"
        "@profile\n"
        "def outside():\n"
        "    return [].append(1)\n"
        "@profile\n"
        "def inside():\n"
        "    sys.setprofile(watch)\n"
        "    return 1\n"
        "sys.setprofile(watch)\n"
        "outside()\n"
        "kept = sys.getprofile() is watch\n"
        "sys.setprofile(None)\n"
        "inside()\n"
        "set_inside = sys.getprofile() is watch\n"
        "sys.setprofile(None)\n"
        "EXTRA = {'kept': kept, 'set_inside': set_inside, 'c_calls': calls.count('c_call')}\n"
    )
    assert run.extra["kept"] and run.extra["set_inside"], run.extra
    assert run.extra["c_calls"] > 0, run.extra


def test_hooks_removed_inside_a_profiled_function_are_back_for_its_next_line(run_fixture):
    run = run_fixture("tracemalloc_stop_inside.py")
    line = run.line("stops", "data = bytearray(1_600_000)")
    assert line["allocated_bytes"] >= 1_600_000, line
