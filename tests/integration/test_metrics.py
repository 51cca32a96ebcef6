"""StageMetrics against Debian's real Pushgateway and Prometheus on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
import uuid

import pytest
from prometheus_client.exposition import delete_from_gateway
from prometheus_client.parser import text_string_to_metric_families

from lt_ssl import metrics as metrics_mod
from lt_ssl.metrics import StageMetrics


def _run_id() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def _delete(m: StageMetrics) -> None:
    """Remove a test's group from the Pushgateway (groups never expire by themselves)."""
    delete_from_gateway(m.pushgateway_url, job=m.job, grouping_key=m.grouping_key)


def _groups(pushgateway: str, run_id: str) -> list[dict]:
    with urllib.request.urlopen(f"{pushgateway}/api/v1/metrics", timeout=5) as resp:  # noqa: S310 - 127.0.0.1
        data = json.load(resp)["data"]
    return [g for g in data if g["labels"].get("run") == run_id]


def _gone(pushgateway: str, run_id: str, timeout: float = 10.0) -> bool:
    """The Pushgateway answers DELETE with 202 and applies it asynchronously: poll until the groups are gone."""
    import time

    deadline = time.monotonic() + timeout
    while _groups(pushgateway, run_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# ------------------------------------------------------------------------------ real servers


@pytest.mark.integration
def test_pushed_accuracy_is_queryable_in_prometheus(pushgateway, prometheus, query_until):
    run_id = _run_id()
    m = StageMetrics(run_id, "evaluate", pushgateway_url=pushgateway)
    m.accuracy("student", "few", "knn", 0.4321)
    m.accuracy("student", "all", "linear", 0.75)
    m.stage_duration(12.5)
    try:
        assert m.push() is True
        result = query_until(prometheus, f'lt_ssl_eval_accuracy_ratio{{run="{run_id}"}}', timeout=30,
                             predicate=lambda r: len(r) == 2)
        by_group = {r["metric"]["group"]: r for r in result}
        few = by_group["few"]["metric"]
        assert float(by_group["few"]["value"][1]) == pytest.approx(0.4321)
        assert float(by_group["all"]["value"][1]) == pytest.approx(0.75)
        # honor_labels kept the pushed labels; the grouping carries no instance
        assert few["job"] == "lt_ssl" and few["stage"] == "evaluate" and few["run"] == run_id
        assert few["model"] == "student" and few["evaluation"] == "knn"
        assert few.get("instance", "") == ""
        dur = query_until(prometheus, f'lt_ssl_stage_duration_seconds{{run="{run_id}"}}', timeout=30)
        assert float(dur[0]["value"][1]) == 12.5
    finally:
        _delete(m)
    assert _gone(pushgateway, run_id)


@pytest.mark.integration
def test_parallel_experts_keep_separate_groups_without_instance(pushgateway):
    run_id = _run_id()
    experts = [StageMetrics(run_id, f"expert-{k}", cluster=k, pushgateway_url=pushgateway) for k in range(3)]
    try:
        for k, m in enumerate(experts):
            m.progress(epoch=1, step=10 + k, loss=0.5 + k, images_per_second=100.0, lr=0.01)  # 1st call pushes
        groups = _groups(pushgateway, run_id)
        assert len(groups) == 3  # no expert replaced another's group
        for g in groups:
            assert "instance" not in g["labels"]
            assert set(g["labels"]) == {"job", "run", "stage", "cluster"}
            loss = g["lt_ssl_train_loss"]["metrics"][0]
            k = int(g["labels"]["cluster"])
            assert loss["labels"]["stage"] == f"expert-{k}" and loss["labels"]["cluster"] == str(k)
            assert float(loss["value"]) == 0.5 + k
    finally:
        for m in experts:
            _delete(m)
    assert _gone(pushgateway, run_id)


@pytest.mark.integration
def test_push_replaces_the_group(pushgateway):
    """push_to_gateway (PUT): a retried stage's push replaces what a failed attempt left."""
    run_id = _run_id()
    first = StageMetrics(run_id, "pretrain", pushgateway_url=pushgateway)
    first.stage_duration(9.0)
    first.push()
    retry = StageMetrics(run_id, "pretrain", pushgateway_url=pushgateway)
    retry.progress(epoch=0, step=1, loss=1.0, images_per_second=5.0, lr=0.1)
    try:
        (group,) = _groups(pushgateway, run_id)
        assert "lt_ssl_train_loss" in group and "lt_ssl_stage_duration_seconds" not in group
    finally:
        _delete(retry)


# ------------------------------------------------------------------------------ no servers needed


def test_exposition_parses_with_conventional_names():
    m = StageMetrics("r1", "expert-2", cluster=2, pushgateway_url="")
    m.progress(epoch=3, step=120, loss=0.25, images_per_second=812.0, lr=0.05)
    m.accuracy("base", "many", "knn", 0.5)
    m.stage_duration(3.5)
    families = {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}
    assert set(families) == {
        "lt_ssl_train_epoch", "lt_ssl_train_step", "lt_ssl_train_loss", "lt_ssl_train_images_per_second",
        "lt_ssl_train_learning_rate", "lt_ssl_eval_accuracy_ratio", "lt_ssl_stage_duration_seconds",
    }
    (loss,) = families["lt_ssl_train_loss"].samples
    assert loss.labels == {"stage": "expert-2", "cluster": "2"} and loss.value == 0.25
    (acc,) = families["lt_ssl_eval_accuracy_ratio"].samples
    assert acc.labels == {"model": "base", "group": "many", "evaluation": "knn"} and acc.value == 0.5
    assert all(f.type == "gauge" for f in families.values())
    assert m.grouping_key == {"run": "r1", "stage": "expert-2", "cluster": "2"}
    assert StageMetrics("r1", "evaluate").grouping_key == {"run": "r1", "stage": "evaluate"}


def test_an_accuracy_in_percent_is_refused():
    m = StageMetrics("r1", "evaluate", pushgateway_url="")
    with pytest.raises(ValueError, match="ratio"):
        m.accuracy("student", "few", "knn", 43.2)


def test_push_to_dead_gateway_warns_once_and_does_not_raise(caplog):
    m = StageMetrics(_run_id(), "pretrain", pushgateway_url=_dead_url(), push_every=2)
    with caplog.at_level(logging.DEBUG, logger="lt_ssl.metrics"):
        for step in range(6):
            m.progress(epoch=0, step=step, loss=1.0, images_per_second=10.0, lr=0.1)
        assert m.push() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "push" in r.getMessage()]
    assert len(warnings) == 1
    assert "training goes on" in warnings[0].getMessage() and "\n" not in warnings[0].getMessage()


def test_no_gateway_means_no_push(monkeypatch):
    calls = []
    monkeypatch.setattr(metrics_mod, "push_to_gateway", lambda *a, **k: calls.append((a, k)))
    monkeypatch.delenv("PUSHGATEWAY_URL", raising=False)
    m = StageMetrics("r1", "pretrain")
    m.progress(epoch=0, step=0, loss=1.0, images_per_second=1.0, lr=0.1)
    assert m.push() is False and calls == []
    monkeypatch.setenv("PUSHGATEWAY_URL", "")
    assert StageMetrics("r1", "pretrain").push() is False and calls == []


def test_progress_pushes_first_and_every_n(monkeypatch):
    calls = []
    monkeypatch.setattr(metrics_mod, "push_to_gateway", lambda *a, **k: calls.append(k))
    monkeypatch.setenv("PUSHGATEWAY_URL", "http://pgw.invalid:9091")
    m = StageMetrics("r1", "distill", push_every=5, job="lt_ssl_ci")
    for step in range(12):
        m.progress(epoch=0, step=step, loss=1.0, images_per_second=1.0, lr=0.1)
    assert len(calls) == 3  # calls 1, 5, 10
    assert calls[0]["job"] == "lt_ssl_ci" and calls[0]["grouping_key"] == {"run": "r1", "stage": "distill"}


# ------------------------------------------------------------------------------ Grafana dashboard

DASHBOARD = __import__("pathlib").Path(__file__).resolve().parents[2] / "k8s/base/grafana/lt-ssl-dashboard.json"


def _dashboard_queries() -> list[str]:
    import re

    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.*), *\w+\)", v["query"]["query"])
            assert m, v["query"]
            exprs.append(m.group(1))
    return [re.sub(r"\$\w+", ".*", e) for e in exprs]  # Grafana variables -> match-all regexes


def test_dashboard_covers_the_metrics():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "lt-ssl-runs"
    text = "\n".join(_dashboard_queries())
    for name in ("lt_ssl_eval_accuracy_ratio", "lt_ssl_train_loss", "lt_ssl_train_images_per_second",
                 "lt_ssl_stage_duration_seconds", "argo_workflows_lt_ssl_eval_accuracy_ratio",
                 "argo_workflows_lt_ssl_workflow_duration_seconds", "argo_workflows_lt_ssl_workflow_failures_total"):
        assert name in text, name


@pytest.mark.integration
def test_dashboard_queries_parse_in_prometheus(prometheus):
    import urllib.error
    import urllib.parse

    for expr in _dashboard_queries():
        url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - 127.0.0.1
                assert json.load(resp)["status"] == "success", expr
        except urllib.error.HTTPError as e:
            pytest.fail(f"{expr!r}: {e.read().decode()}")


def test_dashboard_argo_panels_match_the_workflows_template_metrics():
    """Every argo_workflows_lt_ssl_<x> the dashboard queries is a metric some workflow under workflows/ declares."""
    import re

    import yaml

    declared: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            prom = node.get("metrics", {}).get("prometheus") if isinstance(node.get("metrics"), dict) else None
            for m in prom or []:
                declared.add(m["name"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    files = sorted((DASHBOARD.parents[3] / "workflows").glob("*.yaml"))
    assert files, "workflows/*.yaml are committed: the dashboard must be checked against them"
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            walk(doc)
    used = set(re.findall(r"argo_workflows_(lt_ssl_\w+)", "\n".join(_dashboard_queries())))
    assert used and used <= declared, sorted(used - declared)
