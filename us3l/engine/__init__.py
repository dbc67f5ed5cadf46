"""Pre-training engine: config, trainer, checkpoints / exact resume, distributed helpers, logging."""
from .config import ConfigError, PretrainConfig, config_from_dict, load_config
from .trainer import Pretrainer, pretrain

__all__ = ["ConfigError", "PretrainConfig", "config_from_dict", "load_config", "Pretrainer", "pretrain"]
