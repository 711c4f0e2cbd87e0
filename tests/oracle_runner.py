"""Subprocess side of test_oracle.py: runs one generated program under tracemalloc and memsleuth
in the same interpreter and prints both per-line figures as JSON on stdout.

    python oracle_runner.py PROGRAM.py [--stock]

PROGRAM.py defines ``KEEP`` (a module-level list) and one function ``prog`` decorated with
``@profile``; it is imported as a module (not run as ``__main__``), so the only code of that file
that ever runs is its module level (imports, ``KEEP = []``, the ``def``) and the body of
``prog``. ``prog`` is called once; what it returns is kept alive until both figures have been
read, and nothing runs between its return and tracemalloc's snapshot that could free a block.

Order matters: tracemalloc starts before memsleuth is imported or used. The other way round,
tracemalloc's own bookkeeping would go through memsleuth's raw-domain hook.

Free lists. tracemalloc does not only record allocator calls: since CPython 3.8 (bpo-35053,
python/cpython#10063), ``_Py_NewReference`` calls ``_PyTraceMalloc_NewReference`` whenever an
object is handed out, including when a free list (tuple, list, dict, float, slice cache, 3.9
frames, ...) hands one out without any allocator call, and that *moves* the existing trace of
the object's block to the current line. memsleuth counts allocator calls only (docs/design.md, Figures: a free-list
hand-out counts nothing), so a block first allocated on line A, parked on a free list and
handed out again on line B is retained by line A for memsleuth and by line B for stock
tracemalloc; a block allocated before the call and handed out by a free list on line B is
nothing for memsleuth and B's for stock tracemalloc. That is a difference in what is measured,
not an error of either side, so the oracle switches the re-attribution off while the program
runs, by clearing the ``tracing`` field of tracemalloc's config: ``_Py_NewReference`` reads it
before re-attributing, while tracemalloc's allocator hooks, which stay installed, do not read it
and go on tracing every allocator call with the current line. The field is found by watching it
change as tracemalloc is started and stopped (``_Py_tracemalloc_config`` before 3.12, a member
of ``_PyRuntime`` from 3.12) and is set again before anything reads tracemalloc's tables or the
interpreter shuts down (tracemalloc only removes its hooks at exit if it sees it set).
``--stock`` leaves it on, to show the difference.

Line arrays (3.11). The first time a trace function sees a code object run, 3.11 allocates the
code object's line array (two bytes per code unit while line numbers fit 16 bits), which the
code object keeps. It exists only because memsleuth traces, so memsleuth counts it as its own,
while tracemalloc sees it on the line the code object starts on. The runner removes one block
of that size from that line for each comprehension ``prog`` runs (``prog``'s own array goes to
its ``def`` line, which is not compared).
"""

import ctypes
import gc
import importlib.util
import json
import sys
import tracemalloc

import _tracemalloc

_SCAN_BYTES = 32 * 1024


def _ints(address, nbytes):
    return memoryview(ctypes.string_at(address, nbytes)).cast("i").tolist()


def find_tracing_flag():
    """The ``tracing`` int of tracemalloc's config, as a ctypes c_int. Leaves tracemalloc
    started with 1 frame. Must run before tracemalloc is first started."""
    assert not tracemalloc.is_tracing(), "tracemalloc must not be running yet"
    api = ctypes.pythonapi
    try:
        base = ctypes.addressof(ctypes.c_int.in_dll(api, "_Py_tracemalloc_config"))
        nbytes = 12  # struct {int initialized; int tracing; int max_nframe;}
    except ValueError:
        base = ctypes.addressof(ctypes.c_char.in_dll(api, "_PyRuntime"))
        nbytes = _SCAN_BYTES
    # (tracing, max_nframe) in each state; 7 frames is an arbitrary distinctive value.
    states = []
    states.append(_ints(base, nbytes))
    tracemalloc.start(1)
    states.append(_ints(base, nbytes))
    tracemalloc.stop()
    states.append(_ints(base, nbytes))
    tracemalloc.start(7)
    states.append(_ints(base, nbytes))
    tracemalloc.stop()
    states.append(_ints(base, nbytes))
    tracemalloc.start(1)
    states.append(_ints(base, nbytes))
    expected_tracing = [0, 1, 0, 1, 0, 1]
    candidates = []
    for i in range(len(states[0]) - 2):
        if [s[i + 1] for s in states] != expected_tracing:
            continue
        if (states[1][i + 2], states[3][i + 2], states[5][i + 2]) != (1, 7, 1):
            continue
        if any(s[i] != 1 for s in states[1:]):  # initialized
            continue
        candidates.append(i)
    if len(candidates) != 1:
        raise RuntimeError(f"cannot locate tracemalloc's tracing flag: candidates {candidates}")
    flag = ctypes.c_int.from_address(base + 4 * (candidates[0] + 1))
    assert flag.value == 1 and tracemalloc.is_tracing()
    return flag


def nested_code(code):
    """The code objects defined inside ``code`` (its comprehensions), at any depth."""
    for const in code.co_consts:
        if isinstance(const, type(code)):
            yield const
            yield from nested_code(const)


def main():
    path = sys.argv[1]
    stock = "--stock" in sys.argv[2:]
    flag = find_tracing_flag()
    assert tracemalloc.get_traceback_limit() == 1

    import memsleuth  # after tracemalloc, see the module docstring
    from memsleuth import _profile

    # No text report after the call: rendering it would run Python code between the return and
    # the snapshot, which could take a block the program left on a free list and free it.
    _profile.deferred = True

    spec = importlib.util.spec_from_file_location("oracle_program", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # applies @profile: memsleuth starts tracking here

    # A full collection empties the free lists, so that more of what the program creates is a
    # real allocation: more for both sides to see.
    gc.collect()
    if not stock:
        flag.value = 0
    try:
        kept = module.prog()
    except BaseException:
        # tracemalloc must be seen tracing at exit: its shutdown only removes its hooks if so.
        flag.value = 1
        raise
    # Nothing that could free a block may run between the return and the copy of tracemalloc's
    # table. The copy itself starts with PyList_New(0), whose list header comes from the list
    # free list (at most 80 entries) and, with re-attribution back on, would carry that block's
    # trace away from the program's line: empty that free list first, re-attribution still off.
    drained = []
    for _ in range(100):
        drained.append([])
    flag.value = 1
    raw_traces = _tracemalloc._get_traces()
    snapshot = tracemalloc.Snapshot(raw_traces, 1)
    report = memsleuth.last_report()

    mine = snapshot.filter_traces([tracemalloc.Filter(True, spec.origin)])
    by_line = {}
    for trace in mine.traces:
        by_line.setdefault(trace.traceback[0].lineno, []).append(trace.size)
    if sys.version_info[:2] == (3, 11):
        for code in nested_code(module.prog.__wrapped__.__code__):
            by_line[code.co_firstlineno].remove(len(code.co_code))
    (function,) = [f for f in report["functions"] if f["name"] == "prog"]
    result = {
        "python": sys.version.split()[0],
        "first_lineno": function["first_lineno"],
        "calls": function["calls"],
        "tracemalloc": {str(k): sorted(v, reverse=True) for k, v in by_line.items()},
        "memsleuth": {str(line["lineno"]): line for line in function["lines"]},
    }
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()
    del kept, drained


if __name__ == "__main__":
    main()
