"""Shared pytest fixtures: tiny embedded datasets, generated once per session in a temporary folder.

Test modules import Detectron2 / MMDetection / mmcv.ops / pycocotools directly, never with importorskip:
scripts/test.sh installs them, so a missing framework must fail the run rather than skip its tests.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """A tiny synthetic COCO instance-segmentation set (16 train / 8 val images, 64x64 px, seed 0).

    Returns a dict (stable contract for every test):
      root         folder holding the set; it is also ``$US3L_DATASETS/us3l_shapes`` for ``datasets_dir``
      datasets_dir value to put in ``$US3L_DATASETS`` so that ``us3l_shapes_{train,val}`` resolve to this set
      train_images / val_images   image folders (``root/train``, ``root/val``)
      train_json / val_json       ``root/annotations/instances_{train,val}.json``
      categories   list of COCO category dicts (ids start at 1)
      num_train, num_val, image_size
    """
    from us3l.data.synthetic import DEFAULT_DATASET_NAME, generate_coco_dataset

    datasets_dir = tmp_path_factory.mktemp("datasets")
    info = generate_coco_dataset(str(datasets_dir / DEFAULT_DATASET_NAME), num_train=16, num_val=8,
                                 image_size=64, seed=0)
    info = dict(info, datasets_dir=str(datasets_dir), num_train=16, num_val=8, image_size=64)
    info.pop("params", None)
    return info


@pytest.fixture(scope="session")
def tiny_cls(tmp_path_factory):
    """A tiny synthetic ImageFolder classification set (4 classes, 8 train / 4 val per class, 32x32 px).

    Returns a dict: root, train_dir (``root/train/<class>/*.png``), val_dir, classes (sorted class names,
    the torchvision ImageFolder order), num_per_class_train, num_per_class_val, image_size.
    """
    from us3l.data.synthetic import generate_classification_dataset

    root = tmp_path_factory.mktemp("cls") / "us3l_shapes_cls"
    info = generate_classification_dataset(str(root), num_per_class_train=8, num_per_class_val=4,
                                           image_size=32, seed=0)
    info = dict(info, classes=sorted(info["classes"]), num_per_class_train=8, num_per_class_val=4, image_size=32)
    info.pop("params", None)
    return info


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@pytest.fixture(autouse=True)
def _no_visualizer_across_tests():
    """MMDetection configs name their visualizer 'visualizer', and mmengine hands a Runner the existing instance
    of that name: without this, every later Runner in the test process writes its ``vis_data`` into the first
    test's tmp_path (removed once that test passes, see pytest.ini)."""
    yield
    vis = sys.modules.get("mmengine.visualization")
    if vis is not None:
        for cls in (vis.Visualizer, *_subclasses(vis.Visualizer)):
            cls._instance_dict.clear()


@pytest.fixture(scope="module")
def datasets(tiny_coco):
    """``US3L_DATASETS`` pointing at the session's tiny COCO set for the module's tests, restored after."""
    old = os.environ.get("US3L_DATASETS")
    os.environ["US3L_DATASETS"] = tiny_coco["datasets_dir"]
    yield tiny_coco
    if old is None:
        os.environ.pop("US3L_DATASETS")
    else:
        os.environ["US3L_DATASETS"] = old

