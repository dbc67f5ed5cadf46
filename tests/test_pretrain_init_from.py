"""Pre-training starts from a US3L reference checkpoint's backbone, heads and EMA teacher (--init-from).

The reference files are built from a description of the reference layout written here as data (names and
shapes read from its builders: us_cifar_resnet18 under SimCLR_Momentum / BYOL, DDP ``module.`` prefix, BN of
the backbone without running statistics), never from this project's modules.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from us3l.checkpoint import CheckpointError
from us3l.engine.config import load_config
from us3l.ssl.init_from import init_from_checkpoint
from us3l.ssl.methods import build_method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN, DIM, PRED_HIDDEN = 64, 32, 64  # the reference uses HIDDEN_DIM for both projector and predictor hidden


def reference_cifar_resnet18_backbone():
    """us_cifar_resnet18: 3x3 stem conv1/bn1, BasicBlocks [2, 2, 2, 2], 1x1 downsample where the shape changes;
    USBatchNorm2d(track_running_stats=False): weight and bias only."""
    shapes = {"conv1.weight": (64, 3, 3, 3), "bn1.weight": (64,), "bn1.bias": (64,)}
    inp = 64
    for layer, planes in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{layer}.{block}."
            cin = inp if block == 0 else planes
            shapes[p + "conv1.weight"] = (planes, cin, 3, 3)
            shapes[p + "conv2.weight"] = (planes, planes, 3, 3)
            for bn in ("bn1", "bn2"):
                shapes[f"{p}{bn}.weight"] = shapes[f"{p}{bn}.bias"] = (planes,)
            if block == 0 and cin != planes:
                shapes[p + "downsample.0.weight"] = (planes, cin, 1, 1)
                shapes[p + "downsample.1.weight"] = shapes[p + "downsample.1.bias"] = (planes,)
        inp = planes
    return shapes


def reference_bn1d(prefix, n):
    return {f"{prefix}.weight": (n,), f"{prefix}.bias": (n,), f"{prefix}.running_mean": (n,),
            f"{prefix}.running_var": (n,), f"{prefix}.num_batches_tracked": ()}


def reference_encoder(hidden_bias):
    """encoder_q / encoder_k: the backbone with ``fc`` replaced by the 3-layer projector."""
    shapes = reference_cifar_resnet18_backbone()
    shapes.update({"fc.0.weight": (HIDDEN, 512), "fc.0.bias": (HIDDEN,), "fc.3.weight": (HIDDEN, HIDDEN),
                   "fc.6.weight": (DIM, HIDDEN), "fc.6.bias": (DIM,)})
    shapes.update(reference_bn1d("fc.1", HIDDEN))
    shapes.update(reference_bn1d("fc.4", HIDDEN))
    if hidden_bias:
        shapes["fc.3.bias"] = (HIDDEN,)
    return shapes


def reference_predictor(name):
    shapes = {f"{name}.0.weight": (PRED_HIDDEN, DIM), f"{name}.3.weight": (DIM, PRED_HIDDEN), f"{name}.3.bias": (DIM,)}
    shapes.update(reference_bn1d(f"{name}.1", PRED_HIDDEN))
    return shapes


def reference_checkpoint(path, kind="simclr_momentum", feature_adapters=False):
    """``{"epoch", "arch", "state_dict": {"module.<key>": tensor}, "optimizer"}`` as the reference's ssl worker
    saves it. SimCLR_Momentum: encoder_q/encoder_k (fc.3 with bias) + predictor; BYOL: fc.3 without bias,
    predictor + predictor_new."""
    g = torch.Generator().manual_seed(3)
    shapes = {f"encoder_q.{k}": v for k, v in reference_encoder(kind == "simclr_momentum").items()}
    shapes.update({f"encoder_k.{k}": v for k, v in reference_encoder(kind == "simclr_momentum").items()})
    shapes.update(reference_predictor("predictor"))
    if kind == "byol":
        shapes.update(reference_predictor("predictor_new"))
    if feature_adapters:
        shapes["proj_conv.layer4_1_bn2.weight"] = (512, 512, 1, 1)
    state = {}
    for k, shape in shapes.items():
        state["module." + k] = (torch.tensor(7) if k.endswith("num_batches_tracked")
                                else torch.randn(shape, generator=g))
    torch.save({"epoch": 400, "arch": "us_cifar_resnet18", "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "momentum": 0.9}]}}, path)
    return state


def method_for(base_loss="simclr_momentum", **over):
    args = ["model.cifar_stem=true", f"method.base_loss={base_loss}", f"method.proj_hidden={HIDDEN}",
            f"method.proj_dim={DIM}", f"method.pred_hidden={PRED_HIDDEN}"] + [f"{k}={v}" for k, v in over.items()]
    cfg = load_config(os.path.join(ROOT, "configs", "us3l_cifar100_r18.yaml"), args)
    torch.manual_seed(0)
    return cfg, build_method(cfg)


def test_simclr_momentum_reference_maps_backbone_heads_and_teacher(tmp_path):
    path = str(tmp_path / "checkpoint.pth.tar")
    ref = reference_checkpoint(path, "simclr_momentum", feature_adapters=True)
    cfg, m = method_for()
    report = init_from_checkpoint(m, path, cfg.model.arch, cfg.model.cifar_stem)
    on, te = m.online.state_dict(), m.teacher.state_dict()
    key = "layer3.0.downsample.0.weight"
    assert torch.equal(on[f"backbone.{key}"], ref[f"module.encoder_q.{key}"])
    assert torch.equal(on["projector.3.bias"], ref["module.encoder_q.fc.3.bias"])
    assert torch.equal(on["projector.4.running_var"], ref["module.encoder_q.fc.4.running_var"])
    # SimCLR-momentum's predictor is used only by sub-networks: it is our auxiliary head
    assert m.online.predictor is None and torch.equal(on["aux_head.3.weight"], ref["module.predictor.3.weight"])
    assert torch.equal(te["backbone.layer4.1.conv2.weight"], ref["module.encoder_k.layer4.1.conv2.weight"])
    assert torch.equal(te["projector.6.bias"], ref["module.encoder_k.fc.6.bias"])
    assert not torch.equal(te["backbone.conv1.weight"], on["backbone.conv1.weight"])  # the EMA encoder, not a copy
    # every reference tensor is mapped or listed as dropped
    n_mapped = len(report.mapped)
    dropped = report.dropped
    assert n_mapped + sum(1 for d in dropped if not d.startswith("[")) == len(ref)
    assert any(d.startswith("proj_conv.layer4_1_bn2.weight") for d in dropped)
    assert {d.split(" ")[0] for d in dropped if d.startswith("[")} == {"[epoch]", "[arch]", "[optimizer]"}
    # what the file cannot set is listed: the backbone's BN statistics (the reference trains without them)
    assert "backbone.bn1.running_mean" in report.kept_init and "teacher.backbone.bn1.running_var" in report.kept_init
    assert not [k for k in report.kept_init if k.endswith(("weight", "bias"))]
    assert "BN statistics" in report.summary()


def test_byol_reference_maps_predictor_and_distillation_head(tmp_path):
    path = str(tmp_path / "byol.pth.tar")
    ref = reference_checkpoint(path, "byol")
    cfg, m = method_for("byol")
    init_from_checkpoint(m, path, cfg.model.arch, cfg.model.cifar_stem)
    on = m.online.state_dict()
    assert torch.equal(on["predictor.0.weight"], ref["module.predictor.0.weight"])
    assert torch.equal(on["aux_head.0.weight"], ref["module.predictor_new.0.weight"])
    assert "projector.3.bias" not in on  # BYOL's hidden projector layer has no bias, as the reference's


def test_shape_mismatch_fails_and_loads_nothing(tmp_path):
    path = str(tmp_path / "checkpoint.pth.tar")
    reference_checkpoint(path)
    cfg, m = method_for(**{"method.proj_dim": DIM * 2})
    before = {k: v.clone() for k, v in m.online.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"fc\.6\.weight -> projector\.6\.weight: checkpoint \(32, 64\)"):
        init_from_checkpoint(m, path, cfg.model.arch, cfg.model.cifar_stem)
    assert all(torch.equal(v, before[k]) for k, v in m.online.state_dict().items())


def test_other_architecture_is_refused(tmp_path):
    path = str(tmp_path / "checkpoint.pth.tar")
    reference_checkpoint(path)
    cfg, m = method_for(**{"model.cifar_stem": "false"})
    with pytest.raises(CheckpointError, match="CIFAR stem"):
        init_from_checkpoint(m, path, cfg.model.arch, cfg.model.cifar_stem)


def _pretrain_from(path, out, tmp_path, proj_dim):
    """tools/pretrain.py --init-from PATH on a tiny embedded set (one iteration)."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", US3L_DATASETS=str(tmp_path / "datasets"))
    cmd = [sys.executable, os.path.join(ROOT, "tools", "pretrain.py"), "--config",
           os.path.join(ROOT, "configs", "us3l_tiny_cpu.yaml"), "--output-dir", str(out), "--init-from", path,
           "method.base_loss=simclr_momentum", f"method.proj_hidden={HIDDEN}", f"method.proj_dim={proj_dim}",
           f"method.pred_hidden={PRED_HIDDEN}", "data.image_size=8", "data.batch_size=4",
           "data.embedded_train_per_class=2", "data.embedded_val_per_class=1", "train.iterations=1",
           "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=0", "train.num_threads=1"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_pretrain_tool_starts_from_a_reference_checkpoint(tmp_path):
    path = str(tmp_path / "checkpoint.pth.tar")
    ref = reference_checkpoint(path)
    out = tmp_path / "run"
    proc = _pretrain_from(path, out, tmp_path, DIM)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "init from" in proc.stderr and "dropped" in proc.stderr
    report = json.loads((out / "init_from.json").read_text())
    assert "encoder_q.conv1.weight -> backbone.conv1.weight" in report["mapped"]
    assert "predictor.1.running_mean -> aux_head.1.running_mean" in report["mapped"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations_done"] == 1 and summary["init_from"]["mapped"] == len(report["mapped"])
    # one training step from the reference weights: close to them, not a fresh initialisation
    final = torch.load(out / "final.pth", weights_only=True)["model"]
    w0 = ref["module.encoder_q.layer2.0.conv1.weight"]
    assert (final["backbone.layer2.0.conv1.weight"] - w0).abs().max() < 0.05 * w0.abs().max()


def test_init_from_our_own_pretraining_checkpoint(tmp_path):
    from us3l.checkpoint import PRETRAIN_FORMAT
    cfg, src = method_for("byol")
    torch.save({"format": PRETRAIN_FORMAT, "model": src.online.state_dict(), "teacher": src.teacher.state_dict(),
                "meta": {}}, tmp_path / "last.pth")
    torch.manual_seed(1)
    dst = build_method(cfg)
    report = init_from_checkpoint(dst, str(tmp_path / "last.pth"), cfg.model.arch, cfg.model.cifar_stem)
    assert not report.dropped and not report.kept_init
    for a, b in zip(src.online.state_dict().values(), dst.online.state_dict().values()):
        assert torch.equal(a, b)
    # a method without a teacher lists the file's teacher as dropped
    cfg2, naive = method_for("byol", **{"method.name": "simsiam_naive"})
    report = init_from_checkpoint(naive, str(tmp_path / "last.pth"), cfg2.model.arch, cfg2.model.cifar_stem)
    assert any(d.startswith("teacher.backbone.conv1.weight") for d in report.dropped)
    assert any(d.startswith("model.aux_head.0.weight") for d in report.dropped)


def test_missing_init_file_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "pretrain.py"), "--config",
                           os.path.join(ROOT, "configs", "us3l_tiny_cpu_fast.yaml"), "--output-dir", str(out),
                           "--init-from", str(tmp_path / "no such: file.pth")],
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "model.init_from: checkpoint not found" in proc.stderr
    assert not out.exists()


def test_a_checkpoint_that_does_not_fit_is_refused_before_anything_is_written(tmp_path):
    """The file exists but does not fit (a projector of another size): refused with exit 2 and no output folder
    (log.txt used to be written first)."""
    path = str(tmp_path / "checkpoint.pth.tar")
    reference_checkpoint(path)
    out = tmp_path / "run"
    proc = _pretrain_from(path, out, tmp_path, DIM * 2)  # a projector of another size
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "does not fit" in proc.stderr
    assert not out.exists()
