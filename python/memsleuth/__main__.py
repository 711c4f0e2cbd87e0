"""The ``memsleuth`` command (also ``python -m memsleuth``)."""

import sys


def main(argv=None):
    try:
        from . import _native
    except ImportError as refused:  # an interpreter memsleuth does not support says why, in a line
        sys.stderr.write(f"{refused}\n")
        return 1
    argv = list(sys.argv if argv is None else argv)
    argv[0] = "memsleuth"
    parsed = _native.parse_cli(argv)
    if parsed[0] == "exit":
        _, status, message, to_stderr = parsed
        (sys.stderr if to_stderr else sys.stdout).write(message)
        return status
    command, options = parsed
    from . import _run

    return _run.run(options) if command == "run" else _run.report(options)


if __name__ == "__main__":
    sys.exit(main())
