#!/usr/bin/env python
"""Per-width kNN / linear-probe evaluation of a slimmable backbone (also the console script ``us3l-eval-ssl``).

  python tools/eval_ssl.py runs/tiny/final.pth --widths 1.0 0.75 0.5 0.25 --output results/tiny_eval.json

Options and outputs: ``--help`` (:func:`us3l.cli.eval_ssl_main`); exit codes: :mod:`us3l.cli`.
"""
import sys

from us3l.cli import eval_ssl_main as main

if __name__ == "__main__":
    sys.exit(main())
