"""`lt-ssl compare`: a run's evaluate/metrics.json against a baseline JSON, exit 4 on a regression."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lt_ssl import compare
from lt_ssl.cli import build_parser
from lt_ssl.errors import ConfigError, StageError
from lt_ssl.pipeline.argo import REGRESSION_CELLS
from lt_ssl.store import open_store

from .conftest import REPO


def report(top1: float) -> dict:
    return {"top1": top1, "many": top1 + 0.05, "medium": top1, "few": top1 - 0.1, "per_class": [top1] * 3}


METRICS = {"config_hash": "abc123", "models": {
    "student": {"knn": report(0.80), "linear": report(0.85)},
    "base": {"knn": report(0.78), "linear": report(0.84)},
}}


@pytest.fixture
def run(tmp_path) -> str:
    uri = (tmp_path / "runs" / "r1").as_uri()
    open_store(uri).write_json("evaluate/metrics.json", METRICS)
    return uri


def baseline(tmp_path: Path, metrics: dict, tolerance: float = 0.02, **extra) -> str:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"tolerance": tolerance, "metrics": metrics, **extra}))
    return str(path)


def cli(*argv: str):
    return build_parser().parse_args(["compare", *argv])


def test_no_regression_exits_0_and_writes_outputs(run, tmp_path, capsys):
    base = baseline(tmp_path, {"student.knn.top1": 0.81, "base.linear.top1": 0.80})
    out = tmp_path / "out"
    assert compare.main(cli("--run", run, "--baseline", base, "--outputs-dir", str(out))) == 0
    assert float((out / "worst_drop").read_text()) == pytest.approx(0.01)
    assert (out / "regressed").read_text() == "0"
    printed = capsys.readouterr().out
    assert "student.knn.top1" in printed and "REGRESSED" not in printed


def test_regression_beyond_tolerance_exits_4(run, tmp_path, capsys):
    base = baseline(tmp_path, {"student.knn.top1": 0.85, "student.linear.few": 0.70})
    out = tmp_path / "out"
    assert compare.main(cli("--run", run, "--baseline", base, "--outputs-dir", str(out))) == compare.EXIT_REGRESSED
    assert float((out / "worst_drop").read_text()) == pytest.approx(0.05)
    assert (out / "regressed").read_text() == "1"
    captured = capsys.readouterr()
    assert "REGRESSED" in captured.out and "student.knn.top1" in captured.err


def test_improvements_never_fail(run, tmp_path):
    base = baseline(tmp_path, {"student.knn.top1": 0.50}, tolerance=0.0)
    out = tmp_path / "out"
    assert compare.main(cli("--run", run, "--baseline", base, "--outputs-dir", str(out))) == 0
    assert float((out / "worst_drop").read_text()) == pytest.approx(-0.30)


def test_tolerances(run, tmp_path):
    metrics = {"student.knn.top1": {"value": 0.85, "tolerance": 0.06}, "base.knn.top1": 0.81}
    base = baseline(tmp_path, metrics, tolerance=0.02)
    assert compare.main(cli("--run", run, "--baseline", base)) == compare.EXIT_REGRESSED  # base drops 0.03 > 0.02
    assert compare.main(cli("--run", run, "--baseline", base, "--tolerance", "0.04")) == 0  # own 0.06 kept for student


def test_json_output(run, tmp_path, capsys):
    base = baseline(tmp_path, {"student.knn.top1": 0.85})
    compare.main(cli("--run", run, "--baseline", base, "--json"))
    out = json.loads(capsys.readouterr().out)
    assert out["regressed"] == ["student.knn.top1"] and out["rows"][0]["drop"] == pytest.approx(0.05)


def test_unknown_metric_is_an_error(run, tmp_path):
    base = baseline(tmp_path, {"student.knn.top5": 0.9})
    with pytest.raises(StageError, match="no metric 'student.knn.top5'"):
        compare.main(cli("--run", run, "--baseline", base))


def test_run_without_metrics(tmp_path):
    base = baseline(tmp_path, {"student.knn.top1": 0.9})
    with pytest.raises(StageError, match="evaluate stage has not finished"):
        compare.main(cli("--run", (tmp_path / "empty").as_uri(), "--baseline", base))


def test_empty_baseline_is_refused(run, tmp_path):
    base = baseline(tmp_path, {})
    with pytest.raises(ConfigError, match="no metrics yet; fill it from a measured run"):
        compare.main(cli("--run", run, "--baseline", base))


@pytest.mark.parametrize("metrics,tolerance", [({"student.knn.top1": "high"}, 0.02), ({"student.knn.top1": 0.8}, -1),
                                               ({"student.knn.top1": {"value": 0.8, "tolerance": None}}, 0.02)])
def test_malformed_baseline(run, tmp_path, metrics, tolerance):
    with pytest.raises(ConfigError):
        compare.main(cli("--run", run, "--baseline", baseline(tmp_path, metrics, tolerance)))


def test_config_hash_mismatch(run, tmp_path):
    base = baseline(tmp_path, {"student.knn.top1": 0.8}, config_hash="fff000")
    with pytest.raises(ConfigError, match="not comparable"):
        compare.main(cli("--run", run, "--baseline", base))
    base = baseline(tmp_path, {"student.knn.top1": 0.8}, config_hash="abc123")
    assert compare.main(cli("--run", run, "--baseline", base)) == 0


def test_nan_current_counts_as_regressed(tmp_path):
    uri = (tmp_path / "runs" / "nan").as_uri()
    open_store(uri).write_json("evaluate/metrics.json", {"models": {"student": {"knn": {"top1": float("nan")}}}})
    base = baseline(tmp_path, {"student.knn.top1": 0.8})
    out = tmp_path / "out"
    assert compare.main(cli("--run", uri, "--baseline", base, "--outputs-dir", str(out))) == compare.EXIT_REGRESSED
    assert (out / "worst_drop").read_text() == "1"


# The regression cron's baselines and the configs they were measured with: one pair per cell.
BASELINES = {f"configs/{baseline}": f"configs/{config}" for _, config, baseline, _ in REGRESSION_CELLS}


def placeholder_problems(raw: dict, config: str = "configs/regression.yaml") -> list[str]:
    """Why a baseline file is not a measured one (empty: it is)."""
    problems = []
    if raw.get("config") != config or not (raw.get("tolerance", -1) >= 0):
        problems.append(f"config must be {config} and tolerance >= 0")
    if not raw.get("metrics"):
        problems.append("no metrics: a placeholder")
    if "TODO" in raw or not raw.get("measured") or not raw.get("config_hash"):
        problems.append("a measured baseline says how and with which config hash it was measured, and has no TODO")
    for path, value in (raw.get("metrics") or {}).items():
        v = value["value"] if isinstance(value, dict) else value
        if not (isinstance(v, (int, float)) and 0 < v <= 1) or path.split(".")[1:2] not in (["knn"], ["linear"]):
            problems.append(f"{path}: {v!r} is not an accuracy of a knn or linear evaluation")
    return problems


@pytest.mark.parametrize("path", BASELINES)
def test_committed_baseline_is_well_formed_and_not_a_placeholder(path):
    raw = json.loads((REPO / path).read_text())
    assert placeholder_problems(raw, BASELINES[path]) == []


@pytest.mark.parametrize("placeholder", [
    {"config": "configs/regression.yaml", "tolerance": 0.03, "metrics": {}, "TODO": "fill from a run"},
    {"config": "configs/regression.yaml", "tolerance": 0.03, "metrics": {"base.knn.top1": 0.5}},  # says not how
    {"config": "configs/regression.yaml", "tolerance": 0.03, "metrics": {"base.knn.top1": 0},
     "measured": "x", "config_hash": "0123456789abcdef"},
])
def test_a_placeholder_baseline_is_caught(placeholder):
    assert placeholder_problems(placeholder)


@pytest.mark.parametrize("path", BASELINES)
def test_committed_baseline_was_measured_with_the_committed_regression_config(path):
    from lt_ssl.config import config_hash, load_config

    raw = json.loads((REPO / path).read_text())
    if raw["metrics"]:  # a changed regression config needs a newly measured baseline
        assert raw["config_hash"] == config_hash(load_config(REPO / BASELINES[path]))
