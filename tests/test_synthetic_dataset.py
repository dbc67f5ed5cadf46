"""The embedded dataset: deterministic, valid COCO (pycocotools scores its own ground truth as AP 1.0), masks,
boxes and areas consistent with occlusion."""
import contextlib
import hashlib
import io
import json
import os

import numpy as np
import pycocotools  # noqa: F401 (the module under its own name, as the tests below use it)
import pytest
from PIL import Image
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from us3l.data.synthetic import (  # noqa: E402
    generate_classification_dataset,
    generate_coco_dataset,
    mask_bbox,
    mask_to_polygons,
    polygons_to_mask,
)


def _digest(root):
    """Hash of every file's bytes (json and pixels) under root."""
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def _quiet_coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def test_layout_and_determinism(tiny_coco, tmp_path):
    root = tiny_coco["root"]
    assert sorted(os.listdir(os.path.join(root, "annotations"))) == ["instances_train.json", "instances_val.json"]
    assert len(os.listdir(tiny_coco["train_images"])) == 16 and len(os.listdir(tiny_coco["val_images"])) == 8
    again = generate_coco_dataset(str(tmp_path / "again"), num_train=16, num_val=8, image_size=64, seed=0)
    assert _digest(again["root"]) == _digest(root)
    other = generate_coco_dataset(str(tmp_path / "other"), num_train=16, num_val=8, image_size=64, seed=1)
    assert _digest(other["root"]) != _digest(root)
    with open(other["train_json"]) as f, open(tiny_coco["train_json"]) as g:
        assert json.load(f)["annotations"] != json.load(g)["annotations"]


def test_idempotent_and_regenerates_on_new_params(tmp_path):
    root = str(tmp_path / "ds")
    generate_coco_dataset(root, num_train=2, num_val=1, image_size=32)
    stamp = os.path.getmtime(os.path.join(root, "annotations", "instances_train.json"))
    generate_coco_dataset(root, num_train=2, num_val=1, image_size=32)
    assert os.path.getmtime(os.path.join(root, "annotations", "instances_train.json")) == stamp
    info = generate_coco_dataset(root, num_train=3, num_val=1, image_size=32)
    assert len(_quiet_coco(info["train_json"]).getImgIds()) == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        generate_coco_dataset(str(foreign), num_train=1, num_val=1, image_size=32)
    assert (foreign / "keep.txt").exists()


@pytest.mark.parametrize("split", ["train", "val"])
def test_ground_truth_scores_ap_one(tiny_coco, split):
    gt = _quiet_coco(tiny_coco[f"{split}_json"])
    assert [c["id"] for c in gt.loadCats(gt.getCatIds())] == [1, 2, 3, 4]
    anns = gt.loadAnns(gt.getAnnIds())
    assert anns and all(a["iscrowd"] == 0 for a in anns)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "segmentation": a["segmentation"], "score": 1.0} for a in anns]
    for iou_type in ("bbox", "segm"):
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes([dict(d) for d in dets])
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0), iou_type


def test_masks_boxes_areas_agree_with_pixels(tiny_coco):
    gt = _quiet_coco(tiny_coco["train_json"])
    size = tiny_coco["image_size"]
    n_occluded = 0
    for img_id in gt.getImgIds():
        info = gt.loadImgs(img_id)[0]
        assert (info["height"], info["width"]) == (size, size)
        pixels = np.asarray(Image.open(os.path.join(tiny_coco["train_images"], info["file_name"])))
        assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8
        anns = gt.loadAnns(gt.getAnnIds(imgIds=img_id))
        assert anns, "every image holds at least one annotated object"
        masks = [gt.annToMask(a).astype(bool) for a in anns]
        for a, m in zip(anns, masks):
            assert a["area"] == m.sum() >= 12
            assert a["bbox"] == mask_bbox(m)
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
        # visible masks never overlap: each pixel belongs to at most one object
        assert (np.sum(masks, axis=0) <= 1).all()
        n_occluded += sum(1 for a in anns if len(a["segmentation"]) > 1)
    assert n_occluded > 0, "occlusion should split some objects into several visible pieces"


def test_polygon_cover_is_exact_for_arbitrary_masks():
    rng = np.random.default_rng(3)
    for _ in range(50):
        mask = rng.uniform(size=(17, 23)) < rng.uniform(0.2, 0.8)  # holes, islands, diagonal contacts
        if mask.any():
            assert np.array_equal(polygons_to_mask(mask_to_polygons(mask), 17, 23), mask)


def test_classification_set(tiny_cls, tmp_path):
    assert tiny_cls["classes"] == ["circle", "cross", "square", "triangle"]
    for split, n in (("train_dir", 8), ("val_dir", 4)):
        assert sorted(os.listdir(tiny_cls[split])) == tiny_cls["classes"]
        for c in tiny_cls["classes"]:
            files = os.listdir(os.path.join(tiny_cls[split], c))
            assert len(files) == n
    again = generate_classification_dataset(str(tmp_path / "c"), 8, 4, 32, seed=0)
    assert _digest(again["root"]) == _digest(tiny_cls["root"])
    other = generate_classification_dataset(str(tmp_path / "d"), 8, 4, 32, seed=5)
    assert _digest(other["root"]) != _digest(tiny_cls["root"])


def _centre_colour_accuracy(root) -> float:
    """Accuracy of a nearest-class-mean classifier on the mean colour of each image's centre (the object)."""
    from PIL import Image

    colours = {}
    for c in sorted(os.listdir(os.path.join(root, "train"))):
        d = os.path.join(root, "train", c)
        colours[c] = np.stack([np.asarray(Image.open(os.path.join(d, f)), dtype=np.float64)[10:22, 10:22]
                               .reshape(-1, 3).mean(0) for f in sorted(os.listdir(d))])
    means = {c: v.mean(0) for c, v in colours.items()}
    hits = sum(min(means, key=lambda n: np.linalg.norm(x - means[n])) == c for c, v in colours.items() for x in v)
    return hits / sum(len(v) for v in colours.values())


def test_shape_style_hides_the_class_colour(tmp_path):
    """Shape style: same classes and layout as the category style, but the class no longer sets the colour:
    a colour classifier that is near perfect on the category style drops to about chance (25 %)."""
    cat = generate_classification_dataset(str(tmp_path / "cat"), 24, 4, 32, seed=0)
    shp = generate_classification_dataset(str(tmp_path / "shp"), 24, 4, 32, seed=0, style="shape")
    assert shp["classes"] == cat["classes"] and shp["params"]["style"] == "shape" and "style" not in cat["params"]
    assert _digest(shp["root"]) != _digest(cat["root"])
    assert generate_classification_dataset(str(tmp_path / "shp"), 24, 4, 32, seed=0, style="shape") == shp
    assert _centre_colour_accuracy(cat["root"]) > 0.8
    assert _centre_colour_accuracy(shp["root"]) < 0.55
    with pytest.raises(ValueError, match="style"):
        generate_classification_dataset(str(tmp_path / "bad"), 2, 2, 32, style="texture")


# ------------------------------------------------------------------------------------------ clutter style
@pytest.fixture(scope="module")
def clutter(tmp_path_factory):
    root = tmp_path_factory.mktemp("clutter") / "us3l_shapes"
    return generate_coco_dataset(str(root), num_train=12, num_val=4, image_size=96, seed=0, style="clutter")


def test_clutter_style_is_valid_coco_with_eight_classes(clutter, tmp_path):
    gt = _quiet_coco(clutter["train_json"])
    names = [c["name"] for c in gt.loadCats(gt.getCatIds())]
    assert len(names) == 8 and names[:4] == ["circle", "square", "triangle", "cross"]
    assert clutter["params"]["style"] == "clutter" and clutter["categories"] == gt.loadCats(gt.getCatIds())
    anns = gt.loadAnns(gt.getAnnIds())
    assert {a["category_id"] for a in anns} == set(range(1, 9))  # every class occurs in 12 images
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "segmentation": a["segmentation"], "score": 1.0} for a in anns]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    for a in anns:  # boxes and areas are those of the rasterised visible mask
        m = gt.annToMask(a).astype(bool)
        assert a["area"] == m.sum() and a["bbox"] == mask_bbox(m)
    again = generate_coco_dataset(str(tmp_path / "again"), num_train=12, num_val=4, image_size=96, seed=0,
                                  style="clutter")
    assert _digest(again["root"]) == _digest(clutter["root"])
    with pytest.raises(ValueError, match="style"):
        generate_coco_dataset(str(tmp_path / "bad"), num_train=1, num_val=1, style="shape")


def test_clutter_style_is_harder_than_simple(clutter, tiny_coco, tmp_path):
    """More, smaller objects per image, unlabelled clutter painted over some of them, and colour that no
    longer tells the class (a nearest-mean colour classifier drops to about chance, 1/8)."""
    simple = generate_coco_dataset(str(tmp_path / "simple"), num_train=12, num_val=4, image_size=96, seed=0)
    stats = {}
    for name, info in (("simple", simple), ("clutter", clutter)):
        gt = _quiet_coco(info["train_json"])
        anns = gt.loadAnns(gt.getAnnIds())
        rel_side = [max(a["bbox"][2], a["bbox"][3]) / 96 for a in anns]
        stats[name] = {"per_image": len(anns) / len(gt.getImgIds()), "side": float(np.median(rel_side)),
                       "colour_acc": _object_colour_accuracy(gt, info["train_images"])}
    assert stats["clutter"]["per_image"] > 1.5 * stats["simple"]["per_image"], stats
    assert stats["clutter"]["side"] < 0.7 * stats["simple"]["side"], stats
    assert stats["simple"]["colour_acc"] > 0.8 and stats["clutter"]["colour_acc"] < 0.35, stats


def _object_colour_accuracy(gt, image_dir) -> float:
    """Leave-nothing-out accuracy of a nearest-class-mean classifier on each object's mean visible colour."""
    feats, labels = [], []
    for img_id in gt.getImgIds():
        info = gt.loadImgs(img_id)[0]
        pixels = np.asarray(Image.open(os.path.join(image_dir, info["file_name"])), dtype=np.float64)
        for a in gt.loadAnns(gt.getAnnIds(imgIds=img_id)):
            feats.append(pixels[gt.annToMask(a).astype(bool)].mean(0))
            labels.append(a["category_id"])
    feats, labels = np.stack(feats), np.array(labels)
    means = {c: feats[labels == c].mean(0) for c in set(labels.tolist())}
    pred = [min(means, key=lambda c: np.linalg.norm(f - means[c])) for f in feats]
    return float(np.mean(np.array(pred) == labels))


def test_clutter_is_unlabelled_and_occludes_objects(tmp_path):
    """Clutter (blobs, strokes) is painted, visible, and never annotated; painted over objects, it cuts some of
    them into pieces."""
    from us3l.data.synthetic.scenes import detection_image, detection_scene

    n_clutter_px, n_covered = 0, 0
    for i in range(6):
        img, items, visible = detection_scene("clutter", 0, 0, i, 96, 10)
        _, labelled = detection_image("clutter", 0, 0, i, 96, 10, 37)
        annotated = np.zeros((96, 96), dtype=bool)
        for _, m in labelled:
            annotated |= m
        for k, (ob, vis) in enumerate(zip(items, visible)):
            if ob.get("label", ob["name"]) is None:
                n_clutter_px += int(vis.sum())
                assert not (vis & annotated).any()
            elif any(o.get("label", o["name"]) is None for o in items[k + 1:]):
                n_covered += 1  # a labelled object with clutter painted after it
    assert n_clutter_px > 6 * 200 and n_covered > 0
    info = generate_coco_dataset(str(tmp_path / "c"), num_train=12, num_val=1, image_size=96, style="clutter")
    gt = _quiet_coco(info["train_json"])
    assert sum(len(a["segmentation"]) > 1 for a in gt.loadAnns(gt.getAnnIds())) > 0


def test_clutter_light_style_has_larger_objects_and_less_clutter(clutter, tmp_path):
    light = generate_coco_dataset(str(tmp_path / "light"), num_train=12, num_val=4, image_size=96, seed=0,
                                  style="clutter-light")
    assert light["params"]["style"] == "clutter-light" and light["categories"] == clutter["categories"]
    sides = {}
    for name, info in (("light", light), ("clutter", clutter)):
        gt = _quiet_coco(info["train_json"])
        sides[name] = float(np.median([max(a["bbox"][2], a["bbox"][3]) for a in gt.loadAnns(gt.getAnnIds())]))
    assert sides["light"] > 1.2 * sides["clutter"], sides
