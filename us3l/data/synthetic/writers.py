"""Writing the synthetic sets to disk: COCO instances and ImageFolder, published atomically and reused.

A folder holds ``us3l_dataset.json`` with the parameters it was made from; the same parameters reuse it as is,
other parameters replace it (only if this generator made it). Writers build in a temporary sibling and
move it into place, so an interrupted or concurrent run never leaves half a dataset.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

import numpy as np
from PIL import Image

from ..paths import datasets_root
from .masks import mask_bbox, mask_to_polygons, polygons_to_mask
from .scenes import (
    CLASSIFICATION_CLASSES,
    CLASSIFICATION_STYLES,
    DETECTION_STYLES,
    STYLE_MAX_OBJECTS,
    categories,
    classification_image,
    detection_image,
    detection_scene,
)

DEFAULT_DATASET_NAME = "us3l_shapes"
GENERATOR_VERSION = 1
PARAMS_FILE = "us3l_dataset.json"


def detection_file_name(image_id: int) -> str:
    """The file name of detection image ``image_id`` (1-based) in a split folder of the generated set."""
    return f"{image_id:06d}.png"


def default_dataset_root() -> str:
    """Where the default dataset lives: ``$US3L_DATASETS/us3l_shapes`` (``datasets/us3l_shapes`` if unset)."""
    return os.path.join(datasets_root(), DEFAULT_DATASET_NAME)


def _read_params(root: str) -> Optional[dict]:
    try:
        with open(os.path.join(root, PARAMS_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _publish(tmp: str, root: str, params: dict) -> None:
    """Move a finished dataset into place; replaces only an older dataset made by this generator."""
    with open(os.path.join(tmp, PARAMS_FILE), "w") as f:
        json.dump(params, f, indent=2, sort_keys=True)
    if os.path.exists(root):
        old = _read_params(root)
        if old == params:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if old is None and os.listdir(root):
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{root} exists, is not empty and was not made by us3l.data.synthetic; "
                                  "refusing to overwrite it")
        shutil.rmtree(root)
    try:
        os.replace(tmp, root)
    except OSError:  # a concurrent writer won the race
        shutil.rmtree(tmp, ignore_errors=True)
        if _read_params(root) != params:
            raise


def _tmp_sibling(root: str) -> str:
    parent = os.path.dirname(os.path.abspath(root)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(os.path.abspath(root)) + ".tmp-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the published dataset should not be
    return tmp


def _min_area(size: int, min_visible_area: Optional[int]) -> int:
    return int(min_visible_area) if min_visible_area is not None else max(12, round(0.004 * size * size))


def _coco_info(root: str, params: dict) -> dict:
    return {
        "root": root,
        "train_images": os.path.join(root, "train"),
        "val_images": os.path.join(root, "val"),
        "train_json": os.path.join(root, "annotations", "instances_train.json"),
        "val_json": os.path.join(root, "annotations", "instances_val.json"),
        "categories": categories(params.get("style", "simple")),
        "params": params,
    }


def generate_coco_dataset(root: Optional[str] = None, num_train: int = 256, num_val: int = 64,
                          image_size: int = 96, seed: int = 0, max_objects: Optional[int] = None,
                          min_visible_area: Optional[int] = None, style: str = "simple") -> dict:
    """Write (or reuse) a synthetic COCO instance-segmentation dataset of a detection ``style``
    (``simple`` or ``clutter``, see :mod:`.scenes`); ``max_objects`` defaults to the style's.

    Layout: ``root/{train,val}/*.png`` and ``root/annotations/instances_{train,val}.json``, plus
    ``root/us3l_dataset.json`` holding the parameters; a folder with the same parameters is reused as is.
    Returns ``{root, train_images, val_images, train_json, val_json, categories, params}``.
    """
    root = root or default_dataset_root()
    if style not in DETECTION_STYLES:
        raise ValueError(f"unknown detection style {style!r}; choose from {DETECTION_STYLES}")
    max_objects = STYLE_MAX_OBJECTS[style] if max_objects is None else max_objects
    if num_train < 1 or num_val < 1 or image_size < 16 or max_objects < 1:
        raise ValueError("need num_train, num_val, max_objects >= 1 and image_size >= 16")
    params = {"kind": "coco_instances", "generator_version": GENERATOR_VERSION, "num_train": int(num_train),
              "num_val": int(num_val), "image_size": int(image_size), "seed": int(seed),
              "max_objects": int(max_objects), "min_visible_area": _min_area(image_size, min_visible_area)}
    if style != "simple":  # the original style keeps its original parameters (existing folders stay valid)
        params["style"] = style
    cats = categories(style)
    if _read_params(root) == params and all(os.path.exists(p) for p in (
            os.path.join(root, "annotations", "instances_train.json"),
            os.path.join(root, "annotations", "instances_val.json"))):
        return _coco_info(root, params)

    tmp = _tmp_sibling(root)
    try:
        os.makedirs(os.path.join(tmp, "annotations"))
        for split_idx, (split, count) in enumerate((("train", num_train), ("val", num_val))):
            os.makedirs(os.path.join(tmp, split))
            images, annotations = [], []
            for i in range(count):
                img, objs = detection_image(style, seed, split_idx, i, image_size, max_objects,
                                            params["min_visible_area"])
                image_id = i + 1
                file_name = detection_file_name(image_id)
                Image.fromarray(img).save(os.path.join(tmp, split, file_name))
                images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
                for cat_id, vis in objs:
                    polys = mask_to_polygons(vis)
                    if not np.array_equal(polygons_to_mask(polys, image_size, image_size), vis):
                        raise AssertionError("polygon cover does not reproduce the mask (generator bug)")
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id,
                                        "segmentation": polys, "area": float(vis.sum()),
                                        "bbox": mask_bbox(vis), "iscrowd": 0})
            coco = {"info": {"description": f"{DEFAULT_DATASET_NAME} synthetic shapes ({split})",
                             "version": str(GENERATOR_VERSION), "year": 2023},
                    "licenses": [], "images": images, "annotations": annotations,
                    "categories": [dict(c) for c in cats]}
            with open(os.path.join(tmp, "annotations", f"instances_{split}.json"), "w") as f:
                json.dump(coco, f)
        _publish(tmp, root, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _coco_info(root, params)


def generate_classification_dataset(root: str, num_per_class_train: int = 64, num_per_class_val: int = 16,
                                    image_size: int = 64, seed: int = 0, style: str = "category") -> dict:
    """Write (or reuse) an ImageFolder set ``root/{train,val}/<class>/*.png``: one dominant object per image.

    Used for kNN / linear-probe evaluation of pre-training. Some images carry a small distractor of another
    class behind the dominant object. ``style``: ``category`` paints each class in its own palette and
    pattern (colour alone nearly gives the class away, as in the detection set); ``shape`` paints every
    object in random colours with a random one of the four patterns, so only the outline tells the class:
    random features do much worse there, which leaves room to see what pre-training learned.
    Returns ``{root, train_dir, val_dir, classes, params}``; ``classes`` is sorted, the order torchvision's
    ImageFolder assigns labels in.
    """
    if num_per_class_train < 1 or num_per_class_val < 1 or image_size < 16:
        raise ValueError("need at least one image per class and image_size >= 16")
    if style not in CLASSIFICATION_STYLES:
        raise ValueError(f"unknown classification style {style!r}; choose from {CLASSIFICATION_STYLES}")
    params = {"kind": "classification", "generator_version": GENERATOR_VERSION,
              "num_per_class_train": int(num_per_class_train), "num_per_class_val": int(num_per_class_val),
              "image_size": int(image_size), "seed": int(seed)}
    if style != "category":  # the category style keeps its original parameters (existing folders stay valid)
        params["style"] = style
    class_names = CLASSIFICATION_CLASSES[style]
    info = {"root": root, "train_dir": os.path.join(root, "train"), "val_dir": os.path.join(root, "val"),
            "classes": sorted(class_names), "params": params}
    if _read_params(root) == params:
        return info
    tmp = _tmp_sibling(root)
    try:
        for split_idx, (split, count) in enumerate((("train", num_per_class_train), ("val", num_per_class_val))):
            for ci, name in enumerate(class_names):
                os.makedirs(os.path.join(tmp, split, name))
                for i in range(count):
                    img = classification_image(style, seed, split_idx, ci, i, image_size)
                    Image.fromarray(img).save(os.path.join(tmp, split, name, f"{i:06d}.png"))
        _publish(tmp, root, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


# the generators' split keys: train 0, val 1 (detection_scene / classification_image), the unlabelled pool 2
POOL_SPLIT = 2


POOL_LAYOUTS = ("scenes", "objects")


def generate_unlabelled_pool(root: str, num_images: int = 4096, image_size: int = 96, seed: int = 0,
                             style: str = "silhouette", layout: str = "scenes") -> dict:
    """Write (or reuse) an UNLABELLED pre-training pool: ``root/*.png`` scenes of a detection ``style``.

    Why: unlabelled images are free, and pre-training matters when it sees far more images than the labelled
    detection set. The pool draws from the same scene distribution as that set but from its own generator
    key (split 2; train and val are 0 and 1), so no pool image is a labelled image, and no annotation is
    written. ``layout="objects"``: object-centric images instead (one centred object of the style's
    classification view, classes in turn, the labels never written), the way ImageNet-style pools precede
    detection on scenes; crops of them learn outlines faster than crops of scenes (docs/transfer_benchmark.md).
    Returns ``{root, num_images, params}``.
    """
    if layout not in POOL_LAYOUTS:
        raise ValueError(f"unknown pool layout {layout!r}; choose from {POOL_LAYOUTS}")
    if style not in DETECTION_STYLES or (layout == "objects" and style not in CLASSIFICATION_CLASSES):
        allowed = DETECTION_STYLES if layout == "scenes" else tuple(CLASSIFICATION_CLASSES)
        raise ValueError(f"unknown {layout} pool style {style!r}; choose from {allowed}")
    if num_images < 1 or image_size < 16:
        raise ValueError("need num_images >= 1 and image_size >= 16")
    params = {"kind": "unlabelled_pool", "generator_version": GENERATOR_VERSION, "num_images": int(num_images),
              "image_size": int(image_size), "seed": int(seed), "style": style,
              "max_objects": STYLE_MAX_OBJECTS[style]}
    if layout != "scenes":  # the scene pool's params (and so its cached folders) stay as they were
        params["layout"] = layout
    info = {"root": root, "num_images": int(num_images), "params": params}
    if _read_params(root) == params:
        return info
    tmp = _tmp_sibling(root)
    try:
        for i in range(num_images):
            if layout == "objects":
                n = len(CLASSIFICATION_CLASSES[style])
                img = classification_image(style, seed, POOL_SPLIT, i % n, i // n, image_size)
            else:
                img, _, _ = detection_scene(style, seed, POOL_SPLIT, i, image_size, params["max_objects"])
            Image.fromarray(img).save(os.path.join(tmp, f"{i:06d}.png"))
        _publish(tmp, root, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
