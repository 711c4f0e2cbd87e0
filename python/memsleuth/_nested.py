"""Functions defined inside a profiled function are profiled too, each with a table of its own.

A nested function is made anew each time its ``def`` runs, from a code object stored in the
enclosing function's constants, so there is no object to wrap beforehand. Instead the enclosing
function is compiled again from its source with a decorator added, innermost, to every ``def``
inside it (at any depth): the decorator profiles each function as it is made. The new code
object keeps the original's file, line numbers, columns, flags, free variables and qualified
names, so tracebacks and introspection read as before. When the source cannot be read, or the
compiled code does not match the original's shape, the function is profiled without its nested
functions.
"""

import __future__
import builtins
import sys
import types

from . import _native, _source

#: The builtin name the added decorators call.
DECORATOR = "__memsleuth_nested__"

#: Nested code object -> the function that profiles a function made from it.
_profilers = {}

#: The compiler flags of ``from __future__`` imports, which the new code must keep.
_FUTURE_FLAGS = 0
for _name in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _name).compiler_flag


def _profile_nested(func):
    # Called as the program runs a def: what profiling it allocates is memsleuth's, not the
    # def line's.
    token = _native.begin_quiet()
    try:
        profiler = _profilers.get(getattr(func, "__code__", None))
        return func if profiler is None else profiler(func)
    finally:
        _native.end_quiet(token)


# ast is imported only for a function with nested functions: a program profiled with @profile
# keeps whatever memsleuth imports in its RSS (docs/design.md, "The books live in the sink").


def _add_decorator():
    """A transformer adding the decorator to every def it visits (its class made on first use)."""
    global _AddDecorator
    if _AddDecorator is None:
        import ast

        class AddDecorator(ast.NodeTransformer):
            def __init__(self):
                self.added = 0

            def _function(self, node):
                node.decorator_list.append(ast.copy_location(ast.Name(id=DECORATOR, ctx=ast.Load()), node))
                self.added += 1
                self.generic_visit(node)
                return node

            visit_FunctionDef = _function
            visit_AsyncFunctionDef = _function

        _AddDecorator = AddDecorator
    return _AddDecorator()


_AddDecorator = None


def _parse_function(func):
    """The ``def`` of ``func`` from its source, at its own lines and columns; None if unreadable."""
    import ast

    found = _source.source_lines(func)
    if found is None:
        return None
    lines, first = found
    source = "".join(lines)
    # An indented def (a method, a nested function) parses inside a block, keeping its columns.
    prefix = "if 1:\n" if source[:1].isspace() else ""
    try:
        tree = ast.parse(prefix + source)
    except SyntaxError:
        return None
    node = tree.body[0].body[0] if prefix else tree.body[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    ast.increment_lineno(node, first - 1 - len(prefix.splitlines()))
    return node


def _find_code(code, name, firstlineno):
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            if const.co_name == name and const.co_firstlineno == firstlineno:
                return const
            found = _find_code(const, name, firstlineno)
            if found is not None:
                return found
    return None


def _requalified(code, old, new):
    """``code`` with the qualified names inside it moved from under ``old`` (the name it was
    compiled under) to ``new``: each code object's own (3.11+) and, before 3.11, the string
    constants ``MAKE_FUNCTION`` takes a nested function's name from (``old.<locals>...``)."""
    nested_prefix = old + ".<locals>."

    def moved(name):
        return new + name[len(old):] if name == old or name.startswith(nested_prefix) else name

    consts = tuple(_requalified(c, old, new) if isinstance(c, types.CodeType)
                   else moved(c) if isinstance(c, str) else c
                   for c in code.co_consts)
    changes = {"co_consts": consts}
    if hasattr(code, "co_qualname"):
        changes["co_qualname"] = moved(code.co_qualname)
    return code.replace(**changes)


def nested_codes(code):
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield const
            yield from nested_codes(const)


def with_nested_profiled(func, profile_nested):
    """``func``, or a copy of it whose nested functions are passed to ``profile_nested`` as
    they are defined."""
    original = func.__code__
    # Lambdas and comprehensions (<lambda>, <listcomp>...) are not functions of their own here.
    if not any(not c.co_name.startswith("<") for c in nested_codes(original)):
        return func
    import ast

    node = _parse_function(func)
    if node is None:
        return func
    node.decorator_list = []  # the function's own decorators have run already
    node.lineno = original.co_firstlineno  # where the code object starts (its first decorator)
    adder = _add_decorator()
    for statement in node.body:
        adder.visit(statement)
    if not adder.added:
        return func
    # The free variables stay free: an enclosing function binds them (super()'s __class__ too).
    # The function's own name does not become one (a recursive function calls itself through a
    # global): the def binds it as the global it is.
    own_name = [] if node.name in original.co_freevars else [ast.Global(names=[node.name])]
    enclosing = ast.FunctionDef(
        name="__memsleuth_enclosing__",
        args=ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None,
                           defaults=[]),
        body=own_name + [ast.Assign(targets=[ast.Name(id=v, ctx=ast.Store())], value=ast.Constant(None))
                         for v in original.co_freevars] + [node],
        decorator_list=[], returns=None, type_comment=None,
        **({"type_params": []} if sys.version_info >= (3, 12) else {}))
    module = ast.Module(body=[enclosing], type_ignores=[])
    ast.fix_missing_locations(module)
    try:
        compiled = compile(module, original.co_filename, "exec", flags=original.co_flags & _FUTURE_FLAGS,
                           dont_inherit=True)
    except (SyntaxError, ValueError):
        return func
    code = _find_code(compiled, original.co_name, original.co_firstlineno)
    if code is None or sorted(code.co_freevars) != sorted(original.co_freevars) or \
            code.co_argcount != original.co_argcount or code.co_varnames[:code.co_argcount] != \
            original.co_varnames[:original.co_argcount]:
        return func
    code = _requalified(code, f"{enclosing.name}.<locals>.{node.name}",
                        getattr(original, "co_qualname", func.__qualname__))
    cells = dict(zip(original.co_freevars, func.__closure__ or ()))
    copy = types.FunctionType(code, func.__globals__, func.__name__, func.__defaults__,
                              tuple(cells[v] for v in code.co_freevars) or None)
    copy.__kwdefaults__ = func.__kwdefaults__
    copy.__qualname__ = func.__qualname__
    copy.__module__ = func.__module__
    copy.__annotations__ = func.__annotations__
    copy.__dict__.update(func.__dict__)
    for nested in nested_codes(code):
        _profilers[nested] = profile_nested
    setattr(builtins, DECORATOR, _profile_nested)
    # Before 3.11 a call allocates its frame object before the callee runs (and so before its
    # quiet section), unless the code object keeps a spare from an earlier call: this call,
    # made while profiling is quiet, leaves that spare.
    _profile_nested(None)
    return copy
