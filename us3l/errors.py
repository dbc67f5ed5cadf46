"""Error types of bad user input that library code raises and every command-line tool turns into one
``error:`` line and exit code 2 (:mod:`us3l.cli`). Here, below both, so no library module imports the CLI."""
from __future__ import annotations


class DatasetFormatError(ValueError):
    """A dataset file exists but is not what its format requires (e.g. a JSON file that is not COCO, an image
    that does not decode)."""
