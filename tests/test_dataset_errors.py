"""Bad datasets give one clear error line and exit code 2 (us3l.cli), before any training starts."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from us3l.cli import DatasetFormatError
from us3l.data.datasets import check_coco_instances

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = os.path.join(ROOT, "projects", "segmentation")


@pytest.fixture
def coco_copy(tiny_coco, tmp_path):
    """A private copy of the tiny validation split: (json path, image folder, parsed json)."""
    images = tmp_path / "val"
    shutil.copytree(tiny_coco["val_images"], images)
    with open(tiny_coco["val_json"]) as f:
        doc = json.load(f)
    return tmp_path / "instances.json", images, doc


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return str(path)


def test_a_good_set_passes(coco_copy):
    path, images, doc = coco_copy
    check_coco_instances(_write(path, doc), str(images), "ok")


@pytest.mark.parametrize("breakage, error, message", [
    ("not_coco", DatasetFormatError, "not a COCO instances file: no images, annotations, categories"),
    ("no_categories_key", DatasetFormatError, "not a COCO instances file: no categories"),
    ("empty", DatasetFormatError, "lists no images"),
    ("image_absent", FileNotFoundError, "1 of 8 images named in .* are not in"),
    ("unknown_category", DatasetFormatError, r"category ids \[99\] that are not in its categories list"),
    ("unknown_image", DatasetFormatError, r"image ids \[12345\] that are not in its images list"),
    ("not_json", DatasetFormatError, "is not a JSON file"),
    ("no_folder", FileNotFoundError, "image folder not found"),
    ("duplicate_image_id", DatasetFormatError, r"image ids \[\d+\] appear more than once"),
    ("duplicate_annotation_id", DatasetFormatError, r"annotation ids \[\d+\] appear more than once"),
    ("negative_width_box", DatasetFormatError, r"has bbox \[.*\]; COCO boxes are \[x, y, width, height\]"),
    ("string_segmentation", DatasetFormatError, "has a segmentation str 'abc'"),
])
def test_broken_sets_are_named_precisely(coco_copy, breakage, error, message):
    path, images, doc = coco_copy
    if breakage == "not_coco":
        doc = {"info": "a list of captions"}
    elif breakage == "no_categories_key":
        doc.pop("categories")
    elif breakage == "empty":
        doc["images"], doc["annotations"] = [], []
    elif breakage == "image_absent":
        os.remove(images / doc["images"][0]["file_name"])
    elif breakage == "unknown_category":
        doc["annotations"][0]["category_id"] = 99
    elif breakage == "unknown_image":
        doc["annotations"][0]["image_id"] = 12345
    elif breakage == "no_folder":
        shutil.rmtree(images)
    elif breakage == "duplicate_image_id":
        doc["images"][1]["id"] = doc["images"][0]["id"]
    elif breakage == "duplicate_annotation_id":
        doc["annotations"][1]["id"] = doc["annotations"][0]["id"]
    elif breakage == "negative_width_box":
        doc["annotations"][0]["bbox"][2] = -3.0
    elif breakage == "string_segmentation":
        doc["annotations"][0]["segmentation"], doc["annotations"][0]["iscrowd"] = "abc", 0
    json_file = _write(path, doc)
    if breakage == "not_json":
        path.write_text("{ this is not json")
    with pytest.raises(error, match=message):
        check_coco_instances(json_file, str(images), "mine")


def test_train_net_with_a_json_that_is_not_coco(coco_copy, tmp_path):
    """The issue's case: ``--dataset`` with a non-COCO JSON used to stop with ``KeyError: 'categories'``."""
    path, images, _ = coco_copy
    _write(path, [{"caption": "a cat"}])
    cmd = [sys.executable, os.path.join(SEG, "train_net.py"), "--config-file",
           os.path.join(SEG, "configs", "mask_rcnn_US-R50_FPN_tiny.yaml"), "--dataset", "mine", str(path), str(images),
           "DATASETS.TRAIN", "('mine',)", "DATASETS.TEST", "('mine',)", "MODEL.WEIGHTS", "",
           "OUTPUT_DIR", str(tmp_path / "out")]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: dataset 'mine':") and "is not a COCO instances file" in last, last
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "model_final.pth").exists()


def test_a_calibration_width_outside_the_range_is_refused_at_set_up(tmp_path):
    """``MODEL.US3L.CALIBRATION.WIDTHS`` with 0.1 used to be refused by the calibration AFTER the whole training."""
    cmd = [sys.executable, os.path.join(SEG, "train_net.py"), "--config-file",
           os.path.join(SEG, "configs", "mask_rcnn_US-R50_FPN_slimmable_tiny.yaml"), "MODEL.WEIGHTS", "",
           "MODEL.US3L.CALIBRATION.WIDTHS", "[1.0, 0.1]", "OUTPUT_DIR", str(tmp_path / "out")]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: MODEL.US3L.CALIBRATION.WIDTHS: width 0.1 is outside") and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # refused before default_setup


def _one_broken_image(coco_copy):
    """The copy reduced to ONE image whose file does not decode (so the first batch reads it): (json, broken)."""
    path, images, doc = coco_copy
    broken = images / doc["images"][0]["file_name"]
    broken.write_bytes(b"not a png at all")
    for im in doc["images"][1:]:
        os.remove(images / im["file_name"])
    doc = dict(doc, images=doc["images"][:1],
               annotations=[a for a in doc["annotations"] if a["image_id"] == doc["images"][0]["id"]])
    _write(path, doc)
    return path, broken


def test_a_corrupt_image_mid_training_is_one_line_naming_the_file(coco_copy, tmp_path):
    """One image file that does not decode used to stop training with PIL's traceback (exit 1)."""
    path, broken = _one_broken_image(coco_copy)
    images = broken.parent
    cmd = [sys.executable, os.path.join(SEG, "train_net.py"), "--config-file",
           os.path.join(SEG, "configs", "mask_rcnn_US-R50_FPN_slimmable_tiny.yaml"), "--dataset", "mine", str(path),
           str(images), "DATASETS.TRAIN", "('mine',)", "DATASETS.TEST", "()", "MODEL.WEIGHTS", "",
           "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path / "out")]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training image ") and str(broken) in last and "cannot be read" in last, last
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "model_final.pth").exists()


def test_a_corrupt_image_mid_training_is_one_line_naming_the_file_mmdet(coco_copy, tmp_path, tiny_coco):
    """The same in MMDetection, where mmcv's loader asserts 'failed to load image' with a traceback (exit 1)."""
    path, broken = _one_broken_image(coco_copy)
    cmd = [sys.executable, os.path.join(SEG, "mmdet_train.py"),
           os.path.join(SEG, "mmdet_configs", "mask-rcnn_us-r50_fpn_slimmable_tiny.py"), "--work-dir",
           str(tmp_path / "work"), "--cfg-options", "model.backbone.depth=18", "model.backbone.init_cfg=None",
           "model.neck.in_channels=[64,128,256,512]", f"train_dataloader.dataset.data_root={tmp_path}/",
           f"train_dataloader.dataset.ann_file={path.name}",
           f"train_dataloader.dataset.data_prefix.img={broken.parent.name}/",
           "train_dataloader.batch_size=1", "train_cfg.max_epochs=1"]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", US3L_DATASETS=tiny_coco["datasets_dir"])
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training image ") and str(broken) in last and "cannot be read" in last, last
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "work").rglob("*.pth"))


def test_a_non_crowd_rle_mask_is_refused_before_polygon_mask_training(coco_copy):
    """Detectron2 trains Mask R-CNN on polygons by default and used to stop mid-training on a non-crowd RLE."""
    import numpy as np
    from pycocotools import mask as mask_util

    from us3l.d2 import check_datasets, register_coco_json

    path, images, doc = coco_copy
    ann = doc["annotations"][0]
    im = next(i for i in doc["images"] if i["id"] == ann["image_id"])
    binary = np.zeros((im["height"], im["width"]), dtype=np.uint8, order="F")
    x, y, w, h = (int(v) for v in ann["bbox"])
    binary[y:y + max(h, 1), x:x + max(w, 1)] = 1
    rle = mask_util.encode(binary)
    ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}  # iscrowd stays 0
    register_coco_json("rle_mine", _write(path, doc), str(images))
    with pytest.raises(DatasetFormatError, match=rf"annotation id {ann['id']} is a non-crowd object with an RLE "
                                                 r"mask.*set INPUT.MASK_FORMAT bitmask"):
        check_datasets(["rle_mine"], mask_format="polygon")
    check_datasets(["rle_mine"], mask_format="bitmask")  # Detectron2 trains on it as a bit mask
    check_datasets(["rle_mine"])  # and evaluation reads it either way
