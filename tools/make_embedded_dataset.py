#!/usr/bin/env python
"""Write the embedded synthetic dataset (COCO instances; with --classification an ImageFolder set; with
--unlabelled a flat folder of scenes, or with --pool-layout objects of single objects, for pre-training, no
annotations).

No download: the images are generated from a seed. Re-running with the same parameters does nothing.
"""
import argparse
import json

from us3l.cli import exit_with
from us3l.data.paths import embedded_root
from us3l.data.synthetic import (
    CLASSIFICATION_STYLES,
    DETECTION_STYLES,
    POOL_LAYOUTS,
    default_dataset_root,
    generate_classification_dataset,
    generate_coco_dataset,
    generate_unlabelled_pool,
)
from us3l.output_paths import check_output_dir


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default=None,
                   help="output folder (default: $US3L_DATASETS/us3l_shapes; with --classification us3l_shapes_cls, "
                        "or us3l_shapes_cls_<style> for a style other than category)")
    p.add_argument("--num-train", type=int, default=256,
                   help="training images (per class with --classification)")
    p.add_argument("--num-val", type=int, default=64, help="validation images (per class with --classification)")
    p.add_argument("--image-size", type=int, default=None, help="square image side in pixels (default 96; 64 cls)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classification", action="store_true",
                   help="write an ImageFolder set (one dominant object per image) for kNN / linear probes")
    p.add_argument("--unlabelled", action="store_true",
                   help="write an UNLABELLED pre-training pool of --num-train scenes of the detection --style "
                        "(ROOT/*.png, no annotations; its own generator key, so no image of the labelled sets)")
    p.add_argument("--pool-layout", choices=POOL_LAYOUTS, default="scenes",
                   help="--unlabelled: 'scenes' (default; the detection set's distribution) or 'objects' (one "
                        "centred object per image, classes in turn, the labels not written)")
    p.add_argument("--style", choices=tuple(dict.fromkeys(DETECTION_STYLES + CLASSIFICATION_STYLES)), default=None,
                   help="detection set: 'simple' (default; 4 easy classes), 'clutter-light' or 'clutter' (8 classes, "
                        "class = outline only, clutter, occlusion); with --classification: 'category' "
                        "(default; each class "
                        "its own colours and pattern) or 'shape' (random colours and patterns: only the outline "
                        "tells the class)")
    args = p.parse_args(argv)
    if args.unlabelled and args.classification:
        p.error("--unlabelled and --classification exclude each other")
    if args.unlabelled and not args.root:
        p.error("--unlabelled needs --root (the pool is not the default dataset)")
    styles = CLASSIFICATION_STYLES if args.classification else DETECTION_STYLES
    args.style = args.style or styles[0]
    if args.style not in styles:
        p.error(f"--style {args.style} is not a {'classification' if args.classification else 'detection'} "
                f"style; choose from {styles}")
    root = args.root or (embedded_root(args.style) if args.classification else default_dataset_root())
    check_output_dir(root, "--root" if args.root else "the dataset folder (--root, $US3L_DATASETS)")
    if args.unlabelled:
        info = generate_unlabelled_pool(root, args.num_train, args.image_size or 96, args.seed, args.style,
                                        args.pool_layout)
    elif args.classification:
        info = generate_classification_dataset(root, args.num_train, args.num_val, args.image_size or 64, args.seed,
                                               args.style)
    else:
        info = generate_coco_dataset(root, num_train=args.num_train, num_val=args.num_val,
                                     image_size=args.image_size or 96, seed=args.seed, style=args.style)
    print(json.dumps({k: v for k, v in info.items() if k != "categories"}, indent=2))
    return info


if __name__ == "__main__":
    exit_with(main)
