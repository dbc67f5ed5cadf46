"""Dataset registration: the embedded synthetic COCO-format set, COCO itself, and any COCO-format json.

Names: ``us3l_shapes_train`` / ``us3l_shapes_val`` from ``$US3L_DATASETS/us3l_shapes/{train,val}`` and
``annotations/instances_{train,val}.json`` (generate with ``us3l.data.synthetic.generate_coco_dataset``);
COCO (``coco_2017_train``, ``coco_2017_val``...) is Detectron2's built-in registration under
``$DETECTRON2_DATASETS/coco``. A missing json is reported with the variable that locates it, before any
training starts (:func:`check_datasets`), instead of pycocotools' bare FileNotFoundError mid-run.
"""
from __future__ import annotations

import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..data.datasets import check_coco_instances
from ..data.paths import datasets_root
from ..errors import DatasetFormatError, US3LError

SHAPES_NAME = "us3l_shapes"
SPLITS = ("train", "val")


class DatasetFilesError(US3LError, FileNotFoundError):
    """A registered dataset's annotation json or image folder is missing."""


def _require(json_file: str, image_root: str, name: str, hint: str) -> None:
    if not os.path.isfile(json_file):
        raise DatasetFilesError(f"dataset {name!r}: annotation file not found: {json_file}. {hint}")
    if not os.path.isdir(image_root):
        raise DatasetFilesError(f"dataset {name!r}: image folder not found: {image_root}. {hint}")


def register_coco_json(name: str, json_file: str, image_root: str, hint: str = "", **metadata) -> None:
    """Register a COCO-format instance set (lazy; checked when loaded). Re-registering new paths replaces it."""
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (getattr(meta, "json_file", None) == json_file and getattr(meta, "image_root", None) == image_root
                and all(getattr(meta, k, None) == v for k, v in metadata.items())):
            return
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    hint = hint or "Check the path given for this dataset."

    def load():
        _require(json_file, image_root, name, hint)
        return load_coco_json(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                  us3l_hint=hint, **metadata)


def register_us3l_datasets(datasets_dir: str | None = None) -> dict[str, str]:
    """Register ``us3l_shapes_{train,val}`` under ``datasets_dir`` (default: ``us3l.data.paths.datasets_root()``)."""
    datasets_dir = datasets_dir or datasets_root()
    root = os.path.join(datasets_dir, SHAPES_NAME)
    hint = (f"The embedded dataset is looked up in $US3L_DATASETS/{SHAPES_NAME} (now {os.path.abspath(root)}); "
            "create it with python -c \"from us3l.data.synthetic import generate_coco_dataset; "
            "generate_coco_dataset()\" or point US3L_DATASETS at its parent folder")
    names = {}
    for split in SPLITS:
        name = f"{SHAPES_NAME}_{split}"
        json_file = os.path.join(root, "annotations", f"instances_{split}.json")
        register_coco_json(name, json_file, os.path.join(root, split), hint, **_class_names(json_file))
        names[name] = root
    return names


def _class_names(json_file: str) -> dict:
    """``thing_classes`` of a small generated set, known at registration (Detectron2 sets it only when the set is
    loaded, so a Visualizer built before that labels classes 0..n-1); in Detectron2's order (category id)."""
    try:
        if os.path.getsize(json_file) > 50 * 2 ** 20:
            return {}
        with open(json_file) as f:
            cats = json.load(f).get("categories") or []
        return {"thing_classes": [c["name"] for c in sorted(cats, key=lambda c: c["id"])]} if cats else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # absent or damaged: the loader's own checks report it when the set is used


def check_datasets(names, mask_format: str | None = None) -> None:
    """Fail early, with a hint, when a dataset's json or images are missing or its json is not a usable COCO
    instances file (COCO or ours): before any training starts. ``mask_format``: ``INPUT.MASK_FORMAT`` of a
    Mask R-CNN trained on these sets ("polygon" cannot take a non-crowd RLE mask: Detectron2 stops mid-training)."""
    for name in names:
        if name not in DatasetCatalog.list():
            raise ValueError(f"dataset {name!r} is not registered; registered: {sorted(DatasetCatalog.list())[:8]}... "
                             "(import us3l.d2 and use --dataset NAME JSON IMAGE_ROOT for your own COCO-format data)")
        meta = MetadataCatalog.get(name)
        json_file, image_root = getattr(meta, "json_file", None), getattr(meta, "image_root", None)
        if json_file is None or image_root is None:
            continue
        hint = getattr(meta, "us3l_hint", None) or (
            "Detectron2 looks for COCO in $DETECTRON2_DATASETS/coco (now "
            f"{os.path.abspath(os.environ.get('DETECTRON2_DATASETS', 'datasets'))}/coco) with "
            "annotations/instances_{train,val}2017.json and {train,val}2017/")
        _require(json_file, image_root, name, hint)
        doc = check_coco_instances(json_file, image_root, name)
        if mask_format == "polygon":
            rle = next((a.get("id") for a in doc["annotations"]
                        if not a.get("iscrowd") and isinstance(a.get("segmentation"), dict)), None)
            if rle is not None:
                raise DatasetFormatError(
                    f"dataset {name!r}: {json_file}: annotation id {rle} is a non-crowd object with an RLE mask, "
                    "which INPUT.MASK_FORMAT polygon cannot train on (Detectron2 stops mid-training): set "
                    "INPUT.MASK_FORMAT bitmask")
