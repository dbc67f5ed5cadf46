#!/usr/bin/env python
"""Convert a US3L backbone (our pre-training / backbone checkpoint or the reference code's) to Detectron2 .pkl.

    python tools/convert_pretrain_to_d2.py SRC DST.pkl

ONE full-width file serves every width: the detector's width is chosen in its config
(``MODEL.US3L.WIDTH_MULT``) and ``us3l.d2.US3LCheckpointer`` slices the tensors and picks the calibrated BN
statistics when the model is built. Any backbone key that cannot be mapped is an error.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from us3l.checkpoint import CheckpointError, load_backbone  # noqa: E402
from us3l.d2.pkl_format import META_KEY, backbone_to_d2, write_pkl  # noqa: E402


def convert(src: str, dst: str) -> dict:
    """Read ``src`` (any supported US3L format), write the Detectron2 ``.pkl`` to ``dst``; returns the payload."""
    if not dst.endswith(".pkl"):
        raise CheckpointError(f"DST must end in .pkl (Detectron2 reads this format only from .pkl files): {dst}")
    state, meta = load_backbone(src)
    payload = backbone_to_d2(state, meta, source=src)
    write_pkl(payload, dst)
    return payload


def describe(payload: dict) -> str:
    info, model = payload[META_KEY], payload["model"]
    stats = [k for k in model if "_w" in k.rsplit(".", 1)[-1]]
    lines = [f"converted {len(model)} tensors of a {info['arch']} backbone "
             f"({len(model) - len(stats)} trunk tensors + {len(stats)} per-width BN statistics)",
             f"width range {info['width_range']}, calibrated widths {info['calibrated_widths'] or '[1.0 only]'}"]
    for k in list(model)[:3]:
        lines.append(f"  {k} {tuple(model[k].shape)}")
    lines.append("  ...")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="US3L pre-training/backbone checkpoint or the reference code's checkpoint")
    parser.add_argument("dst", help="output Detectron2 weights, ending in .pkl")
    args = parser.parse_args(argv)
    try:
        payload = convert(args.src, args.dst)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(describe(payload))
    print(f"wrote {args.dst}; use it with MODEL.WEIGHTS {args.dst} MODEL.US3L.WIDTH_MULT <width>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
