#!/usr/bin/env python
"""Issue 28: a slimmable detector whose width changes every call runs at its plain export's speed.

    PYTHONPATH=$PWD python bench/width_switch.py --output bench/width_switch.md

For Detectron2 and MMDetection (``--framework``) ONE slimmable R50 Mask R-CNN is built (random weights, BN
calibrated per width on random images, test score threshold 0 so that every width runs the mask head on the
same number of detections) and its whole-detector CPU latency on one random image of ``--size H W`` is
timed per width in five modes:

* ``switch``: the width changes before EVERY call, cycling through ``--widths`` in the given order
  (1.0 -> 0.5 -> 0.25 -> 1.0 ...); each timed call at width w comes right after a call at another width;
* ``random``: the width before each call drawn at random (seeded, with replacement) from the calibrated
  widths, every call timed and recorded under its width (each round draws until every width was timed);
* ``switch_k1``: ``switch`` on a deep copy of the model with ``us3l.inference.keep_widths(model, 1)`` (the
  old behaviour: each layer keeps the copy of its last width only, so every change re-slices);
* ``fixed``: the slimmable model kept at width w (width set and one warm call at w, then the timed call);
* ``plain``: the plain detector exported at width w (one warm call, then the timed call).

``switch``/``random``/``switch_k1`` time ``us3l.set_width`` plus the forward (what changing the width costs a
caller); ``fixed``/``plain`` time the forward only. Timed runs are interleaved: each round runs every mode's
cells once (the switch cycles and the random draws as one block each, starting at a rotating width), the
blocks in a rotating order, so that load from other processes hits all cells alike; tables give medians over
rounds. Before timing, the script checks once per width (untimed) that the slimmable model's detections after
a switch sequence equal the plain export's (boxes allclose, atol 1e-3), for k=4 and k=1, and raises if not.

``--paired``: each timed ``switch`` and ``random`` call is followed at once by a call of the plain export at the
same width, and the ratio of the two is recorded per pair (columns ``paired``: median of those per-call ratios).
Adjacent calls share the machine's state of the moment, so slow drift (another process, frequency changes) that
moves whole rounds cancels out of each ratio; the medians of separate cells cannot resolve a few percent when
single calls of the same work spread by 30 % (``bench/width_switch_mmdet_1thread.md``).

Memory: ``us3l.inference.cached_bytes`` of the k=4 model after the timed rounds (every width visited), and
with a single width cached, in MiB and as a fraction of the model's full-width conv/linear weight bytes.
The JSON beside ``--output`` holds every raw timing.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import logging
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn

import us3l
from us3l.inference import cached_bytes, clear_cache, keep_widths, prepare
from us3l.ops.width_state import canonical_width

D2_CONFIG = "projects/segmentation/configs/mask_rcnn_US-R50_FPN_slimmable_1x.yaml"
MMDET_CONFIG = "projects/segmentation/mmdet_configs/mask-rcnn_us-r50_fpn_slimmable_1x.py"
MODES = ("switch", "random", "switch_k1", "fixed", "plain")
ATOL = 1e-3
MIB = 2 ** 20


# ---------------------------------------------------------------------------------------------- frameworks
class D2Bench:
    """Detectron2: the build of ``bench/slimmable_detector.py`` (NORM BN, score threshold 0, no weights)."""

    name = "d2"

    def __init__(self, config, widths, size, seed, opts):
        from detectron2.modeling import build_model

        import us3l.d2  # noqa: F401  (registers the slimmable components)
        from us3l.d2 import load_config
        from us3l.d2.export import export_plain_detector
        from us3l.detection import calibrate_detector

        self.config = config
        cfg = load_config(config, ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN",
                                   "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.WEIGHTS", "", *opts])
        torch.manual_seed(seed)
        model = build_model(cfg)
        padded = [-(-s // 32) * 32 for s in size]  # what preprocess_image pads to (FPN size divisibility)
        gen = torch.Generator().manual_seed(seed)
        images = [torch.randn(1, 3, *padded, generator=gen) for _ in range(2)]
        calibrate_detector(model, model.backbone, images, widths)
        self.model = model.eval()
        self.plain = {w: export_plain_detector(self.model, cfg, w)[0].eval() for w in widths}
        image = torch.rand(3, *size, generator=gen) * 255
        self.batch = [{"image": image, "height": size[0], "width": size[1]}]

    def run(self, model):
        return model(self.batch)

    @staticmethod
    def boxes(out):
        inst = out[0]["instances"]
        return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


class MMDetBench:
    """MMDetection: the slimmable config built by ``us3l.mmdet.slimmable_eval.load_slimmable_detector`` (no
    checkpoint), BN calibrated with ``calibrate_detector(model, [backbone, neck], ...)`` (what
    ``calibrate_widths`` does on training images), plain detectors from ``us3l.mmdet.export.export_detector``."""

    name = "mmdet"

    def __init__(self, config, widths, size, seed, opts):
        import mmcv.ops  # noqa: F401
        import mmdet  # noqa: F401
        from mmdet.structures import DetDataSample
        from mmengine.logging import MMLogger

        from us3l.detection import calibrate_detector
        from us3l.mmdet.detector_tools import parse_opts
        from us3l.mmdet.export import export_detector
        from us3l.mmdet.slimmable_eval import load_slimmable_detector

        self.config = config
        options = {"model.backbone.init_cfg": None, "model.test_cfg.rcnn.score_thr": 0.0, **parse_opts(opts)}
        torch.manual_seed(seed)
        model, cfg = load_slimmable_detector(config, None, cfg_options=options)
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.WARNING)  # init_weights logs every tensor it leaves alone
        try:
            model.init_weights()  # mmdet's head initialisation (backbone.init_cfg None: no pre-trained file)
        finally:
            logger.setLevel(level)
        model.eval()
        padded = [-(-s // 32) * 32 for s in size]  # the data preprocessor's pad_size_divisor
        gen = torch.Generator().manual_seed(seed)
        images = [torch.randn(1, 3, *padded, generator=gen) for _ in range(2)]
        calibrate_detector(model, [model.backbone, model.neck], images, widths)
        self.model = model.eval()
        self.plain = {}
        with tempfile.TemporaryDirectory() as tmp:
            for w in widths:
                self.plain[w] = export_detector(self.model, cfg, w, os.path.join(tmp, f"plain_w{w}.pth"))[0].eval()
        image = (torch.rand(3, *size, generator=gen) * 255).to(torch.uint8)
        meta = dict(img_id=0, img_path="", ori_shape=tuple(size), img_shape=tuple(size), scale_factor=(1.0, 1.0))
        self.batch = {"inputs": [image], "data_samples": [DetDataSample(metainfo=meta)]}

    def run(self, model):
        return model.test_step(self.batch)

    @staticmethod
    def boxes(out):
        inst = out[0].pred_instances
        return inst.bboxes, inst.scores, inst.labels


FRAMEWORKS = {"d2": D2Bench, "mmdet": MMDetBench}


# ------------------------------------------------------------------------------------------------- helpers
def weight_bytes(model: nn.Module) -> int:
    """Bytes of the full-width weights of every conv and linear layer (the bound on the cached copies)."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)))


@torch.no_grad()
def timed(bench, model, width=None) -> tuple[float, float]:
    """``(total ms, set_width ms)`` of [set the width,] run the detector once."""
    t0 = time.perf_counter()
    if width is not None:
        us3l.set_width(model, width)
    t1 = time.perf_counter()
    bench.run(model)
    t2 = time.perf_counter()
    return (t2 - t0) * 1e3, (t1 - t0) * 1e3


@torch.no_grad()
def check(bench, k1_model, widths) -> dict:
    """Untimed: after switch sequences, the slimmable detections at each width equal the plain export's."""
    ref = {w: bench.boxes(bench.run(bench.plain[w])) for w in widths}
    result = {}
    for label, model, passes in (("k=4", bench.model, 2), ("k=1", k1_model, 1)):
        for p in range(passes):
            for w in widths:  # each call comes right after a call at another width (after the first)
                us3l.set_width(model, w)
                boxes, scores, labels = bench.boxes(bench.run(model))
                rb, rs, rl = ref[w]
                same = (boxes.shape == rb.shape and torch.allclose(boxes, rb, atol=ATOL, rtol=0)
                        and torch.equal(labels, rl))
                diff = float((boxes - rb).abs().max()) if boxes.shape == rb.shape and len(rb) else float("nan")
                sdiff = float((scores - rs).abs().max()) if scores.shape == rs.shape and len(rs) else float("nan")
                result.setdefault(str(w), []).append({"cache": label, "pass": p + 1, "equal": bool(same),
                                                      "boxes": len(boxes), "plain_boxes": len(rb),
                                                      "max_box_diff": diff, "max_score_diff": sdiff})
                if not same:
                    raise RuntimeError(f"{bench.name} width {w} ({label}, switch pass {p + 1}): slimmable detections "
                                       f"differ from the plain export's ({len(boxes)} vs {len(rb)} boxes, "
                                       f"max |box diff| {diff:.3g})")
    for w in widths:
        rows = result[str(w)]
        print(f"[check] {bench.name} width {w}: after switching, slimmable detections (k=4 passes 1-2, k=1) equal "
              f"the plain export's: {rows[0]['boxes']} boxes, max |box diff| "
              f"{max(r['max_box_diff'] for r in rows):.2e}, max |score diff| "
              f"{max(r['max_score_diff'] for r in rows):.2e}", flush=True)
    return result


def run_round(bench, k1_model, widths, r, rng, times, set_ms, random_seq, timed_run=True, pairs=None):
    """One round: every (mode, width) cell at least once; blocks in an order rotating with ``r``. With ``pairs``
    (a dict mode -> width -> list), every switch / random call is followed by the plain export's at its width."""
    n = len(widths)

    def record(mode, w, t):
        if timed_run:
            times[mode][w].append(t[0])
            set_ms[mode].append(t[1])
            if pairs is not None and mode in pairs:
                pairs[mode][w].append(t[0] / timed(bench, bench.plain[w])[0])

    def switch_block(mode, model):
        start = r % n
        timed(bench, model, widths[(start - 1) % n])  # untimed: the call before the first timed one
        for i in range(n):
            w = widths[(start + i) % n]
            record(mode, w, timed(bench, model, w))

    def random_block():
        seen = set()
        for _ in range(50 * n):
            w = rng.choice(widths)
            t = timed(bench, bench.model, w)
            record("random", w, t)
            if timed_run:
                random_seq.append([w, t[0]])
            seen.add(w)
            if len(seen) == n:
                break

    def fixed(w):
        us3l.set_width(bench.model, w)
        timed(bench, bench.model)  # warm call at w
        record("fixed", w, timed(bench, bench.model))

    def plain(w):
        timed(bench, bench.plain[w])  # warm call
        record("plain", w, timed(bench, bench.plain[w]))

    blocks = [lambda: switch_block("switch", bench.model), random_block,
              lambda: switch_block("switch_k1", k1_model)]
    for w in widths:
        blocks += [lambda w=w: fixed(w), lambda w=w: plain(w)]
    s = r % len(blocks)
    for block in blocks[s:] + blocks[:s]:
        block()


@torch.no_grad()
def memory(bench, k1_model, widths) -> dict:
    full = weight_bytes(bench.model)
    after_rounds = cached_bytes(bench.model)  # every width visited by real forwards, k=4
    per_width = {}
    for w in widths:
        clear_cache(bench.model)
        us3l.set_width(bench.model, w)
        prepare(bench.model)
        per_width[str(w)] = cached_bytes(bench.model)
    clear_cache(bench.model)
    for w in widths:
        us3l.set_width(bench.model, w)
        prepare(bench.model)
    all_prepared = cached_bytes(bench.model)
    return {"full_width_conv_linear_weight_bytes": full, "all_widths_bytes_after_rounds": after_rounds,
            "all_widths_bytes_prepared": all_prepared, "single_width_bytes": per_width,
            "k1_model_bytes_after_rounds": cached_bytes(k1_model)}


def med(v):
    return statistics.median(v) if v else float("nan")


def table(widths, times) -> str:
    lines = ["| width | switch ms | random ms (n) | switch_k1 ms | fixed ms | plain ms | switch / plain | "
             "random / plain | switch_k1 / plain | fixed / plain |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in widths:
        m = {mode: med(times[mode][w]) for mode in MODES}
        p = m["plain"]
        lines.append(f"| {w:.2f} | {m['switch']:.0f} | {m['random']:.0f} ({len(times['random'][w])}) | "
                     f"{m['switch_k1']:.0f} | {m['fixed']:.0f} | {p:.0f} | {m['switch'] / p:.3f} | "
                     f"{m['random'] / p:.3f} | {m['switch_k1'] / p:.3f} | {m['fixed'] / p:.3f} |")
    return "\n".join(lines)


def paired_table(widths, pairs) -> str:
    lines = ["| width | switch / plain, paired (n) | random / plain, paired (n) |", "|---:|---:|---:|"]
    for w in widths:
        lines.append(f"| {w:.2f} | {med(pairs['switch'][w]):.3f} ({len(pairs['switch'][w])}) | "
                     f"{med(pairs['random'][w]):.3f} ({len(pairs['random'][w])}) |")
    return "\n".join(lines)


def memory_table(widths, mem) -> str:
    full = mem["full_width_conv_linear_weight_bytes"]
    lines = [f"Full-width conv/linear weights: {full / MIB:.1f} MiB.", "",
             "| widths cached (k=4) | extra MiB | fraction of full-width conv/linear weights |", "|---|---:|---:|"]
    b = mem["all_widths_bytes_after_rounds"]
    lines.append(f"| all: {', '.join(f'{w:.2f}' for w in widths)} (after the timed rounds) | {b / MIB:.1f} | "
                 f"{b / full:.3f} |")
    for w in widths:
        b = mem["single_width_bytes"][str(w)]
        lines.append(f"| {w:.2f} only | {b / MIB:.1f} | {b / full:.3f} |")
    b = mem["k1_model_bytes_after_rounds"]
    lines.append(f"| switch_k1 model (k=1) after the timed rounds | {b / MIB:.1f} | {b / full:.3f} |")
    if mem["all_widths_bytes_prepared"] != mem["all_widths_bytes_after_rounds"]:
        lines += ["", f"(all widths prepared with `us3l.inference.prepare` instead of forwards: "
                      f"{mem['all_widths_bytes_prepared'] / MIB:.1f} MiB)"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main
def bench_framework(name, args, widths, thread_settings, default_threads):
    print(f"[{name}] building, calibrating at {widths}, exporting plain detectors", flush=True)
    t0 = time.perf_counter()
    config = args.d2_config if name == "d2" else args.mmdet_config
    opts = args.d2_opts if name == "d2" else args.mmdet_opts
    bench = FRAMEWORKS[name](config, widths, args.size, args.seed, opts)
    k1_model = copy.deepcopy(bench.model)  # its caches start empty (SliceCache pickles empty)
    keep_widths(k1_model, 1)
    keep_widths(bench.model, 4)
    build_s = time.perf_counter() - t0
    checked = check(bench, k1_model, widths)
    out = {"config": config, "opts": opts, "build_s": build_s, "check": checked, "threads": {}}
    sections = []
    for t in thread_settings:
        n_threads = t if t > 0 else default_threads
        torch.set_num_threads(n_threads)
        times = {mode: {w: [] for w in widths} for mode in MODES}
        set_ms = {mode: [] for mode in MODES}
        random_seq, load = [], []
        pairs = {m: {w: [] for w in widths} for m in ("switch", "random")} if args.paired else None
        rng = random.Random(args.seed)
        run_round(bench, k1_model, widths, 0, rng, times, set_ms, random_seq, timed_run=False)  # warm-up
        t0 = time.perf_counter()
        for r in range(args.rounds):
            run_round(bench, k1_model, widths, r, rng, times, set_ms, random_seq, pairs=pairs)
            load.append(round(os.getloadavg()[0], 2))
            print(f"[{name}] threads {n_threads}: round {r + 1}/{args.rounds} done", flush=True)
        label = f"{n_threads} thread(s)" + (" (torch's default)" if t == 0 else "")
        tab = table(widths, times)
        setw = {mode: med(v) for mode, v in set_ms.items() if v}
        note = ("us3l.set_width median ms (inside switch / random / switch_k1): "
                + ", ".join(f"{m} {setw[m]:.2f}" for m in ("switch", "random", "switch_k1")) + "; "
                + f"load average during the rounds: {', '.join(map(str, load))}; "
                + f"{time.perf_counter() - t0:.0f} s for {args.rounds} rounds.")
        if pairs is not None:
            tab += ("\n\nPaired (each call followed at once by the plain export's at its width; median of the "
                    "per-call ratios):\n\n" + paired_table(widths, pairs))
        sections.append(f"### {name}, {label}\n\n{tab}\n\n{note}")
        print(sections[-1], flush=True)
        out["threads"][str(t)] = {"num_threads": n_threads, "times_ms": {m: {str(w): v for w, v in d.items()}
                                                                         for m, d in times.items()},
                                  "set_width_ms": set_ms, "random_sequence": random_seq, "load_avg": load,
                                  "paired_ratios": ({m: {str(w): v for w, v in d.items()} for m, d in pairs.items()}
                                                    if pairs is not None else None),
                                  "median_ms": {m: {str(w): med(v) for w, v in d.items()} for m, d in times.items()}}
    mem = memory(bench, k1_model, widths)
    out["memory"] = mem
    sections.append(f"### {name}, extra memory of the weight caches\n\n{memory_table(widths, mem)}")
    print(sections[-1], flush=True)
    del bench, k1_model
    gc.collect()
    return out, sections


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", choices=("d2", "mmdet", "both"), default="both")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="0: torch's default (all cores)")
    p.add_argument("--size", type=int, nargs=2, default=[320, 427], metavar=("H", "W"))
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (each times every (mode, width) cell)")
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.5, 0.25], help="also the switch cycle order")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--paired", action="store_true",
                   help="follow each switch / random call by the plain export's at its width; report per-pair ratios")
    p.add_argument("--output", default=None, help="markdown file (a .json twin is written beside it)")
    p.add_argument("--d2-config", default=D2_CONFIG)
    p.add_argument("--mmdet-config", default=MMDET_CONFIG)
    p.add_argument("--d2-opts", nargs="+", default=[], help="extra Detectron2 KEY VALUE overrides")
    p.add_argument("--mmdet-opts", nargs="+", default=[], help="extra mmengine key=value overrides")
    args = p.parse_args(argv)
    default_threads = torch.get_num_threads()
    widths = list(dict.fromkeys(canonical_width(w) for w in args.widths))
    if len(widths) < 2:
        p.error("--widths needs at least two widths (a switch needs another width)")
    if args.rounds < 1 or any(t < 0 for t in args.threads):
        p.error("--rounds must be >= 1 and --threads >= 0")
    frameworks = ["d2", "mmdet"] if args.framework == "both" else [args.framework]
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
    command = (env + " " if env else "") + "python " + shlex.join(sys.argv if argv is None else [sys.argv[0], *argv])
    meta = {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_default_threads": default_threads, "widths": widths,
            "size": args.size, "rounds": args.rounds, "threads": args.threads, "seed": args.seed}
    header = ["# Width switching: latency of one slimmable detector whose width changes every call (issue 28)", "",
              f"Command: `{command}`", "",
              f"Machine: {meta['cpu']}, {meta['cpu_count']} CPUs (torch's default {default_threads} threads), "
              f"torch {torch.__version__}, {meta['date']}. Image {args.size[0]}x{args.size[1]}, widths "
              f"{widths} (switch cycle in this order), {args.rounds} rounds, seed {args.seed}.", "",
              "Medians of interleaved rounds (script docstring: `bench/width_switch.py`). switch / random / "
              "switch_k1 include `us3l.set_width`; fixed / plain time the forward only; ratios are to plain."]
    results, sections = {}, []
    for name in frameworks:
        results[name], sec = bench_framework(name, args, widths, args.threads, default_threads)
        sections += sec
    text = "\n".join(header) + "\n\n" + "\n\n".join(sections) + "\n"
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
        print(f"wrote {args.output} and {os.path.splitext(args.output)[0]}.json")
    else:
        print(json.dumps(meta))


if __name__ == "__main__":
    main()
