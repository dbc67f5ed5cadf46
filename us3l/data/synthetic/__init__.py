"""Embedded default dataset: seeded synthetic shapes in COCO instance-segmentation and ImageFolder layouts.

Why: a first run (and every test) needs detection data without a download. Objects vary in class, scale and
rotation, occlude each other and sit on textured backgrounds; everything is a pure function of
(parameters, seed). Masks are the VISIBLE parts (later objects occlude earlier ones); annotations whose
visible area is tiny are dropped.

Modules: :mod:`.rendering` paints scenes, :mod:`.scenes` says what each dataset style puts in an image
(``simple``: the original easy 4-class set; ``clutter``: 8 classes, small objects, clutter and occlusion,
where detector width shows), :mod:`.masks` turns masks into exact COCO polygons and boxes, :mod:`.writers`
writes and reuses the datasets on disk.
"""
from .masks import mask_bbox, mask_to_polygons, polygons_to_mask
from .scenes import (
                     CATEGORIES,
                     CLASS_NAMES,
                     CLASSIFICATION_CLASSES,
                     CLASSIFICATION_STYLES,
                     DETECTION_STYLES,
                     STYLE_CLASSES,
                     categories,
)
from .writers import (
                     DEFAULT_DATASET_NAME,
                     GENERATOR_VERSION,
                     PARAMS_FILE,
                     POOL_LAYOUTS,
                     default_dataset_root,
                     generate_classification_dataset,
                     generate_coco_dataset,
                     generate_unlabelled_pool,
)

__all__ = ["CATEGORIES", "CLASS_NAMES", "CLASSIFICATION_CLASSES", "CLASSIFICATION_STYLES", "DETECTION_STYLES",
           "STYLE_CLASSES", "DEFAULT_DATASET_NAME", "GENERATOR_VERSION", "PARAMS_FILE", "POOL_LAYOUTS", "categories",
           "default_dataset_root", "generate_classification_dataset", "generate_coco_dataset",
           "generate_unlabelled_pool", "mask_bbox", "mask_to_polygons", "polygons_to_mask"]
