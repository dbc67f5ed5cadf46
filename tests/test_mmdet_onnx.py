"""ONNX deployment of the plain MMDetection Faster / Mask R-CNN (us3l.mmdet.onnx_export): a slimmable detector
trained one iteration, calibrated at 0.5 and exported by tools/export_detector.py (as a user runs it), then written
as ONNX and run in onnxruntime's CPU provider; compared with the plain detector's own ``test_step`` (mmcv's
RoIAlign and nms) on the tiny val set with ``score_thr=0`` (100 detections per image)."""
import os
import subprocess
import sys

import mmcv.ops  # noqa: F401
import mmdet  # noqa: F401
import numpy as np
import onnx
import pytest
import torch
from ckpt_helpers import ROOT
from mmdet_helpers import MODEL_OPTS
from mmdet_helpers import cli_options as _cli
from onnx_helpers import export_graph, match

CONFIGS = {"faster": os.path.join(ROOT, "projects", "detection", "mmdet_configs",
                                  "faster-rcnn_us-r50_fpn_slimmable_tiny.py"),
           "mask": os.path.join(ROOT, "projects", "segmentation", "mmdet_configs",
                                "mask-rcnn_us-r50_fpn_slimmable_tiny.py")}
# US-ResNet-18 (no pre-trained file), few RoIs; one iteration of batch 2
RUN_OPTS = {"train_cfg.max_epochs": 1, "train_dataloader.batch_size": 2, "train_dataloader.dataset.indices": 2,
            "default_hooks.checkpoint.interval": 1, "default_hooks.logger.interval": 1, "randomness.seed": 0}
ALL_DETECTIONS = ["model.test_cfg.rcnn.score_thr=0.0"]  # every (RoI, class) pair enters the class-wise NMS
TOL = 1e-3


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def plain(request, datasets, tmp_path_factory):
    """A slimmable detector trained one sandwich iteration, calibrated at 0.5 and exported at 0.5 by
    tools/export_detector.py in a subprocess: the plain detector's weights and the config written beside them."""
    from us3l.mmdet import detector_tools
    from us3l.mmdet.engine import train_main

    name, cfg = request.param, CONFIGS[request.param]
    work = tmp_path_factory.mktemp(f"onnx_{name}")
    train_main([cfg, "--work-dir", str(work / "train"), "--cfg-options", *_cli({**MODEL_OPTS, **RUN_OPTS})])
    calibrated = str(work / "calibrated.pth")
    detector_tools.calibrate(str(work / "train" / "epoch_1.pth"), calibrated, cfg, [0.5], 1, opts=_cli(MODEL_OPTS))
    weights = str(work / "plain_w0.5.pth")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export_detector.py"), calibrated, weights,
                          "--width", "0.5", "--config", cfg, "--opts", *_cli(MODEL_OPTS)],
                         env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return {"name": name, "mask": name == "mask", "weights": weights, "config": weights[:-4] + ".py",
            "slimmable_config": cfg, "calibrated": calibrated, "work": work}


@pytest.fixture(scope="module")
def exported(plain):
    return export_graph(plain, "mmdet", ALL_DETECTIONS)


def _plain_model(plain, opts=ALL_DETECTIONS):
    from us3l.mmdet.detector_tools import parse_opts
    from us3l.mmdet.onnx_export import load_plain_detector

    return load_plain_detector(plain["weights"], plain["config"], parse_opts(opts))


def _match(ref, got):
    return match(ref, got, "labels")


def _pytorch_raw(model, image, sample):
    """``test_step`` of the plain detector (mmcv ops) on one image; boxes back in the resized image's pixels."""
    with torch.no_grad():
        pred = model.test_step({"inputs": [image], "data_samples": [sample.clone()]})[0].pred_instances
    factor = np.array(sample.metainfo["scale_factor"] * 2, dtype=np.float32)
    return {"boxes": pred.bboxes.numpy() * factor, "scores": pred.scores.numpy(), "labels": pred.labels.numpy(),
            "pred": pred}


def _pytorch_roi_masks(model, image, sample, boxes, labels):
    """The plain model's mask head (mmcv RoIAlign) on given boxes (resized image's pixels): each RoI's
    probabilities of its label, what the graph's ``masks`` output holds."""
    from mmdet.structures.bbox import bbox2roi

    with torch.no_grad():
        data = model.data_preprocessor({"inputs": [image], "data_samples": [sample.clone()]}, False)
        feats = model.extract_feat(data["inputs"])
        logits = model.roi_head._mask_forward(feats, bbox2roi([torch.from_numpy(boxes)]))["mask_preds"]
        return logits.sigmoid()[torch.arange(len(labels)), torch.from_numpy(labels)][:, None].numpy()


# ------------------------------------------------------------------------------------------------ graph
def test_graph_holds_standard_onnx_ops_only_with_half_pixel_roi_align(exported):
    import onnxruntime as ort

    info = exported["info"]
    assert info["onnx"] == exported["onnx"] and info["opset"] == 17 and info["mask"] == exported["mask"]
    assert info["inputs"] == ["image"]
    assert info["outputs"] == ["boxes", "scores", "labels"] + (["masks"] if exported["mask"] else [])
    proto = onnx.load(exported["onnx"])
    onnx.checker.check_model(proto)
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}  # no mmcv (or any other) custom op
    ops = {n.op_type for n in proto.graph.node}
    assert {"RoiAlign", "NonMaxSuppression"} <= ops and not any("mmcv" in op.lower() for op in ops)
    roi_aligns = [n for n in proto.graph.node if n.op_type == "RoiAlign"]
    assert len(roi_aligns) == 4 * (2 if exported["mask"] else 1)  # every FPN level, box (and mask) RoIs
    for node in roi_aligns:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["coordinate_transformation_mode"] == b"half_pixel" and attrs["sampling_ratio"] == 0
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[:2] == [1, 3] and all(isinstance(d, str) for d in dims[2:])  # dynamic H, W
    session = ort.InferenceSession(exported["onnx"], providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == info["outputs"]


def test_mmcv_roi_align_equals_torchvision_aligned_and_onnxruntime(tmp_path):
    """What the graph relies on: mmcv's RoIAlign(aligned=True, sampling_ratio=0) is torchvision's roi_align(aligned=
    True) (boxes partly outside the map and smaller than a pixel included), and onnxruntime's RoiAlign with
    half_pixel gives the same numbers."""
    import onnxruntime as ort
    from mmcv.ops import RoIAlign
    from torchvision.ops import roi_align

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 8, 17, 23, generator=g)
    boxes = torch.rand(40, 4, generator=g) * 80
    boxes[:, 2:] += boxes[:, :2] + torch.rand(40, 2, generator=g) * torch.tensor([0.3] * 5 + [40.0] * 35)[:, None]
    rois = torch.cat([torch.zeros(40, 1), boxes], 1)
    mmcv_out = RoIAlign(7, 0.25, 0, aligned=True)(feats, rois)
    torch.testing.assert_close(roi_align(feats, rois, 7, 0.25, 0, aligned=True), mmcv_out, rtol=0, atol=1e-6)

    class Pool(torch.nn.Module):
        def forward(self, x, r):
            return roi_align(x, r, 7, 0.25, 0, aligned=True)

    path = str(tmp_path / "roi_align.onnx")
    torch.onnx.export(Pool(), (feats, rois), path, opset_version=17, dynamo=False, input_names=["x", "r"],
                      dynamic_axes={"r": {0: "n"}})
    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": feats.numpy(),
                                                                                   "r": rois.numpy()})[0]
    np.testing.assert_allclose(out, mmcv_out.numpy(), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------- detections
def test_onnxruntime_gives_the_pytorch_detections(exported):
    """On 4 val images: the same number of detections and labels, boxes and scores within 1e-3 after matching,
    per-RoI mask probabilities within 1e-3 of the PyTorch mask head on the same boxes, pasted masks equal."""
    from us3l.mmdet.onnx_export import OnnxDetector
    from us3l.mmdet.slimmable_eval import data_batches

    model, cfg = _plain_model(exported)
    detector = OnnxDetector(exported["onnx"], threads=1)
    batch = next(data_batches(cfg.test_dataloader, batch_size=4))
    worst = {"boxes": 0.0, "scores": 0.0, **({"masks": 0.0, "pasted": 0.0} if exported["mask"] else {})}
    for image, sample in zip(batch["inputs"], batch["data_samples"]):
        ref, got = _pytorch_raw(model, image, sample), detector(image)
        assert len(got["boxes"]) == len(ref["boxes"]) == cfg.model.test_cfg.rcnn.max_per_img  # 100 each
        assert got["labels"].dtype == np.int64 and got["boxes"].shape == (len(ref["boxes"]), 4)
        rows, cols, dist = _match(ref, got)
        assert len(rows) == len(ref["boxes"]) and dist.max() <= TOL, dist.max()
        worst["boxes"] = max(worst["boxes"], float(np.abs(ref["boxes"][rows] - got["boxes"][cols]).max()))
        worst["scores"] = max(worst["scores"], float(np.abs(ref["scores"][rows] - got["scores"][cols]).max()))
        # the deployed predictions in the original image (rescaled; masks pasted outside the graph)
        pred = detector.predict_one(image, sample.metainfo)
        rows_t, cols_t = torch.as_tensor(rows), torch.as_tensor(cols)
        torch.testing.assert_close(pred.bboxes[cols_t], ref["pred"].bboxes[rows_t], rtol=0, atol=TOL)
        if exported["mask"]:
            assert got["masks"].shape == (len(ref["boxes"]), 1, 28, 28)
            roi_masks = _pytorch_roi_masks(model, image, sample, ref["boxes"], ref["labels"])
            diff = float(np.abs(roi_masks[rows] - got["masks"][cols]).max())
            assert diff <= TOL, diff
            worst["masks"] = max(worst["masks"], diff)
            assert pred.masks.shape == ref["pred"].masks.shape and pred.masks.dtype == torch.bool
            differ = (pred.masks[cols_t] != ref["pred"].masks[rows_t]).float().mean().item()
            assert differ <= 1e-3, differ  # a pixel can only flip where a probability is within 1e-3 of 0.5
            worst["pasted"] = max(worst["pasted"], differ)
        else:
            assert "masks" not in got and "masks" not in pred
    print(f"\n{exported['name']}: max |diff| PyTorch vs onnxruntime: {worst}")


def test_any_image_size_runs_with_the_pytorch_detections(exported):
    """Dynamic H / W: a crop of a val image that is not a multiple of the pad divisor, at scale factor 1."""
    from mmdet.structures import DetDataSample

    from us3l.mmdet.onnx_export import OnnxDetector
    from us3l.mmdet.slimmable_eval import data_batches

    model, cfg = _plain_model(exported)
    detector = OnnxDetector(exported["onnx"])
    image = next(data_batches(cfg.test_dataloader, batch_size=1))["inputs"][0][:, 5:105, 3:123].contiguous()
    sample = DetDataSample(metainfo=dict(img_shape=(100, 120), ori_shape=(100, 120), scale_factor=(1.0, 1.0),
                                         img_id=0))
    ref, got = _pytorch_raw(model, image, sample), detector(image)
    assert len(got["boxes"]) == len(ref["boxes"]) > 0
    rows, _, dist = _match(ref, got)
    assert len(rows) == len(ref["boxes"]) and dist.max() <= TOL
    assert got["boxes"][:, 2].max() <= 120 and got["boxes"][:, 3].max() <= 100  # clipped to the unpadded image


def _pytorch_detections_as_ground_truth(model, cfg, dst: str, per_image: int = 3) -> list[str]:
    """A COCO file of the val images whose objects are the plain PyTorch detector's ``per_image`` best detections
    (boxes, and pasted masks as RLE); the overrides that make it the test set and the metric's ground truth."""
    import json

    from mmengine.runner import Runner
    from pycocotools import mask as mask_utils

    ds = cfg.test_dataloader.dataset
    with open(os.path.join(ds.data_root, ds.ann_file)) as f:
        doc = json.load(f)
    loader = Runner.build_dataloader(cfg.test_dataloader)
    cat_ids = loader.dataset.cat_ids
    anns = []
    with torch.no_grad():
        for batch in loader:
            for sample in model.test_step(batch):
                pred = sample.pred_instances
                for i in pred.scores.argsort(descending=True)[:per_image].tolist():
                    x1, y1, x2, y2 = pred.bboxes[i].tolist()
                    ann = {"id": len(anns) + 1, "image_id": sample.img_id, "category_id": cat_ids[int(pred.labels[i])],
                           "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
                    if "masks" in pred:
                        rle = mask_utils.encode(np.asfortranarray(pred.masks[i].numpy().astype(np.uint8)))
                        ann.update(segmentation={"size": rle["size"], "counts": rle["counts"].decode()},
                                   area=float(mask_utils.area(rle)))
                    anns.append(ann)
    with open(dst, "w") as f:
        json.dump(dict(doc, annotations=anns), f)
    return [f"test_dataloader.dataset.ann_file={dst}", f"test_evaluator.ann_file={dst}"]


def test_ap_where_it_can_differ_onnxruntime_equals_pytorch(exported, tmp_path):
    """MMDetection's CocoMetric through the test loader of the PyTorch evaluation. A detector trained one iteration
    scores AP near 0 on the real labels, where equal APs show little. Against
    its own 3 best PyTorch detections per val image as the labels, PyTorch scores far above 0 and the ONNX graph in
    onnxruntime must score the same (within 0.1 AP), box and mask."""
    from us3l.mmdet import detector_tools
    from us3l.mmdet.slimmable_eval import coco_metrics

    model, cfg = _plain_model(exported)
    labels = _pytorch_detections_as_ground_truth(model, cfg, str(tmp_path / "pytorch_as_gt.json"))
    model, cfg = _plain_model(exported, ALL_DETECTIONS + labels)
    torch_ap = coco_metrics(model, cfg)
    result = detector_tools.evaluate_onnx(exported["onnx"], exported["config"], opts=ALL_DETECTIONS + labels,
                                          threads=1)
    assert result["onnx"] == exported["onnx"] and (result["mask_AP"] is not None) == exported["mask"]
    assert result["box_AP"] == pytest.approx(100 * result["metrics"]["bbox_mAP"])
    onnx_ap = result["metrics"]
    keys = ["bbox_mAP", "bbox_mAP_50"] + (["segm_mAP", "segm_mAP_50"] if exported["mask"] else [])
    assert min(torch_ap[k] for k in keys) > 0.3, torch_ap  # the labels are the PyTorch detections themselves
    for key in keys:
        assert abs(100 * torch_ap[key] - 100 * onnx_ap[key]) <= 0.1, (key, torch_ap, onnx_ap)
    print(f"\n{exported['name']}: AP against PyTorch's detections: PyTorch "
          f"{[round(100 * torch_ap[k], 2) for k in keys]} onnxruntime "
          f"{[round(100 * onnx_ap[k], 2) for k in keys]} ({keys})")


# ----------------------------------------------------------------------------------------- no detections
@pytest.mark.parametrize("opts", [["model.test_cfg.rcnn.score_thr=1.0"],  # proposals, but no score above 1
                                  ["model.test_cfg.rpn.min_bbox_size=1000"]],  # no proposal at all
                         ids=["no_detection_passes_score_thr", "no_proposal"])
def test_a_blank_image_with_no_detections_runs_without_error(plain, opts, tmp_path):
    """The weights detect on a blank image at any threshold below 1 (score_thr=0.05 gives 100 detections), so
    these settings make PyTorch return none: onnxruntime returns none too, through empty NMS / RoiAlign / heads."""
    from mmdet.structures import DetDataSample

    from us3l.mmdet import detector_tools
    from us3l.mmdet.onnx_export import OnnxDetector

    dst = str(tmp_path / "empty.onnx")
    detector_tools.export_onnx(plain["weights"], plain["config"], dst, opts=opts)
    model, _ = _plain_model(plain, opts)
    detector = OnnxDetector(dst)
    blank = torch.zeros(3, 128, 128, dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(img_shape=(128, 128), ori_shape=(64, 64), scale_factor=(2.0, 2.0),
                                         img_id=0))
    ref = _pytorch_raw(model, blank, sample)
    assert len(ref["boxes"]) == 0
    got = detector(blank)
    assert got["boxes"].shape == (0, 4) and got["scores"].shape == (0,) and got["labels"].shape == (0,)
    pred = detector.predict_one(blank, sample.metainfo)
    assert len(pred) == 0 and pred.bboxes.shape == ref["pred"].bboxes.shape
    if plain["mask"]:
        assert got["masks"].shape == (0, 1, 28, 28)
        assert pred.masks.shape == ref["pred"].masks.shape == (0, 64, 64) and pred.masks.dtype == torch.bool


# ------------------------------------------------------------------------------------------- user errors
def test_export_refuses_what_it_cannot_deploy_with_one_line(plain, tmp_path):
    from us3l.detection.backends import USER_ERRORS, load_backend

    backend = load_backend("mmdet")
    dst = str(tmp_path / "never.onnx")
    with pytest.raises(USER_ERRORS, match="slimmable detector; export one width as a plain detector first"):
        backend.export_onnx(plain["calibrated"], plain["slimmable_config"], dst, opts=_cli(MODEL_OPTS))
    with pytest.raises(FileNotFoundError, match="weights not found"):
        backend.export_onnx(str(tmp_path / "missing.pth"), plain["config"], dst)
    with pytest.raises(FileNotFoundError, match="config not found"):
        backend.export_onnx(plain["weights"], str(tmp_path / "missing.py"), dst)
    with pytest.raises(USER_ERRORS, match="opset 11: RoiAlign drops MMDetection's half-pixel shift"):
        backend.export_onnx(plain["weights"], plain["config"], dst, opset=11)
    with pytest.raises(USER_ERRORS, match="would overwrite the input"):
        backend.export_onnx(plain["weights"], plain["config"], plain["weights"])
    with pytest.raises(USER_ERRORS, match="not plain nms"):
        backend.export_onnx(plain["weights"], plain["config"], dst, opts=["model.test_cfg.rcnn.nms.type=soft_nms"])
    assert not os.path.exists(dst)


def test_export_detector_writes_the_onnx_graph_with_onnx(plain, tmp_path):
    """``tools/export_detector.py ... --onnx DST.onnx`` as a user runs it: the plain detector and its graph, which
    runs in onnxruntime with the plain detector's outputs."""
    from us3l.detection.onnx_graph import check_onnx
    from us3l.mmdet.onnx_export import OnnxDetector

    dst, onnx_path = tmp_path / "plain.pth", tmp_path / "plain.onnx"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export_detector.py"), plain["calibrated"],
                          str(dst), "--width", "0.5", "--config", plain["slimmable_config"], "--onnx", str(onnx_path),
                          "--opts", *_cli(MODEL_OPTS)], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.onnx", "plain.pth", "plain.py"]
    assert check_onnx(str(onnx_path))["ops"]
    assert OnnxDetector(str(onnx_path)).with_mask == plain["mask"]
