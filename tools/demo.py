#!/usr/bin/env python
"""One slimmable detector at every width, side by side: what a narrower detector misses, and what it saves.

    python tools/demo.py CHECKPOINT IMAGE [IMAGE ...] --config CFG --widths 1.0 0.5 0.25 --output grid.png

One row per image, one panel per width: the detections (boxes, masks, class names, scores >= --score-thresh)
drawn by the framework's own visualizer (Detectron2's ``Visualizer``, MMDetection's ``DetLocalVisualizer``), each
panel titled with the width, the measured CPU latency on this machine (median of --runs calls) and the whole
detector's GFLOPs on that image. ``grid.json`` beside the PNG lists every panel's detections and costs. The
framework follows the config (``.yaml`` Detectron2, ``.py`` MMDetection); an uncalibrated width is refused.
"""
from __future__ import annotations

import argparse
import json
import os

from us3l.cli import exit_with
from us3l.output_paths import check_output_file


def draw_grid(panels: list[dict], widths: list[float], output: str, title: str = "") -> None:
    """Rows = images, columns = widths, with matplotlib (the project's plotting library)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = list(dict.fromkeys(p["image"] for p in panels))
    fig, axes = plt.subplots(len(images), len(widths), figsize=(3.2 * len(widths), 3.4 * len(images)),
                             squeeze=False)
    for p in panels:
        ax = axes[images.index(p["image"])][widths.index(p["width"])]
        ax.imshow(p["rgb"])
        ax.set_title(f"width {p['width']:g}: {p['latency_ms']:.0f} ms, {p['gflops']:.2f} GFLOPs\n"
                     f"{len(p['scores'])} detections", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a slimmable detector checkpoint (calibrated at the widths shown)")
    p.add_argument("images", nargs="+")
    p.add_argument("--config", required=True)
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    p.add_argument("--output", required=True, help="PNG path (a .json with every panel is written beside it)")
    p.add_argument("--framework", choices=("d2", "mmdet"), default=None, help="default: from the config suffix")
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("--runs", type=int, default=3, help="timed calls per panel (median)")
    p.add_argument("--title", default="")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides (Detectron2 KEY VALUE / MMDetection key=value)")
    args = p.parse_args(argv)
    side = os.path.splitext(args.output)[0] + ".json"
    inputs = [args.checkpoint, args.config, *args.images]
    check_output_file(args.output, "--output", inputs)
    check_output_file(side, "the .json beside --output", [*inputs, args.output])
    from us3l.detection.backends import framework_of, load_backend

    missing = [path for path in [args.checkpoint, args.config, *args.images] if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"not found: {missing}")
    framework = framework_of(args.config, args.framework)
    panels = load_backend(framework).demo(args.checkpoint, args.config, args.images, args.widths, args.opts,
                                          args.score_thresh, args.runs)
    widths = list(dict.fromkeys(p["width"] for p in panels))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    draw_grid(panels, widths, args.output, args.title)
    with open(side, "w") as f:
        json.dump({"checkpoint": os.path.abspath(args.checkpoint), "config": os.path.abspath(args.config),
                   "framework": framework, "score_thresh": args.score_thresh, "runs": args.runs,
                   "panels": [{k: v for k, v in p.items() if k != "rgb"} for p in panels]}, f, indent=1)
    print(f"wrote {args.output} and {side}")
    return 0


if __name__ == "__main__":
    exit_with(main)
