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
        "export": ["onnx"],
        "dev": ["pytest", "matplotlib", "tensorboard"],
    },
    entry_points={"console_scripts": []},
)
