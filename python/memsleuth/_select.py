"""What ``memsleuth run`` profiles: decorated functions, ``--function`` names, or, when the
program never mentions ``profile``, its top-level code and every function it defines."""

import _ast
import _frozen_importlib as _bootstrap  # importlib._bootstrap, without the importlib package
import sys

from . import _profile

# The program runs in a child forked after this module has done its work, and would keep what it
# imports: the tree is made and walked with the builtin _ast, not ast (which brings enum,
# contextlib...).

#: The name the rewritten program's injected decorators refer to (a builtin, so the program's
#: globals stay as python would make them).
INJECTED = "__memsleuth_profile__"


def parse(source, filename):
    """``ast.parse(source, filename)``."""
    return compile(source, filename, "exec", _ast.PyCF_ONLY_AST)


def _children(node):
    """``ast.iter_child_nodes(node)``."""
    for name in node._fields:
        value = getattr(node, name, None)
        if isinstance(value, _ast.AST):
            yield value
        elif isinstance(value, list):
            yield from (item for item in value if isinstance(item, _ast.AST))


def mentions_profile(tree):
    """Whether the program uses the name ``profile`` anywhere (a decorator, an import...)."""
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, _ast.Name) and node.id == "profile":
            return True
        if isinstance(node, _ast.Attribute) and node.attr == "profile":
            return True
        if isinstance(node, _ast.alias) and (node.asname or node.name).split(".")[-1] == "profile":
            return True
        pending.extend(_children(node))
    return False


class _Decorate:
    """Adds the injected decorator, innermost, to every function (``wanted`` None) or to those
    whose qualified name is in ``wanted``; records which it found."""

    def __init__(self, wanted):
        self.wanted = wanted
        self.found = set()
        self.scope = []

    def visit(self, node):
        scope = []
        if isinstance(node, (_ast.FunctionDef, _ast.AsyncFunctionDef)):
            qualname = ".".join([*self.scope, node.name])
            if self.wanted is None or qualname in self.wanted:
                # At the def's place, as ast.copy_location would put it.
                node.decorator_list.append(_ast.Name(
                    id=INJECTED, ctx=_ast.Load(), lineno=node.lineno, col_offset=node.col_offset,
                    end_lineno=node.end_lineno, end_col_offset=node.end_col_offset))
                self.found.add(qualname)
            scope = [node.name, "<locals>"]
        elif isinstance(node, _ast.ClassDef):
            scope = [node.name]
        self.scope += scope
        for child in _children(node):
            self.visit(child)
        del self.scope[len(self.scope) - len(scope):]


def decorate(tree, wanted):
    """Rewrites ``tree`` in place; returns the qualified names decorated."""
    visitor = _Decorate(wanted)
    visitor.visit(tree)
    return visitor.found


def split_targets(functions, main_names):
    """``--function`` values: (qualnames in the program itself, {module: [qualnames]})."""
    local, elsewhere = set(), {}
    for target in functions:
        module, sep, qualname = target.rpartition(":")
        if not sep or module in main_names:
            local.add(qualname)
        else:
            elsewhere.setdefault(module, []).append(qualname)
    return local, elsewhere


def _patch(module, qualname):
    owner = module
    *path, name = qualname.split(".")
    try:
        for part in path:
            owner = getattr(owner, part)
        target = vars(owner)[name]
    except (AttributeError, KeyError, TypeError):
        warn(f"no function {qualname} in module {module.__name__}")
        return
    try:
        setattr(owner, name, _profile.profile(target))
    except TypeError as exc:
        warn(f"cannot profile {module.__name__}:{qualname}: {exc}")


class PatchOnImport:
    """Profiles ``module:qualname`` targets as their module loads (or at once, for modules
    already imported), whatever finder and loader import it. Import hooks such as pytest's
    assertion rewriting put their own finder first in sys.meta_path, where a finder of ours
    would never be asked: the import system's spec lookup is watched instead, and the loader
    of the spec it returns for a target patches the module once it has run."""

    def __init__(self, targets):
        self.targets = targets
        self._find_spec = _bootstrap._find_spec

    def install(self):
        for name in list(self.targets):
            if name in sys.modules:
                for qualname in self.targets.pop(name):
                    _patch(sys.modules[name], qualname)
        if self.targets:
            _bootstrap._find_spec = self._found

    def _found(self, name, path, target=None):
        spec = self._find_spec(name, path, target)
        if name in self.targets and spec is not None and hasattr(spec.loader, "exec_module"):
            _patch_after_exec(spec, self.targets.pop(name))
            if not self.targets:
                _bootstrap._find_spec = self._find_spec
        return spec

    def report_missing(self):
        for name, qualnames in self.targets.items():
            warn(f"module {name} was never imported, so {', '.join(qualnames)} ran unprofiled")


def _patch_after_exec(spec, qualnames):
    """Makes ``spec``'s loader patch the module it executes for ``spec``. The loader may serve
    other modules too (pytest's does), so the wrapper passes them through and removes itself
    after the module of ``spec``."""
    loader = spec.loader
    own = vars(loader).get("exec_module") if hasattr(loader, "__dict__") else None
    run = loader.exec_module

    def exec_module(module):
        if module.__spec__ is not spec:
            return run(module)
        if own is None:
            del loader.exec_module
        else:
            loader.exec_module = own
        run(module)
        for qualname in qualnames:
            _patch(module, qualname)

    try:
        loader.exec_module = exec_module
    except (AttributeError, TypeError):
        warn(f"cannot profile {', '.join(qualnames)} in {spec.name}: its loader cannot be wrapped")


def warn(message):
    sys.stderr.write(f"memsleuth: warning: {message}\n")
