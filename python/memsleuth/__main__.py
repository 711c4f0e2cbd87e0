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
    _, options = parsed
    from ._run import run_script

    return run_script(options["script"], options["args"], options["json"], options["precision"])


if __name__ == "__main__":
    sys.exit(main())
