"""The tiny slimmable MMDetection detector the tests train: US-ResNet-18 without a pre-trained file, few RoIs,
as command-line ``--cfg-options``."""
import json

MODEL_OPTS = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
              "model.neck.in_channels": [64, 128, 256, 512],
              "model.train_cfg.rpn_proposal.max_per_img": 100, "model.train_cfg.rcnn.sampler.num": 64,
              "model.test_cfg.rpn.nms_pre": 200, "model.test_cfg.rpn.max_per_img": 50}


def cli_options(opts: dict) -> list:
    """``{key: value}`` as mmengine ``key=value`` strings (lists as JSON, ``None`` as Python's)."""
    return [f"{k}={json.dumps(v) if isinstance(v, list) else ('None' if v is None else v)}" for k, v in opts.items()]
