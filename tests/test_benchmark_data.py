"""The transfer benchmark's data (``silhouette`` style): colour says nothing of the class, the unlabelled pool has
no annotations and shares no image with the labelled sets."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from us3l.data.synthetic import (
    STYLE_CLASSES,
    generate_classification_dataset,
    generate_coco_dataset,
    generate_unlabelled_pool,
)


def _histograms(root, split):
    """Per image: its 4x4x4 RGB colour histogram (normalised) and its class index."""
    folder = os.path.join(root, split)
    feats, labels = [], []
    for ci, name in enumerate(sorted(os.listdir(folder))):
        for f in sorted(os.listdir(os.path.join(folder, name))):
            px = np.asarray(Image.open(os.path.join(folder, name, f)).convert("RGB")).reshape(-1, 3) // 64
            h = np.bincount(px[:, 0] * 16 + px[:, 1] * 4 + px[:, 2], minlength=64).astype(np.float64)
            feats.append(h / h.sum())
            labels.append(ci)
    return np.stack(feats), np.array(labels)


def _colour_histogram_accuracy(root):
    """Nearest-class-mean on colour histograms (with the whole-image share of each colour bin), val split."""
    trf, try_ = _histograms(root, "train")
    tef, tey = _histograms(root, "val")
    means = np.stack([trf[try_ == c].mean(0) for c in range(int(try_.max()) + 1)])
    pred = np.argmin(((tef[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    return float((pred == tey).mean())


def test_colour_histograms_tell_nothing_of_the_silhouette_class(tmp_path):
    sil = generate_classification_dataset(str(tmp_path / "sil"), 48, 32, 32, seed=0, style="silhouette")
    assert sil["classes"] == sorted(STYLE_CLASSES["silhouette"])
    cat = generate_classification_dataset(str(tmp_path / "cat"), 48, 32, 32, seed=0, style="category")
    assert _colour_histogram_accuracy(cat["root"]) > 0.8  # the classifier does see a colour cue where there is one
    assert _colour_histogram_accuracy(sil["root"]) < 0.40  # 4 classes: chance is 0.25


def test_silhouette_detection_set_is_valid_coco(tmp_path):
    info = generate_coco_dataset(str(tmp_path / "det"), num_train=12, num_val=4, image_size=96, style="silhouette")
    with open(info["train_json"]) as f:
        doc = json.load(f)
    assert [c["name"] for c in doc["categories"]] == list(STYLE_CLASSES["silhouette"])
    per_image = np.bincount([a["image_id"] for a in doc["annotations"]], minlength=13)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 3
    # one colour per object: each annotated object's pixels are (up to the render noise) a single colour
    im = np.asarray(Image.open(os.path.join(info["train_images"], doc["images"][0]["file_name"])), dtype=np.float64)
    from us3l.data.synthetic import polygons_to_mask
    for a in [a for a in doc["annotations"] if a["image_id"] == doc["images"][0]["id"]]:
        m = polygons_to_mask(a["segmentation"], 96, 96)
        assert im[m].std(0).max() < 8


def _pixel_digests(folder):
    return {hashlib.sha256(np.asarray(Image.open(os.path.join(folder, f))).tobytes()).hexdigest()
            for f in os.listdir(folder) if f.endswith(".png")}


def test_unlabelled_pool_has_no_annotations_and_no_labelled_image(tmp_path):
    det = generate_coco_dataset(str(tmp_path / "det"), num_train=32, num_val=16, image_size=64, style="silhouette")
    pool = generate_unlabelled_pool(str(tmp_path / "pool"), 320, 64, seed=0, style="silhouette")
    files = sorted(os.listdir(pool["root"]))
    assert files.count("us3l_dataset.json") == 1 and len([f for f in files if f.endswith(".png")]) == 320
    assert not [f for f in files if f.endswith(".json") and f != "us3l_dataset.json"]  # no annotation file
    assert not any(os.path.isdir(os.path.join(pool["root"], f)) for f in files)  # flat: no class folders either
    labelled = _pixel_digests(det["train_images"]) | _pixel_digests(det["val_images"])
    pooled = _pixel_digests(pool["root"])
    assert len(pooled) == 320 and not (pooled & labelled)
    assert np.asarray(Image.open(os.path.join(pool["root"], files[0]))).shape == (64, 64, 3)  # the labelled size
    # reused as is with the same parameters, rewritten with others
    stamp = os.path.getmtime(os.path.join(pool["root"], "us3l_dataset.json"))
    assert generate_unlabelled_pool(str(tmp_path / "pool"), 320, 64, seed=0, style="silhouette") == pool
    assert os.path.getmtime(os.path.join(pool["root"], "us3l_dataset.json")) == stamp
    with pytest.raises(ValueError, match="style"):
        generate_unlabelled_pool(str(tmp_path / "bad"), 4, 64, style="nope")


def test_object_centric_pool_is_unlabelled_and_disjoint_from_the_probe_sets(tmp_path):
    cls = generate_classification_dataset(str(tmp_path / "cls"), 16, 8, 32, seed=0, style="silhouette")
    pool = generate_unlabelled_pool(str(tmp_path / "pool"), 160, 32, seed=0, style="silhouette", layout="objects")
    files = os.listdir(pool["root"])
    assert len([f for f in files if f.endswith(".png")]) == 160 and not any(
        os.path.isdir(os.path.join(pool["root"], f)) for f in files)  # flat: no class folders reveal labels
    labelled = set()
    for split in ("train", "val"):
        for name in os.listdir(os.path.join(cls["root"], split)):
            labelled |= _pixel_digests(os.path.join(cls["root"], split, name))
    pooled = _pixel_digests(pool["root"])
    assert len(pooled) == 160 and len(labelled) == 4 * 24 and not (pooled & labelled)
    # a different folder from the scene pool of the same size and seed (the layout is part of the params)
    scenes = generate_unlabelled_pool(str(tmp_path / "pool"), 160, 32, seed=0, style="silhouette")
    assert scenes["params"] != pool["params"] and _pixel_digests(scenes["root"]) != pooled
    with pytest.raises(ValueError, match="layout"):
        generate_unlabelled_pool(str(tmp_path / "bad"), 4, 32, style="silhouette", layout="grid")
    with pytest.raises(ValueError, match="objects pool style"):
        generate_unlabelled_pool(str(tmp_path / "bad"), 4, 32, style="clutter", layout="objects")


def test_the_dataset_tool_writes_the_pool(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tool = [sys.executable, os.path.join(root, "tools", "make_embedded_dataset.py")]
    run = subprocess.run(tool + ["--unlabelled", "--root", str(tmp_path / "pool"), "--num-train", "6",
                                 "--image-size", "48", "--style", "silhouette"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert len([f for f in os.listdir(tmp_path / "pool") if f.endswith(".png")]) == 6
    assert json.loads(run.stdout)["params"]["kind"] == "unlabelled_pool"
    bad = subprocess.run(tool + ["--unlabelled", "--num-train", "6"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--unlabelled needs --root" in bad.stderr


def test_detectron2_knows_the_class_names_at_registration(tmp_path):
    """A Visualizer built before the set is loaded labels classes by name (Detectron2 itself sets thing_classes
    only when it loads the set), for the silhouette classes as for the default ones."""
    from detectron2.data import MetadataCatalog

    from us3l.d2 import register_us3l_datasets

    generate_coco_dataset(str(tmp_path / "us3l_shapes"), num_train=2, num_val=1, image_size=64, style="silhouette")
    register_us3l_datasets(str(tmp_path))
    assert MetadataCatalog.get("us3l_shapes_val").thing_classes == list(STYLE_CLASSES["silhouette"])
    from detectron2.data import DatasetCatalog

    DatasetCatalog.get("us3l_shapes_val")  # loading sets the same names again: no conflict
    assert MetadataCatalog.get("us3l_shapes_val").thing_classes == list(STYLE_CLASSES["silhouette"])
