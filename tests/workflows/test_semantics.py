"""What no schema checks: references resolve, parameters are declared, commands parse, policies hold."""

from __future__ import annotations

import pytest

from lt_ssl.compare import EXIT_REGRESSED
from lt_ssl.config import load_config
from lt_ssl.errors import EXIT_BAD_INPUT, EXIT_COLLAPSE, EXIT_PREEMPTED, EXIT_STORAGE, EXIT_UNEXPECTED
from lt_ssl.pipeline import argo, validate
from lt_ssl.pipeline.plan import PLANS, Plan, Stage

from .conftest import FILES, REPO, spec_of, templates_of

RECIPE = PLANS["recipe"]
# Which plan a committed file's pipeline DAG runs (the experiment files' grids: test_experiment_workflows.py).
PLAN_OF = {"cluster_distill.yaml": ("main", "recipe"), "lt_ssl_stages.yaml": ("main", "recipe"),
           "regression_cron.yaml": ("cell", "recipe"), "experiment_exp1_imbalance.yaml": ("pipeline", "plain"),
           "experiment_exp2_cluster_distill.yaml": ("pipeline", "recipe")}


@pytest.mark.parametrize("name", FILES)
def test_committed_objects_have_no_semantic_problems(committed, registry, name):
    assert validate.semantic_problems(committed[name], registry) == []


def problems_after(o: dict, registry=None) -> list[str]:
    return validate.semantic_problems(o, registry)


def dag(o: dict, name: str = "main") -> dict[str, dict]:
    return {t["name"]: t for t in templates_of(o)[name]["dag"]["tasks"]}


# ------------------------------------------------------------------------------------ caught mistakes


def test_undeclared_input_parameter(obj):
    o = obj("cluster_distill.yaml")
    templates_of(o)["expert"]["container"]["args"][-1] = "{{inputs.parameters.clusterr}}"
    assert any("{{inputs.parameters.clusterr}} is not declared" in p for p in problems_after(o))


def test_undeclared_workflow_parameter(obj):
    o = obj("cluster_distill.yaml")
    templates_of(o)["pretrain"]["container"]["image"] = "{{workflow.parameters.imagee}}"
    assert any("{{workflow.parameters.imagee}} is not declared in spec.arguments" in p for p in problems_after(o))


def test_missing_template_and_dependency(obj):
    o = obj("cluster_distill.yaml")
    tasks = dag(o)
    tasks["distill"]["template"] = "distil"
    tasks["evaluate"]["depends"] = "distill && baselines"
    found = problems_after(o)
    assert any("template 'distil' does not exist" in p for p in found), found
    assert any("depends on 'baselines'" in p for p in found), found


def test_dependency_cycle(obj):
    o = obj("cluster_distill.yaml")
    dag(o)["prepare"]["depends"] = "evaluate"
    assert any("form a cycle" in p for p in problems_after(o))


def test_unknown_template_ref(obj, registry):
    o = obj("cluster_distill.yaml")
    task = dag(o)["distill"]
    del task["template"]
    task["templateRef"] = {"name": "lt-ssl-stages", "template": "distil"}
    assert any("has no template 'distil'" in p for p in problems_after(o, registry))
    task["templateRef"] = {"name": "lt-ssl-stages", "template": "distill"}
    assert problems_after(o, registry) == []
    task["templateRef"] = {"name": "other", "template": "distill"}
    assert any("not known" in p for p in problems_after(o, registry))


def test_argument_not_taken_or_missing(obj):
    o = obj("cluster_distill.yaml")
    tasks = dag(o)
    tasks["pretrain"]["arguments"]["parameters"].append({"name": "cluster", "value": "0"})
    tasks["expert"]["arguments"]["parameters"] = [p for p in tasks["expert"]["arguments"]["parameters"] if p["name"] != "cluster"]
    found = problems_after(o)
    assert any("passes 'cluster', which 'pretrain' does not take" in p for p in found), found
    assert any("does not pass 'cluster', which 'expert' needs" in p for p in found), found


def test_item_outside_a_loop(obj):
    o = obj("cluster_distill.yaml")
    dag(o)["distill"]["arguments"]["parameters"][0]["value"] = "{{item}}"
    assert any("outside a withItems/withParam task" in p for p in problems_after(o))


def test_reading_a_task_that_is_not_a_dependency(obj):
    o = obj("cluster_distill.yaml")
    dag(o)["baseline"]["arguments"]["parameters"][0]["value"] = "{{tasks.cluster.outputs.parameters.clusters}}"
    assert any("reads a task it does not depend on" in p for p in problems_after(o))


def test_workflow_status_only_in_the_exit_handler(obj):
    o = obj("cluster_distill.yaml")
    templates_of(o)["distill"]["container"]["env"].append({"name": "S", "value": "{{workflow.status}}"})
    assert any("only set in the onExit handler" in p for p in problems_after(o))


def test_unparseable_lt_ssl_command(obj):
    o = obj("cluster_distill.yaml")
    templates_of(o)["expert"]["container"]["args"][-2] = "--clusterr"
    assert any("does not parse" in p and "--clusterr" in p for p in problems_after(o))


def test_fan_out_must_read_the_cluster_output(obj):
    o = obj("cluster_distill.yaml")
    dag(o)["expert"]["withParam"] = "[0, 1, 2]"
    assert any("fan-out stage must iterate withParam" in p for p in problems_after(o))
    o = obj("cluster_distill.yaml")
    templates_of(o)["cluster"]["outputs"]["parameters"][0]["valueFrom"]["path"] = "/tmp/ids.json"
    assert any("must be read from the --clusters-out file" in p for p in problems_after(o))


def test_retry_policy_must_spare_exit_codes_2_and_3(obj):
    o = obj("cluster_distill.yaml")
    templates_of(o)["pretrain"]["retryStrategy"]["expression"] = "asInt(lastRetry.exitCode) != 2"
    assert any("retries exit code 3" in p for p in problems_after(o))
    del templates_of(o)["pretrain"]["retryStrategy"]
    assert any("needs a retryStrategy" in p for p in problems_after(o))


def test_metric_names_and_shapes(obj):
    o = obj("cluster_distill.yaml")
    metrics = templates_of(o)["evaluate"]["metrics"]["prometheus"]
    metrics[0]["name"] = "lt-ssl-accuracy"
    metrics[1]["labels"] = metrics[1]["labels"][:2]
    found = problems_after(o)
    assert any("letters, digits and _ only" in p for p in found), found
    assert any("another type, label set or help" in p for p in found), found


# ------------------------------------------------------------------------------------ policy and shape


@pytest.mark.parametrize("code,retried", [(EXIT_UNEXPECTED, True), (EXIT_STORAGE, True), (EXIT_PREEMPTED, True),
                                          (EXIT_BAD_INPUT, False), (EXIT_COLLAPSE, False)])
def test_stage_retries(committed, code, retried):
    for name in FILES:
        for t in templates_of(committed[name]).values():
            if t.get("container", {}).get("command") == ["lt-ssl"]:
                assert validate.retried(t["retryStrategy"]["expression"], code) is retried, (name, t["name"])


def test_compare_does_not_retry_a_regression(committed):
    expr = templates_of(committed["regression_cron.yaml"])["compare"]["retryStrategy"]["expression"]
    assert not validate.retried(expr, EXIT_REGRESSED)
    assert validate.retried(expr, EXIT_STORAGE)


def test_backoff_has_no_max_duration(committed):
    """maxDuration would also become a retried pod's deadline and kill a long training attempt."""
    for name in FILES:
        for t in templates_of(committed[name]).values():
            if "retryStrategy" in t:
                assert "maxDuration" not in t["retryStrategy"].get("backoff", {}), (name, t["name"])


@pytest.mark.parametrize("name", PLAN_OF)
def test_dag_is_the_plan(committed, name):
    dag_name, plan_name = PLAN_OF[name]
    plan = PLANS[plan_name]
    tasks = dag(committed[name], dag_name)
    assert set(tasks) - {"compare"} == set(plan.names)
    for stage in plan.stages:
        task = tasks[stage.name]
        assert task["template"] == stage.name
        # every stage a task reads from finishes before it (the DAG may leave out implied edges)
        before: set[str] = set()
        todo = list(validate.depends_names(task.get("depends", "")))
        while todo:
            d = todo.pop()
            before.add(d)
            todo += validate.depends_names(tasks[d].get("depends", ""))
        assert set(stage.needs) <= before, (name, stage.name)
        assert ("withParam" in task) == bool(stage.fan_out)


def test_plain_plan_has_no_recipe_stages(committed):
    """The plain baseline is its own graph, not the recipe with its steps cut to nothing."""
    # pseudolabel: an optional stage, skipped (`when`) unless the run's method needs it
    assert set(dag(committed["experiment_exp1_imbalance.yaml"], "pipeline")) == {"prepare", "pseudolabel", "pretrain",
                                                                                "evaluate"}
    evaluate = templates_of(committed["experiment_exp1_imbalance.yaml"])["evaluate"]
    assert {p["name"] for p in evaluate["outputs"]["parameters"]} == {"knn_top1_base", "linear_top1_base"}


def test_workflow_follows_a_new_stage_in_the_plan(monkeypatch):
    """Nothing is hand-listed: a stage added to a plan appears as a template and a task."""
    monkeypatch.setattr(argo, "RECIPE", Plan("recipe", (*RECIPE.stages, Stage("report", ("evaluate",)))))
    o = argo.to_dict(argo.cluster_distill())
    assert "report" in templates_of(o)
    assert dag(o)["report"]["depends"] == "evaluate"
    assert templates_of(o)["report"]["container"]["args"][:2] == ["stage", "report"]


def test_stage_template_copy_is_identical(committed):
    a, b = committed["cluster_distill.yaml"], committed["lt_ssl_stages.yaml"]
    assert spec_of(a)["templates"] == spec_of(b)["templates"]
    assert spec_of(a)["arguments"] == spec_of(b)["arguments"]
    assert b["kind"] == "WorkflowTemplate" and b["metadata"]["name"] == "lt-ssl-stages"


@pytest.mark.parametrize("name", FILES)
def test_pods_are_locked_down(committed, name):
    for t in templates_of(committed[name]).values():
        if "container" not in t:
            continue
        c = t["container"]
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and sc["runAsUser"] == 10001 and sc["readOnlyRootFilesystem"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert t["securityContext"]["runAsNonRoot"] and t["securityContext"]["fsGroup"] == 10001
        if c["command"] == ["lt-ssl"]:
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            vols = {v["name"]: v for v in t["volumes"]}
            assert {"/tmp", "/cache", "/dev/shm"} <= set(mounts)
            assert vols[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
            assert [e.get("configMapRef", e.get("secretRef"))["name"] for e in c["envFrom"]] == ["lt-ssl-env", "lt-ssl-s3"]


@pytest.mark.parametrize("name", FILES)
def test_gpu_pods(committed, name):
    import json

    for t in templates_of(committed[name]).values():
        if t.get("container", {}).get("command") != ["lt-ssl"]:
            continue
        args = t["container"]["args"]  # `lt-ssl stage <name> ...`: the template's name may carry a plan prefix
        gpu = args[0] == "stage" and RECIPE.stage(args[1]).accelerator
        assert ("podSpecPatch" in t) == gpu, t["name"]
        assert ("pendingTimeout" in t) != gpu, "GPU pods may queue for hours; CPU pods get a pendingTimeout"
        if gpu:
            patch = json.loads(t["podSpecPatch"])
            assert patch["containers"][0] == {"name": "main", "resources": {"limits": {"nvidia.com/gpu": "{{workflow.parameters.gpus}}"}}}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in t["tolerations"]


@pytest.mark.parametrize("name", FILES)
def test_workflow_level_settings(committed, name):
    o = committed[name]
    spec = spec_of(o)
    assert spec["serviceAccountName"] == "lt-ssl-workflow"
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["podGC"]["strategy"] == "OnPodSuccess"
    assert spec["ttlStrategy"]["secondsAfterFailure"] > 0
    assert spec["onExit"] == "exit-handler"
    params = {p["name"]: p["value"] for p in spec["arguments"]["parameters"]}
    assert params["image"] == "lt-ssl:cpu" and params["bucket"] == "lt-ssl" and params["gpus"] == "0"
    assert params["run-id"] == "{{workflow.name}}"
    exit_steps = templates_of(o)["exit-handler"]["steps"][0][0]
    assert exit_steps["when"] == "{{workflow.status}} != Succeeded"
    env = {e["name"]: e["value"] for e in templates_of(o)[exit_steps["template"]]["container"]["env"]}
    assert env["WF_STATUS"] == "{{workflow.status}}" and env["WF_FAILURES"] == "{{workflow.failures}}"


def test_cluster_distill_headline_gauges(committed):
    HEADLINE = [name for name, _ in RECIPE.stage("evaluate").output.fields]
    assert sorted(HEADLINE) == ["knn_top1_base", "knn_top1_student", "linear_top1_base", "linear_top1_student"]
    evaluate = templates_of(committed["cluster_distill.yaml"])["evaluate"]
    outputs = {p["name"]: p["valueFrom"]["path"] for p in evaluate["outputs"]["parameters"]}
    assert outputs == {k: f"/tmp/outputs/{k}" for k in HEADLINE}
    gauges = evaluate["metrics"]["prometheus"]
    assert sorted(g["gauge"]["value"] for g in gauges) == sorted(f"{{{{outputs.parameters.{k}}}}}" for k in HEADLINE)
    assert all(g["gauge"]["realtime"] is False and g["name"].endswith("_ratio") for g in gauges)


def test_cron(committed):
    o = committed["regression_cron.yaml"]
    s = o["spec"]
    assert s["schedules"] and s["timezone"] == "UTC" and s["concurrencyPolicy"] == "Forbid"
    assert s["startingDeadlineSeconds"] > 0 and s["successfulJobsHistoryLimit"] > 0 and s["failedJobsHistoryLimit"] > 0
    compare = dag(o, "cell")["compare"]
    assert compare["depends"] == "evaluate"
    # The cells run side by side: none waits for another and failFast is off, so a failed or regressed cell
    # neither stops nor hides the others' results.
    main = templates_of(o)["main"]
    cells = dag(o)
    assert len(cells) == len(argo.REGRESSION_CELLS) and not any("depends" in t for t in cells.values())
    assert main["dag"]["failFast"] is False and all(t["template"] == "cell" for t in cells.values())
    assert len({t["arguments"]["parameters"][0]["value"] for t in cells.values()}) == len(cells)  # distinct runs
    gauges = {g["name"]: g for g in templates_of(o)["compare"]["metrics"]["prometheus"]}
    assert gauges["lt_ssl_regression_worst_drop_ratio"]["gauge"]["value"] == "{{outputs.parameters.worst_drop}}"


def test_config_files_named_in_workflows_exist(committed):
    """Every /app/configs/<file> a workflow names is in configs/ (the image copies configs/ there)."""
    import re

    named = {m for o in committed.values() for s in validate._strings(o) for m in re.findall(r"/app/configs/([\w-][\w.-]*)", s)}
    assert named, "no config named"
    missing = sorted(n for n in named if not (REPO / "configs" / n).exists())
    assert missing == [], f"configs/ lacks {missing}"


def test_regression_config_loads():
    cfg = load_config(REPO / "configs" / "regression.yaml")
    assert cfg.device == "cpu" and cfg.data.dataset == "digits"


def test_argo_name_rules(obj):
    o = obj("cluster_distill.yaml")
    dag(o)["distill"]["name"] = "distill_student"
    templates_of(o)["evaluate"]["outputs"]["parameters"][0]["name"] = "knn top1"
    found = problems_after(o)
    assert any("'distill_student' is not a valid Argo name" in p for p in found), found
    assert any("parameter name 'knn top1'" in p for p in found), found
    c = obj("regression_cron.yaml")
    c["metadata"]["name"] = "x" * 53
    c["spec"]["schedules"] = ["0 3 * *"]
    found = problems_after(c)
    assert any("longer than 52" in p for p in found) and any("needs 5 fields" in p for p in found), found
