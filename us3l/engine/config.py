"""Pre-training configuration: typed dataclass sections, YAML files with ``_base_`` inheritance, dotted overrides.

Every key is declared here; a key a file or an override names that does not exist is an error (a typo
must never be silently ignored). Configs are plain values, created per run (no global mutable config).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import US3LError


class ConfigError(US3LError, ValueError):
    """A configuration file or override is invalid."""


@dataclass
class ModelConfig:
    arch: str = "resnet18"
    cifar_stem: bool = True
    width_range: list = field(default_factory=lambda: [0.25, 1.0])  # every slimmable module, heads included
    init_from: Any = None  # start from a checkpoint's backbone and heads (reference code or us3l.pretrain/1)
    # the paper's "individually trained" row: null (slimmable training), or ONE width every iteration trains
    # (teacher at that width too); the checkpoint is then valid at that width only
    individual_width: Any = None


@dataclass
class MethodConfig:
    """The method and its heads. These are the only head defaults (``us3l.ssl.methods.HeadSpec`` is resolved
    from them); the sizes are the reference code's (projector 3 layers, hidden 2048, predictor hidden 2048)."""
    name: str = "us3l"  # us3l | byol_noaux | simsiam_naive | simsiam_inplace | simclr
    base_loss: str = "byol"  # byol | simclr_momentum | moco (us3l / byol_noaux)
    temperature: float = 0.5
    proj_hidden: int = 2048
    proj_dim: int = 256
    proj_layers: int = 3
    proj_last_bn: bool = False
    pred_hidden: int = 2048
    predictor: Any = None  # null: the method decides (BYOL / SimSiam: yes; SimCLR, SimCLR-momentum: no)
    aux_head: Any = None  # null: the method decides (us3l: yes; others have none)
    distill_weight: float = 1.0
    ema_momentum: float = 0.99
    ema_schedule: str = "constant"  # constant | cosine
    feature_distill_weight: float = 0.0
    feature_distill_stages: list = field(default_factory=lambda: [4])


@dataclass
class SamplingConfig:
    num_widths: int = 3
    dynamic: bool = True
    num_stages: int = 4
    step_mode: str = "per_width"  # per_width (reference code: one optimizer step per width) | accumulate


@dataclass
class GroupRegConfig:
    enabled: bool = True
    lam: float = 5.0e-5
    alpha: float = 0.05
    bins: int = 8
    type: str = "linear"  # linear | exp
    warmup_epochs: float = 0.0
    ramp_end: float = 0.5  # fraction of training where alpha_t reaches alpha


@dataclass
class DataConfig:
    dataset: str = "embedded"  # embedded | imagefolder | images | cifar10 | cifar100
    root: Any = None
    augment: str = "cifar"  # cifar | imagenet
    image_size: int = 32
    batch_size: int = 64  # per process
    num_workers: int = 0
    embedded_train_per_class: int = 256
    embedded_val_per_class: int = 64
    embedded_image_size: int = 32
    embedded_seed: int = 0
    embedded_style: str = "category"  # category (colour gives the class away) | shape (only the outline does)


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1.0e-4  # forced to 0 when group regularization is enabled
    schedule: str = "cosine"  # cosine | constant
    warmup_iters: int = 0


@dataclass
class TrainConfig:
    epochs: float = 1.0
    iterations: Any = None  # total iterations; overrides epochs when set
    seed: int = 0
    amp: bool = False
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 10
    checkpoint_every: int = 0  # iterations; 0 = only last/final
    keep_last: int = 3
    progress: bool = True
    tensorboard: bool = True
    collapse_warn: float = 0.1  # warn when std * sqrt(dim) of normalized outputs falls below this
    stop_after: Any = None  # debug: save and stop after this many iterations (simulates a kill)
    num_threads: int = 0  # torch CPU threads (0 = leave as is)


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    group_reg: GroupRegConfig = field(default_factory=GroupRegConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# keys that may differ between a checkpoint and the config that resumes it (they do not change the result)
RESUME_FREE_KEYS = {"data.root", "data.num_workers", "train.log_every", "train.progress", "train.tensorboard",
                    "train.stop_after", "train.checkpoint_every", "train.keep_last", "train.num_threads",
                    "train.device", "model.init_from"}  # init_from: a resumed run restores everything itself


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml(path: str, _seen: tuple = ()) -> dict:
    """A YAML config with its ``_base_`` chain (paths relative to the file) merged in."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ConfigError(f"circular _base_ inheritance through {path}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping")
    bases = data.pop("_base_", None)
    merged: dict = {}
    for b in ([bases] if isinstance(bases, str) else bases or []):
        merged = _merge(merged, load_yaml(os.path.join(os.path.dirname(path), b), _seen + (path,)))
    return _merge(merged, data)


def parse_overrides(items: list[str]) -> dict:
    """``["train.iterations=20", "data.root=/x"]`` -> nested dict (values parsed as YAML scalars/lists)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if any(not p for p in parts):
            raise ConfigError(f"bad override key {key!r}")
        value = yaml.safe_load(raw) if raw.strip() else None
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
    return out


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join((where + '.' if where else '') + k for k in unknown)}; "
                          f"valid keys{' of ' + where if where else ''}: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[name] = _build(sub, data[name], f"{where}.{name}" if where else name)
        else:
            kwargs[name] = _coerce(data[name], f, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _coerce(value, f: dataclasses.Field, where: str):
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true/false, got {value!r}")
        return value
    if isinstance(default, (int, float)) and not isinstance(value, bool) and isinstance(value, (int, float)):
        if isinstance(default, float):
            return float(value)
        if float(value).is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return list(value)
    if not isinstance(value, type(default)):
        raise ConfigError(f"{where} must be {type(default).__name__}, got {value!r}")
    return value


def validate(cfg: PretrainConfig) -> PretrainConfig:
    """Names and ranges checked before anything is built or written."""
    _check_names(cfg)
    _check_widths(cfg)
    _check_schedule(cfg)
    _check_method(cfg)
    if cfg.model.init_from is not None and not isinstance(cfg.model.init_from, str):
        raise ConfigError(f"model.init_from must be a checkpoint path, got {cfg.model.init_from!r}")
    if cfg.model.init_from and not os.path.isfile(cfg.model.init_from):
        raise ConfigError(f"model.init_from: checkpoint not found: {cfg.model.init_from}")
    if cfg.train.amp and cfg.train.device == "cpu":
        raise ConfigError("train.amp needs CUDA")
    return cfg


def _check_names(cfg: PretrainConfig) -> None:
    from ..data.datasets import DATASETS
    from ..data.synthetic import CLASSIFICATION_STYLES
    from ..data.transforms import RECIPES
    from ..models import ARCHS
    from ..ssl.methods import BASE_LOSSES, METHODS

    for value, options, where in (
            (cfg.model.arch, ARCHS, "model.arch"), (cfg.method.name, METHODS, "method.name"),
            (cfg.method.base_loss, BASE_LOSSES, "method.base_loss"),
            (cfg.method.ema_schedule, ("constant", "cosine"), "method.ema_schedule"),
            (cfg.data.dataset, DATASETS, "data.dataset"), (cfg.data.augment, RECIPES, "data.augment"),
            (cfg.data.embedded_style, CLASSIFICATION_STYLES, "data.embedded_style"),
            (cfg.sampling.step_mode, ("per_width", "accumulate"), "sampling.step_mode"),
            (cfg.group_reg.type, ("linear", "exp"), "group_reg.type"), (cfg.optim.name, ("sgd",), "optim.name"),
            (cfg.optim.schedule, ("cosine", "constant"), "optim.schedule"),
            (cfg.train.device, ("auto", "cpu", "cuda"), "train.device")):
        if value not in options:
            raise ConfigError(f"unknown {where} {value!r}; choose from {', '.join(options)}")


def _check_widths(cfg: PretrainConfig) -> None:
    wr = cfg.model.width_range
    if len(wr) != 2 or not all(isinstance(v, (int, float)) for v in wr) or not (0.0 < wr[0] <= wr[1] <= 1.0):
        raise ConfigError(f"model.width_range must be [w_min, w_max] with 0 < w_min <= w_max <= 1, got {wr}")
    if wr[1] != 1.0:
        raise ConfigError(f"model.width_range must end at 1.0 (the max network), got {wr}")
    fw = cfg.model.individual_width
    if fw is not None and (isinstance(fw, bool) or not isinstance(fw, (int, float)) or not wr[0] <= fw <= 1.0):
        raise ConfigError(f"model.individual_width must be null or a width in model.width_range {wr}, got {fw!r}")
    if cfg.sampling.num_widths < 1:
        raise ConfigError("sampling.num_widths must be >= 1")
    if cfg.sampling.num_stages < 2 and cfg.sampling.dynamic:
        raise ConfigError("sampling.num_stages must be >= 2 for dynamic sampling")


def _check_schedule(cfg: PretrainConfig) -> None:
    if cfg.data.batch_size < 2:
        raise ConfigError("data.batch_size must be >= 2 (batch statistics and contrastive losses need 2+)")
    for key in ("iterations", "stop_after"):
        value = getattr(cfg.train, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"train.{key} must be a positive integer, got {value!r}")
    if cfg.train.epochs <= 0 and cfg.train.iterations is None:
        raise ConfigError("train.epochs must be > 0")


def _check_method(cfg: PretrainConfig) -> None:
    from ..ssl.methods import resolve_heads

    if any(s not in (1, 2, 3, 4) for s in cfg.method.feature_distill_stages):
        raise ConfigError("method.feature_distill_stages must list stages 1..4")
    for key in ("predictor", "aux_head"):
        if getattr(cfg.method, key) not in (None, True, False):
            raise ConfigError(f"method.{key} must be true, false or null (the method decides), "
                              f"got {getattr(cfg.method, key)!r}")
    if cfg.method.temperature <= 0:
        raise ConfigError(f"method.temperature must be > 0, got {cfg.method.temperature}")
    try:
        resolve_heads(cfg.method, tuple(cfg.model.width_range), cfg.model.arch)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def load_config(path: str | None = None, overrides: list[str] | None = None) -> PretrainConfig:
    """Config from a YAML file (with ``_base_``) and ``section.key=value`` overrides; validated."""
    data = load_yaml(path) if path else {}
    data = _merge(data, parse_overrides(overrides or []))
    return validate(_build(PretrainConfig, data, ""))


def config_from_dict(data: dict) -> PretrainConfig:
    return validate(_build(PretrainConfig, copy.deepcopy(data), ""))


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resume_differences(saved: dict, current: dict) -> list[str]:
    """Settings that differ between a checkpoint's config and the resuming one (free keys ignored)."""
    a, b = flatten(saved), flatten(current)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if k in RESUME_FREE_KEYS:
            continue
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            diffs.append(f"{k}: checkpoint {a.get(k, '<absent>')!r} vs now {b.get(k, '<absent>')!r}")
    return diffs
