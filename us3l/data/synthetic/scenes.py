"""What goes into a synthetic image: the categories and object layout of each dataset style.

Detection styles:

- ``simple`` (the original set, 4 classes): 1-4 objects of radius 10-30 % of the image, each class in its own
  palette and pattern. Easy: colour nearly gives the class away, and a quarter-width ResNet-18 detects it as
  well as the full one.
- ``clutter`` (8 classes): 3-10 small objects (radius 5-16 %), colours and patterns drawn independently of the
  class (only the outline tells it), on a patterned background with unlabelled blobs and strokes painted
  behind AND in front of the objects (occlusion by clutter, overlapping objects). Some classes differ only in
  fine detail (circle / hexagon / ring / crescent). Measured: too hard to learn from a random backbone in 300
  iterations of the tiny Mask R-CNN (box AP below 1 at widths 1.0 and 0.25).
- ``clutter-light``: the same 8 classes and random looks, 2-6 larger objects (radius 8-22 %), 0-3 clutter
  items, the plain smooth background.
- ``silhouette`` (4 classes with very different outlines: circle, triangle, cross, ring): 1-3 objects of radius
  14-26 %, each ONE random solid colour on a flat background of another random colour, so colour, pattern
  and texture say nothing of the class; only the outline does. Made for the transfer benchmark, where a
  frozen random backbone must be near chance (see ``docs/transfer_benchmark.md``).

Each image draws from its own generator keyed by (seed, split, index).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .rendering import PATTERNS, background, render, texture, visible_masks

DETECTION_STYLES: Tuple[str, ...] = ("simple", "clutter", "clutter-light", "silhouette")
CLASSIFICATION_STYLES: Tuple[str, ...] = ("category", "shape", "silhouette")

STYLE_CLASSES: Dict[str, Tuple[str, ...]] = {
    "simple": ("circle", "square", "triangle", "cross"),
    "clutter": ("circle", "square", "triangle", "cross", "star", "hexagon", "ring", "crescent"),
}
STYLE_CLASSES["clutter-light"] = STYLE_CLASSES["clutter"]
STYLE_CLASSES["silhouette"] = ("circle", "triangle", "cross", "ring")
# clutter-type layouts: object radius (fraction of the side), objects and clutter items per image
_LAYOUT = {"clutter": {"scale": (0.05, 0.16), "min_objects": 3, "clutter": (3, 9), "pattern_bg": True},
           "clutter-light": {"scale": (0.08, 0.22), "min_objects": 2, "clutter": (0, 4), "pattern_bg": False}}
# default objects per image (upper bound) of each detection style
STYLE_MAX_OBJECTS = {"simple": 4, "clutter": 10, "clutter-light": 6, "silhouette": 3}

CLASS_NAMES: Tuple[str, ...] = STYLE_CLASSES["simple"]
# the classes of each classification style (its ImageFolder sub-folders)
CLASSIFICATION_CLASSES: Dict[str, Tuple[str, ...]] = {"category": CLASS_NAMES, "shape": CLASS_NAMES,
                                                      "silhouette": STYLE_CLASSES["silhouette"]}


def categories(style: str = "simple") -> List[dict]:
    """COCO category dicts of a detection style (ids from 1)."""
    if style not in STYLE_CLASSES:
        raise ValueError(f"unknown detection style {style!r}; choose from {DETECTION_STYLES}")
    return [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(STYLE_CLASSES[style])]


CATEGORIES: List[dict] = categories("simple")


def sample_objects(rng: np.random.Generator, size: int, n: int, scale: Tuple[float, float],
                   names: Optional[Sequence[str]] = None, classes: Sequence[str] = CLASS_NAMES) -> List[dict]:
    """n objects with uniform class (unless ``names``), radius ``scale`` x size, rotation and centre."""
    out = []
    for i in range(n):
        name = names[i] if names is not None else classes[int(rng.integers(len(classes)))]
        r = float(rng.uniform(*scale)) * size
        margin = 0.4 * r
        out.append({"name": name, "r": r, "theta": float(rng.uniform(0, 2 * math.pi)),
                    "cx": float(rng.uniform(margin, size - margin)), "cy": float(rng.uniform(margin, size - margin))})
    return out


def _random_look(rng: np.random.Generator, ob: dict) -> dict:
    """Colours and pattern drawn independently of the class."""
    ob["pattern"] = PATTERNS[int(rng.integers(len(PATTERNS)))]
    ob["colors"] = tuple(rng.uniform(20, 235, size=3) for _ in range(2))
    return ob


def _solid_look(rng: np.random.Generator, ob: dict) -> dict:
    """One random colour for the whole object (no pattern), drawn independently of the class."""
    c = rng.uniform(20, 235, size=3)
    ob["pattern"], ob["colors"] = PATTERNS[1], (c, c)  # a two-tone pattern in one colour is a solid fill
    return ob


def _flat_background(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.ones((size, size, 3), np.float32) * rng.uniform(20, 235, size=3).astype(np.float32)


def _clutter_item(rng: np.random.Generator, size: int) -> dict:
    """An unlabelled distractor: a blob (about object-sized) or a long stroke."""
    if rng.uniform() < 0.5:
        ob = sample_objects(rng, size, 1, (0.05, 0.16), ["blob"])[0]
        ob["extra"] = {"a2": float(rng.uniform(0.1, 0.35)), "p2": float(rng.uniform(0, 2 * math.pi)),
                       "a3": float(rng.uniform(0.0, 0.2)), "p3": float(rng.uniform(0, 2 * math.pi))}
    else:
        ob = sample_objects(rng, size, 1, (0.15, 0.45), ["stroke"])[0]
        ob["extra"] = {"thickness": float(rng.uniform(0.04, 0.10))}
    ob["label"] = None
    return _random_look(rng, ob)


def _patterned_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """The smooth background of the simple style under a low-contrast pattern of a random kind."""
    base = background(rng, size)
    centres = np.arange(size, dtype=np.float32) + 0.5
    xx, yy = np.meshgrid(centres, centres)
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    colors = tuple(rng.uniform(40, 215, size=3) for _ in range(2))
    tex = texture(pattern, rng, xx - size / 2, yy - size / 2, float(rng.uniform(0.1, 0.3)) * size,
                  float(rng.uniform(0, 2 * math.pi)), colors)
    return 0.6 * base + 0.4 * tex


def detection_scene(style: str, seed: int, split_idx: int, index: int, size: int,
                    max_objects: int) -> Tuple[np.ndarray, List[dict], List[np.ndarray]]:
    """One image of a detection style: the uint8 image, every painted item in paint order (labelled objects
    and, in the clutter style, unlabelled clutter with ``label: None``) and each item's VISIBLE mask."""
    rng = np.random.default_rng([seed, split_idx, index])
    if style == "simple":
        n = int(rng.integers(1, max_objects + 1))
        objects = sample_objects(rng, size, n, scale=(0.10, 0.30))
        img, masks = render(rng, size, objects)
    elif style == "silhouette":
        n = int(rng.integers(1, max_objects + 1))
        objects = [_solid_look(rng, ob) for ob in sample_objects(rng, size, n, (0.14, 0.26),
                                                                 classes=STYLE_CLASSES[style])]
        img, masks = render(rng, size, objects, base=_flat_background(rng, size))
    else:
        lay = _LAYOUT[style]
        n = int(rng.integers(min(lay["min_objects"], max_objects), max_objects + 1))
        objects = [_random_look(rng, ob)
                   for ob in sample_objects(rng, size, n, lay["scale"], classes=STYLE_CLASSES[style])]
        clutter = [_clutter_item(rng, size) for _ in range(int(rng.integers(*lay["clutter"])))]
        items = objects + clutter
        order = rng.permutation(len(items))  # clutter both behind and in front of the objects
        objects = [items[i] for i in order]
        base = _patterned_background(rng, size) if lay["pattern_bg"] else None
        img, masks = render(rng, size, objects, base=base)
    return img, objects, visible_masks(masks)


def detection_image(style: str, seed: int, split_idx: int, index: int, size: int, max_objects: int,
                    min_area: int) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """One image of a detection style and its labelled VISIBLE masks as (category id, mask) pairs; objects
    whose visible area is below ``min_area`` are dropped."""
    img, objects, visible = detection_scene(style, seed, split_idx, index, size, max_objects)
    classes = STYLE_CLASSES[style]
    keep = []
    for ob, vis in zip(objects, visible):
        if ob.get("label", ob["name"]) is not None and int(vis.sum()) >= min_area:
            keep.append((classes.index(ob["name"]) + 1, vis))
    return img, keep


def classification_image(style: str, seed: int, split_idx: int, class_idx: int, index: int,
                         size: int) -> np.ndarray:
    """One ImageFolder image: a dominant object of class ``class_idx``, sometimes a small distractor of
    another class behind it. ``shape`` style paints every object in random colours and pattern;
    ``silhouette`` paints one object of its own classes in one random colour on a flat random background."""
    rng = np.random.default_rng([seed, 100 + split_idx, class_idx, index])
    if style == "silhouette":
        ob = sample_objects(rng, size, 1, (0.30, 0.42), [CLASSIFICATION_CLASSES[style][class_idx]])[0]
        ob["cx"] = float(size / 2 + rng.uniform(-0.1, 0.1) * size)
        ob["cy"] = float(size / 2 + rng.uniform(-0.1, 0.1) * size)
        img, _ = render(rng, size, [_solid_look(rng, ob)], base=_flat_background(rng, size))
        return img
    name = CLASS_NAMES[class_idx]
    objects = []
    if rng.uniform() < 0.3:
        other = CLASS_NAMES[(class_idx + int(rng.integers(1, len(CLASS_NAMES)))) % len(CLASS_NAMES)]
        objects += sample_objects(rng, size, 1, (0.08, 0.14), [other])
    main = sample_objects(rng, size, 1, (0.25, 0.40), [name])[0]
    main["cx"] = float(size / 2 + rng.uniform(-0.15, 0.15) * size)
    main["cy"] = float(size / 2 + rng.uniform(-0.15, 0.15) * size)
    if style == "shape":
        for ob in objects + [main]:
            ob["pattern"] = CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))]
            ob["colors"] = tuple(rng.uniform(20, 235, size=3) for _ in range(2))
    img, _ = render(rng, size, objects + [main])
    return img
