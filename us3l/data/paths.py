"""Where the project's datasets live on disk: one rule for every tool, config loader and dataset registration."""
from __future__ import annotations

import os

EMBEDDED_DIRNAME = "us3l_shapes_cls"


def checkout_root() -> str:
    """The folder above the ``us3l`` package: in a checkout (an editable install) it holds ``tools/`` and
    ``projects/``, whose configs and command lines the pipeline and the config writers use."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def datasets_root() -> str:
    """Where the project's datasets live: ``$US3L_DATASETS``, else ``datasets`` (relative to the current folder).
    The one rule every tool, config loader and dataset registration uses."""
    return os.environ.get("US3L_DATASETS") or "datasets"


def embedded_root(style: str = "category") -> str:
    """Default home of the embedded classification set: ``$US3L_DATASETS/us3l_shapes_cls`` (category style)
    or ``us3l_shapes_cls_<style>``, so that the styles never overwrite each other."""
    name = EMBEDDED_DIRNAME if style == "category" else f"{EMBEDDED_DIRNAME}_{style}"
    return os.path.join(datasets_root(), name)
