"""Shared fixtures: a tiny pipeline config that runs every stage in seconds on CPU."""

from __future__ import annotations

import os

import pytest

# Two cores are shared by the test process and the stage subprocesses it starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart.yaml")


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the scripts are not a package), registered in sys.modules first:
    dataclasses look their module up while the class is built."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module

# Small heads, one epoch per stage, small batches: the pipeline's logic, not its accuracy.
TINY = [
    "pretrain.epochs=1", "pretrain.batch_size=64",
    "expert.train.epochs=1", "expert.train.batch_size=32",
    "distill.train.epochs=1", "distill.train.batch_size=64", "distill.head_hidden=32",
    "baseline.train.epochs=1", "baseline.train.batch_size=64",
    "method.proj_dim=32", "method.proj_hidden=32", "method.pred_hidden=16",
    "baseline.method.proj_dim=32", "baseline.method.proj_hidden=32", "baseline.method.pred_hidden=16",
    "evaluate.linear_epochs=5", "cluster.n_init=1",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)
    yield
