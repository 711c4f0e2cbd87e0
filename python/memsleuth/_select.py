"""What ``memsleuth run`` profiles: decorated functions, ``--function`` names, or, when the
program never mentions ``profile``, its top-level code and every function it defines."""

import ast
import importlib.machinery
import sys

from . import _profile

#: The name the rewritten program's injected decorators refer to (a builtin, so the program's
#: globals stay as python would make them).
INJECTED = "__memsleuth_profile__"


def mentions_profile(tree):
    """Whether the program uses the name ``profile`` anywhere (a decorator, an import...)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "profile":
            return True
        if isinstance(node, ast.Attribute) and node.attr == "profile":
            return True
        if isinstance(node, ast.alias) and (node.asname or node.name).split(".")[-1] == "profile":
            return True
    return False


class _Decorate(ast.NodeTransformer):
    """Adds the injected decorator, innermost, to every function (``wanted`` None) or to those
    whose qualified name is in ``wanted``; records which it found."""

    def __init__(self, wanted):
        self.wanted = wanted
        self.found = set()
        self.scope = []

    def _function(self, node):
        qualname = ".".join([*self.scope, node.name])
        if self.wanted is None or qualname in self.wanted:
            decorator = ast.copy_location(ast.Name(id=INJECTED, ctx=ast.Load()), node)
            node.decorator_list.append(decorator)
            self.found.add(qualname)
        self.scope += [node.name, "<locals>"]
        self.generic_visit(node)
        del self.scope[-2:]
        return node

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node):
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()
        return node


def decorate(tree, wanted):
    """Rewrites ``tree`` in place; returns the qualified names decorated."""
    visitor = _Decorate(wanted)
    visitor.visit(tree)
    ast.fix_missing_locations(tree)
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
    """A meta path finder that profiles ``module:qualname`` targets as their module loads (or at
    once, for modules already imported)."""

    def __init__(self, targets):
        self.targets = targets
        for name in list(targets):
            if name in sys.modules:
                for qualname in targets.pop(name):
                    _patch(sys.modules[name], qualname)

    def find_spec(self, name, path, target=None):
        if name not in self.targets:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        qualnames = self.targets.pop(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for qualname in qualnames:
                _patch(module, qualname)

        spec.loader.exec_module = exec_module
        return spec

    def report_missing(self):
        for name, qualnames in self.targets.items():
            warn(f"module {name} was never imported, so {', '.join(qualnames)} ran unprofiled")


def warn(message):
    sys.stderr.write(f"memsleuth: warning: {message}\n")
