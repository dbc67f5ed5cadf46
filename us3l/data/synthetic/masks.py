"""Binary masks <-> COCO polygons and boxes.

Segmentations are written as polygons (the format every framework reads by default) that pycocotools
rasterizes back to exactly the mask: each polygon traces a stack of row runs along pixel edges.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np


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
