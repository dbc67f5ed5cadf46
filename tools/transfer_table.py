#!/usr/bin/env python
"""The transfer table: random init, naive / inplace SimSiam, US3L and individual networks, transferred to Mask
R-CNN at every width, frozen and fine-tuned, over seeds (issue 22).

    python tools/transfer_table.py OUT            # default scale (see --help)
    python tools/transfer_table.py OUT --quick    # the whole road in minutes

The logic lives in :mod:`us3l.pipeline.transfer_table`; ``bash scripts/transfer_table.sh`` installs first.
"""
from us3l.cli import exit_with
from us3l.pipeline.transfer_table import main

if __name__ == "__main__":
    exit_with(main)
