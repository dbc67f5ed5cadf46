"""The small pre-training run the pre-training tests share: configs/us3l_tiny_cpu.yaml on a tiny image folder."""
import os

from ckpt_helpers import ROOT

TINY = os.path.join(ROOT, "configs", "us3l_tiny_cpu.yaml")


def tiny_overrides(root, *extra) -> list:
    """Overrides of TINY: 16-px images of the image folder ``root`` (no CIFAR stem), batch 8, small projector and
    predictor, one thread, no progress bar or TensorBoard; then ``extra``."""
    return ["model.cifar_stem=false", "data.dataset=imagefolder", f"data.root={root}", "data.image_size=16",
            "data.batch_size=8", "method.proj_hidden=32", "method.proj_dim=16", "method.pred_hidden=16",
            "train.progress=false", "train.tensorboard=false", "train.num_threads=1", *extra]
