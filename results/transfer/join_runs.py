"""How results/transfer was written: the rows of four transfer-table runs on the same generated data
(t3: random, us3l; t4: simsiam_naive; t5: simsiam_inplace; t6: individual), joined and summarised again."""
import json
import sys

from us3l.pipeline.transfer_summary import write_transfer_table

RUNS = ("t3", "t4", "t5", "t6")


def main(runs_root: str, out: str) -> None:
    docs = [json.load(open(f"{runs_root}/{d}/results.json")) for d in RUNS]
    assert all(d["meta"]["data"] == docs[0]["meta"]["data"] for d in docs), "not the same benchmark data"
    assert all(d["meta"]["frozen_iters"] == docs[0]["meta"]["frozen_iters"] for d in docs)
    rows = [r for d in docs for r in d["rows"]]
    probe = [p for d in docs for p in d["probe"]]
    meta = {"combined_from": [d["meta"] for d in docs],
            "command": "four runs of tools/transfer_table.py on the same generated data (see README.md), rows joined"}
    write_transfer_table(rows, probe, out, docs[0]["title"], meta, docs[0]["notes"])


if __name__ == "__main__":  # python results/transfer/join_runs.py /work/runs results/transfer
    main(sys.argv[1], sys.argv[2])
