"""Augmentation recipes of the reference runs (two random views per image) and the evaluation transform.

All random choices come from torch's global RNG (torchvision v1 transforms), so a dataset can make them a
function of (seed, epoch, index) by seeding that RNG per sample: see :class:`us3l.data.datasets.TwoViewDataset`.
"""
from __future__ import annotations

import torchvision.transforms as T

# the reference code's CIFAR normalisation (its std is the commonly quoted 0.2023/0.1994/0.2010)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RECIPES = ("cifar", "imagenet", "outline")


def ssl_transform(recipe: str, image_size: int) -> T.Compose:
    """One random view, as the reference: crop(scale 0.2-1), jitter(0.4,0.4,0.4,0.1) p.8, gray p.2, flip;
    ``imagenet`` adds Gaussian blur (sigma 0.1-2) p.5 before the flip.

    ``outline`` is for the colour-free benchmark (``outline`` style): an object's colours are random and say
    nothing of its class, so the views must not share them or SSL learns colour (measured: the reference
    recipe learned nothing of the shapes). Every view gets a full-range hue shift and strong jitter, grayscale
    half the time, and crops that keep most of the object (scale 0.35-1)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; choose from {RECIPES}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    small = recipe != "imagenet"  # cifar and outline: small images, the CIFAR normalisation, no blur
    mean, std = (CIFAR_MEAN, CIFAR_STD) if small else (IMAGENET_MEAN, IMAGENET_STD)
    if recipe == "outline":
        return T.Compose([T.RandomResizedCrop(image_size, scale=(0.35, 1.0)),
                          T.ColorJitter(0.8, 0.8, 0.8, 0.5), T.RandomGrayscale(p=0.5), T.RandomHorizontalFlip(),
                          T.ToTensor(), T.Normalize(mean, std)])
    ops = [T.RandomResizedCrop(image_size, scale=(0.2, 1.0)),
           T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
           T.RandomGrayscale(p=0.2)]
    if not small:
        k = max(3, int(0.1 * image_size) // 2 * 2 + 1)  # odd kernel ~10% of the image
        ops.append(T.RandomApply([T.GaussianBlur(k, sigma=(0.1, 2.0))], p=0.5))
    ops += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def eval_transform(recipe: str, image_size: int) -> T.Compose:
    """Deterministic: resize (short side to size/0.875, or size for small images) + center crop."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; choose from {RECIPES}")
    small = recipe != "imagenet"
    mean, std = (CIFAR_MEAN, CIFAR_STD) if small else (IMAGENET_MEAN, IMAGENET_STD)
    resize = image_size if small else int(round(image_size / 0.875))
    return T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(mean, std)])


class TwoViews:
    """Two independent random views of one image."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)
