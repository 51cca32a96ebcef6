"""Run configuration: frozen, typed dataclasses loaded from YAML; unknown keys and wrong types fail."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class AugmentConfig:
    """The SimSiam/SimCLR CIFAR recipe, applied batched on the device (see lt_ssl.data.augment)."""

    size: int = 32  # output side in pixels (RandomResizedCrop target)
    crop_scale_min: float = 0.2  # fraction of the image area kept by the random resized crop
    crop_scale_max: float = 1.0
    crop_ratio_min: float = 3 / 4  # aspect ratio range, as torchvision
    crop_ratio_max: float = 4 / 3
    flip_p: float = 0.5
    jitter_p: float = 0.8  # probability of applying colour jitter at all
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0  # off for 32x32 CIFAR, as in SimSiam's CIFAR recipe
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    solarize_p: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"  # digits (ships with scikit-learn) | cifar10 | cifar100
    root: str = ""  # folder (or s3:// prefix) with CIFAR's python batches; unused for digits
    download: bool = False  # fetch CIFAR through torchvision into root (needs internet)
    subset: str = "longtail"  # longtail | balanced (rescaled to the long-tail size) | full
    imbalance: float = 100.0  # p = N_max / N_min of the long-tailed subset
    split: int = 0  # split seed: shuffles which classes are head and tail (literature uses 0, 1, 2)
    image_size: int = 0  # digits only: side the 8x8 images are upsampled to; 0 = the dataset's own


@dataclass(frozen=True)
class TrainConfig:
    """One training stage. lr is per 256 images and scaled linearly with batch size (Goyal et al.)."""

    epochs: int = 10
    batch_size: int = 512
    lr: float = 0.03  # per 256 images
    weight_decay: float = 1e-5
    momentum: float = 0.9
    optimizer: str = "sgd"  # sgd | lars
    warmup_epochs: int = 0
    checkpoint_every: int = 5  # epochs between checkpoints (also written on SIGTERM)


@dataclass(frozen=True)
class MethodConfig:
    name: str = "simsiam"  # simsiam | simclr
    proj_dim: int = 2048  # SimSiam: 2048 (paper); SimCLR: 128
    proj_hidden: int = 2048
    proj_layers: int = 3  # SimSiam's CIFAR variant uses 2
    pred_hidden: int = 512  # SimSiam predictor bottleneck
    temperature: float = 0.0  # SimCLR's NT-Xent temperature; 0 = method default; SimSiam rejects it


@dataclass(frozen=True)
class ClusterConfig:
    k: int = 3  # number of clusters = number of experts; 1 gives the "+D" ablation (no clustering)
    backend: str = "auto"  # auto | sklearn | torch | torchpq
    n_init: int = 3
    max_iter: int = 100


@dataclass(frozen=True)
class ExpertConfig:
    init: str = "base"  # base (start from the base model, seed 000) | random
    train: TrainConfig = TrainConfig(epochs=180)


@dataclass(frozen=True)
class DistillConfig:
    head_hidden: int = 2048  # hidden width of each of the K+1 regression heads
    init: str = "random"  # random | base: the student's starting point
    train: TrainConfig = TrainConfig(epochs=80)


@dataclass(frozen=True)
class BaselineConfig:
    """A plain SSL model with the same total epoch budget, for the comparison the paper makes."""

    enabled: bool = False
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig(epochs=300)


@dataclass(frozen=True)
class EvalConfig:
    knn_k: int = 200
    knn_temperature: float = 0.1
    linear_epochs: int = 100
    linear_lr: float = 0.1
    linear_weight_decay: float = 1e-5
    batch_size: int = 512  # feature extraction batch
    # What the kNN bank and the linear probe train on: full_balanced = the whole (balanced) training set
    # (LoTaR thesis); balanced_subset = a balanced subset the size of the pre-training subset (offline-clustering paper)
    protocol: str = "full_balanced"


@dataclass(frozen=True)
class MetricsConfig:
    pushgateway_url: str = ""  # empty: env PUSHGATEWAY_URL, or no pushing
    job: str = "lt_ssl"
    push_every: int = 50  # training steps between progress pushes


@dataclass(frozen=True)
class Config:
    name: str = "run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    backbone: str = "small_cnn"  # small_cnn | resnet18_cifar
    method: MethodConfig = MethodConfig()
    pretrain: TrainConfig = TrainConfig(epochs=40)
    cluster: ClusterConfig = ClusterConfig()
    expert: ExpertConfig = ExpertConfig()
    distill: DistillConfig = DistillConfig()
    baseline: BaselineConfig = BaselineConfig()
    evaluate: EvalConfig = EvalConfig()
    metrics: MetricsConfig = MetricsConfig()


# ---------------------------------------------------------------------------------------------
# Loading: YAML -> dict -> typed dataclasses. Every key is checked against the dataclass fields.

_CHOICES = {
    "data.dataset": ("digits", "cifar10", "cifar100"),
    "data.subset": ("longtail", "balanced", "full"),
    "backbone": ("small_cnn", "resnet18_cifar", "resnet18"),
    "method.name": ("simsiam", "simclr"),
    "baseline.method.name": ("simsiam", "simclr"),
    "cluster.backend": ("auto", "sklearn", "torch", "torchpq"),
    "expert.init": ("base", "random"),
    "distill.init": ("random", "base"),
    "evaluate.protocol": ("full_balanced", "balanced_subset"),
}
_OPTIMIZERS = ("sgd", "lars")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping of {typ.__name__} fields, got {value!r}")
        return _build(typ, value, key + ".")
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this loader does not know is a bug here
        raise TypeError(f"unsupported config field type {typ} for {key}")
    raise ConfigError(f"config key {key!r} must be {typ.__name__}, got {value!r} ({type(value).__name__})")


def _build(cls, raw: dict, prefix: str = ""):
    hints = _hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        known = ", ".join(prefix + k for k in hints)
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r}; known keys here: {known}")
    default = cls()
    kwargs = {}
    for name, typ in hints.items():
        if name in raw:
            kwargs[name] = _coerce(raw[name], typ, prefix + name)
        else:
            kwargs[name] = getattr(default, name)
    return cls(**kwargs)


def _leaf_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for name, typ in _hints(cls).items():
        if dataclasses.is_dataclass(typ):
            keys += _leaf_keys(typ, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _resolve_key(key: str) -> str:
    """Full dotted key; a bare leaf name is accepted when it is unambiguous (imbalance=100)."""
    leaves = _leaf_keys(Config)
    if key in leaves:
        return key
    matches = [k for k in leaves if k.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"override key {key!r} is ambiguous: use one of {', '.join(matches)}")
    raise ConfigError(f"unknown config key {key!r} in override; see configs/*.yaml for the keys")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` strings (value parsed as YAML) to a raw config dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. cluster.k=4)")
        key, text = item.split("=", 1)
        full = _resolve_key(key.strip())
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = raw
        *parents, leaf = full.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {part!r} must be a mapping to set {full!r}")
        node[leaf] = value
    return raw


def _check_train(t: TrainConfig, key: str, min_epochs: int = 0) -> None:
    if t.epochs < min_epochs:
        raise ConfigError(f"{key}.epochs must be >= {min_epochs}, got {t.epochs}")
    if t.batch_size < 2:
        raise ConfigError(f"{key}.batch_size must be >= 2 (two views per batch need pairs), got {t.batch_size}")
    if t.lr <= 0:
        raise ConfigError(f"{key}.lr must be > 0, got {t.lr}")
    if t.weight_decay < 0 or t.momentum < 0:
        raise ConfigError(f"{key}.weight_decay and {key}.momentum must be >= 0")
    if t.optimizer not in _OPTIMIZERS:
        raise ConfigError(f"{key}.optimizer must be one of {', '.join(_OPTIMIZERS)}, got {t.optimizer!r}")
    if t.warmup_epochs < 0 or t.checkpoint_every < 1:
        raise ConfigError(f"{key}.warmup_epochs must be >= 0 and {key}.checkpoint_every >= 1")


def _check_method(m: MethodConfig, key: str) -> None:
    if m.name == "simsiam" and m.temperature:
        raise ConfigError(f"{key}.temperature is not used by SimSiam; remove it (it applies to simclr only)")
    if m.temperature < 0:
        raise ConfigError(f"{key}.temperature must be > 0, got {m.temperature}")
    if min(m.proj_dim, m.proj_hidden, m.pred_hidden) < 1 or m.proj_layers not in (2, 3):
        raise ConfigError(f"{key}: head sizes must be >= 1 and proj_layers 2 or 3")


def validate(cfg: Config) -> Config:
    """Checks that types cannot express: choices, ranges, method-specific keys."""
    flat = flatten(to_dict(cfg))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", cfg.name):  # `lt-ssl run` names runs/<name>-<time> after it
        raise ConfigError(f"name {cfg.name!r} must be a plain name (letters, digits, '.', '_', '-'): it names the run folder")
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"config key {key!r} must be one of {', '.join(choices)}, got {flat[key]!r}")
    if cfg.data.imbalance < 1:
        raise ConfigError(f"data.imbalance must be >= 1 (N_max/N_min; 1 = balanced), got {cfg.data.imbalance}")
    if cfg.data.dataset != "digits" and not cfg.data.root:
        raise ConfigError(f"data.root must name the folder (or s3:// prefix) holding {cfg.data.dataset}'s python batches")
    if cfg.data.image_size < 0:
        raise ConfigError(f"data.image_size must be >= 0, got {cfg.data.image_size}")
    if cfg.cluster.k < 1:
        raise ConfigError(f"cluster.k must be >= 1, got {cfg.cluster.k}")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    _check_method(cfg.method, "method")
    _check_method(cfg.baseline.method, "baseline.method")
    _check_train(cfg.pretrain, "pretrain", 1)
    _check_train(cfg.expert.train, "expert.train")
    _check_train(cfg.distill.train, "distill.train", 1)
    _check_train(cfg.baseline.train, "baseline.train")
    a = cfg.augment
    if not (0 < a.crop_scale_min <= a.crop_scale_max <= 1) or a.size < 4:
        raise ConfigError("augment.crop_scale_min/max must satisfy 0 < min <= max <= 1 and augment.size >= 4")
    if not 0 <= a.hue <= 0.5 or min(a.brightness, a.contrast, a.saturation) < 0:
        raise ConfigError(f"augment.hue must be in [0, 0.5] (as torchvision's ColorJitter) and jitter strengths >= 0, got hue={a.hue}")
    if cfg.evaluate.knn_k < 1 or cfg.evaluate.linear_epochs < 1:
        raise ConfigError("evaluate.knn_k and evaluate.linear_epochs must be >= 1")
    return cfg


def from_dict(raw: dict) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a YAML mapping, got {type(raw).__name__}")
    return validate(_build(Config, raw))


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config file (or the defaults), apply overrides, type-check and validate."""
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; see configs/ for examples") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a YAML mapping, got {type(raw).__name__}")
    return from_dict(apply_overrides(raw, list(overrides)))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


_ADDED_AT_DEFAULT = (("evaluate", "protocol", "full_balanced"),)


def config_hash(cfg: Config) -> str:
    """Identity of a resolved config: a stage done under another hash is not reused."""
    d = to_dict(cfg)
    # A field added after runs existed leaves their identity alone while it holds the old behaviour, so
    # those runs stay resumable and configs/regression_baseline.json stays matched to its config.
    for section, key, default in _ADDED_AT_DEFAULT:
        if d[section][key] == default:
            del d[section][key]
    text = json.dumps(d, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
