"""One exit-code convention for every command-line tool of the project.

* ``0``: done.
* ``2``: bad input -- a file, folder, dataset, config value, width or checkpoint the user gave is missing,
  malformed or refused. One line on stderr, ``error: <what and where>``, and nothing written. The same code
  argparse uses for a usage error, so a caller tells "fix your command" (2) from "the program failed" (1).
* ``1``: an unexpected failure (a bug): Python's traceback.
* ``3``: pre-training stopped by a signal after saving a checkpoint (``--resume`` continues it).

Tools wrap their ``main`` with :func:`run_tool` (or :func:`exit_with` under ``if __name__ == "__main__"``).
"""
from __future__ import annotations

import sys

BAD_INPUT = 2
STOPPED = 3


class DatasetFormatError(ValueError):
    """A dataset file exists but is not what its format requires (e.g. a JSON file that is not COCO)."""


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the user's input is wrong" (imported here, lazily, to keep tools light)."""
    from .checkpoint.report import CheckpointError
    from .ops.norm import UncalibratedWidthError

    return (CheckpointError, UncalibratedWidthError, DatasetFormatError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, ValueError)


def error_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"error: {text}"


def run_tool(main, argv=None) -> int:
    """``main(argv)``'s exit code (``None`` counts as 0); bad input becomes one ``error:`` line and code 2."""
    try:
        rc = main(argv) if argv is not None else main()
    except bad_input_errors() as e:
        print(error_line(e), file=sys.stderr)
        return BAD_INPUT
    return rc if isinstance(rc, int) else 0


def exit_with(main, argv=None) -> None:
    sys.exit(run_tool(main, argv))


__all__ = ["BAD_INPUT", "STOPPED", "DatasetFormatError", "bad_input_errors", "error_line", "run_tool",
           "exit_with"]
