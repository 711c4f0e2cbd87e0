"""``memsleuth run`` and ``memsleuth report``."""

import atexit
import builtins
import functools
import io
import os
import sys
import threading
import types

from . import _native, _profile, _select, _sink, _timeline, compat

# The program runs in a child forked from this process and keeps every module imported before
# the fork in its sys.modules, its start-up time and its RSS. So what only some runs need (ast,
# json, tempfile, shutil, traceback, webbrowser, the HTML report...) is imported where it is used,
# or after the fork in the sink, which is not the program. What the program's process itself
# needs at its end is imported before the program's directory goes first on sys.path, where a
# json.py of its own would be found instead: the JSON and HTML reports' modules only when asked
# for, and no traceback module at all (the program's traceback is printed by sys.excepthook).


class UsageError(Exception):
    """Bad input found before the program starts: one line on stderr, exit status 2."""


def _error(message, status):
    sys.stderr.write(f"memsleuth: error: {message}\n")
    return status


def _check_writable(path):
    """Opens the report file before the program runs, so a long run is never wasted."""
    if os.path.isdir(path):
        raise UsageError(f"cannot write to {path}: it is a directory")
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to {path}: {exc.strerror or exc}") from None


class _SpawnPreparer:
    """Makes the Python processes multiprocessing starts (spawn's children, the forkserver whose
    forks are the children, the resource tracker) import ``memsleuth._spawned`` before they run
    the program's main module again. All of them are started by ``multiprocessing.util``'s
    ``spawnv_passfds`` with ``-c CODE``. This waits in ``sys.meta_path`` until the program imports
    that module (importing it earlier would register multiprocessing's atexit handler in programs
    that never use it), patches it once it has run, and leaves."""

    module = "multiprocessing.util"

    def find_spec(self, name, path=None, target=None):
        if name != self.module:
            return None
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        preparer = self

        class Patching:
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                try:
                    loader.exec_module(module)
                finally:
                    module.__spec__.loader = module.__loader__ = loader
                if preparer in sys.meta_path:
                    sys.meta_path.remove(preparer)
                _prepare_started_processes(module)

        spec.loader = Patching()
        return spec


#: Put before the code multiprocessing runs with ``python -c``; a child that cannot import
#: memsleuth (another executable) runs as it would have.
_SPAWNED_PRELUDE = "try:\n    import memsleuth._spawned\nexcept ImportError:\n    pass\n"
#: Under --follow-fork, before the code of a spawned child and of the forkserver (whose forks are
#: the workers), not the resource tracker's, which runs none of the program's code: the process
#: is profiled, and leaves its report in the run's directory of children's reports, as does each
#: child it forks.
_FOLLOWED_PRELUDE = ("try:\n    import memsleuth._spawned\nexcept ImportError:\n    pass\n"
                     "else:\n    memsleuth._spawned.follow({directory!r})\n")
_FOLLOWED = ("from multiprocessing.spawn import spawn_main", "from multiprocessing.forkserver import main")


def _prelude(code):
    if _sink.children_dir is not None and code.startswith(_FOLLOWED):
        return _FOLLOWED_PRELUDE.format(directory=_sink.children_dir)
    return _SPAWNED_PRELUDE


def _prepare_started_processes(util):
    spawnv_passfds = util.spawnv_passfds

    @functools.wraps(spawnv_passfds)
    def prepared_spawnv_passfds(path, args, passfds):
        args = list(args)
        if "-c" in args[:-1]:
            at = args.index("-c") + 1
            args[at] = _prelude(args[at]) + args[at]
        return spawnv_passfds(path, args, passfds)

    util.spawnv_passfds = prepared_spawnv_passfds


class _Program:
    """What to run: its source, where it claims to come from and the globals it runs in."""

    def __init__(self, source, filename, argv0, globals_, path0):
        self.source = source
        self.filename = filename
        self.argv0 = argv0
        self.globals = globals_
        self.path0 = path0


def _main_globals(**extra):
    """The globals python gives __main__ (a script adds __file__ and __cached__)."""
    return {"__name__": "__main__", "__builtins__": builtins, "__doc__": None, "__loader__": None,
            "__package__": None, "__spec__": None, "__annotations__": {}, **extra}


def _script(path):
    if not os.path.exists(path):
        raise UsageError(f"cannot open file {path!r}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory, not a Python script")
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    filename = os.path.abspath(path)
    globals_ = _main_globals(__file__=filename, __cached__=None)
    return _Program(source, filename, path, globals_, os.path.dirname(filename))


def _module(name):
    import importlib.util  # only for -m

    # Like python -m, the module is looked up from the current directory first.
    sys.path[0] = os.getcwd()
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            package, name = name, name + ".__main__"
            spec = importlib.util.find_spec(name)
            if spec is None:
                raise UsageError(f"no module named {name}; {package!r} is a package and cannot be run directly")
    except (ImportError, ValueError) as exc:
        raise UsageError(f"cannot find module {name}: {exc}") from None
    if spec is None or spec.loader is None:
        raise UsageError(f"no module named {name}")
    try:
        source = spec.loader.get_source(name)
    except (ImportError, OSError) as exc:
        raise UsageError(f"cannot read module {name}: {exc}") from None
    if source is None:
        raise UsageError(f"module {name} has no Python source to run")
    globals_ = _main_globals(__file__=spec.origin, __cached__=spec.cached, __package__=name.rpartition(".")[0],
                             __spec__=spec, __loader__=spec.loader)
    return _Program(source, spec.origin, spec.origin, globals_, os.getcwd())


def _code_string(code):
    # Imported for -c only: tracebacks and the report read the code from linecache's entry.
    import linecache

    lines = code.splitlines(keepends=True)
    linecache.cache["<string>"] = (len(code), None, lines, "<string>")
    return _Program(code, "<string>", "-c", _main_globals(), "")


def _selection(program, tree, functions, timestamp):
    """Rewrites the program's tree for the functions to profile; returns (selection sentence or
    None, whether to profile its top-level code, the patcher of other modules' targets)."""
    if timestamp:
        # As under memory_profiler --timestamp: what @profile decorates is timed, nothing else.
        return "timing the functions decorated with @profile (--timestamp)", False, None
    main_names = {"__main__", os.path.splitext(os.path.basename(program.filename))[0]}
    local, elsewhere = _select.split_targets(functions, main_names)
    patcher = _select.PatchOnImport(elsewhere) if elsewhere else None
    if functions:
        found = _select.decorate(tree, local)
        for missing in sorted(local - found):
            _select.warn(f"no function {missing} in {program.filename}")
        return f"profiling @profile functions and --function {', '.join(functions)}", False, patcher
    if _select.mentions_profile(tree):
        return "profiling the functions decorated with @profile", False, patcher
    _select.decorate(tree, None)
    sentence = (f"profiling all of {program.filename}: its top-level code and every function it defines "
                "(it never uses `profile`; choose functions with @profile or --function)")
    return sentence, True, patcher


def _exit_status(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def run(options):
    precision = options["precision"]
    try:
        if options["module"] is not None:
            program, args = _module(options["module"]), options["program"]
        elif options["code"] is not None:
            program, args = _code_string(options["code"]), options["program"]
        elif options["program"]:
            program, args = _script(options["program"][0]), options["program"][1:]
        else:
            raise UsageError("nothing to run: give a SCRIPT, -m MODULE or -c CODE (see memsleuth run --help)")
        try:
            _sink.requested()
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        for key in ("json", "html", "output"):
            if options[key] is not None:
                _check_writable(options[key])
                # The program may change directory: the reports go where the command line meant.
                options[key] = os.path.abspath(options[key])
    except UsageError as exc:
        return _error(str(exc), 2)

    try:
        tree = _select.parse(program.source, program.filename)
    except (SyntaxError, ValueError) as exc:
        import traceback

        traceback.print_exception(type(exc), exc, None)
        return 1
    selection, whole_program, patcher = _selection(program, tree, options["functions"], options["timestamp"])
    code = compile(tree, program.filename, "exec")

    _sink.run_mode = True
    if options["json"] is not None or options["html"] is not None or options["follow_fork"]:
        import json  # noqa: F401 (for _write_reports, from the standard library's json)

        if options["html"] is not None:
            from . import _html  # noqa: F401
    children = None
    if options["follow_fork"]:
        import tempfile  # the program under --follow-fork keeps it: the directory is made before the fork

        children = tempfile.mkdtemp(prefix="memsleuth-children-")
    # From here this process keeps the books, and a child runs the program.
    ending = _sink.fork_program()
    if ending is not None:
        return _report_ending(ending, options, selection, [program.argv0, *args], children)
    if children is not None:
        _sink.follow_forks(children)

    _profile.deferred = True
    _profile.default_precision = precision
    _profile.program_argv = [program.argv0, *args]
    _profile._start()
    # As under `python -m memory_profiler`: the builtin is a LineProfiler (`with profile:`,
    # profile.enable_by_count()), or with --timestamp a TimeStamper, and `import memory_profiler`
    # gets memory_profiler's API.
    stamper = compat.TimeStamper(include_children=options["include_children"]) if options["timestamp"] else None
    builtins.profile = stamper or compat._RunProfiler()
    if options["pdb_mmem"] is not None:
        compat.stop_in_debugger_over(options["pdb_mmem"])
    setattr(builtins, _select.INJECTED, _profile.profile)
    sys.modules["memory_profiler"] = compat
    if _SpawnPreparer.module in sys.modules:
        _prepare_started_processes(sys.modules[_SpawnPreparer.module])
    else:
        sys.meta_path.insert(0, _SpawnPreparer())
    if patcher is not None:
        patcher.install()
    main = types.ModuleType("__main__")
    main.__dict__.update(program.globals)
    sys.modules["__main__"] = main
    sys.argv = [program.argv0, *args]
    sys.path[0] = program.path0

    timeline = _profile.timeline = _timeline.Timeline(_profile.qualnames, children=children is not None)
    timeline.sample()
    if options["interval"] is not None:
        timeline.sample_every(options["interval"])
    # Only the process that started the run reports: a child it forks that ends normally comes
    # back here too.
    starter = os.getpid()
    status = 0
    try:
        if whole_program:
            _profile.profile_module_code(code, program.filename, program.source, main.__dict__)
        else:
            exec(code, main.__dict__)
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except KeyboardInterrupt as exc:
        _print_program_traceback(exc)
        status = 130
    except BaseException as exc:
        _print_program_traceback(exc)
        status = 1
    finally:
        _finish_program()
        reporter = os.getpid() == starter
        if reporter and patcher is not None:
            patcher.report_missing()
        written = _write_reports(options, selection, timeline.finish(), stamper) if reporter else True
    status = status if written or status else 1
    if reporter:
        _native.record_exit(status)
    return status


def _report_ending(ending, options, selection, argv, children):
    """In the sink, once the program has ended: its exit status as memsleuth's. A program that
    ended normally wrote its reports; for one that did not (killed, crashed, os._exit), the sink
    writes them, marked incomplete. The reports of followed children (in ``children``, a
    directory, or None) are added to both."""
    written = True
    if ending["exit_record"] is not None:
        if ending["signal"] is not None:
            status = 128 + ending["signal"]
        else:
            status = ending["exit_status"] if ending["exit_status"] is not None else ending["exit_record"]
    else:
        import json  # in the sink, which is not the program

        how, status = _sink.ending_words(ending)
        version = ".".join(str(part) for part in sys.version_info[:3])
        doc = json.loads(_native.report_json(version, argv, selection))
        doc["process"]["rss_peak_bytes"] = ending["rss_peak"]
        doc["incomplete"] = {"ended": how, "running": [
            {"function": name, "filename": filename, "lineno": lineno}
            for name, filename, lineno in _native.open_frames()],
            # A record the program was writing as it died (or the ring overwritten): the
            # figures stop short of it.
            "records_lost": ending["cut_short"]}
        if options["json"] is not None:
            written &= _write(options["json"], json.dumps(doc, indent=2) + "\n")
        if options["html"] is not None:
            from . import _html

            written &= _write(options["html"], _html.render(doc))
        if children is not None:
            with open(os.path.join(children, f"{ending['pid']}.json"), "w") as f:
                json.dump(doc, f)
        if not options["quiet"]:
            parts = [_native.death_heading(how), f"memsleuth: {selection}\n\n" if selection else "\n"]
            parts.append(_native.report_all_text(options["precision"], options["min_bytes"]))
            written &= _write(options["output"], "".join(parts))
    if children is not None:
        try:
            written &= _add_children(options, children, ending["pid"])
        finally:
            import shutil

            shutil.rmtree(children, ignore_errors=True)
    return status if written else status or 1


def _add_children(options, children, main_pid):
    """Adds each followed child's report, and a summary over every process, to the run's reports
    (JSON: `children` and `summary`; text: after the program's tables)."""
    import json

    reports = _sink.collect_children(children, main_pid)
    if not reports:
        return True
    try:
        with open(os.path.join(children, f"{main_pid}.json")) as f:
            main = json.load(f)
    except (OSError, ValueError):
        main = None
    summary = _sink.summary([r for r in [main, *reports.values()] if r is not None])
    written = True
    if options["json"] is not None:
        try:
            with open(options["json"]) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            doc = None
        if doc is not None:
            doc["children"] = [dict(report, pid=pid) for pid, report in reports.items()]
            doc["summary"] = summary
            written &= _write(options["json"], json.dumps(doc, indent=2) + "\n")
    if not options["quiet"]:
        precision, min_bytes = options["precision"], options["min_bytes"]
        parts = [f"memsleuth: child process {pid}\n\n" + _native.render_saved(json.dumps(report), precision, min_bytes)
                 for pid, report in reports.items() if report["functions"]]
        parts.append(f"memsleuth: summary over {summary['processes']} processes\n\n"
                     + _native.render_saved(json.dumps(summary), precision, min_bytes))
        written &= _write(options["output"], "".join(parts), append=True)
    return written


def _finish_program():
    """What python does once __main__ has ended, before it exits: join the non-daemon threads,
    then run the atexit handlers. Done here so that their work is in the report; python's own
    turn at exit then finds nothing left to do."""
    try:
        threading._shutdown()
    except BaseException as exc:
        # Python reports it as "Exception ignored on threading shutdown" and exits all the same.
        _print_program_traceback(exc)
    try:
        atexit._run_exitfuncs()
    except BaseException:
        # Already printed by atexit, as at exit (3.9 and 3.10 raise the last one again).
        pass


def _print_program_traceback(exc):
    """The program's traceback as python prints it, by sys.excepthook (the program's, if it set
    one), with memsleuth's own frames (the runner, the generator and coroutine wrappers) taken out
    of its traceback and of those of the exceptions chained to it."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    seen = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = _without_frames_in(package, current.__traceback__)
        pending += [current.__cause__, current.__context__]
        if _EXCEPTION_GROUP is not None and isinstance(current, _EXCEPTION_GROUP):
            pending += current.exceptions
    try:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    except BaseException:
        sys.__excepthook__(type(exc), exc, exc.__traceback__)


#: The base of exception groups (3.11+), whose members' tracebacks are printed too.
_EXCEPTION_GROUP = getattr(builtins, "BaseExceptionGroup", None)


def _without_frames_in(package, tb):
    """The traceback chain ``tb`` without the entries of code under ``package``."""
    first = last = None
    while tb is not None:
        following = tb.tb_next
        if not os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package):
            if last is None:
                first = tb
            else:
                last.tb_next = tb
            last = tb
        tb = following
    if last is not None:
        last.tb_next = None
    return first


def _write_reports(options, selection, timeline, stamper):
    """Prints and writes the reports; False if one could not be written. With a ``stamper``
    (--timestamp) the text report is its FUNC lines, added after what -o's file holds, as
    memory_profiler adds them (mprof's samples may be there)."""
    token = _native.begin_quiet()
    written = True
    try:
        if options["json"] is not None or options["html"] is not None or _sink.children_dir is not None:
            import json

            version = ".".join(str(part) for part in sys.version_info[:3])
            doc = json.loads(_native.report_json(version, _profile.program_argv, selection))
            doc["timeline"] = timeline
            if options["html"] is not None:
                from . import _html

                written &= _write(options["html"], _html.render(doc))
            report = json.dumps(doc)
            if options["json"] is not None:
                written &= _write(options["json"], report)
            if _sink.children_dir is not None:
                # Where the run's sink adds it up with the followed children's.
                written &= _write(os.path.join(_sink.children_dir, f"{os.getpid()}.json"), report)
        # Without a stdout (closed, or set to None by the program) print() prints nothing, and
        # neither does memsleuth.
        if not options["quiet"] and stamper is not None:
            lines = io.StringIO()
            stamper.show_results(lines)
            written &= _write(options["output"], lines.getvalue(), append=True)
        elif not options["quiet"] and (options["output"] is not None or sys.stdout is not None):
            parts = [_native.THREAD_SINK_HEADING] if _sink.kind == "thread" else []
            parts += [f"memsleuth: {selection}\n\n"] if selection else []
            for code, own_precision in _profile.precisions.items():
                digits = options["precision"] if own_precision is None else own_precision
                parts.append(_native.report_text(digits, code, options["min_bytes"]))
            written &= _write(options["output"], "".join(parts))
    finally:
        _native.end_quiet(token)
    return written


def _write(path, text, append=False):
    """Writes ``text`` to ``path`` (after what it holds, if ``append``), or to sys.stdout when
    ``path`` is None; False if it could not."""
    try:
        if path is None:
            if sys.stdout is None:
                return True
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            with open(path, "a" if append else "w") as f:
                f.write(text)
    except (OSError, ValueError) as exc:  # ValueError: the program closed sys.stdout
        sys.stderr.write(f"memsleuth: error: cannot write the report: {getattr(exc, 'strerror', None) or exc}\n")
        return False
    return True


def report(options):
    import json  # imported here: at the top, every program under memsleuth run would carry it

    path = options["file"]
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        return _error(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}", 1)
    try:
        rendered = _native.render_saved(text, options["precision"], options["min_bytes"])
    except ValueError as exc:
        return _error(f"{path} is not a memsleuth report: {exc}", 1)
    # render_saved has checked it is a report.
    doc = json.loads(text)
    incomplete = doc.get("incomplete")
    if isinstance(incomplete, dict):
        # A report the sink wrote for a program that died: its heading, as it was printed then.
        frames = [(f.get("function"), f.get("filename"), f.get("lineno")) for f in incomplete.get("running", [])]
        heading = _native.incomplete_heading(incomplete.get("ended"), frames, _native.live_at_peak_saved(text))
        rendered = heading + "\n" + rendered
    if options["html"] is None and not options["open"]:
        sys.stdout.write(rendered)
        sys.stdout.flush()
        return 0
    page = options["html"]
    if page is None:
        import tempfile

        fd, page = tempfile.mkstemp(prefix="memsleuth-", suffix=".html")
        os.close(fd)
    try:
        _check_writable(page)
    except UsageError as exc:
        return _error(str(exc), 1)
    from . import _html

    # The page is drawn from the JSON as saved.
    if not _write(page, _html.render(doc)):
        return 1
    if options["open"]:
        return _open_page(page)
    return 0


def _open_page(path):
    """Opens the page in the default browser; where there is none, says so in one line."""
    import webbrowser

    url = "file://" + os.path.abspath(path)
    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        sys.stderr.write(f"memsleuth: no web browser to open it with; the page is {os.path.abspath(path)}\n")
        return 1
    sys.stdout.write(f"memsleuth: opened {os.path.abspath(path)}\n")
    return 0
