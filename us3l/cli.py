"""One exit-code convention for every command-line tool of the project.

* ``0``: done.
* ``2``: bad input -- a file, folder, dataset, config value, width or checkpoint the user gave is missing,
  malformed or refused. One line on stderr, ``error: <what and where>``, and nothing written. The same code
  argparse uses for a usage error, so a caller tells "fix your command" (2) from "the program failed" (1).
  Output paths are checked first, before any input is read (:mod:`us3l.output_paths`).
* ``1``: an unexpected failure (a bug): Python's traceback.
* ``3``: pre-training stopped by a signal after saving a checkpoint (``--resume`` continues it).

Tools wrap their ``main`` with :func:`run_tool` (or :func:`exit_with` under ``if __name__ == "__main__"``).
The command lines that are also console scripts (``us3l-pretrain``, ``us3l-eval-ssl``) live here; the
Detectron2 / MMDetection ones in :mod:`us3l.d2.engine` and :mod:`us3l.mmdet.engine`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import BAD_INPUT_ERRORS, DatasetFormatError, US3LError  # re-exported: tools import them from here
from .output_paths import check_output_dir, check_output_file

BAD_INPUT = 2
STOPPED = 3


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the user's input is wrong": :data:`us3l.errors.BAD_INPUT_ERRORS`."""
    return BAD_INPUT_ERRORS


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


PRETRAIN_USAGE = """Self-supervised pre-training of a universally slimmable backbone (US3L or a Table-1 baseline).

  us3l-pretrain --config configs/us3l_tiny_cpu.yaml --output-dir runs/tiny [--resume] [key=value ...]
  torchrun --nproc_per_node 8 tools/pretrain.py --config configs/us3l_imagenet_r50.yaml --output-dir runs/r50

Overrides are dotted config keys (``train.iterations=20 data.root=/data/imagenet``); unknown keys are errors.
Writes ``last.pth`` (every checkpoint), ``ckpt_XXXXXXXX.pth`` (periodic, keep-last-N), ``final.pth``,
``summary.json``, ``log.txt`` and TensorBoard scalars under ``tb/``. Exit 3: stopped by a signal, resumable.
"""


def pretrain_main(argv=None) -> int:
    from .engine import distributed as du
    from .engine.config import load_config
    from .engine.trainer import pretrain

    ap = argparse.ArgumentParser(description=PRETRAIN_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pth if it exists")
    ap.add_argument("--init-from", metavar="PATH", help="start from this checkpoint's backbone and heads (US3L "
                    "reference pre-training checkpoint or us3l.pretrain/1); same as model.init_from=PATH")
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    args = ap.parse_args(argv)
    summary = None
    try:
        check_output_dir(args.output_dir, "--output-dir", inputs=[args.config, args.init_from])
        init = [f"model.init_from={json.dumps(args.init_from)}"] if args.init_from else []  # quoted YAML scalar
        summary = pretrain(load_config(args.config, list(args.overrides) + init), args.output_dir, args.resume)
    except bad_input_errors() as e:  # ConfigError is a US3LError
        print(error_line(e), file=sys.stderr)
        return BAD_INPUT
    finally:
        du.cleanup(finished=summary is not None)  # after an error: no barrier the others may never reach
    return STOPPED if summary["stopped"] == "signal" else 0


EVAL_SSL_USAGE = """Per-width evaluation of a pre-trained slimmable backbone: BN calibration, kNN, linear probe.

  us3l-eval-ssl runs/tiny/final.pth --widths 1.0 0.75 0.5 0.25 --output results/tiny_eval.json

Data: ``--dataset embedded`` (default; the generated set, created if missing), ``imagefolder``
(``root/{train,val}/<class>/*``), ``cifar10`` / ``cifar100`` (torchvision layout under ``--data-root``).
Writes a JSON file and a markdown table next to it (``.md``).
"""


def eval_ssl_main(argv=None) -> int:
    import torch
    import torch.utils.data as tud

    from .checkpoint.model_io import build_model_from_checkpoint
    from .data import build_dataset, eval_transform
    from .data.datasets import prepare_embedded
    from .data.paths import embedded_root
    from .data.synthetic import CLASSIFICATION_STYLES
    from .ssl.evaluation import evaluate_widths, markdown_table

    ap = argparse.ArgumentParser(description=EVAL_SSL_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    md = os.path.splitext(args.output)[0] + ".md"
    try:
        for path, what in ((args.output, "--output"), (md, "the markdown table beside --output")):
            check_output_file(path, what, inputs=[args.checkpoint])
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
    except bad_input_errors() as e:
        print(error_line(e), file=sys.stderr)
        return BAD_INPUT
    result = {"checkpoint": os.path.abspath(args.checkpoint), "method": meta.get("method"), "arch": meta["arch"],
              "dataset": args.dataset, "data_root": root, "image_size": size, "rows": rows,
              "chance_top1": 100.0 / (len(getattr(test, "classes", [])) or 1)}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    with open(md, "w") as f:
        f.write(markdown_table(rows, args.title or f"{meta.get('method') or 'backbone'} ({meta['arch']})"))
    print(f"wrote {args.output} and {md}")
    return 0


def pretrain_cli() -> int:
    """Console script ``us3l-pretrain``."""
    return pretrain_main()


def eval_ssl_cli() -> int:
    """Console script ``us3l-eval-ssl``."""
    return eval_ssl_main()


__all__ = ["BAD_INPUT", "STOPPED", "BAD_INPUT_ERRORS", "DatasetFormatError", "US3LError", "bad_input_errors",
           "error_line", "run_tool", "exit_with", "pretrain_main", "eval_ssl_main", "pretrain_cli", "eval_ssl_cli"]
