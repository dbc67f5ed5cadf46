"""Parameter-name maps between torchvision/MMDetection ResNet names and Detectron2's.

| part       | torchvision / mmdet                     | detectron2                          |
|------------|-----------------------------------------|-------------------------------------|
| stem       | conv1.weight, bn1.*                     | stem.conv1.weight, stem.conv1.norm.* |
| block conv | layer{s}.{b}.conv{k}.weight, .bn{k}.*   | res{s+1}.{b}.conv{k}.weight, .norm.* |
| shortcut   | layer{s}.{b}.downsample.0/.1            | res{s+1}.{b}.shortcut(.norm)         |

Per-width BN statistics (``running_mean_w0500``...) follow their BN layer's name.
"""
from __future__ import annotations

import re

# where a Detectron2 FPN detector keeps its ResNet trunk (a C4 detector: ``backbone.`` + ``roi_heads.res5.``)
D2_FPN_TRUNK_PREFIX = "backbone.bottom_up."


def tv_to_d2(name: str) -> str | None:
    """Detectron2 name of a torchvision ResNet parameter (``None`` if it is not a trunk parameter)."""
    if name == "conv1.weight":
        return "stem.conv1.weight"
    m = re.match(r"^bn1\.(.+)$", name)
    if m:
        return f"stem.conv1.norm.{m.group(1)}"
    m = re.match(r"^layer([1-4])\.(\d+)\.(.+)$", name)  # a ResNet has 4 stages
    if not m:
        return None
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    prefix = f"res{stage}.{block}."
    if (c := re.match(r"^conv(\d)\.weight$", rest)):
        return f"{prefix}conv{c.group(1)}.weight"
    if (c := re.match(r"^bn(\d)\.(.+)$", rest)):
        return f"{prefix}conv{c.group(1)}.norm.{c.group(2)}"
    if rest == "downsample.0.weight":
        return f"{prefix}shortcut.weight"
    if (c := re.match(r"^downsample\.1\.(.+)$", rest)):
        return f"{prefix}shortcut.norm.{c.group(1)}"
    return None


def d2_to_tv(name: str) -> str | None:
    """torchvision name of a Detectron2 ResNet trunk parameter (``None`` if it is not one)."""
    if name == "stem.conv1.weight":
        return "conv1.weight"
    m = re.match(r"^stem\.conv1\.norm\.(.+)$", name)
    if m:
        return f"bn1.{m.group(1)}"
    m = re.match(r"^res([2-5])\.(\d+)\.(.+)$", name)
    if not m:
        return None
    stage, block, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
    prefix = f"layer{stage}.{block}."
    if (c := re.match(r"^conv(\d)\.weight$", rest)):
        return f"{prefix}conv{c.group(1)}.weight"
    if (c := re.match(r"^conv(\d)\.norm\.(.+)$", rest)):
        return f"{prefix}bn{c.group(1)}.{c.group(2)}"
    if rest == "shortcut.weight":
        return f"{prefix}downsample.0.weight"
    if (c := re.match(r"^shortcut\.norm\.(.+)$", rest)):
        return f"{prefix}downsample.1.{c.group(1)}"
    return None


def rename_all(state: dict, fn, context: str) -> dict:
    """Rename every key with ``fn``; any key ``fn`` cannot map is a hard error (nothing silently dropped)."""
    from .report import CheckpointError

    out, unmapped = {}, []
    for k, v in state.items():
        new = fn(k)
        if new is None:
            unmapped.append(k)
        else:
            out[new] = v
    if unmapped:
        raise CheckpointError(f"{context}: {len(unmapped)} keys cannot be mapped, e.g. {unmapped[:5]}")
    return out


# ---------------------------------------------------------------------------------------------------------
# Whole detectors: Detectron2 <-> MMDetection 3.x names.
#
# A d2 checkpoint comes in one of three layouts, recognised from its keys:
#   "trunk": a bare ResNet as MoCo / tools/convert_pretrain_to_d2.py write it (``stem.*``, ``res2.*``, ...)
#   "fpn":   a ResNet-FPN detector (trunk under ``backbone.bottom_up.``)
#   "c4":    a C4 detector (res2-res4 under ``backbone.``, res5 in ``roi_heads.res5.``)
#   "slimmable": the slimmable ResNet-FPN detector of ``us3l.d2.slimmable_backbone``: the trunk keeps its TORCHVISION
#            names under ``backbone.bottom_up.`` (``conv1.weight``, ``layer1.0.bn1.running_mean_w0500``...), the
#            FPN and heads are named as in "fpn"
# MMDetection always keeps the trunk under ``backbone.``; a C4 model's res5 is ``roi_head.shared_head.layer4``.
#
# Parts that correspond one-to-one (same tensors, same layout; see ``docs`` of the converters):
#   FPN      backbone.fpn_lateral{2..5} / fpn_output{2..5}     neck.lateral_convs.{0..3} / fpn_convs.{0..3}
#            (d2 names FPN levels by stage, mmdet by input index: stage s is index s-2, whatever the order
#            of d2's internal module lists; a norm ``.norm.`` is mmdet's ``.bn.`` (BN/SyncBN) or ``.gn.``)
#   RPN      proposal_generator.rpn_head.conv/objectness_logits/anchor_deltas    rpn_head.rpn_conv/rpn_cls/rpn_reg
#            (channel order per anchor differs when a level has several sizes: see ``permute_anchors``)
#   box head roi_heads.box_head.fc{1,2}                          roi_head.bbox_head.shared_fcs.{0,1}
#            roi_heads.box_predictor.cls_score / bbox_pred        roi_head.bbox_head.fc_cls / fc_reg
#            (both put background LAST among K+1 scores; both regress 4 deltas per class, class-major, with
#            d2 weights (10,10,5,5) == mmdet stds (0.1,0.1,0.2,0.2))
#   mask     roi_heads.mask_head.mask_fcn{1..4} / deconv / predictor
#            roi_head.mask_head.convs.{0..3}.conv / upsample / conv_logits
# Anything else (cascade stages, GN conv box heads, RetinaNet, keypoints) has no counterpart here.
# ---------------------------------------------------------------------------------------------------------
D2_LAYOUTS = ("trunk", "fpn", "c4", "slimmable")
FPN_LAYOUTS = ("fpn", "slimmable")
# where each Detectron2 layout keeps its ResNet trunk
D2_TRUNK_PREFIXES = {"trunk": "", "fpn": D2_FPN_TRUNK_PREFIX, "c4": "backbone.", "slimmable": D2_FPN_TRUNK_PREFIX}
_HEAD_PAIRS = (  # (d2 prefix, mmdet prefix) of modules whose parameters keep their own names
    ("proposal_generator.rpn_head.conv.", "rpn_head.rpn_conv."),
    ("proposal_generator.rpn_head.objectness_logits.", "rpn_head.rpn_cls."),
    ("proposal_generator.rpn_head.anchor_deltas.", "rpn_head.rpn_reg."),
    ("roi_heads.box_head.fc1.", "roi_head.bbox_head.shared_fcs.0."),
    ("roi_heads.box_head.fc2.", "roi_head.bbox_head.shared_fcs.1."),
    ("roi_heads.box_predictor.cls_score.", "roi_head.bbox_head.fc_cls."),
    ("roi_heads.box_predictor.bbox_pred.", "roi_head.bbox_head.fc_reg."),
    ("roi_heads.mask_head.deconv.", "roi_head.mask_head.upsample."),
    ("roi_heads.mask_head.predictor.", "roi_head.mask_head.conv_logits."),
) + tuple((f"roi_heads.mask_head.mask_fcn{k}.", f"roi_head.mask_head.convs.{k - 1}.conv.") for k in range(1, 5))
_FPN_KINDS = (("lateral", "lateral_convs"), ("output", "fpn_convs"))


def detect_d2_layout(keys) -> str:
    """Layout (``trunk``/``fpn``/``c4``) of a Detectron2 state dict, from its key names."""
    keys = list(keys)
    if any(k.startswith(("backbone.bottom_up.conv1.", "backbone.bottom_up.layer1.")) for k in keys):
        return "slimmable"
    if any(k.startswith("backbone.bottom_up.") for k in keys):
        return "fpn"
    if any(k.startswith("roi_heads.res5.") for k in keys) or any(k.startswith("backbone.stem.") for k in keys):
        return "c4"
    if any(k.startswith(("stem.", "res2.")) for k in keys):
        return "trunk"
    from .report import CheckpointError
    raise CheckpointError(f"not a Detectron2 ResNet checkpoint (no stem/res2 keys); first keys: {keys[:5]}")


def detect_mmdet_layout(keys) -> str:
    """The Detectron2 layout an MMDetection state dict corresponds to."""
    keys = list(keys)
    if any(k.startswith("roi_head.shared_head.layer4.") for k in keys):
        return "c4"
    if any(k.startswith("neck.") for k in keys):
        return "fpn"
    if any(k.startswith(("rpn_head.", "roi_head.")) for k in keys):
        return "c4"  # heads on a single-level backbone
    return "trunk"


def d2_to_mmdet(name: str, layout: str, fpn_norm: str = "bn") -> str | None:
    """MMDetection name of a Detectron2 detector parameter (``None``: no counterpart)."""
    prefix = D2_TRUNK_PREFIXES[layout]
    if layout == "c4" and name.startswith("roi_heads.res5."):
        tv = d2_to_tv("res5." + name[len("roi_heads.res5."):])
        return None if tv is None else "roi_head.shared_head." + tv
    if layout == "slimmable":
        if name.startswith(prefix):
            rest = name[len(prefix):]
            return "backbone." + rest if tv_to_d2(rest) is not None else None
    elif name.startswith(prefix) and (tv := d2_to_tv(name[len(prefix):])) is not None:
        return "backbone." + tv
    if layout in FPN_LAYOUTS:
        m = re.match(r"^backbone\.fpn_(lateral|output)([2-5])\.(weight|bias|norm\.(.+))$", name)
        if m:
            kind = dict(_FPN_KINDS)[m.group(1)]
            i = int(m.group(2)) - 2
            leaf = m.group(3) if m.group(4) is None else f"{fpn_norm}.{m.group(4)}"
            mod = "conv." if m.group(4) is None else ""
            return f"neck.{kind}.{i}.{mod}{leaf}"
    for d2p, mmp in _HEAD_PAIRS:
        if name.startswith(d2p):
            return mmp + name[len(d2p):]
    return None


def mmdet_to_d2(name: str, layout: str) -> str | None:
    """Detectron2 name of an MMDetection detector parameter (``None``: no counterpart)."""
    if name.startswith("backbone."):
        d2 = tv_to_d2(name[len("backbone."):])
        if d2 is None or (layout == "c4" and d2.startswith("res5.")):
            return None
        return D2_TRUNK_PREFIXES[layout] + (name[len("backbone."):] if layout == "slimmable" else d2)
    if layout == "c4" and name.startswith("roi_head.shared_head.layer4."):
        d2 = tv_to_d2(name[len("roi_head.shared_head."):])
        return None if d2 is None else "roi_heads." + d2
    if layout in FPN_LAYOUTS:
        m = re.match(r"^neck\.(lateral_convs|fpn_convs)\.([0-3])\.(conv\.(weight|bias)|(bn|gn)\.(.+))$", name)
        if m:
            kind = {v: k for k, v in _FPN_KINDS}[m.group(1)]
            leaf = m.group(4) if m.group(4) is not None else f"norm.{m.group(6)}"
            return f"backbone.fpn_{kind}{int(m.group(2)) + 2}.{leaf}"
    for d2p, mmp in _HEAD_PAIRS:
        if name.startswith(mmp):
            return d2p + name[len(mmp):]
    return None


def permute_anchors(tensor, num_sizes: int, num_ratios: int, to: str):
    """Reorder the per-anchor channel groups of an RPN output layer between the two frameworks.

    For one feature level with several anchor sizes, Detectron2 enumerates anchors size-major
    (``a = s * R + r``) and MMDetection ratio-major (``a = r * S + s``). Dim 0 holds ``A * g`` channels
    (``g`` = 1 for objectness, 4 for deltas). ``to`` is ``"mmdet"`` or ``"d2"``.
    """
    a = num_sizes * num_ratios
    if num_sizes == 1 or num_ratios == 1:
        return tensor
    if tensor.shape[0] % a:
        from .report import CheckpointError
        raise CheckpointError(f"RPN layer with {tensor.shape[0]} outputs is not a multiple of {a} anchors "
                              f"({num_sizes} sizes x {num_ratios} ratios)")
    g = tensor.shape[0] // a
    src_shape = (num_sizes, num_ratios) if to == "mmdet" else (num_ratios, num_sizes)
    t = tensor.reshape(*src_shape, g, *tensor.shape[1:])
    return t.transpose(0, 1).reshape(tensor.shape).clone()
