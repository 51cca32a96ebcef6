"""workflows/experiment_<name>.yaml: generated from experiments/<name>.yaml, byte for byte, and strictly valid."""

from __future__ import annotations

import pytest

from lt_ssl.config import load_config
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
    grids = next(t for t in obj["spec"]["templates"] if t["name"] == "main")["dag"]["tasks"]
    # One grid task per plan the cells use (the plain method, the recipe); together they hold every runnable cell once.
    assert sorted(i["name"] for g in grids for i in g["withItems"]) == sorted(c.id for c in exp.cells if not c.pending)
    templates = {t["name"]: t for t in obj["spec"]["templates"]}
    for g in grids:
        plan = {"pipeline": None, "pipeline-plain": "plain", "pipeline-recipe": "recipe"}[g["template"]]
        for item in g["withItems"]:  # each cell runs the DAG of the plan its own config names
            cell = next(c for c in exp.cells if c.id == item["name"])
            assert plan in (None, load_config(exp.config, list(cell.overrides)).plan)
        assert g["template"] in templates
