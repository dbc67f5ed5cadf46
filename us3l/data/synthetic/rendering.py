"""Painting synthetic scenes: textured backgrounds, shape outlines, surface patterns, occlusion order.

Every function is pure given its numpy generator, so a scene is a function of its seed.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

# Surface patterns, named after the shape that wears them in the original four-class set (see texture()).
PATTERNS: Tuple[str, ...] = ("circle", "square", "triangle", "cross")

# Two colours per original category (RGB); textures mix them.
PALETTE = {
    "circle": ((220, 60, 40), (250, 170, 50)),     # warm red/orange, radial shading
    "square": ((40, 80, 210), (200, 230, 250)),    # blue/pale checkerboard
    "triangle": ((30, 150, 60), (10, 50, 20)),     # green/dark stripes
    "cross": ((150, 50, 180), (240, 220, 60)),     # purple with yellow dots
}


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random colour field plus fine noise: texture that a detector must learn to ignore."""
    coarse = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
    mid = rng.uniform(60, 200, size=(max(2, size // 8), max(2, size // 8), 3)).astype(np.uint8)
    field = 0.75 * field + 0.25 * np.asarray(Image.fromarray(mid).resize((size, size), Image.BILINEAR),
                                             dtype=np.float32)
    return field + rng.normal(0, 6, size=(size, size, 3))


def _rotated(dx: np.ndarray, dy: np.ndarray, theta: float) -> Tuple[np.ndarray, np.ndarray]:
    """Offsets in the shape's own frame (rotated by -theta)."""
    return dx * math.cos(theta) + dy * math.sin(theta), -dx * math.sin(theta) + dy * math.cos(theta)


def _polygon(u: np.ndarray, v: np.ndarray, vertices: Sequence[Tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon test of every (u, v) against a closed polygon."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(vertices)
    for i in range(n):
        (x0, y0), (x1, y1) = vertices[i], vertices[(i + 1) % n]
        if y0 == y1:
            continue
        crosses = (v >= min(y0, y1)) & (v < max(y0, y1))
        x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


def _regular(k: int, r: float, inner: Optional[float] = None) -> List[Tuple[float, float]]:
    """Vertices of a regular k-gon of circumradius r (a k-pointed star when an inner radius is given)."""
    if inner is None:
        return [(r * math.cos(2 * math.pi * i / k), r * math.sin(2 * math.pi * i / k)) for i in range(k)]
    pts = []
    for i in range(2 * k):
        rad = r if i % 2 == 0 else inner
        a = math.pi * i / k - math.pi / 2
        pts.append((rad * math.cos(a), rad * math.sin(a)))
    return pts


def shape_mask(name: str, dx: np.ndarray, dy: np.ndarray, r: float, theta: float,
               extra: Optional[dict] = None) -> np.ndarray:
    """Boolean mask of a shape of 'radius' r rotated by theta; dx, dy = pixel-centre offsets from its centre.

    ``extra`` carries shape parameters drawn by the scene (the blob's wobble, the stroke's thickness).
    """
    u, v = _rotated(dx, dy, theta)
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
    if name == "star":  # five points, inner radius 0.45 r
        return _polygon(u, v, _regular(5, r, 0.45 * r))
    if name == "hexagon":
        return _polygon(u, v, _regular(6, r))
    if name == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if name == "crescent":  # a disc with an offset disc bitten out
        return (u * u + v * v <= r * r) & ((u - 0.45 * r) ** 2 + v * v > (0.8 * r) ** 2)
    if name == "blob":  # unlabelled clutter: an irregular rounded outline
        e = extra or {}
        ang = np.arctan2(v, u)
        edge = r * (1 + e.get("a2", 0.2) * np.sin(2 * ang + e.get("p2", 0.0))
                    + e.get("a3", 0.1) * np.sin(3 * ang + e.get("p3", 0.0)))
        return u * u + v * v <= edge * edge
    if name == "stroke":  # unlabelled clutter: a long thin bar
        t = (extra or {}).get("thickness", 0.15) * r
        return (np.abs(u) <= r) & (np.abs(v) <= t)
    raise ValueError(f"unknown shape {name!r}")


def texture(pattern: str, rng: np.random.Generator, dx, dy, r: float, theta: float,
            colors: Optional[Tuple[Sequence[float], Sequence[float]]] = None) -> np.ndarray:
    """Per-pixel RGB of an object's surface (HxWx3 float): ``pattern`` (one of PATTERNS) in that pattern's
    jittered palette, or in the given ``colors``."""
    if colors is None:
        c0, c1 = (np.array(c, dtype=np.float32) + rng.uniform(-25, 25, size=3) for c in PALETTE[pattern])
    else:
        c0, c1 = (np.asarray(c, dtype=np.float32) for c in colors)
    u, v = _rotated(dx, dy, theta)
    if pattern == "circle":
        t = np.clip(np.sqrt(dx * dx + dy * dy) / max(r, 1e-6), 0, 1)[..., None]
        return c1 * (1 - t) + c0 * t
    if pattern == "square":
        period = max(2.0, r / 2.5)
        t = ((np.floor(u / period) + np.floor(v / period)) % 2)[..., None]
    elif pattern == "triangle":
        period = max(2.0, r / 3.0)
        t = (np.floor((u + v) / period) % 2)[..., None]
    else:  # cross: dots
        f = 2 * math.pi / max(3.0, r / 2.0)
        t = ((np.sin(u * f) * np.sin(v * f)) > 0.35)[..., None].astype(np.float32)
    return c0 * (1 - t) + c1 * t


def render(rng: np.random.Generator, size: int, objects: Sequence[dict],
           base: Optional[np.ndarray] = None) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Paint objects in order (later ones on top) on ``base`` (default: a fresh textured background);
    return the uint8 image and each object's FULL mask.

    An object is a dict: name, cx, cy, r, theta, and optionally pattern, colors, extra (see shape_mask).
    """
    img = background(rng, size) if base is None else base
    centres = np.arange(size, dtype=np.float32) + 0.5
    xx, yy = np.meshgrid(centres, centres)
    masks = []
    for ob in objects:
        dx, dy = xx - ob["cx"], yy - ob["cy"]
        m = shape_mask(ob["name"], dx, dy, ob["r"], ob["theta"], ob.get("extra"))
        tex = texture(ob.get("pattern", ob["name"]), rng, dx, dy, ob["r"], ob["theta"], ob.get("colors"))
        img[m] = tex[m]
        masks.append(m)
    img = img + rng.normal(0, 4, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), masks


def visible_masks(masks: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Visible part of each mask when later masks are painted on top of earlier ones."""
    covered = np.zeros_like(masks[0]) if masks else None
    out: List[np.ndarray] = [None] * len(masks)  # type: ignore[list-item]
    for i in range(len(masks) - 1, -1, -1):
        out[i] = masks[i] & ~covered
        covered = covered | masks[i]
    return out
