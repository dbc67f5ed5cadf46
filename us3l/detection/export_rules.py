"""Which channel count each detector component has at width ``w``: the rule that export configs are written from.

* backbone: every conv/BN at ``us3l.active_channels(full, w)`` (the width-sized backbone that exists in each
  framework, built with ``width=w``);
* neck and heads, when slimmed: every hidden channel count ``active_channels(full, w)``: FPN output
  channels, RPN conv, box head convs and fcs, mask head convs and deconv; the FPN lateral convs take the
  backbone's active channels as input;
* always full: the number of classes, box deltas, anchors and mask logits (the task does not shrink);
* neck and heads NOT slimmed: full channel counts; only the FPN lateral convs' input follows the backbone.

A framework maps these names to its own config keys (Detectron2 ``MODEL.FPN.OUT_CHANNELS``, MMDetection
``neck.out_channels``...).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..ops import active_channels
from ..ops.width_state import canonical_width


def neck_head_channels(full: Mapping[str, int], width: float, slim_neck_heads: bool = True) -> dict[str, int]:
    """``{name: channels at width}`` for the hidden channel counts ``full`` of a neck and heads.

    ``full`` holds only widths that scale (e.g. ``{"fpn_out": 256, "box_fc": 1024, "mask_conv": 256}``);
    with ``slim_neck_heads=False`` they are returned unchanged.
    """
    w = canonical_width(width)
    bad = {k: v for k, v in full.items() if int(v) != v or v <= 0}
    if bad:
        raise ValueError(f"channel counts must be positive integers, got {bad}")
    if not slim_neck_heads:
        return {k: int(v) for k, v in full.items()}
    return {k: active_channels(int(v), w) for k, v in full.items()}


def backbone_stage_channels(full: Sequence[int], width: float) -> list[int]:
    """Output channels the slimmable backbone's stages emit at ``width`` (what FPN laterals take in)."""
    w = canonical_width(width)
    return [active_channels(int(c), w) for c in full]
