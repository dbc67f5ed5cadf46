"""Datasets for pre-training and evaluation, and the resumable, rank-sharded batch order.

Exact resume needs the i-th batch of a resumed run to hold the same images with the same augmentations
as in an uninterrupted run. So the batch order is a pure function of (seed, epoch) and every sample's
augmentation RNG is seeded from (seed, epoch, index): neither depends on workers nor on where a run started.
"""
from __future__ import annotations

import json
import os

import torch
import torch.utils.data as tud
from PIL import Image

from ..errors import DatasetFormatError
from .paths import embedded_root
from .transforms import TwoViews

DATASETS = ("embedded", "imagefolder", "images", "cifar10", "cifar100")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
def check_coco_instances(json_file: str, image_root: str, name: str = "") -> dict:
    """Fail with one clear line when a COCO instances set cannot be what its loaders expect: a JSON that is not
    COCO, no images, an image file named in the JSON but absent, an annotation whose category or image id is not
    listed, an image or annotation id used twice, a box with a negative side, a segmentation that is neither
    polygons nor RLE. (Detectron2 / pycocotools would stop later with a bare ``KeyError`` or mid-training, or,
    for repeated ids, silently drop images from the evaluation.) Returns the parsed file."""
    where = f"dataset {name!r}: " if name else ""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{where}annotation file not found: {json_file}")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"{where}image folder not found: {image_root}")
    doc = _read_coco_json(json_file, where)
    absent = [im.get("file_name") for im in doc["images"]
              if not os.path.isfile(os.path.join(image_root, str(im.get("file_name"))))]
    if absent:
        raise FileNotFoundError(f"{where}{len(absent)} of {len(doc['images'])} images named in {json_file} are not "
                                f"in {image_root}, e.g. {absent[:3]}")
    where = f"{where}{json_file}: "
    _check_unique_ids(doc, where)
    _check_references(doc, where)
    for a in doc["annotations"]:
        _check_annotation(a, where)
    return doc


def _read_coco_json(json_file: str, where: str) -> dict:
    try:
        with open(json_file) as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetFormatError(f"{where}{json_file} is not a JSON file ({type(e).__name__}: {e})") from e
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise DatasetFormatError(f"{where}{json_file} is not a COCO instances file: no {', '.join(missing)} "
                                 "(expected {\"images\": [...], \"annotations\": [...], \"categories\": [...]})")
    if not doc["images"]:
        raise DatasetFormatError(f"{where}{json_file} lists no images (empty dataset)")
    if not doc["categories"]:
        raise DatasetFormatError(f"{where}{json_file} lists no categories")
    return doc


def _check_unique_ids(doc: dict, where: str) -> None:
    """pycocotools keeps the last of each repeated id silently: images vanish from the evaluation."""
    for kind, items in (("image", doc["images"]), ("annotation", doc["annotations"])):
        seen, twice = set(), []
        for it in items:
            if it.get("id") in seen:
                twice.append(it.get("id"))
            seen.add(it.get("id"))
        if twice:
            raise DatasetFormatError(f"{where}{kind} ids {sorted(set(twice), key=str)[:5]} appear more than once "
                                     f"({len(twice)} repeats); every {kind} needs its own id")


def _check_references(doc: dict, where: str) -> None:
    cat_ids, image_ids = {c.get("id") for c in doc["categories"]}, {im.get("id") for im in doc["images"]}
    bad_cats = sorted({a.get("category_id") for a in doc["annotations"]} - cat_ids, key=str)
    if bad_cats:
        raise DatasetFormatError(f"{where}annotations use category ids {bad_cats[:5]} that are not in its "
                                 f"categories list {sorted(cat_ids, key=str)[:10]}")
    bad_images = sorted({a.get("image_id") for a in doc["annotations"]} - image_ids, key=str)
    if bad_images:
        raise DatasetFormatError(f"{where}annotations refer to image ids {bad_images[:5]} that are not in its "
                                 "images list")


def _check_annotation(a: dict, where: str) -> None:
    box = a.get("bbox")
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
            and box[2] >= 0 and box[3] >= 0):
        raise DatasetFormatError(f"{where}annotation id {a.get('id')} has bbox {box!r}; COCO boxes are "
                                 "[x, y, width, height] with width and height >= 0")
    seg = a.get("segmentation")
    if isinstance(seg, str) or (not a.get("iscrowd") and isinstance(seg, dict)
                                and isinstance(seg.get("counts"), str) and "size" not in seg):
        raise DatasetFormatError(f"{where}annotation id {a.get('id')} has a segmentation {type(seg).__name__} "
                                 f"{str(seg)[:40]!r}: expected polygons [[x1, y1, ...]] or an RLE "
                                 "{\"size\": [h, w], \"counts\": ...}")


def prepare_embedded(root: str | None, num_per_class_train: int = 256, num_per_class_val: int = 64,
                     image_size: int = 32, seed: int = 0, style: str = "category") -> str:
    """Generate (or reuse) the embedded ImageFolder set; returns its root. Deterministic, offline."""
    from .synthetic import generate_classification_dataset

    root = root or embedded_root(style)
    generate_classification_dataset(root, num_per_class_train, num_per_class_val, image_size, seed, style)
    return root


class ImageList(tud.Dataset):
    """Unlabelled images of one folder (e.g. COCO's ``train/*.png``); label -1."""

    def __init__(self, root: str, transform=None):
        self.root, self.transform = root, transform
        self.files = sorted(f for f in os.listdir(root) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(os.path.join(self.root, self.files[i])) as im:
            img = im.convert("RGB")
        return (self.transform(img) if self.transform else img), -1


def _split_dir(root: str, split: str) -> str:
    d = os.path.join(root, split)
    return d if os.path.isdir(d) else root


def _has_class_dirs(folder: str) -> bool:
    return any(os.path.isdir(os.path.join(folder, d)) for d in os.listdir(folder))


def build_dataset(kind: str, root: str | None, split: str = "train", transform=None, download: bool = False,
                  embedded: dict | None = None) -> tud.Dataset:
    """A (image, label) dataset. ``kind``: embedded | imagefolder | images | cifar10 | cifar100.

    ``imagefolder`` reads ``root/<split>/<class>/*`` (or ``root/<class>/*``); ``images`` reads a flat folder
    ``root/<split>/*`` (or ``root/*``), e.g. COCO images, unlabelled. Errors are explicit for a missing or
    empty root (nothing is downloaded unless ``download``).
    """
    import torchvision

    if kind not in DATASETS:
        raise ValueError(f"unknown dataset {kind!r}; choose from {', '.join(DATASETS)}")
    if kind == "embedded":
        root = prepare_embedded(root, **(embedded or {}))
        kind = "imagefolder"
    if not root:
        raise ValueError(f"dataset {kind!r} needs data.root")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset root {root!r} does not exist")
    if not os.listdir(root):
        raise FileNotFoundError(f"dataset root {root!r} is empty")
    if kind in ("cifar10", "cifar100"):
        cls = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
        try:
            return cls(root, train=split == "train", transform=transform, download=download)
        except RuntimeError as e:
            raise FileNotFoundError(f"{kind} not found under {root!r} ({e})") from e
    folder = _split_dir(root, split)
    if kind == "images":
        return ImageList(folder, transform)
    if not _has_class_dirs(folder):
        raise FileNotFoundError(f"{folder!r} has no class sub-folders (ImageFolder layout <class>/<image>)")
    try:
        return torchvision.datasets.ImageFolder(folder, transform=transform)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"ImageFolder {folder!r}: {e}") from e


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729) % (2 ** 63 - 1)


class TwoViewDataset(tud.Dataset):
    """Two augmented views per image; indices are ``(epoch, index)`` pairs (see :class:`ResumableBatchSampler`).

    The augmentations draw from torch's RNG seeded per sample, inside a forked RNG so that the caller's
    RNG is untouched.
    """

    def __init__(self, base: tud.Dataset, transform, seed: int = 0):
        self.base, self.views, self.seed = base, TwoViews(transform), seed

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        img, label = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            v1, v2 = self.views(img)
        return (v1, v2), label


class ResumableBatchSampler(tud.Sampler):
    """Batches of ``(epoch, index)`` for one process, from a seeded per-epoch permutation, from any position.

    Each epoch is a permutation of the dataset (padded to a multiple of ``world_size``), shared out
    round-robin; the last incomplete batch is dropped so every process runs the same number of iterations.
    Iteration ``start_iteration`` onwards is produced (epochs roll over; ``num_iterations`` in total).
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_iteration: int = 0, num_iterations: int | None = None):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.start, self.num_iterations = start_iteration, num_iterations
        if self.iterations_per_epoch() < 1:
            raise ValueError(f"{size} images cannot fill one batch of {batch_size} per process on "
                             f"{world_size} process(es): use a smaller batch or more data")

    def iterations_per_epoch(self) -> int:
        per_rank = -(-self.size // self.world_size)
        return per_rank // self.batch_size

    def epoch_indices(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.size, generator=g).tolist()
        total = -(-self.size // self.world_size) * self.world_size
        perm += perm[: total - len(perm)]
        return perm[self.rank::self.world_size]

    def __iter__(self):
        ipe = self.iterations_per_epoch()
        it = self.start
        end = None if self.num_iterations is None else self.num_iterations
        while end is None or it < end:
            epoch, b = divmod(it, ipe)
            idx = self.epoch_indices(epoch)
            for j in range(b, ipe):
                if end is not None and it >= end:
                    return
                yield [(epoch, i) for i in idx[j * self.batch_size:(j + 1) * self.batch_size]]
                it += 1

    def __len__(self):
        if self.num_iterations is None:
            return self.iterations_per_epoch()
        return max(0, self.num_iterations - self.start)


def detect_kind(root: str, split: str = "train") -> str:
    """``imagefolder`` when ``root[/split]`` holds class sub-folders, else ``images`` (a flat image folder)."""
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(f"dataset root {root!r} does not exist")
    folder = _split_dir(root, split)
    if not os.listdir(folder):
        raise FileNotFoundError(f"dataset folder {folder!r} is empty")
    return "imagefolder" if _has_class_dirs(folder) else "images"
