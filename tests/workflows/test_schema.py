"""Every object under workflows/ against its Argo v4.1.2 CRD schema, strictly: unknown fields fail."""

from __future__ import annotations

import pytest

from lt_ssl.pipeline import validate

from .conftest import FILES

pytestmark = pytest.mark.usefixtures("schemas")


@pytest.mark.parametrize("name", FILES)
def test_committed_objects_validate(committed, name):
    assert validate.schema_problems(committed[name]) == []


def test_misspelled_field_is_caught(obj):
    o = obj("cluster_distill.yaml")
    expert = next(t for t in o["spec"]["templates"][0]["dag"]["tasks"] if t["name"] == "expert")
    expert["withParm"] = expert.pop("withParam")
    problems = validate.schema_problems(o)
    assert any("withParm" in p and "dag.tasks" in p for p in problems), problems


def test_misspelled_container_field_is_caught(obj):
    o = obj("regression_cron.yaml")
    next(t for t in o["spec"]["workflowSpec"]["templates"] if "container" in t)["container"]["imagePullPolice"] = "Always"
    assert any("imagePullPolice" in p for p in validate.schema_problems(o))


def test_misspelled_cron_field_is_caught(obj):
    o = obj("regression_cron.yaml")
    o["spec"]["schedule"] = "0 3 * * *"  # removed in Argo v4: schedules only
    assert any("'schedule' was unexpected" in p for p in validate.schema_problems(o))


def test_wrong_types_are_caught(obj):
    o = obj("cluster_distill.yaml")
    o["spec"]["activeDeadlineSeconds"] = "two days"
    o["spec"]["templates"][1]["container"]["args"] = "stage prepare"
    problems = validate.schema_problems(o)
    assert any(p.startswith("spec.activeDeadlineSeconds:") for p in problems), problems
    assert any(p.startswith("spec.templates[1].container.args:") for p in problems), problems


def test_int_or_string_takes_both_and_nothing_else(obj):
    o = obj("cluster_distill.yaml")
    retry = o["spec"]["templates"][1]["retryStrategy"]
    for ok in (3, "3"):
        retry["limit"] = ok
        assert validate.schema_problems(o) == []
    retry["limit"] = [3]
    assert any("retryStrategy.limit" in p for p in validate.schema_problems(o))


def test_gauge_needs_realtime(obj):
    o = obj("cluster_distill.yaml")
    evaluate = next(t for t in o["spec"]["templates"] if t["name"] == "evaluate")
    del evaluate["metrics"]["prometheus"][0]["gauge"]["realtime"]
    assert any("'realtime' is a required property" in p for p in validate.schema_problems(o))


def test_unknown_kind_and_missing_name(obj):
    o = obj("cluster_distill.yaml")
    del o["metadata"]["generateName"]
    assert any("metadata needs a name" in p for p in validate.schema_problems(o))
    o["kind"] = "Pod"
    assert "not an Argo kind" in validate.schema_problems(o)[0]
