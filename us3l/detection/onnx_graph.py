"""The deployment contract of an exported ONNX detector, the same for both frameworks: a valid model, only the
default ONNX domain's operators (no mmcv / Detectron2 / other custom op), every ``RoiAlign`` half-pixel (aligned
RoIAlign; opset >= 16 writes the attribute, older opsets silently drop the shift), loadable by onnxruntime's CPU
provider."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from ..output_paths import check_output_file

INPUT = "image"  # the one input of both frameworks' graphs: the test pipeline's resized image
MIN_OPSET = 16  # RoiAlign's coordinate_transformation_mode exists from opset 16 on
DEFAULT_DOMAINS = ("", "ai.onnx")


def check_opset(opset: int, framework: str) -> int:
    if int(opset) < MIN_OPSET:
        raise ValueError(f"opset {opset}: RoiAlign drops {framework}'s half-pixel shift below opset {MIN_OPSET}; "
                         f"use --opset {MIN_OPSET} or later (default 17)")
    return int(opset)


def graph_nodes(graph):
    """Every node of ``graph`` and of its subgraphs (If / Loop bodies)."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graph_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from graph_nodes(sub)


def check_onnx(path: str) -> dict:
    """Check the contract of a written graph; ``{"ops": {op: count}, "roi_align": [modes]}``. A broken contract
    raises ValueError (the model holds a part onnxruntime's CPU provider cannot run with standard operators)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(path)
    onnx.checker.check_model(model)
    ops, custom, modes = {}, [], []
    for node in graph_nodes(model.graph):
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
        if node.domain not in DEFAULT_DOMAINS:
            custom.append(f"{node.domain}::{node.op_type}")
        if node.op_type == "RoiAlign":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            modes.append(attrs.get("coordinate_transformation_mode", b"half_pixel").decode())  # ONNX default
    if custom:
        raise ValueError(f"{path}: operators outside the default ONNX domain: {sorted(set(custom))}")
    if not modes or any(m != "half_pixel" for m in modes):
        raise ValueError(f"{path}: RoiAlign modes {modes}: every RoiAlign must be half_pixel (aligned=True)")
    ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return {"ops": ops, "roi_align": modes}


def ort_session(path: str, threads: int | None = None):
    """onnxruntime's CPU session of ``path`` with ``threads`` intra-op threads (default: onnxruntime's)."""
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX file not found: {path}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def check_destination(dst: str, inputs: Sequence[str]) -> None:
    """``dst`` may be written: not one of ``inputs``, not under a file, in a folder that exists (checked before any
    model is built)."""
    check_output_file(dst, "DST", inputs=list(inputs))
    if not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
        raise FileNotFoundError(f"the folder of DST {dst} does not exist")


def write_graph(module, example, dst: str, outputs: Sequence[str], dynamic_axes: Mapping, opset: int,
                props: Mapping[str, str], checks: Iterable[Callable] = ()) -> dict:
    """Trace ``module`` on ``example`` (its one input, :data:`INPUT`) into ``dst`` with torch's TorchScript-based
    exporter (the dynamo one needs onnxscript), write ``props`` as the model's metadata, then check the contract
    (:func:`check_onnx`) and run ``checks`` (each called with the ONNX model). A graph that fails any of them is
    removed. Returns :func:`check_onnx`'s result."""
    import warnings

    import onnx
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        # the frameworks' shape asserts and shape arithmetic become constants of the trace: no branch on data
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # a slice left to run time
        torch.onnx.export(module, (example,), dst, input_names=[INPUT], output_names=list(outputs),
                          dynamic_axes=dict(dynamic_axes), opset_version=int(opset), do_constant_folding=True,
                          dynamo=False)
    proto = onnx.load(dst)
    onnx.helper.set_model_props(proto, dict(props))
    onnx.save(proto, dst)
    try:
        checked = check_onnx(dst)
        for check in checks:
            check(proto)
    except Exception:
        os.remove(dst)
        raise
    return checked
