"""ONNX deployment of the plain Detectron2 Faster / Mask R-CNN (us3l.d2.onnx_export): a slimmable detector trained
one sandwich iteration, calibrated at 0.5 and exported at 0.5 by tools/export_detector.py (as a user runs it),
then written as ONNX and run in onnxruntime's CPU provider; compared with the plain detector's own inference
(Detectron2's ROIAlignV2 and NMS) on the tiny val set with ``SCORE_THRESH_TEST 0`` (100 detections per image)."""
import os
import subprocess
import sys

import detectron2  # noqa: F401
import numpy as np
import onnx
import pytest
import torch
from ckpt_helpers import ROOT
from onnx_helpers import export_graph, match

CONFIGS = {"faster": os.path.join(ROOT, "projects", "detection", "configs",
                                  "faster_rcnn_US-R50_FPN_slimmable_tiny.yaml"),
           "mask": os.path.join(ROOT, "projects", "segmentation", "configs",
                                "mask_rcnn_US-R50_FPN_slimmable_tiny.yaml")}
R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "DATALOADER.NUM_WORKERS", "0"]
ALL_DETECTIONS = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]  # every (RoI, class) pair enters the NMS
TOL = 1e-3


def _env(tiny):
    return dict(os.environ, OMP_NUM_THREADS="1", US3L_DATASETS=tiny["datasets_dir"],
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def plain(request, tiny_coco, tmp_path_factory):
    """One sandwich iteration from random weights, BN calibrated at 0.5 after training, then
    tools/export_detector.py at 0.5 in a subprocess: the plain detector's weights and the config beside them."""
    from us3l.d2 import load_config, register_us3l_datasets
    from us3l.d2.sandwich import SlimmableDetectorTrainer

    register_us3l_datasets(tiny_coco["datasets_dir"])
    name, config = request.param, CONFIGS[request.param]
    work = tmp_path_factory.mktemp(f"d2_onnx_{name}")
    cfg = load_config(config, R18 + ["MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", "1", "SEED", "0",
                                     "MODEL.US3L.WIDTH_MULT", "0.5", "MODEL.US3L.CALIBRATION.WIDTHS", "[0.5]",
                                     "MODEL.US3L.CALIBRATION.NUM_BATCHES", "1", "OUTPUT_DIR", str(work / "train")])
    trainer = SlimmableDetectorTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    weights = str(work / "plain_w0.5.pth")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export_detector.py"),
                          str(work / "train" / "model_final.pth"), weights, "--width", "0.5", "--config", config,
                          "--opts", *R18], env=_env(tiny_coco), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return {"name": name, "mask": name == "mask", "weights": weights, "config": weights[:-4] + ".yaml",
            "slimmable_config": config, "slimmable": str(work / "train" / "model_final.pth"), "work": work,
            "tiny": tiny_coco}


@pytest.fixture(scope="module")
def exported(plain):
    return export_graph(plain, "d2", ALL_DETECTIONS)


def _plain_model(plain, opts=ALL_DETECTIONS):
    from us3l.d2.onnx_export import load_plain_detector

    return load_plain_detector(plain["weights"], plain["config"], opts)


def _val_inputs(cfg, n):
    from detectron2.data import build_detection_test_loader

    from us3l.d2.resize import test_mapper

    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0], mapper=test_mapper(cfg))
    return [b[0] for _, b in zip(range(n), loader)]


def _pytorch_raw(model, image):
    """The plain detector's inference without post-processing: boxes in the resized image, per-RoI masks."""
    with torch.no_grad():
        inst = model.inference([{"image": image}], do_postprocess=False)[0]
    out = {"boxes": inst.pred_boxes.tensor.numpy(), "scores": inst.scores.numpy(),
           "classes": inst.pred_classes.numpy()}
    if inst.has("pred_masks"):
        out["masks"] = inst.pred_masks.numpy()
    return out


def _match(ref, got):
    return match(ref, got, "classes")


# ------------------------------------------------------------------------------------------------ graph
def test_graph_holds_standard_onnx_ops_only_with_half_pixel_roi_align(exported):
    import onnxruntime as ort

    from us3l.detection.onnx_graph import graph_nodes

    info = exported["info"]
    assert info["opset"] == 17 and info["mask"] == exported["mask"] and info["inputs"] == ["image"]
    assert info["outputs"] == ["boxes", "scores", "classes"] + (["masks"] if exported["mask"] else [])
    proto = onnx.load(exported["onnx"])
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    nodes = list(graph_nodes(proto.graph))  # with the If branches (torchvision's NMS of no box)
    assert {n.domain for n in nodes} <= {"", "ai.onnx"}  # no custom op at all
    assert {"RoiAlign", "NonMaxSuppression"} <= {n.op_type for n in nodes}
    roi_aligns = [n for n in nodes if n.op_type == "RoiAlign"]
    assert len(roi_aligns) == 4 * (2 if exported["mask"] else 1)  # the pooler's 4 FPN levels, box (and mask)
    for node in roi_aligns:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["coordinate_transformation_mode"] == b"half_pixel" and attrs["sampling_ratio"] == 0
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == 3 and all(isinstance(d, str) for d in dims[1:])  # dynamic H, W
    session = ort.InferenceSession(exported["onnx"], providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == info["outputs"]


# ----------------------------------------------------------------------------------------- detections
def test_onnxruntime_gives_the_pytorch_detections(exported):
    """On 4 val images: as many detections, the same classes, boxes and scores within 1e-3 after matching,
    per-RoI masks within 1e-3; the post-processed instances (original image, pasted masks) equal PyTorch's."""
    from us3l.d2.onnx_export import OnnxDetector

    model, cfg = _plain_model(exported)
    detector = OnnxDetector(exported["onnx"], threads=1)
    worst = {"boxes": 0.0, "scores": 0.0, **({"masks": 0.0, "pasted": 0.0} if exported["mask"] else {})}
    for x in _val_inputs(cfg, 4):
        ref, got = _pytorch_raw(model, x["image"]), detector.raw(x["image"])
        assert len(got["boxes"]) == len(ref["boxes"]) == cfg.TEST.DETECTIONS_PER_IMAGE  # 100 each
        assert got["classes"].dtype == np.int64
        rows, cols, dist = _match(ref, got)
        assert len(rows) == len(ref["boxes"]) and dist.max() <= TOL, dist.max()
        worst["boxes"] = max(worst["boxes"], float(np.abs(ref["boxes"][rows] - got["boxes"][cols]).max()))
        worst["scores"] = max(worst["scores"], float(np.abs(ref["scores"][rows] - got["scores"][cols]).max()))
        with torch.no_grad():
            want = model([x])[0]["instances"]
        have = detector([x])[0]["instances"]
        assert have.image_size == want.image_size == (x["height"], x["width"]) and len(have) == len(want)
        r, c, _ = _match({"boxes": want.pred_boxes.tensor.numpy(), "scores": want.scores.numpy(),
                          "classes": want.pred_classes.numpy()},
                         {"boxes": have.pred_boxes.tensor.numpy(), "scores": have.scores.numpy(),
                          "classes": have.pred_classes.numpy()})
        torch.testing.assert_close(have.pred_boxes.tensor[c], want.pred_boxes.tensor[r], rtol=0, atol=TOL)
        if exported["mask"]:
            assert got["masks"].shape == (len(ref["boxes"]), 1, 28, 28)
            diff = float(np.abs(ref["masks"][rows] - got["masks"][cols]).max())
            assert diff <= TOL, diff
            worst["masks"] = max(worst["masks"], diff)
            assert have.pred_masks.shape == want.pred_masks.shape and have.pred_masks.dtype == torch.bool
            differ = (have.pred_masks[c] != want.pred_masks[r]).float().mean().item()
            assert differ <= 1e-3, differ
            worst["pasted"] = max(worst["pasted"], differ)
        else:
            assert "masks" not in got and not have.has("pred_masks")
    print(f"\n{exported['name']}: max |diff| PyTorch vs onnxruntime: {worst}")


def test_any_image_size_runs_with_the_pytorch_detections(exported):
    """Dynamic H / W: a crop that is neither the traced size nor a multiple of the pad divisor."""
    from us3l.d2.onnx_export import OnnxDetector

    model, cfg = _plain_model(exported)
    image = _val_inputs(cfg, 1)[0]["image"][:, 5:55, 3:93].contiguous()
    ref, got = _pytorch_raw(model, image), OnnxDetector(exported["onnx"]).raw(image)
    assert len(got["boxes"]) == len(ref["boxes"]) > 0
    rows, _, dist = _match(ref, got)
    assert len(rows) == len(ref["boxes"]) and dist.max() <= TOL
    assert got["boxes"][:, 2].max() <= 90 and got["boxes"][:, 3].max() <= 50  # clipped to the unpadded image


def test_box_and_mask_ap_of_onnxruntime_equal_pytorch(exported, tmp_path):
    """Detectron2's COCOEvaluator on the whole tiny val set, PyTorch model vs onnxruntime, same test loader."""
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset

    from us3l.d2 import detector_tools
    from us3l.d2.evaluation import build_test_loader
    from us3l.d2.onnx_export import OnnxDetector

    model, cfg = _plain_model(exported, ALL_DETECTIONS + ["TEST.IMS_PER_BATCH", "1"])
    name = cfg.DATASETS.TEST[0]
    evaluators = {k: COCOEvaluator(name, output_dir=None, use_fast_impl=False) for k in ("torch", "onnx")}
    torch_ap = inference_on_dataset(model, build_test_loader(cfg, name), evaluators["torch"])
    inference_on_dataset(OnnxDetector(exported["onnx"], threads=1), build_test_loader(cfg, name), evaluators["onnx"])
    # what COCOeval scores (a barely trained detector's AP is near 0, so AP alone could hide a difference): the
    # same COCO results per image, as many, same categories, boxes and scores within 1e-3
    for a, b in zip(evaluators["torch"]._predictions, evaluators["onnx"]._predictions, strict=True):
        ra, rb = (sorted(p["instances"], key=lambda r: (r["category_id"], -r["score"])) for p in (a, b))
        assert a["image_id"] == b["image_id"] and len(ra) == len(rb) > 0
        assert [r["category_id"] for r in ra] == [r["category_id"] for r in rb]
        assert np.abs(np.array([r["score"] for r in ra]) - np.array([r["score"] for r in rb])).max() <= TOL
    onnx_ap = detector_tools.evaluate_onnx(exported["onnx"], exported["config"], opts=ALL_DETECTIONS, threads=1)
    tasks = ["bbox"] + (["segm"] if exported["mask"] else [])
    for task in tasks:
        for key in ("AP", "AP50"):
            assert abs(torch_ap[task][key] - onnx_ap["metrics"][task][key]) <= 0.1, (task, key, torch_ap, onnx_ap)
    assert onnx_ap["box_AP"] == pytest.approx(onnx_ap["metrics"]["bbox"]["AP"])
    assert (onnx_ap["mask_AP"] is not None) == exported["mask"]
    print(f"\n{exported['name']}: AP PyTorch {[round(torch_ap[t]['AP'], 2) for t in tasks]} "
          f"onnxruntime {[round(onnx_ap['metrics'][t]['AP'], 2) for t in tasks]} ({tasks})")


# ----------------------------------------------------------------------------------------- no detections
@pytest.mark.parametrize("opts", [["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.0"],  # proposals, no score above 1
                                  ["MODEL.RPN.POST_NMS_TOPK_TEST", "0"]],  # no proposal at all
                         ids=["no_detection_passes_the_threshold", "no_proposal"])
def test_a_blank_image_with_no_detections_runs_without_error(plain, opts, tmp_path):
    from us3l.d2 import detector_tools
    from us3l.d2.onnx_export import OnnxDetector

    dst = str(tmp_path / "empty.onnx")
    detector_tools.export_onnx(plain["weights"], plain["config"], dst, opts=opts)
    model, _ = _plain_model(plain, opts)
    blank = torch.zeros(3, 64, 96)
    assert len(_pytorch_raw(model, blank)["boxes"]) == 0
    detector = OnnxDetector(dst)
    got = detector.raw(blank)
    assert got["boxes"].shape == (0, 4) and got["scores"].shape == (0,) and got["classes"].shape == (0,)
    inst = detector([{"image": blank, "height": 32, "width": 48}])[0]["instances"]
    assert len(inst) == 0 and inst.image_size == (32, 48)
    if plain["mask"]:
        assert got["masks"].shape == (0, 1, 28, 28) and inst.pred_masks.shape == (0, 32, 48)


# ------------------------------------------------------------------------------------------- user errors
def test_export_refuses_what_it_cannot_deploy_with_one_line(plain, tmp_path):
    from us3l.detection.backends import USER_ERRORS, load_backend

    backend = load_backend("d2")
    dst = str(tmp_path / "never.onnx")
    with pytest.raises(USER_ERRORS, match="slimmable detector; export one width as a plain detector first"):
        backend.export_onnx(plain["slimmable"], plain["slimmable_config"], dst, opts=R18)
    with pytest.raises(FileNotFoundError, match="weights not found"):
        backend.export_onnx(str(tmp_path / "missing.pth"), plain["config"], dst)
    with pytest.raises(USER_ERRORS, match="opset 11: RoiAlign drops Detectron2's half-pixel shift"):
        backend.export_onnx(plain["weights"], plain["config"], dst, opset=11)
    with pytest.raises(USER_ERRORS, match="would overwrite the input"):
        backend.export_onnx(plain["weights"], plain["config"], plain["weights"])
    with pytest.raises(USER_ERRORS, match="not ROIAlignV2"):
        backend.export_onnx(plain["weights"], plain["config"], dst, opts=["MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlign"])
    assert not os.path.exists(dst)


def test_export_detector_writes_the_onnx_graph_with_onnx(plain, tmp_path):
    """``tools/export_detector.py ... --onnx DST.onnx`` as a user runs it (Detectron2 config)."""
    from us3l.d2.onnx_export import OnnxDetector
    from us3l.detection.onnx_graph import check_onnx

    dst, onnx_path = tmp_path / "plain.pth", tmp_path / "plain.onnx"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export_detector.py"), plain["slimmable"],
                          str(dst), "--width", "0.5", "--config", plain["slimmable_config"], "--onnx", str(onnx_path),
                          "--opts", *R18], env=_env(plain["tiny"]), capture_output=True, text=True, timeout=600,
                         cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.onnx", "plain.pth", "plain.yaml"]
    assert check_onnx(str(onnx_path))["ops"]
    assert OnnxDetector(str(onnx_path)).with_mask == plain["mask"]


def test_deployed_latency_in_both_runtimes(exported):
    """What tools/pick_width.py --latency-ms measures for a Detectron2 detector: the plain detector's call in
    PyTorch and the graph's in onnxruntime, on the first test image."""
    from us3l.d2 import detector_tools

    for runtime in ("torch", "onnxruntime"):
        ms = detector_tools.deployed_latency_ms(exported["weights"], exported["config"], runtime, threads=1, runs=2,
                                                onnx_path=exported["onnx"])
        assert 0 < ms < 60_000, (runtime, ms)
    with pytest.raises(ValueError, match="runtime 'tvm'"):
        detector_tools.deployed_latency_ms(exported["weights"], exported["config"], "tvm")


def test_a_traced_per_class_nms_loop_is_refused_unless_every_class_is_in_it():
    """Detectron2's batched_nms loops over the classes present at 40000 candidate boxes or more; a trace of that
    loop at a score threshold above 0 would keep only the example image's classes."""
    from onnx import helper

    from us3l.d2 import load_config
    from us3l.d2.onnx_export import _check_nms_loop

    def graph(n):
        nodes = [helper.make_node("NonMaxSuppression", ["b", "s"], [f"k{i}"]) for i in range(n)]
        return helper.make_model(helper.make_graph(nodes, "g", [], []))

    cfg = load_config(CONFIGS["mask"], R18)
    _check_nms_loop(graph(2), cfg)  # the RPN's and the box head's one offset NMS each
    with pytest.raises(ValueError, match="per-class NMS loop"):
        _check_nms_loop(graph(6), cfg)
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    _check_nms_loop(graph(6), cfg)  # every class is a candidate: the loop covers them all
