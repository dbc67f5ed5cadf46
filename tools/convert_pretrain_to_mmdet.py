#!/usr/bin/env python
"""Convert a US3L pre-training / backbone / reference-code checkpoint to an MMDetection backbone file.

Writes ``dict(state_dict={'backbone.<torchvision names>': full-width tensors, incl. per-width BN statistics},
meta={arch, width_range, calibrated_widths, ...})``: ONE file that ``US3LResNet`` / ``US3LResLayer`` load
at any width of the range (``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')``).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from us3l.checkpoint import CheckpointError, load_backbone  # noqa: E402
from us3l.checkpoint.frameworks import write_mmdet_checkpoint  # noqa: E402

MMDET_BACKBONE_FORMAT = "us3l.mmdet-backbone/1"


def _plain(meta: dict) -> dict:
    """Metadata that JSON (and ``torch.load(weights_only=True)``) can hold."""
    out = {}
    for k, v in meta.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = str(v)
    return out


def convert(src: str, dst: str, verbose: bool = True) -> dict:
    """Convert ``src`` and save ``dst``; returns the written metadata."""
    state, meta = load_backbone(src)
    if not meta["arch"].startswith("resnet"):
        raise CheckpointError(f"{src} holds a {meta['arch']} backbone; the MMDetection plugin has ResNets only")
    if meta.get("cifar_stem"):
        raise CheckpointError(f"{src} has a CIFAR (3x3) stem, which detection backbones do not use")
    out = {}
    for k, v in state.items():
        out["backbone." + k] = v
        if verbose:
            print(f"{k} -> backbone.{k}")
    meta = _plain(dict(meta, us3l_format=MMDET_BACKBONE_FORMAT, converted_from=os.path.basename(src)))
    write_mmdet_checkpoint(out, meta, dst)
    print(f"{len(out)} tensors ({meta['arch']}, width range {meta['width_range']}, calibrated widths "
          f"{meta['calibrated_widths']}) -> {dst}")
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="US3L pre-training, backbone or reference-code checkpoint")
    p.add_argument("dst", help="output .pth for MMDetection")
    p.add_argument("--quiet", action="store_true", help="do not list every key")
    args = p.parse_args(argv)
    try:
        convert(args.src, args.dst, verbose=not args.quiet)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)  # bad input (us3l.cli)


if __name__ == "__main__":
    main()
