#!/usr/bin/env python
"""Per-width evaluation of a pre-trained slimmable backbone: BN calibration, kNN and linear-probe accuracy.

  python tools/eval_ssl.py runs/tiny/final.pth --widths 1.0 0.75 0.5 0.25 --output results/tiny_eval.json

Data: ``--dataset embedded`` (default; the generated set, created if missing), ``imagefolder``
(``root/{train,val}/<class>/*``), ``cifar10`` / ``cifar100`` (torchvision layout under ``--data-root``).
Writes a JSON file and a markdown table next to it (``.md``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.utils.data as tud  # noqa: E402

from us3l.checkpoint.report import CheckpointError  # noqa: E402
from us3l.data import build_dataset, eval_transform  # noqa: E402
from us3l.data.datasets import embedded_root, prepare_embedded  # noqa: E402
from us3l.data.synthetic import CLASSIFICATION_STYLES  # noqa: E402
from us3l.ssl.evaluation import evaluate_widths, markdown_table  # noqa: E402
from us3l.checkpoint.model_io import build_model_from_checkpoint  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    ap.add_argument("--dataset", choices=("embedded", "imagefolder", "cifar10", "cifar100"), default="embedded")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--embedded-style", choices=CLASSIFICATION_STYLES, default="category",
                    help="which embedded set (--dataset embedded): category or shape (see make_embedded_dataset)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--recipe", choices=("cifar", "imagenet"), default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--calib-batches", type=int, default=0, help="0 = one full pass over the training set")
    ap.add_argument("--knn-k", type=int, default=20)
    ap.add_argument("--probe-epochs", type=int, default=100)
    ap.add_argument("--probe-lr", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--output", required=True, help="JSON path (a .md table is written beside it)")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, meta = build_model_from_checkpoint(args.checkpoint)
        recipe = args.recipe or ("cifar" if meta["cifar_stem"] or args.dataset != "imagefolder" else "imagenet")
        size = args.image_size or (32 if recipe == "cifar" else 224)
        root, kind = args.data_root, args.dataset
        if kind == "embedded":
            root = root or embedded_root(args.embedded_style)
            if not os.path.isdir(os.path.join(root, "train")):
                prepare_embedded(root, style=args.embedded_style)
            kind = "imagefolder"
        tf = eval_transform(recipe, size)
        train = build_dataset(kind, root, "train", tf)
        test = build_dataset(kind, root, "val" if kind == "imagefolder" else "test", tf)
        g = torch.Generator().manual_seed(0)
        calib = tud.DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=g,
                               drop_last=len(train) > args.batch_size)
        train_l = tud.DataLoader(train, batch_size=args.batch_size)
        test_l = tud.DataLoader(test, batch_size=args.batch_size)
        rows = evaluate_widths(model, calib, train_l, test_l, args.widths, args.calib_batches or None, args.knn_k,
                               args.probe_epochs, args.probe_lr)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"checkpoint": os.path.abspath(args.checkpoint), "method": meta.get("method"), "arch": meta["arch"],
              "dataset": args.dataset, "data_root": root, "image_size": size, "rows": rows,
              "chance_top1": 100.0 / (len(getattr(test, "classes", [])) or 1)}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    md = os.path.splitext(args.output)[0] + ".md"
    with open(md, "w") as f:
        f.write(markdown_table(rows, args.title or f"{meta.get('method') or 'backbone'} ({meta['arch']})"))
    print(f"wrote {args.output} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
