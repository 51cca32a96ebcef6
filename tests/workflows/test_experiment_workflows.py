"""workflows/experiment_<name>.yaml: generated from experiments/<name>.yaml, byte for byte, and strictly valid."""

from __future__ import annotations

import pytest

from lt_ssl.experiment import load_experiment, render_workflow
from lt_ssl.pipeline import validate

from .conftest import REPO, WORKFLOWS

EXPERIMENTS = sorted(p.name for p in (REPO / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_committed_workflow_matches_the_experiment(name):
    exp = load_experiment(f"experiments/{name}")
    path = WORKFLOWS / f"experiment_{exp.name}.yaml"
    assert path.exists(), f"run `lt-ssl experiment render experiments/{name}`"
    assert path.read_text() == render_workflow(exp), f"{path} is stale: run `lt-ssl experiment render experiments/{name}`"


@pytest.mark.usefixtures("schemas")
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_workflow_is_strictly_valid_with_one_dag_per_runnable_cell(name):
    exp = load_experiment(f"experiments/{name}")
    (obj,) = validate.load_objects(WORKFLOWS / f"experiment_{exp.name}.yaml")
    assert validate.problems(obj) == []
    grid = next(t for t in obj["spec"]["templates"] if t["name"] == "main")["dag"]["tasks"][0]
    assert [i["name"] for i in grid["withItems"]] == [c.id for c in exp.cells if not c.pending]
