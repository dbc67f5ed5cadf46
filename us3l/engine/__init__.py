"""Pre-training engine: config, trainer, checkpoints / exact resume, distributed helpers, logging.

The package-level names load their module on first use: a caller of one helper (e.g. the MMDetection runner's
``us3l.engine.distributed.cleanup``) does not pay for importing the trainer and its data pipeline.
"""
from importlib import import_module

_MODULE_OF = {"ConfigError": "config", "PretrainConfig": "config", "config_from_dict": "config",
              "load_config": "config", "Pretrainer": "trainer", "pretrain": "trainer"}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)


__all__ = list(_MODULE_OF)
