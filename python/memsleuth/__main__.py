"""The ``memsleuth`` command (also ``python -m memsleuth``)."""

import sys

from . import _native


def main(argv=None):
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
