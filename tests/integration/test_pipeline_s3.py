"""The whole quickstart pipeline with its run in S3 (moto on 127.0.0.1) and metrics through a real
Pushgateway into Prometheus: `lt-ssl run` exactly as a user types it, then again to resume."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lt_ssl.store import open_store

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
# Same pipeline, tiny budgets: one epoch per training stage, a short linear probe.
OVERRIDES = [
    "pretrain.epochs=1",
    "baseline.train.epochs=1",
    "expert.train.epochs=1",
    "distill.train.epochs=1",
    "evaluate.linear_epochs=5",
]
SINGLE_STAGES = ("prepare", "pretrain", "baseline", "cluster", "distill", "evaluate")


def _lt_ssl(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    # the stage subprocesses inherit os.environ, which the fixtures pointed at moto and the Pushgateway
    return subprocess.run([sys.executable, "-m", "lt_ssl", *argv], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_quickstart_pipeline_on_s3_resumes_and_pushes_metrics(s3_bucket, pushgateway, prometheus, query_until,
                                                               monkeypatch, tmp_path):
    run_id = f"qs-{uuid.uuid4().hex[:8]}"
    run_uri = s3_bucket.uri(f"runs/{run_id}")
    monkeypatch.setenv("PUSHGATEWAY_URL", pushgateway)
    monkeypatch.setenv("LT_SSL_DATA_CACHE", str(tmp_path / "cache"))
    argv = ["run", "--config", str(QUICKSTART), "--run", run_uri, "--workers", "2", *OVERRIDES]

    first = _lt_ssl(*argv, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]

    # every stage finished into S3, _SUCCESS.json last, nothing written locally
    store = open_store(run_uri)
    keys = set(store.list())
    assert "config.yaml" in keys
    clusters = store.read_json("cluster/clusters.json")
    assert clusters and all(isinstance(k, int) for k in clusters)
    success = {s: store.read_json(f"{s}/_SUCCESS.json") for s in SINGLE_STAGES}
    success |= {f"expert/{k}": store.read_json(f"expert/{k}/_SUCCESS.json") for k in clusters}
    assert len({s["config_hash"] for s in success.values()}) == 1
    for prefix, s in success.items():
        assert set(s["outputs"]) <= keys, prefix
        assert f"{prefix}/metrics.prom" in keys, prefix
    assert not (tmp_path / "runs").exists()
    metrics = store.read_json("evaluate/metrics.json")
    student_knn = metrics["models"]["student"]["knn"]["top1"]

    # the evaluate stage pushed its accuracies; Prometheus scraped them from the Pushgateway
    try:
        result = query_until(
            prometheus,
            f'lt_ssl_eval_accuracy_ratio{{run="{run_id}", model="student", group="all", evaluation="knn"}}',
            timeout=30,
        )
        assert float(result[0]["value"][1]) == pytest.approx(student_knn, abs=1e-9)
        assert result[0]["metric"]["stage"] == "evaluate" and result[0]["metric"]["job"] == "lt_ssl"
        experts = query_until(prometheus, f'lt_ssl_stage_duration_seconds{{run="{run_id}", stage=~"expert.*"}}',
                              timeout=30, predicate=lambda r: len(r) == len(clusters))
        assert {r["metric"]["cluster"] for r in experts} == {str(k) for k in clusters}
    finally:
        _delete_groups(pushgateway, run_id)

    # the same command again resumes: every stage is skipped, nothing is rewritten
    second = _lt_ssl(*argv, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stderr.count("already done") == len(SINGLE_STAGES) + len(clusters), second.stderr[-4000:]
    for prefix, s in success.items():
        assert store.read_json(f"{prefix}/_SUCCESS.json") == s, prefix

    shown = _lt_ssl("runs", "show", "--json", run_uri, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert {s["status"] for s in json.loads(shown.stdout)["stages"]} == {"done"}


def _delete_groups(pushgateway: str, run_id: str) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{pushgateway}/api/v1/metrics", timeout=5) as resp:  # noqa: S310 - 127.0.0.1
        groups = [g["labels"] for g in json.load(resp)["data"] if g["labels"].get("run") == run_id]
    from prometheus_client.exposition import delete_from_gateway

    for labels in groups:
        job = labels.pop("job")
        delete_from_gateway(pushgateway, job=job, grouping_key=labels)
