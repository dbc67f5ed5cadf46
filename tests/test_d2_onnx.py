"""ONNX deployment of the plain Detectron2 detector (Faster and Mask R-CNN): onnxruntime's CPU provider, standard
operators only, the same detections and AP as the PyTorch detector, empty results handled.

A slimmable ResNet-18 detector of the tiny configs (64 px synthetic COCO), trained ITERS sandwich iterations from
scratch and calibrated at 1.0 / 0.5 / 0.25, exported at width 0.5 by tools/export_detector.py as a user runs it,
then to ONNX. Faster R-CNN keeps Detectron2's default 1000 proposals per image (the tiny config keeps 100), so the
number of proposals differs from image to image, as in deployment.
"""
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model

from us3l.checkpoint import CheckpointError
from us3l.d2 import US3LCheckpointer, US3LTrainer, detector_tools, load_config, register_us3l_datasets, resize
from us3l.d2.onnx_export import OnnxDetector, export_onnx, match_detections
from us3l.d2.sandwich import SlimmableDetectorTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"faster": os.path.join(ROOT, "projects/detection/configs/faster_rcnn_US-R50_FPN_slimmable_tiny.yaml"),
           "mask": os.path.join(ROOT, "projects/segmentation/configs/mask_rcnn_US-R50_FPN_slimmable_tiny.yaml")}
EXTRA = {"faster": ["MODEL.RPN.POST_NMS_TOPK_TEST", "1000"], "mask": []}
ITERS = 40  # enough for a few points of box AP on the tiny set (6 iterations score every box alike)
R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "SEED", "0",
       "MODEL.US3L.CALIBRATION.NUM_BATCHES", "2", "DATALOADER.NUM_WORKERS", "0"]
# every class of every proposal is a candidate: many detections (the tiny config keeps 20 per image)
MANY = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "100"]
NONE = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.0"]  # softmax scores never exceed 1: no detection at all


@pytest.fixture(scope="module", params=["faster", "mask"])
def exported(request, tiny_coco, tmp_path_factory):
    """Train, export the width 0.5 through the tool, then three ONNX graphs: default, MANY and NONE thresholds."""
    kind = request.param
    register_us3l_datasets(tiny_coco["datasets_dir"])
    folder = tmp_path_factory.mktemp(f"onnx_{kind}")
    cfg = load_config(CONFIGS[kind], R18 + ["SOLVER.MAX_ITER", str(ITERS), "OUTPUT_DIR", str(folder / "train")])
    trainer = SlimmableDetectorTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    final = str(folder / "train" / "model_final.pth")
    plain = str(folder / "plain_w050.pth")
    env = dict(os.environ, US3L_DATASETS=tiny_coco["datasets_dir"],
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export_detector.py"), final, plain, "--width",
                          "0.5", "--config", CONFIGS[kind], "--opts", *R18], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    config = str(folder / "plain_w050.yaml")
    graphs = {}
    for name, opts in (("default", []), ("many", MANY), ("none", NONE)):
        dst = str(folder / f"plain_w050_{name}.onnx")
        info = (detector_tools.export_onnx(plain, config, dst, EXTRA[kind]) if name == "default" else
                export_onnx(plain, config, dst, EXTRA[kind] + opts))
        graphs[name] = {"info": info, "opts": EXTRA[kind] + opts, "onnx": dst}
    return {"kind": kind, "final": final, "weights": plain, "config": config, "graphs": graphs, "folder": folder}


def _pytorch(exported, opts):
    """The plain detector as Detectron2 builds and our ordinary loader loads it (every key exact)."""
    cfg = load_config(exported["config"], list(opts) + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    US3LCheckpointer(model, cfg=cfg).load(exported["weights"], checkpointables=[])
    return model.eval(), cfg


def _inputs(cfg):
    """The val images as the test mapper gives them, a non-square crop, and an upscaled image whose original size
    (height / width) differs from the model's input (boxes rescaled, masks pasted outside the graph)."""
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0], mapper=resize.test_mapper(cfg))
    batch = [b[0] for b in loader]
    image = batch[0]["image"]
    crop = image[:, 8:56, :]
    up = torch.nn.functional.interpolate(image[None].float(), size=(96, 128), mode="bilinear")[0].round()
    return batch + [{"image": crop, "height": 48, "width": 64}, {"image": up, "height": 48, "width": 64}]


def _nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []) + list(attr.graphs):
                yield from _nodes(sub)


def test_graph_has_only_standard_ops_and_aligned_roi_align(exported):
    info = exported["graphs"]["default"]["info"]
    mask = exported["kind"] == "mask"
    assert info["opset"] == 17 and info["mask"] is mask and info["width"] == 0.5
    assert info["inputs"] == ["image"] and info["outputs"] == ["boxes", "scores", "classes"] + (["masks"] * mask)
    proto = onnx.load(info["onnx"])
    onnx.checker.check_model(proto)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    nodes = list(_nodes(proto.graph))
    assert {n.domain for n in nodes} == {""}  # no custom op
    roi = [n for n in nodes if n.op_type == "RoiAlign"]
    assert len(roi) == (8 if mask else 4)  # box (and mask) pooler, 4 FPN levels each
    for n in roi:  # the half-pixel shift of ROIAlignV2 is WRITTEN (onnxruntime ignores it otherwise)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["coordinate_transformation_mode"] == b"half_pixel" and attrs["sampling_ratio"] == 0
    assert {"NonMaxSuppression", "TopK"} <= {n.op_type for n in nodes}
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, "height", "width"]


def _arrays(inst):
    out = {"boxes": inst.pred_boxes.tensor.numpy(), "scores": inst.scores.numpy(), "classes": inst.pred_classes.numpy()}
    if inst.has("pred_masks"):
        out["masks"] = inst.pred_masks.numpy()
    return out


def _match(ref, got):
    """Pairs by class, score and box (1e-3), whatever the order: two detections whose scores tie within 1e-5 may
    come in either order, or trade places at an NMS or at the per-image top-k cut (at most a few per image)."""
    m = match_detections(ref, got, tol=1e-3, tie=1e-5)
    assert m["unexplained"] == 0 and m["ties"] <= 2, {k: v for k, v in m.items() if k != "pairs"}
    return m


def test_onnxruntime_gives_the_pytorch_detections(exported):
    graph = exported["graphs"]["many"]
    model, cfg = _pytorch(exported, graph["opts"])
    detector = OnnxDetector(graph["onnx"], threads=1)
    worst = {"boxes": 0.0, "scores": 0.0, "masks": 0.0}
    proposals, ties = set(), 0
    with torch.no_grad():
        for x in _inputs(cfg):
            ref = model.inference([x], do_postprocess=False)[0]  # Detectron2's own inference, per RoI
            images = model.preprocess_image([x])
            proposals.add(len(model.proposal_generator(images, model.backbone(images.tensor), None)[0][0]))
            raw = detector.run(x["image"])
            assert len(ref) == len(raw["scores"]) > 20  # many detections at score threshold 0
            assert sorted(raw["classes"].tolist()) == sorted(ref.pred_classes.tolist())
            m = _match(_arrays(ref), raw)
            ties += m["ties"]
            for name, d in m["max_abs_diff"].items():  # per-RoI masks [N, 1, 28, 28] included
                worst[name] = max(worst[name], d)
            # post-processed as GeneralizedRCNN does: boxes in the original image, masks pasted
            a, b = model([x])[0]["instances"], detector([x])[0]["instances"]
            size = (x.get("height", x["image"].shape[1]), x.get("width", x["image"].shape[2]))
            assert a.image_size == b.image_size == size and len(a) == len(b)
            a, b = _arrays(a), _arrays(b)
            for i, j in _match({k: v for k, v in a.items() if k != "masks"}, b)["pairs"]:
                if detector.mask:  # pasted bit masks: a pixel flips only for a probability at 0.5
                    assert b["masks"][j].shape == a["masks"][i].shape == size and b["masks"].dtype == bool
                    assert (b["masks"][j] != a["masks"][i]).mean() <= 1e-3
    assert max(worst.values()) <= 1e-3, worst
    print(f"\n{exported['kind']}: max |onnxruntime - PyTorch| {worst}, score ties {ties}, "
          f"proposals per image {sorted(proposals)}")
    if exported["kind"] == "faster":  # proposal counts vary: nothing in the graph is frozen to the traced image
        assert len(proposals) > 1


def test_onnxruntime_ap_equals_pytorch_ap(exported, tmp_path):
    graph = exported["graphs"]["default"]
    model, cfg = _pytorch(exported, graph["opts"])
    cfg.defrost()
    cfg.OUTPUT_DIR = str(tmp_path / "pytorch")
    ref = US3LTrainer.test(cfg, model)
    got = detector_tools.evaluate_onnx(graph["onnx"], exported["config"], graph["opts"], output_dir=str(tmp_path),
                                       threads=1)
    tasks = ["bbox", "segm"] if exported["kind"] == "mask" else ["bbox"]
    assert sorted(got) == sorted(tasks)
    assert os.path.isfile(tmp_path / "inference_onnx" / "us3l_shapes_val" / "coco_instances_results.json")
    for task in tasks:
        print(f"\n{exported['kind']} {task} AP: PyTorch {ref['w0.50/' + task]['AP']:.3f}, "
              f"onnxruntime {got[task]['AP']:.3f}")
        # a few points at most after ITERS iterations: small, but not zero, so the comparison means something
        assert ref["w0.50/" + task]["AP"] > 0
        for metric in ("AP", "AP50", "AP75"):
            assert got[task][metric] == pytest.approx(ref["w0.50/" + task][metric], abs=0.1)


def test_images_without_detections_give_empty_results(exported):
    blank = torch.zeros(3, 64, 64, dtype=torch.uint8)
    for name in ("default", "none"):
        graph = exported["graphs"][name]
        model, _ = _pytorch(exported, graph["opts"])
        detector = OnnxDetector(graph["onnx"], threads=1)
        for image in (blank, torch.full((3, 48, 80), 255, dtype=torch.uint8)):
            x = {"image": image, "height": 100, "width": 120}
            with torch.no_grad():
                a = model([x])[0]["instances"]
            b = detector([x])[0]["instances"]
            assert len(a) == len(b) and b.image_size == (100, 120)
            if name == "none":  # the empty path through the graph and the post-processing
                assert len(b) == 0 and b.pred_boxes.tensor.shape == (0, 4) and b.scores.shape == (0,)
                if detector.mask:
                    assert b.pred_masks.shape == (0, 100, 120)
                    assert detector.run(image)["masks"].shape == (0, 1, 28, 28)


def test_export_refuses_what_is_not_a_plain_detector(exported, tmp_path):
    dst = str(tmp_path / "x.onnx")
    kind = exported["kind"]
    with pytest.raises(ValueError, match="slimmable detector config.*export_detector"):
        export_onnx(exported["final"], CONFIGS[kind], dst, R18)
    with pytest.raises(CheckpointError):  # the slimmable checkpoint into the plain detector: keys do not fit
        export_onnx(exported["final"], exported["config"], dst)
    with pytest.raises(FileNotFoundError, match="weights not found"):
        export_onnx(str(tmp_path / "missing.pth"), exported["config"], dst)
    with pytest.raises(ValueError, match="opset >= 16"):
        export_onnx(exported["weights"], exported["config"], dst, opset=11)
    with pytest.raises(ValueError, match="would overwrite"):
        export_onnx(exported["weights"], exported["config"], exported["weights"])
    assert not os.path.exists(dst) and os.listdir(tmp_path) == []  # nothing written, not even a temporary file
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a graph")
    with pytest.raises(ValueError, match="onnxruntime cannot load"):
        detector_tools.evaluate_onnx(str(bad), exported["config"], threads=1)
