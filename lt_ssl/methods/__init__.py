"""Self-supervised methods, registered by name, and the distillation student."""

from __future__ import annotations

import inspect

from torch import nn

from lt_ssl.errors import ConfigError
from lt_ssl.methods.distill import DistillStudent
from lt_ssl.methods.simclr import SimCLR
from lt_ssl.methods.simsiam import SimSiam

METHODS: dict[str, type[nn.Module]] = {"simsiam": SimSiam, "simclr": SimCLR}


def build_method(name: str, backbone: nn.Module, **hparams) -> nn.Module:
    """METHODS[name](backbone, **hparams); unknown names and hyperparameters raise ConfigError."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "backbone")]
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise ConfigError(f"unknown hyperparameters {unknown} for method {name!r}; it accepts: {', '.join(accepted)}")
    return cls(backbone, **hparams)


__all__ = ["METHODS", "DistillStudent", "SimCLR", "SimSiam", "build_method"]
