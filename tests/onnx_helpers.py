"""What the ONNX tests of both frameworks share: the graph of a plain detector fixture, and pairing detections."""
import numpy as np
from scipy.optimize import linear_sum_assignment


def export_graph(plain: dict, framework: str, opts) -> dict:
    """``plain`` (a fixture's plain detector: weights, config, work folder) with its ONNX graph, written by the
    framework backend's ``export_onnx`` with ``opts``: adds ``onnx`` (the path) and ``info`` (what it returned)."""
    from us3l.detection.backends import load_backend

    dst = str(plain["work"] / "plain_w0.5.onnx")
    info = load_backend(framework).export_onnx(plain["weights"], plain["config"], dst, opts=opts)
    return dict(plain, onnx=dst, info=info)


def match(ref: dict, got: dict, label: str):
    """One-to-one pairs (same ``label``) of PyTorch and onnxruntime detections with the least box / score distance:
    detections of equal score may come out of NMS in either order. ``(rows, cols, distances)``."""
    dist = np.maximum(np.abs(ref["boxes"][:, None] - got["boxes"][None]).max(-1),
                      np.abs(ref["scores"][:, None] - got["scores"][None]))
    dist[ref[label][:, None] != got[label][None]] = 1e9
    rows, cols = linear_sum_assignment(dist)
    return rows, cols, dist[rows, cols]
