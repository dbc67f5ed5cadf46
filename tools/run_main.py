#!/usr/bin/env python
"""The main job: one slimmable self-supervised backbone -> Mask R-CNN at several widths -> one results table.

Chains the standalone tools, each as its own process (so every stage can be rerun, or run on a cluster, by
itself with the very command printed here):

  1. tools/make_embedded_dataset.py   the embedded COCO-format dataset (skipped with --datasets pointing at data)
  2. tools/pretrain.py                US3L pre-training (short)
  3. tools/calibrate_bn.py            BN statistics for every width
  4. tools/convert_pretrain_to_d2.py  (or _to_mmdet.py) framework checkpoint
  5. fine-tuning per width            projects/segmentation/train_net.py (or mmdet_train.py with --mmdet)
  6. tools/eval_widths.py             COCO evaluation per width + backbone cost -> results.{md,csv,json}, PNG

Finished stages are recorded in OUTPUT/stages.json with their command; a rerun skips a stage whose command
is unchanged and whose outputs exist, until the first stage that must run again: from there on every stage
reruns (--force reruns everything). Logs of every stage are in OUTPUT/logs/.

The same tools on real data and GPUs (ResNet-50, ImageNet pre-training, COCO fine-tuning):

  torchrun --nproc_per_node 8 tools/pretrain.py --config configs/us3l_imagenet_r50.yaml --output-dir runs/r50 \
      data.root=/data/imagenet
  python tools/calibrate_bn.py runs/r50/final.pth runs/r50/calibrated.pth --widths 1.0 0.75 0.5 0.25 \
      --data-root /data/imagenet --num-batches 50
  python tools/convert_pretrain_to_d2.py runs/r50/calibrated.pth runs/r50/us3l_r50.pkl
  for w in 1.00 0.75 0.50 0.25; do
    python projects/segmentation/train_net.py --num-gpus 8 \
        --config-file projects/segmentation/configs/mask_rcnn_US-R50_FPN_1x.yaml \
        OUTPUT_DIR runs/mask_w$w MODEL.WEIGHTS runs/r50/us3l_r50.pkl MODEL.US3L.WIDTH_MULT $w
  done
  python tools/eval_widths.py 'runs/mask_w{width}' --widths 1.0 0.75 0.5 0.25 --num-gpus 8 \
      --config projects/segmentation/configs/mask_rcnn_US-R50_FPN_1x.yaml --output-dir runs/table
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

from live_log import tee_process
from us3l.data.datasets import datasets_root
from us3l.width import width_tag

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_WIDTHS = (1.0, 0.75, 0.5, 0.25)
FRAMEWORKS = {
    "d2": {
        "convert": "tools/convert_pretrain_to_d2.py",
        "converted": "backbone_d2.pkl",
        "config": "projects/segmentation/configs/mask_rcnn_US-R50_FPN_tiny.yaml",
    },
    "mmdet": {
        "convert": "tools/convert_pretrain_to_mmdet.py",
        "converted": "backbone_mmdet.pth",
        "config": "projects/segmentation/mmdet_configs/mask-rcnn_us-r50_fpn_1x_coco_tiny.py",
    },
}
DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}


def _children_cpu_seconds() -> float:
    """CPU time (user + system) of finished child processes: a load-independent measure of a stage's cost."""
    try:
        import resource
    except ImportError:  # not on Windows
        return float("nan")
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Pipeline:
    """Runs stages as subprocesses with visible, logged output and a resumable record of what finished."""

    def __init__(self, out_dir: str, force: bool, env: dict, dry_run: bool = False):
        self.out_dir, self.force, self.env, self.dry_run = out_dir, force, env, dry_run
        self.t0 = time.time()
        self.record_path = os.path.join(out_dir, "stages.json")
        self.record = {}
        if os.path.exists(self.record_path) and not force:
            with open(self.record_path) as f:
                self.record = json.load(f)
        self.timings, self.cpu = {}, {}
        self.ran_any = False  # once a stage reruns, every later stage reruns too (its inputs changed)
        os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)

    def _save_record(self) -> None:
        with open(self.record_path + ".tmp", "w") as f:
            json.dump(self.record, f, indent=2)
        os.replace(self.record_path + ".tmp", self.record_path)

    def _say(self, msg: str) -> None:
        m, s = divmod(int(time.time() - self.t0), 60)
        print(f"[us3l-main {m:02d}:{s:02d}] {msg}", flush=True)

    def run(self, name: str, cmd: list, outputs: list, index: str = "") -> None:
        cmd = [str(c) for c in cmd]
        rec = self.record.get(name)
        if not self.ran_any and rec and rec.get("cmd") == cmd and all(os.path.exists(o) for o in outputs):
            self._say(f"{index} {name}: done earlier, skipped (outputs exist; --force reruns)")
            self.timings[name] = rec.get("seconds")
            self.cpu[name] = rec.get("cpu_seconds")
            return
        self.ran_any = True
        log_path = os.path.join(self.out_dir, "logs", f"{name}.log")
        self._say(f"{index} {name}: {shlex.join(cmd)}")
        if self.dry_run:
            return
        if self.record.pop(name, None) is not None:  # an interrupted rerun must not pass for the old success
            self._save_record()
        start, cpu0 = time.time(), _children_cpu_seconds()
        with open(log_path, "wb") as log:
            log.write((shlex.join(cmd) + "\n").encode())
            rc = tee_process(cmd, log, REPO, self.env)
        seconds, cpu = round(time.time() - start, 1), round(_children_cpu_seconds() - cpu0, 1)
        if rc != 0:
            raise SystemExit(f"[us3l-main] stage {name!r} failed (exit {rc}); log: {log_path}\n"
                             f"rerun it alone with: {shlex.join(cmd)}")
        missing = [o for o in outputs if not os.path.exists(o)]
        if missing:
            raise SystemExit(f"[us3l-main] stage {name!r} finished but did not write {missing}; log: {log_path}")
        self.timings[name] = seconds
        self.cpu[name] = cpu
        self.record[name] = {"cmd": cmd, "outputs": outputs, "seconds": seconds, "cpu_seconds": cpu}
        self._save_record()
        self._say(f"{index} {name}: finished in {seconds:.0f}s ({cpu:.0f}s CPU)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="results/main")
    p.add_argument("--widths", type=float, nargs="+", default=list(DEFAULT_WIDTHS))
    p.add_argument("--mmdet", action="store_true", help="fine-tune/evaluate with MMDetection (default Detectron2)")
    p.add_argument("--datasets", default=None,
                   help="folder holding us3l_shapes (sets $US3L_DATASETS; default: $US3L_DATASETS or ./datasets)")
    p.add_argument("--num-train", type=int, default=256, help="embedded dataset: training images")
    p.add_argument("--num-val", type=int, default=64, help="embedded dataset: validation images")
    p.add_argument("--image-size", type=int, default=96, help="embedded dataset: image side")
    p.add_argument("--arch", choices=sorted(DEPTHS), default="resnet18", help="slimmable backbone")
    p.add_argument("--pretrain-config", default="configs/us3l_tiny_cpu.yaml")
    p.add_argument("--pretrain-iters", type=int, default=30, help="pre-training iterations")
    p.add_argument("--pretrain-batch", type=int, default=16, help="pre-training batch size")
    p.add_argument("--pretrain-size", type=int, default=64, help="pre-training / calibration crop size")
    p.add_argument("--pretrain-opts", nargs="*", default=[], help="extra key=value overrides for tools/pretrain.py")
    p.add_argument("--pretrained", default=None,
                   help="skip pre-training: start from this checkpoint (us3l.pretrain/1, us3l.backbone/1, ...)")
    p.add_argument("--calib-batches", type=int, default=4, help="BN calibration batches per width")
    p.add_argument("--calib-batch-size", type=int, default=64)
    p.add_argument("--detector-config", default=None, help="detector config (default: the tiny Mask R-CNN)")
    p.add_argument("--finetune-iters", type=int, default=80, help="Detectron2: fine-tuning iterations per width")
    p.add_argument("--finetune-epochs", type=int, default=1, help="MMDetection: fine-tuning epochs per width")
    p.add_argument("--finetune-opts", nargs="*", default=[],
                   help="extra fine-tuning overrides (Detectron2 KEY VALUE pairs / MMDetection key=value)")
    p.add_argument("--num-gpus", type=int, default=0, help="GPUs per fine-tuning / evaluation run (0: CPU)")
    p.add_argument("--latency-runs", type=int, default=10, help="timed CPU forward passes per width (0: skip)")
    p.add_argument("--profile-size", type=int, default=224, help="input side for backbone GFLOPs/latency")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rerun stages that finished before")
    p.add_argument("--dry-run", action="store_true", help="print the stage commands only")
    return p


def arch_opts(fw_name: str, arch: str) -> list:
    """Detector overrides that size the backbone for ``arch`` (the tiny configs are written for ResNet-50)."""
    depth = DEPTHS[arch]
    if fw_name == "d2":
        return ["MODEL.RESNETS.DEPTH", depth] + (["MODEL.RESNETS.RES2_OUT_CHANNELS", 64] if depth < 50 else [])
    return [f"model.backbone.depth={depth}"]


def finetune_command(fw_name, py, config, weights, out_dir, width, args) -> list:
    if fw_name == "d2":
        cmd = [py, "projects/segmentation/train_net.py", "--config-file", config,
               "--num-gpus", max(1, args.num_gpus), "OUTPUT_DIR", out_dir, "MODEL.WEIGHTS", weights,
               "MODEL.US3L.WIDTH_MULT", width, "SEED", args.seed, "SOLVER.MAX_ITER", args.finetune_iters,
               # the learning-rate drop at 80% of whatever budget was asked for (must precede MAX_ITER)
               "SOLVER.STEPS", f"({int(0.8 * args.finetune_iters)},)" if args.finetune_iters >= 2 else "()",
               # evaluation is the next stage's job (tools/eval_widths.py): no test set while training
               "DATASETS.TEST", "()", *arch_opts(fw_name, args.arch)]
        if args.num_gpus == 0:
            cmd += ["MODEL.DEVICE", "cpu"]
        return cmd + list(args.finetune_opts)
    opts = [f"model.backbone.init_cfg.checkpoint={weights}", f"randomness.seed={args.seed}",
            f"train_cfg.max_epochs={args.finetune_epochs}", "train_cfg.val_begin=1000000",
            *arch_opts(fw_name, args.arch), *args.finetune_opts]
    cmd = [py, "projects/segmentation/mmdet_train.py", config, "--width", width, "--work-dir", out_dir,
           "--cfg-options", *opts]
    if args.num_gpus > 1:
        cmd = [py, "-m", "torch.distributed.run", f"--nproc_per_node={args.num_gpus}", *cmd[1:],
               "--launcher", "pytorch"]
    return cmd


def finetune_output(fw_name: str, out_dir: str) -> str:
    """The file whose existence says a fine-tuning run finished."""
    return os.path.join(out_dir, "model_final.pth" if fw_name == "d2" else "last_checkpoint")


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    fw_name = "mmdet" if args.mmdet else "d2"
    fw = FRAMEWORKS[fw_name]
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    datasets = os.path.abspath(args.datasets or datasets_root())
    env = dict(os.environ, US3L_DATASETS=datasets, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    py = sys.executable
    widths = sorted({float(w) for w in args.widths}, reverse=True)
    pipe = Pipeline(out, args.force, env, args.dry_run)
    data_root = os.path.join(datasets, "us3l_shapes")
    n_stages = 5 + len(widths) - (1 if args.pretrained else 0)
    step = iter(range(1, n_stages + 1))

    def idx():
        return f"[{next(step)}/{n_stages}]"

    pipe._say(f"main job: {args.arch}, widths {widths}, {fw_name}, output {out}, datasets {datasets}")
    pipe.run("dataset", [py, "tools/make_embedded_dataset.py", "--root", data_root, "--num-train", args.num_train,
                         "--num-val", args.num_val, "--image-size", args.image_size, "--seed", args.seed],
             [os.path.join(data_root, "annotations", "instances_val.json")], idx())

    if args.pretrained:
        pretrained = os.path.abspath(args.pretrained)
    else:
        pre_dir = os.path.join(out, "pretrain")
        pretrained = os.path.join(pre_dir, "final.pth")
        overrides = [f"model.arch={args.arch}", "model.cifar_stem=false", "data.dataset=images",
                     f"data.root={data_root}", "data.augment=imagenet", f"data.image_size={args.pretrain_size}",
                     f"data.batch_size={args.pretrain_batch}", f"train.iterations={args.pretrain_iters}",
                     f"train.seed={args.seed}", "train.device=cpu" if args.num_gpus == 0 else "train.device=auto",
                     f"train.log_every={max(1, min(10, args.pretrain_iters // 10))}"]
        pipe.run("pretrain", [py, "tools/pretrain.py", "--config", args.pretrain_config, "--output-dir", pre_dir,
                              *overrides, *args.pretrain_opts], [pretrained], idx())

    calibrated = os.path.join(out, "backbone_calibrated.pth")
    pipe.run("calibrate_bn", [py, "tools/calibrate_bn.py", pretrained, calibrated, "--widths", *widths,
                              "--data-root", data_root, "--num-batches", args.calib_batches,
                              "--batch-size", args.calib_batch_size, "--image-size", args.pretrain_size,
                              "--recipe", "imagenet"], [calibrated], idx())

    converted = os.path.join(out, fw["converted"])
    pipe.run("convert", [py, fw["convert"], calibrated, converted], [converted], idx())

    config = args.detector_config or fw["config"]
    for w in widths:
        wdir = os.path.join(out, "finetune", width_tag(w))
        pipe.run(f"finetune_{width_tag(w)}", finetune_command(fw_name, py, config, converted, wdir, w, args),
                 [finetune_output(fw_name, wdir)], idx())

    eval_cmd = [py, "tools/eval_widths.py", os.path.join(out, "finetune", "w{width}"), "--widths", *widths,
                "--framework", fw_name, "--config", config, "--output-dir", out, "--arch", args.arch,
                "--profile-size", args.profile_size, "--latency-runs", args.latency_runs,
                "--num-gpus", args.num_gpus,
                "--title", f"US3L {args.arch} Mask R-CNN on {os.path.basename(data_root)} ({fw_name})",
                "--opts", *arch_opts(fw_name, args.arch)]
    pipe.run("evaluate", eval_cmd, [os.path.join(out, "results.json")], idx())

    if args.dry_run:
        return {}
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    results["meta"].update(stage_seconds=pipe.timings, stage_cpu_seconds=pipe.cpu,
                           total_seconds=round(time.time() - pipe.t0, 1),
                           command=[os.path.basename(sys.argv[0])] + list(argv if argv is not None else sys.argv[1:]))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, "results.md")) as f:
        print("\n" + f.read())
    pipe._say(f"done in {results['meta']['total_seconds']:.0f}s: {out}/results.md, results.csv, results.json, "
              "ap_vs_gflops.png")
    return results


if __name__ == "__main__":
    main()
