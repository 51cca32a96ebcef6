"""Self-supervised methods, registered by name (one file each), and the distillation student."""

from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from lt_ssl.errors import ConfigError
from lt_ssl.methods.base import Batch, Method, Paper
from lt_ssl.methods.bcl import BCL
from lt_ssl.methods.distill import DistillStudent
from lt_ssl.methods.gsimclr import GSimCLR
from lt_ssl.methods.lotar import LoTaR
from lt_ssl.methods.msn import MSN, PMSN
from lt_ssl.methods.sdclr import SDCLR
from lt_ssl.methods.simclr import SimCLR
from lt_ssl.methods.simsiam import SimSiam

METHODS: dict[str, type[Method]] = {
    "simsiam": SimSiam,
    "simclr": SimCLR,
    "lotar": LoTaR,
    "sdclr": SDCLR,
    "bcl": BCL,
    "gsimclr": GSimCLR,
    "msn": MSN,
    "pmsn": PMSN,
}
DEFAULT_METHOD = "simsiam"  # the seed paper's method


def build(backbone: nn.Module, cfg) -> Method:
    """The method named by cfg.name (a validated config from METHODS[name].Config) around `backbone`."""
    if cfg.name not in METHODS:
        raise ConfigError(f"unknown method {cfg.name!r}; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[cfg.name](backbone, cfg)


def describe() -> str:
    """Each registered method: its paper, then its config keys with their defaults."""
    lines = []
    for name, cls in METHODS.items():
        p = cls.paper
        lines.append(f"{name}{' (default)' if name == DEFAULT_METHOD else ''}: {p.title}. {p.authors}, {p.year or 'year not given'}. {p.url}")
        lines.append(f"  views per image: {cls.num_views}")
        for key, field in cls.Config.model_fields.items():
            if key != "name":
                lines.append(f"  method.{key} = {field.default!r}")
    return "\n".join(lines)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `lt-ssl methods` on the CLI's subparsers."""
    p = subparsers.add_parser("methods", help="list the registered SSL methods, their papers and config keys")
    p.set_defaults(func=lambda args: print(describe()) or 0, debug=False)
    return p


__all__ = ["METHODS", "DEFAULT_METHOD", "Batch", "DistillStudent", "Method", "Paper", "build"]
