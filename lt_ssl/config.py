"""Run configuration: frozen, strict pydantic models loaded from YAML; unknown keys and wrong types fail.

Each method owns its config (lt_ssl/methods/<name>.py); `method.name` selects which model validates the
rest of the `method` section, so a key another method uses (SimCLR's temperature under SimSiam) is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .methods import DEFAULT_METHOD, METHODS
from .models.backbones import BACKBONES, PATCH_BACKBONES
from .optim import OPTIMIZERS
from .pipeline.plan import PLANS
from .schema import Float, Section


class AugmentConfig(Section):
    """The SimSiam/SimCLR CIFAR recipe, applied batched on the device (see lt_ssl.data.augment)."""

    size: int = Field(32, ge=4)  # output side in pixels (RandomResizedCrop target)
    crop_scale_min: Float = 0.2  # fraction of the image area kept by the random resized crop
    crop_scale_max: Float = 1.0
    crop_ratio_min: Float = 3 / 4  # aspect ratio range, as torchvision
    crop_ratio_max: Float = 4 / 3
    flip_p: Float = Field(0.5, ge=0, le=1)
    jitter_p: Float = Field(0.8, ge=0, le=1)  # probability of applying colour jitter at all
    brightness: Float = Field(0.4, ge=0)
    contrast: Float = Field(0.4, ge=0)
    saturation: Float = Field(0.4, ge=0)
    hue: Float = Field(0.1, ge=0, le=0.5, description="as torchvision's ColorJitter")
    grayscale_p: Float = Field(0.2, ge=0, le=1)
    blur_p: Float = Field(0.0, ge=0, le=1)  # off for 32x32 CIFAR, as in SimSiam's CIFAR recipe
    blur_sigma_min: Float = 0.1
    blur_sigma_max: Float = 2.0
    solarize_p: Float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _crop_scale(self):
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
            raise ConfigError("augment.crop_scale_min/max must satisfy 0 < min <= max <= 1, got "
                              f"{self.crop_scale_min}, {self.crop_scale_max}")
        return self


# Datasets read from files under data.root; digits ships with scikit-learn, fashion_mnist has a Debian default path
# (lt_ssl.data.datasets.DATASETS[...].default_root; checked against this tuple in tests/unit/test_data_idx.py).
_NEEDS_ROOT = ("cifar10", "cifar100", "mnist", "kmnist")


class DataConfig(Section):
    dataset: Literal["digits", "cifar10", "cifar100", "fashion_mnist", "mnist", "kmnist", "fashion_mnist_digits"] = "digits"
    root: str = ""  # folder (or s3:// prefix) with the dataset's files; unused for digits
    download: bool = False  # fetch CIFAR through torchvision into root (needs internet)
    subset: Literal["longtail", "balanced", "full"] = "longtail"  # balanced is rescaled to the long-tail size
    imbalance: Float = Field(100.0, ge=1, description="N_max/N_min; 1 = balanced")  # of the long-tailed subset
    split: int = 0  # split seed: shuffles which classes are head and tail (literature uses 0, 1, 2)
    image_size: int = Field(0, ge=0)  # digits and IDX datasets: side images are resized to at load; 0 = their own (digits: 16)

    @model_validator(mode="after")
    def _root(self):
        if self.dataset in _NEEDS_ROOT and not self.root:
            raise ConfigError(f"data.root must name the folder (or s3:// prefix) holding {self.dataset}'s files")
        return self


class TrainConfig(Section):
    """One training stage. lr is per 256 images and scaled linearly with batch size (Goyal et al.)."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(512, ge=2, description="two views per batch need pairs")
    lr: Float = Field(0.03, gt=0)  # per 256 images
    weight_decay: Float = Field(1e-5, ge=0)
    momentum: Float = Field(0.9, ge=0)
    optimizer: Literal[OPTIMIZERS] = "sgd"  # adamw: momentum is its beta1
    warmup_epochs: int = Field(0, ge=0)
    checkpoint_every: int = Field(5, ge=1)  # epochs between checkpoints (also written on SIGTERM)


def _method_tag(value: Any) -> Any:
    # A method section without `name` is the default method's, as before method configs were typed.
    return value.get("name", DEFAULT_METHOD) if isinstance(value, dict) else getattr(value, "name", None)


# One member per registered method, chosen by `name`.
MethodConfig = Annotated[
    Union[tuple(Annotated[cls.Config, Tag(name)] for name, cls in METHODS.items())],  # noqa: UP007
    Discriminator(_method_tag),
]


def _default_method():
    return METHODS[DEFAULT_METHOD].Config()


class ClusterConfig(Section):
    k: int = Field(3, ge=1)  # number of clusters = number of experts; 1 gives the "+D" ablation (no clustering)
    backend: Literal["auto", "sklearn", "torch", "torchpq"] = "auto"
    n_init: int = Field(3, ge=1)
    max_iter: int = Field(100, ge=1)


class ExpertConfig(Section):
    init: Literal["base", "random"] = "base"  # base: start from the base model (seed 000)
    train: TrainConfig = TrainConfig(epochs=180)


class DistillConfig(Section):
    head_hidden: int = Field(2048, ge=1)  # hidden width of each of the K+1 regression heads
    init: Literal["random", "base"] = "random"  # the student's starting point
    train: TrainConfig = TrainConfig(epochs=80)


class BaselineConfig(Section):
    """A plain SSL model with the same total epoch budget, for the comparison the paper makes."""

    enabled: bool = False
    method: MethodConfig = Field(default_factory=_default_method)
    train: TrainConfig = TrainConfig(epochs=300)


class FinetuneConfig(Section):
    """G-SimCLR's fine-tune with a fraction of the labels (ariG23498/G-SimCLR Fine_Tune_10_Perc.ipynb): the encoder
    and a linear layer, warmed up on frozen features with the evaluate.linear_* probe, then trained together."""

    fraction: Float = Field(0.1, gt=0, le=1)  # labelled share of each class of the probe training set (paper: 10%)
    epochs: int = Field(35, ge=1)  # reference: 35 (with early stopping on the test loss, which we do not do)
    lr: Float = Field(1e-5, gt=0)  # Adam, not scaled with batch size (reference: 1e-5, "low learning rate")
    batch_size: int = Field(64, ge=1)  # reference: 64


class EvalConfig(Section):
    knn_k: int = Field(200, ge=1)
    knn_temperature: Float = Field(0.1, gt=0)
    linear_epochs: int = Field(100, ge=1)
    linear_lr: Float = Field(0.1, gt=0)
    linear_weight_decay: Float = Field(1e-5, ge=0)
    batch_size: int = Field(512, ge=1)  # feature extraction batch
    # What the kNN bank and the linear probe train on: full_balanced = the whole (balanced) training set
    # (LoTaR thesis); balanced_subset = a balanced subset the size of the pre-training subset (offline-clustering paper)
    protocol: Literal["full_balanced", "balanced_subset"] = "full_balanced"
    # Probes beyond kNN and the linear probe, which always run (Argo exports them; `lt-ssl compare` and experiment
    # reports read them). head_layers: G-SimCLR's P1/P2/P3, a linear probe on the features after each projection-head
    # layer; finetune: G-SimCLR's fine-tune on a class-stratified evaluate.finetune.fraction of the probe training set.
    extra_probes: list[Literal["head_layers", "finetune"]] = []
    finetune: FinetuneConfig = FinetuneConfig()

    @field_validator("extra_probes")
    @classmethod
    def _once_each(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ConfigError(f"evaluate.extra_probes lists a probe twice: {v}; name each once")
        return v


class MetricsConfig(Section):
    pushgateway_url: str = ""  # empty: env PUSHGATEWAY_URL, or no pushing
    job: str = "lt_ssl"
    push_every: int = Field(50, ge=1)  # training steps between progress pushes


class Config(Section):
    name: str = "run"  # names the run folder runs/<name>-<time>
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    plan: str = "recipe"  # the stage graph to run: a name in lt_ssl.pipeline.plan.PLANS (recipe | plain)
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    backbone: Literal[tuple(BACKBONES)] = "small_cnn"
    method: MethodConfig = Field(default_factory=_default_method)
    pretrain: TrainConfig = TrainConfig(epochs=40)
    cluster: ClusterConfig = ClusterConfig()
    expert: ExpertConfig = ExpertConfig()
    distill: DistillConfig = DistillConfig()
    baseline: BaselineConfig = BaselineConfig()
    evaluate: EvalConfig = EvalConfig()
    metrics: MetricsConfig = MetricsConfig()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v):  # `lt-ssl run` names runs/<name>-<time> after it
            raise ConfigError(f"name {v!r} must be a plain name (letters, digits, '.', '_', '-'): it names the run folder")
        return v

    @field_validator("plan")
    @classmethod
    def _known_plan(cls, v: str) -> str:
        if v not in PLANS:
            raise ConfigError(f"plan must be one of {', '.join(PLANS)}, got {v!r}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not (v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", v)):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    @model_validator(mode="after")
    def _patch_backbone(self):
        # Checked here so that a run fails before its first stage, not at pretrain after prepare has run.
        for key, m in (("method", self.method), ("baseline.method", self.baseline.method)):
            if key == "baseline.method" and not self.baseline.enabled:
                continue
            if METHODS[m.name].masks_patches and self.backbone not in PATCH_BACKBONES:
                raise ConfigError(f"{key}.name={m.name} drops image patches and needs a ViT backbone, got "
                                  f"backbone={self.backbone}; set backbone={min(PATCH_BACKBONES)}")
        return self

    @model_validator(mode="after")
    def _epochs(self):
        for key, t in (("pretrain", self.pretrain), ("distill.train", self.distill.train)):
            if t.epochs < 1:  # later stages load these stages' models
                raise ConfigError(f"{key}.epochs must be >= 1, got {t.epochs}")
        return self


# Not part of a run's identity: where the same data are read from, where it runs, what it reports to and its label.
# `name` only labels the run folder; two configs that differ by name alone give the same numbers.
_NOT_IDENTITY = ("name", "device", "metrics", "data.root", "data.download")

# ---------------------------------------------------------------------------------------------
# Loading: YAML -> dict -> Config, with pydantic's errors turned into one line naming the key.


def _field_model(model: type[BaseModel], part: str) -> type[BaseModel] | None:
    ann = model.model_fields[part].annotation if part in model.model_fields else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _dotted(loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """pydantic's error location as a dotted key, and the model that holds its last part."""
    parts, model, holder = [], Config, Config
    for i, part in enumerate(loc):
        if model is None and isinstance(part, str) and part in METHODS and parts and parts[-1] == "method":
            model = METHODS[part].Config  # the union's tag: not a key the user wrote
            continue
        holder = model
        parts.append(str(part))
        model = _field_model(model, part) if model is not None else None
    return ".".join(parts), holder


def _one_line(err: ValidationError) -> str:
    e = err.errors()[0]
    key, holder = _dotted(e["loc"])
    kind, ctx, value = e["type"], e.get("ctx") or {}, e["input"]
    if kind == "extra_forbidden":
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        known = ", ".join(parent + k for k in (holder.model_fields if holder else ()))
        return f"unknown config key {key!r}; known keys here: {known}"
    if kind == "model_type" or kind == "model_attributes_type":
        return f"config key {key!r} must be a mapping of {ctx.get('class_name', 'config')} fields, got {value!r}"
    if kind == "union_tag_invalid":
        return f"config key '{key}.name' must be one of {', '.join(METHODS)}, got {ctx['tag']!r}"
    if kind == "union_tag_not_found":
        return f"config key {key!r} must be a mapping with a method name ({', '.join(METHODS)}), got {value!r}"
    if kind == "literal_error":
        return f"config key {key!r} must be one of {ctx['expected'].replace(chr(39), '').replace(' or ', ', ')}, got {value!r}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        name = key.rsplit(".", 1)[-1]
        desc = holder.model_fields[name].description if holder and name in holder.model_fields else None
        limit = format(next(iter(ctx.values())), "g")  # 1, not 1.0, for a float field's bound
        return f"{key} must be {bounds[kind]} {limit}" + (f" ({desc})" if desc else "") + f", got {value!r}"
    for typ in ("int", "float", "bool", "str"):
        if kind.startswith(typ + "_"):
            return f"config key {key!r} must be {typ}, got {value!r} ({type(value).__name__})"
    return f"config key {key!r}: {e['msg']}, got {value!r}"


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        sub = _field_model(model, name)
        if sub is not None:
            keys += _leaf_keys(sub, f"{prefix}{name}.")
        elif name == "method":  # every registered method's keys: `temperature=0.2` resolves once a method has it
            keys += sorted({f"{prefix}method.{k}" for cls in METHODS.values() for k in cls.Config.model_fields})
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
    """Apply `key.sub=value` strings (value parsed as YAML) to a raw config dict.

    `method.name=X` naming another method than the file's starts that method section from X's defaults:
    the file's other method keys belong to the file's method. Name overrides go first, so
    `method.temperature=0.2 method.name=simclr` keeps the temperature.
    """
    raw = copy.deepcopy(raw)
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. cluster.k=4)")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        parsed.append((_resolve_key(key.strip()), value))
    parsed.sort(key=lambda kv: not kv[0].endswith("method.name"))  # stable: the rest keep their order
    for full, value in parsed:
        node = raw
        *parents, leaf = full.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {part!r} must be a mapping to set {full!r}")
        if leaf == "name" and parents and parents[-1] == "method" and node.get("name", DEFAULT_METHOD) != value:
            node.clear()
        node[leaf] = value
    return raw


def from_dict(raw: Any) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a YAML mapping, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e)) from None


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


def to_dict(cfg: BaseModel) -> dict:
    return cfg.model_dump(mode="python")


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)




# Keys that joined the config after runs were made: left out of the identity while they hold their default (the
# behaviour those runs had), so the runs stay resumable and configs/regression_baseline.json stays matched.
_ADDED_LATER = ("evaluate.extra_probes", "evaluate.finetune")


def _at(d: dict, key: str) -> tuple[dict, str]:
    *parents, leaf = key.split(".")
    for part in parents:
        d = d[part]
    return d, leaf


# The keys only the evaluate stage reads: how the trained models are probed, not how they are trained. Two runs
# whose configs differ only here train the same models, so one may take the other's finished training stages
# (pipeline/reuse.py). evaluate.batch_size is not one of them: the cluster stage extracts features in its batches.
EVALUATE_ONLY = tuple(f"evaluate.{name}" for name in EvalConfig.model_fields if name != "batch_size")


def config_hash(cfg: Config, ignore: Sequence[str] = ()) -> str:
    """Identity of a resolved config: a stage done under another hash is not reused. Covers what changes results,
    less the keys in `ignore`."""
    d = to_dict(cfg)
    defaults = to_dict(Config())
    for key in _ADDED_LATER:
        node, leaf = _at(d, key)
        default, _ = _at(defaults, key)
        if node[leaf] == default[leaf]:
            del node[leaf]
    for key in (*_NOT_IDENTITY, *ignore):
        node, leaf = _at(d, key)
        node.pop(leaf, None)
    text = json.dumps(d, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def training_hash(cfg: Config) -> str:
    """The identity of what a run trains: config_hash less EVALUATE_ONLY, the same for runs that differ only in
    how they evaluate."""
    return config_hash(cfg, EVALUATE_ONLY)
