"""A profiled function's own code object, with each line opened by a NOP (CPython 3.12, 3.13).

Under sys.monitoring's LINE events, the interpreter wraps the first instruction of every line in
INSTRUMENTED_LINE, which runs that instruction's generic form and keeps it from specializing: a
loop body opening with ``LOAD_GLOBAL str`` looks ``str`` up in two dicts on every iteration, and
the loop's ``FOR_ITER`` runs generic. The copy made here starts each line (and each jump or
handler target) with a NOP of the same location, so the NOP is what gets wrapped, and the line's
real first instruction specializes as it does without a profiler. The events are the same: the
NOP has the line, the location and the predecessor its instruction had (docs/design.md, "Line
events on 3.12 and 3.13").

Opcodes are written out per version rather than read from ``opcode`` (which a profiled program
must not be made to import); tests compare them with ``opcode``'s. Only plain functions are
rewritten (generators and coroutines have jumps with other rules); code whose jumps or handlers
do not land where these tables say leaves the code as it was.
"""

import sys


class _Opcodes:
    """One CPython version's opcodes, as far as the rewrite needs them."""

    def __init__(self, nop, resume, extended_arg, end_for, for_iter, forward, backward, other, caches, after_end_for):
        self.nop, self.resume, self.extended_arg, self.end_for, self.for_iter = nop, resume, extended_arg, end_for, for_iter
        #: Relative jumps, by direction (FOR_ITER, JUMP_FORWARD and the POP_JUMP_IFs forward;
        #: JUMP_BACKWARD and JUMP_BACKWARD_NO_INTERRUPT back).
        self.forward, self.backward = frozenset(forward), frozenset(backward)
        #: SEND, of generators and coroutines, which are never rewritten.
        self.other = frozenset(other)
        #: Inline cache entries after each instruction that has them.
        self.caches = caches
        #: Instructions after a loop's END_FOR that an exhausted FOR_ITER skips with it.
        self.after_end_for = after_end_for


_TABLES = {
    (3, 12): _Opcodes(nop=9, resume=151, extended_arg=144, end_for=4, for_iter=93,
                      forward=(93, 110, 114, 115, 128, 129), backward=(140, 134), other=(123,),
                      caches={25: 1, 60: 1, 92: 1, 93: 1, 95: 4, 106: 9, 107: 1, 116: 4, 122: 1, 123: 1, 141: 1,
                              171: 3},
                      after_end_for=0),
    # END_FOR is followed by a POP_TOP, skipped too; the conditional jumps and JUMP_BACKWARD
    # have a cache entry.
    (3, 13): _Opcodes(nop=30, resume=149, extended_arg=71, end_for=11, for_iter=72,
                      forward=(72, 79, 97, 98, 99, 100), backward=(77, 78), other=(104,),
                      caches={91: 4, 45: 1, 117: 1, 58: 1, 59: 1, 5: 1, 72: 1, 93: 1, 82: 9, 108: 4, 53: 3, 39: 1,
                              104: 1, 77: 1, 40: 3, 100: 1, 97: 1, 98: 1, 99: 1},
                      after_end_for=1),
}

#: This interpreter's opcodes; None where the rewrite does not apply.
OPCODES = _TABLES.get(sys.version_info[:2])

CO_GENERATOR, CO_COROUTINE, CO_ITERABLE_COROUTINE, CO_ASYNC_GENERATOR = 0x20, 0x80, 0x100, 0x200


def with_line_nops(code):
    """A copy of ``code`` whose lines each open with a NOP, or None where it does not apply."""
    if OPCODES is None or code.co_flags & (CO_GENERATOR | CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR):
        return None
    found = _units(code.co_code, OPCODES)
    if found is None:
        return None
    units, by_start = found
    handlers = _parse_exception_table(code.co_exceptiontable)
    positions = list(code.co_positions())
    starts = _line_starts(units, by_start, handlers, positions, OPCODES)
    if starts is None:
        return None
    layout = _layout(code.co_code, units, starts, positions, OPCODES)
    if layout is None:
        return None
    new_code, located, where = layout
    moved = {unit.start: at for unit, at in zip(units, where)}
    moved[len(code.co_code) // 2] = len(new_code) // 2
    return code.replace(
        co_code=new_code,
        co_linetable=_location_table(code.co_firstlineno, located),
        co_exceptiontable=_exception_table(handlers, moved),
    )


class _Unit:
    """One instruction: its EXTENDED_ARG prefixes, opcode, argument and inline caches."""

    __slots__ = ("start", "prefixes", "op", "arg", "caches", "target")

    def __init__(self, start, prefixes, op, arg, caches):
        self.start, self.prefixes, self.op, self.arg, self.caches = start, prefixes, op, arg, caches
        #: For a jump, the unit index it lands on.
        self.target = None

    @property
    def end(self):
        return self.start + self.prefixes + 1 + self.caches


def _units(co_code, ops):
    """The instructions of ``co_code`` (in code units of two bytes), their jumps resolved to the
    unit they land on, and each one's index by the code unit it starts at; None if a jump is of a
    kind not rewritten here, or lands elsewhere than at an instruction."""
    units = []
    by_start = {}
    i, n = 0, len(co_code) // 2
    while i < n:
        start, prefixes, arg = i, 0, 0
        op = co_code[2 * i]
        while op == ops.extended_arg:
            arg = (arg | co_code[2 * i + 1]) << 8
            prefixes += 1
            i += 1
            op = co_code[2 * i]
        arg |= co_code[2 * i + 1]
        unit = _Unit(start, prefixes, op, arg, ops.caches.get(op, 0))
        by_start[start] = len(units)
        units.append(unit)
        i = unit.end
    for unit in units:
        if unit.op in ops.other:
            return None
        if unit.op in ops.forward or unit.op in ops.backward:
            lands = unit.end + unit.arg if unit.op in ops.forward else unit.end - unit.arg
            if unit.op == ops.for_iter:
                # An exhausted iterator skips the END_FOR its argument points at (and on 3.13
                # the POP_TOP after it), each one code unit.
                end_for = by_start.get(lands)
                skipped = units[end_for:end_for + 1 + ops.after_end_for] if end_for is not None else []
                if len(skipped) != 1 + ops.after_end_for or skipped[0].op != ops.end_for or any(
                        u.end - u.start != 1 for u in skipped):
                    return None
                lands = skipped[-1].end
            unit.target = by_start.get(lands)
            if unit.target is None:
                return None
    return units, by_start


def _line_starts(units, by_start, handlers, positions, ops):
    """Indexes of the units to open with a NOP: each that starts a line, is a jump's landing or
    an exception handler, after the function's RESUME (before it nothing is instrumented)."""
    resume = next((k for k, unit in enumerate(units) if unit.op == ops.resume), None)
    if resume is None:
        return None
    starts = {unit.target for unit in units if unit.target is not None}
    for start, end, target, _depth, _lasti in handlers:
        if not (start in by_start and (end in by_start or end == units[-1].end) and target in by_start):
            return None
        starts.add(by_start[target])
    last_line = None
    for k, unit in enumerate(units):
        line = positions[unit.start][0]
        if line is not None and line != last_line:
            starts.add(k)
            last_line = line
    # An exhausted FOR_ITER skips its loop's END_FOR (and what follows it on 3.13) to land right
    # after: nothing may come between.
    skipped = {k + n for k, unit in enumerate(units) if unit.op == ops.end_for for n in range(1 + ops.after_end_for)}
    return {k for k in starts if k > resume and k not in skipped}


def _layout(co_code, units, starts, positions, ops):
    """The new bytecode, the location of each of its code units, and where each old unit now
    starts (its NOP, if it has one); None if a jump would have to go the other way."""
    prefixes = [unit.prefixes for unit in units]
    while True:
        where, at = [], 0
        for k, unit in enumerate(units):
            where.append(at)
            at += (k in starts) + prefixes[k] + 1 + unit.caches
        args, grown = [], False
        for k, unit in enumerate(units):
            if unit.target is None:
                args.append(unit.arg)
                continue
            after = where[k] + (k in starts) + prefixes[k] + 1 + unit.caches
            lands = where[unit.target]
            if unit.op == ops.for_iter:
                lands -= 1 + ops.after_end_for  # back to the END_FOR, which never gets a NOP
            arg = lands - after if unit.op in ops.forward else after - lands
            if arg < 0:
                return None
            needed = (arg.bit_length() - 1) // 8 if arg else 0
            if needed > prefixes[k]:
                prefixes[k] = needed  # and lay it all out again: the jumps over it grew
                grown = True
            args.append(arg)
        if not grown:
            break
    code, located = bytearray(), []
    for k, unit in enumerate(units):
        first = positions[unit.start]
        if k in starts:
            code += bytes((ops.nop, 0))
            located.append(first)
        added = prefixes[k] - unit.prefixes
        located += [first] * added + positions[unit.start:unit.end]
        arg = args[k]
        for shift in range(prefixes[k], 0, -1):
            code += bytes((ops.extended_arg, arg >> (8 * shift) & 0xFF))
        code += bytes((unit.op, arg & 0xFF))
        op_at = unit.start + unit.prefixes
        code += co_code[2 * (op_at + 1):2 * unit.end]
    return bytes(code), located, where


def _parse_exception_table(table):
    """(start, end, target, depth, lasti) of each entry, in code units."""
    entries, i = [], 0

    def item():
        nonlocal i
        byte = table[i]
        i += 1
        value = byte & 63
        while byte & 64:
            byte = table[i]
            i += 1
            value = value << 6 | byte & 63
        return value

    while i < len(table):
        start, length, target, depth_lasti = item(), item(), item(), item()
        entries.append((start, start + length, target, depth_lasti >> 1, depth_lasti & 1))
    return entries


def _exception_item(out, value, first):
    """Appends one number of an exception table entry: 6-bit groups, most significant first,
    0x40 on all but the last, 0x80 on an entry's first byte."""
    groups = [value & 63]
    value >>= 6
    while value:
        groups.append(value & 63)
        value >>= 6
    for n, group in enumerate(reversed(groups)):
        out.append(group | (64 if n < len(groups) - 1 else 0) | (128 if first and n == 0 else 0))


def _exception_table(handlers, moved):
    """The exception table of ``handlers`` (as parsed) with their offsets moved (``moved``: old
    offset -> new)."""
    out = bytearray()
    for start, end, target, depth, lasti in handlers:
        start, end, target = moved[start], moved[end], moved[target]
        _exception_item(out, start, True)
        _exception_item(out, end - start, False)
        _exception_item(out, target, False)
        _exception_item(out, depth << 1 | lasti, False)
    return bytes(out)


def _varint(out, value):
    """A location table number: 6-bit groups, least significant first, 0x40 on all but the last."""
    while value >= 64:
        out.append(64 | value & 63)
        value >>= 6
    out.append(value)


def _location_table(first_line, located):
    """A location table (3.11+ format) giving each code unit its (line, end line, column, end
    column), in the long form throughout, or the no-location form; runs of up to eight equal
    code units share an entry."""
    out, line, k = bytearray(), first_line, 0
    while k < len(located):
        run = 1
        while run < 8 and k + run < len(located) and located[k + run] == located[k]:
            run += 1
        start, end, column, end_column = located[k]
        if start is None:
            out.append(0x80 | 15 << 3 | run - 1)
        else:
            out.append(0x80 | 14 << 3 | run - 1)
            delta = start - line
            _varint(out, -delta << 1 | 1 if delta < 0 else delta << 1)
            _varint(out, (start if end is None else end) - start)
            _varint(out, 0 if column is None else column + 1)
            _varint(out, 0 if end_column is None else end_column + 1)
            line = start
        k += run
    return bytes(out)
