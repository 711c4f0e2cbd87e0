"""The @profile decorator, end to end (docs/design.md; README, Use).

Each test runs a program from fixtures/ in a fresh interpreter and checks the JSON report
(memsleuth.last_report()) and the text tables the decorator printed. Byte figures are exact where
the allocations are (tracemalloc is the oracle); where the interpreter's own bookkeeping adds a
few blocks (free lists, dict/list growth, lock objects) they are bounded tightly above, far below
any error of the kind each test is after.

Sizes: bytearray(n) requests n + 1 bytes for its buffer and, on 64-bit CPython, 56 bytes for the
object (no free list), so it costs n + 57 allocated bytes in two allocations.
"""

import gc
import re
import sys

from conftest import TEXT_HEADER, find_line

KiB = 1024
BYTEARRAY_OBJECT = 56


def bytearray_cost(n):
    return n + 1 + BYTEARRAY_OBJECT


def between(value, low, high):
    assert low <= value <= high, f"{value} not in [{low}, {high}]"


# --------------------------------------------------------------------------------------------
# 1. The blog post's first program


def test_seed_my_func(run_fixture):
    run = run_fixture("seed_my_func.py")
    func = run.function("my_func")
    assert func["calls"] == 1
    assert func["module"] == "__main__"
    assert func["filename"].endswith("seed_my_func.py")

    a = find_line(func, "a = [1] * (10 ** 6)")
    b = find_line(func, "b = [2] * (2 * 10 ** 7)")
    del_b = find_line(func, "del b")
    ret = find_line(func, "return a")

    # 10**6 pointers, plus the 56-byte list header only where no free list supplied it.
    assert a["retained_bytes"] in (8_000_000, 8_000_056), a
    # The temporary [1] (8-byte item array, maybe a header) comes and goes on the same line.
    between(a["allocated_bytes"], 8_000_000, 8_000_000 + 2 * (56 + 8))
    assert a["net_bytes"] == a["retained_bytes"], a
    assert a["peak_bytes"] >= 8_000_000

    assert 160_000_000 <= b["allocated_bytes"] < 160_001_000, b
    assert b["retained_bytes"] == 0, b  # deleted before the call returned
    assert b["peak_bytes"] >= 160_000_000

    assert del_b["freed_bytes"] >= 160_000_000, del_b
    assert del_b["allocated_bytes"] == 0 and del_b["retained_bytes"] == 0, del_b
    assert ret["allocated_bytes"] == 0

    for line in func["lines"]:
        assert line["hits"] == 1, line
        assert line["net_bytes"] == line["allocated_bytes"] - line["freed_bytes"], line
        assert line["peak_bytes"] >= 0 and line["peak_bytes"] >= line["net_bytes"], line

    # RSS: the 160 MB list is written in full (so resident), and served by mmap (far above any
    # mmap threshold glibc can move to), so it is returned at `del b`.
    assert b["rss_delta_bytes"] >= 150_000_000, b
    assert del_b["rss_delta_bytes"] <= -150_000_000, del_b
    # The last line's reading is the one at the call's end. (The lines' increments adding up to
    # the call's RSS change is test_rss_increments_add_up_to_the_calls_change: here it depends on
    # whether a page happens to be touched between the call's entry and its first line.)
    assert ret["rss_after_bytes"] == func["totals"]["rss_after_bytes"]
    assert TEXT_HEADER in run.stdout


# --------------------------------------------------------------------------------------------
# 2. The blog post's second program (generator expression vs list comprehension)


def test_seed_generators(run_fixture):
    oracle = run_fixture("seed_generators_tracemalloc.py").extra
    run = run_fixture("seed_generators.py")
    func = run.function("my_test_function")
    assert func["calls"] == 1

    pp = find_line(func, "PP = sum(x * x for x in range(THE_LIMIT))")
    nn = find_line(func, "NN = sum([x * x for x in range(THE_LIMIT)])")
    b = find_line(func, "b = 1")

    # The list comprehension holds 100000 ints and their pointer array at once: its transient
    # peak is what tracemalloc measures for the same statement.
    expected = oracle["nn_peak"]
    assert expected > 3_000_000, oracle  # the oracle measured something real
    assert abs(nn["peak_bytes"] - expected) <= 0.05 * expected, (nn, oracle)
    assert abs(nn["net_bytes"]) < KiB, nn
    # The generator expression never holds more than a couple of ints and its own frame.
    assert pp["peak_bytes"] < 2048, (pp, oracle)
    assert pp["allocated_bytes"] > 100_000 * 28, pp  # it did allocate every square, one at a time
    assert abs(pp["net_bytes"]) < KiB, pp

    assert b["allocated_bytes"] == 0, b
    # `b = 1` is also the returning line: the frame teardown's frees (PP, NN) are charged to it,
    # and can empty a pymalloc arena (1 MiB; 256 KiB before 3.10), so RSS may fall by up to about
    # that much here. NN's own release (megabytes of ints and their array) must not land here.
    assert b["rss_delta_bytes"] >= -2 * 2**20, b
    assert b["frees"] > 0 or b["rss_delta_bytes"] >= 0, b
    # precision=4 on the decorator
    assert re.search(r"^\s+\d+\s+\d+\.\d{4} MiB", run.stdout, re.M), run.stdout


def test_seed_generators_quiet_line_after_the_sums(run_fixture):
    run = run_fixture("seed_generators_tail.py")
    func = run.function("my_test_function")
    b = find_line(func, "b = 1")
    # Not the returning line: it allocates and frees nothing, and RSS cannot fall during it.
    assert b["allocated_bytes"] == 0 and b["freed_bytes"] == 0, b
    assert b["rss_delta_bytes"] >= 0, b
    nn = find_line(func, "NN = sum([x * x for x in range(THE_LIMIT)])")
    assert abs(nn["net_bytes"]) < KiB and nn["peak_bytes"] > 3_000_000, nn


# --------------------------------------------------------------------------------------------
# 3. Threads


def test_threads_each_call_counted_noise_excluded(run_fixture):
    n_threads, size, noise = 4, 1_000_000, 8_000_000
    run = run_fixture("threads.py", n_threads, size, noise)
    assert run.extra["kept"] == n_threads
    func = run.function("work")
    assert func["calls"] == n_threads
    assert run.stdout.count(TEXT_HEADER) == n_threads  # each thread's call is outermost there

    wait = find_line(func, "everyone_inside.wait()")
    line = find_line(func, "keep.append(bytearray(SIZE)); wait_for_noise(i)")
    ret = find_line(func, "return i")
    assert wait["hits"] == line["hits"] == ret["hits"] == n_threads

    known = n_threads * bytearray_cost(size)
    # While each of these executions was active the noisy thread allocated `noise` bytes (and
    # churned more): none of it may reach the line. Allowance: the list's growth, the Event's
    # waiter lock and deque block, per hit.
    between(line["allocated_bytes"], known, known + n_threads * 64 * KiB)
    between(line["retained_bytes"], known, known + n_threads * 64 * KiB)
    between(func["totals"]["allocated_bytes"], known, known + n_threads * 128 * KiB)
    # The noise was real and tracked: it is in the process figures.
    assert run.extra["noise"]["burst_bytes"] >= n_threads * noise
    assert run.report["process"]["allocated_bytes"] >= known + n_threads * noise


def test_thread_started_before_first_use(run_fixture):
    size = 1_000_000
    run = run_fixture("early_thread.py", size)
    assert run.extra["got"] == size
    func = run.function("work")
    assert func["calls"] == 1
    data = find_line(func, "data = bytearray(n)")
    assert data["hits"] == 1
    between(data["allocated_bytes"], bytearray_cost(size), bytearray_cost(size) + KiB)
    assert find_line(func, "return len(data)")["hits"] == 1


# --------------------------------------------------------------------------------------------
# 4. Generators


def test_generator_consumer_allocations_excluded(run_fixture):
    n, item, hog = 4, 100_000, 5_000_000
    run = run_fixture("generator_consumer.py", n, item, hog)
    func = run.function("produce")
    assert func["calls"] == 1

    chunk = find_line(func, "chunk = bytearray(size)")
    yield_line = find_line(func, "yield len(chunk)")
    assert chunk["hits"] == n
    between(chunk["allocated_bytes"], n * bytearray_cost(item), n * bytearray_cost(item) + n * KiB)
    # Every chunk is gone once the generator is exhausted (the last at frame teardown).
    assert chunk["retained_bytes"] == 0, chunk
    # The consumer's 5 MB blocks, made while the generator was suspended, are nobody's line.
    assert yield_line["allocated_bytes"] < n * 4 * KiB, yield_line
    assert yield_line["peak_bytes"] < 4 * KiB, yield_line
    between(func["totals"]["allocated_bytes"], n * bytearray_cost(item), n * bytearray_cost(item) + 64 * KiB)
    assert run.report["process"]["allocated_bytes"] >= n * hog  # the consumer's blocks were tracked

    # The table is printed once, when the generator is exhausted, not before.
    out = run.stdout
    assert out.count(TEXT_HEADER) == 1, out
    assert out.index("CONSUMED ALL ITEMS") < out.index(TEXT_HEADER) < out.index("EXHAUSTED"), out


def test_consumer_pays_the_same_for_a_profiled_generator(run_fixture):
    run = run_fixture("generator_parity.py", 10_000)
    drain = run.function("drain")
    profiled = find_line(drain, "for _ in items(n):")
    unprofiled = find_line(drain, "for _ in items_unprofiled(n):")
    assert profiled["hits"] == unprofiled["hits"] == run.extra["drained"] + 1
    # Within what one-time costs come to: a cost per step of even 16 B would come to 160 KB here.
    assert abs(profiled["allocated_bytes"] - unprofiled["allocated_bytes"]) <= 4 * KiB, (profiled, unprofiled)


def test_generator_yield_line_hits(run_fixture):
    n = 4
    run = run_fixture("generator_consumer.py", n, 1000, 1000)
    func = run.function("produce")
    assert find_line(func, "chunk = bytearray(size)")["hits"] == n
    assert find_line(func, "yield len(chunk)")["hits"] == n


def test_generator_retained_counts_only_blocks_alive_at_exhaustion(run_fixture):
    n, size = 3, 1_000_000
    run = run_fixture("generator_retained.py", n, size)
    assert run.extra["kept"] == size
    func = run.function("blocks")
    line = find_line(func, "yield bytearray(size)")
    between(line["allocated_bytes"], n * bytearray_cost(size), n * bytearray_cost(size) + n * KiB)
    # Only the last block is alive when the generator is exhausted (the consumer holds it).
    between(line["retained_bytes"], bytearray_cost(size), bytearray_cost(size) + KiB)


def test_generator_resumed_later_does_not_unretain_other_calls_blocks(run_fixture):
    size = 1_000_000
    run = run_fixture("generator_stamp.py", size)
    assert run.extra["left"] == 0
    make = run.function("make")
    line = find_line(make, "store.append(bytearray(n))")
    between(line["allocated_bytes"], bytearray_cost(size), bytearray_cost(size) + KiB)
    drain = run.function("drain")
    assert find_line(drain, "store.clear()")["freed_bytes"] >= bytearray_cost(size)
    # The block was alive when make returned: it is make's retained memory.
    between(line["retained_bytes"], bytearray_cost(size), bytearray_cost(size) + KiB)


def test_generator_closed_early_reports_on_close(run_fixture):
    run = run_fixture("generator_close.py")
    func = run.function("produce")
    assert func["calls"] == 1
    chunk = find_line(func, "chunk = bytearray(100_000)")
    cleanup = find_line(func, "cleanup = bytearray(50_000)")
    assert chunk["hits"] == 1 and cleanup["hits"] == 1
    between(chunk["allocated_bytes"], bytearray_cost(100_000), bytearray_cost(100_000) + KiB)
    between(cleanup["allocated_bytes"], bytearray_cost(50_000), bytearray_cost(50_000) + KiB)
    out = run.stdout
    assert out.count(TEXT_HEADER) == 1, out
    # Closing happens when the loop is left: the table comes before the consumer goes on.
    assert out.index("BEFORE") < out.index(TEXT_HEADER) < out.index("AFTER BREAK") < out.index("END"), out


# --------------------------------------------------------------------------------------------
# 5. Coroutines under asyncio.gather


def test_coroutines_gather(run_fixture):
    sizes = [1_000_000, 2_000_000, 3_000_000]
    run = run_fixture("coroutines.py", *sizes)
    assert run.extra["results"] == [3 * s for s in sizes]
    func = run.function("work")
    assert func["calls"] == len(sizes)
    assert run.stdout.count(TEXT_HEADER) == len(sizes)  # one table as each call finishes

    first = find_line(func, "first = bytearray(size)")
    second = find_line(func, "second = bytearray(2 * size)")
    assert first["hits"] == second["hits"] == len(sizes)
    firsts = sum(bytearray_cost(s) for s in sizes)
    seconds = sum(bytearray_cost(2 * s) for s in sizes)
    # Each call's block counted once, on its own line, though the calls interleave.
    between(first["allocated_bytes"], firsts, firsts + len(sizes) * KiB)
    between(second["allocated_bytes"], seconds, seconds + len(sizes) * KiB)
    between(first["retained_bytes"], firsts, firsts + len(sizes) * KiB)  # kept in a global list
    assert second["retained_bytes"] == 0, second  # freed as each call returned
    # The hog task's 4 MB blocks (and the loop's own work) ran while the calls were suspended.
    hog = run.extra["hog"]
    for line in func["lines"]:
        if line["source"].startswith("await"):
            assert line["allocated_bytes"] < 16 * KiB, line
            assert line["peak_bytes"] < hog, line
    between(func["totals"]["allocated_bytes"], firsts + seconds, firsts + seconds + 64 * KiB)
    assert run.report["process"]["allocated_bytes"] >= run.extra["hogged"] * hog


def test_coroutine_await_line_hits(run_fixture):
    sizes = [1000, 2000, 3000]
    run = run_fixture("coroutines.py", *sizes)
    func = run.function("work")
    for line in func["lines"]:
        assert line["hits"] == len(sizes), line


def test_async_generators(run_fixture):
    sizes = [1_000_000, 2_000_000, 3_000_000]
    run = run_fixture("async_generators.py", *sizes)
    # The wrapper passes values, exceptions and closing through unchanged.
    assert run.extra["consumed"] == sizes and run.extra["first"] == sizes[0], run.extra
    assert run.extra["replies"] == [0, 1, 2] and run.extra["received"] == ["a", "caught k"], run.extra
    # One table as each call ends: two of chunks (exhausted, closed), one each of echo, nothing
    # and drain.
    assert run.stdout.count(TEXT_HEADER) == 5

    func = run.function("chunks")
    assert func["calls"] == 2
    block = find_line(func, "block = bytearray(size)")
    assert block["hits"] == len(sizes) + 1
    kept = sum(bytearray_cost(s) for s in sizes)
    made = kept + bytearray_cost(sizes[0])
    between(block["allocated_bytes"], made, made + 4 * KiB)
    # The exhausted call's blocks are kept in a global list; the closed call's went with it.
    between(block["retained_bytes"], kept, kept + 3 * KiB)
    assert find_line(func, "keep.append(block)")["hits"] == len(sizes)
    # The hog task's 4 MB blocks were made while the generator was suspended.
    hog = run.extra["hog"]
    for line in func["lines"]:
        if line["source"].startswith(("await", "yield")):
            assert line["allocated_bytes"] < 16 * KiB, line
            assert line["peak_bytes"] < hog, line
    # Only the program's list iterators: nothing of the wrapper's steps or the StopIteration and
    # StopAsyncIteration that carry them.
    assert find_line(func, "for size in sizes:")["allocated_bytes"] <= 2 * 64
    between(func["totals"]["allocated_bytes"], made, made + 64 * KiB)
    assert run.report["process"]["allocated_bytes"] >= run.extra["hogged"] * hog

    # The consumer's line pays the same for a profiled async generator as for an unprofiled one:
    # the driver's steps are the profiler's.
    drain = run.function("drain")
    profiled = find_line(drain, "async for _ in nothing(n):")
    unprofiled = find_line(drain, "async for _ in nothing_unprofiled(n):")
    assert profiled["hits"] == unprofiled["hits"] == run.extra["drained"] + 1
    # Within what one-time costs come to: a cost per step of even 16 B would come to 160 KB here.
    assert abs(profiled["allocated_bytes"] - unprofiled["allocated_bytes"]) <= 4 * KiB, (profiled, unprofiled)

    echo = run.function("echo")
    assert echo["calls"] == 1
    assert find_line(echo, "value = yield len(received)")["hits"] == 3
    assert find_line(echo, 'value = f"caught {exc.args[0]}"')["hits"] == 1
    assert find_line(echo, "received.append(value)")["hits"] == 2
    assert find_line(echo, "keep.append(received)")["hits"] == 1


# --------------------------------------------------------------------------------------------
# 6. Recursion


def test_recursion_counts_each_byte_once(run_fixture):
    depth, chunk_size = 10, 100_000
    run = run_fixture("recursion.py", depth, chunk_size)
    assert run.extra["len"] == depth
    func = run.function("build")
    assert func["calls"] == depth + 1
    assert run.stdout.count(TEXT_HEADER) == 1  # printed after the outermost call only

    cost = bytearray_cost(chunk_size)
    chunk = find_line(func, "chunk = bytearray(CHUNK)")
    rec = find_line(func, "rest = build(depth - 1)")
    assert find_line(func, "if depth == 0:")["hits"] == depth + 1
    assert find_line(func, "return []")["hits"] == 1
    assert chunk["hits"] == rec["hits"] == depth
    assert find_line(func, "rest.append(chunk)")["hits"] == depth

    between(chunk["allocated_bytes"], depth * cost, depth * cost + depth * KiB)
    between(chunk["retained_bytes"], depth * cost, depth * cost + depth * KiB)
    # The recursive line is measured over its outermost execution only: the inner levels'
    # chunks once each (depth - 1 of them), not once per enclosing level (which would be
    # ~depth**2 / 2 chunks).
    slack = depth * 2 * KiB
    between(rec["allocated_bytes"], (depth - 1) * cost, (depth - 1) * cost + slack)
    between(rec["retained_bytes"], (depth - 1) * cost, (depth - 1) * cost + slack)
    between(rec["peak_bytes"], (depth - 1) * cost, (depth - 1) * cost + slack)
    totals = func["totals"]
    between(totals["allocated_bytes"], depth * cost, depth * cost + slack)
    between(totals["retained_bytes"], depth * cost, depth * cost + slack)


def test_recursion_unwinding_through_levels(run_source):
    # From 3.12 the inner levels are calls the interpreter makes inline, opened and closed by
    # sys.monitoring's events: an exception that leaves three levels and is caught by the fourth
    # must close exactly those, and the frees of the unwinding stay on the raising line.
    program = (
        "from memsleuth import profile\n"
        "\n"
        "@profile\n"
        "def dive(depth):\n"
        "    block = bytearray(100_000)\n"
        "    if depth == 0:\n"
        "        raise ValueError(len(block))\n"
        "    if depth == 3:\n"
        "        try:\n"
        "            return dive(depth - 1)\n"
        "        except ValueError:\n"
        "            caught = bytearray(50_000)\n"
        "            return len(caught)\n"
        "    return dive(depth - 1)\n"
        "\n"
        "EXTRA = {'result': dive(6)}\n"
    )
    run = run_source(program)
    assert run.extra == {"result": 50_000}
    func = run.function("dive")
    assert func["calls"] == 7
    assert find_line(func, "caught = bytearray(50_000)")["hits"] == 1
    assert find_line(func, "raise ValueError(len(block))")["hits"] == 1
    block = find_line(func, "block = bytearray(100_000)")
    assert block["hits"] == 7
    # The traceback holds the three raising levels' frames, and so their blocks, until the
    # handler ends, after those calls ended: they are retained. The other levels' are not.
    cost = bytearray_cost(100_000)
    between(block["retained_bytes"], 3 * cost, 3 * cost + 3 * KiB)
    assert run.stdout.count(TEXT_HEADER) == 1


def test_call_from_another_thread_while_one_recurses(run_source):
    # From 3.12, while a thread recurses in a profiled function the interpreter runs every call
    # of it inline, another thread's too: that call opens at its start event, closes at its
    # return, and prints its table there.
    program = (
        "import threading\n"
        "from memsleuth import profile\n"
        "\n"
        "bottom = threading.Event()\n"
        "done = threading.Event()\n"
        "\n"
        "@profile\n"
        "def dive(depth, hold=False):\n"
        "    block = bytearray(10_000)\n"
        "    if depth == 0:\n"
        "        if hold:\n"
        "            bottom.set()\n"
        "            done.wait()\n"
        "        return len(block)\n"
        "    return dive(depth - 1, hold)\n"
        "\n"
        "def other():\n"
        "    bottom.wait()\n"
        "    dive(0)\n"
        "    done.set()\n"
        "\n"
        "t = threading.Thread(target=other)\n"
        "t.start()\n"
        "EXTRA = {'result': dive(5, hold=True)}\n"
        "t.join()\n"
    )
    run = run_source(program)
    assert run.extra == {"result": 10_000}
    func = run.function("dive")
    assert func["calls"] == 7
    assert run.stdout.count(TEXT_HEADER) == 2  # each thread's outermost call
    block = find_line(func, "block = bytearray(10_000)")
    assert block["hits"] == 7
    between(block["allocated_bytes"], 7 * bytearray_cost(10_000), 7 * bytearray_cost(10_000) + KiB)


def test_a_bound_method_is_profiled(run_source):
    # profile() of something with a code object that is no function (a bound method) profiles
    # it through the wrapper, from 3.12 too.
    program = (
        "from memsleuth import profile\n"
        "\n"
        "class A:\n"
        "    def m(self, n):\n"
        "        return [0] * n\n"
        "\n"
        "EXTRA = {'len': len(profile(A().m)(10))}\n"
    )
    run = run_source(program)
    assert run.extra == {"len": 10}
    assert run.function("A.m")["calls"] == 1


def test_the_undecorated_function_stays_unprofiled(run_source):
    # From 3.12 profile() gives a function of its own, running a copy of the code object (the
    # start events are per code object): the function it was given is not profiled, as with a
    # wrapper, and the profiled one is a function.
    program = (
        "import types\n"
        "from memsleuth import profile\n"
        "\n"
        "def f(n):\n"
        "    return [0] * n\n"
        "\n"
        "g = profile(f)\n"
        "g(10)\n"
        "for _ in range(5):\n"
        "    f(10)\n"
        "EXTRA = {'same': g is f, 'wrapped': g.__wrapped__ is f, 'function': isinstance(g, types.FunctionType)}\n"
    )
    run = run_source(program)
    assert run.extra["same"] is False and run.extra["wrapped"] is True
    assert run.extra["function"] is (sys.version_info >= (3, 12))
    assert run.function("f")["calls"] == 1


# --------------------------------------------------------------------------------------------
# 7. Nested profiled functions


def test_nested_function_of_a_recursive_function(run_source):
    # A function that calls itself by its global name lost its nested functions' tables: compiled
    # again inside an enclosing function, its own name became a free variable there, so the copy
    # no longer matched the original and the nested functions went unprofiled.
    program = (
        "from memsleuth import profile\n"
        "\n"
        "@profile\n"
        "def fact(n):\n"
        "    def helper(k):\n"
        "        return [k] * 1000\n"
        "    return 1 if n <= 1 else len(helper(1)) // 1000 * n * fact(n - 1)\n"
        "\n"
        "EXTRA = {'fact': fact(5)}\n"
    )
    run = run_source(program)
    assert run.extra == {"fact": 120}
    assert run.function("fact")["calls"] == 5
    helper = run.function("fact.<locals>.helper")
    assert helper["calls"] == 4
    assert "function: fact.<locals>.helper" in run.stdout


def test_nested_profiled_functions_inclusive(run_fixture):
    size = 1_000_000
    run = run_fixture("nested.py", size)
    assert run.extra["lens"] == [size, 2 * size]
    inner = run.function("inner")
    outer = run.function("outer")
    assert inner["calls"] == 1 and outer["calls"] == 1

    keep = find_line(inner, "keep = bytearray(size)")
    scratch = find_line(inner, "scratch = bytearray(3 * size)")
    dele = find_line(inner, "del scratch")
    between(keep["allocated_bytes"], bytearray_cost(2 * size), bytearray_cost(2 * size) + KiB)
    assert keep["retained_bytes"] == keep["allocated_bytes"] - keep["freed_bytes"]
    between(scratch["allocated_bytes"], bytearray_cost(6 * size), bytearray_cost(6 * size) + KiB)
    assert scratch["retained_bytes"] == 0
    between(dele["freed_bytes"], bytearray_cost(6 * size), bytearray_cost(6 * size) + KiB)

    mine = find_line(outer, "mine = bytearray(size)")
    call = find_line(outer, "got = inner(2 * size)")
    between(mine["allocated_bytes"], bytearray_cost(size), bytearray_cost(size) + KiB)
    # Inclusive: the calling line carries everything inner did.
    inner_total = bytearray_cost(2 * size) + bytearray_cost(6 * size)
    between(call["allocated_bytes"], inner_total, inner_total + 4 * KiB)
    between(call["freed_bytes"], bytearray_cost(6 * size), bytearray_cost(6 * size) + 4 * KiB)
    between(call["peak_bytes"], inner_total, inner_total + 4 * KiB)
    between(call["retained_bytes"], bytearray_cost(2 * size), bytearray_cost(2 * size) + 4 * KiB)
    between(outer["totals"]["allocated_bytes"], inner_total + bytearray_cost(size), inner_total + bytearray_cost(size) + 8 * KiB)

    # Each function's table after its own outermost call: inner's first.
    out = run.stdout
    assert out.count(TEXT_HEADER) == 2, out
    assert out.index("function: inner") < out.index("function: outer"), out


# --------------------------------------------------------------------------------------------
# 8. A function that raises


def _check_raised_report(run, size):
    boom = run.function("boom")
    caller = run.function("caller")
    assert boom["calls"] == 1 and caller["calls"] == 1
    data = find_line(boom, "data = bytearray(size)")
    raise_line = find_line(boom, 'raise ValueError("boom %d" % len(data))')
    assert data["hits"] == 1 and raise_line["hits"] == 1
    between(data["allocated_bytes"], bytearray_cost(2 * size), bytearray_cost(2 * size) + KiB)
    call = find_line(caller, "boom(2 * size)")
    between(call["allocated_bytes"], bytearray_cost(2 * size), bytearray_cost(2 * size) + 4 * KiB)
    # The line after the raising call never ran.
    assert [line["source"] for line in caller["lines"]] == ["before = bytearray(size)", "boom(2 * size)"]
    assert run.stdout.count(TEXT_HEADER) == 2, run.stdout
    out = run.stdout
    assert out.index("function: boom") < out.index("function: caller"), out


def test_raising_function_caught(run_fixture):
    size = 1_000_000
    run = run_fixture("raises.py", "caught", size)
    _check_raised_report(run, size)
    assert run.extra == {"caught": True}
    # Reports printed as the exception left each call, before the handler ran.
    assert run.stdout.index(TEXT_HEADER) < run.stdout.index(f"CAUGHT boom {2 * size}")


def test_raising_function_uncaught(run_fixture):
    size = 1_000_000
    run = run_fixture("raises.py", "uncaught", size, check=False)
    assert run.returncode == 1
    assert f"ValueError: boom {2 * size}" in run.stderr
    _check_raised_report(run, size)


# --------------------------------------------------------------------------------------------
# 9. Text report


ROW = re.compile(r"^\s*(\d+)\s+(-?\d+\.(\d+)) MiB\s+(-?\d+\.(\d+)) MiB\s+(\d+)\s")


def _tables(text):
    """Splits text into the tables it holds: (header line, [rows]) each."""
    tables = []
    for chunk in text.split("Filename: ")[1:]:
        lines = chunk.splitlines()
        tables.append(("Filename: " + lines[0], lines[1:]))
    return tables


def _rows_by_lineno(rows):
    out = {}
    for row in rows:
        m = re.match(r"^\s*(\d+)\s", row)
        if m:
            out[int(m.group(1))] = row
    return out


def _check_table(header, rows, func, precision, source_lines):
    assert f"function: {func['name']}" in header
    assert TEXT_HEADER in "\n".join(rows)
    by_lineno = _rows_by_lineno(rows)
    # Every source line of the function is printed, in order, with its text.
    first = func["first_lineno"]
    for offset, text in enumerate(source_lines):
        assert first + offset in by_lineno, (first + offset, rows)
        assert by_lineno[first + offset].rstrip().endswith(text.strip()), by_lineno[first + offset]
    # Lines that ran show Mem usage and Increment with `precision` decimals and their hits.
    for line in func["lines"]:
        m = ROW.match(by_lineno[line["lineno"]])
        assert m, by_lineno[line["lineno"]]
        assert len(m.group(3)) == precision and len(m.group(5)) == precision, m.group(0)
        assert int(m.group(6)) == line["hits"]
    return by_lineno


def test_text_report(run_fixture):
    run = run_fixture("text_report.py")
    out = run.stdout
    # One table after each outermost call, printed to stdout unless a stream was given.
    assert out.count(TEXT_HEADER) == 3, out
    marks = [out.index(f"MARK-{i}") for i in range(5)]
    segments = [out[marks[i]:marks[i + 1]] for i in range(4)]
    assert [s.count(TEXT_HEADER) for s in segments] == [1, 1, 1, 0], out

    plain = run.function("plain")
    precise = run.function("precise")
    plain_source = [
        "@profile",
        "def plain(flag=False):",
        "data = bytearray(2_000_000)",
        "if flag:",
        "data = None",
        "return len(data)",
    ]
    (h1, rows1), = _tables(segments[0])
    assert "calls: 1" in h1
    (h2, rows2), = _tables(segments[1])
    assert "calls: 2" in h2
    rows = _check_table(h2, rows2, plain, 1, plain_source)
    # The line that never ran has no figures: just its number and text.
    never = rows[plain["first_lineno"] + 4]
    assert re.match(r"^\s*\d+\s+data = None\s*$", never), never
    assert plain["first_lineno"] + 4 not in [line["lineno"] for line in plain["lines"]]
    data_row = ROW.match(rows[plain["first_lineno"] + 2])
    assert int(data_row.group(6)) == 2

    (h3, rows3), = _tables(segments[2])
    _check_table(h3, rows3, precise, 4, ["@profile(precision=4)", "def precise():", "data = bytearray(3_000_000)", "return len(data)"])
    # The Mem usage column of a line that allocated 3 MB shows the RSS in MiB with 4 decimals.
    data = find_line(precise, "data = bytearray(3_000_000)")
    m = ROW.match(_rows_by_lineno(rows3)[data["lineno"]])
    assert abs(float(m.group(2)) - data["rss_after_bytes"] / 2**20) < 0.0001, (m.group(0), data)
    assert abs(float(m.group(4)) - data["rss_delta_bytes"] / 2**20) < 0.0001, (m.group(0), data)

    # stream=f: the table went to f and not to stdout.
    side = run.extra["side"]
    assert side.count(TEXT_HEADER) == 1, side
    assert "function: streamed" in side
    assert "function: streamed" not in out
    streamed = run.function("streamed")
    (h4, rows4), = _tables(side)
    _check_table(h4, rows4, streamed, 1, ["@profile(stream=side)", "def streamed():", "data = bytearray(1_000_000)", "return len(data)"])


# --------------------------------------------------------------------------------------------
# 10. Methods


def test_methods_and_static_and_class_methods(run_fixture):
    size = 1_000_000
    run = run_fixture("methods.py", size)
    assert run.extra == {"items": 2, "made": [size] * 4, "built": ["Store", "Store"]}
    cost = bytearray_cost(size)

    add = run.function("Store.add")
    assert add["calls"] == 2
    line = find_line(add, "self.items.append(bytearray(size))")
    assert line["hits"] == 2
    between(line["allocated_bytes"], 2 * cost, 2 * cost + 2 * KiB)
    between(line["retained_bytes"], 2 * cost, 2 * cost + 2 * KiB)

    for name in ("Store.make", "Store.make_outer"):  # @profile under and over @staticmethod
        func = run.function(name)
        assert func["calls"] == 2, name
        block = find_line(func, "block = bytearray(size)")
        assert block["hits"] == 2
        between(block["allocated_bytes"], 2 * cost, 2 * cost + 2 * KiB)
        assert find_line(func, "return block")["allocated_bytes"] == 0

    for name in ("Store.build", "Store.build_outer"):  # @profile under and over @classmethod
        func = run.function(name)
        assert func["calls"] == 1, name
        append = find_line(func, "store.items.append(bytearray(size))")
        between(append["allocated_bytes"], cost, cost + KiB)
        assert find_line(func, "store = cls()")["hits"] == 1

    # One table per outermost call: 2 + 2 + 2 + 1 + 1.
    assert run.stdout.count(TEXT_HEADER) == 8


# --------------------------------------------------------------------------------------------
# The profiler's own allocations stay out of every figure (docs/design.md, Figures).


def test_lines_past_256_allocate_nothing_of_their_own(run_source):
    # On 3.12 the LINE callback receives a freshly allocated int for line numbers above 256.
    program = "\n" * 300 + (
        "from memsleuth import profile\n"
        "\n"
        "@profile\n"
        "def f():\n"
        "    x = 1\n"
        "    data = bytearray(1000)\n"
        "    y = 2\n"
        "    for i in range(3):\n"
        "        z = i\n"
        "    return data\n"
        "\n"
        "f()\n"
    )
    run = run_source(program)
    func = run.function("f")
    assert func["first_lineno"] > 300
    # (The loop header allocates the range and its iterator: it is not in this list.)
    for source in ("x = 1", "y = 2", "z = i", "return data"):
        line = find_line(func, source)
        assert line["allocated_bytes"] == 0 and line["allocations"] == 0, line
    for source in ("x = 1", "y = 2", "z = i"):
        assert find_line(func, source)["freed_bytes"] == 0
    data = find_line(func, "data = bytearray(1000)")
    assert data["allocated_bytes"] == bytearray_cost(1000) and data["allocations"] == 2, data


def test_own_frame_objects_not_counted(run_fixture):
    # On 3.11 the C trace function makes the interpreter create a frame object for each call and
    # a line array for each code object it first traces: they are the profiler's.
    run = run_fixture("frame_only.py")
    assert run.extra == {"sum": 7}
    for name in ("small", "locals_only", "keyword", "caller"):
        func = run.function(name)
        for line in func["lines"]:
            assert line["freed_bytes"] == 0 and line["frees"] == 0, (name, line)
    for name in ("small", "locals_only", "keyword"):
        func = run.function(name)
        assert func["calls"] == 2
        for line in func["lines"]:
            assert line["allocated_bytes"] == 0, (name, line)
        assert func["totals"]["allocated_bytes"] == 0, (name, func["totals"])


def test_nested_call_charges_nothing_for_the_wrapper(run_fixture):
    run = run_fixture("frame_only.py")
    caller = run.function("caller")
    assert caller["calls"] == 1
    # small(), locals_only() and keyword() allocate nothing, so neither does a line that only
    # calls them (the argument tuple and keyword dict the interpreter builds for the call are
    # the wrapper's).
    for source in ("x = small()", "y = locals_only()", "z = keyword(n=0)", "return x + y + z"):
        line = find_line(caller, source)
        assert line["allocated_bytes"] == 0, line


# --------------------------------------------------------------------------------------------
# An invariant of the figures (docs/design.md): over one non-recursive call whose lines run sequentially, the lines'
# RSS increments add up to RSS at the call's end minus RSS at its start; no change is dropped.


def test_rss_increments_add_up_to_the_calls_change(run_fixture):
    n = 5_000_000
    run = run_fixture("varargs_rss.py", n)
    assert run.extra == {"n": n}
    func = run.function("count")
    assert func["calls"] == 1
    teardown = func["teardown"]
    # The tuple was unmapped when the frame went (so RSS really moved, in the frame's teardown
    # after `return n`, which frees nothing itself).
    assert teardown["freed_bytes"] >= 8 * n
    assert teardown["rss_delta_bytes"] <= -8 * n * 0.9
    assert find_line(func, "return n")["freed_bytes"] < 1024
    total = sum(line["rss_delta_bytes"] for line in func["lines"]) + teardown["rss_delta_bytes"]
    assert total == func["totals"]["rss_delta_bytes"], (
        [(line["source"], line["rss_delta_bytes"]) for line in func["lines"]],
        teardown["rss_delta_bytes"],
        func["totals"]["rss_delta_bytes"],
    )


def _annotated(a: int, *, b: "str" = "x") -> list:
    """Documented."""


_annotated.extra = {"kept": True}


class _Callable:
    """A callable object without __name__ or __qualname__."""

    def __call__(self):
        pass


def test_the_decorators_update_wrapper_is_functools():
    """memsleuth copies a function's names as functools.update_wrapper does, without importing
    functools into the profiled program (docs/design.md, "The books live in the sink")."""
    import functools

    from memsleuth import _profile

    wrapped_ones = [_annotated, _Callable(), len, functools.partial(print, "a")]
    if sys.version_info >= (3, 12):
        namespace = {}
        exec("def generic[T](x: T) -> T:\n    return x\n", namespace)
        wrapped_ones.append(namespace["generic"])
    for wrapped in wrapped_ones:
        ours, theirs = (update(lambda: None, wrapped) for update in (_profile.update_wrapper, functools.update_wrapper))
        names = set(vars(ours)) | set(vars(theirs)) | set(functools.WRAPPER_ASSIGNMENTS)
        assert {n: getattr(ours, n, None) for n in names} == {n: getattr(theirs, n, None) for n in names}, wrapped


def test_the_weak_set_of_profiled_functions_forgets_what_is_gone():
    from memsleuth import _profile

    seen = _profile.WeakSet()

    def f():
        pass

    seen.add(f)
    assert f in seen and (lambda: None) not in seen and [] not in seen and 3 not in seen
    del f
    gc.collect()
    assert not seen._refs
