"""Shared fixtures for the workflow tests: the committed objects under workflows/, parsed once."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from lt_ssl.pipeline import argo, validate

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
ARGO_FILES = tuple(argo.OBJECTS)  # written by `python -m lt_ssl.pipeline.argo`
EXPERIMENT_FILES = tuple(sorted(p.name for p in WORKFLOWS.glob("experiment_*.yaml")))  # by `lt-ssl experiment render`
FILES = ARGO_FILES + EXPERIMENT_FILES  # every committed object: schema, semantics and policy checks cover all


def load(name: str) -> dict:
    (obj,) = validate.load_objects(WORKFLOWS / name)
    return obj


@pytest.fixture(scope="session")
def committed() -> dict[str, dict]:
    """File name -> the object committed under workflows/ (fresh deep copies via `obj` below)."""
    return {name: load(name) for name in FILES}


@pytest.fixture
def obj(committed):
    """A deep copy of one committed object, for tests that mutate: obj('cluster_distill.yaml')."""
    return lambda name: copy.deepcopy(committed[name])


@pytest.fixture(scope="session")
def registry(committed) -> dict[str, dict]:
    return validate.registry_of(list(committed.values()))


@pytest.fixture(scope="session")
def schemas() -> None:
    if validate.schemas_dir() is None:
        pytest.fail(f"Argo CRD schemas not found: put shared/schemas/argo-workflows-{validate.ARGO_VERSION} beside the "
                    f"repository or set {validate.SCHEMAS_ENV}")


def spec_of(o: dict) -> dict:
    return o["spec"]["workflowSpec"] if o["kind"] == "CronWorkflow" else o["spec"]


def templates_of(o: dict) -> dict[str, dict]:
    return {t["name"]: t for t in spec_of(o)["templates"]}
