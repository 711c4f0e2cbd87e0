"""``memsleuth run``: runs a script as ``python SCRIPT`` would, with ``profile`` available."""

import builtins
import os
import sys
import traceback
import types

from . import _native, _profile


def _fail(message):
    sys.stderr.write(f"memsleuth: error: {message}\n")
    return 2


def _memory_profiler_stand_in():
    """A ``memory_profiler`` module whose ``profile`` is memsleuth's, for unmodified scripts."""
    module = types.ModuleType("memory_profiler")
    module.profile = _profile.profile
    module.__doc__ = "memsleuth's stand-in for memory_profiler: profile() is memsleuth.profile."
    return module


def _check_writable(path):
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        return f"cannot write the report to {path}: it is a directory"
    if not os.path.isdir(directory):
        return f"cannot write the report to {path}: no such directory {directory}"
    if not os.access(directory, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"cannot write the report to {path}: permission denied"
    return None


def run_script(script, args, json_path, precision):
    if not os.path.exists(script):
        return _fail(f"no such file: {script}")
    if os.path.isdir(script):
        return _fail(f"{script} is a directory, not a Python script")
    if json_path is not None:
        problem = _check_writable(json_path)
        if problem:
            return _fail(problem)
    try:
        with open(script, "rb") as f:
            source = f.read()
    except OSError as exc:
        return _fail(f"cannot read {script}: {exc.strerror}")
    try:
        code = compile(source, script, "exec")
    except (SyntaxError, ValueError) as exc:
        traceback.print_exception(type(exc), exc, None)
        return 1

    _profile.deferred = True
    _profile.default_precision = precision
    _profile.program_argv = [script, *args]
    _profile._start()
    builtins.profile = _profile.profile
    sys.modules["memory_profiler"] = _memory_profiler_stand_in()

    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__builtins__ = builtins
    main.__cached__ = None
    sys.modules["__main__"] = main
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))

    status = 0
    try:
        exec(code, main.__dict__)
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except KeyboardInterrupt:
        traceback.print_exception(KeyboardInterrupt, KeyboardInterrupt(), None)
        status = 130
    except BaseException as exc:
        # The program's own traceback, without memsleuth's frame on top.
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        status = 1
    finally:
        _write_reports(json_path, precision)
    return status


def _exit_status(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def _write_reports(json_path, precision):
    _native.begin_quiet()
    try:
        for code, own_precision in _profile.precisions.items():
            sys.stdout.write(_native.report_text(precision if own_precision is None else own_precision, code))
        sys.stdout.flush()
        if json_path is not None:
            version = ".".join(str(part) for part in sys.version_info[:3])
            with open(json_path, "w") as f:
                f.write(_native.report_json(version, _profile.program_argv))
    finally:
        _native.end_quiet()
