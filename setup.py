from setuptools import find_packages, setup

setup(
    name="us3l",
    version="0.1.0",
    description="Universally slimmable self-supervised backbones for detection and segmentation at any width",
    packages=find_packages(include=["us3l", "us3l.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.0", "torchvision", "numpy", "pyyaml", "tqdm", "fvcore", "pycocotools"],
    extras_require={
        "detectron2": ["detectron2"],
        "mmdet": ["mmengine==0.10.7", "mmcv==2.1.0", "mmdet==3.3.0"],
        "export": ["onnx", "onnxruntime"],
        "dev": ["pytest", "matplotlib", "tensorboard"],
    },
    entry_points={"console_scripts": [
        "us3l-pretrain = us3l.cli:pretrain_cli",
        "us3l-eval-ssl = us3l.cli:eval_ssl_cli",
        "us3l-train-net = us3l.d2.engine:cli",
        "us3l-mmdet-train = us3l.mmdet.engine:train_cli",
        "us3l-mmdet-test = us3l.mmdet.engine:test_cli",
    ]},
)
