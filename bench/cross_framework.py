#!/usr/bin/env python
"""A slimmable Mask R-CNN trained in one framework, evaluated in the other: the converters' acceptance, as a user
runs it (issue 24).

For each direction (Detectron2 -> MMDetection, MMDetection -> Detectron2): train the slimmable tiny ResNet-18
Mask R-CNN on the embedded set with the source framework's trainer, calibrate BN at three widths, evaluate with
``tools/eval_widths.py``, convert with ``--config`` (weights + the target framework's config), evaluate the
converted detector with the WRITTEN config in the other framework, and convert it back (every tensor must come
back bit for bit). Box / mask AP per width of both, and their differences, go to ``OUT/cross_framework.json`` and a
markdown table on stdout.

    PYTHONPATH=$PWD python bench/cross_framework.py OUT [--d2-iters 300] [--mmdet-epochs 2] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTHS = ["1.0", "0.5", "0.25"]
D2_CFG = "projects/segmentation/configs/mask_rcnn_US-R50_FPN_slimmable_tiny.yaml"
MM_CFG = "projects/segmentation/mmdet_configs/mask-rcnn_us-r50_fpn_slimmable_tiny.py"
D2_R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.WEIGHTS", "", "SEED", "0",
          "MODEL.US3L.CALIBRATION.WIDTHS", f"[{','.join(WIDTHS)}]"]
MM_R18 = ["model.backbone.depth=18", "model.backbone.init_cfg=None", "model.neck.in_channels=[64,128,256,512]",
          "randomness.seed=0"]


def run(cmd: list, env: dict, log: str) -> None:
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    print(f"[{time.time() - t0:6.1f}s] {' '.join(cmd[:2])} -> {proc.returncode}", file=sys.stderr)
    if proc.returncode:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}), log {log}:\n{tail}")


def eval_rows(weights: str, config: str, framework: str, out: str, env: dict, widths=WIDTHS) -> dict:
    run(["tools/eval_widths.py", weights, "--config", config, "--framework", framework, "--widths", *widths,
         "--output-dir", out, "--latency-runs", "0"], env, out + ".log")
    with open(os.path.join(out, "results.json")) as f:
        rows = json.load(f)["rows"]
    return {f"{r['width']:g}": {"box_AP": r["box_AP"], "mask_AP": r["mask_AP"]} for r in rows}


def train_d2(out: str, iters: int, env: dict) -> tuple[str, str]:
    if os.path.isfile(os.path.join(out, "model_final.pth")):  # a rerun keeps the trained detector
        return os.path.join(out, "model_final.pth"), os.path.join(out, "config.yaml")
    run(["projects/segmentation/train_net.py", "--config-file", D2_CFG, *D2_R18, "SOLVER.MAX_ITER", str(iters),
         "SOLVER.STEPS", f"({max(1, int(iters * 0.8))},)", "SOLVER.CHECKPOINT_PERIOD", str(iters),
         "OUTPUT_DIR", out], env, out + ".log")
    return os.path.join(out, "model_final.pth"), os.path.join(out, "config.yaml")


def train_mmdet(out: str, epochs: int, env: dict, calib_batches: int = 4) -> tuple[str, str]:
    if not os.path.isfile(os.path.join(out, f"epoch_{epochs}.pth")):  # a rerun keeps the trained detector
        run(["projects/segmentation/mmdet_train.py", MM_CFG, "--work-dir", out, "--cfg-options", *MM_R18,
             f"train_cfg.max_epochs={epochs}", f"default_hooks.checkpoint.interval={epochs}"], env, out + ".log")
    config = os.path.join(out, os.path.basename(MM_CFG))
    calibrated = os.path.join(out, "calibrated.pth")
    run(["tools/calibrate_detector.py", os.path.join(out, f"epoch_{epochs}.pth"), calibrated, "--config", config,
         "--widths", *WIDTHS, "--num-batches", str(calib_batches)], env, out + "_calibrate.log")
    return calibrated, config


def convert_and_evaluate(weights: str, config: str, src: str, name: str, out: str, env: dict, widths=WIDTHS) -> dict:
    """Evaluate in ``src``, convert with --config, evaluate the converted detector in the other framework."""
    dst = "mmdet" if src == "d2" else "d2"
    source = eval_rows(weights, config, src, os.path.join(out, f"eval_{name}_source"), env, widths)
    tool = "tools/convert_d2_to_mmdet.py" if src == "d2" else "tools/convert_mmdet_to_d2.py"
    converted = os.path.join(out, f"{name}_converted_{dst}.pth")
    run([tool, weights, converted, "--config", config, "--quiet"], env, os.path.join(out, f"convert_{name}.log"))
    written = os.path.splitext(converted)[0] + (".py" if dst == "mmdet" else ".yaml")
    target = eval_rows(converted, written, dst, os.path.join(out, f"eval_{name}_target"), env, widths)
    diffs = {w: {m: round(target[w][m] - source[w][m], 3) for m in ("box_AP", "mask_AP")} for w in source}
    return {"weights": weights, "config": config, "converted": converted, "written_config": written,
            "source_AP": source, "target_AP": target, "difference": diffs}


def pillow_config(config: str, dst: str) -> str:
    """The MMDetection config with its test images resized by PIL, as Detectron2 resizes them (mmcv's default is
    cv2, which does not antialias when shrinking): what separates the resize library from the conversion."""
    from mmengine.config import Config

    cfg = Config.fromfile(config)
    for name in ("val_dataloader", "test_dataloader"):
        if cfg.get(name) is None:
            continue
        for step in cfg[name].dataset.pipeline:
            if step["type"].split(".")[-1] == "Resize":
                step["backend"] = "pillow"
    cfg.dump(dst)
    return dst


def direction(out: str, src: str, args, env: dict) -> dict:
    dst = "mmdet" if src == "d2" else "d2"
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    if src == "d2":
        weights, config = train_d2(os.path.join(out, "train"), args.d2_iters, env)
    else:
        weights, config = train_mmdet(os.path.join(out, "train"), args.mmdet_epochs, env, 1 if args.quick else 4)
    slim = convert_and_evaluate(weights, config, src, "slimmable", out, env)
    if src == "mmdet" and not args.quick:  # a measurement of the resize library, not plumbing
        slim["source_AP_pillow_resize"] = eval_rows(weights, pillow_config(config, os.path.join(out, "pillow.py")),
                                                    src, os.path.join(out, "eval_slimmable_source_pillow"), env)
    converted = slim["converted"]
    plain = os.path.join(out, "plain_w0.50.pth")  # one width exported as a plain detector, crossed the same way
    run(["tools/export_detector.py", weights, plain, "--width", "0.5", "--config", config], env,
        os.path.join(out, "export.log"))
    plain_cfg = os.path.splitext(plain)[0] + (".yaml" if src == "d2" else ".py")
    plain_row = convert_and_evaluate(plain, plain_cfg, src, "plain", out, env, widths=["0.5"])
    exported = os.path.join(out, f"exported_in_{dst}_w0.50.pth")  # the converted slimmable detector exports too
    run(["tools/export_detector.py", converted, exported, "--width", "0.5", "--config", slim["written_config"]], env,
        os.path.join(out, f"export_in_{dst}.log"))
    slim["exported_in_target"] = exported
    back_tool = "tools/convert_mmdet_to_d2.py" if src == "d2" else "tools/convert_d2_to_mmdet.py"
    back = os.path.join(out, f"back_{src}.pth")
    run([back_tool, converted, back, "--quiet"], env, os.path.join(out, "convert_back.log"))
    from us3l.checkpoint.d2_format import read_d2_checkpoint
    from us3l.checkpoint.mmdet_format import read_mmdet_checkpoint

    reader = read_d2_checkpoint if src == "d2" else read_mmdet_checkpoint
    import torch

    a, _ = reader(weights)
    b, _ = reader(back)
    identical = set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    return {"source": src, "target": dst, **slim, "plain": plain_row, "round_trip_bit_identical": identical,
            "tensors": len(a), "seconds": round(time.time() - t0, 1)}


def markdown(results: list) -> str:
    name = {"d2": "Detectron2", "mmdet": "MMDetection"}
    lines = ["| trained in -> evaluated in | width | box AP source | box AP converted | diff | mask AP source | "
             "mask AP converted | diff |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for kind, row in (("slimmable", r), ("plain", r["plain"])):
            for w in row["source_AP"]:
                s, t, d = row["source_AP"][w], row["target_AP"][w], row["difference"][w]
                lines.append(f"| {name[r['source']]} -> {name[r['target']]}, {kind} | {w} | {s['box_AP']:.2f} | "
                             f"{t['box_AP']:.2f} | {d['box_AP']:+.2f} | {s['mask_AP']:.2f} | {t['mask_AP']:.2f} | "
                             f"{d['mask_AP']:+.2f} |")
    for r in results:
        if "source_AP_pillow_resize" in r:
            lines += ["", f"{name[r['source']]} source evaluated with its test images resized by PIL, as Detectron2 "
                          "does (`backend='pillow'`), next to the converted detector in Detectron2:", "",
                      "| width | box AP source, PIL resize | box AP converted | diff | mask AP source, PIL resize | "
                      "mask AP converted | diff |", "|---:|---:|---:|---:|---:|---:|---:|"]
            for w, s in r["source_AP_pillow_resize"].items():
                t = r["target_AP"][w]
                lines.append(f"| {w} | {s['box_AP']:.2f} | {t['box_AP']:.2f} | {t['box_AP'] - s['box_AP']:+.2f} | "
                             f"{s['mask_AP']:.2f} | {t['mask_AP']:.2f} | {t['mask_AP'] - s['mask_AP']:+.2f} |")
    lines += ["", *[f"- {name[r['source']]} -> {name[r['target']]} -> back: {r['tensors']} tensors, round trip "
                    f"{'bit-identical' if r['round_trip_bit_identical'] else 'NOT identical'} ({r['seconds']} s)"
                    for r in results]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output")
    p.add_argument("--d2-iters", type=int, default=300)
    p.add_argument("--mmdet-epochs", type=int, default=2)
    p.add_argument("--directions", nargs="+", choices=("d2", "mmdet"), default=["d2", "mmdet"],
                   help="source frameworks")
    p.add_argument("--quick", action="store_true", help="plumbing only: 4 iterations / 1 epoch, tiny dataset")
    args = p.parse_args(argv)
    if args.quick:
        args.d2_iters, args.mmdet_epochs = 4, 1
    out = os.path.abspath(args.output)
    datasets = os.path.join(out, "datasets")
    env = dict(os.environ, US3L_DATASETS=datasets, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if not os.path.isdir(os.path.join(datasets, "us3l_shapes")):
        os.makedirs(out, exist_ok=True)
        size = ["--num-train", "8", "--num-val", "4"] if args.quick else []
        run(["tools/make_embedded_dataset.py", "--root", os.path.join(datasets, "us3l_shapes"), *size], env,
            os.path.join(out, "dataset.log"))
    results = [direction(os.path.join(out, f"from_{src}"), src, args, env) for src in args.directions]
    doc = {"command": " ".join(["python", "bench/cross_framework.py", *(argv or sys.argv[1:])]),
           "d2_iters": args.d2_iters, "mmdet_epochs": args.mmdet_epochs, "widths": WIDTHS, "results": results}
    with open(os.path.join(out, "cross_framework.json"), "w") as f:
        json.dump(doc, f, indent=1)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
