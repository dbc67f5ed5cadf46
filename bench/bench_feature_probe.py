#!/usr/bin/env python
"""Can a benchmark design show what pre-training buys? Frozen linear probe / kNN of random vs pre-trained features.

  python bench/bench_feature_probe.py OUT --style silhouette --iters 300 --methods us3l

Minutes, not hours: it answers whether the features the detector would get from pre-training are any better
than a random network's on the classes the detector must tell apart, before a transfer table is built on it.
Steps, each a standalone tool of the project: the classification view of the style (ImageFolder, labelled)
and an UNLABELLED pool of the style's scenes (``us3l.data.synthetic``); the floor (the same ResNet-18, randomly
initialised, never trained); ``tools/pretrain.py`` per method on the pool, evaluated at ``--probe-every``
checkpoints; and a supervised ceiling (the same backbone trained on the labelled view with labels for the
same number of iterations, probed the same way), which says how fast ANY training learns the classes.
``tools/eval_ssl.py`` probes every backbone: per-width BN calibration, kNN (k 20) and a linear probe.
Writes ``OUT/probe.json`` and ``OUT/probe.md``; timings are not measured here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout whose tools/ it runs


def sh(cmd, log):
    print("+", " ".join(map(str, cmd)), flush=True)
    with open(log, "w") as f:
        run = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if run.returncode:
        raise SystemExit(f"failed ({run.returncode}): see {log}")


def probe(args, ckpt, out_json):
    sh([sys.executable, "tools/eval_ssl.py", ckpt, "--widths", *args.widths, "--dataset", "imagefolder",
        "--data-root", args.cls_root, "--image-size", args.image_size, "--recipe", "cifar", "--calib-batches", 4,
        "--batch-size", 128, "--probe-epochs", 30, "--threads", args.threads, "--output", out_json],
       out_json.replace(".json", ".log"))
    with open(out_json) as f:
        return json.load(f)["rows"]


def supervised(args, iters, path):
    """The ceiling: the same backbone trained WITH labels on the labelled view (train mode, batch statistics)."""
    import torch
    import torch.nn as nn
    import torchvision

    from us3l.checkpoint.model_io import save_model_backbone
    from us3l.data.transforms import ssl_transform
    from us3l.models import build_us_model

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    data = torchvision.datasets.ImageFolder(os.path.join(args.cls_root, "train"),
                                            transform=ssl_transform("cifar", args.image_size))
    net = build_us_model("resnet18", 0, False)
    head = nn.Linear(512, len(data.classes))
    opt = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=0.02, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    it = 0
    while it < iters:
        for x, y in loader:
            loss = nn.functional.cross_entropy(head(net(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            it += 1
            if it >= iters:
                break
    save_model_backbone(net, path, method="supervised")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--style", default="silhouette", help="classification / detection style of us3l.data.synthetic")
    p.add_argument("--image-size", type=int, default=32, help="probe and pre-training input side")
    p.add_argument("--pool-size", type=int, default=4096, help="unlabelled pool images")
    p.add_argument("--pool-image-size", type=int, default=96, help="pool image side (96: the detection set's)")
    p.add_argument("--pool-layout", default="scenes",
                   help="scenes (the detection set's distribution) or objects (one centred object per image)")
    p.add_argument("--per-class", type=int, default=128, help="labelled probe images per class (train)")
    p.add_argument("--methods", nargs="*", default=["us3l"])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--probe-every", type=int, default=0, help="also probe these intermediate checkpoints")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--augment", default="outline")
    p.add_argument("--supervised-iters", type=int, nargs="*", default=[300])
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-seeds", type=int, nargs="+", default=None,
                   help="initialisation seeds of the random floor (default: --seed); several give its spread")
    p.add_argument("--pretrain-opts", nargs="*", default=[])
    args = p.parse_args(argv)
    import torch

    from us3l.checkpoint.model_io import save_model_backbone
    from us3l.data.synthetic import generate_classification_dataset, generate_unlabelled_pool
    from us3l.models import build_us_model

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    args.cls_root = os.path.join(out, "data", f"cls_{args.style}")
    generate_classification_dataset(args.cls_root, args.per_class, 200, args.image_size, args.seed, args.style)
    pool = generate_unlabelled_pool(os.path.join(out, "data", f"pool_{args.style}_{args.pool_layout}"),
                                    args.pool_size, args.pool_image_size, args.seed, args.style,
                                    args.pool_layout)["root"]
    results = []

    def record(name, iters, ckpt):
        rows = probe(args, ckpt, os.path.join(out, f"{name.split()[0]}_{os.path.basename(ckpt)}_{iters}.eval.json"))
        for r in rows:
            results.append({"backbone": name, "iterations": iters, "width": r["width"], "knn": r["knn_top1"],
                            "linear": r["linear_top1"]})
        print(name, iters, [(r["width"], round(r["linear_top1"], 1)) for r in rows], flush=True)

    for s in args.random_seeds or [args.seed]:
        torch.manual_seed(s)
        path = os.path.join(out, f"random_seed{s}.pth")
        save_model_backbone(build_us_model("resnet18", 0, False), path, method="random_init")
        record(f"random (seed {s})" if args.random_seeds else "random", 0, path)
    for iters in args.supervised_iters:
        path = os.path.join(out, f"supervised_{iters}.pth")
        supervised(args, iters, path)
        record("supervised", iters, path)
    for m in args.methods:
        run_dir = os.path.join(out, m)
        sh([sys.executable, "tools/pretrain.py", "--config", "configs/us3l_tiny_cpu.yaml", "--output-dir", run_dir,
            "model.arch=resnet18", "model.cifar_stem=false", f"method.name={m}", "method.proj_hidden=512",
            "method.proj_dim=128", "method.pred_hidden=128", "sampling.num_widths=3", "sampling.dynamic=false",
            "data.dataset=images", f"data.root={pool}", f"data.augment={args.augment}",
            f"data.image_size={args.image_size}", f"data.batch_size={args.batch}", "optim.lr=0.5",
            "optim.schedule=cosine", f"train.iterations={args.iters}",
            f"train.checkpoint_every={args.probe_every}", "train.keep_last=100", "train.log_every=50",
            "train.progress=false", f"train.num_threads={args.threads}", f"train.seed={args.seed}",
            *args.pretrain_opts], os.path.join(out, f"{m}.train.log"))
        if args.probe_every:
            for it in range(args.probe_every, args.iters, args.probe_every):
                record(m, it, os.path.join(run_dir, f"ckpt_{it:08d}.pth"))
        record(m, args.iters, os.path.join(run_dir, "final.pth"))
    doc = {"command": ["python", "bench/bench_feature_probe.py", *(argv if argv is not None else sys.argv[1:])],
           "style": args.style, "image_size": args.image_size, "pool_size": args.pool_size,
           "pool_layout": args.pool_layout, "pool_image_size": args.pool_image_size, "rows": results}
    with open(os.path.join(out, "probe.json"), "w") as f:
        json.dump(doc, f, indent=1)
    lines = ["| backbone | iterations | width | kNN top-1 (%) | linear top-1 (%) |", "|---|---|---|---|---|"]
    lines += [f"| {r['backbone']} | {r['iterations']} | {r['width']:g} | {r['knn']:.1f} | {r['linear']:.1f} |"
              for r in results]
    with open(os.path.join(out, "probe.md"), "w") as f:
        f.write(f"`{' '.join(doc['command'])}`\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
