"""Whole-model conversion between Detectron2 and MMDetection checkpoints (no framework needed).

Why here: the converters in ``tools/`` and the tests share one implementation, and converting must work on
a machine that has only one of the two frameworks. Names come from :mod:`us3l.checkpoint.keymaps`, files
from :mod:`.d2_format` / :mod:`.mmdet_format`; this module adds the tensor reordering the RPN needs, a hard
error on anything unmapped, and whole-file ``convert_d2_to_mmdet`` / ``convert_mmdet_to_d2``.

Round trip: Detectron2 -> MMDetection -> Detectron2 gives back every tensor bit for bit under its original
name, and the top-level metadata of the Detectron2 file (kept in the MMDetection ``meta['d2']``).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

import torch

from ..ops.norm import WIDTH_STATS_RE
from .d2_format import D2_PKL_FORMAT, META_FIELDS, META_KEY, read_d2_checkpoint, write_d2_checkpoint
from .keymaps import D2_TRUNK_PREFIXES, d2_to_mmdet, detect_d2_layout, detect_mmdet_layout, mmdet_to_d2, permute_anchors
from .mmdet_format import read_mmdet_checkpoint, write_mmdet_checkpoint
from .report import CheckpointError

RPN_CLS = ("proposal_generator.rpn_head.objectness_logits.", "rpn_head.rpn_cls.")
RPN_REG = ("proposal_generator.rpn_head.anchor_deltas.", "rpn_head.rpn_reg.")


@dataclasses.dataclass
class Conversion:
    """What a conversion did: every renamed key, what was left out and why."""
    layout: str
    renamed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self, verbose: bool = True) -> str:
        lines = [f"layout: {self.layout}; {len(self.renamed)} tensors converted, {len(self.skipped)} skipped"]
        if verbose:
            lines += [f"  {a} -> {b}" for a, b in self.renamed]
        lines += [f"  skipped (no counterpart): {k}" for k in self.skipped]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# -------------------------------------------------------------------------------------------- conversion
def _is_backbone_d2(name: str, layout: str) -> bool:
    trunk = D2_TRUNK_PREFIXES[layout]
    return name.startswith(trunk) and not name.startswith("backbone.fpn_") or name.startswith("roi_heads.res5.")


def _rpn_grid(state: Mapping[str, torch.Tensor], cls_prefix: str, num_ratios: int, conv: Conversion):
    """(sizes, ratios) per location of the RPN, from its objectness layer (``None`` without an RPN)."""
    w = state.get(cls_prefix + "weight", state.get(cls_prefix + "bias"))
    if w is None:
        return None
    a = w.shape[0]
    if a % num_ratios:
        raise CheckpointError(f"the RPN predicts {a} anchors per location, not a multiple of {num_ratios} aspect "
                              "ratios: pass the right --num-ratios")
    sizes = a // num_ratios
    if sizes > 1:
        conv.notes.append(f"RPN: {a} anchors per location = {sizes} sizes x {num_ratios} ratios; reordered "
                          "between Detectron2's size-major and MMDetection's ratio-major enumeration")
    return sizes, num_ratios


def _fail_unmapped(unmapped: list[str], backbone: list[str], direction: str, skip_heads: bool,
                   conv: Conversion) -> None:
    if backbone:
        raise CheckpointError(f"{direction}: {len(backbone)} backbone keys have no counterpart, e.g. {backbone[:5]}")
    if unmapped and not skip_heads:
        raise CheckpointError(
            f"{direction}: {len(unmapped)} keys have no counterpart (heads that do not correspond between the "
            f"frameworks), e.g. {unmapped[:5]}. Pass --skip-unmapped-heads to leave them out")
    conv.skipped.extend(unmapped)


def _rename_state(state: Mapping[str, torch.Tensor], rename, is_backbone, *, src: int, num_ratios: int,
                  skip_unmapped_heads: bool, conv: Conversion) -> tuple[dict[str, torch.Tensor], Conversion]:
    """Rename every key one way (``src`` 0: from Detectron2, 1: from MMDetection), reordering RPN anchors
    where the frameworks list them differently; unmapped backbone keys always fail."""
    direction, to = ("Detectron2 -> MMDetection", "mmdet") if src == 0 else ("MMDetection -> Detectron2", "d2")
    grid = _rpn_grid(state, RPN_CLS[src], num_ratios, conv)
    out, unmapped, backbone = {}, [], []
    for k, v in state.items():
        new = rename(k)
        if new is None:
            (backbone if is_backbone(k) else unmapped).append(k)
            continue
        if grid and k.startswith((RPN_CLS[src], RPN_REG[src])):
            v = permute_anchors(v, *grid, to=to)
        out[new] = v
        conv.renamed.append((k, new))
    _fail_unmapped(unmapped, backbone, direction, skip_unmapped_heads, conv)
    return out, conv


def d2_to_mmdet_state(state: Mapping[str, torch.Tensor], num_ratios: int = 3, skip_unmapped_heads: bool = False,
                      layout: str | None = None) -> tuple[dict[str, torch.Tensor], Conversion]:
    """MMDetection state dict of a Detectron2 one (trunk, ResNet-FPN or C4 detector)."""
    layout = layout or detect_d2_layout(state)
    conv = Conversion(layout)
    has_stats = any(k.startswith("backbone.fpn_") and k.endswith(".norm.running_mean") for k in state)
    has_norm = any(k.startswith("backbone.fpn_") and ".norm." in k for k in state)
    fpn_norm = "gn" if has_norm and not has_stats else "bn"
    return _rename_state(state, lambda k: d2_to_mmdet(k, layout, fpn_norm), lambda k: _is_backbone_d2(k, layout),
                         src=0, num_ratios=num_ratios, skip_unmapped_heads=skip_unmapped_heads, conv=conv)


def mmdet_to_d2_state(state: Mapping[str, torch.Tensor], num_ratios: int = 3, skip_unmapped_heads: bool = False,
                      layout: str | None = None) -> tuple[dict[str, torch.Tensor], Conversion]:
    """Detectron2 state dict of an MMDetection one; ``layout`` defaults to what the keys show."""
    layout = layout or detect_mmdet_layout(state)
    conv = Conversion(layout)
    return _rename_state(state, lambda k: mmdet_to_d2(k, layout),
                         lambda k: k.startswith(("backbone.", "roi_head.shared_head.")),
                         src=1, num_ratios=num_ratios, skip_unmapped_heads=skip_unmapped_heads, conv=conv)


DETECTOR_META = "__us3l_detector__"  # what our Detectron2 detector files keep beside the model (widths, source)


def d2_meta_to_mmdet(extras: Mapping, layout: str) -> dict:
    """MMDetection ``meta``: our backbone or detector metadata at top level (read by the US3L loaders:
    ``arch``, ``calibrated_widths``...) and the Detectron2 file's own top-level entries under ``d2`` (restored by
    the reverse conversion)."""
    meta = {"d2": {"layout": layout, "extras": dict(extras)}}
    us3l = extras.get(META_KEY)
    if isinstance(us3l, Mapping):
        meta.update({k: us3l[k] for k in META_FIELDS if k in us3l})
    detector = extras.get(DETECTOR_META)
    if isinstance(detector, Mapping):
        meta.update({k: v for k, v in detector.items() if k != "d2"})
    return meta


def mmdet_meta_to_d2(meta: Mapping, layout: str) -> dict:
    """Top-level entries of the Detectron2 file: the original ones after a round trip, else our defaults."""
    d2 = meta.get("d2")
    if isinstance(d2, Mapping) and d2.get("layout") == layout and isinstance(d2.get("extras"), Mapping):
        return dict(d2["extras"])
    # a bare trunk is matched into detectors by Detectron2's name heuristics (as MoCo's converted weights)
    extras = {"__author__": "US3L", "matching_heuristics": layout == "trunk"}
    if layout == "trunk" and "arch" in meta:  # what the Detectron2 plugin's loader checks (d2_format)
        extras[META_KEY] = {"format": D2_PKL_FORMAT, **{k: meta[k] for k in META_FIELDS if k in meta}}
    elif layout != "trunk":
        kept = {k: meta[k] for k in ("calibrated_widths", "width", "plain", "source") if k in meta}
        if kept:
            extras[DETECTOR_META] = kept
    return extras


def is_slimmable_mmdet(state: Mapping, meta: Mapping) -> bool:
    """Whether an MMDetection detector file is a slimmable one (its trunk names are those of a plain one): it
    came from a slimmable Detectron2 file, holds per-width BN statistics, or says so in mmengine's saved config."""
    d2 = meta.get("d2")
    if isinstance(d2, Mapping) and d2.get("layout") == "slimmable":
        return True
    if not any(k.startswith(("neck.", "rpn_head.")) for k in state):
        return False
    if any(WIDTH_STATS_RE.match(k.rsplit(".", 1)[-1]) for k in state):
        return True
    return "Slimmable" in str(meta.get("cfg", ""))


def _verify_written(dst: str, read, back, source: Mapping[str, torch.Tensor], direction: str) -> None:
    """Read the written file back with the target reader and convert it back: every source tensor must come back
    bit for bit under its name, or the file is removed and the conversion fails (never exit 0 on a bad file)."""
    try:
        state, _ = read(dst)
        again = back(state)
        if set(again) != set(source):
            diff = sorted(set(again) ^ set(source))
            raise CheckpointError(f"{direction}: the written file does not map back to the source ({len(diff)} "
                                  f"keys differ, e.g. {diff[:3]})")
        bad = [k for k, v in source.items() if v.dtype != again[k].dtype or v.shape != again[k].shape
               or not torch.equal(v, again[k])]
        if bad:
            raise CheckpointError(f"{direction}: {len(bad)} tensors of the written file differ from the source, "
                                  f"e.g. {bad[:3]}")
    except BaseException:
        if os.path.exists(dst):
            os.remove(dst)
        raise


# ``check(state, meta)``: called on the source before anything is written (e.g. the source config against it)
Check = Callable[[Mapping[str, torch.Tensor], Mapping], None]


def convert_d2_to_mmdet(src: str, dst: str, num_ratios: int = 3, skip_unmapped_heads: bool = False,
                        check: Check | None = None) -> Conversion:
    """Read a Detectron2 checkpoint, write its MMDetection counterpart (checked by reading it back); returns what
    was converted."""
    state, extras = read_d2_checkpoint(src)
    if check is not None:
        check(state, extras)
    out, conv = d2_to_mmdet_state(state, num_ratios=num_ratios, skip_unmapped_heads=skip_unmapped_heads)
    write_mmdet_checkpoint(out, d2_meta_to_mmdet(extras, conv.layout), dst)
    kept = {k: v for k, v in state.items() if k not in conv.skipped}
    _verify_written(dst, read_mmdet_checkpoint,
                    lambda s: mmdet_to_d2_state(s, num_ratios=num_ratios, layout=conv.layout)[0], kept,
                    "Detectron2 -> MMDetection")
    return conv


def convert_mmdet_to_d2(src: str, dst: str, layout: str | None = None, num_ratios: int = 3,
                        skip_unmapped_heads: bool = False, check: Check | None = None) -> Conversion:
    """Read an MMDetection checkpoint, write its Detectron2 counterpart (checked by reading it back); a slimmable
    detector (:func:`is_slimmable_mmdet`) becomes a slimmable Detectron2 one. Returns what was converted."""
    state, meta = read_mmdet_checkpoint(src)
    if check is not None:
        check(state, meta)
    if layout is None and is_slimmable_mmdet(state, meta):
        layout = "slimmable"
    out, conv = mmdet_to_d2_state(state, num_ratios=num_ratios, skip_unmapped_heads=skip_unmapped_heads,
                                  layout=layout)
    write_d2_checkpoint(out, mmdet_meta_to_d2(meta, conv.layout), dst)
    kept = {k: v for k, v in state.items() if k not in conv.skipped}
    _verify_written(dst, read_d2_checkpoint,
                    lambda s: d2_to_mmdet_state(s, num_ratios=num_ratios, layout=conv.layout)[0], kept,
                    "MMDetection -> Detectron2")
    return conv
