"""Embedded default dataset: seeded synthetic shapes in COCO instance-segmentation and ImageFolder layouts.

Why: a first run (and every test) needs detection data without a download. Four categories differ in shape
AND texture/colour, objects vary in scale and rotation, occlude each other and sit on textured backgrounds,
so that AP is neither trivially 1.0 nor 0 after a short fine-tuning. Everything is a pure function of
(parameters, seed): each image draws from its own generator keyed by (seed, split, index).

Masks are the VISIBLE parts (later objects occlude earlier ones); annotations whose visible area is tiny are
dropped. Segmentations are polygons (the format every framework reads by default) that pycocotools
rasterizes back to exactly the visible mask: each polygon traces a stack of row runs along pixel edges.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

DEFAULT_DATASET_NAME = "us3l_shapes"
GENERATOR_VERSION = 1
PARAMS_FILE = "us3l_dataset.json"

CATEGORIES: List[dict] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "cross", "supercategory": "shape"},
]
CLASS_NAMES: Tuple[str, ...] = tuple(c["name"] for c in CATEGORIES)

# Two colours per category (RGB); textures mix them (see _texture).
_PALETTE = {
    "circle": ((220, 60, 40), (250, 170, 50)),     # warm red/orange, radial shading
    "square": ((40, 80, 210), (200, 230, 250)),    # blue/pale checkerboard
    "triangle": ((30, 150, 60), (10, 50, 20)),     # green/dark stripes
    "cross": ((150, 50, 180), (240, 220, 60)),     # purple with yellow dots
}


def default_dataset_root() -> str:
    """Where the default dataset lives: ``$US3L_DATASETS/us3l_shapes`` (``datasets/us3l_shapes`` if unset)."""
    from .datasets import datasets_root

    return os.path.join(datasets_root(), DEFAULT_DATASET_NAME)


# ----------------------------------------------------------------------------------------------- rendering
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random colour field plus fine noise: texture that a detector must learn to ignore."""
    coarse = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
    mid = rng.uniform(60, 200, size=(max(2, size // 8), max(2, size // 8), 3)).astype(np.uint8)
    field = 0.75 * field + 0.25 * np.asarray(Image.fromarray(mid).resize((size, size), Image.BILINEAR),
                                             dtype=np.float32)
    return field + rng.normal(0, 6, size=(size, size, 3))


def _shape_mask(name: str, dx: np.ndarray, dy: np.ndarray, r: float, theta: float) -> np.ndarray:
    """Boolean mask of a shape of 'radius' r rotated by theta; dx, dy = pixel-centre offsets from its centre."""
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    if name == "circle":
        return dx * dx + dy * dy <= r * r
    if name == "square":
        s = 0.8 * r
        return (np.abs(u) <= s) & (np.abs(v) <= s)
    if name == "triangle":  # equilateral, circumradius r, inradius r/2
        inside = np.ones(dx.shape, dtype=bool)
        for k in range(3):
            a = theta + 2 * math.pi * k / 3
            inside &= dx * math.cos(a) + dy * math.sin(a) <= r / 2
        return inside
    if name == "cross":
        t = 0.32 * r
        return ((np.abs(u) <= r) & (np.abs(v) <= t)) | ((np.abs(v) <= r) & (np.abs(u) <= t))
    raise ValueError(f"unknown shape {name!r}")


def _texture(name: str, rng: np.random.Generator, dx, dy, r: float, theta: float,
             colors: Optional[Tuple[Sequence[float], Sequence[float]]] = None) -> np.ndarray:
    """Per-pixel RGB of the object's surface (HxWx3 float): the pattern of category ``name``, in its jittered
    palette or in the given ``colors``."""
    if colors is None:
        c0, c1 = (np.array(c, dtype=np.float32) + rng.uniform(-25, 25, size=3) for c in _PALETTE[name])
    else:
        c0, c1 = (np.asarray(c, dtype=np.float32) for c in colors)
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    if name == "circle":
        t = np.clip(np.sqrt(dx * dx + dy * dy) / max(r, 1e-6), 0, 1)[..., None]
        return c1 * (1 - t) + c0 * t
    if name == "square":
        period = max(2.0, r / 2.5)
        t = ((np.floor(u / period) + np.floor(v / period)) % 2)[..., None]
    elif name == "triangle":
        period = max(2.0, r / 3.0)
        t = (np.floor((u + v) / period) % 2)[..., None]
    else:  # cross: dots
        f = 2 * math.pi / max(3.0, r / 2.0)
        t = ((np.sin(u * f) * np.sin(v * f)) > 0.35)[..., None].astype(np.float32)
    return c0 * (1 - t) + c1 * t


def _render(rng: np.random.Generator, size: int, objects: Sequence[dict]) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Paint objects in order on a textured background; return the image and each object's FULL mask."""
    img = _background(rng, size)
    centres = np.arange(size, dtype=np.float32) + 0.5
    xx, yy = np.meshgrid(centres, centres)
    masks = []
    for ob in objects:
        dx, dy = xx - ob["cx"], yy - ob["cy"]
        m = _shape_mask(ob["name"], dx, dy, ob["r"], ob["theta"])
        tex = _texture(ob.get("pattern", ob["name"]), rng, dx, dy, ob["r"], ob["theta"], ob.get("colors"))
        img[m] = tex[m]
        masks.append(m)
    img = img + rng.normal(0, 4, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), masks


def _visible_masks(masks: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Visible part of each mask when later masks are painted on top of earlier ones."""
    covered = np.zeros_like(masks[0]) if masks else None
    out: List[np.ndarray] = [None] * len(masks)  # type: ignore[list-item]
    for i in range(len(masks) - 1, -1, -1):
        out[i] = masks[i] & ~covered
        covered = covered | masks[i]
    return out


# ------------------------------------------------------------------------------------------- mask -> polygons
def _row_runs(row: np.ndarray) -> List[Tuple[int, int]]:
    """Maximal runs of True as inclusive (x0, x1) pairs."""
    padded = np.concatenate([[False], row, [False]]).astype(np.int8)
    d = np.diff(padded)
    starts, ends = np.nonzero(d == 1)[0], np.nonzero(d == -1)[0] - 1
    return list(zip(starts.tolist(), ends.tolist()))


def _chain_polygon(chain: Sequence[Tuple[int, int, int]]) -> List[float]:
    """Pixel-edge outline of vertically stacked, x-overlapping row runs (y, x0, x1) as a flat COCO polygon."""
    pts = []
    for y, _, x1 in chain:  # down the right edge
        pts += [(x1 + 1, y), (x1 + 1, y + 1)]
    for y, x0, _ in reversed(chain):  # back up the left edge
        pts += [(x0, y + 1), (x0, y)]
    # drop repeated and collinear vertices (pure clean-up; the outline is unchanged)
    simple: List[Tuple[int, int]] = []
    for p in pts:
        if simple and simple[-1] == p:
            continue
        simple.append(p)
    if len(simple) > 1 and simple[0] == simple[-1]:
        simple.pop()
    changed = True
    while changed and len(simple) > 4:
        changed = False
        for i in range(len(simple)):
            a, b, c = simple[i - 1], simple[i], simple[(i + 1) % len(simple)]
            if (a[0] == b[0] == c[0]) or (a[1] == b[1] == c[1]):
                del simple[i]
                changed = True
                break
    return [float(v) for p in simple for v in p]


def mask_to_polygons(mask: np.ndarray) -> List[List[float]]:
    """Exact polygon cover of a binary mask: pycocotools rasterizes the union back to the same pixels.

    Runs in consecutive rows that overlap in x are chained into one staircase polygon (no holes, no
    self-intersections); the union of all chains is the mask.
    """
    chains: List[List[Tuple[int, int, int]]] = []
    open_chains: List[int] = []  # indices of chains whose last row is the previous row
    for y in range(mask.shape[0]):
        runs = _row_runs(mask[y])
        next_open = []
        used = set()
        for x0, x1 in runs:
            target = None
            for ci in open_chains:
                if ci in used:
                    continue
                _, px0, px1 = chains[ci][-1]
                if max(px0, x0) <= min(px1, x1):
                    target = ci
                    break
            if target is None:
                chains.append([(y, x0, x1)])
                target = len(chains) - 1
            else:
                chains[target].append((y, x0, x1))
            used.add(target)
            next_open.append(target)
        open_chains = next_open
    return [_chain_polygon(c) for c in chains]


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterize COCO polygons with pycocotools (the rule every framework uses)."""
    from pycocotools import mask as mask_util

    rles = mask_util.frPyObjects([list(p) for p in polygons], height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def mask_bbox(mask: np.ndarray) -> List[float]:
    """COCO ``[x, y, w, h]`` of a non-empty binary mask (pixel-edge extent)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


# ------------------------------------------------------------------------------------------------ sampling
def _sample_objects(rng: np.random.Generator, size: int, n: int, scale: Tuple[float, float],
                    names: Optional[Sequence[str]] = None) -> List[dict]:
    out = []
    for i in range(n):
        name = names[i] if names is not None else CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))]
        r = float(rng.uniform(*scale)) * size
        margin = 0.4 * r
        out.append({"name": name, "r": r, "theta": float(rng.uniform(0, 2 * math.pi)),
                    "cx": float(rng.uniform(margin, size - margin)), "cy": float(rng.uniform(margin, size - margin))})
    return out


def _min_area(size: int, min_visible_area: Optional[int]) -> int:
    return int(min_visible_area) if min_visible_area is not None else max(12, round(0.004 * size * size))


def _make_detection_image(seed: int, split_idx: int, index: int, size: int, max_objects: int,
                          min_area: int) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    rng = np.random.default_rng([seed, split_idx, index])
    n = int(rng.integers(1, max_objects + 1))
    objects = _sample_objects(rng, size, n, scale=(0.10, 0.30))
    img, masks = _render(rng, size, objects)
    keep = []
    for ob, vis in zip(objects, _visible_masks(masks)):
        if int(vis.sum()) >= min_area:
            keep.append((CLASS_NAMES.index(ob["name"]) + 1, vis))
    return img, keep


# -------------------------------------------------------------------------------------- dataset bookkeeping
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


def _coco_info(root: str, params: dict) -> dict:
    return {
        "root": root,
        "train_images": os.path.join(root, "train"),
        "val_images": os.path.join(root, "val"),
        "train_json": os.path.join(root, "annotations", "instances_train.json"),
        "val_json": os.path.join(root, "annotations", "instances_val.json"),
        "categories": [dict(c) for c in CATEGORIES],
        "params": params,
    }


def generate_coco_dataset(root: Optional[str] = None, num_train: int = 256, num_val: int = 64,
                          image_size: int = 96, seed: int = 0, max_objects: int = 4,
                          min_visible_area: Optional[int] = None) -> dict:
    """Write (or reuse) a synthetic COCO instance-segmentation dataset.

    Layout: ``root/{train,val}/*.png`` and ``root/annotations/instances_{train,val}.json``, plus
    ``root/us3l_dataset.json`` holding the parameters; a folder with the same parameters is reused as is.
    Returns ``{root, train_images, val_images, train_json, val_json, categories, params}``.
    """
    root = root or default_dataset_root()
    if num_train < 1 or num_val < 1 or image_size < 16 or max_objects < 1:
        raise ValueError("need num_train, num_val, max_objects >= 1 and image_size >= 16")
    params = {"kind": "coco_instances", "generator_version": GENERATOR_VERSION, "num_train": int(num_train),
              "num_val": int(num_val), "image_size": int(image_size), "seed": int(seed),
              "max_objects": int(max_objects), "min_visible_area": _min_area(image_size, min_visible_area)}
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
                img, objs = _make_detection_image(seed, split_idx, i, image_size, max_objects,
                                                  params["min_visible_area"])
                image_id = i + 1
                file_name = f"{image_id:06d}.png"
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
                    "categories": [dict(c) for c in CATEGORIES]}
            with open(os.path.join(tmp, "annotations", f"instances_{split}.json"), "w") as f:
                json.dump(coco, f)
        _publish(tmp, root, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _coco_info(root, params)


CLASSIFICATION_STYLES = ("category", "shape")


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
    info = {"root": root, "train_dir": os.path.join(root, "train"), "val_dir": os.path.join(root, "val"),
            "classes": sorted(CLASS_NAMES), "params": params}
    if _read_params(root) == params:
        return info
    tmp = _tmp_sibling(root)
    try:
        for split_idx, (split, count) in enumerate((("train", num_per_class_train), ("val", num_per_class_val))):
            for ci, name in enumerate(CLASS_NAMES):
                os.makedirs(os.path.join(tmp, split, name))
                for i in range(count):
                    rng = np.random.default_rng([seed, 100 + split_idx, ci, i])
                    objects = []
                    if rng.uniform() < 0.3:
                        other = CLASS_NAMES[(ci + int(rng.integers(1, len(CLASS_NAMES)))) % len(CLASS_NAMES)]
                        objects += _sample_objects(rng, image_size, 1, (0.08, 0.14), [other])
                    main = _sample_objects(rng, image_size, 1, (0.25, 0.40), [name])[0]
                    main["cx"] = float(image_size / 2 + rng.uniform(-0.15, 0.15) * image_size)
                    main["cy"] = float(image_size / 2 + rng.uniform(-0.15, 0.15) * image_size)
                    if style == "shape":
                        for ob in objects + [main]:
                            ob["pattern"] = CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))]
                            ob["colors"] = tuple(rng.uniform(20, 235, size=3) for _ in range(2))
                    img, _ = _render(rng, image_size, objects + [main])
                    Image.fromarray(img).save(os.path.join(tmp, split, name, f"{i:06d}.png"))
        _publish(tmp, root, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
