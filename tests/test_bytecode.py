"""The code copies whose lines open with a NOP (python/memsleuth/_bytecode.py, 3.12 and 3.13):
the same instructions, locations, exception handlers, results and line events as the code they
copy, and the line's real first instruction free to specialize."""

import dis
import opcode
import subprocess
import sys
import sysconfig
import textwrap
import types
from pathlib import Path

import pytest

from memsleuth import _bytecode

pytestmark = pytest.mark.skipif(_bytecode.OPCODES is None, reason="the rewrite is for 3.12's and 3.13's bytecode")

ROOT = Path(__file__).resolve().parent.parent


def test_the_opcodes_written_out_are_this_interpreters():
    ops = _bytecode.OPCODES
    names = {"nop": "NOP", "resume": "RESUME", "extended_arg": "EXTENDED_ARG", "end_for": "END_FOR",
             "for_iter": "FOR_ITER"}
    assert {attr: getattr(ops, attr) for attr in names} == {attr: opcode.opmap[name] for attr, name in names.items()}
    forward = {"FOR_ITER", "JUMP_FORWARD", "POP_JUMP_IF_FALSE", "POP_JUMP_IF_TRUE", "POP_JUMP_IF_NONE",
               "POP_JUMP_IF_NOT_NONE"}
    assert ops.forward == {opcode.opmap[name] for name in forward}
    assert ops.backward == {opcode.opmap["JUMP_BACKWARD"], opcode.opmap["JUMP_BACKWARD_NO_INTERRUPT"]}
    assert ops.other == {opcode.opmap["SEND"]}
    # Every real relative jump is one of them (JUMP and JUMP_NO_INTERRUPT, 256 and up, are the
    # compiler's pseudo-instructions).
    assert {op for op in opcode.hasjrel if op < 256} == ops.forward | ops.backward | ops.other
    assert not opcode.hasjabs
    entries = opcode._inline_cache_entries
    by_op = entries.items() if isinstance(entries, dict) else ((opcode.opname[op], n) for op, n in enumerate(entries))
    assert ops.caches == {opcode.opmap[name]: n for name, n in by_op if n and name in opcode.opmap}


def code_objects(code):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from code_objects(const)


def corpus():
    """Every code object of the test suite, memsleuth's package and some of the standard
    library: loops, handlers, with blocks, match statements, comprehensions, long functions."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(ROOT.glob("tests/*.py")) + sorted((ROOT / "python" / "memsleuth").glob("*.py"))
    paths += [stdlib / name for name in ("argparse.py", "difflib.py", "json/decoder.py", "tarfile.py", "ast.py",
                                         "dataclasses.py", "inspect.py", "re/_parser.py", "pydoc.py")]
    for path in paths:
        yield from code_objects(compile(path.read_bytes(), str(path), "exec"))


def without_nops(code):
    """The instructions of ``code`` but its NOPs and EXTENDED_ARGs, each as (name, argument,
    location), a jump's argument being the index of the instruction it lands on, and the
    exception table by the same indexes."""
    instructions = list(dis.get_instructions(code))
    kept = [k for k, ins in enumerate(instructions) if ins.opname not in ("NOP", "EXTENDED_ARG")]
    # Each offset's index among the kept instructions: its own, or the next one's.
    index_at = {len(code.co_code): len(kept)}
    following = len(kept)
    position = {k: n for n, k in enumerate(kept)}
    for k in reversed(range(len(instructions))):
        following = position.get(k, following)
        index_at[instructions[k].offset] = following

    def at_or_after(offset):
        return index_at[offset] if offset in index_at else index_at[min(o for o in index_at if o > offset)]

    listed = []
    for k in kept:
        ins = instructions[k]
        arg = at_or_after(ins.argval) if ins.opcode in dis.hasjrel else ins.argval
        listed.append((ins.opname, repr(arg), ins.positions))
    handlers = [(at_or_after(e.start), at_or_after(e.end), at_or_after(e.target), e.depth, e.lasti)
                for e in dis._parse_exception_table(code)]
    return listed, handlers


def test_every_copy_keeps_its_instructions_locations_and_handlers():
    rewritten = 0
    for code in corpus():
        copy = _bytecode.with_line_nops(code)
        if copy is None:
            flags = _bytecode.CO_GENERATOR | _bytecode.CO_COROUTINE | _bytecode.CO_ASYNC_GENERATOR
            assert code.co_flags & flags, code
            continue
        rewritten += 1
        assert without_nops(copy) == without_nops(code), code
        assert {line for _, _, line in copy.co_lines()} == {line for _, _, line in code.co_lines()}, code
    assert rewritten > 1500


def test_every_line_of_a_copy_opens_with_a_nop():
    def loop(n):
        total = 0
        for i in range(n):
            total += len(str(i))
        return total

    copy = _bytecode.with_line_nops(loop.__code__)
    instructions = list(dis.get_instructions(copy))
    # 3.13's starts_line is a bool, 3.12's the line or None.
    starts = [ins.opname for ins in instructions if ins.starts_line not in (None, False) or ins.is_jump_target]
    # dis counts FOR_ITER's END_FOR as a target, but the loop's exit lands past it, on a NOP.
    assert starts[0] == "RESUME" and set(starts[1:]) == {"NOP", "END_FOR"}, starts
    assert starts.count("NOP") == 5, starts  # three lines, the loop's head, its exit


CASES = textwrap.dedent("""\
    import contextlib

    def loops(n):
        total = 0
        for i in range(n):
            if i % 3 == 0:
                continue
            if i > 40:
                break
            total += i
        else:
            total = -total
        while n > 0:
            n -= 7
        return total, n

    def handlers(n):
        log = []
        try:
            try:
                log.append(10 // (n - 2))
            except ZeroDivisionError as e:
                log.append(type(e).__name__)
                if n == 2:
                    raise KeyError(n)
            finally:
                log.append("finally")
        except KeyError:
            log.append("key")
        for i in range(3):
            try:
                if i == n:
                    break
            finally:
                log.append(i)
        return log

    def returns_in_finally(n):
        try:
            return n * 2
        finally:
            if n == 1:
                return "overridden"

    def withs(n):
        seen = []
        with contextlib.suppress(ValueError):
            seen.append(int("x" if n else "3"))
        with contextlib.ExitStack() as stack:
            stack.callback(seen.append, "closed")
            seen.append(n)
        return seen

    def matches(value):
        match value:
            case 0 | 1:
                return "small"
            case [x, *rest] if x > 0:
                return ("list", x, rest)
            case {"k": v}:
                return ("dict", v)
            case str() as s:
                return s.upper()
            case _:
                return None

    def comprehensions(n):
        squares = [x * x for x in range(n) if x % 2]
        pairs = {x: [y for y in range(x)] for x in range(n)}
        gen = sum(x for x in range(n))
        return squares, pairs, gen, (lambda: n)()

    def short_circuits(a, b):
        first = a and b or (a if b else not a)
        if (y := a or b) and not (a and b):
            first = (first, y)
        assert a is not None, "a is None"
        return (first,
                a
                and
                b)

    def closures(n):
        counter = 0
        def bump():
            nonlocal counter
            counter += n
            return counter
        bump()
        return bump(), [bump for _ in range(2)][0]()

    def raises(n):
        values = {}
        for i in range(n):
            values[i] = str(i)
        return values[n]
    """)

INPUTS = {
    "loops": [(0,), (5,), (60,)],
    "handlers": [(0,), (1,), (2,), (3,)],
    "returns_in_finally": [(1,), (2,)],
    "withs": [(0,), (1,)],
    "matches": [(0,), ([2, 3],), ([-1],), ({"k": 4},), ("s",), (2.5,)],
    "comprehensions": [(0,), (5,)],
    "short_circuits": [(0, 1), (1, 0), (1, 1), (0, 0), (None, 1)],
    "closures": [(3,)],
    "raises": [(3,)],
}


def outcome(func, args):
    try:
        return ("returned", func(*args))
    except BaseException as e:  # noqa: BLE001 - any outcome is compared
        return ("raised", type(e).__name__, str(e))


def line_events(func, args, code):
    """What ``func(*args)`` does and the LINE events of ``code`` it makes, by line."""
    mon = sys.monitoring
    tool = next(t for t in range(6) if mon.get_tool(t) is None)
    mon.use_tool_id(tool, "test_bytecode")
    lines = []
    try:
        mon.register_callback(tool, mon.events.LINE, lambda c, line: lines.append(line) if c is code else None)
        mon.set_local_events(tool, code, mon.events.LINE)
        result = outcome(func, args)
    finally:
        mon.set_local_events(tool, code, 0)
        mon.register_callback(tool, mon.events.LINE, None)
        mon.free_tool_id(tool)
    return result, lines


def test_a_copy_returns_raises_and_reports_lines_as_the_code_it_copies():
    namespace = {}
    exec(compile(CASES, "<cases>", "exec"), namespace)
    for name, inputs in INPUTS.items():
        func = namespace[name]
        copy = _bytecode.with_line_nops(func.__code__)
        assert copy is not None, name
        twin = types.FunctionType(copy, func.__globals__, name, func.__defaults__, func.__closure__)
        for args in inputs:
            # Twice each: the second run meets specialized instructions.
            for _ in range(2):
                expected = line_events(func, args, func.__code__)
                assert line_events(twin, args, copy) == expected, (name, args)
                assert outcome(twin, args) == outcome(func, args), (name, args)


def test_a_jump_whose_argument_outgrows_a_byte_gets_an_extended_arg():
    body = "".join(f"        x = x + {k}\n" for k in range(45))
    source = f"def long_loop(n):\n    x = 0\n    for i in range(n):\n{body}    return x\n"
    namespace = {}
    exec(source, namespace)
    func = namespace["long_loop"]
    jump = next(ins for ins in dis.get_instructions(func) if ins.opname == "JUMP_BACKWARD")
    assert 128 < jump.arg < 256  # one byte now, past it with a NOP on each of the 45 lines
    copy = _bytecode.with_line_nops(func.__code__)
    instructions = list(dis.get_instructions(copy))
    k = next(k for k, ins in enumerate(instructions) if ins.opname == "JUMP_BACKWARD")
    assert instructions[k].arg > 255 and instructions[k - 1].opname == "EXTENDED_ARG"
    twin = types.FunctionType(copy, namespace, "long_loop")
    assert twin(3) == func(3) == 3 * sum(range(45))
    assert line_events(twin, (2,), copy) == line_events(func, (2,), func.__code__)


def test_the_first_instruction_of_a_profiled_line_specializes(tmp_path):
    """Under the LINE events memsleuth asks for, a line's first instruction runs generic (the
    interpreter wraps it); in memsleuth's copy the NOP is wrapped and ``str`` is found by the
    specialized LOAD_GLOBAL_BUILTIN."""
    program = tmp_path / "program.py"
    program.write_text(textwrap.dedent("""\
        import dis, io
        from memsleuth import profile, _profile

        def work():
            kept = []
            for i in range(2000):
                kept.append(str(i))
            return kept

        profiled = profile(stream=io.StringIO())(work)
        profiled()
        copy = _profile._code_copies[work.__code__]
        print(" ".join(sorted({ins.opname for ins in dis.get_instructions(copy, adaptive=True)})))
        """))
    proc = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    names = set(proc.stdout.split())
    assert "LOAD_GLOBAL_BUILTIN" in names, names
    assert "FOR_ITER_RANGE" in names, names
