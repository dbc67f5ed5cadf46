"""The output every latency benchmark here writes: its markdown table printed and saved, and a JSON twin beside it
with the rows, the run's meta (command, threads, load average, versions) and the raw times."""
from __future__ import annotations

import json
import os


def write_report(table: str, meta: dict, output: str | None, **raw) -> None:
    """Print ``table`` and ``meta``; with ``output`` (a .md path) write the table there and
    ``{"meta": meta, **raw}`` to the .json beside it."""
    print(table)
    print(json.dumps(meta))
    if output:
        with open(output, "w") as f:
            f.write(table + "\n")
        with open(os.path.splitext(output)[0] + ".json", "w") as f:
            json.dump({**raw, "meta": meta}, f, indent=1)
