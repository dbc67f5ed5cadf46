"""Per-width evaluation of a slimmable backbone: BN calibration, then kNN and linear-probe accuracy.

Features are extracted once per width in eval mode with that width's calibrated BN statistics (calibrating
is mandatory: a slimmable SSL backbone has no valid statistics for any width). The linear probe trains on
the frozen, standardised features (no augmentation), which is cheap enough to run for every width.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..bn_calibration import calibrate_bn
from ..width import width as width_ctx


@torch.no_grad()
def extract_features(backbone: nn.Module, loader, width: float, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and labels of a whole loader at ``width`` (eval mode, calibrated BN)."""
    was = backbone.training
    backbone.eval()
    feats, labels = [], []
    with width_ctx(backbone, width):
        for x, y in loader:
            feats.append(backbone(x.to(device)).float().cpu())
            labels.append(torch.as_tensor(y))
    backbone.train(was)
    return torch.cat(feats), torch.cat(labels)


def knn_accuracy(train_f, train_y, test_f, test_y, k: int = 20, temperature: float = 0.1) -> float:
    """Weighted kNN on cosine similarity (votes ``exp(sim / T)``), top-1 accuracy in %."""
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    tr, te = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    k = min(k, tr.shape[0])
    correct = 0
    for i in range(0, te.shape[0], 512):
        sim = te[i:i + 512] @ tr.t()
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(top.shape[0], num_classes).scatter_add_(1, train_y[idx], (top / temperature).exp())
        correct += (votes.argmax(1) == test_y[i:i + 512]).sum().item()
    return 100.0 * correct / te.shape[0]


def linear_probe(train_f, train_y, test_f, test_y, epochs: int = 100, lr: float = 0.1, batch_size: int = 256,
                 weight_decay: float = 0.0, seed: int = 0) -> float:
    """Logistic regression on standardised frozen features (SGD, cosine lr); top-1 accuracy in %."""
    g = torch.Generator().manual_seed(seed)
    mean, std = train_f.mean(0), train_f.std(0) + 1e-6
    tr, te = (train_f - mean) / std, (test_f - mean) / std
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    clf = nn.Linear(tr.shape[1], num_classes)
    with torch.no_grad():
        clf.weight.normal_(0, 0.01, generator=g)
        clf.bias.zero_()
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(tr.shape[0] / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(tr.shape[0], generator=g)
        for i in range(0, tr.shape[0], batch_size):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            b = perm[i:i + batch_size]
            loss = F.cross_entropy(clf(tr[b]), train_y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    with torch.no_grad():
        return 100.0 * (clf(te).argmax(1) == test_y).float().mean().item()


def feature_spread(f: torch.Tensor) -> float:
    """Collapse metric of features: ``std * sqrt(dim)`` of L2-normalised vectors (0 = collapsed)."""
    z = F.normalize(f.float(), dim=1)
    return float(z.std(0).mean() * math.sqrt(z.shape[1]))


def evaluate_widths(backbone: nn.Module, calib_loader, train_loader, test_loader, widths, calib_batches: int,
                    knn_k: int = 20, probe_epochs: int = 100, probe_lr: float = 0.1, device="cpu",
                    log=print) -> list[dict]:
    """Calibrate each width, then kNN / linear-probe accuracy and the feature-spread collapse metric."""
    rows = []
    for w in widths:
        used = calibrate_bn(backbone, calib_loader, w, calib_batches, device=device)
        trf, try_ = extract_features(backbone, train_loader, w, device)
        tef, tey = extract_features(backbone, test_loader, w, device)
        row = {"width": float(w), "feature_dim": int(trf.shape[1]), "calib_batches": used,
               "knn_top1": knn_accuracy(trf, try_, tef, tey, knn_k),
               "linear_top1": linear_probe(trf, try_, tef, tey, probe_epochs, probe_lr),
               "feature_spread": feature_spread(tef), "num_train": int(trf.shape[0]), "num_test": int(tef.shape[0])}
        log(f"width {w:.3f}: kNN {row['knn_top1']:.2f}%  linear {row['linear_top1']:.2f}%  "
            f"spread {row['feature_spread']:.3f}  (dim {row['feature_dim']})")
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], title: str = "") -> str:
    lines = ([f"### {title}", ""] if title else []) + [
        "| width | feature dim | kNN top-1 (%) | linear top-1 (%) | feature spread |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['width']:.2f}x | {r['feature_dim']} | {r['knn_top1']:.2f} | {r['linear_top1']:.2f} | "
                     f"{r['feature_spread']:.3f} |")
    return "\n".join(lines) + "\n"
