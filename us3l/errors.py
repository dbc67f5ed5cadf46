"""The ground of the package: the errors bad user input raises, below every other module.

Every such error derives from :class:`US3LError` (and from the builtin that describes it, so ``except
ValueError`` keeps working); command-line tools catch :data:`BAD_INPUT_ERRORS` and print one ``error:`` line
with exit code 2 (:mod:`us3l.cli`). Defined here, below the library and the CLI, so that no library module
imports command-line code to raise or recognise one.
"""
from __future__ import annotations


class US3LError(Exception):
    """Bad input: a file, folder, dataset, config value, width or checkpoint the user gave is wrong."""


class DatasetFormatError(US3LError, ValueError):
    """A dataset file exists but is not what its format requires (e.g. a JSON file that is not COCO, an image
    that does not decode)."""


class OutputPathError(US3LError, ValueError):
    """An output path a tool cannot write (its parent is a file, it is a folder where a file goes or the reverse,
    its folder is not writable, or it is the tool's own input), found before anything is read or written
    (:mod:`us3l.output_paths`)."""


# what the tools report as bad input: ours, and the builtins that library code (and argparse-free helpers) raise
# for a path or value the user gave
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (US3LError, FileNotFoundError, NotADirectoryError,
                                                     IsADirectoryError, ValueError)
